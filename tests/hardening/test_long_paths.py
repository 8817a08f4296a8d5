"""Paths too long to write back (issue 18, step 13): a local backup of a folder holding a path
longer than PATH_MAX (4096 bytes, which no call taking a whole path accepts) lists it under
``skipped`` and backs up the rest, and an archive holding a path or a name over what Linux writes
is refused with a clear error, changing nothing."""

import os
import subprocess

import pytest

from ailab_backup_ext.archive import MAX_PATH_BYTES
from make_corpus import EXTRA
from test_faults import run_cli
from test_promises import archive_members, local_manager
from treeutil import deep_path, folder_snapshot

PATH_MAX = 4096


def count_named(folder, name):
    """How many files called ``name`` are below ``folder`` (find walks by fds, at any depth)."""
    found = subprocess.run(["find", str(folder), "-name", name], capture_output=True, text=True, check=True)
    return len(found.stdout.split())


def test_a_path_over_path_max_is_skipped_not_an_error_local(tmp_path, capsys):
    source, manager = local_manager(tmp_path)
    (source / "a.ipynb").write_text('{"cells": []}')
    (source / "long").mkdir()
    deep = "long/" + deep_path(source / "long", PATH_MAX + 400)
    assert len(os.fsencode(source / deep)) > PATH_MAX

    status, err = run_cli(["--source-dir", source, "--store", tmp_path / "store", "--docker-url", "none",
                           "create"], capsys)
    assert status == 0, err
    [meta] = manager.list_backups()
    # one entry: the first folder past the limit, with its reason; what it holds goes with it
    [skipped] = meta["skipped"]
    assert deep.startswith(skipped["path"] + "/") and len(skipped["path"].encode()) > MAX_PATH_BYTES
    assert f"longer than {MAX_PATH_BYTES} bytes" in skipped["reason"]
    assert "Everything in the folder is left out with it" in skipped["reason"]
    kept = archive_members(manager, meta)
    assert "a.ipynb" in kept and all(len(p.encode()) <= MAX_PATH_BYTES for p in kept)
    assert any(deep.startswith(p + "/") for p in kept if p.startswith("long/"))  # the folders that fit

    # a preview and a merge restore of it leave the deep file where it is
    plan = manager.plan_restore(meta["id"], "merge")
    assert plan["removed"] == [] and plan["added"] == []
    manager.restore_backup(meta["id"], "merge")
    assert count_named(source, "deep.txt") == 1


@pytest.mark.parametrize("case", ["very-long-path.tar.zst", "very-long-name.tar.zst"])
def test_an_archive_with_a_path_over_the_limit_is_refused_and_changes_nothing(tmp_path, capsys, case):
    build, expected = EXTRA[case]
    source, manager = local_manager(tmp_path)
    (source / "a.ipynb").write_text('{"cells": []}')
    archive_file = tmp_path / case
    archive_file.write_bytes(build())
    before = folder_snapshot(source)
    status, err = run_cli(["--source-dir", source, "--store", tmp_path / "store", "--docker-url", "none",
                           "import", "--file", archive_file], capsys)
    assert status != 0
    assert any(expected in line and "cannot be written on Linux" in line for line in err), err
    assert manager.list_backups() == []
    assert folder_snapshot(source) == before
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # not even a partial file
