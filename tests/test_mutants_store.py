"""The folder store as a user meets it: what a backup leaves in the folder, what delete and the
clean-up at start remove, which ids and metadata are trusted. Fast and Docker-free, so the
mutation run (tests/MUTANTS.md) checks stores/ (folder, records, spool) with them."""

import datetime
import fcntl
import json
import os
import tempfile

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import NotFound
from ailab_backup_ext.stores.folder import FolderStore
from ailab_backup_ext.stores.records import check_id, make_id, meta_is_sound
from ailab_backup_ext.stores.spool import pid_alive
from ailab_backup_ext.stores.volume import VolumeStore

DEAD_PID = 2**22 + 4321  # above the kernel's largest pid (pid_max is at most 2**22): no process


def _files(folder):
    """Every file below ``folder``, as relative paths."""
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


def _manager(tmp_path):
    nb = tmp_path / "nb"
    nb.mkdir(exist_ok=True)
    (nb / "a.ipynb").write_text('{"cells": []}')
    return BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=str(tmp_path / "store"),
                                     safety_backup=False))


def test_a_backup_is_its_archive_and_its_metadata_and_delete_removes_both(tmp_path):
    manager = _manager(tmp_path)
    meta = manager.create_backup()
    store = tmp_path / "store"
    assert _files(store) == [f"data/{meta['archive']}", f"meta/{meta['id']}.json"]  # no spool, no .partial
    assert json.loads((store / "meta" / f"{meta['id']}.json").read_text())["sha256"] == meta["sha256"]
    assert manager.store.describe() == {"type": "folder", "name": str(store)}
    manager.delete_backup(meta["id"])
    assert _files(store) == []
    assert manager.list_backups() == []


def test_removing_a_backup_whose_archive_or_metadata_is_gone_removes_the_rest(tmp_path):
    store = FolderStore(tmp_path / "store")
    for name in ("meta/b-1.json", "data/b-1.tar.zst", "data/b-2.tar.zst", "meta/b-3.json"):
        (tmp_path / "store" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "store" / name).write_text("{}")
    store.remove("b-2", "b-2.tar.zst")  # no metadata
    store.remove("b-3", "b-3.tar.zst")  # no archive
    assert _files(tmp_path / "store") == ["data/b-1.tar.zst", "meta/b-1.json"]


def test_the_clean_up_at_start_removes_spools_of_dead_processes_only(tmp_path):
    store = FolderStore(tmp_path / "store")
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    dead = data / f".b-1.tar.zst.{DEAD_PID}.ailab-partial"
    dead_too = data / f"{DEAD_PID + 1}.ailab-partial"  # the pid alone before the suffix
    # not spools: a finished archive, a name with a dead pid but another 14-character ending
    kept = [data / "b-3.tar.zst", data / f".b-4.tar.zst.{DEAD_PID}.other-partial", data / ".b-5.tar.zst.x.ailab-partial"]
    for path in [dead, dead_too, *kept]:
        path.write_bytes(b"x")
    with store.spool("b-2.tar.zst") as mine:  # a backup running now
        with open(mine, "wb") as f:
            f.write(b"x")
        assert store.remove_stale_spools() == 2
        assert sorted(os.listdir(data)) == sorted([os.path.basename(mine), *(p.name for p in kept)])
        assert store.remove_stale_spools() == 0
    assert FolderStore(tmp_path / "no-store").remove_stale_spools() == 0  # nothing there yet: nothing made
    assert not (tmp_path / "no-store").exists()


def test_a_volume_store_spools_in_the_temp_folder_and_its_clean_up_looks_there_only(tmp_path, monkeypatch):
    """A volume store's partial archives are this machine's temporary files (the store volume is
    reached through Docker): the clean-up at start removes a dead process's one there, and never
    looks in the working folder (a server's, or a notebook's)."""
    temp, work = tmp_path / "temp", tmp_path / "work"
    temp.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(work)
    store = VolumeStore(None, "ailab-backups")  # spooling and its clean-up need no Docker
    for folder in (temp, work):
        (folder / f".b-1.tar.zst.{DEAD_PID}.ailab-partial").write_bytes(b"x")
    with store.spool("b-2.tar.zst") as mine:
        assert os.path.dirname(mine) == str(temp)
        assert store.remove_stale_spools() == 1
        assert sorted(os.listdir(temp)) == [os.path.basename(mine)]
    assert os.listdir(work) == [f".b-1.tar.zst.{DEAD_PID}.ailab-partial"]


