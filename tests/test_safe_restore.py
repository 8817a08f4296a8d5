"""Safe restore: preview, selective restore, undo (also after a restore killed midway), SCS
safety and retention, on a real Docker volume and locally."""

import hashlib
import json
import os
import threading
import uuid

import pytest

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.progress import Progress
from test_roundtrip import fill_volume, make_tree
from treeutil import HELPER_IMAGE, our_helpers, run_in_volume, volume_snapshot

SCS = "ai_lab_secure_configuration_storage.sqlite"


def notebook(*sources):
    return json.dumps({"cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": []} for s in sources],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def volume_setup(docker_client, make_volume, tmp_path):
    volume, store = make_volume(), make_volume("ailabstore")
    tree = make_tree(str(tmp_path / "tree"), big_mb=1)
    with open(os.path.join(tree, "analysis.ipynb"), "w") as f:
        f.write(notebook("import pandas", "df = load()", "df.plot()"))
    fill_volume(docker_client, volume, tree)
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    return manager, volume


def files_only(snapshot):
    return {k: v for k, v in snapshot.items() if v[0] != "dir"}


def test_preview_sorts_every_change_and_changes_nothing(volume_setup, docker_client):
    manager, volume = volume_setup
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, f"""
        cd /v && rm intro.ipynb && echo mine > new.txt && echo changed > private/secret.txt &&
        printf '%s' '{notebook("import pandas", "df = load2()", "df.plot()", "print(1)")}' > analysis.ipynb""")
    before = volume_snapshot(docker_client, volume)

    plan = manager.plan_restore(backup["id"], "replace")
    assert [i["path"] for i in plan["added"]] == ["intro.ipynb"]
    overwritten = {i["path"]: i for i in plan["overwritten"]}
    assert set(overwritten) == {"analysis.ipynb", "private/secret.txt"}
    # restoring takes the notebook back: the added cell goes, the changed one changes back
    assert overwritten["analysis.ipynb"]["notebook"] == {"cells_added": 0, "cells_removed": 1, "cells_changed": 1}
    assert [i["path"] for i in plan["removed"]] == ["new.txt"]
    assert plan["unchanged"]["count"] >= 6
    assert manager.plan_restore(backup["id"], "merge")["removed"] == []
    assert volume_snapshot(docker_client, volume) == before


def test_selective_restore_leaves_every_other_file_identical(volume_setup, docker_client):
    manager, volume = volume_setup
    backed_up = files_only(volume_snapshot(docker_client, volume))
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo broken > private/secret.txt && echo other > intro.ipynb "
                                         "&& echo extra > private/extra.txt")
    before = files_only(volume_snapshot(docker_client, volume))

    manager.restore_backup(backup["id"], "replace", paths=["private"])
    after = files_only(volume_snapshot(docker_client, volume))
    # the chosen folder exactly as in the backup: content, mode 0600, owner 1000, time
    assert after["private/secret.txt"] == backed_up["private/secret.txt"]
    assert after["private/secret.txt"][1:4] == (0o600, 1000, 1000)
    assert "private/extra.txt" not in after  # replace within the chosen folder
    for path, value in before.items():
        if not path.startswith("private/"):
            assert after[path] == value, path  # byte-identical, same mode, owner and time


def test_undo_returns_the_exact_earlier_state(volume_setup, docker_client, capsys):
    manager, volume = volume_setup
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo work > today.ipynb && rm -r démo")
    before = volume_snapshot(docker_client, volume)
    result = manager.restore_backup(backup["id"], "replace")
    assert volume_snapshot(docker_client, volume) != before
    store = manager.store.name
    assert main(["--volume", volume, "--store", store, "undo"]) == 0
    assert "is back" in capsys.readouterr().out
    assert volume_snapshot(docker_client, volume) == before
    assert result["safety_backup_id"] in {b["id"] for b in manager.list_backups()}


def test_restore_killed_midway_is_undone_exactly(docker_client, make_volume, tmp_path):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && dd if=/dev/urandom of=big bs=1M count=60 2>/dev/null && echo v1 > a.txt")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo v2 > a.txt && echo new > b.txt && rm big")
    before = volume_snapshot(docker_client, volume)

    killed = threading.Event()

    def kill_helper_midway(progress):
        if progress.phase == "restoring" and progress.done_bytes > 10_000_000 and not killed.is_set():
            killed.set()
            for helper in our_helpers(docker_client):
                helper.remove(force=True)

    with pytest.raises(BackupError):  # our own error, with its message; not a raw Docker one
        manager.restore_backup(backup["id"], "replace", Progress(kill_helper_midway))
    assert killed.is_set()
    manager.undo_last_restore()
    assert volume_snapshot(docker_client, volume) == before


def test_backup_waits_for_the_scs_journal(tmp_path):
    source = tmp_path / "nb"
    source.mkdir()
    (source / SCS).write_bytes(os.urandom(4096))
    (source / (SCS + "-journal")).write_bytes(b"mid-write")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "s"), docker_url="none"))
    with pytest.raises(BackupError, match="was being written"):
        manager.create_backup()
    assert manager.list_backups() == []

    threading.Timer(0.3, (source / (SCS + "-journal")).unlink).start()  # the write ends
    meta = manager.create_backup()
    assert meta["file_count"] == 1  # the database alone, never with its journal


