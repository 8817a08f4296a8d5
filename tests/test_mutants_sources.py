"""What a restore removes and keeps, and how a folder is written and emptied, at the edges. Fast
and Docker-free, so the mutation run (tests/MUTANTS.md) checks sources.py with them."""

import os

from ailab_backup_ext.sources import folders_holding, in_scope, is_excluded, removable_extras


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
    assert os.sep == "/"
