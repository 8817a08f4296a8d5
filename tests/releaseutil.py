"""Two made-up AI-Lab releases and a user's volume of the first, for the release-move tests.

Release 1.0 ships start, data/flights, sklearn/train, old_demo and legacy; release 2.0 changes
data/flights, removes old_demo and legacy and adds new_demo. The user of 1.0 changed
data/flights (which 2.0 changed too), sklearn/train (which 2.0 did not change) and legacy
(which 2.0 removed), made my/analysis.ipynb, .gitkeep and the SCS, and left start and old_demo
as shipped."""

import hashlib
import json
import os

SCS = "ai_lab_secure_configuration_storage.sqlite"


def notebook(*sources):
    return json.dumps({"cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": []} for s in sources],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


RELEASE_1 = {
    "start.ipynb": notebook("# Welcome"),
    "data/flights.ipynb": notebook("load_flights()", "plot()"),
    "sklearn/train.ipynb": notebook("fit()"),
    "old_demo.ipynb": notebook("old()"),
    "legacy.ipynb": notebook("legacy()"),
}
RELEASE_2 = {
    "start.ipynb": RELEASE_1["start.ipynb"],
    "data/flights.ipynb": notebook("load_flights(v=2)", "plot()", "explain()"),
    "sklearn/train.ipynb": RELEASE_1["sklearn/train.ipynb"],
    "new_demo.ipynb": notebook("new()"),
}
USER_CHANGES = {  # what the user of 1.0 wrote over or beside the defaults
    "data/flights.ipynb": notebook("load_flights()", "plot(mine=True)", "my_cell()"),
    "sklearn/train.ipynb": notebook("fit(my_params)"),
    "legacy.ipynb": notebook("legacy(mine)"),
    "my/analysis.ipynb": notebook("mine()"),
    ".gitkeep": "",
    SCS: "SQLite format 3\0secret",
}
BESIDE = "data/flights (AI-Lab 2.0).ipynb"
EMPTY_FOLDER = "my/empty"  # made by the user, kept by a move
# each file of the user's backup, by the category a move into 2.0 must put it in
EXPECTED_CATEGORIES = {
    "scs": {SCS},
    "brought_back": {"my/analysis.ipynb", ".gitkeep", "legacy.ipynb"},
    "overwritten": {"sklearn/train.ipynb"},
    "kept_both": {"data/flights.ipynb"},
    "left_to_release": {"start.ipynb", "old_demo.ipynb"},
    "added_by_release": {"new_demo.ipynb"},
}
# and what the volume of 2.0 holds afterwards: path -> content
AFTER_MOVE = {
    "start.ipynb": RELEASE_2["start.ipynb"],
    "data/flights.ipynb": USER_CHANGES["data/flights.ipynb"],
    BESIDE: RELEASE_2["data/flights.ipynb"],
    "sklearn/train.ipynb": USER_CHANGES["sklearn/train.ipynb"],
    "new_demo.ipynb": RELEASE_2["new_demo.ipynb"],
    "legacy.ipynb": USER_CHANGES["legacy.ipynb"],
    "my/analysis.ipynb": USER_CHANGES["my/analysis.ipynb"],
    ".gitkeep": "",
    SCS: USER_CHANGES[SCS],
}


def write_files(root, files):
    for path, content in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(content)


def make_release(root, files):
    os.makedirs(root, exist_ok=True)
    write_files(root, files)
    return str(root)


def volume_of_release_1(root):
    """A volume as the entrypoint of 1.0 made it, with the user's changes (and an empty folder)."""
    make_release(root, RELEASE_1)
    write_files(root, USER_CHANGES)
    os.makedirs(os.path.join(root, EMPTY_FOLDER))
    return str(root)


def digests(files):
    return {path: hashlib.sha256(content.encode()).hexdigest() for path, content in files.items()}


def file_digests(snapshot):
    """{path: sha256} of the files in a tests/treeutil.py snapshot."""
    return {path: entry[-1] for path, entry in snapshot.items() if entry[0] == "file"}


def categories(plan):
    """{category: set of paths} of a release-move plan."""
    return {c: {i["path"] for i in plan[c]} for c in EXPECTED_CATEGORIES}


def check_plan(plan):
    """The plan sorts every file of the scenario into its category, with what a user reads."""
    assert categories(plan) == EXPECTED_CATEGORIES, categories(plan)
    assert plan["unchanged"]["count"] == 0, plan["unchanged"]
    assert [i["beside"] for i in plan["kept_both"]] == [BESIDE]
    left = {i["path"]: i["release_change"] for i in plan["left_to_release"]}
    assert left == {"start.ipynb": "unchanged", "old_demo.ipynb": "removed"}
    # the notebook-aware diff: what the user's version changes in the release's notebook
    kept = plan["kept_both"][0]
    assert kept["notebook"] == {"cells_added": 0, "cells_removed": 0, "cells_changed": 3}, kept
    assert plan["overwritten"][0]["notebook"] == {"cells_added": 0, "cells_removed": 0, "cells_changed": 1}
    why = {i["path"]: i["why"] for i in plan["brought_back"]}
    assert why["legacy.ipynb"] == "changed by you; removed in the running release", why
    assert why["my/analysis.ipynb"] == "made by you", why