def test_local_restore_writes_the_scs_atomically_and_says_restart(tmp_path):
    source = tmp_path / "nb"
    source.mkdir()
    (source / SCS).write_bytes(b"v1" * 1000)
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "s"), docker_url="none"))
    backup = manager.create_backup()
    reader = open(source / SCS, "rb")  # a kernel holding the SCS open
    (source / SCS).write_bytes(b"v2" * 1000)
    result = manager.restore_backup(backup["id"])
    assert (source / SCS).read_bytes() == b"v1" * 1000
    assert "Restart the kernels" in result["hint"]
    assert reader.read() == b"v2" * 1000  # the old file was replaced by rename, not rewritten
    reader.close()
    assert sorted(os.listdir(source)) == [SCS]


def test_retention_keeps_the_newest_and_the_newest_safety_backup(tmp_path, capsys):
    source = tmp_path / "nb"
    source.mkdir()
    (source / "a.txt").write_text("1")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "s"), docker_url="none"))
    first = manager.create_backup()
    restore = manager.restore_backup(first["id"])  # makes a safety backup
    later = [manager.create_backup()["id"] for _ in range(3)]
    manager.config.keep_last = 2
    manager.config.prune_after_backup = True
    newest = manager.create_backup()["id"]
    kept = [b["id"] for b in manager.list_backups()]
    # the restore changed nothing, so its safety backup lists a.txt as unchanged, held by the
    # restored backup: that one stays with it, or undo could not be exact
    assert manager.get_backup(restore["safety_backup_id"])["bases"] == {first["id"]: first["sha256"]}
    assert kept == [newest, later[-1], restore["safety_backup_id"], first["id"]]
    assert main(["--source-dir", str(source), "--store", str(tmp_path / "s"), "prune", "--keep", "1"]) == 0
    assert [b["id"] for b in manager.list_backups()] == [newest, restore["safety_backup_id"], first["id"]]


def test_cli_dry_run_and_path(tmp_path, capsys):
    source = tmp_path / "nb"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "x.txt").write_text("x")
    (source / "y.txt").write_text("y")
    store = str(tmp_path / "s")
    assert main(["--source-dir", str(source), "--store", store, "create"]) == 0
    backup_id = capsys.readouterr().out.split()[-1]
    (source / "sub" / "x.txt").write_text("changed")
    (source / "y.txt").write_text("changed")
    assert main(["--source-dir", str(source), "--store", store, "restore", backup_id, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "~ sub/x.txt" in out and "~ y.txt" in out and "Nothing was changed" in out
    assert (source / "y.txt").read_text() == "changed"
    assert main(["--source-dir", str(source), "--store", store, "restore", backup_id, "--path", "sub"]) == 0
    assert (source / "sub" / "x.txt").read_text() == "x" and (source / "y.txt").read_text() == "changed"
    assert main(["--source-dir", str(source), "--store", store, "restore", backup_id, "--path", "nope"]) == 1
    assert "not in this backup" in capsys.readouterr().err


@pytest.fixture(scope="module")
def image_with_entrypoint(docker_client):
    """An image like AI-Lab's: an entrypoint of its own (AI-Lab's starts a server; this one fails
    at once) and a user that is not root. Made from the helper image, without a registry."""
    tag = uuid.uuid4().hex[:10]  # a parallel run's image is not removed under it
    name = f"ailab-backup-entrypoint:{tag}"
    base = docker_client.containers.create(HELPER_IMAGE, ["true"])
    try:
        exported = b"".join(base.export())
    finally:
        base.remove(force=True)
    docker_client.api.import_image_from_data(
        exported, repository="ailab-backup-entrypoint", tag=tag,
        changes=['ENTRYPOINT ["/bin/false"]', "USER 1000"])
    yield name
    docker_client.images.remove(name, force=True)


def test_helpers_run_their_command_whatever_the_image_entrypoint(docker_client, make_volume, image_with_entrypoint):
    """A replace that removes files and renames the SCS needs helpers that run commands; with
    AI-Lab's image as the helper image they must run ours, as root, not the image's entrypoint."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, f"cd /v && echo one > a.txt && echo scs > {SCS}")
    manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=image_with_entrypoint))
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, f"cd /v && echo two > a.txt && echo extra > b.txt && echo new > {SCS}")
    manager.restore_backup(backup["id"], "replace")
    after = volume_snapshot(docker_client, volume)
    assert set(after) == {".", "a.txt", SCS}  # b.txt removed by a helper's rm
    assert after["a.txt"][-1] == hashlib.sha256(b"one\n").hexdigest()
    assert after[SCS][-1] == hashlib.sha256(b"scs\n").hexdigest()  # renamed into place by a helper's mv


def test_one_operation_runs_each_of_its_helper_commands_in_a_volume_store(docker_client, make_volume):
    """An operation shares one helper per set of mounts, so a backup that prunes several old
    backups from a store volume starts that helper once per removal: each must run its own."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && echo one > a.txt")
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    for _ in range(3):
        manager.create_backup()
    manager.config.keep_last = 1
    manager.config.prune_after_backup = True
    newest = manager.create_backup()["id"]
    assert [b["id"] for b in manager.list_backups()] == [newest]
    stored = run_in_volume(docker_client, store, "find /v/data /v/meta -type f").split()
    assert sorted(stored) == [f"/v/data/{newest}.tar.zst", f"/v/meta/{newest}.json"]
