"""The dry run of a restore (local mode, no Docker): every path sorted exactly into added,
overwritten, removed and unchanged, with sizes and a notebook's cell summary, for merge, replace
and a chosen path."""

import json
import os

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, InvalidArchive
from treeutil import folder_snapshot


def notebook(*sources, cell_type="code"):
    return json.dumps({"cells": [{"cell_type": cell_type, "source": s} for s in sources], "nbformat": 4})


def write(root, rel, data):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


@pytest.fixture
def changed(tmp_path):
    """A backup, then changes of every kind; returns (manager, backup id, source)."""
    source = tmp_path / "nb"
    for rel, data in {"a.ipynb": notebook("a", "b", "c", "d"), "same.txt": "same", "sub/x.txt": "x",
                      "sub/deep/y.txt": "yy", "gone.txt": "gone", "was_dir/f.txt": "f"}.items():
        write(source, rel, data)
    os.symlink("same.txt", source / "link")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"),
                                        docker_url="none", excludes=["cache"]))
    backup_id = manager.create_backup()["id"]
    write(source, "a.ipynb", notebook("a", "new", "b", "c2"))  # a restore adds 1, removes 1, changes 1
    write(source, "sub/x.txt", "z")  # same size, other content
    (source / "gone.txt").unlink()
    (source / "link").unlink()
    os.symlink("sub/x.txt", source / "link")  # the same name, another target
    (source / "was_dir" / "f.txt").unlink()
    (source / "was_dir").rmdir()
    write(source, "was_dir", "now a file")
    write(source, "extra.txt", "extra!")
    write(source, "sub/new.txt", "new")
    write(source, "cache/w.bin", "weights")  # excluded: never removed
    return manager, backup_id, source


def test_merge_preview_sorts_every_path(changed):
    manager, backup_id, source = changed
    before = folder_snapshot(source)
    plan = manager.plan_restore(backup_id, "merge")
    assert plan["added"] == [{"path": "gone.txt", "type": "file", "size": 4},
                             {"path": "was_dir/f.txt", "type": "file", "size": 1}]
    assert plan["overwritten"] == [
        {"path": "a.ipynb", "type": "file", "size": len(notebook("a", "b", "c", "d")),
         "current_size": len(notebook("a", "new", "b", "c2")),
         "notebook": {"cells_added": 1, "cells_removed": 1, "cells_changed": 1}},
        {"path": "link", "type": "symlink", "size": 0, "current_size": 0},
        {"path": "sub/x.txt", "type": "file", "size": 1, "current_size": 1},
        {"path": "was_dir", "type": "dir", "size": 0, "current_size": len("now a file")},
    ]
    assert plan["removed"] == []
    assert plan["unchanged"] == {"count": 4, "bytes": 6, "items": [
        {"path": "same.txt", "type": "file", "size": 4}, {"path": "sub", "type": "dir", "size": 0},
        {"path": "sub/deep", "type": "dir", "size": 0}, {"path": "sub/deep/y.txt", "type": "file", "size": 2}]}
    assert (plan["mode"], plan["paths"], plan["backup_id"]) == ("merge", None, backup_id)
    assert folder_snapshot(source) == before  # a dry run changes nothing


def test_replace_preview_removes_what_the_backup_lacks_but_not_excludes(changed):
    manager, backup_id, _ = changed
    plan = manager.plan_restore(backup_id, "replace")
    assert plan["removed"] == [{"path": "extra.txt", "type": "file", "size": 6},
                               {"path": "sub/new.txt", "type": "file", "size": 3}]
    assert [i["path"] for i in plan["overwritten"]] == ["a.ipynb", "link", "sub/x.txt", "was_dir"]


def test_preview_of_a_chosen_folder_stays_inside_it(changed):
    manager, backup_id, _ = changed
    plan = manager.plan_restore(backup_id, "replace", ["/sub/"])
    assert plan["paths"] == ["sub"]
    assert plan["added"] == []
    assert plan["overwritten"] == [{"path": "sub/x.txt", "type": "file", "size": 1, "current_size": 1}]
    assert plan["removed"] == [{"path": "sub/new.txt", "type": "file", "size": 3}]
    assert [i["path"] for i in plan["unchanged"]["items"]] == ["sub", "sub/deep", "sub/deep/y.txt"]
    deep = manager.plan_restore(backup_id, "merge", ["sub/deep/y.txt"])
    # the folders above a chosen file come along (made with their owner and mode if missing)
    assert [i["path"] for i in deep["unchanged"]["items"]] == ["sub", "sub/deep", "sub/deep/y.txt"]
    with pytest.raises(BackupError, match="names the whole notebooks folder"):  # never 'everything' by stealth
        manager.plan_restore(backup_id, "merge", [" . "])
    with pytest.raises(BackupError, match="names the whole notebooks folder"):
        manager.plan_restore(backup_id, "merge", ["/"])


def test_chosen_paths_must_be_in_the_backup_and_inside_the_folder(changed):
    manager, backup_id, _ = changed
    with pytest.raises(BackupError, match="'nope' is not in this backup"):
        manager.plan_restore(backup_id, "merge", ["nope"])
    with pytest.raises(InvalidArchive, match=r"'\.\.'"):
        manager.plan_restore(backup_id, "merge", ["sub/../../etc"])


