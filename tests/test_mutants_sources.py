"""What a restore removes and keeps, and how a folder is written and emptied, at the edges. Fast
and Docker-free, so the mutation run (tests/MUTANTS.md) checks sources.py with them."""

import errno
import io
import os
import shutil
import stat
import subprocess

import pytest

from ailab_backup_ext.archive import DIR, FILE, ROOT, SYMLINK, Entry
from ailab_backup_ext.errors import BackupError, InvalidArchive
from ailab_backup_ext.sources import LocalFolderSource, folders_holding, in_scope, is_excluded, remove_at, removable_extras
from treeutil import folder_snapshot


def test_excludes_match_a_path_its_parents_or_its_name():
    patterns = ["*.tmp", "data/big", "cache"]
    for path in ("x.tmp", "a/b/x.tmp", "data/big", "data/big/inner.txt", "cache", "a/cache/b"):
        assert is_excluded(path, patterns), path
    for path in (".", "data", "data/bigger", "a/data/big", "x.tmpl", "cachex"):
        assert not is_excluded(path, patterns), path
    assert not is_excluded("x.tmp", [])
    assert not is_excluded(".", ["*"])  # the folder itself is never left out
    assert not is_excluded("a/b.txt", [""])  # an empty pattern (a blank line of the setting) leaves nothing out


def test_scope_is_the_chosen_paths_and_what_lies_below():
    assert in_scope("anything", None)
    assert in_scope("a", ["a"]) and in_scope("a/b", ["a"]) and in_scope("c", ["a", "c"])
    assert not in_scope("ab", ["a"]) and not in_scope("b", ["a"]) and not in_scope("a", ["a/b"])
    assert not in_scope("a", [])


def test_folders_holding_what_must_stay():
    assert folders_holding(["a/b/keep.tmp", "c/x"], ["*.tmp"]) == {"a", "a/b"}
    assert folders_holding(["x"], [], skip=["s/store"]) == {"s"}
    assert folders_holding(["top.tmp"], ["*.tmp"]) == set()


def test_replace_removes_the_top_of_each_extra_subtree_and_never_what_must_stay():
    current = [".", "a", "a/keep.txt", "a/old.txt", "old", "old/x", "old/y/z", "p", "p/keep.tmp", "p/gone",
               "s", "s/store", "s/store/data", "s/other"]
    keep = {".": None, "a": None, "a/keep.txt": None}
    assert removable_extras(current, keep, ["*.tmp"], skip=["s/store"]) == ["a/old.txt", "old", "p/gone", "s/other"]
    assert removable_extras(current, keep, ["*.tmp"], scope=["a", "p"]) == ["a/old.txt", "p/gone"]
    assert removable_extras(current, keep, []) == ["a/old.txt", "old", "p", "s"]
    assert removable_extras(["."], {}, []) == []


# --- writing a restore into a folder ---------------------------------------------------------

T = 1_700_000_000


def _entries(spec):
    """(Entry, content) pairs from {path: bytes (a file), None (a folder) or "->target"}."""
    out = [(Entry(ROOT, DIR, mode=0o750, mtime=T), None)]
    for path, what in spec.items():
        if what is None:
            out.append((Entry(path, DIR, mode=0o751, mtime=T + 1), None))
        elif isinstance(what, str):
            out.append((Entry(path, SYMLINK, mode=0o777, mtime=T + 2, target=what[2:]), None))
        else:
            out.append((Entry(path, FILE, size=len(what), mode=0o640, mtime=T + 3), io.BytesIO(what)))
    return out


def _write(folder, spec, **kwargs):
    entries = _entries(spec)
    keep = {e.path: e for e, _ in entries}
    LocalFolderSource(str(folder)).write_entries(entries, keep=keep if kwargs.get("replace") else None, **kwargs)
    return keep


def test_a_restore_writes_files_folders_and_links_with_mode_and_time_and_no_temporary_names(tmp_path):
    nb = tmp_path / "nb"
    _write(nb, {"d": None, "d/f.txt": b"content", "d/e": None, "l": "->d/f.txt", "top": b""})
    snap = folder_snapshot(nb, with_owner=False)
    assert snap["."][:3] == ("dir", 0o750, T)
    assert snap["d"][:3] == ("dir", 0o751, T + 1) and snap["d/e"][:3] == ("dir", 0o751, T + 1)
    assert snap["d/f.txt"][:3] == ("file", 0o640, T + 3)
    assert (nb / "d" / "f.txt").read_bytes() == b"content" and (nb / "top").read_bytes() == b""
    assert snap["l"][0] == "symlink" and os.readlink(nb / "l") == "d/f.txt"
    assert int(os.lstat(nb / "l").st_mtime) == T + 2
    assert sorted(snap) == [".", "d", "d/e", "d/f.txt", "l", "top"]


