"""Where backups are kept: a folder of this machine or a Docker volume.

Both hold ``data/<id>.tar.zst`` (or ``.tar.gz``) and ``meta/<id>.json``. The metadata is written
last, after the archive is complete and verified, so it is the commit marker: an interrupted backup
has no metadata and is never listed. A Docker volume store survives the removal of the AI-Lab
container and of the notebooks volume.
"""

import io
import json
import os
import re
import tempfile
from contextlib import contextmanager

from .archive import FILE, Entry, tar_stream
from .errors import NotFound

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(backup_id):
    if not isinstance(backup_id, str) or not ID_PATTERN.fullmatch(backup_id) or ".." in backup_id:
        raise NotFound(f"{backup_id!r} is not a backup id. List the backups to see their ids.")
    return backup_id


ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar")


def meta_is_sound(meta):
    """A metadata file we can trust to name its archive: its id is an id and the archive is
    that id's file in data/, so a tampered file cannot make us read or delete anything else."""
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        return False
    backup_id = meta["id"]
    return (ID_PATTERN.fullmatch(backup_id) is not None and ".." not in backup_id
            and meta.get("archive") in {backup_id + s for s in ARCHIVE_SUFFIXES})


def make_id(slug, created):
    """A readable id from the source and the UTC time, e.g. ``notebooks-20261126T120000Z``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", slug).strip("-_")[:48] or "backup"
    return f"{slug}-{created.strftime('%Y%m%dT%H%M%SZ')}"


class FolderStore:
    """Backups in a folder of this machine."""

    kind = "folder"

    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))

    @property
    def name(self):
        return self.path

    def describe(self):
        return {"type": self.kind, "name": self.path}

    def _dir(self, sub):
        path = os.path.join(self.path, sub)
        os.makedirs(path, exist_ok=True)
        return path

    def read_all_meta(self):
        meta_dir = os.path.join(self.path, "meta")
        if not os.path.isdir(meta_dir):
            return []
        found = []
        for name in os.listdir(meta_dir):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    with open(os.path.join(meta_dir, name), "rb") as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue  # removed meanwhile, or not ours
        return found

    def spool(self, name):
        """A temporary file next to where the archive will be kept (so committing is a rename)."""
        return _spool(self._dir("data"), name)

    def remove_stale_spools(self):
        directory = os.path.join(self.path, "data")
        return _remove_stale_spools(directory) + remove_unlocked_worker_spools(directory)

    def commit(self, spool_path, archive_name, meta):
        with open(spool_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(spool_path, os.path.join(self._dir("data"), archive_name))
        self._write_atomic(os.path.join(self._dir("meta"), meta["id"] + ".json"), _meta_bytes(meta))

    @staticmethod
    def _write_atomic(path, data):
        temp = path + ".partial"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)

    def read_state(self, name):
        """A small JSON document kept beside the backups (e.g. the schedule), or None."""
        try:
            with open(os.path.join(self.path, name + ".json"), "rb") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_state(self, name, data):
        os.makedirs(self.path, exist_ok=True)
        self._write_atomic(os.path.join(self.path, name + ".json"), _meta_bytes(data))

    @contextmanager
    def open_archive(self, archive_name):
        try:
            f = open(os.path.join(self.path, "data", archive_name), "rb")
        except FileNotFoundError:
            raise NotFound(f"The archive {archive_name} is missing from the store {self.path}.") from None
        with f:
            yield f

    @contextmanager
    def local_copy(self, archive_name):
        """A path of this machine holding the archive (the stored file itself, here)."""
        path = os.path.join(self.path, "data", archive_name)
        if not os.path.isfile(path):
            raise NotFound(f"The archive {archive_name} is missing from the store {self.path}.")
        yield path

    def remove(self, backup_id, archive_name):
        # metadata first: once it is gone the backup is no longer listed, whatever happens next
        for path in (os.path.join(self.path, "meta", backup_id + ".json"),
                     os.path.join(self.path, "data", archive_name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


SPOOL_SUFFIX = ".ailab-partial"


@contextmanager
def _spool(directory, name):
    """A temporary file named with our pid, deleted unless committed (renamed away); one left by
    a killed process is found by :func:`_remove_stale_spools`."""
    path = os.path.join(directory, f".{name}.{os.getpid()}{SPOOL_SUFFIX}")
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _remove_stale_spools(directory):
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        pid = name[: -len(SPOOL_SUFFIX)].rsplit(".", 1)[-1] if name.endswith(SPOOL_SUFFIX) else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


WORKER_SPOOL_TAG = ".worker-"  # .NAME.worker-<job id>.ailab-partial, locked while its worker runs


def remove_unlocked_worker_spools(directory):
    """Remove the partial archives of workers that are gone. A worker (in a container: its pid
    means nothing here) holds an exclusive flock on its partial file while it runs; the kernel
    drops the lock when the worker dies, however it dies."""
    import fcntl

    removed = 0
    try:
        names = [n for n in os.listdir(directory) if WORKER_SPOOL_TAG in n and n.endswith(SPOOL_SUFFIX)]
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its worker still runs
        else:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _meta_bytes(meta):
    return json.dumps(meta, indent=1, sort_keys=True).encode()


class VolumeStore:
    """Backups in a Docker volume, reached through helper containers."""

    kind = "volume"
    MOUNT_POINT = "/ailab/store"

    def __init__(self, docker, volume):
        self.docker = docker
        self.volume = volume

    @property
    def name(self):
        return self.volume

    def describe(self):
        return {"type": self.kind, "name": self.volume}

    def _mounts(self):
        self.docker.ensure_volume(self.volume)
        return [self.docker.mount("volume", self.volume, self.MOUNT_POINT)]

    def _members(self, helper, path):
        try:
            yield from self.docker.tar_members(helper, path)
        except NotFound:
            return

    def _read_meta(self, helper):
        found = []
        for tar, info in self._members(helper, f"{self.MOUNT_POINT}/meta"):
            if info.isreg() and info.name.endswith(".json"):
                try:
                    found.append(json.loads(tar.data(info).read()))
                except ValueError:
                    continue
        return found

    def read_all_meta(self):
        if self.docker.keep_helpers:  # a server: one kept helper, and the listing cached
            return self.docker.cached_read(("listing", self.volume), self._mounts(), f"{self.MOUNT_POINT}/meta",
                                           self._read_meta)
        with self.docker.container(self._mounts()) as helper:
            return self._read_meta(helper)

    def invalidate(self):
        """Our own write: the next listing reads the store again."""
        self.docker.invalidate(("listing", self.volume))

    def read_state(self, name):
        if not self.docker.volume_exists(self.volume):  # reading a setting never creates the store
            return None
        with self.docker.container(self._mounts()) as helper:
            for tar, info in self._members(helper, f"{self.MOUNT_POINT}/{name}.json"):
                try:
                    return json.loads(tar.data(info).read())
                except ValueError:
                    return None
        return None

    def write_state(self, name, data):
        payload = _meta_bytes(data)
        with self.docker.container(self._mounts()) as helper:
            # written under a temporary name first would need a rename in a running helper; the
            # archive API writes one small file in one piece, which is enough for a setting
            self.docker.put_archive(helper, self.MOUNT_POINT, tar_stream(
                [(Entry(path=name + ".json", type=FILE, size=len(payload)), io.BytesIO(payload))], None),
                f"the store volume {self.volume!r}")

    def spool(self, name):
        """A temporary file of this machine, copied into the volume when committed."""
        return _spool(tempfile.gettempdir(), name)

    def remove_stale_spools(self):
        return _remove_stale_spools(tempfile.gettempdir())

    def commit(self, spool_path, archive_name, meta):
        size = os.path.getsize(spool_path)
        what = f"the store volume {self.volume!r}"
        with self.docker.container(self._mounts()) as helper, open(spool_path, "rb") as f:
            self.docker.put_archive(helper, self.MOUNT_POINT, _file_tar("data/" + archive_name, f, size), what)
            data = _meta_bytes(meta)
            self.docker.put_archive(
                helper, self.MOUNT_POINT, _file_tar(f"meta/{meta['id']}.json", io.BytesIO(data), len(data)), what)
        self.invalidate()

    @contextmanager
    def open_archive(self, archive_name):
        with self.docker.container(self._mounts()) as helper:
            for tar, info in self._members(helper, f"{self.MOUNT_POINT}/data/{archive_name}"):
                yield tar.data(info)
                return
        raise NotFound(f"The archive {archive_name} is missing from the volume {self.volume}.")


    def remove(self, backup_id, archive_name):
        try:
            self.docker.run(
                self._mounts(),
                ["rm", "-f", f"{self.MOUNT_POINT}/meta/{backup_id}.json", f"{self.MOUNT_POINT}/data/{archive_name}"],
            )
        finally:
            self.invalidate()


def _file_tar(name, fileobj, size):
    """A tar, as chunks, of one file streamed from ``fileobj`` into the folder it names. No entry
    for the folder itself (Docker makes a missing one, 0755): Docker would set the folder's time to
    that entry's, and the time of meta/ is how a server sees that another process wrote there."""
    return tar_stream([(Entry(path=name, type=FILE, size=size), fileobj)], None)
