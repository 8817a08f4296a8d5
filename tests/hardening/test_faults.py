"""Faults: Docker stopping, a helper container killed, the server SIGKILLed, a full disk, a volume
removed. Each must end with a clear error, no partial backup listed, no helper container left, and
the source untouched (or brought back exactly by undo).

The Docker engine is shared with other runs, so it is never stopped: a socket proxy (hardutil.
DockerProxy) plays the daemon and is killed instead. Only our own helpers, volumes and spool files
are looked at or removed.
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from ailab_backup_ext import cli
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.docker_helper import DockerHelper
from ailab_backup_ext.errors import BackupError, NotFound
from ailab_backup_ext.progress import Progress
from hardutil import (
    files_below,
    files_in_volume,
    our_helper_mounting,
    our_helpers,
    our_spools,
    remove_our_helpers,
    wait_until,
)
from restutil import free_port, wait_for_server
from treeutil import HELPER_IMAGE, run_in_volume, volume_snapshot

MB = 1 << 20


def stop_when(action, phase, after_bytes):
    """A Progress callback that runs ``action`` once, when ``phase`` has done ``after_bytes``."""
    fired = threading.Event()

    def on_change(progress):
        if progress.phase == phase and progress.done_bytes > after_bytes and not fired.is_set():
            fired.set()
            action()

    on_change.fired = fired
    return on_change


def run_cli(argv, capsys):
    """``ailab-backup ARGV`` in this process: (exit status, stderr lines). A traceback fails."""
    capsys.readouterr()
    try:
        status = cli.main([str(a) for a in argv])
    except Exception as exc:  # noqa: BLE001 - what the user would see is the point
        pytest.fail(f"the command line crashed with a traceback instead of one line: {type(exc).__name__}: {exc}")
    return status, capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------------------------------------
# 1. The Docker daemon stops during a backup and during a restore


@pytest.fixture
def outage(docker_client, make_volume, docker_proxy):
    """A 24 MB volume, a store volume, and a manager that reaches Docker through the proxy."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && dd if=/dev/urandom of=big.bin bs=1M count=24 2>/dev/null && "
                                         "mkdir sub && echo v1 > sub/a.txt && echo '{}' > intro.ipynb")
    manager = BackupManager(AILabBackup(volume=volume, store=store, docker_url=docker_proxy.url))
    yield manager, volume, store
    # the helper of the interrupted run outlives it: the engine never got its removal (see
    # test_helper_left_by_a_docker_outage_is_removed_by_the_next_operation); ours only
    remove_our_helpers(docker_client)


def test_docker_stopping_during_a_backup_keeps_nothing_and_leaves_the_volume_alone(
        outage, docker_client, docker_proxy):
    manager, volume, store = outage
    before = volume_snapshot(docker_client, volume)
    stop = stop_when(docker_proxy.kill, "backing up", 6 * MB)
    with pytest.raises(BackupError):
        manager.create_backup(progress=Progress(stop))
    assert stop.fired.is_set()

    docker_proxy.start()  # Docker is back
    assert manager.list_backups() == []
    assert files_in_volume(docker_client, store) == []  # not even a partial archive
    assert our_spools() == []
    assert volume_snapshot(docker_client, volume) == before
    assert manager.create_backup()["file_count"] == 3  # and the next backup works


def test_docker_stopping_during_a_restore_is_undone_exactly(outage, docker_client, docker_proxy):
    manager, volume, store = outage
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo v2 > sub/a.txt && echo new > b.txt && rm intro.ipynb")
    before = volume_snapshot(docker_client, volume)
    stop = stop_when(docker_proxy.kill, "restoring", 6 * MB)
    with pytest.raises(BackupError):
        manager.restore_backup(backup["id"], "replace", Progress(stop))
    assert stop.fired.is_set()

    docker_proxy.start()
    kinds = sorted(m["kind"] for m in manager.list_backups())
    assert kinds == ["manual", "safety"]  # the safety backup was complete before anything changed
    assert our_spools() == []
    manager.config.safety_backup = False  # (the undo's own safety backup is not looked at here)
    manager.undo_last_restore()
    assert volume_snapshot(docker_client, volume) == before


