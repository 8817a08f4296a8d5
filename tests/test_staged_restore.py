"""The one-pass restore (staged_restore): the archive read once, checked while its files are written
into a hidden staging folder inside the folder restored to, then renamed into place. What a user
checks: the tree comes back identical (owner, mode, times, links, empty folders), a damaged archive
changes nothing (the folder's own time neither), a restore stopped at any point is undone exactly,
and no staging folder is ever kept or backed up."""

import os
import shutil
import subprocess

import pytest

import ailab_backup_ext.core as core
import ailab_backup_ext.staged_restore as staged_restore
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, InvalidArchive
from ailab_backup_ext.progress import Progress
from ailab_backup_ext.staged_restore import STAGING_PREFIX
from test_roundtrip import make_tree
from treeutil import folder_snapshot, our_helpers, run_in_volume, volume_snapshot


class Stop(Exception):
    """Stands for a restore killed at that point."""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree") / "notebooks"), big_mb=3)


@pytest.fixture
def local(tree, tmp_path):
    source = tmp_path / "notebooks"
    subprocess.check_call(["cp", "-a", tree, str(source)])  # keeps owners, unlike shutil.copytree
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=str(source), store=str(tmp_path / "store")))
    return source, manager


def change(source):
    (source / "intro.ipynb").write_text("changed")
    (source / "extra.txt").write_text("not in the backup")
    (source / "empty").rmdir()
    os.symlink("extra.txt", source / "new-link")
    os.utime(source, (1_500_000_000, 1_500_000_000))  # not now: a folder time changed meanwhile shows


def staging_folders(source):
    return [n for n in os.listdir(source) if n.startswith(STAGING_PREFIX)]


def counting(monkeypatch, module):
    calls = []
    original = module.iter_archive

    def counted(*args, **kwargs):
        calls.append(kwargs.get("check_content", True))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "iter_archive", counted)
    return calls


def test_a_replace_restore_reads_the_archive_once_and_brings_the_tree_back(local, monkeypatch):
    source, manager = local
    original = folder_snapshot(source)
    backup = manager.create_backup()
    change(source)
    changed = folder_snapshot(source)
    two_pass, one_pass = counting(monkeypatch, core), counting(monkeypatch, staged_restore)
    result = manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original  # the folder's own time too
    assert (one_pass, two_pass) == ([True], [])  # read once, with every check
    assert staging_folders(source) == []
    manager.undo_last_restore()
    assert folder_snapshot(source) == changed  # undo is exact
    assert result["file_count"] == backup["file_count"]


def test_a_damaged_archive_changes_nothing_not_even_the_folders_time(local):
    source, manager = local
    backup = manager.create_backup()
    archive = os.path.join(manager.store.path, "data", backup["archive"])
    with open(archive, "r+b") as f:  # one byte flipped in the middle
        f.seek(os.path.getsize(archive) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    change(source)
    before = folder_snapshot(source)
    with pytest.raises(InvalidArchive):
        manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]  # no safety backup either


@pytest.mark.parametrize("phase", ["checking", "restoring"])
def test_a_restore_stopped_midway_is_undone_exactly(local, phase):
    """Stopped while it stages (nothing visible has changed, nothing to undo) or while it moves
    files into place (the safety backup was taken: undo brings the state before back)."""
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)

    def stop(progress):  # staging: after the first file; moving: once "empty" (removed by change) is back
        if progress.phase == phase and progress.done_files >= 1 and (phase == "checking" or (source / "empty").exists()):
            raise Stop(phase)

    with pytest.raises(Stop):
        manager.restore_backup(backup["id"], "replace", Progress(stop))
    if phase == "checking":
        assert folder_snapshot(source) == before
        assert [b["id"] for b in manager.list_backups()] == [backup["id"]]
    else:
        assert folder_snapshot(source) != before  # it was stopped midway, after some change
        manager.undo_last_restore()
        assert folder_snapshot(source) == before
    assert staging_folders(source) == []


def test_a_killed_restores_staging_folder_is_never_backed_up_and_goes_with_the_next_backup(local):
    source, manager = local
    before = folder_snapshot(source)
    stale = source / f"{STAGING_PREFIX}0123456789ab"  # as a SIGKILLed restore leaves it (no lock held)
    stale.mkdir()
    (stale / "0").write_bytes(b"staged content")
    os.utime(source, (before["."][4], before["."][4]))
    backup = manager.create_backup()
    assert staging_folders(source) == []
    assert folder_snapshot(source) == before  # the folder's time kept
    with manager.open_archive(backup["id"]) as raw:
        import zstandard

        names = subprocess.run(["tar", "-t"], input=zstandard.ZstdDecompressor().stream_reader(raw).read(),
                               capture_output=True, check=True).stdout.decode()
    assert STAGING_PREFIX not in names


