"""The worker's entry point inside a helper container: ``python -m ailab_backup_ext.worker.main
JOB.json``.

The container mounts the source (at ``/ailab/mount``) and the store (at ``/ailab/store``), so the
operation is the very code of a local backup or restore (:class:`BackupManager` on a local folder
and a folder store), with every check. It prints JSON lines on stdout: ``{"progress": {...}}``
while it works, then ``{"result": ...}`` or ``{"error": {"type": ..., "message": ...}}``.

Files in the store are made as the store folder's owner (the worker runs as root, the server may
not), a partial archive is named with the job's id and locked (flock) while the worker lives, so
the next operation can tell a dead worker's partial file from a running one's.
"""

import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from ..config import AILabBackup
from ..core import BackupManager
from ..errors import BackupError
from ..progress import Progress
from ..sources import LocalFolderSource
from ..stores.folder import FolderStore
from ..stores.spool import SPOOL_SUFFIX, WORKER_SPOOL_TAG, remove_unlocked_worker_spools
from .runner import JOB_ENV

PROGRESS_INTERVAL = 0.2  # seconds between progress lines (AILabBackup.progress_interval): the server relays each one
HEARTBEAT_SECONDS = 20  # well below the Docker client's read timeout (120 s)
NOT_SAME_FOLDER = "NotSameFolder"  # the store mounted here is not the server's folder store
# set when a backup's commit begins: from then a stop no longer interrupts the job, which ends by
# reporting the backup, so that a stop can neither tear a commit nor leave a kept backup unreported
COMMIT_BEGUN = threading.Event()


class Stopped(BackupError):
    """The server stopped the worker (SIGTERM); it cleaned up after itself."""


class MountedSource(LocalFolderSource):
    """The source as mounted in the container, described as the server knows it (the backup's
    metadata names the volume, not the mount point)."""

    def __init__(self, path, described, slug):
        super().__init__(path, described.get("found_by", "configured"))
        self._described, self._slug = described, slug

    @property
    def slug(self):
        return self._slug

    def describe(self):
        return dict(self._described)

    @property
    def place(self):  # the volume, not the helper's mount point
        return f"the {self._described.get('type', 'volume')} {self._described.get('name', self.path)!r}"