@pytest.mark.parametrize("command", ["create", "restore"])
def test_docker_stopping_is_one_clear_line_from_the_cli(command, outage, docker_proxy, monkeypatch, capsys):
    manager, volume, store = outage
    argv = ["--volume", volume, "--store", store, "--docker-url", docker_proxy.url]
    if command == "restore":
        argv += ["restore", manager.create_backup()["id"], "--mode", "replace"]
        stop = stop_when(docker_proxy.kill, "restoring", 6 * MB)
    else:
        argv += ["create"]
        stop = stop_when(docker_proxy.kill, "backing up", 6 * MB)
    monkeypatch.setattr(cli, "Progress", lambda on_change=None: Progress(lambda p: (on_change(p), stop(p))))
    status, err = run_cli(argv, capsys)
    assert stop.fired.is_set()
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith("ailab-backup: error:") and "Docker" in err[0], err


def test_helper_left_by_a_docker_outage_is_removed_by_the_next_operation(outage, docker_client, docker_proxy):
    manager, volume, store = outage
    stop = stop_when(docker_proxy.kill, "backing up", 6 * MB)
    with pytest.raises(BackupError):
        manager.create_backup(progress=Progress(stop))
    assert our_helpers(docker_client)  # the engine never heard of their removal
    docker_proxy.start()
    manager.docker.remove_stale_helpers()  # what a server runs at start: dead owners only
    manager.create_backup()  # the next operation
    assert our_helpers(docker_client) == [], "a helper container of the failed backup is left"


# ---------------------------------------------------------------------------------------------
# 2. A helper container killed during a backup


@pytest.fixture
def volume_40mb(docker_client, make_volume):
    volume = make_volume()
    run_in_volume(docker_client, volume, "cd /v && dd if=/dev/urandom of=big.bin bs=1M count=40 2>/dev/null && "
                                         "echo a > a.txt && echo '{}' > intro.ipynb")
    return volume


@pytest.mark.parametrize("store_kind", ["folder", "volume"])
def test_helper_killed_while_the_volume_is_read(store_kind, volume_40mb, docker_client, make_volume, tmp_path):
    """``docker rm -f`` of the helper that reads the volume. Docker lets the copy it serves end
    before it removes the container, so the backup may complete; either way the outcome is
    consistent: a complete, verified backup, or a clear error with nothing kept."""
    store = str(tmp_path / "store") if store_kind == "folder" else make_volume("ailabstore")
    manager = BackupManager(AILabBackup(volume=volume_40mb, store=store))
    removals = []

    def kill_helper():
        # from another thread: Docker answers the removal only once the copy ended, and this
        # callback runs in the thread that reads the copy
        helper = our_helper_mounting(docker_client, volume_40mb)
        thread = threading.Thread(target=lambda: removals.append(_force_remove(helper)), daemon=True)
        thread.start()

    stop = stop_when(kill_helper, "backing up", 5 * MB)
    try:
        meta = manager.create_backup(progress=Progress(stop))
    except Exception as exc:  # noqa: BLE001 - a BackupError is due; a raw APIError 409 comes when
        # the other removal is still in progress as ours runs: see ..._meanwhile_is_not_an_error
        assert manager.list_backups() == [], f"failed ({exc!r}) but a backup is listed"
    else:
        assert [m["id"] for m in manager.list_backups()] == [meta["id"]]
        assert manager.verify_backup(meta["id"])["files"] == 3
    assert stop.fired.is_set()
    assert wait_until(lambda: removals, 30), "the removal did not end"
    assert wait_until(lambda: not our_helpers(docker_client), 10), our_helpers(docker_client)
    assert our_spools() == []
    if store_kind == "folder":
        assert not [f for f in files_below(store) if f.endswith(".ailab-partial")]


def _force_remove(container):
    try:
        container.remove(force=True)
        return "removed"
    except Exception as exc:  # noqa: BLE001 - already gone is fine here
        return repr(exc)


