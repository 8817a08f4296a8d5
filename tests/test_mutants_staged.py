"""Tests written for the survivors of the one-pass restore's mutation run (tests/MUTANTS.md,
"staged_restore.py"): each pins something the other tests of staged_restore let slip. Real files
in a temporary folder, no Docker; where something must happen at one moment of a restore (a file
swapped after the folder was listed), the restore's own step is wrapped and called as it is."""

import errno
import fcntl
import gc
import json
import os
import time
import warnings

import pytest

import ailab_backup_ext.core as core
import ailab_backup_ext.staged_restore as staged_restore
from ailab_backup_ext.archive import CHUNK
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, InvalidArchive, TooLarge
from ailab_backup_ext.progress import Progress
from ailab_backup_ext.staged_restore import STAGING_PREFIX
from treeutil import folder_snapshot

OLD = 1_600_000_000
BIG = "data/big.bin"  # three and a half chunks: compared piece by piece


@pytest.fixture
def folder(tmp_path):
    source = tmp_path / "notebooks"
    files = {
        "intro.ipynb": b'{"cells": [], "nbformat": 4}',
        "sub/notes.txt": b"some notes",
        BIG: os.urandom(3 * CHUNK + CHUNK // 2),
    }
    for rel, content in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(content)
    for dirpath, dirnames, filenames in os.walk(source, topdown=False):
        for name in filenames + dirnames + [""]:
            os.utime(os.path.join(dirpath, name), (OLD, OLD))
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=str(source), store=str(tmp_path / "store")))
    return source, manager


def staging_folders(source):
    return [n for n in os.listdir(source) if n.startswith(STAGING_PREFIX)]


def rewrite_keeping_meta(path, offset):
    """The byte at ``offset`` of ``path`` flipped in place; its size, mode and time stay: a restore
    must compare the content to see it."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        old = os.pread(f.fileno(), 1, offset)
        os.pwrite(f.fileno(), bytes([old[0] ^ 0xFF]), offset)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def changed_message(path):
    return (f"{path!r} was changed while the restore was being prepared; nothing was changed. Restore "
            "again once nothing else writes to the folder.")


def wrap(monkeypatch, owner, name, before):
    """``owner.name`` wrapped: ``before(*args)`` runs first, then the real one (the mutant under test)."""
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        before(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


# comparing a file with the archive's, staging what differs -----------------------------------


def test_a_large_file_that_differs_only_near_its_end_comes_back_whole(folder):
    """Its first chunks equal the archive's: they are staged from the folder's own file, the rest
    from the archive; the staged file must be the backup's exactly (not a byte shifted or twice)."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    rewrite_keeping_meta(source / BIG, os.path.getsize(source / BIG) - 10)
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original
    assert staging_folders(source) == []


def test_a_file_that_shrinks_while_it_is_copied_from_stops_the_restore_by_its_name(folder, monkeypatch):
    source, manager = folder
    backup = manager.create_backup()
    rewrite_keeping_meta(source / BIG, os.path.getsize(source / BIG) - 10)

    def shrink(entry, prefix_from, prefix):
        os.truncate(source / BIG, CHUNK + 1)  # after the comparison, before its equal part is copied

    wrap(monkeypatch, staged_restore, "_compared_prefix", shrink)
    before = folder_snapshot(source)
    with pytest.raises(BackupError) as refused:
        manager.restore_backup(backup["id"], "replace")
    assert str(refused.value) == changed_message(BIG)
    after = folder_snapshot(source)
    assert after.pop(BIG) != before.pop(BIG) and os.path.getsize(source / BIG) == CHUNK + 1  # as it was cut
    assert after == before
    assert staging_folders(source) == []
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]  # no safety backup kept


