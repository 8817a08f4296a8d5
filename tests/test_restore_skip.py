"""A one-pass restore leaves alone what is identical already (issue 15): a file the folder holds
as the backup has it (same content, compared with the archive's checked content; same mode,
owner and time) is neither staged nor moved, and its safety backup holds only what the restore
overwrites or removes, listing the rest as unchanged (held by the restored backup). What a user
checks: the folder ends up exactly as the backup (owners, modes, times, links, empty folders),
undo brings back exactly what was there (also when files changed after the restore), identical
files keep their inode, and a file changed while the restore was prepared stops it unchanged."""

import os

import pytest

import ailab_backup_ext.staged_restore as staged_restore
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, InvalidArchive
from ailab_backup_ext.staged_restore import STAGING_PREFIX
from test_roundtrip import fill_volume
from test_staged_restore import local, tree  # noqa: F401 - fixtures: a tree, and a copy to restore over
from treeutil import folder_snapshot, run_in_volume, volume_snapshot

SCS = "ai_lab_secure_configuration_storage.sqlite"
UNTOUCHED = [SCS, "démo/Übung ünïcödé.ipynb", "private/secret.txt", "data/big.bin", ".gitkeep"]


def change(source):
    """Some files changed, one only in its mode, one removed, one added, a link and a folder."""
    (source / "intro.ipynb").write_text('{"cells": ["changed"]}')
    os.chmod(source / ".ipynb_checkpoints" / "intro-checkpoint.ipynb", 0o600)
    (source / "link-to-intro").unlink()
    os.symlink(".gitkeep", source / "link-to-intro")
    (source / "empty").rmdir()
    (source / "added.txt").write_text("not in the backup")
    os.utime(source, (1_500_000_000, 1_500_000_000))


def inodes(source, paths):
    return {p: os.stat(source / p).st_ino for p in paths}


def test_a_restore_over_a_changed_folder_gives_the_backup_and_leaves_identical_files_in_place(local):
    source, manager = local
    backup = manager.create_backup()
    original = folder_snapshot(source)
    change(source)
    before = folder_snapshot(source)
    kept = inodes(source, UNTOUCHED)
    changed = inodes(source, ["intro.ipynb"])
    result = manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == original
    assert inodes(source, UNTOUCHED) == kept  # identical: neither staged nor moved
    assert inodes(source, ["intro.ipynb"]) != changed  # written anew, as before
    assert not [n for n in os.listdir(source) if n.startswith(STAGING_PREFIX)]
    # the safety backup holds what the restore overwrote or removed, and lists the rest as unchanged
    safety = manager.get_backup(result["safety_backup_id"])
    assert safety["bases"] == {backup["id"]: backup["sha256"]}
    assert safety["unchanged_files"] == len(UNTOUCHED)
    assert safety["file_count"] == 3  # intro.ipynb, the checkpoint (its mode), added.txt
    # undo: exactly the state before the restore; undo again: the backup
    manager.undo_last_restore()
    assert folder_snapshot(source) == before
    manager.undo_last_restore()
    assert folder_snapshot(source) == original


def test_restore_over_itself_stages_nothing_and_its_undo_is_exact(local, monkeypatch):
    source, manager = local
    backup = manager.create_backup()
    original = folder_snapshot(source)
    kept = inodes(source, UNTOUCHED + ["intro.ipynb"])
    written = []
    stage = staged_restore.Staging._write
    monkeypatch.setattr(staged_restore.Staging, "_write",
                        lambda self, entry, *a, **k: (written.append(entry.path), stage(self, entry, *a, **k))[1])
    result = manager.restore_backup(backup["id"], "replace")
    assert written == []
    assert folder_snapshot(source) == original and inodes(source, UNTOUCHED + ["intro.ipynb"]) == kept
    safety = manager.get_backup(result["safety_backup_id"])
    assert safety["file_count"] == 0 and safety["unchanged_files"] == 7
    manager.undo_last_restore()
    assert folder_snapshot(source) == original


