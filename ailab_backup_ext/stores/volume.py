"""Backups in a Docker volume, reached through helper containers. It survives the removal of the
AI-Lab container and of the notebooks volume."""

import io
import json
import os
import tempfile
import time
from contextlib import contextmanager

from ..archive import FILE, Entry, tar_stream
from ..errors import NotFound
from .records import meta_bytes
from .spool import remove_stale_spools_in, spool_file


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
        key = ("listing", self.volume)
        # a store not made yet holds no backups: listing it never creates it (a helper's mount would)
        if not self.docker.keeps(key) and not self.docker.volume_exists(self.volume):
            return []
        if self.docker.keep_helpers:  # a server: one kept helper, and the listing cached
            return self.docker.cached_read(key, self._mounts(), f"{self.MOUNT_POINT}/meta",
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
        final = f"{self.MOUNT_POINT}/{name}.json"
        partial = f"{self.MOUNT_POINT}/.{name}.json.partial"
        # written beside it, then renamed over it by the helper: Docker's archive API empties the
        # file it replaces before writing it, so a full disk left the kept settings empty
        self.docker.run(self._mounts(), ["mv", "-f", partial, final], files={partial: meta_bytes(data)},
                        what=f"write into the store volume {self.volume!r}")

    def spool(self, name):
        """A temporary file of this machine, copied into the volume when committed."""
        return spool_file(tempfile.gettempdir(), name)

    def remove_stale_spools(self):
        return remove_stale_spools_in(tempfile.gettempdir())

    def commit(self, spool_path, archive_name, meta):
        size = os.path.getsize(spool_path)
        what = f"the store volume {self.volume!r}"
        with self.docker.container(self._mounts()) as helper, open(spool_path, "rb") as f:
            self.docker.put_archive(helper, self.MOUNT_POINT, _file_tar("data/" + archive_name, f, size), what)
            data = meta_bytes(meta)
            self.docker.put_archive(
                helper, self.MOUNT_POINT, _file_tar(f"meta/{meta['id']}.json", io.BytesIO(data), len(data)), what)
        self.invalidate()

    def local_path(self, archive_name):
        return None  # inside a volume, which this process does not see

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
    # the time it is written, as any file's (not 1970: 'ls -lt' in the store lists the newest first)
    return tar_stream([(Entry(path=name, type=FILE, size=size, mtime=int(time.time())), fileobj)], None)