def test_a_file_found_identical_and_deleted_before_anything_moves_stops_the_restore_by_its_name(folder, monkeypatch):
    source, manager = folder
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text("changed")
    before = folder_snapshot(source)
    create = BackupManager._create

    def deleting(self, label, kind, *args, **kwargs):
        if kind == "safety":  # after the check found big.bin identical, before anything moves
            os.unlink(source / BIG)
            before.pop(BIG)
            before["data"] = folder_snapshot(source)["data"]  # its time
        return create(self, label, kind, *args, **kwargs)

    monkeypatch.setattr(BackupManager, "_create", deleting)
    with pytest.raises(BackupError) as refused:
        manager.restore_backup(backup["id"], "replace")
    assert str(refused.value) == changed_message(BIG)
    assert folder_snapshot(source) == before  # not restored without it either
    assert staging_folders(source) == []


@pytest.mark.parametrize("swap", ["folder", "other-file", "link-to-the-same-file"])
def test_a_file_swapped_after_the_folder_was_listed_is_restored_as_the_backup_has_it(folder, tmp_path, monkeypatch, swap):
    """Between the listing and the comparison, the file is replaced: by a folder, by another file,
    or by a link to the very file (a hard link outside): never compared through the link, never
    taken for the listed file; the restore writes the backup's file there."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    path = source / "sub" / "notes.txt"
    outside = tmp_path / "outside.txt"
    os.link(path, outside)

    def swapping(self, entry, *args, **kwargs):
        if entry.path == "sub/notes.txt":
            os.unlink(path)
            if swap == "folder":
                path.mkdir()
                (path / "inside.txt").write_text("in the folder")
            elif swap == "other-file":
                path.write_bytes(b"some notes")
                os.utime(path, (OLD, OLD))
            else:
                os.symlink(outside, path)

    wrap(monkeypatch, staged_restore.Staging, "stage", swapping)
    manager.restore_backup(backup["id"], "merge")
    assert folder_snapshot(source) == original
    assert staging_folders(source) == []


@pytest.mark.parametrize("mode", ["merge", "replace"])
def test_a_folder_where_the_backup_has_a_file_is_replaced_by_the_file(folder, mode):
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    path = source / "sub" / "notes.txt"
    path.unlink()
    path.mkdir()
    (path / "inside.txt").write_text("in the folder")
    manager.restore_backup(backup["id"], mode)
    assert folder_snapshot(source) == original
    assert staging_folders(source) == []


def test_a_file_left_in_place_gets_the_backups_time_as_a_restored_file_does(folder):
    """Equal but for the fraction of its time: left in place, its access and modification times
    set to the backup's whole second, as each file the restore writes gets them."""
    source, manager = folder
    backup = manager.create_backup()
    big = source / BIG
    inode = os.stat(big).st_ino
    os.utime(big, ns=(OLD * 10**9 + 123, OLD * 10**9 + 500_000_000))
    manager.restore_backup(backup["id"], "replace")
    st = os.stat(big)
    assert st.st_ino == inode
    assert (st.st_atime_ns, st.st_mtime_ns) == (OLD * 10**9, OLD * 10**9)


# the files a partial safety backup lists as unchanged (an undo) ------------------------------


def restored_then_changed(folder):
    """A backup restored over a changed folder: its safety backup holds intro.ipynb and lists the
    rest as unchanged, held by the backup. The state to undo to, and the inodes of the rest."""
    source, manager = folder
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text('{"cells": ["changed"]}')
    os.utime(source / "intro.ipynb", (OLD + 5, OLD + 5))
    before = folder_snapshot(source)
    result = manager.restore_backup(backup["id"], "replace")
    assert manager.get_backup(result["safety_backup_id"])["unchanged_files"] == 2
    return before, {p: os.stat(source / p).st_ino for p in (BIG, "sub/notes.txt")}


def test_an_undo_leaves_the_files_its_safety_backup_lists_as_unchanged_in_place(folder, monkeypatch):
    source, manager = folder
    before, inodes = restored_then_changed(folder)
    read_again = []
    wrap(monkeypatch, core, "check_and_stage", lambda *a, **k: read_again.append(k.get("only")))
    manager.undo_last_restore()
    assert folder_snapshot(source) == before
    assert {p: os.stat(source / p).st_ino for p in inodes} == inodes  # found identical: not written again
    assert read_again == [None]  # the safety backup read; the backup holding the rest not needed