def test_a_restore_replaces_whatever_is_in_the_way_and_never_writes_through_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("outside, must stay")
    nb = tmp_path / "nb"
    (nb / "dir-now-file" / "deep").mkdir(parents=True)
    (nb / "dir-now-file" / "deep" / "x").write_text("x")
    (nb / "file-now-dir").write_text("a file")
    os.symlink(str(outside), nb / "link-now-dir")
    os.symlink(str(outside / "f.txt"), nb / "link-now-file")
    (nb / "file-now-link").write_text("a file")
    (nb / (".f.txt.ailab-restore-%d" % os.getpid())).write_text("left by a killed restore")
    _write(nb, {"dir-now-file": b"now a file", "file-now-dir": None, "file-now-dir/in": b"in",
                "link-now-dir": None, "link-now-dir/f.txt": b"inside", "link-now-file": b"inside too",
                "file-now-link": "->dir-now-file", "f.txt": b"f"})
    assert (outside / "f.txt").read_text() == "outside, must stay" and os.listdir(outside) == ["f.txt"]
    assert (nb / "dir-now-file").read_bytes() == b"now a file"
    assert (nb / "file-now-dir" / "in").read_bytes() == b"in"
    assert not os.path.islink(nb / "link-now-dir") and (nb / "link-now-dir" / "f.txt").read_bytes() == b"inside"
    assert not os.path.islink(nb / "link-now-file") and (nb / "link-now-file").read_bytes() == b"inside too"
    assert os.readlink(nb / "file-now-link") == "dir-now-file"
    assert not [n for n in os.listdir(nb) if "ailab-restore" in n]


def test_replace_removes_what_the_backup_lacks_except_protected_and_outside_the_scope(tmp_path):
    nb = tmp_path / "nb"
    for rel in ("old/deep/x", "keep/old.txt", "cache.tmp", "other/y"):
        (nb / rel).parent.mkdir(parents=True, exist_ok=True)
        (nb / rel).write_text(rel)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "z").write_text("z")
    os.symlink(str(outside), nb / "old" / "link-out")
    keep = _write(nb, {"keep": None, "keep/new.txt": b"n"}, replace=True, protected=["*.tmp"],
                  scope=["old", "keep", "cache.tmp"])
    assert sorted(folder_snapshot(nb)) == [".", "cache.tmp", "keep", "keep/new.txt", "other", "other/y"]
    assert os.listdir(outside) == ["z"]  # the link went, not what it points to
    assert "keep/new.txt" in keep


def test_a_file_that_ends_early_is_refused_and_leaves_nothing(tmp_path):
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "f.txt").write_text("before")
    short = [(Entry(ROOT, DIR, mode=0o755), None), (Entry("f.txt", FILE, size=10), io.BytesIO(b"short"))]
    with pytest.raises(InvalidArchive, match="'f.txt' ended early"):
        LocalFolderSource(str(nb)).write_entries(short)
    assert os.listdir(nb) == ["f.txt"] and (nb / "f.txt").read_text() == "before"


def test_remove_at_empties_a_tree_without_following_links(tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "f").write_text("f")
    top = tmp_path / "top"
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "a" / "b" / "c" / "f").write_text("f")
    (top / "a" / "g").write_text("g")
    os.symlink(str(outside), top / "a" / "link")
    os.symlink(str(outside / "sub"), top / "a" / "b" / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "top")
        assert not os.path.lexists(top)
        remove_at(fd, "top")  # gone: nothing to do
        os.symlink(str(outside), tmp_path / "link")
        remove_at(fd, "link")
        (tmp_path / "file").write_text("x")
        remove_at(fd, "file")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert folder_snapshot(outside, with_owner=False).keys() == {".", "sub", "sub/f"}


# --- the restore half at its edges: a store inside the folder, archives without folder entries,
# another program changing the folder meanwhile, filesystems that answer otherwise ------------


