"""What a restore removes and keeps, and how a folder is written and emptied, at the edges. Fast
and Docker-free, so the mutation run (tests/MUTANTS.md) checks sources.py with them."""

import io
import os

import pytest

from ailab_backup_ext.archive import DIR, FILE, ROOT, SYMLINK, Entry
from ailab_backup_ext.errors import InvalidArchive
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