def test_worker_restore_stopped_while_staging_changes_nothing_in_the_volume(
        docker_client, make_volume, tree, python_image):
    """On the real engine, in the worker: the worker killed while it checks and stages; the
    volume's visible tree is unchanged, the next backup leaves the staging folder out, and the
    next restore removes it."""
    from test_roundtrip import fill_volume

    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, tree)
    # Long enough to be killed midway: progress lines come every 0.2 s, so on a fast machine the
    # first one past 1 MiB may already be 80 MB in; 160 MB remain to be staged after it.
    run_in_volume(docker_client, volume, "cd /v/data && for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=big$i.bin "
                                         "bs=1M count=40 2>/dev/null; done")
    manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=python_image))
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo changed > intro.ipynb && echo new > extra.txt")
    before = volume_snapshot(docker_client, volume)
    killed = []

    def kill(progress):
        if progress.phase == "checking" and progress.done_bytes > 1 << 20 and not killed:
            [worker] = [c for c in our_helpers(docker_client) if "ailab-backup.worker" in (c.attrs.get("Labels") or {})]
            worker.kill()
            killed.append((progress.done_bytes, progress.total_bytes))

    with pytest.raises(BackupError, match="stopped before it finished"):
        manager.restore_backup(backup["id"], "replace", Progress(kill))
    assert killed, "the restore never reported staging progress"
    left = volume_snapshot(docker_client, volume)
    staged = [p for p in left if p.startswith(STAGING_PREFIX)]
    assert staged, "the worker was killed before it staged anything"
    assert {p: v for p, v in left.items() if not p.startswith(STAGING_PREFIX) and p != "."} == \
        {p: v for p, v in before.items() if p != "."}
    second = manager.create_backup()  # the next operation (its mount is read-only): it leaves the staging out
    assert second["file_count"] == backup["file_count"] + 1  # extra.txt, and no staged file
    manager.restore_backup(second["id"], "replace")  # the next restore removes it
    after = volume_snapshot(docker_client, volume)
    assert not [p for p in after if p.startswith(STAGING_PREFIX)]
    assert after == before  # the folder's time too: kept while staging came and went


def add_small_files(source, count):
    folder = source / "many"
    folder.mkdir()
    for n in range(count):
        (folder / f"note-{n}.ipynb").write_bytes(os.urandom(n * 37 % 5000))  # 0 to 5 KB, a few empty


def test_small_files_reach_the_writer_in_batches_and_every_one_is_restored(local, monkeypatch):
    """Small files are handed to the staging's writer thread many at a time (one hand-over each
    cost as much as writing it), and none is lost on the way, the last, partial batch neither."""
    source, manager = local
    add_small_files(source, 3 * staged_restore.SMALL_FILES_BATCH + 5)
    original = folder_snapshot(source)
    backup = manager.create_backup()
    change(source)
    shutil.rmtree(source / "many")  # (files the folder holds as the backup has them are not staged)
    handed = []
    original_submit = staged_restore.Worker.submit

    def counted(worker, fn, *args):
        handed.append(len(args[0]) if fn is staged_restore._write_small_files else 0)
        return original_submit(worker, fn, *args)

    monkeypatch.setattr(staged_restore.Worker, "submit", counted)
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original
    batches = [n for n in handed if n]
    assert sum(batches) >= 3 * staged_restore.SMALL_FILES_BATCH + 5
    assert len(batches) < sum(batches) / 4 and max(batches) <= staged_restore.SMALL_FILES_BATCH


def test_a_staged_write_that_fails_changes_nothing(local, monkeypatch):
    """The disk fills up while the writer thread writes a batch of small files: the restore says
    so, nothing visible changed, and the staging folder is gone."""
    source, manager = local
    add_small_files(source, 2 * staged_restore.SMALL_FILES_BATCH)
    backup = manager.create_backup()
    change(source)
    shutil.rmtree(source / "many")
    before = folder_snapshot(source)
    written = []
    original_write = staged_restore._StagedFile.write

    def full_disk(staged, chunk):
        written.append(len(chunk))
        if len(written) == staged_restore.SMALL_FILES_BATCH + 3:
            raise OSError(28, "No space left on device")
        return original_write(staged, chunk)

    monkeypatch.setattr(staged_restore._StagedFile, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]
