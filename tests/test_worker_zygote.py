"""The kept worker's zygote, on the real engine: a server's jobs are forked from a process that
imported our code once (no interpreter start, no imports per job), with everything a job's own
process gives: its progress and result, a stop that ends it cleanly, files of its own; and when
the zygote is gone, jobs still run, as processes of their own."""

import threading
import time

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import Cancelled
from ailab_backup_ext.progress import Progress
from ailab_backup_ext.worker import zygote
from treeutil import fill_with_random_files, run_in_volume, volume_snapshot

FILES = 25  # 24 files of 2 MiB and a.txt


@pytest.fixture
def volume_48mb(docker_client, make_volume):
    volume = make_volume()
    fill_with_random_files(docker_client, volume, 24)
    return volume


@pytest.fixture
def server(make_volume, volume_48mb, python_image):
    """A BackupManager as the server makes it (its worker kept), its zygote ready."""
    manager = BackupManager(AILabBackup(volume=volume_48mb, store=make_volume("ailabstore"), helper_image=python_image,
                                        progress_interval=0.01))
    manager.docker.keep_helpers = True
    manager.worker.prepare(*manager.resolve())
    assert wait_until(lambda: in_worker(manager, f"import os; print(os.path.exists({zygote.SOCKET_AT!r}))") == "True"), \
        "the kept worker's zygote never got ready"
    yield manager
    manager.docker.close()


def wait_until(check, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def kept_worker(manager):
    [helper] = [h for key, h in manager.docker._kept.items() if key[0] == "worker"]
    return helper


def in_worker(manager, code):
    """Run Python ``code`` in the kept worker (as root); its output."""
    python = manager.worker.probe()["python"]
    result = kept_worker(manager).exec_run([python, "-c", code], user="0:0")
    return result.output.decode().strip()


def job_processes(manager):
    """The kept worker's processes other than its main one and its zygote (and this look itself)."""
    out = in_worker(manager, (
        "import os\n"
        f"z = open({zygote.PID_AT!r}).read().strip() if os.path.exists({zygote.PID_AT!r}) else ''\n"
        "print(' '.join(p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', z, str(os.getpid()))"
        " and open(f'/proc/{p}/stat').read().rpartition(')')[2].split()[0] != 'Z'))"))
    return out.split()


def partials(client, store):
    out = run_in_volume(client, store, "find /v -name '*.ailab-partial' -o -name '.ailab-restore-*'")
    return out.split()


def test_jobs_are_forked_by_the_zygote_and_round_trip_identical(docker_client, server):
    volume = server.source.mount_name
    before = volume_snapshot(docker_client, volume)
    made = server.worker.containers_created
    backup = server.create_backup()
    assert server.worker.last_timeline["started_by"] == "zygote"
    run_in_volume(docker_client, volume, "rm -rf /v/* && echo other > /v/other.txt")
    server.restore_backup(backup["id"], "replace")
    assert server.worker.last_timeline["started_by"] == "zygote"
    assert volume_snapshot(docker_client, volume) == before
    assert server.worker.containers_created == made  # no helper made for a job
    assert job_processes(server) == []  # each job's process ended with it


def test_a_killed_zygote_falls_back_to_a_process_of_its_own(docker_client, server):
    server.create_backup()
    assert server.worker.last_timeline["started_by"] == "zygote"
    helper = kept_worker(server)
    in_worker(server, f"import os; os.kill(int(open({zygote.PID_AT!r}).read()), 9)")
    backup = server.create_backup()
    assert server.worker.last_timeline["started_by"] == "job-env"
    assert kept_worker(server).id == helper.id  # the same kept worker, not a new one
    assert server.verify_backup(backup["id"])["ok"]


def test_a_stopped_job_ends_cleanly_and_leaves_no_partial_file(docker_client, server):
    """The server stops a forked job as it stops a process of its own (SIGTERM to the pid it
    reported): the job removes its partial file and ends; the zygote serves the next job."""
    fired = threading.Event()

    def on_change(progress):  # as the phase begins: at once, so that the stop lands before the commit
        if progress.phase == "backing up" and not fired.is_set():
            fired.set()
            raise Cancelled("the server stops")

    try:
        made = server.create_backup(progress=Progress(on_change))
    except Cancelled:
        made = None
    assert fired.is_set()
    store = server.store.volume
    assert wait_until(lambda: partials(docker_client, store) == [], 15)
    assert wait_until(lambda: job_processes(server) == [], 15), "the stopped job's process is still running"
    assert [b["id"] for b in server.list_backups()] == ([made["id"]] if made else [])
    assert server.create_backup()["file_count"] == FILES
    assert server.worker.last_timeline["started_by"] == "zygote"


def test_two_jobs_at_once_in_the_zygote_have_files_of_their_own(docker_client, server):
    """Two backups forked at the same time into one store: two complete backups, each verified."""
    server.create_backup()  # the kept worker in use once: both jobs below find it
    results, errors = [], []

    def backup():
        try:
            results.append(server._in_worker("backup", Progress(), label="", kind="manual"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=backup) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len({r["id"] for r in results}) == 2
    for made in results:
        assert server.verify_backup(made["id"])["files"] == FILES
    assert partials(docker_client, server.store.volume) == []