def test_a_restore_never_writes_into_the_store_inside_the_folder_and_writes_all_the_rest(tmp_path):
    """An uploaded archive may hold paths where this machine keeps its store: those are left
    out, everything after them is still restored, and a replace never removes the store."""
    nb = tmp_path / "nb"
    (nb / "sub" / "store" / "data").mkdir(parents=True)
    (nb / "sub" / "store" / "data" / "b.tar.zst").write_bytes(b"a backup")
    (nb / "old.txt").write_text("not in the backup")
    entries = _entries({"sub": None, "sub/store": None, "sub/store/data": None, "sub/store/data/b.tar.zst": b"evil",
                        "z.txt": b"after the store"})
    keep = {e.path: e for e, _ in entries if e.path in (ROOT, "z.txt")}  # the backup has no "sub"
    LocalFolderSource(str(nb), skip_paths=["sub/store"]).write_entries(entries, replace=True, keep=keep)
    assert (nb / "sub" / "store" / "data" / "b.tar.zst").read_bytes() == b"a backup"
    assert (nb / "z.txt").read_bytes() == b"after the store"
    assert sorted(folder_snapshot(nb, skip=("sub/store",))) == [".", "sub", "z.txt"]


def test_an_archive_without_folder_entries_restores_each_file_in_its_place(tmp_path, monkeypatch):
    """A plain tar may list ``a/x`` without ``a``: the folders are made (0o755, as ``mkdir -p``
    under no umask), each file lands in its own, and nothing lands where the restore runs."""
    nb, elsewhere = tmp_path / "nb", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    old = os.umask(0)
    try:
        entries = [(Entry(ROOT, DIR, mode=0o750, mtime=T), None)]
        for path in ("a/x.txt", "b/y.txt", "a/deep/z.txt"):
            entries.append((Entry(path, FILE, size=len(path), mode=0o640, mtime=T), io.BytesIO(path.encode())))
        LocalFolderSource(str(nb)).write_entries(entries)
    finally:
        os.umask(old)
    snap = folder_snapshot(nb, with_owner=False)
    assert sorted(snap) == [".", "a", "a/deep", "a/deep/z.txt", "a/x.txt", "b", "b/y.txt"]
    for path in ("a/x.txt", "b/y.txt", "a/deep/z.txt"):
        assert (nb / path).read_text() == path
    assert {snap[p][:2] for p in ("a", "b", "a/deep")} == {("dir", 0o755)}
    assert os.listdir(elsewhere) == []


def test_a_folder_swapped_for_a_link_or_a_file_is_refused_with_what_happened(tmp_path):
    """What a backup or restore says when another program swaps a folder it walks."""
    from ailab_backup_ext.errors import BackupError
    from ailab_backup_ext.sources import open_folder_at

    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "file").write_text("f")
    os.symlink("real", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("link", "file"):
            with pytest.raises(BackupError) as refused:
                open_folder_at(fd, name, f"nb/{name}")
            assert str(refused.value) == (f"'nb/{name}' was replaced by a symlink or a file while it was being read "
                                          "or written; nothing was followed. Try again once nothing else changes "
                                          "the folder.")
        with pytest.raises(BackupError) as refused:
            open_folder_at(fd, "x" * 300, "nb/long")
        assert str(refused.value) == "Cannot open the folder 'nb/long': File name too long."
        with pytest.raises(BackupError) as refused:
            open_folder_at(fd, "real", "nb/real", expected=os.lstat(tmp_path / "other"))
        assert str(refused.value) == "'nb/real' was replaced while it was being read; try again."
        assert open_folder_at(fd, "gone", "nb/gone") is None
        opened = open_folder_at(fd, "real", "nb/real", expected=os.lstat(tmp_path / "real"))
        os.close(opened)
    finally:
        os.close(fd)


def test_removing_a_tree_while_another_program_swaps_its_folders_never_follows_or_stops(tmp_path, monkeypatch):
    """Between listing a folder and opening it, another program swaps one subfolder for a link
    to outside and one for a file: the link and the file go, what the link points to stays."""
    from ailab_backup_ext import sources

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("stays")
    top = tmp_path / "top"
    for sub in ("a", "b", "c"):
        (top / sub).mkdir(parents=True)
        (top / sub / "f").write_text(sub)
    real = sources._empty_files

    def listed_then_swapped(fd):
        folders = real(fd)
        if sorted(folders) == ["a", "b", "c"]:
            for sub, make in (("a", lambda p: os.symlink(str(outside), p)), ("b", lambda p: open(p, "w").close())):
                remove_at(fd, sub)
                make(os.path.join(top, sub))
        return folders

    monkeypatch.setattr(sources, "_empty_files", listed_then_swapped)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "top")
    finally:
        os.close(fd)
    assert not os.path.lexists(top)
    assert os.listdir(outside) == ["precious"] and (outside / "precious").read_text() == "stays"


