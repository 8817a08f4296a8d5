"""Promises of the README that no other test held (the table is tests/PROMISES.md)."""

import datetime
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid

import pytest
import zstandard

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.schedule import Scheduler
from treeutil import HELPER_IMAGE, deep_path, folder_snapshot, run_in_volume, volume_snapshot

HOUR = 3600


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def local_manager(tmp_path, **settings):
    source = tmp_path / "nb"
    source.mkdir(exist_ok=True)
    config = {"source_dir": str(source), "store": str(tmp_path / "store"), "docker_url": "none", **settings}
    return source, BackupManager(AILabBackup(**config))


def archive_members(manager, meta):
    """Paths (relative to the notebooks folder, '.' for itself) of the data members of a stored
    backup's archive, read with plain tarfile, not our reader."""
    with manager.open_archive(meta["id"]) as raw:
        data = raw.read()
    if meta["compression"] == "zstd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    else:
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted(m.name.removeprefix("notebooks").strip("/") or "." for m in tar
                      if m.name.split("/")[0] == "notebooks")


def notebook(*sources):
    return json.dumps({"cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": []}
                                 for s in sources], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


# --- command line -------------------------------------------------------------------------------


def test_cli_dry_run_shows_the_cell_diff_of_a_notebook(tmp_path, capsys):
    source, _ = local_manager(tmp_path)
    (source / "a.ipynb").write_text(notebook("a = 1", "b = 2", "c = 3", "d = 4"))
    store = tmp_path / "store"
    backup_id = cli(capsys, "--source-dir", source, "--store", store, "create").split()[-1]
    # since then a cell was inserted, one changed and the last deleted: a restore would remove
    # the new one, change one back and add the deleted one
    (source / "a.ipynb").write_text(notebook("a = 1", "new", "b = 2", "c = 30"))
    out = cli(capsys, "--source-dir", source, "--store", store, "restore", backup_id, "--dry-run")
    line = next(x for x in out.splitlines() if x.startswith("~ a.ipynb"))
    assert line.endswith("(cells: +1 -1 ~1)"), line
    assert "Nothing was changed" in out
    assert "c = 30" in (source / "a.ipynb").read_text()


def test_import_file_adds_the_archive_and_it_restores(tmp_path, capsys):
    source, _ = local_manager(tmp_path)
    (source / "a.ipynb").write_text("{}")
    (source / "sub").mkdir()
    (source / "sub" / "b.txt").write_text("b")
    before = folder_snapshot(source)
    first = tmp_path / "store"
    backup_id = cli(capsys, "--source-dir", source, "--store", first, "create").split()[-1]
    archive = first / "data" / f"{backup_id}.tar.zst"

    other = tmp_path / "other-store"
    out = cli(capsys, "--source-dir", source, "--store", other, "import", "--file", archive)
    listed = json.loads(cli(capsys, "--source-dir", source, "--store", other, "list", "--json"))
    assert [b["kind"] for b in listed] == ["uploaded"] and f"Added {listed[0]['id']} (2 files)" in out
    assert listed[0]["sha256"] == json.loads(cli(capsys, "--store", first, "--source-dir", source, "show", backup_id))["sha256"]

    for path in (source / "sub" / "b.txt", source / "a.ipynb"):
        path.unlink()
    (source / "sub").rmdir()
    cli(capsys, "--source-dir", source, "--store", other, "restore", listed[0]["id"], "--mode", "replace")
    assert folder_snapshot(source) == before


def test_list_json_is_the_backups_newest_first(tmp_path, capsys):
    source, manager = local_manager(tmp_path)
    (source / "a.txt").write_text("1")
    ids = [manager.create_backup(label=f"n{i}")["id"] for i in range(2)]
    listed = json.loads(cli(capsys, "--source-dir", source, "--store", tmp_path / "store", "list", "--json"))
    assert [(b["id"], b["label"]) for b in listed] == [(ids[1], "n1"), (ids[0], "n0")]


def test_cli_backs_up_home_notebooks_by_default(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "mine.ipynb").write_text("{}")
    cli(capsys, "--docker-url", "none", "--store", tmp_path / "store", "create")
    [backup] = json.loads(cli(capsys, "--docker-url", "none", "--store", tmp_path / "store", "list", "--json"))
    assert backup["source"]["name"] == str(tmp_path / "notebooks") and backup["file_count"] == 1


