"""Talking to Docker: short-lived helper containers that mount a volume, and finding our own
container. The archive API (get/put archive) works on created, never started containers, so most
operations never run anything; only renames and removals start a helper (``sh``, ``mv``, ``rm``,
``xargs`` of the helper image). One operation shares one helper per set of mounts.
"""

import errno
import io
import os
import queue
import re
import shlex
import socket
import tarfile
import threading
import time
from contextlib import closing, contextmanager

from .archive import CHUNK, IterStream, TarReader
from .errors import BackupError, NotFound, Unavailable
from .stores.spool import pid_alive

HELPER_LABEL = "ailab-backup.helper"
OWNER_LABEL = "ailab-backup.owner"
KEPT_LABEL = "ailab-backup.kept"  # a helper kept for the server's lifetime (see cached_read)
STARTED_LABEL = "ailab-backup.started"  # the owner's start time: a pid can be reused after a restart
JOB_SCRIPT = "/ailab/job.sh"  # what a started helper runs: see DockerHelper.run
FALLBACK_IMAGE = "ubuntu"
_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")
_CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_CONTAINER_ID_ONLY = re.compile(r"^[0-9a-f]{64}$")


def own_container_id():
    """The id of the Docker container this process runs in, or None outside a container."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    # only the files Docker mounts into its container (on the engine's host, the shm mounts of
    # running containers, /var/lib/docker/containers/ID/mounts/shm, are in mountinfo too)
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] in _CONTAINER_FILES and (match := _CONTAINER_ID.search(fields[3] + "/")):
            return match.group(1)
    return None


def owner_host():
    """Who owns a helper: our container (on the host network its hostname is the host's, shared
    with every process there), else this machine."""
    return own_container_id() or socket.gethostname()


def helper_labels(**more):
    """The labels of every helper this process makes: whose it is (our container or host, pid and
    the pid's start time), so a restarted server knows the helpers of a dead one."""
    return {HELPER_LABEL: "1", OWNER_LABEL: f"{owner_host()}:{os.getpid()}",
            STARTED_LABEL: process_start(os.getpid()) or "", **more}


def process_start(pid):
    """The start time of process ``pid`` (clock ticks since boot), or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22; fields after ')' start at 3
    except (OSError, IndexError):
        return None


def covering_mount_point(path):
    """The mount point of this process's mount namespace that holds ``path`` (or its nearest
    existing parent), from /proc/self/mountinfo; None when that cannot be read."""
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            points = [line.split()[4].replace("\\040", " ") for line in f if len(line.split()) > 4]
    except OSError:
        return None
    inside = [p for p in points if path == p or path.startswith(p.rstrip("/") + "/")]
    return max(inside, key=len) if inside else None


def on_container_filesystem(path):
    """True when ``path`` lies on the writable layer of the container this process runs in (no
    volume or bind mount holds it): ``docker rm`` of the container deletes it."""
    return own_container_id() is not None and covering_mount_point(path) == "/"


def find_covering_mount(mounts, path):
    """The mount (from ``docker inspect``'s ``Mounts``) whose destination holds ``path``, and the
    path below that destination; ``(None, None)`` when no mount covers it."""
    path = os.path.normpath(path)
    best = None
    for mount in mounts or []:
        dest = os.path.normpath(mount.get("Destination", ""))
        if path == dest or path.startswith(dest.rstrip("/") + "/"):
            if best is None or len(dest) > len(os.path.normpath(best["Destination"])):
                best = mount
    if best is None:
        return None, None
    return best, os.path.relpath(path, os.path.normpath(best["Destination"]))


def read_ahead(chunks, depth=8):
    """The chunks, made by a thread up to ``depth`` MiB ahead (bounded memory), joined into
    pieces of about a MiB: Docker keeps sending (or unpacking) while we hash, compress or
    decompress, instead of waiting for us after every piece."""
    ready = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def offer(item):
        while not stop.is_set():  # once the reader has gone, nothing waits for the item
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump():
        try:
            batch, size = [], 0
            for chunk in chunks:  # HTTP chunks of 32 KiB: handed over by the MiB, not one by one
                batch.append(chunk)
                size += len(chunk)
                if size >= CHUNK:
                    if not offer(b"".join(batch)):
                        return
                    batch, size = [], 0
            if batch and not offer(b"".join(batch)):
                return
            offer(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader below
            offer(exc)
        finally:
            if hasattr(chunks, "close"):  # a generator left midway: its own cleanup runs now
                chunks.close()

    thread = threading.Thread(target=pump, daemon=True, name="ailab-backup-read-ahead")
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the reader stopped early: let the pump end, it drops what it holds


def _mounts_key(mounts):
    return tuple(sorted(repr(sorted(mount.items())) for mount in mounts))


def single_file_tar(name, data, mode=0o600):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DockerHelper:
    """One Docker engine, reached lazily; every helper container is labelled and always removed."""

    def __init__(self, url="", helper_image="", helper_cpus=0.0):
        self.url = url
        self.configured_image = helper_image
        self.helper_cpus = helper_cpus  # AILabBackup.helper_cpus: 0 sets no limit
        self._client = None
        self._image = None
        self._orphans = set()  # helpers whose removal did not reach Docker
        self._shared = threading.local()  # the helpers of this thread's open session, if any
        # a server keeps one created helper per store volume for its lifetime, to list backups
        # without creating a container each time (see cached_read); the command line does not
        self.keep_helpers = False
        self._kept = {}  # key -> a created helper kept until close()
        self._cached = {}  # key -> (change marker, what was read)
        self._kept_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            import docker

            try:
                if self.url:
                    self._client = docker.DockerClient(base_url=self.url, timeout=120)
                else:
                    self._client = docker.from_env(timeout=120)
            except docker.errors.DockerException as exc:
                raise Unavailable(self._unreachable(exc)) from None
        return self._client

    def _unreachable(self, exc):
        where = self.url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return (
            f"Docker is not reachable at {where} ({exc}). Start AI-Lab with "
            "'--volume /var/run/docker.sock:/var/run/docker.sock', or set AILabBackup.docker_url."
        )

    def version(self):
        """The engine's version; raises :class:`Unavailable` when Docker cannot be reached. Asked
        once per :meth:`session` (an operation asks up to four times; a later call that finds
        Docker gone fails with its own error)."""
        import docker

        known = getattr(self._shared, "version", None)
        if known:
            return known
        try:
            answer = self.client.version().get("Version", "unknown")
        except (docker.errors.DockerException, OSError) as exc:
            raise Unavailable(self._unreachable(exc)) from None
        if self.in_session():
            self._shared.version = answer
        return answer

    def own_container(self):
        """``docker inspect`` data of the container this server runs in, or None."""
        import docker

        cid = own_container_id() or socket.gethostname()
        try:
            return self.client.api.inspect_container(cid)
        except docker.errors.NotFound:
            return None

    def use_image(self, name):
        """Use ``name`` as the configured helper image from now on (checked for presence again
        on the next helper)."""
        if name != self.configured_image:
            self.configured_image, self._image = name, None

    def image(self):
        """The helper image: configured, else our own container's image, else ubuntu; checked to
        be present, since no registry may be reachable."""
        import docker

        if self._image:
            return self._image
        name = self.configured_image
        if not name:
            own = self.own_container()
            name = own["Image"] if own else FALLBACK_IMAGE
        try:
            self.client.images.get(name)
        except docker.errors.ImageNotFound:
            raise Unavailable(
                f"The helper image {name!r} is not present in Docker. Pull it ('docker pull "
                f"{name}') or set AILabBackup.helper_image (AILAB_BACKUP_HELPER_IMAGE) to an image "
                "that is present and has sh, rm and xargs."
            ) from None
        self._image = name
        return name

    def volume_exists(self, name):
        import docker

        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def require_volume(self, name):
        if not self.volume_exists(name):
            raise NotFound(
                f"The Docker volume {name!r} does not exist. Check the name with 'docker volume ls' "
                "or set AILabBackup.volume."
            )

    def ensure_volume(self, name):
        self.image()  # never create a store volume that no helper could mount
        if not self.volume_exists(name):
            self.client.volumes.create(name, labels={HELPER_LABEL: "store"})

    def create_helper(self, image, mounts, **kwargs):
        """``containers.create`` for a helper, refusing a named volume of ``mounts`` that was
        removed meanwhile: mounting a volume that does not exist creates it empty, so a volume
        removed just after its existence check ('docker volume rm' in another shell) would come
        back empty, to be backed up or restored into. The engine's event stream, opened before the
        volumes are checked, says whether one was destroyed before this container was created: in
        the engine's own order, so no clocks are compared."""
        if self.helper_cpus:
            kwargs["nano_cpus"] = round(self.helper_cpus * 1e9)
        names = {mount["Source"] for mount in mounts if mount.get("Type") == "volume"}
        # a socket proxy that refuses /events: docker-py's stream then just ends (it turns the 403
        # into StopIteration), no destroy is seen, and the existence check alone holds, as before
        events = names and self.client.api.events(
            filters={"type": ["volume", "container"], "event": ["destroy", "create"]}, decode=True)
        if not events:
            return self.client.containers.create(image, mounts=mounts, **kwargs)
        created = None
        try:
            for name in sorted(names):
                self.require_volume(name)
            created = self.client.containers.create(image, mounts=mounts, **kwargs)
            gone = sorted(_volumes_destroyed_before(events, created.id) & names)
        except BaseException:
            if created is not None:
                self._remove(created.id)  # the events were lost: no helper left behind
            raise
        finally:
            events.close()
        if not gone:
            return created
        self._remove(created.id)
        for name in gone:
            self._remove_volume_quietly(name)  # the empty one the create made again
        raise NotFound(
            f"The Docker volume {gone[0]!r} does not exist (it was removed just now). Check the name "
            "with 'docker volume ls' or set AILabBackup.volume."
        )

    def _remove_volume_quietly(self, name):
        import docker

        try:
            self.client.api.remove_volume(name)
        except docker.errors.DockerException:
            pass  # in use by someone else meanwhile: theirs now

    @staticmethod
    def mount(kind, source, target, read_only=False):
        from docker.types import Mount

        if kind == "volume":
            return Mount(target, source, type="volume", read_only=read_only, no_copy=True)
        return Mount(target, source, type="bind", read_only=read_only)

    @contextmanager
    def session(self):
        """Within it, this thread's helpers with the same mounts are one container, made once and
        removed when the session ends: creating a container costs the engine 0.05-0.3 s, and one
        restore needs the same mounts up to four times. Sessions nest; other threads are apart."""
        if self.in_session():
            yield
            return
        self._shared.helpers = {}
        try:
            yield
        finally:
            helpers, self._shared.helpers, self._shared.version = self._shared.helpers, None, None
            for created in helpers.values():
                self._remove(created.id)

    @contextmanager
    def container(self, mounts):
        """A created (not started) helper container, removed on leaving whatever happens (or at
        the end of the open :meth:`session`, which shares it: also a helper of the session that
        has these mounts among more, such as the command line's worker, see :meth:`share`).
        :meth:`run` starts it."""
        helpers = self._session_helpers()
        key = _mounts_key(mounts)
        if helpers is not None:
            wanted = set(key)
            # a request for no mounts (the probe of an image) is answered by a helper of its own
            found = helpers.get(key) or next((h for k, h in helpers.items() if wanted and wanted <= set(k)), None)
            if found is not None:
                yield found
                return
        created = self.job_helper(mounts)
        if helpers is not None:
            helpers[key] = created
            yield created
            return
        try:
            yield created
        finally:
            self._remove(created.id)

    def job_helper(self, mounts, image=None, labels=None, what="create a helper container", **options):
        """A created helper container that runs our job script (see :meth:`run`) as root, in place
        of the image's entrypoint (AI-Lab's starts a server), with no network; the caller removes it."""
        self._remove_orphans()
        with self.answering(what):
            return self.create_helper(image or self.image(), mounts, command=[JOB_SCRIPT], entrypoint=["sh"],
                                      user="0:0", labels=labels or helper_labels(), network_disabled=True, **options)

    def share(self, mounts, created):
        """Hand ``created`` (a helper with ``mounts``) to the open session, which removes it when it
        ends; False when no session is open (then the caller removes it)."""
        if not self.in_session():
            return False
        self._shared.helpers[_mounts_key(mounts)] = created
        return True

    def _session_helpers(self):
        """This thread's open session's helpers by their mounts, or None outside a session."""
        return getattr(self._shared, "helpers", None)

    def in_session(self):
        return self._session_helpers() is not None

    def shared(self, mounts):
        """The open session's helper with exactly ``mounts``, or None."""
        return (self._session_helpers() or {}).get(_mounts_key(mounts))

    def take_shared(self, mounts):
        """The open session's helper with exactly ``mounts``, taken out of it (the caller removes
        it now: a worker's container runs one job), or None."""
        return (self._session_helpers() or {}).pop(_mounts_key(mounts), None)

    def keeps(self, key):
        """Whether a kept helper for ``key`` exists (its mounts exist then too)."""
        with self._kept_lock:
            return key in self._kept

    def cached_read(self, key, mounts, watched, read):
        """``read(helper)``, answered from a cache while ``watched`` (a path in the helper) has not
        changed: its stat (name, size, mode, mtime in ns), asked with one HEAD request of the
        archive API on a created helper kept for that, is the change marker. A folder's mtime
        changes whenever a file in it is added, removed or renamed, by whoever does it."""
        import copy

        import docker

        with self._kept_lock:
            if not self.keep_helpers:  # closed meanwhile (the server stops): nothing may be kept now
                return self._read_once(mounts, read)
            for _attempt in range(2):
                helper = self._kept.get(key)
                if helper is None:
                    helper = self.job_helper(mounts, labels=helper_labels(**{KEPT_LABEL: "1"}))
                    self._kept[key] = helper
                api = self.client.api
                with self.answering("look at the store"):
                    response = api.head(api._url("/containers/{0}/archive", helper.id), params={"path": watched})
                    gone = response.status_code == 404 and self._container_gone(helper.id)
                if gone:
                    # removed by someone else ('docker container prune'): made again; a HEAD
                    # answer has no body to tell a missing container from a missing path
                    self._kept.pop(key, None)
                    self._cached.pop(key, None)
                    continue
                marker = response.headers.get("X-Docker-Container-Path-Stat", "absent")
                if response.status_code not in (200, 404):
                    try:
                        api._raise_for_status(response)
                    except docker.errors.APIError as exc:
                        raise BackupError(f"Docker could not look at the store: {exc.explanation}") from None
                cached = self._cached.get(key)
                if cached is not None and cached[0] == marker:
                    return copy.deepcopy(cached[1])
                value = read(helper)
                self._cached[key] = (marker, value)
                return copy.deepcopy(value)
            return read(helper)

    def _read_once(self, mounts, read):
        helper = self.job_helper(mounts)
        try:
            return read(helper)
        finally:
            self._remove(helper.id)

    def invalidate(self, key):
        """Forget what :meth:`cached_read` keeps for ``key`` (after our own writes)."""
        with self._kept_lock:
            self._cached.pop(key, None)

    def close(self):
        """Remove the kept helpers (the server stops)."""
        with self._kept_lock:
            self.keep_helpers = False  # a request still being served must not keep a new one
            kept, self._kept, self._cached = self._kept, {}, {}
        for helper in kept.values():
            self._remove(helper.id)

    def _remove(self, container_id):
        """Remove a helper with its anonymous volumes (the helper image may declare a VOLUME, as
        AI-Lab's does; the volumes a helper mounts by name are never removed by this); never
        raises, so it never hides the error that got us here. A helper that cannot be removed now
        (Docker gone) is removed by the next operation."""
        import docker

        for _ in range(300):
            try:
                self.client.api.remove_container(container_id, v=True, force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a removal is already under way, wait for it
                    break
                time.sleep(0.1)
            except Exception:  # noqa: BLE001 - Docker unreachable: remember it
                break
        self._orphans.add(container_id)

    def _remove_orphans(self):
        for container_id in list(self._orphans):
            self._orphans.discard(container_id)
            self._remove(container_id)

    @contextmanager
    def answering(self, what):
        """Docker's own errors, and losing Docker midway, as errors that say what to do."""
        import docker
        import requests
        import urllib3

        try:
            yield
        except docker.errors.APIError as exc:
            if "no space left" in str(exc.explanation).lower():
                raise OSError(errno.ENOSPC, "no space left on device", f"Docker ({what})") from None
            raise BackupError(f"Docker could not {what}: {exc.explanation}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise Unavailable(
                f"Docker stopped answering while it had to {what} ({type(exc).__name__}). Nothing "
                "partial was kept. Check that Docker runs, then try again."
            ) from None

    def put_archive(self, container, path, data, what):
        """put_archive with :meth:`answering`'s errors; ``what`` names the place written to."""
        if isinstance(data, (bytes, bytearray)):
            with self.answering(f"write into {what}"):
                return container.put_archive(path, data)
        # the tar is made in a thread while Docker unpacks what came; closed whatever happens
        with closing(read_ahead(data)) as chunks, self.answering(f"write into {what}"):
            return container.put_archive(path, chunks)

    @contextmanager
    def archive_stream(self, container, path):
        """``path`` in the container as a readable tar stream. Leaving closes Docker's response:
        Docker holds the container while it copies, so a stream left open would make removing
        the container wait for a reader that is gone."""
        import docker

        api = self.client.api
        # identity: by default requests asks for gzip, and Docker then gzips the whole stream,
        # which cost it several times the time of the copy itself
        response = api._get(api._url("/containers/{0}/archive", container.id), params={"path": path},
                            stream=True, headers={"Accept-Encoding": "identity"})
        try:
            try:
                api._raise_for_status(response)
            except docker.errors.NotFound as exc:
                if "no such container" in str(exc.explanation).lower():  # not "nothing there": an error
                    raise BackupError("A helper container was removed while it was in use (by 'docker rm' "
                                      "or 'docker container prune'). Try again.") from None
                raise NotFound(f"{path} does not exist in the helper container's mounts.") from None
            chunks = read_ahead(response.iter_content(CHUNK, decode_unicode=False))

            def answered():
                with self.answering(f"copy {path} out of a helper container"):
                    yield from chunks

            try:
                yield IterStream(answered())
            finally:
                chunks.close()
        finally:
            response.close()

    def tar_members(self, container, path):
        """``(tar, info)`` for each member of ``path`` in the container, read as Docker streams it."""
        with self.archive_stream(container, path) as stream:
            tar = TarReader(stream.read)
            for info in tar:
                yield tar, info

    def run(self, mounts, command, files=None, what="run a helper command"):
        """Run ``command`` in a helper container, with ``files`` ({path: bytes}) put in first. A
        shared helper runs again for each command (its earlier, successful runs printed nothing).
        ``what`` (Docker could not ...) names the work in errors."""
        files = {**(files or {}), JOB_SCRIPT: ("exec " + shlex.join(command) + "\n").encode()}
        with self.container(mounts) as helper, self.answering(what):
            for path, data in files.items():
                # from / with the whole path: a helper with no mounts has no /ailab yet
                helper.put_archive("/", single_file_tar(path.lstrip("/"), data))
            helper.start()
            status = helper.wait()
            logs = helper.logs(stdout=True, stderr=True)
        if status.get("StatusCode") != 0:
            raise BackupError(
                f"A helper command failed ({' '.join(command)}): "
                f"{logs.decode(errors='replace').strip()[-500:]}"
            )
        return logs

    def _container_gone(self, owner):
        """True when ``owner`` names a container (by its id) that no longer exists."""
        import docker

        if not _CONTAINER_ID_ONLY.match(owner):
            return False
        try:
            self.client.api.inspect_container(owner)
            return False
        except docker.errors.NotFound:
            return True

    def remove_stale_helpers(self):
        """Remove helpers (and their anonymous volumes) left by processes of this host or container
        that died mid-job (e.g. SIGKILL), also when a restarted container reuses their pid."""
        host = owner_host()
        removed = 0
        # the plain listing: inspecting each container would wait on one busy copying
        for helper in self.client.api.containers(all=True, filters={"label": HELPER_LABEL + "=1"}):
            labels = helper.get("Labels") or {}
            helper_host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
            if helper_host != host and self._container_gone(helper_host):
                self._remove(helper["Id"])  # its server's container was removed (docker rm -f)
                removed += 1
                continue
            if helper_host != host or not pid.isdigit():
                continue
            started = labels.get(STARTED_LABEL)
            if not pid_alive(int(pid)) or (started and process_start(int(pid)) != started):
                self._remove(helper["Id"])
                removed += 1
        return removed


def _volumes_destroyed_before(events, container_id):
    """The names of the volumes destroyed before the container ``container_id`` was created, read
    from a stream of volume and container events opened before it was asked for."""
    destroyed = set()
    for event in events:
        actor = (event.get("Actor") or {}).get("ID")
        if event.get("Type") == "volume" and event.get("Action") == "destroy":
            destroyed.add(actor)
        elif event.get("Type") == "container" and event.get("Action") == "create" and actor == container_id:
            return destroyed
    return destroyed