def test_helper_killed_while_the_backup_is_stored(volume_40mb, docker_client, make_volume):
    store = make_volume("ailabstore")
    manager = BackupManager(AILabBackup(volume=volume_40mb, store=store))
    # the store's helper is killed once the archive is made, before it is copied into the store
    stop = stop_when(lambda: our_helper_mounting(docker_client, store).remove(force=True), "storing", -1)
    with pytest.raises(BackupError):
        manager.create_backup(progress=Progress(stop))
    assert stop.fired.is_set()
    assert manager.list_backups() == []
    assert files_in_volume(docker_client, store) == []
    assert our_spools() == []


def test_helper_removed_by_someone_else_meanwhile_is_not_an_error(docker_client, make_volume):
    volume = make_volume()
    run_in_volume(docker_client, volume, "dd if=/dev/urandom of=/v/big.bin bs=1M count=8 2>/dev/null")
    docker = DockerHelper("", HELPER_IMAGE)
    api = docker_client.api
    # Docker decides which of two waiting removals goes first; ours loses (409) about 4 times in
    # 5, so a few rounds make the outcome certain
    for _ in range(5):
        try:
            with docker.container([docker.mount("volume", volume, "/m", read_only=True)]) as created:
                # Docker copies out of the helper (as while a backup reads it) when someone removes
                # it: that removal waits for the copy, and ours meets "removal ... in progress"
                response = api._get(api._url("/containers/{0}/archive", created.id), params={"path": "/m"},
                                    stream=True)
                response.raw.read(4096)
                threading.Thread(target=_force_remove, args=(created,), daemon=True).start()
                time.sleep(0.5)
                threading.Timer(1.5, response.close).start()
        finally:
            assert wait_until(lambda: not our_helpers(docker_client), 10)


# ---------------------------------------------------------------------------------------------
# 3. The server SIGKILLed mid-backup, then started again

TOKEN = uuid.uuid4().hex


def _can_unshare_uts():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


class JupyterServer:
    """``jupyter server`` as a subprocess with token auth. With ``host``, it runs in its own UTS
    namespace under that host name: its helpers' owner label is ``host:pid``, so no other run on
    this shared engine takes its helpers for stale ones (nor it theirs)."""

    def __init__(self, tmp_path, args, host=None):
        self.tmp_path, self.args, self.host = tmp_path, args, host
        self.proc = None
        self.base = None
        self.log_path = None
        self.runs = 0

    def start(self):
        self.runs += 1
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/"
        (self.tmp_path / "tmp").mkdir(exist_ok=True)
        (self.tmp_path / "root").mkdir(exist_ok=True)
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.tmp_path / "runtime"),
               "TMPDIR": str(self.tmp_path / "tmp"), "AILAB_BACKUP_HELPER_IMAGE": HELPER_IMAGE}
        env.pop("AILAB_BACKUP_TOKEN", None)
        cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={self.tmp_path / 'root'}",
               "--allow-root", *self.args]
        if self.host:
            cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.host, *cmd]
        self.log_path = self.tmp_path / f"server-{self.runs}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_server(self.proc, self.base + "api/status", 30, self.log)
        return self

    @property
    def auth(self):
        return {"Authorization": f"token {TOKEN}"}

    def call(self, method, path, **kwargs):
        return requests.request(method, self.base + "ailab/backup" + path, headers=self.auth, timeout=60, **kwargs)

    def log(self):
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_server_killed_mid_backup_is_cleaned_up_by_the_next_start(docker_client, make_volume, tmp_path):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && dd if=/dev/urandom of=big.bin bs=1M count=200 2>/dev/null && "
                                         "echo '{}' > intro.ipynb")
    host = f"ailabhx-{uuid.uuid4().hex[:8]}" if _can_unshare_uts() else socket.gethostname()
    server = JupyterServer(tmp_path, [f"--AILabBackup.volume={volume}", f"--AILabBackup.store={store}"], host)
    spool_dir = str(tmp_path / "tmp")
    pids = []
    try:
        server.start()
        pids.append(server.proc.pid)
        started = server.call("POST", "", json={"label": "to be killed"})
        assert started.status_code == 202, started.text
        job_url = "/jobs/" + started.json()["job"]["id"]

        def busy():
            job = server.call("GET", job_url).json()
            assert job["state"] in ("queued", "running"), job
            return job["progress"]["phase"] == "backing up" and job["progress"]["done_bytes"] > 0

        assert wait_until(busy, 60, 0.05), "the backup never showed progress"
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        dead = pids[0]
        assert our_helpers(docker_client, dead, host), "no helper of the killed server (was it mid-job?)"
        assert our_spools(spool_dir, dead), "no partial archive of the killed server"

        server.start()  # same host name, so the same owner label's host
        pids.append(server.proc.pid)

        def cleaned():
            return not our_helpers(docker_client, dead, host) and not our_spools(spool_dir, dead)

        assert wait_until(cleaned, 30, 0.5), (our_helpers(docker_client, dead, host), our_spools(spool_dir, dead),
                                              server.log())
        listing = server.call("GET", "")
        assert listing.status_code == 200 and listing.json()["backups"] == [], listing.text
        assert files_in_volume(docker_client, store) == []
    finally:
        server.stop()
        for pid in pids:
            remove_our_helpers(docker_client, pid, host)