class MountedStore(FolderStore):
    """The store as mounted in the container: what it makes is owned by the store folder's owner,
    its partial archives are its job's and locked, and a commit never overwrites an archive that
    another process committed meanwhile."""

    def __init__(self, path, job_id, described):
        super().__init__(path)
        self.job_id = job_id
        self._described = described
        self.last_commit = False  # True for a backup job: a stop no longer interrupts its commit
        st = os.stat(self.path)
        self.owner = (st.st_uid, st.st_gid)

    def describe(self):
        return dict(self._described)

    def _own(self, path):
        try:
            os.chown(path, *self.owner, follow_symlinks=False)
        except PermissionError:
            pass

    def _dir(self, sub):
        path = os.path.join(self.path, sub)
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            self._own(path)
        return path

    @contextmanager
    def spool(self, name):
        path = os.path.join(self._dir("data"), f".{name}{WORKER_SPOOL_TAG}{self.job_id}{SPOOL_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the end: see remove_unlocked_worker_spools
            self._own(path)
            yield path
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(fd)

    def remove_stale_spools(self):
        return remove_unlocked_worker_spools(os.path.join(self.path, "data"))

    def commit(self, spool_path, archive_name, meta):
        """Link the verified partial file to its name (never over an existing one: a parallel
        process may have taken the id meanwhile, then the next free id is used), then write the
        metadata, last."""
        if self.last_commit:  # a backup's own (a restore's safety backup is followed by more work)
            COMMIT_BEGUN.set()
        with open(spool_path, "rb") as f:
            os.fsync(f.fileno())
        data_dir, meta_dir = self._dir("data"), self._dir("meta")
        base_id, suffix = meta["id"], archive_name[len(meta["id"]):]
        backup_id, n = base_id, 1
        while True:
            if not os.path.exists(os.path.join(meta_dir, backup_id + ".json")):
                try:
                    os.link(spool_path, os.path.join(data_dir, backup_id + suffix))
                    break
                except FileExistsError:
                    pass
            n += 1
            backup_id = f"{base_id}-{n}"
        os.unlink(spool_path)
        meta.update(id=backup_id, archive=backup_id + suffix)
        temp = os.path.join(meta_dir, f".{backup_id}.json.{self.job_id}.partial")
        with open(temp, "wb") as f:
            f.write(json.dumps(meta, indent=1, sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        self._own(temp)
        os.replace(temp, os.path.join(meta_dir, backup_id + ".json"))
        for folder in (data_dir, meta_dir):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class Reporter:
    """JSON lines on stdout, one at a time whichever thread reports."""

    def __init__(self, out=None):
        self.out = out or sys.stdout.buffer
        self._lock = threading.Lock()
        self._last = 0.0
        self._phase = None
        self.interval = PROGRESS_INTERVAL

    def emit(self, message):
        line = json.dumps(message).encode() + b"\n"
        with self._lock:
            self.out.write(line)
            self.out.flush()

    def heartbeat(self):
        """A line now and then, so that the server's read of the log stream never times out
        while a phase reports nothing for long (walking a huge tree)."""
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            self.emit({"alive": True})

    def progress(self, progress):
        now = time.monotonic()
        snapshot = progress.snapshot()
        if snapshot["phase"] == self._phase and now - self._last < self.interval:
            return
        self._phase, self._last = snapshot["phase"], now
        self.emit({"progress": snapshot})


def manager_for(job):
    """A BackupManager on the mounted folders, with the server's settings."""
    config = AILabBackup(**{**job["config"], "docker_url": "none", "source_dir": "", "store": "", "volume": ""})
    source = None
    if job.get("source"):
        source = MountedSource(job["source"]["path"], job["source"]["describe"], job["source"]["slug"])
    store = MountedStore(job["store"]["path"], job["id"], job["store"]["describe"])
    store.last_commit = job["op"] == "backup"
    manager = BackupManager(config, root_dir=source.path if source else job["store"]["path"])
    manager._resolved = (source, store)  # what resolve() would find, had it these folders
    # the server sent the effective excludes (a command line's --exclude wins over the kept ones):
    # the kept settings this manager reads beside the store must not replace them
    manager.settings.pinned = {"excludes"}
    return manager


def run(job, progress):
    marker = job["store"].get("marker")
    if marker and not os.path.exists(os.path.join(job["store"]["path"], marker)):
        raise BackupError(NOT_SAME_FOLDER)
    manager = manager_for(job)
    manager.store.remove_stale_spools()  # what a killed worker left goes before anything else
    op, params = job["op"], job.get("params", {})
    if params.get("release") is not None:
        manager._running_release = params["release"]  # the server's: its container, its defaults folder
    if op == "backup":
        return manager._create(params.get("label", ""), params.get("kind", "manual"), progress,
                               params.get("skip_unchanged", False))
    if op == "restore":
        return manager._restore(params["backup_id"], params.get("mode", "merge"), progress, params.get("paths"))
    if op == "verify":
        return manager.verify_backup(params["backup_id"], progress)
    if op in ("release_plan", "release_move"):
        return manager._release_move(params["backup_id"], progress, apply=op == "release_move")
    if op == "plan":
        return manager._plan(params["backup_id"], params.get("mode", "merge"), params.get("paths"), progress)
    raise BackupError(f"Unknown worker operation {op!r}.")


def error_message(exc):
    if isinstance(exc, BackupError):
        return {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno is not None:
        return {"type": "OSError", "errno": exc.errno, "message": exc.strerror or str(exc),
                "filename": exc.filename if isinstance(exc.filename, str) else None}
    return {"type": type(exc).__name__, "message": str(exc)}


def on_stop(_signum, _frame):
    """SIGTERM from the server: the job stops (removing its partial file) unless its commit began."""
    if not COMMIT_BEGUN.is_set():
        raise Stopped("The worker was stopped; nothing partial was kept.")


def process_started():
    """When this process began (wall clock, to 10 ms), from /proc: what its start and imports cost."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def timeline(progress, began, cpu_at_main, started_by):
    """The job's ``{"timeline": ...}`` line: when each phase began, in wall-clock seconds, with
    this process's CPU seconds by then, and what helper threads spent (see Progress.mark)."""
    return {"timeline": {"started_by": started_by, "process_started": process_started(), "main_began": began,
                         "cpu_at_main": cpu_at_main,
                         "phases": [[phase, began + t, cpu_at_main + cpu] for phase, t, cpu in progress.timeline],
                         "threads": dict(progress.thread_cpu), "ended": time.time(),
                         "cpu_at_end": time.process_time()}}


def main(argv=None, job_text=None):
    """Run the job of ``argv``: ``[JOB.json]`` (a helper of its own), ``["--job-env"]`` (exec'd
    into a kept worker: the job in the environment), or ``["--zygote"]`` with ``job_text`` (forked
    by the kept worker's zygote, see worker.zygote)."""
    began, cpu_at_main = time.time(), time.process_time()
    argv = sys.argv[1:] if argv is None else argv
    reporter = Reporter()
    if argv[0] in ("--job-env", "--zygote"):
        job = json.loads(os.environ.pop(JOB_ENV) if job_text is None else job_text)
        reporter.emit({"pid": os.getpid()})  # so that the server can stop this process alone
    else:
        with open(argv[0], encoding="utf-8") as f:
            job = json.load(f)
    reporter.interval = float(job.get("config", {}).get("progress_interval", PROGRESS_INTERVAL))

    signal.signal(signal.SIGTERM, on_stop)
    threading.Thread(target=reporter.heartbeat, daemon=True, name="ailab-backup-heartbeat").start()
    progress = Progress(on_change=reporter.progress)
    try:
        result = run(job, progress)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported as one line
        if not isinstance(exc, (BackupError, OSError)):
            import traceback

            traceback.print_exc()  # stderr: the server shows its tail for unexpected failures
        reporter.emit({"error": error_message(exc)})
        return 1 if not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) else 2
    started_by = {"--job-env": "job-env", "--zygote": "zygote"}.get(argv[0], "exec")
    reporter.emit(timeline(progress, began, cpu_at_main, started_by))  # before the result: the result line is last
    reporter.emit({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