def test_undo_is_exact_even_when_unchanged_files_changed_after_the_restore(local):
    """The files a safety backup lists as unchanged, changed or removed after the restore, come
    back from the backup holding them (checked completely first)."""
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)
    manager.restore_backup(backup["id"], "replace")
    (source / "data" / "big.bin").write_bytes(b"edited after the restore")
    (source / SCS).unlink()
    os.chmod(source / "private" / "secret.txt", 0o644)
    manager.undo_last_restore()
    assert folder_snapshot(source) == before


def test_undo_whose_unchanged_files_changed_and_whose_base_is_gone_changes_nothing(local):
    source, manager = local
    backup = manager.create_backup()
    change(source)
    result = manager.restore_backup(backup["id"], "replace")
    (source / "data" / "big.bin").write_bytes(b"edited after the restore")
    manager.store.remove(backup["id"], backup["archive"])
    now = folder_snapshot(source)
    with pytest.raises(BackupError, match="was deleted. Nothing was changed"):
        manager.restore_backup(result["safety_backup_id"], "replace")
    assert folder_snapshot(source) == now


def test_a_file_changed_while_the_restore_is_prepared_stops_it_and_nothing_changes(local, monkeypatch):
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)
    create = BackupManager._create

    def meddling(self, label, kind, *args, **kwargs):
        if kind == "safety":  # after the check found big.bin identical, before anything moves
            with open(source / "data" / "big.bin", "r+b") as f:
                f.write(b"X")
            before.update({"data/big.bin": folder_snapshot(source)["data/big.bin"]})
        return create(self, label, kind, *args, **kwargs)

    monkeypatch.setattr(BackupManager, "_create", meddling)
    with pytest.raises(BackupError, match="was changed while the restore was being prepared"):
        manager.restore_backup(backup["id"], "replace")
    assert folder_snapshot(source) == before
    assert [b["kind"] for b in manager.list_backups()] == ["manual"]  # no safety backup kept


def test_a_file_equal_but_for_the_fraction_of_its_time_is_left_in_place_with_the_backups_time(local):
    source, manager = local
    backup = manager.create_backup()
    original = folder_snapshot(source)
    big = source / "data" / "big.bin"
    st = os.stat(big)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 500_000_000))
    manager.restore_backup(backup["id"], "replace")
    assert os.stat(big).st_ino == st.st_ino and os.stat(big).st_mtime_ns == st.st_mtime_ns
    assert folder_snapshot(source) == original


def test_a_restore_of_chosen_paths_from_a_partial_safety_backup(local):
    """Not one pass (paths chosen): the unchanged files in scope must be as listed, else a clear
    error and nothing changed."""
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)
    result = manager.restore_backup(backup["id"], "replace")
    manager.restore_backup(result["safety_backup_id"], "replace", paths=["intro.ipynb", "private"])
    assert folder_snapshot(source)["intro.ipynb"] == before["intro.ipynb"]
    (source / "private" / "secret.txt").write_text("edited")
    now = folder_snapshot(source)
    with pytest.raises(BackupError, match="differ now and are in backup"):
        manager.restore_backup(result["safety_backup_id"], "replace", paths=["private"])
    assert folder_snapshot(source) == now


def test_a_partial_safety_backup_cannot_be_uploaded_alone(local, tmp_path):
    source, manager = local
    backup = manager.create_backup()
    result = manager.restore_backup(backup["id"], "replace")
    safety = manager.get_backup(result["safety_backup_id"])
    path = os.path.join(manager.store.path, "data", safety["archive"])
    assert manager.verify_backup(safety["id"])["ok"]
    with pytest.raises(InvalidArchive, match="holds only what its restore changed"):
        manager.add_archive_file(path)


# the worker, on the real engine ------------------------------------------------------------------


