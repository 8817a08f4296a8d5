"""The restore preview reads bounded amounts (issue 18, item 4), against the real server: a
notebook larger than the cell diff's limit, in the backup or in the folder, is not read into
memory for the diff; the preview says it is too large to compare. Smaller ones still get their
cell counts."""

import pytest

from ailab_backup_ext.plan import NOTEBOOK_DIFF_LIMIT
from hostile import big_notebook, notebook_of_size
from restutil import call

SMALL = b'{"cells": [{"cell_type": "code", "source": "print(1)"}]}'


async def _preview_of_a_ipynb(jp_fetch, backup):
    _, meta, _ = await call(jp_fetch, "upload", method="POST", body=backup, expect=201)
    _, plan, _ = await call(jp_fetch, meta["id"], "restore", method="POST", body={"dry_run": True},
                            request_timeout=120)
    [item] = [i for i in plan["overwritten"] if i["path"] == "a.ipynb"]
    return item


@pytest.mark.parametrize("side", ["in-the-backup", "in-the-folder"])
async def test_a_notebook_over_the_limit_is_too_large_to_compare(jp_fetch, jp_root_dir, side):
    over = NOTEBOOK_DIFF_LIMIT + (1 << 20)
    if side == "in-the-backup":
        (jp_root_dir / "a.ipynb").write_bytes(SMALL)
        backup = big_notebook(over)
    else:
        (jp_root_dir / "a.ipynb").write_bytes(notebook_of_size(over))
        backup = big_notebook(1000)
    item = await _preview_of_a_ipynb(jp_fetch, backup)
    assert "notebook" not in item, item
    assert item["notebook_note"].startswith("too large to compare"), item


async def test_a_notebook_under_the_limit_gets_its_cell_counts(jp_fetch, jp_root_dir):
    (jp_root_dir / "a.ipynb").write_bytes(SMALL)
    item = await _preview_of_a_ipynb(jp_fetch, big_notebook(NOTEBOOK_DIFF_LIMIT - 4096))
    assert item["notebook"] == {"cells_added": 0, "cells_removed": 0, "cells_changed": 1}, item