def test_jupyter_ailab_backup_is_the_same_command(tmp_path):
    source = tmp_path / "nb"
    source.mkdir()
    (source / "a.ipynb").write_text("{}")
    jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    args = [jupyter, "ailab-backup", "--source-dir", str(source), "--store", str(tmp_path / "s"), "--docker-url", "none"]
    created = subprocess.run(args + ["create"], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    backup_id = created.stdout.split()[-1]
    shown = subprocess.run(args + ["show", backup_id], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(shown.stdout)["file_count"] == 1


# --- what is backed up --------------------------------------------------------------------------


def test_glob_excludes_match_patterns_at_any_depth(tmp_path):
    source, manager = local_manager(tmp_path, excludes=["*.tmp", "models_*", "sub/*.log"])
    for rel in ("a.ipynb", "a.tmp", "deep/x/b.tmp", "models_cache/w.bin", "sub/c.log", "sub/c.txt", "top.log"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(rel)
    meta = manager.create_backup()
    assert archive_members(manager, meta) == [".", "a.ipynb", "deep", "deep/x", "sub", "sub/c.txt", "top.log"]


def test_the_store_inside_the_source_is_left_out(tmp_path):
    source = tmp_path / "nb"
    (source / "work").mkdir(parents=True)
    (source / "work" / "a.ipynb").write_text("{}")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(source / "work" / "backups"),
                                        docker_url="none"))
    manager.create_backup()
    second = manager.create_backup()  # the first backup now lies in the store, inside the source
    assert second["file_count"] == 1
    assert archive_members(manager, second) == [".", "work", "work/a.ipynb"]


def test_hardlinks_become_plain_copies(tmp_path):
    source, manager = local_manager(tmp_path)
    (source / "a.bin").write_bytes(b"same" * 100)
    os.link(source / "a.bin", source / "b.bin")
    before = folder_snapshot(source)
    meta = manager.create_backup()
    for name in ("a.bin", "b.bin"):
        (source / name).unlink()
    manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(source) == before
    a, b = os.stat(source / "a.bin"), os.stat(source / "b.bin")
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1  # two files, not one linked twice


def test_what_cannot_be_restored_is_listed_under_skipped(tmp_path, capsys):
    """A device file, a socket, a name that is not UTF-8 and a path too long to write back are
    left out of the backup, each listed with its reason, and the rest is backed up."""
    source, manager = local_manager(tmp_path)
    (source / "a.ipynb").write_text("{}")
    os.mknod(source / "null", 0o600 | 0o020000, os.makedev(1, 3))  # a character device
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(source / "kernel.sock"))
        os.mkdir(os.path.join(os.fsencode(source), b"caf\xe9"))  # latin-1, not UTF-8
        (source / "long").mkdir()
        # longer than the 3800 bytes a restore writes, short enough for this machine to read
        deep = "long/" + deep_path(source / "long", 3810)
        meta = manager.create_backup()
    reasons = {item["path"]: item["reason"] for item in meta["skipped"]}
    too_long = [p for p in reasons if p.startswith("long/")]
    assert set(reasons) - set(too_long) == {"null", "kernel.sock", "caf\udce9"}, reasons
    assert too_long and all(deep.startswith(p) and len(p.encode()) > 3800 for p in too_long), too_long
    assert "device" in reasons["null"] and "socket" in reasons["kernel.sock"]
    assert "UTF-8" in reasons["caf\udce9"] and all("longer than" in reasons[p] for p in too_long)
    parts = deep.split("/")
    short_enough = ["/".join(parts[:i]) for i in range(1, len(parts)) if len("/".join(parts[:i])) <= 3800]
    assert archive_members(manager, meta) == [".", "a.ipynb", *short_enough]
    assert meta["file_count"] == 1


def test_safety_backup_off_takes_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AILAB_BACKUP_SAFETY_BACKUP", "false")  # for the CLI's own configuration
    source, manager = local_manager(tmp_path)
    assert manager.config.safety_backup is False
    (source / "a.txt").write_text("1")
    meta = manager.create_backup()
    (source / "a.txt").write_text("2")
    out = cli(capsys, "--source-dir", source, "--store", tmp_path / "store", "restore", meta["id"])
    assert "undo" not in out
    assert (source / "a.txt").read_text() == "1"
    result = manager.restore_backup(meta["id"])
    assert result["safety_backup_id"] is None
    assert [b["id"] for b in manager.list_backups()] == [meta["id"]]