def volume_inodes(client, volume, paths):
    out = run_in_volume(client, volume, "cd /v && stat -c '%i %n' " + " ".join(f"'{p}'" for p in paths))
    return dict(reversed(line.split(" ", 1)) for line in out.strip().splitlines())


def test_worker_restore_over_a_changed_volume_is_exact_and_leaves_identical_files_in_place(
        docker_client, make_volume, tree, tmp_path, python_image, request):
    volume = make_volume()
    fill_volume(docker_client, volume, tree)
    manager = BackupManager(AILabBackup(volume=volume, store=str(tmp_path / "store"), helper_image=python_image))
    manager.docker.keep_helpers = True  # as a server: jobs in one kept worker
    request.addfinalizer(manager.docker.close)
    original = volume_snapshot(docker_client, volume)
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo changed > intro.ipynb && rm -r empty && echo new > added.txt"
                  " && chmod 600 .gitkeep && rm link-to-intro && ln -s .gitkeep link-to-intro")
    before = volume_snapshot(docker_client, volume)
    untouched = [p for p in UNTOUCHED if p != ".gitkeep"] + [".ipynb_checkpoints/intro-checkpoint.ipynb"]
    kept = volume_inodes(docker_client, volume, untouched)
    result = manager.restore_backup(backup["id"], "replace")
    assert volume_snapshot(docker_client, volume) == original
    assert volume_inodes(docker_client, volume, untouched) == kept
    safety = manager.get_backup(result["safety_backup_id"])
    assert safety["unchanged_files"] == len(untouched) and safety["file_count"] == 3
    run_in_volume(docker_client, volume, "cd /v && echo edited > data/big.bin")  # undo is exact all the same
    manager.undo_last_restore()
    assert volume_snapshot(docker_client, volume) == before


def test_a_release_move_from_a_partial_safety_backup_is_refused(local):
    source, manager = local
    backup = manager.create_backup()
    result = manager.restore_backup(backup["id"], "replace")
    before = folder_snapshot(source)
    with pytest.raises(BackupError, match="holds only what its restore changed"):
        manager.restore_backup(result["safety_backup_id"], "release-move")
    assert folder_snapshot(source) == before


def test_the_backup_a_safety_backup_needs_for_undo_cannot_be_deleted_before_it(local):
    """A partial safety backup's unchanged files are held by the restored backup: deleting that one
    is refused (nothing deleted, undo still exact) until the safety backup itself is deleted."""
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)
    safety = manager.restore_backup(backup["id"], "replace")["safety_backup_id"]
    (source / "data" / "big.bin").write_bytes(b"edited after the restore")
    with pytest.raises(BackupError, match=f"safety backup {safety} lists as unchanged.*Nothing was deleted"):
        manager.delete_backup(backup["id"])
    assert {m["id"] for m in manager.list_backups()} == {backup["id"], safety}
    manager.undo_last_restore()
    assert folder_snapshot(source) == before
    undo_safety = manager.last_safety_backup()["id"]
    for doomed in (undo_safety, safety, backup["id"]):  # each once nothing lists it as its base
        manager.delete_backup(doomed)
    assert manager.list_backups() == []


def test_prune_keeps_the_backup_holding_the_newest_safety_backups_unchanged_files(local):
    source, manager = local
    backup = manager.create_backup()
    change(source)
    before = folder_snapshot(source)
    safety = manager.restore_backup(backup["id"], "replace")["safety_backup_id"]
    (source / "added-later.txt").write_text("a newer backup")
    older, newest = manager.create_backup(), None
    (source / "added-later.txt").write_text("the newest backup")
    newest = manager.create_backup()
    assert manager.prune(1) == [older["id"]]
    assert {m["id"] for m in manager.list_backups()} == {newest["id"], safety, backup["id"]}
    (source / "data" / "big.bin").write_bytes(b"edited: undo needs the backup holding it")
    manager.restore_backup(safety, "replace")
    assert folder_snapshot(source) == before