def _after_mkdir_of_d(monkeypatch, then):
    """``os.mkdir``, then ``then(dir_fd)`` once it made ``d`` in a folder descriptor: another
    program at work in the folder at that very moment."""
    real_mkdir = os.mkdir

    def mkdir(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        if name == "d" and dir_fd is not None:
            then(dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("swapped_for", ["link", "file"])
def test_a_folder_kept_being_swapped_for_a_link_is_refused_and_nothing_is_written_outside(tmp_path, monkeypatch,
                                                                                           swapped_for):
    """Another program swaps each folder the restore makes for a link to outside (or a file), at
    once: after three tries the restore gives up, naming the folder; nothing lands outside."""
    from ailab_backup_ext.errors import BackupError

    outside = tmp_path / "outside"
    outside.mkdir()
    nb = tmp_path / "nb"
    nb.mkdir()

    def swapped(dir_fd):
        os.rmdir("d", dir_fd=dir_fd)
        if swapped_for == "link":
            os.symlink(str(outside), "d", dir_fd=dir_fd)
        else:
            os.close(os.open("d", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd))

    _after_mkdir_of_d(monkeypatch, swapped)
    with pytest.raises(BackupError) as refused:
        LocalFolderSource(str(nb)).write_entries(_entries({"d": None, "d/f.txt": b"must not escape"}))
    assert str(refused.value) == (f"{str(nb / 'd')!r} keeps being replaced while the restore writes it; nothing was "
                                  "followed. Stop what changes the folder, then restore again.")
    assert os.listdir(outside) == []


def test_a_file_being_restored_is_readable_by_its_owner_alone_until_it_is_whole(tmp_path):
    """A secret (the SCS) is never readable by others, not even half written under its
    temporary name; it gets its own mode only when whole."""
    nb = tmp_path / "nb"
    nb.mkdir()
    seen = []

    class Watched(io.BytesIO):
        def read(self, size=-1):
            seen.extend(os.stat(nb / n).st_mode & 0o7777 for n in os.listdir(nb) if "ailab-restore" in n)
            return super().read(size)

    old = os.umask(0)
    try:
        data = b"secret" * 1000
        LocalFolderSource(str(nb)).write_entries([(Entry(ROOT, DIR, mode=0o755), None),
                                                  (Entry("scs.db", FILE, size=len(data), mode=0o644), Watched(data))])
    finally:
        os.umask(old)
    assert seen and set(seen) == {0o600}
    assert os.stat(nb / "scs.db").st_mode & 0o7777 == 0o644


def test_on_a_filesystem_that_answers_eperm_for_folders_trees_still_go_and_real_errors_show(tmp_path, monkeypatch):
    """POSIX lets unlink() of a folder fail with EPERM instead of Linux's EISDIR: the folder is
    still emptied and removed; a file that really cannot go raises the filesystem's own error."""
    import errno

    real_unlink = os.unlink

    def eperm_unlink(name, *, dir_fd=None):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if os.path.basename(name).startswith("locked") or (st.st_mode & 0o170000) == 0o040000:
            raise PermissionError(errno.EPERM, "Operation not permitted", name)
        real_unlink(name, dir_fd=dir_fd)

    for rel in ("top/a/f", "top/b/c/g"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "keep" / "sub").mkdir(parents=True)
    (tmp_path / "keep" / "sub" / "locked").write_text("cannot go")
    (tmp_path / "locked").write_text("cannot go")
    os.symlink("missing", tmp_path / "locked-link")  # a link to nothing: its own error, not "no such file"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(os, "unlink", eperm_unlink)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "top")
        assert not os.path.lexists(tmp_path / "top")
        for name in ("locked", "keep", "locked-link"):
            with pytest.raises(PermissionError):
                remove_at(fd, name)
    finally:
        os.close(fd)
    assert (tmp_path / "locked").exists() and (tmp_path / "keep" / "sub" / "locked").exists()
    assert os.readlink(tmp_path / "locked-link") == "missing"


def test_a_file_put_where_a_folder_was_while_a_replace_restores_is_left_alone(tmp_path, monkeypatch):
    """Between the writes and the removal of what the backup lacks, the user (or a program)
    replaces the folder ``d`` by a file: the restore neither deletes that file to remake the
    folder nor fails; what it would have removed in ``d`` is gone with ``d`` anyway."""
    from ailab_backup_ext import sources

    nb = tmp_path / "nb"
    (nb / "d").mkdir(parents=True)
    (nb / "d" / "x.txt").write_text("not in the backup")
    real = sources.removable_extras

    def extras_then_swapped(*args, **kwargs):
        extras = real(*args, **kwargs)
        assert extras == ["d/x.txt"]
        shutil.rmtree(nb / "d")
        (nb / "d").write_text("the user's new file")
        return extras

    monkeypatch.setattr(sources, "removable_extras", extras_then_swapped)
    _write(nb, {"d": None, "d/e": None, "z.txt": b"z"}, replace=True)
    assert (nb / "d").read_text() == "the user's new file"
    assert (nb / "z.txt").read_bytes() == b"z"


def test_a_folder_another_program_makes_at_the_same_moment_is_used_as_it_is(tmp_path, monkeypatch):
    """The restore finds no ``d``, but another program makes it just before the restore's own
    mkdir: the restore goes on into that folder instead of failing."""
    nb = tmp_path / "nb"
    nb.mkdir()

    def made_meanwhile(dir_fd):
        raise FileExistsError(17, "File exists", "d")

    _after_mkdir_of_d(monkeypatch, made_meanwhile)
    _write(nb, {"d": None, "d/f.txt": b"in d"})
    assert (nb / "d" / "f.txt").read_bytes() == b"in d"
    assert folder_snapshot(nb, with_owner=False)["d"][:3] == ("dir", 0o751, T + 1)


def test_a_link_planted_at_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    """Another user who can write in the folder plants a link to outside at the temporary name
    right after the restore cleared it: the restore refuses to open it (the name exists) and
    writes nothing outside, and the file is not restored through it."""
    nb, outside = tmp_path / "nb", tmp_path / "outside"
    nb.mkdir()
    outside.mkdir()
    real_unlink = os.unlink
    planted = []

    def unlink_then_planted(name, *, dir_fd=None):
        try:
            real_unlink(name, dir_fd=dir_fd)
        finally:
            if "ailab-restore" in name and not planted:
                planted.append(name)
                os.symlink(str(outside / "stolen"), name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink_then_planted)
    secret = b"the SCS"
    with pytest.raises(FileExistsError):
        LocalFolderSource(str(nb)).write_entries([(Entry(ROOT, DIR, mode=0o755), None),
                                                  (Entry("scs.db", FILE, size=len(secret)), io.BytesIO(secret))])
    assert planted and os.listdir(outside) == []
    assert not os.path.lexists(nb / "scs.db")


def test_a_backup_lists_fifos_and_sockets_by_their_kind(tmp_path):
    """What a backup cannot take is named by its kind (the manifest's ``skipped`` says it)."""
    import socket

    nb = tmp_path / "nb"
    nb.mkdir()
    os.mkfifo(nb / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(nb / "sock"))
        kinds = {e.path: e.type for e in LocalFolderSource(str(nb)).list_entries()}
    finally:
        sock.close()
    assert kinds == {".": DIR, "pipe": "fifo", "sock": "socket"}


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device file needs root")
def test_a_backup_lists_a_device_file_by_its_kind(tmp_path):
    nb = tmp_path / "nb"
    nb.mkdir()
    os.mknod(nb / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    kinds = {e.path: e.type for e in LocalFolderSource(str(nb)).list_entries()}
    assert kinds == {".": DIR, "null": "device file"}


# --- what a backup takes while the folder changes ----------------------------------------------


def _backed_up(source):
    """{path: content (a file) or kind} of what a backup of ``source`` reads."""
    with source.read_entries() as entries:
        return {e.path: f.read() if f is not None else e.type for e, f in entries}


def _tree(root, spec):
    for path, content in spec.items():
        if content is None:
            (root / path).mkdir(parents=True)
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)


def test_the_store_reached_by_another_path_is_left_out_of_a_backup_and_never_removed(tmp_path):
    """A folder store inside the folder named by another path (a bind mount; here a link from
    outside): found by device and inode, not backed up, and a replace restore keeps it and what
    lies next to it in the backup."""
    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a", "s/notes.txt": b"n", "s/store/data/x.tar.zst": b"archive", "s/zeta.txt": b"z"})
    os.symlink(nb / "s" / "store", tmp_path / "store-link")
    source = LocalFolderSource(str(nb))
    source.store_paths.append(str(tmp_path / "store-link"))
    assert _backed_up(source) == {".": DIR, "a.txt": b"a", "s": DIR, "s/notes.txt": b"n", "s/zeta.txt": b"z"}

    source = LocalFolderSource(str(nb))
    source.store_paths.append(str(tmp_path / "store-link"))
    entries = _entries({"a.txt": b"new"})
    source.write_entries(entries, replace=True, keep={e.path: e for e, _ in entries})
    assert (nb / "a.txt").read_bytes() == b"new"
    assert (nb / "s/store/data/x.tar.zst").read_bytes() == b"archive"
    assert sorted(os.listdir(nb / "s")) == ["store"]


def test_a_file_deleted_while_the_backup_walks_is_left_out_and_the_rest_is_taken(tmp_path):
    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c", "d/e.txt": b"e"})
    seen = []
    for entry in LocalFolderSource(str(nb)).list_entries():
        seen.append(entry.path)
        if entry.path == "a.txt":
            os.remove(nb / "b.txt")
    assert seen == [".", "a.txt", "c.txt", "d", "d/e.txt"]


def _after_lstat_of(name, action, monkeypatch):
    """Run ``action`` right after the walk has lstat'ed ``name`` (before it opens it)."""
    real_stat = os.stat

    def stat_then_act(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if path == name and kwargs.get("dir_fd") is not None:
            action()
        return st

    monkeypatch.setattr(os, "stat", stat_then_act)


def test_a_folder_deleted_between_its_listing_and_its_opening_is_left_out_and_the_rest_is_taken(tmp_path,
                                                                                                monkeypatch):
    nb = tmp_path / "nb"
    _tree(nb, {"a/x.txt": b"x", "b/y.txt": b"y", "c.txt": b"c"})
    _after_lstat_of("b", lambda: shutil.rmtree(nb / "b"), monkeypatch)
    assert _backed_up(LocalFolderSource(str(nb))) == {".": DIR, "a": DIR, "a/x.txt": b"x", "c.txt": b"c"}


def test_a_folder_swapped_for_another_while_the_backup_walks_is_refused_by_its_path(tmp_path, monkeypatch):
    nb = tmp_path / "nb"
    _tree(nb, {"a/x.txt": b"x", "b/y.txt": b"y", "outside/secret.txt": b"s"})

    def swap():
        os.rename(nb / "b", tmp_path / "b-old")
        os.rename(nb / "outside", nb / "b")

    _after_lstat_of("b", swap, monkeypatch)
    with pytest.raises(BackupError) as refused:
        _backed_up(LocalFolderSource(str(nb)))
    assert str(refused.value) == f"{str(nb / 'b')!r} was replaced while it was being read; try again."


def test_a_folder_that_cannot_be_read_is_named_in_the_error(tmp_path, monkeypatch):
    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a", "sub/x.txt": b"x"})
    sub = os.stat(nb / "sub")
    real_listdir = os.listdir

    def listdir(fd):
        if isinstance(fd, int) and os.path.samestat(os.fstat(fd), sub):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_listdir(fd)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(BackupError) as refused:
        _backed_up(LocalFolderSource(str(nb)))
    assert str(refused.value) == f"Cannot read the folder {str(nb / 'sub')!r}: Permission denied."


# --- exclude_local_store: a folder store inside the folder it backs up is never backed up, a store
# that is the folder itself is refused, and a store beside it is none of its business


def test_a_store_inside_the_folder_is_left_out_however_it_is_named(tmp_path):
    nb = tmp_path / "nb"
    # "..store" is inside: its relative path starts with two dots but is no way out
    _tree(nb, {"a.txt": b"a", "..store/x.tar.zst": b"archive", "sub/store/y.tar.zst": b"archive"})
    for store, left in ((nb / "..store", "..store/x.tar.zst"), (nb / "sub" / "store", "sub/store/y.tar.zst")):
        source = LocalFolderSource(str(nb))
        source.exclude_store(str(store))
        source.exclude_store(str(store))  # again (the settings re-read): still left out, once
        backed_up = _backed_up(source)
        assert left not in backed_up and "a.txt" in backed_up, (store, backed_up)
        assert os.path.relpath(store, nb) not in backed_up


def test_a_store_beside_the_folder_changes_nothing_in_its_backup(tmp_path):
    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a", "nbstore/b.txt": b"b"})
    _tree(tmp_path, {"nbstore/x.tar.zst": b"archive"})  # a sibling whose name starts like the folder's
    whole = _backed_up(LocalFolderSource(str(nb)))
    for store in (tmp_path / "nbstore", tmp_path, tmp_path / "elsewhere"):
        source = LocalFolderSource(str(nb))
        source.exclude_store(str(store))
        assert _backed_up(source) == whole, store
    assert set(whole) == {".", "a.txt", "nbstore", "nbstore/b.txt"}


def test_a_store_that_is_the_folder_itself_is_refused(tmp_path):
    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a"})
    os.symlink(nb, tmp_path / "link")
    # the last one does not exist (so no samefile), but it names the folder all the same
    for store in (nb, tmp_path / "link", str(nb) + "/", str(nb / "missing" / "..")):
        with pytest.raises(BackupError, match="is the folder it backs up .*Set AILabBackup.store to a folder outside it[.]$"):
            LocalFolderSource(str(nb)).exclude_store(str(store))


def test_a_folder_not_there_is_left_for_the_backup_to_report(tmp_path):
    source = LocalFolderSource(str(tmp_path / "missing"))
    source.exclude_store(str(tmp_path / "missing" / "store"))  # no error here: the backup says it
    assert source.skip_paths == [] and source.store_paths == []


@pytest.fixture
def bind_mount(tmp_path):
    """``bind(src, dst)`` bind-mounts (as root), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root")
    mounted = []

    def bind(src, dst):
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        mounted.append(dst)

    yield bind
    for dst in reversed(mounted):
        subprocess.run(["umount", str(dst)], check=False)


def test_a_store_bind_mounted_inside_or_onto_the_folder_is_found_by_device_and_inode(tmp_path, bind_mount):
    """The store's path lies outside the folder, but the folder reaches it through a bind mount
    (the way Docker mounts a volume store into AI-Lab's container): still never backed up; and a
    store that is the folder by another mount is refused."""
    nb, store = tmp_path / "nb", tmp_path / "store"
    _tree(nb, {"a.txt": b"a", "mnt/.keep": b""})
    _tree(store, {"x.tar.zst": b"archive"})
    bind_mount(store, nb / "mnt")
    source = LocalFolderSource(str(nb))
    source.exclude_store(str(store))
    assert _backed_up(source) == {".": DIR, "a.txt": b"a"}

    other = tmp_path / "other"
    other.mkdir()
    bind_mount(nb, other)
    with pytest.raises(BackupError, match="is the folder it backs up"):
        LocalFolderSource(str(nb)).exclude_store(str(other))


class _NoOwnContainer:
    def own_container(self):
        return None


def test_a_docker_source_seen_here_hands_the_store_inside_to_its_helper_as_a_path_to_skip(tmp_path):
    """A Docker mount this process also sees (its own container's): the helper's walk knows the
    store only by the relative paths it is given (it has no inode of ours to compare)."""
    from ailab_backup_ext.sources import DockerMountSource

    nb = tmp_path / "nb"
    _tree(nb, {"a.txt": b"a", "..store/x": b"", "sub/store/y": b"", "nbx/z": b""})
    _tree(tmp_path, {"nbx/w": b""})
    for store, skipped in ((nb / "..store", ["..store"]), (nb / "sub" / "store", ["sub/store"]),
                           (tmp_path / "nbx", []), (tmp_path / "elsewhere", []), (tmp_path, [])):
        source = DockerMountSource(_NoOwnContainer(), "volume", "notebooks")
        source.local_path = str(nb)
        source.exclude_store(str(store))
        source.exclude_store(str(store))  # the settings read again: still once
        assert source.skip_paths == skipped, store


class _OwnContainer:
    """This server's own container, as ``docker inspect`` shows its mounts."""

    def __init__(self, mounts):
        self.mounts = mounts

    def own_container(self):
        return {"Mounts": self.mounts}


def test_a_store_in_another_mount_of_this_servers_container_holding_the_same_data_is_skipped(tmp_path):
    """The server's container mounts the notebooks volume at its notebooks folder and, again, at
    another folder where the store lies (or a bind mount's parent folder): the helper skips the
    store by its path in the mount; a store that is the whole mount is refused; a store in a
    mount of something else is not the source's business."""
    from ailab_backup_ext.sources import DockerMountSource

    nb, again = tmp_path / "nb", tmp_path / "again"
    nb.mkdir()
    (again / "sub" / "store").mkdir(parents=True)

    def volume_source(mounts, subpath=""):
        source = DockerMountSource(_OwnContainer(mounts), "volume", "notebooks", subpath)
        source.local_path = str(nb)
        return source

    same_volume = [{"Type": "volume", "Name": "notebooks", "Destination": str(again)}]
    for store, subpath, skipped in ((again / "sub" / "store", "", ["sub/store"]),
                                    (again / "sub" / "store", "sub", ["store"]),
                                    (again / "sub" / "store", "other", [])):
        source = volume_source(same_volume, subpath)
        source.exclude_store(str(store))
        source.exclude_store(str(store))  # the settings read again: still once
        assert source.skip_paths == skipped, (store, subpath)
    with pytest.raises(BackupError, match=r"is the volume it backs up \('notebooks'\)\. Set AILabBackup\.store to a "
                                          r"folder outside it\.$"):
        volume_source(same_volume).exclude_store(str(again))
    source = volume_source(same_volume, "sub")  # the store holds the folder backed up: nothing inside
    source.exclude_store(str(again))
    assert source.skip_paths == []
    for other in ([{"Type": "volume", "Name": "models", "Destination": str(again)}],
                  [{"Type": "bind", "Source": "/", "Destination": str(again)}], []):
        source = volume_source(other)
        source.exclude_store(str(again / "sub" / "store"))
        assert source.skip_paths == [], other
    source = DockerMountSource(_OwnContainer(same_volume), "volume", "notebooks")  # not seen here
    source.exclude_store(str(again / "sub" / "store"))
    assert source.skip_paths == []

    bind = [{"Type": "bind", "Source": "/host/data", "Destination": str(again)}]
    source = DockerMountSource(_OwnContainer(bind), "bind", "/host/data", "sub")
    source.local_path = str(nb)
    source.exclude_store(str(again / "sub" / "store"))
    assert source.skip_paths == ["store"]
    with pytest.raises(BackupError, match="is the bind it backs up"):
        source = DockerMountSource(_OwnContainer(bind), "bind", "/host/data", "sub")
        source.local_path = str(nb)
        source.exclude_store(str(again / "sub"))


def test_a_bind_mount_source_on_the_docker_host_skips_the_store_inside_its_folder(tmp_path, monkeypatch):
    """The command line on the Docker host backing up a bind mount (AI-Lab started with
    -v /home/me/notebooks:...): the host folder is the bind's source, seen here, so a folder store
    inside it is skipped by its path; the folder itself as the store is refused."""
    from ailab_backup_ext.sources import DockerMountSource

    monkeypatch.setattr("ailab_backup_ext.sources.own_container_id", lambda: None)  # on the host, in any CI
    nb = tmp_path / "nb"
    (nb / "sub" / ".store").mkdir(parents=True)
    for subpath, store, skipped in (("", nb / "sub" / ".store", ["sub/.store"]),
                                    ("sub", nb / "sub" / ".store", [".store"]),
                                    ("", tmp_path / "elsewhere", [])):
        source = DockerMountSource(None, "bind", str(nb), subpath)  # no engine asked for a bind
        source.exclude_store(str(store))
        assert source.skip_paths == skipped, (subpath, store)
    with pytest.raises(BackupError, match="is the folder it backs up"):
        DockerMountSource(None, "bind", str(nb)).exclude_store(str(nb))


class _Engine:
    """docker inspect of volumes: their mount points on this host, or a missing volume."""

    def __init__(self, mountpoints):
        self.client = self
        self.api = self
        self.mountpoints = mountpoints

    def inspect_volume(self, name):
        if name not in self.mountpoints:
            raise RuntimeError(f"no such volume: {name}")
        return {"Mountpoint": self.mountpoints[name]}

    def own_container(self):
        return None


def test_a_volume_source_on_the_docker_host_skips_the_store_inside_its_mount_point(tmp_path, monkeypatch):
    """The command line as root on the Docker host sees a volume at its mount point: a folder
    store inside it (or inside the subfolder backed up) is skipped; a missing volume is no error
    here (its existence check says so, later)."""
    from ailab_backup_ext.sources import DockerMountSource

    monkeypatch.setattr("ailab_backup_ext.sources.own_container_id", lambda: None)
    data = tmp_path / "volumes" / "notebooks" / "_data"
    (data / "sub" / ".store").mkdir(parents=True)
    engine = _Engine({"notebooks": str(data)})
    for subpath, skipped in (("", ["sub/.store"]), ("sub", [".store"]), ("other", [])):
        source = DockerMountSource(engine, "volume", "notebooks", subpath)
        source.exclude_store(str(data / "sub" / ".store"))
        assert source.skip_paths == skipped, subpath
    for subpath in ("", "sub"):
        source = DockerMountSource(engine, "volume", "missing", subpath)
        source.exclude_store(str(data / "sub" / ".store"))
        assert source.skip_paths == []