def test_gzip_backups_are_gzip(tmp_path):
    source, manager = local_manager(tmp_path, compression="gzip")
    (source / "a.txt").write_text("hello")
    meta = manager.create_backup()
    with manager.open_archive(meta["id"]) as raw:
        assert raw.read(2) == b"\x1f\x8b"  # gzip's magic bytes, whatever the file is called
    assert meta["archive"].endswith(".tar.gz") and meta["compression"] == "gzip"
    assert archive_members(manager, meta) == [".", "a.txt"]


def test_backups_made_in_one_second_keep_their_order_and_pruning_keeps_the_newest(tmp_path, monkeypatch):
    """Ids of one second are base, base-2, ... base-12: newest first is by number, not by text
    ('-10' < '-9'), and an id freed by pruning is never given to a newer backup (it would sort
    as the oldest and be pruned at once)."""
    from ailab_backup_ext import core

    monkeypatch.setattr(core, "utc_now", lambda: datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.timezone.utc))
    source, manager = local_manager(tmp_path, keep_last=3)
    for i in range(12):
        (source / "a.txt").write_text(str(i))
        made = manager.create_backup(label=str(i))
        assert manager.list_backups()[0]["id"] == made["id"]
    assert [b["label"] for b in manager.list_backups()] == ["11", "10", "9"]


def test_the_manifest_follows_the_data_and_describes_every_entry(tmp_path):
    source, manager = local_manager(tmp_path)
    (source / "a.ipynb").write_text("{}")
    os.chmod(source / "a.ipynb", 0o640)
    os.chown(source / "a.ipynb", 1000, 100)
    os.utime(source / "a.ipynb", (1_600_000_000, 1_600_000_000))
    os.symlink("a.ipynb", source / "link")
    meta = manager.create_backup(label="mine")
    with manager.open_archive(meta["id"]) as raw:
        data = zstandard.ZstdDecompressor().decompressobj().decompress(raw.read())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        manifest = json.load(tar.extractfile(members[-1]))
    assert [m.name for m in members] == ["notebooks", "notebooks/a.ipynb", "notebooks/link", "ailab-backup-manifest.json"]
    assert manifest["label"] == "mine" and manifest["created"] == meta["created"] and manifest["created"].endswith("Z")
    assert manifest["source"] == {"type": "folder", "name": str(source), "found_by": "configured (source_dir)"}
    assert isinstance(manifest["format_version"], int)
    entries = {e["path"]: e for e in manifest["entries"]}
    assert entries["a.ipynb"] == {"path": "a.ipynb", "type": "file", "size": 2, "mode": 0o640, "uid": 1000, "gid": 100,
                                  "mtime": 1_600_000_000, "sha256": hashlib.sha256(b"{}").hexdigest()}
    assert entries["link"]["type"] == "symlink" and entries["link"]["target"] == "a.ipynb"


def test_zstd_archives_carry_frame_checksums(tmp_path):
    source, manager = local_manager(tmp_path)
    (source / "a.txt").write_text("hello " * 1000)
    meta = manager.create_backup()
    with manager.open_archive(meta["id"]) as raw:
        head = raw.read(18)
    assert head[:4] == b"\x28\xb5\x2f\xfd" and zstandard.get_frame_parameters(head).has_checksum


def test_status_says_what_is_backed_up_and_where(tmp_path, capsys):
    source, _ = local_manager(tmp_path)
    status = json.loads(cli(capsys, "--source-dir", source, "--store", tmp_path / "store", "--docker-url", "none", "status"))
    assert status["mode"] == "local" and status["source"]["name"] == str(source)
    assert str(tmp_path / "store") in json.dumps(status["store"])
    assert status["docker"] == {"reachable": False, "version": None, "url": "none"} and status["hint"] is None


def test_a_backup_cut_short_while_it_is_stored_is_never_listed(tmp_path, monkeypatch):
    """The archive is synced and in place before its metadata is written: the server dying
    (here: an error) at the archive's rename leaves no listed backup; the one before stays."""
    from ailab_backup_ext.stores import folder as store_module

    source, manager = local_manager(tmp_path)
    (source / "a.txt").write_text("1")
    first = manager.create_backup()
    synced, real_replace = [], os.replace
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def dying_replace(src, dst):
        if "/data/" in str(dst):
            assert any(p == str(src) for p in synced), "the archive was not synced before it was put in place"
            raise OSError(5, "the machine went down")
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    monkeypatch.setattr(store_module.os, "replace", dying_replace)
    (source / "a.txt").write_text("2")
    with pytest.raises(OSError, match="went down"):
        manager.create_backup()
    assert [b["id"] for b in manager.list_backups()] == [first["id"]]
    assert sorted(os.listdir(tmp_path / "store" / "meta")) == [first["id"] + ".json"]