# ---------------------------------------------------------------------------------------------
# 4. The store's file system is full


@pytest.fixture
def incompressible_60mb(tmp_path):
    source = tmp_path / "nb"
    source.mkdir()
    for i in range(3):
        (source / f"data{i}.bin").write_bytes(os.urandom(20 * MB))
    (source / "intro.ipynb").write_text('{"cells": []}')
    return source


def test_full_disk_folder_store(small_tmpfs, incompressible_60mb, capsys):
    manager = BackupManager(AILabBackup(source_dir=str(incompressible_60mb), store=str(small_tmpfs),
                                        docker_url="none"))
    with pytest.raises(BackupError, match="disk is full"):
        manager.create_backup()
    assert manager.list_backups() == []
    assert files_below(small_tmpfs) == []  # not even a partial archive
    stats = os.statvfs(small_tmpfs)
    assert stats.f_bfree == stats.f_blocks  # the tmpfs is empty again

    status, err = run_cli(["--source-dir", incompressible_60mb, "--store", small_tmpfs, "--docker-url", "none",
                           "create"], capsys)
    assert status == 1 and len(err) == 1 and err[0].startswith("ailab-backup: error: The disk is full"), err
    assert files_below(small_tmpfs) == []


def test_full_disk_volume_store(incompressible_60mb, docker_client):
    """The same with a store volume on a 20 MB tmpfs: Docker's refusal is the same clear error."""
    store = docker_client.volumes.create(f"ailabstore-{uuid.uuid4().hex[:10]}",
                                         driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=20m"})
    try:
        manager = BackupManager(AILabBackup(source_dir=str(incompressible_60mb), store=store.name))
        with pytest.raises(BackupError, match="disk is full") as raised:
            manager.create_backup()
        assert f"the store volume '{store.name}'" in str(raised.value)  # which disk is full
        assert manager.list_backups() == []
        assert files_in_volume(docker_client, store.name) == []
        assert our_spools() == []
    finally:
        store.remove(force=True)


def test_a_full_store_volume_keeps_the_settings_and_schedule_it_had(docker_client, make_volume):
    """Settings changed while the store volume is full: a clear error naming it, and the settings
    and the schedule kept before are still there, whole (Docker's archive API empties a file it
    replaces before it writes it)."""
    store = docker_client.volumes.create(f"ailabstore-{uuid.uuid4().hex[:10]}",
                                         driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"})
    # a tmpfs volume is mounted afresh for each container unless one holds it
    holder = docker_client.containers.run(HELPER_IMAGE, ["sleep", "600"], detach=True, network_disabled=True,
                                          volumes={store.name: {"bind": "/v", "mode": "rw"}})
    try:
        volume = make_volume()
        manager = BackupManager(AILabBackup(volume=volume, store=store.name))
        manager.settings.set({"keep_last": 7})
        manager.scheduler.set("every 6h")
        # full to the last page (small files take what dd leaves)
        holder.exec_run(["sh", "-c", "dd if=/dev/zero of=/v/fill bs=1k count=2000; "
                                     "for i in $(seq 20); do echo x > /v/fill$i; done"])
        # pages more than the kept file frees: replaced in place, it was left cut short
        many = [f"folder-{i:03d}-{'x' * 100}" for i in range(100)]
        with pytest.raises(OSError, match=f"store volume '{store.name}'") as raised:
            manager.settings.set({"excludes": many})
        assert raised.value.errno == errno.ENOSPC
        fresh = BackupManager(AILabBackup(volume=volume, store=store.name)).settings.describe()
        assert (fresh["keep_last"], fresh["excludes"], fresh["schedule"]) == (7, [], "every 6h")
        with pytest.raises(OSError, match=f"store volume '{store.name}'"):  # a small change too
            manager.scheduler.set("daily 02:00")
        assert BackupManager(AILabBackup(volume=volume, store=store.name)).scheduler.describe()["spec"] == "every 6h"
    finally:
        holder.remove(force=True)
        store.remove(force=True)


@pytest.mark.parametrize("path", ["streaming", "worker"])
def test_a_restore_that_does_not_fit_in_the_volume_is_refused_and_changes_nothing(
        docker_client, make_volume, request, path):
    """The notebooks volume (a 3 MB tmpfs) holds other data now; restoring a backup whose 1.5 MB
    file no longer fits is refused before anything is written, on both paths: the streaming one
    writes in place, so a disk that filled midway left a notebook overwritten and a file cut short."""
    image = HELPER_IMAGE if path == "streaming" else request.getfixturevalue("python_image")
    volume = docker_client.volumes.create(f"ailabtest-{uuid.uuid4().hex[:10]}",
                                          driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=3m"})
    holder = docker_client.containers.run(HELPER_IMAGE, ["sleep", "600"], detach=True, network_disabled=True,
                                          volumes={volume.name: {"bind": "/v", "mode": "rw"}})

    def look():
        return holder.exec_run(["sh", "-c", "cd /v && ls -ln --full-time && md5sum *"]).output.decode()

    try:
        holder.exec_run(["sh", "-c", "cd /v && echo one > a.ipynb && dd if=/dev/urandom of=big.bin bs=1k "
                                     "count=1500 && chown -R 1000:100 /v"])
        manager = BackupManager(AILabBackup(volume=volume.name, store=make_volume("ailabstore"), helper_image=image))
        backup = manager.create_backup()
        holder.exec_run(["sh", "-c", "cd /v && rm big.bin && echo two > a.ipynb && "
                                     "dd if=/dev/urandom of=other.bin bs=1k count=2900"])
        before = look()
        with pytest.raises(BackupError, match=f"The restore needs 1 MB but the volume '{volume.name}' has 0 MB free"):
            manager.restore_backup(backup["id"], "replace")
        assert look() == before
        assert [m["id"] for m in manager.list_backups()] == [backup["id"]]  # no safety backup either
    finally:
        holder.remove(force=True)
        volume.remove(force=True)


# ---------------------------------------------------------------------------------------------
# 5. The source volume removed after it was listed


@pytest.fixture
def listed_volume(docker_client, make_volume, tmp_path):
    volume = make_volume()
    run_in_volume(docker_client, volume, "echo '{}' > /v/intro.ipynb")
    manager = BackupManager(AILabBackup(volume=volume, store=str(tmp_path / "store")))
    assert manager.status()["hint"] is None  # found and fine
    return manager, volume


def test_an_engine_behind_a_proxy_that_refuses_events_still_backs_up_and_restores(
        docker_client, make_volume, tmp_path):
    """Socket proxies (e.g. for a rootless setup) may refuse /events, which the check against a
    volume removed meanwhile reads: the operations must still work, with the existence check."""
    from hardutil import DockerProxy

    proxy = DockerProxy(tmp_path / "docker.sock", refused=("/events",))
    proxy.start()
    try:
        api = DockerHelper(proxy.url).client.api
        assert api._get(api._url("/events")).status_code == 403  # the proxy does refuse
        volume = make_volume()
        run_in_volume(docker_client, volume, "echo '{}' > /v/intro.ipynb")
        before = volume_snapshot(docker_client, volume)
        manager = BackupManager(AILabBackup(volume=volume, store=str(tmp_path / "store"), docker_url=proxy.url))
        backup = manager.create_backup()
        assert [b["id"] for b in manager.list_backups()] == [backup["id"]]
        run_in_volume(docker_client, volume, "echo broken > /v/intro.ipynb")
        manager.restore_backup(backup["id"], "replace")
        assert volume_snapshot(docker_client, volume) == before
    finally:
        proxy.kill()
    assert our_helpers(docker_client) == []


def _volume_names(client):
    return {v.name for v in client.volumes.list()}


def test_backup_of_a_volume_removed_after_listing(listed_volume, docker_client, tmp_path, capsys):
    manager, volume = listed_volume
    assert manager.list_backups() == []
    docker_client.volumes.get(volume).remove()

    with pytest.raises(NotFound, match="does not exist"):
        manager.create_backup()
    assert volume not in _volume_names(docker_client)  # not re-created by a helper's mount
    assert manager.list_backups() == []
    status, err = run_cli(["--volume", volume, "--store", tmp_path / "store", "create"], capsys)
    assert status == 1 and len(err) == 1 and "does not exist" in err[0], err
    assert volume not in _volume_names(docker_client)
    assert "does not exist" in manager.status()["hint"]


def test_restore_into_a_volume_removed_after_listing(listed_volume, docker_client):
    manager, volume = listed_volume
    backup = manager.create_backup()
    docker_client.volumes.get(volume).remove()
    with pytest.raises(NotFound, match="does not exist"):
        manager.restore_backup(backup["id"], "replace")
    with pytest.raises(NotFound, match="does not exist"):
        manager.plan_restore(backup["id"])
    assert volume not in _volume_names(docker_client)
    assert [m["kind"] for m in manager.list_backups()] == ["manual"]  # no safety backup of nothing


def test_volume_removed_just_after_the_existence_check(listed_volume, docker_client):
    manager, volume = listed_volume
    real_mount = manager.docker.mount

    def vanish_then_mount(kind, source, target, read_only=False):
        if source == volume and volume in _volume_names(docker_client):
            docker_client.volumes.get(volume).remove()  # 'docker volume rm' in another shell, just now
        return real_mount(kind, source, target, read_only)

    manager.docker.mount = vanish_then_mount  # called by _mounts() right after check_exists()
    with pytest.raises(NotFound, match="does not exist"):
        manager.create_backup()
    assert manager.list_backups() == []
    assert volume not in _volume_names(docker_client), "Docker re-created the removed volume as a side effect"


def test_volume_removed_in_the_instant_before_the_helper_is_created(listed_volume, docker_client, monkeypatch):
    """The narrowest window: every check passed, and the volume goes right before the engine is
    asked for the helper, whose mount would make it again, empty."""
    from docker.models.containers import ContainerCollection

    manager, volume = listed_volume
    first = manager.create_backup()  # the source was fine a moment ago
    real_create = ContainerCollection.create

    def vanish_then_create(self, image, command=None, **kwargs):
        if any(m.get("Source") == volume for m in kwargs.get("mounts") or []) and volume in _volume_names(docker_client):
            docker_client.volumes.get(volume).remove()  # 'docker volume rm' in another shell, just now
        return real_create(self, image, command, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", vanish_then_create)
    with pytest.raises(NotFound, match="removed just now"):
        manager.create_backup()
    monkeypatch.undo()
    assert [b["id"] for b in manager.list_backups()] == [first["id"]], "an empty backup of the re-made volume was listed"
    assert volume not in _volume_names(docker_client), "the volume the helper's mount made again was left behind"
    assert our_helpers(docker_client) == []