def test_an_undo_brings_back_an_unchanged_file_edited_since_without_a_change_of_size_or_time(folder):
    source, manager = folder
    before, _ = restored_then_changed(folder)
    rewrite_keeping_meta(source / BIG, 7)
    manager.undo_last_restore()
    assert folder_snapshot(source) == before


def test_an_undo_brings_back_the_mode_of_an_unchanged_file_changed_while_it_is_prepared(folder, monkeypatch):
    """chmod after the folder was listed: the listing still says the file is as listed, the file
    itself no longer is; it is restored from the backup holding it."""
    source, manager = folder
    before, _ = restored_then_changed(folder)

    def chmod(self, entry):
        if entry.path == BIG:
            os.chmod(source / BIG, 0o600)

    wrap(monkeypatch, staged_restore.Staging, "hashes_as", chmod)
    manager.undo_last_restore()
    assert folder_snapshot(source) == before  # the mode too


# on disk before the renames; another file system inside the folder ---------------------------


def test_the_staged_files_are_synced_with_one_syncfs_of_their_file_system_before_any_moves(folder, monkeypatch):
    source, manager = folder
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text("changed")
    libc = staged_restore._libc()
    if libc is None or not hasattr(libc, "syncfs"):
        pytest.skip("no syncfs in this C library")
    synced, sync_all = [], []

    class Watched:
        def __getattr__(self, name):
            return getattr(libc, name)

        def syncfs(self, fd):
            synced.append((os.fstat(fd).st_dev, len(os.listdir(fd)), (source / "intro.ipynb").read_text()))
            return libc.syncfs(fd)

    monkeypatch.setattr(staged_restore, "_libc", Watched)
    monkeypatch.setattr(os, "sync", lambda: sync_all.append(True))
    manager.restore_backup(backup["id"], "replace")
    assert synced == [(os.stat(source).st_dev, 1, "changed")]  # the one staged file there, nothing moved yet
    assert sync_all == []  # not every file system of the machine