# --- the schedule -------------------------------------------------------------------------------


def _run(scheduler):
    job = scheduler.tick()
    scheduler.wait(120)
    return job


def test_scheduled_backups_are_pruned_by_keep_last(tmp_path):
    source, manager = local_manager(tmp_path, schedule="every 1h", keep_last=2)
    clock = Clock()
    scheduler = Scheduler(manager, clock)
    for i in range(4):
        (source / "a.txt").write_text(str(i))
        assert _run(scheduler) is not None
        clock.now += HOUR
    backups = manager.list_backups()
    assert [b["kind"] for b in backups] == ["scheduled", "scheduled"]
    assert scheduler.describe()["last"]["backup_id"] == backups[0]["id"]


def test_the_schedule_is_kept_beside_the_store_not_in_the_notebooks(tmp_path):
    source, manager = local_manager(tmp_path, schedule="every 1h")
    (source / "a.txt").write_text("1")
    scheduler = Scheduler(manager, Clock())
    scheduler.set("every 2h")
    meta = _run(scheduler).result
    assert sorted(os.listdir(source)) == ["a.txt"]
    assert archive_members(manager, meta) == [".", "a.txt"]
    assert Scheduler(manager).describe()["spec"] == "every 2h"  # read back from beside the store
    state = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "store") for f in fs if "schedule" in f]
    assert len(state) == 1


# --- Docker -------------------------------------------------------------------------------------


def test_the_store_volume_outlives_the_notebooks_volume(docker_client, make_volume):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "mkdir /v/sub && echo hi > /v/sub/a.txt && chown -R 1000:100 /v/sub")
    before = volume_snapshot(docker_client, volume)
    meta = BackupManager(AILabBackup(volume=volume, store=store)).create_backup()
    docker_client.volumes.get(volume).remove(force=True)  # the container and its volume are gone
    fresh = make_volume()
    manager = BackupManager(AILabBackup(volume=fresh, store=store))
    assert [b["id"] for b in manager.list_backups()] == [meta["id"]]
    manager.restore_backup(meta["id"], "replace")
    assert volume_snapshot(docker_client, fresh) == before


def test_settings_and_the_schedule_are_kept_in_the_store_volume_not_in_the_notebooks(docker_client, make_volume):
    """What a UI sets (AI-Lab's store volume): kept as JSON files in the store volume, read back by
    a new server, changed again in place, and nothing of it in the notebooks volume. The store's
    files carry the time they were written (not 1970)."""
    from hardening.hardutil import files_in_volume

    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "echo '{}' > /v/intro.ipynb")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    manager.settings.set({"keep_last": 7, "excludes": ["models_cache"]})
    manager.scheduler.set("every 6h")
    assert files_in_volume(docker_client, store) == ["schedule.json", "settings.json"]
    # "; echo": a container's last line without a newline may be missing from its logs
    assert json.loads(run_in_volume(docker_client, store, "cat /v/schedule.json; echo"))["spec"] == "every 6h"
    kept = json.loads(run_in_volume(docker_client, store, "cat /v/settings.json; echo"))
    assert kept["keep_last"] == 7 and kept["excludes"] == ["models_cache"]
    fresh = BackupManager(AILabBackup(volume=volume, store=store)).settings.describe()
    assert (fresh["keep_last"], fresh["excludes"], fresh["schedule"]) == (7, ["models_cache"], "every 6h")
    manager.settings.set({"keep_last": 3})  # the same file written again, whole
    assert BackupManager(AILabBackup(volume=volume, store=store)).settings.describe()["keep_last"] == 3
    assert files_in_volume(docker_client, volume) == ["intro.ipynb"]
    backup = manager.create_backup()
    times = run_in_volume(docker_client, store, "cd /v && for f in *.json meta/* data/*; do stat -c '%Y' $f; done")
    assert len(times.split()) == 4 and all(abs(int(t) - time.time()) < 300 for t in times.split()), times
    assert backup["id"] in run_in_volume(docker_client, store, "ls /v/meta")


