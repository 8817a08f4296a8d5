"""Long operations as jobs: run off the event loop, one at a time per source, with progress.

Free of tornado: the REST handlers start jobs and read their state; so could any other caller.
"""

import datetime
import logging
import os
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .errors import BackupError, Busy, Cancelled, NotFound
from .progress import Progress

log = logging.getLogger(__name__)
KEEP_FINISHED = 50


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class Job:
    def __init__(self, kind, cancel_event):
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.state = "queued"
        self.backup_id = None
        self.result = None
        self.error = None
        self.started = None
        self.finished = None
        self.done = threading.Event()
        # once the work says it is done (a backup committed, a restore in place) a shutdown can no
        # longer make it fail: the job reports what happened
        self.progress = Progress(
            on_change=lambda p: cancel_event.is_set() and p.phase != "done" and _raise_cancelled())

    def to_json(self):
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": self.progress.snapshot(),
            "backup_id": self.backup_id,
            "result": self.result,
            "error": self.error,
            "started": self.started,
            "finished": self.finished,
        }


def _background_priority():
    """Jobs run below the server's own threads (nice 10; the threads a job starts inherit it):
    a backup keeps several cores busy, and the server must go on answering at once meanwhile."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at the normal priority
        pass


def _raise_cancelled():
    raise Cancelled("The server is shutting down; the job was stopped and nothing partial was kept.")


class JobRunner:
    """Runs one job at a time (a second one is refused with :class:`Busy`) in a worker thread."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ailab-backup-job",
                                            initializer=_background_priority)
        self._jobs = OrderedDict()
        self._lock = threading.Lock()
        self._active = None
        self._cancel = threading.Event()

    def start(self, kind, work):
        """Start ``work(progress)`` as a job; its return value (a dict) becomes the result."""
        with self._lock:
            if self._active is not None and not self._active.done.is_set():
                raise Busy(
                    f"A {self._active.kind} is already running (job {self._active.id}). Wait for it "
                    "to end, then try again.",
                    job_id=self._active.id,
                )
            job = Job(kind, self._cancel)
            self._active = job
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_FINISHED and next(iter(self._jobs.values())).done.is_set():
                self._jobs.popitem(last=False)
        self._executor.submit(self._run, job, work)
        return job

    def _run(self, job, work):
        job.state, job.started = "running", _now()
        try:
            job.result = work(job.progress)
            job.backup_id = (job.result or {}).get("id") or (job.result or {}).get("backup_id")
            job.state = "succeeded"
        except BackupError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # noqa: BLE001 - a job must end with a state, whatever happened
            log.exception("ailab-backup job %s failed", job.id)
            job.error, job.state = f"Unexpected error: {exc}. See the server log.", "failed"
        finally:
            job.finished = _now()
            job.done.set()

    @property
    def active(self):
        job = self._active
        return job if job is not None and not job.done.is_set() else None

    def get(self, job_id):
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"No job has the id {job_id!r}; jobs are kept until the server restarts.") from None

    def recent(self):
        return list(reversed(self._jobs.values()))

    def shutdown(self, timeout=30):
        """Stop the running job (it cleans up: helper removed, no partial backup) and wait."""
        self._cancel.set()
        active = self.active
        if active is not None:
            active.done.wait(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