def test_a_file_over_another_file_system_inside_the_folder_is_copied_from_its_staged_file(folder, monkeypatch):
    """A rename from the staging folder into place fails with EXDEV where another file system is
    mounted inside the folder: the staged (checked) file is copied there instead, and a rename that
    fails otherwise fails the restore."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    (source / "sub" / "notes.txt").write_text("changed")
    real_replace = os.replace
    answer = [errno.EXDEV]

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if src_dir_fd != dst_dir_fd:  # out of the staging folder (a copy renames within its folder)
            raise OSError(answer[0], os.strerror(answer[0]), src)
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)
    fds = len(os.listdir("/proc/self/fd"))
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original
    assert staging_folders(source) == []
    assert len(os.listdir("/proc/self/fd")) == fds  # the staged file closed
    (source / "sub" / "notes.txt").write_text("changed again")
    answer[0] = errno.EIO
    with pytest.raises(OSError) as failed:
        manager.restore_backup(backup["id"], "replace")
    assert failed.value.errno == errno.EIO


def test_an_archive_cut_inside_a_large_file_is_refused_and_leaves_no_file_open(folder):
    source, manager = folder
    backup = manager.create_backup()
    archive = os.path.join(manager.store.path, "data", backup["archive"])
    with open(archive, "r+b") as f:
        f.truncate(os.path.getsize(archive) // 2)
    (source / BIG).write_bytes(b"changed")
    before = folder_snapshot(source)
    gc.collect()  # what earlier tests left to it is not this restore's
    fds_before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            manager.restore_backup(backup["id"], "replace")
        except InvalidArchive as exc:  # its traceback, holding the restore's frames, goes at the end of this block
            assert str(exc) == ("The archive is damaged or truncated (unexpected end of data). Nothing was "
                                "changed; use another backup.")  # the reader's own words, not their type
        else:
            pytest.fail("a cut archive was restored")
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and "file" in str(w.message)]
    assert unclosed == []  # closed, not left to the garbage collector
    assert open_fds() == fds_before  # the staged files are bare descriptors: no warning tells of them
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []


# staging folders left by a killed restore -------------------------------------------------------


def staging_kinds(source):
    """Beside the notebooks: stale staging folders (no lock: their restore was killed), one held
    (locked, as by a running restore), and names with the prefix that are no staging folder of
    ours (a file, a link to a folder outside): only the stale ones may go."""
    outside = source.parent / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not in the folder")
    held = f"{STAGING_PREFIX}{'f' * 12}"
    (source / held).mkdir()
    lock = os.open(source / held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    stale = []
    while len(stale) < 3 or os.listdir(source).index(held) > os.listdir(source).index(stale[-1]):
        stale.append(f"{STAGING_PREFIX}{len(stale) + 1:012x}")  # until one is listed after the held one
        (source / stale[-1]).mkdir()
        (source / stale[-1] / "0").write_bytes(b"staged content")
        assert len(stale) < 100
    (source / f"{STAGING_PREFIX}a-file").write_text("a file")
    os.symlink(outside, source / f"{STAGING_PREFIX}a-link")
    os.utime(source, (OLD, OLD))
    return stale, held, lock


def test_only_staging_folders_no_restore_holds_are_removed_and_the_folders_time_stays(folder):
    source, _ = folder
    stale, held, lock = staging_kinds(source)
    try:
        before = set(os.listdir(source))
        assert staged_restore.remove_stale_staging(str(source)) == [held]
        assert set(os.listdir(source)) == before - set(stale)
        assert (source.parent / "elsewhere" / "keep.txt").exists()
        assert os.stat(source).st_mtime == OLD
    finally:
        os.close(lock)
    assert staged_restore.remove_stale_staging(str(source)) == []  # its restore ended: it goes too
    assert held not in os.listdir(source)
    assert staged_restore.remove_stale_staging(str(source / "missing")) == []
    assert staged_restore.remove_stale_staging(str(source / "intro.ipynb")) == []  # not a folder


def test_a_held_staging_folder_is_left_out_of_the_source_once(folder):
    source, manager = folder
    stale, held, lock = staging_kinds(source)
    try:
        local = manager.source
        staged_restore.clear_staging(local)
        staged_restore.clear_staging(local)
        assert local.skip_paths.count(held) == 1 and not set(stale) & set(local.skip_paths)
    finally:
        os.close(lock)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO])
def test_a_staging_folder_that_cannot_be_removed_is_left_out_only_when_the_mount_is_read_only(folder, monkeypatch, code):
    """A backup's helper sees the folder read-only (EROFS, or EACCES/EPERM): what cannot go is left
    out, removed by the next restore; any other error is raised."""
    source, _ = folder
    (source / f"{STAGING_PREFIX}0123456789ab").mkdir()

    def failing(dir_fd, name):
        raise OSError(code, os.strerror(code), name)

    monkeypatch.setattr(staged_restore, "remove_at", failing)
    if code == errno.EIO:
        with pytest.raises(OSError) as failed:
            staged_restore.remove_stale_staging(str(source))
        assert failed.value.errno == errno.EIO
    else:
        assert staged_restore.remove_stale_staging(str(source)) == [f"{STAGING_PREFIX}0123456789ab"]


def test_a_staged_file_that_cannot_be_written_fails_the_restore_before_anything_moves(folder, monkeypatch):
    """The staged files are written by a worker thread: its failure (a full disk) is waited for
    and raised before the safety backup and the renames, even for the last file staged."""
    source, manager = folder
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text("changed")  # the one file to stage
    before = folder_snapshot(source)

    def disk_full(self, data, entry):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), entry.path)

    monkeypatch.setattr(staged_restore._StagedFile, "write_whole", disk_full)
    with pytest.raises(OSError) as failed:
        manager.restore_backup(backup["id"], "replace")
    assert failed.value.errno == errno.ENOSPC
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]  # no safety backup either


def test_a_large_staged_file_failing_while_its_pieces_are_handed_over_fails_the_restore_with_that_error(folder, monkeypatch):
    """The writer thread fails on a large file's first piece while the reading thread still hands it
    the next ones: the restore fails with the disk's error (also what abandoning the file raises
    then), and nothing changes."""
    source, manager = folder
    backup = manager.create_backup()
    (source / BIG).write_bytes(b"changed")  # the one file to stage: three and a half chunks
    before = folder_snapshot(source)
    failed_in_writer = []

    def disk_full(self, chunk):
        failed_in_writer.append(self.name)
        self.abandon()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_submit = staged_restore.Worker.submit

    def submit_once_the_failure_is_known(self, fn, *args):
        if failed_in_writer and isinstance(getattr(fn, "__self__", None), staged_restore._StagedFile):
            waited_until = time.monotonic() + 30  # the next hand-over to the staging's thread finds its failure
            while self._error is None and time.monotonic() < waited_until:
                time.sleep(0.001)
        return real_submit(self, fn, *args)

    monkeypatch.setattr(staged_restore._StagedFile, "write", disk_full)
    monkeypatch.setattr(staged_restore.Worker, "submit", submit_once_the_failure_is_known)
    with pytest.raises(OSError) as failed:
        manager.restore_backup(backup["id"], "replace")
    assert failed.value.errno == errno.ENOSPC
    assert failed_in_writer == ["0"]
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []

def test_a_restore_refuses_an_archive_with_more_entries_than_the_limit_and_changes_nothing(folder, tmp_path):
    source, manager = folder
    backup = manager.create_backup()  # the folder, 2 folders, 3 files
    (source / "intro.ipynb").write_text("changed")
    before = folder_snapshot(source)
    limited = BackupManager(AILabBackup(docker_url="none", source_dir=str(source), store=str(tmp_path / "store"),
                                        max_entries=2))
    with pytest.raises(TooLarge) as refused:
        limited.restore_backup(backup["id"], "replace")
    assert str(refused.value) == ("The archive has more than 2 entries (AILabBackup.max_entries): refused. "
                                  "Raise the limit if the archive is trusted.")
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []


def test_the_reader_is_told_how_many_unchanged_files_a_partial_safety_backup_lists(folder, monkeypatch):
    """Their count, from the store's record, lets the manifest be 1 KiB longer for each (the
    reader's allowance, tests/test_mutants_reader.py); a whole backup lists none."""
    told = []
    real = staged_restore.iter_archive

    def telling(*args, **kwargs):
        told.append(kwargs["unchanged_files"])
        return real(*args, **kwargs)

    monkeypatch.setattr(staged_restore, "iter_archive", telling)
    restored_then_changed(folder)
    folder[1].undo_last_restore()
    assert told == [0, 2]


