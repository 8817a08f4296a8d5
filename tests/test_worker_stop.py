"""A job stopped while its worker commits: what the job reports is what the store holds.

The server stops a worker (SIGTERM to its process) when the job is cancelled. A stop that lands
before the commit leaves nothing; one that lands once the commit began must neither tear it nor
leave a kept backup that the job reports as stopped. (The same on the real engine:
tests/hardening/test_worker_faults.py.)"""

import json
import threading

import pytest

from ailab_backup_ext.errors import Cancelled
from ailab_backup_ext.progress import Progress
from ailab_backup_ext.worker import main as worker_main
from ailab_backup_ext.worker.runner import WorkerRunner

JOB = {"id": "job1", "op": "backup"}


def line(message):
    return json.dumps(message).encode() + b"\n"


def progress_line(done):
    return line({"progress": {"phase": "backing up", "done_bytes": done, "total_bytes": 100,
                              "done_files": 0, "total_files": 1}})


def cancelled_at_first_progress():
    def on_change(p):
        if p.phase == "backing up":
            raise Cancelled("The server is shutting down; the job was stopped and nothing partial was kept.")
    return Progress(on_change)


def follow(chunks_before_stop, chunks_after_stop):
    """Run the server's side on a worker's output; the output goes on only once stop() was called."""
    stopped = threading.Event()

    def stdout():
        yield from chunks_before_stop
        assert stopped.is_set(), "the worker's output was read on before it was stopped"
        yield from chunks_after_stop

    result = WorkerRunner(docker=None)._follow(
        JOB, cancelled_at_first_progress(), stdout, stopped.set, lambda: 0, lambda: "")
    return result, stopped


def test_a_worker_that_committed_before_its_stop_landed_reports_its_backup():
    meta = {"id": "nb-20261202T000000Z", "file_count": 3}
    result, stopped = follow([progress_line(1)], [progress_line(100), line({"result": meta})])
    assert stopped.is_set()
    assert result == meta


def test_the_result_in_the_same_chunk_as_the_cancelling_progress_line_counts():
    meta = {"id": "nb-20261202T000000Z"}
    result, _ = follow([progress_line(1) + progress_line(2) + line({"result": meta})], [])
    assert result == meta


def test_a_worker_stopped_before_its_commit_leaves_the_job_cancelled():
    stopped_error = {"error": {"type": "Stopped", "message": "The worker was stopped; nothing partial was kept."}}
    with pytest.raises(Cancelled, match="shutting down"):
        follow([progress_line(1)], [line(stopped_error)])
    with pytest.raises(Cancelled):  # its output cut off: no result, so cancelled too
        follow([progress_line(1)], [b'{"result": {"id": "nb-2026'])


def test_a_stop_in_the_worker_is_refused_only_once_its_commit_began(tmp_path):
    worker_main.COMMIT_BEGUN.clear()
    try:
        with pytest.raises(worker_main.Stopped):
            worker_main.on_stop(15, None)
        store = worker_main.MountedStore(str(tmp_path), "job1", {"type": "volume", "name": "s"})
        store.last_commit = True  # a backup job's (manager_for sets it from the job's op)
        meta = {"id": "nb-20261202T000000Z", "archive": "nb-20261202T000000Z.tar.zst"}
        with store.spool(meta["archive"]) as spool:
            with open(spool, "wb") as f:
                f.write(b"archive")
            store.commit(spool, meta["archive"], meta)
        assert worker_main.on_stop(15, None) is None  # the job goes on and reports the backup
        assert [m["id"] for m in store.read_all_meta()] == [meta["id"]]
    finally:
        worker_main.COMMIT_BEGUN.clear()


def test_a_shutdown_cannot_fail_a_job_whose_work_is_done():
    from ailab_backup_ext.jobs import Job

    cancel = threading.Event()
    job = Job("backup", cancel)
    job.progress.start("backing up", 10, 1)
    cancel.set()
    with pytest.raises(Cancelled):
        job.progress.add_bytes(1)
    job.progress.complete(10, 1)  # the backup was committed: no error now
    assert job.progress.snapshot()["phase"] == "done"