def test_selective_restore_brings_back_only_the_chosen_folder(changed):
    manager, backup_id, source = changed
    before = folder_snapshot(source)
    manager.restore_backup(backup_id, "replace", paths=["sub"])
    after = folder_snapshot(source)
    outside = {p: v for p, v in before.items() if p != "sub" and not p.startswith("sub/")}
    # everything else exactly as it was, the notebooks folder itself too (its time included)
    assert {p: after.get(p) for p in outside} == outside
    assert (source / "sub" / "x.txt").read_text() == "x"
    assert not (source / "sub" / "new.txt").exists()
    assert (source / "extra.txt").read_text() == "extra!" and (source / "was_dir").read_text() == "now a file"
    assert (source / "sub" / "deep" / "y.txt").read_text() == "yy"


@pytest.mark.parametrize("now, then, cells", [
    (notebook("a", "b"), notebook("a", "b"), (0, 0, 0)),
    (notebook("a"), notebook("a", "b", "c"), (2, 0, 0)),  # only added back
    (notebook("a", "x", "y", "z"), notebook("a"), (0, 3, 0)),  # only removed
    (notebook("x"), notebook("p", "q", "r"), (2, 0, 1)),  # replaced by more
    (notebook("x", "y", "z"), notebook("p"), (0, 2, 1)),  # replaced by fewer
    (notebook("a", "x", "y", "z"), notebook("a", "p"), (0, 2, 1)),  # the same, further down
    (notebook("a", "x"), notebook("a", "p", "q", "r"), (2, 0, 1)),
    (notebook("a", "b"), notebook("a", "b", cell_type="markdown"), (0, 0, 2)),  # the type counts
    (json.dumps({"cells": [{"cell_type": "code", "source": ["a\n", "b"]}]}),
     json.dumps({"cells": [{"cell_type": "code", "source": "a\nb"}]}), (0, 0, 0)),  # lines or text: same
    (json.dumps({"cells": [{"cell_type": "code"}]}), notebook(""), (0, 0, 0)),  # no source: empty
    ("not json", notebook("a"), None),  # not a notebook: no cell summary
    (json.dumps({"nbformat": 4}), notebook("a"), (1, 0, 0)),  # no cells at all
    (notebook("r1", "a", "d1", "b", "r2", "c", "d2"), notebook("R1", "a", "b", "R2", "c"), (0, 2, 2)),  # each twice
    (notebook("a", "b"), notebook("i1", "a", "i2", "b"), (2, 0, 0)),
    (notebook("a", "x"), notebook("i", "a", "p", "q"), (2, 0, 1)),  # added by an insert, then a replace
    (notebook(*[str(i % 3) for i in range(300)]), notebook("new", *[str(i % 3) for i in range(300)]),
     (1, 0, 0)),  # repeated cells in a long notebook are not junk (difflib's autojunk)
])
def test_cell_summary_of_a_notebook(tmp_path, now, then, cells):
    source = tmp_path / "nb"
    write(source, "n.ipynb", then)
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"), docker_url="none"))
    backup_id = manager.create_backup()["id"]
    write(source, "n.ipynb", now + " " * (now == then))  # a byte more: overwritten, whatever the cells
    [item] = manager.plan_restore(backup_id)["overwritten"]
    expected = None if cells is None else dict(zip(("cells_added", "cells_removed", "cells_changed"), cells))
    assert item.get("notebook") == expected


def test_names_at_the_edges_of_a_chosen_path_are_kept(tmp_path):
    source = tmp_path / "nb"
    write(source, "Xmas/plan.txtX", "x")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"), docker_url="none"))
    backup_id = manager.create_backup()["id"]
    assert manager.plan_restore(backup_id, "merge", ["/Xmas/plan.txtX/"])["paths"] == ["Xmas/plan.txtX"]


def test_large_notebooks_are_compared_by_hash_alone(tmp_path, monkeypatch):
    """Up to NOTEBOOK_DIFF_LIMIT bytes a notebook gets a cell summary (also when it is read in
    several chunks); above it, none."""
    from ailab_backup_ext import archive, plan

    from ailab_backup_ext import core

    for module in (plan, core):  # core reads it as its own name
        monkeypatch.setattr(module, "NOTEBOOK_DIFF_LIMIT", 3 * archive.CHUNK)
    source = tmp_path / "nb"
    big = " " * (3 * archive.CHUNK - len(notebook("a", "")))  # a cell across the chunks
    write(source, "at.ipynb", notebook("a", big))  # exactly at the limit
    write(source, "over.ipynb", notebook("a", big + " "))
    assert (source / "at.ipynb").stat().st_size == 3 * archive.CHUNK
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"), docker_url="none"))
    backup_id = manager.create_backup()["id"]
    write(source, "at.ipynb", notebook("a"))  # both sides within the limit: the restore adds a cell
    write(source, "over.ipynb", notebook("a"))
    items = {i["path"]: i.get("notebook") for i in manager.plan_restore(backup_id)["overwritten"]}
    assert items == {"at.ipynb": {"cells_added": 1, "cells_removed": 0, "cells_changed": 0}, "over.ipynb": None}