def test_a_store_volumes_listing_reads_every_sound_metadata_file_and_nothing_else(docker_client, make_volume):
    """Files that are not our metadata in the store volume's meta/ (a broken one first in Docker's
    order, a copy kept as .json.bak, a folder named .json) hide no backup and list none twice."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "echo '{}' > /v/intro.ipynb")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    first = manager.create_backup("one")
    second = manager.create_backup("two")
    run_in_volume(docker_client, store, f"cd /v/meta && echo '{{broken' > 0-broken.json && "
                                        f"cp {first['id']}.json {first['id']}.json.bak && mkdir 1-folder.json")
    fresh = BackupManager(AILabBackup(volume=volume, store=store))
    assert sorted(m["id"] for m in fresh.list_backups()) == sorted([first["id"], second["id"]])


@pytest.mark.parametrize("server", [False, True], ids=["command line", "server"])
def test_listing_a_store_volume_not_made_yet_lists_nothing_and_makes_none(docker_client, make_volume, server):
    """Before the first backup the store volume does not exist: listing (each time, in a server
    too) shows no backups, the settings are the configuration's, and neither creates it (a
    helper's mount would, empty)."""
    volume = make_volume()
    store = make_volume("ailabstore")
    docker_client.volumes.get(store).remove()  # its name only: make_volume removes it if it comes back
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    manager.docker.keep_helpers = server
    try:
        for _ in range(2):
            assert manager.list_backups() == []
        assert manager.settings.describe()["keep_last"] == AILabBackup().keep_last  # its settings read too
        assert store not in [v.name for v in docker_client.volumes.list()]
    finally:
        manager.docker.close()


def test_a_folder_store_inside_the_volume_is_left_out_and_kept_by_a_replace(docker_client, make_volume):
    """The store is a folder of this host inside the volume's own folder (the CLI on the Docker
    host, backing up a volume into a folder in it): its helper never reads the store into a
    backup, and a replace restore never removes it."""
    volume = make_volume()
    run_in_volume(docker_client, volume, "mkdir -p /v/work && echo hi > /v/work/a.ipynb")
    store = os.path.join(docker_client.api.inspect_volume(volume)["Mountpoint"], "work", "backups")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    first = manager.create_backup()
    second = manager.create_backup()  # the first backup now lies in the store, inside the volume
    assert archive_members(manager, second) == [".", "work", "work/a.ipynb"]
    manager.restore_backup(first["id"], "replace")  # its safety backup goes into the store too
    assert {first["id"], second["id"]} < {b["id"] for b in manager.list_backups()}
    assert manager.verify_backup(second["id"])["ok"]


def record_mounts(manager, docker_client, volume):
    """A list that gets, for each helper ``manager`` creates from now on, whether it mounts
    ``volume`` read-write (as the engine shows the mount)."""
    mounted = []
    make_helper = manager.docker.job_helper

    def job_helper(*args, **kwargs):
        helper = make_helper(*args, **kwargs)
        mounted.extend(m["RW"] for m in docker_client.api.inspect_container(helper.id)["Mounts"]
                       if m.get("Name") == volume)
        return helper

    manager.docker.job_helper = job_helper
    return mounted