def test_an_archive_that_does_not_match_the_stores_checksum_is_refused_by_its_id(folder):
    source, manager = folder
    backup = manager.create_backup()
    record = os.path.join(manager.store.path, "meta", backup["id"] + ".json")
    with open(record) as f:
        meta = json.load(f)
    meta["sha256"] = "0" * 64
    with open(record, "w") as f:
        json.dump(meta, f)
    (source / "intro.ipynb").write_text("changed")
    before = folder_snapshot(source)
    with pytest.raises(InvalidArchive) as refused:
        manager.restore_backup(backup["id"], "replace")
    assert str(refused.value) == (f"The archive of {backup['id']} does not match its recorded checksum: it was "
                                  "altered or damaged in the store.")
    assert folder_snapshot(source) == before
    assert staging_folders(source) == []


def test_a_store_without_a_file_here_is_read_as_its_stream_once(folder, monkeypatch):
    """As an S3 store's download: the stream itself is checked and staged, not opened as a path."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text("changed")
    monkeypatch.setattr(type(manager.store), "local_path", lambda store, name: None)
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original


def test_the_restores_timeline_names_its_phases_and_what_its_threads_spent(folder):
    """The per-phase timing the worker reports and the benchmark prints: the waits in their order,
    and the CPU of the reading (this thread's: no more than it has spent in all), the archive's
    hashing thread and the staged files' writer."""
    source, manager = folder
    backup = manager.create_backup()
    (source / "intro.ipynb").write_text("changed")
    progress = Progress()
    manager.restore_backup(backup["id"], "replace", progress)
    phases = [phase for phase, _, _ in progress.timeline]
    waits = ["checking", "waiting for the hashing thread", "waiting for the staged files' writer", "syncfs", "restoring"]
    assert [p for p in phases if p in waits] == waits
    reading = "reading: zstd, tar, small files' SHA-256, comparing"
    spent = {task: progress.thread_cpu.get(task) for task in
             (reading, "SHA-256 of the archive (thread)", "writing staged files (thread)")}
    assert all(seconds is not None and seconds >= 0 for seconds in spent.values()), progress.thread_cpu
    assert spent[reading] <= time.thread_time()


# writing the staged files ------------------------------------------------------------------------


def test_a_small_file_that_differs_keeping_its_size_and_time_comes_back_whole(folder):
    """A small file is compared in one piece: the piece that differs is what gets staged (the
    archive has nothing left to read by then), not an empty file."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    rewrite_keeping_meta(source / "intro.ipynb", 0)
    rewrite_keeping_meta(source / "sub/notes.txt", len("some notes") - 1)
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original


def test_a_small_file_that_grows_while_it_is_compared_comes_back_as_the_backup_has_it(folder, monkeypatch):
    """Its bytes all equal the archive's, then it goes on (written to after it was opened): it is
    staged from the bytes compared equal, the backup's file whole, not from the archive's nothing left."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    real_open_current = staged_restore.Staging.open_current

    def growing(self, path):
        opened = real_open_current(self, path)
        if path == "intro.ipynb" and opened is not None:
            with open(source / path, "ab") as f:
                f.write(b" and more")
        return opened

    monkeypatch.setattr(staged_restore.Staging, "open_current", growing)
    manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original

def test_staged_files_written_in_short_writes_come_back_whole(folder, monkeypatch):
    """A write may take only part of what it is given (a signal, a nearly full disk): the rest is
    written until all of it is, for every staged file."""
    source, manager = folder
    original = folder_snapshot(source)
    backup = manager.create_backup()
    for rel in ("intro.ipynb", "sub/notes.txt", BIG):
        os.remove(source / rel)
    real_write = os.write

    def short_write(fd, data):
        if len(data) > 1 and os.path.isfile(f"/proc/self/fd/{fd}"):
            return real_write(fd, memoryview(data)[:len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    manager.restore_backup(backup["id"], "replace")
    monkeypatch.undo()
    assert folder_snapshot(source) == original


def test_a_restore_leaves_no_file_descriptor_open(folder):
    """Each staged file is a bare descriptor (no file object the garbage collector would close):
    every one is closed once written, or a restore of many files runs out of them."""
    source, manager = folder
    for number in range(40):  # more than one batch of small files
        (source / f"many/{number}.txt").parent.mkdir(exist_ok=True)
        (source / f"many/{number}.txt").write_text(f"file {number}")
    original = folder_snapshot(source)
    backup = manager.create_backup()
    for number in range(40):
        os.remove(source / f"many/{number}.txt")
    os.remove(source / BIG)
    gc.collect()
    before = open_fds()
    manager.restore_backup(backup["id"], "replace")
    gc.collect()
    assert open_fds() == before
    assert folder_snapshot(source) == original