def test_a_spool_whose_writer_runs_in_another_pid_namespace_is_kept_by_its_lock(tmp_path):
    """The server in AI-Lab's container and a command line on the host may share a folder store:
    the other's pid means nothing here (no such process, or someone else), its flock does."""
    store = FolderStore(tmp_path / "store")
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    theirs = data / f".b-1.tar.zst.{DEAD_PID}.ailab-partial"  # written there, now
    theirs.write_bytes(b"half")
    fd = os.open(theirs, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as their spool_file holds it
        assert store.remove_stale_spools() == 0
        assert theirs.read_bytes() == b"half"
    finally:
        os.close(fd)  # their writer died: the kernel drops its lock
    assert store.remove_stale_spools() == 1
    assert os.listdir(data) == []


def test_a_spool_with_our_own_pid_left_by_an_earlier_process_is_removed_and_written_over(tmp_path):
    """A restarted container's server often has the pid it had before: the spool its killed
    predecessor left has our pid, and no lock."""
    store = FolderStore(tmp_path / "store")
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    left = data / f".b-1.tar.zst.{os.getpid()}.ailab-partial"
    left.write_bytes(b"from before the restart")
    assert store.remove_stale_spools() == 1
    assert os.listdir(data) == []
    left.write_bytes(b"from before the restart")  # not cleaned up yet: the same name is written over
    with store.spool("b-1.tar.zst") as path:
        assert path == str(left)
        with open(path, "wb") as f:
            f.write(b"new")
        store.commit(path, "b-1.tar.zst", {"id": "b-1", "archive": "b-1.tar.zst"})
    assert (data / "b-1.tar.zst").read_bytes() == b"new"


def test_the_clean_up_at_start_removes_unlocked_worker_spools_only(tmp_path):
    store = FolderStore(tmp_path / "store")
    data = tmp_path / "store" / "data"
    data.mkdir(parents=True)
    running = data / ".b-1.tar.zst.worker-aaaa.ailab-partial"
    gone = [data / f".b-{n}.tar.zst.worker-bbb{n}.ailab-partial" for n in range(2, 6)]
    other = data / ".b-3.tar.zst.worker-cccc.partial"
    outside = tmp_path / "outside.bin"
    for path in (running, *gone, other, outside):
        path.write_bytes(b"x")
    link = data / ".b-9.tar.zst.worker-link.ailab-partial"  # not a spool of ours: nothing is followed
    os.symlink(outside, link)
    with open(running, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # its worker still runs
        assert store.remove_stale_spools() == 4
        assert sorted(os.listdir(data)) == sorted([running.name, other.name, link.name])
    assert store.remove_stale_spools() == 1  # the worker ended: its lock went with it
    assert sorted(os.listdir(data)) == sorted([other.name, link.name])
    assert outside.read_bytes() == b"x"


def test_a_spool_is_deleted_unless_committed(tmp_path):
    store = FolderStore(tmp_path / "store")
    with store.spool("b-1.tar.zst") as path:
        assert os.path.dirname(path) == str(tmp_path / "store" / "data")
        assert str(os.getpid()) in os.path.basename(path)
        with open(path, "wb") as f:
            f.write(b"half")
    assert os.listdir(tmp_path / "store" / "data") == []
    with store.spool("b-1.tar.zst") as first, store.spool("b-9.tar.zst") as second:
        assert first != second  # an upload while a backup is written: two files, not one
    with store.spool("b-2.tar.zst") as path:
        with open(path, "wb") as f:
            f.write(b"whole")
        store.commit(path, "b-2.tar.zst", {"id": "b-2", "archive": "b-2.tar.zst"})
    assert _files(tmp_path / "store") == ["data/b-2.tar.zst", "meta/b-2.json"]
    assert (tmp_path / "store" / "data" / "b-2.tar.zst").read_bytes() == b"whole"
    assert store.read_all_meta() == [{"id": "b-2", "archive": "b-2.tar.zst"}]
    with store.open_archive("b-2.tar.zst") as f:
        assert f.read() == b"whole"
    with store.local_copy("b-2.tar.zst") as path:
        assert path == str(tmp_path / "store" / "data" / "b-2.tar.zst")
    for opener in (store.open_archive, store.local_copy):
        with pytest.raises(NotFound, match="b-3.tar.zst is missing"):
            with opener("b-3.tar.zst"):
                pass


def test_the_listing_reads_only_our_metadata_files(tmp_path):
    store = FolderStore(tmp_path / "store")
    assert store.read_all_meta() == []
    meta = tmp_path / "store" / "meta"
    meta.mkdir(parents=True)
    (meta / "b-1.json").write_text('{"id": "b-1"}')
    (meta / ".b-2.json").write_text('{"id": "b-2"}')  # hidden: a partial write
    (meta / "b-3.json.partial").write_text('{"id": "b-3"}')
    (meta / "b-4.txt").write_text('{"id": "b-4"}')
    (meta / "b-5.json").write_text("not json")
    (meta / "b-6.json").mkdir()
    assert store.read_all_meta() == [{"id": "b-1"}]


def test_state_documents_beside_the_backups(tmp_path):
    store = FolderStore(tmp_path / "new" / "store")
    assert store.read_state("schedule") is None
    store.write_state("schedule", {"every": "1h", "ü": [1]})
    assert json.loads((tmp_path / "new" / "store" / "schedule.json").read_text()) == {"every": "1h", "ü": [1]}
    assert store.read_state("schedule") == {"every": "1h", "ü": [1]}
    assert os.listdir(tmp_path / "new" / "store") == ["schedule.json"]  # no .partial left
    (tmp_path / "new" / "store" / "schedule.json").write_text("{broken")
    assert store.read_state("schedule") is None


@pytest.mark.parametrize("bad", ["", "..", "a..b", ".hidden", "-dash", "a/b", "a b", "x" * 129, None, 7, ["a"]])
def test_a_bad_id_is_refused_with_a_hint(bad):
    with pytest.raises(NotFound, match="is not a backup id. List the backups"):
        check_id(bad)


def test_good_ids_are_accepted():
    for good in ("a", "notebooks-20261126T120000Z", "A.b_c-1", "x" * 128):
        assert check_id(good) == good


def test_only_metadata_naming_its_own_archive_is_trusted():
    assert meta_is_sound({"id": "b-1", "archive": "b-1.tar.zst"})
    assert meta_is_sound({"id": "b-1", "archive": "b-1.tar.gz"})
    assert meta_is_sound({"id": "b-1", "archive": "b-1.tar"})
    for bad in ({"id": "b-1", "archive": "b-2.tar.zst"}, {"id": "b-1", "archive": "../b-1.tar.zst"},
                {"id": "b-1", "archive": "b-1.zip"}, {"id": "b-1"}, {"id": "..", "archive": "...tar"},
                {"id": "a..b", "archive": "a..b.tar"}, {"id": "../x", "archive": "../x.tar"},
                {"id": 1, "archive": "1.tar"}, {"archive": "b-1.tar"}, ["b-1"], None):
        assert not meta_is_sound(bad), bad


def test_ids_are_readable_and_safe():
    created = datetime.datetime(2026, 11, 26, 12, 0, 5)
    assert make_id("notebooks", created) == "notebooks-20261126T120005Z"
    assert make_id("my notebooks/ä", created) == "my-notebooks-20261126T120005Z"
    assert make_id("--_x_--", created) == "x-20261126T120005Z"
    assert make_id("ä", created) == "backup-20261126T120005Z"
    assert make_id("My Xylo_X", created) == "My-Xylo_X-20261126T120005Z"
    assert make_id("a" * 60, created) == "a" * 48 + "-20261126T120005Z"
    for slug in ("notebooks", "my notebooks/ä", "ä", "a" * 60, "_"):
        assert check_id(make_id(slug, created))


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(DEAD_PID)


def test_a_process_of_another_user_counts_as_alive():
    """Its spool is kept: signalling it is not allowed (EPERM), but it runs."""
    assert pid_alive(1)  # here too, so that the mutation run sees this test call pid_alive
    if os.getuid() != 0:
        assert pid_alive(1)
        return
    child = os.fork()
    if child == 0:  # as nobody, pid 1 (root's) cannot be signalled
        try:
            os.setuid(65534)
            os._exit(0 if pid_alive(1) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