def test_a_backup_mounts_the_notebooks_volume_read_only(docker_client, make_volume):
    """Whatever a backup's helpers run, the engine lets none of them change the notebooks."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "echo hi > /v/a.ipynb")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    mounted = record_mounts(manager, docker_client, volume)
    manager.create_backup()
    assert mounted and not any(mounted)


def test_reading_the_volumes_owner_for_an_import_mounts_it_read_only(docker_client, make_volume, tmp_path):
    """An import gives the files the owner of the notebooks folder (AI-Lab's 1000:100): the helper
    that reads it, and the one that lists the volume, cannot change the notebooks."""
    volume = make_volume()
    run_in_volume(docker_client, volume, "chown 1000:100 /v")
    manager = BackupManager(AILabBackup(volume=volume, store=str(tmp_path / "store")))
    mounted = record_mounts(manager, docker_client, volume)
    assert manager.source.root_owner() == (1000, 100)
    assert [e.path for e in manager.source.list_entries()] == ["."]  # the listing a preview reads
    assert len(mounted) == 2 and not any(mounted)


def test_docker_host_names_the_engine(docker_client, make_volume, tmp_path, monkeypatch):
    """docker_url empty: DOCKER_HOST is used. Here it is another path to the real socket; then a
    path where no engine listens, which must make Docker unreachable although the default socket
    works."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "echo hi > /v/a.txt")
    engine = docker_client.api.base_url.replace("http+docker://localhost", "unix:///var/run/docker.sock")
    link = tmp_path / "engine.sock"
    os.symlink(engine.removeprefix("unix://"), link)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{link}")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    status = manager.status()
    assert status["docker"]["reachable"] and status["docker"]["url"] == f"unix://{link}"
    meta = manager.create_backup()
    assert meta["file_count"] == 1

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    status = BackupManager(AILabBackup(volume=volume, store=store)).status()
    assert not status["docker"]["reachable"] and f"{tmp_path}/nothing.sock" in status["hint"]


@pytest.fixture
def ubuntu_image(docker_client):
    """An image called 'ubuntu' (no registry here): the helper image tagged so for this test
    when there is none; a real one, if present, is used and never removed."""
    try:
        docker_client.images.get("ubuntu")
        yield "ubuntu"
        return
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound: make one
        pass
    marker = uuid.uuid4().hex
    base = docker_client.containers.create(HELPER_IMAGE, ["true"])
    try:
        exported = b"".join(base.export())
    finally:
        base.remove(force=True)
    docker_client.api.import_image_from_data(exported, repository="ubuntu", tag="latest",
                                             changes=[f"LABEL ailab-backup.test={marker}"])
    yield "ubuntu"
    image = docker_client.images.get("ubuntu:latest")
    if (image.labels or {}).get("ailab-backup.test") == marker:  # ours, not one pulled meanwhile
        docker_client.images.remove(image.id, force=True)


def test_without_a_helper_image_ubuntu_is_used(docker_client, make_volume, ubuntu_image, monkeypatch):
    monkeypatch.delenv("AILAB_BACKUP_HELPER_IMAGE")
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "echo hi > /v/a.txt")
    before = volume_snapshot(docker_client, volume)
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    assert manager.config.helper_image == "" and manager.docker.image() == "ubuntu"
    meta = manager.create_backup()
    run_in_volume(docker_client, volume, "rm /v/a.txt")
    manager.restore_backup(meta["id"], "replace")
    after = volume_snapshot(docker_client, volume)
    assert after == before


def test_selective_restore_of_a_volume_leaves_everything_else_the_folder_itself_too(docker_client, make_volume):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "mkdir /v/private && echo s > /v/private/secret.txt && echo a > /v/a.txt "
                                         "&& touch -d @1600000000 /v/private /v")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    backed_up = volume_snapshot(docker_client, volume)
    meta = manager.create_backup()
    run_in_volume(docker_client, volume, "echo broken > /v/private/secret.txt && echo extra > /v/private/x "
                                         "&& echo b > /v/a.txt && touch -d @1700000000 /v")
    before = volume_snapshot(docker_client, volume)
    manager.restore_backup(meta["id"], "replace", paths=["private"])
    after = volume_snapshot(docker_client, volume)
    assert {p: v for p, v in after.items() if p.startswith("private")} == {
        p: v for p, v in backed_up.items() if p.startswith("private")}
    assert {p: v for p, v in after.items() if not p.startswith("private")} == {
        p: v for p, v in before.items() if not p.startswith("private")}


def test_the_readme_counts_the_corpus_right():
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        [count] = re.findall(r"`tests/hardening/corpus` holds (\d+) such archives", f.read())
    with open(os.path.join(root, "tests", "hardening", "corpus", "index.json")) as f:
        assert int(count) == len(json.load(f))


def test_hardlinks_in_a_volume_become_plain_copies(docker_client, make_volume):
    """Docker's archive sends the second name of a hardlinked file as a link to the first; the
    backup holds two plain files, and a restore writes two files."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "mkdir /v/d && echo same > /v/d/a.txt && ln /v/d/a.txt /v/b.txt")
    before = volume_snapshot(docker_client, volume)
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    meta = manager.create_backup()
    assert meta["file_count"] == 2 and meta["total_bytes"] == 10
    run_in_volume(docker_client, volume, "rm /v/b.txt /v/d/a.txt")
    manager.restore_backup(meta["id"], "replace")
    assert volume_snapshot(docker_client, volume) == before
    assert run_in_volume(docker_client, volume, "stat -c %h /v/b.txt /v/d/a.txt").split() == ["1", "1"]
