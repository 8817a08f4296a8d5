"""Moving to a new AI-Lab release: the release each backup records, and "Bring my work into this
release" from a backup of another release (or a seed-recipe folder), locally, by REST and CLI."""

import os

import pytest

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from releaseutil import (AFTER_MOVE, BESIDE, EMPTY_FOLDER, RELEASE_1, RELEASE_2, SCS, USER_CHANGES, check_plan, digests,
                         file_digests, make_release, volume_of_release_1, write_files)
from treeutil import folder_snapshot


@pytest.fixture
def releases(tmp_path):
    """(defaults of 1.0, defaults of 2.0, the store folder shared by both servers)."""
    return (make_release(tmp_path / "r1", RELEASE_1), make_release(tmp_path / "r2", RELEASE_2),
            str(tmp_path / "store"))


def running(monkeypatch, defaults, name):
    """The CLI of a server of this release (the traits by their environment variables)."""
    monkeypatch.setenv("AILAB_BACKUP_NOTEBOOK_DEFAULTS", defaults)
    monkeypatch.setenv("AILAB_BACKUP_RELEASE", name)


def manager_of(source, defaults, name, store):
    return BackupManager(AILabBackup(source_dir=source, store=store, docker_url="none",
                                     notebook_defaults=defaults, release=name))


def test_a_backup_records_its_release_and_which_files_are_unchanged_defaults(releases, tmp_path):
    r1, _, store = releases
    old = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store)
    meta = old.create_backup()
    assert meta["release"]["name"] == "1.0" and meta["release"]["image"] is None  # local: no image
    assert meta["release"]["defaults_count"] == len(RELEASE_1)
    assert meta["release"]["unchanged_defaults"] == 2  # start, old_demo
    with old.store.open_archive(meta["archive"]) as f:
        from ailab_backup_ext.archive import read_archive
        manifest = read_archive(f)
    record = manifest.release_record()
    assert record["unchanged_defaults"] == ["old_demo.ipynb", "start.ipynb"]
    assert record["defaults"] == digests(RELEASE_1) and record["defaults_dir"] == r1


def test_release_move_plan_and_result_match_and_undo_brings_the_new_volume_back(releases, tmp_path):
    r1, r2, store = releases
    backup = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store).create_backup(label="Before upgrading")
    v2 = make_release(tmp_path / "v2", RELEASE_2)  # the new volume, as the entrypoint of 2.0 fills it
    new = manager_of(v2, r2, "2.0", store)
    status = new.status()["release"]
    assert status["running"]["name"] == "2.0"
    assert status["move"]["backup_id"] == backup["id"] and "AI-Lab 1.0" in status["move"]["message"]
    before = folder_snapshot(v2)

    plan = new.plan_restore(backup["id"], "release-move")
    check_plan(plan)
    assert plan["from_release"]["name"] == "1.0" and plan["to_release"]["name"] == "2.0"
    assert folder_snapshot(v2) == before  # a preview changes nothing

    result = new.restore_backup(backup["id"], "release-move")
    assert {k: result[k] for k in plan if k != "counts"} == {k: plan[k] for k in plan if k != "counts"}
    assert file_digests(folder_snapshot(v2)) == digests(AFTER_MOVE)
    assert os.path.isdir(os.path.join(v2, EMPTY_FOLDER)) and not os.path.exists(os.path.join(v2, "old_demo.ipynb"))
    assert result["hint"] and result["safety_backup_id"]
    # done: the status no longer offers it; undo gives back the new release's volume
    assert new.status()["release"]["move"] is None
    new.undo_last_restore()
    assert file_digests(folder_snapshot(v2)) == file_digests(before)


def test_written_files_take_the_owner_of_the_new_volume(releases, tmp_path):
    r1, r2, store = releases
    backup = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store).create_backup()
    v2 = make_release(tmp_path / "v2", RELEASE_2)
    for folder, _, files in os.walk(v2):  # the new release's user (a uid other than the backup's)
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            os.chown(path, 4242, 4243)
    manager_of(v2, r2, "2.0", store).restore_backup(backup["id"], "release-move")
    snap = folder_snapshot(v2)
    assert {snap[p][2:4] for p in [*AFTER_MOVE, "my"]} == {(4242, 4243)}


def test_an_old_backup_without_record_is_compared_with_the_running_release_only(releases, tmp_path):
    """A backup made before releases were recorded (no record: as an upload of an old one)."""
    r1, r2, store = releases
    old = manager_of(volume_of_release_1(tmp_path / "v1"), str(tmp_path / "none"), "", store)
    backup = old.create_backup()
    assert backup["release"] is None  # nothing known of its release: no record, as in older backups
    v2 = make_release(tmp_path / "v2", RELEASE_2)
    new = manager_of(v2, r2, "2.0", store)
    assert new.status()["release"]["move"] is None  # not known to be another release: not offered
    plan = new.plan_release_move(backup["id"])
    got = {c: {i["path"] for i in plan[c]} for c in ("kept_both", "overwritten", "brought_back", "left_to_release")}
    # nothing is known to be an old default: a default of 2.0 the backup holds otherwise is kept
    # twice (data/flights); what 2.0 ships alike is unchanged; the rest is the user's
    assert got == {"kept_both": {"data/flights.ipynb", "sklearn/train.ipynb"}, "overwritten": set(),
                   "brought_back": {"my/analysis.ipynb", ".gitkeep", "legacy.ipynb", "old_demo.ipynb"},
                   "left_to_release": set()}
    assert {i["path"] for i in plan["unchanged"]["items"]} == {"start.ipynb"}


def test_a_seed_recipe_folder_is_brought_in_with_the_running_release_defaults(releases, tmp_path, capsys, monkeypatch):
    _, r2, store = releases
    folder = tmp_path / "DIR"
    volume_of_release_1(folder / "notebooks")  # docker cp C:/notebooks DIR
    v2 = make_release(tmp_path / "v2", RELEASE_2)
    args = ["--source-dir", v2, "--store", store, "--docker-url", "none"]
    running(monkeypatch, r2, "2.0")
    before = folder_snapshot(v2)
    assert main(["import", "--dir", str(folder), "--into-release", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert f"both  data/flights.ipynb  (AI-Lab 2.0's version kept as {BESIDE})" in out, out
    assert folder_snapshot(v2) == before
    assert main(["import", "--dir", str(folder), "--into-release", *args]) == 0
    after = file_digests(folder_snapshot(v2))
    assert after[BESIDE] == digests(RELEASE_2)[BESIDE.replace(" (AI-Lab 2.0)", "")]
    assert after["data/flights.ipynb"] == digests(USER_CHANGES)["data/flights.ipynb"]
    assert after["old_demo.ipynb"] == digests(RELEASE_1)["old_demo.ipynb"]  # not known as a default of 1.0
    assert after[SCS] == digests(USER_CHANGES)[SCS]


def test_cli_create_before_upgrade_and_restore_into_release(releases, tmp_path, capsys, monkeypatch):
    r1, r2, store = releases
    v1, v2 = volume_of_release_1(tmp_path / "v1"), make_release(tmp_path / "v2", RELEASE_2)
    base = ["--store", store, "--docker-url", "none"]
    running(monkeypatch, r1, "1.0")
    assert main(["create", "--before-upgrade", "--source-dir", v1, *base]) == 0
    backup_id = capsys.readouterr().out.strip().splitlines()[-1]
    running(monkeypatch, r2, "2.0")
    assert main(["list", "--source-dir", v2, *base]) == 0
    captured = capsys.readouterr()
    assert "Before upgrading (AI-Lab 1.0)" in captured.out
    assert f"ailab-backup restore {backup_id} --into-release" in captured.err  # offered
    before = folder_snapshot(v2)
    assert main(["restore", backup_id, "--into-release", "--dry-run", "--source-dir", v2, *base]) == 0
    out = capsys.readouterr().out
    for line in ("SCS  " + SCS, "new  my/analysis.ipynb", "mine sklearn/train.ipynb",
                 "both  data/flights.ipynb", "release start.ipynb", "release old_demo.ipynb",
                 "added new_demo.ipynb"):
        assert line in out, (line, out)
    assert folder_snapshot(v2) == before
    assert main(["restore", backup_id, "--into-release", "--source-dir", v2, *base]) == 0
    assert "ailab-backup undo" in capsys.readouterr().out
    assert main(["restore", backup_id, "--into-release", "--path", "x", "--source-dir", v2, *base]) == 1
    assert "takes no --path" in capsys.readouterr().err
    assert file_digests(folder_snapshot(v2)) == digests(AFTER_MOVE)


def test_paths_are_refused_with_a_release_move(releases, tmp_path):
    r1, _, store = releases
    manager = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store)
    backup = manager.create_backup()
    with pytest.raises(BackupError, match="takes no paths"):
        manager.start_restore(backup["id"], "release-move", ["start.ipynb"])
    with pytest.raises(BackupError, match="'merge', 'replace' or 'release-move'"):
        manager.plan_restore(backup["id"], "move")


def test_a_move_needs_the_running_release_defaults_and_changes_nothing_without(releases, tmp_path):
    r1, _, store = releases
    backup = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store).create_backup()
    v2 = make_release(tmp_path / "v2", RELEASE_2)
    before = folder_snapshot(v2)
    laptop = manager_of(v2, str(tmp_path / "no-such-folder"), "2.0", store)
    with pytest.raises(BackupError, match="no-such-folder.*AILabBackup.notebook_defaults"):
        laptop.release_move(backup["id"])
    assert folder_snapshot(v2) == before
    assert [m["kind"] for m in laptop.list_backups()] == ["manual"]  # no safety backup either


def test_the_offer_stays_through_scheduled_backups_of_the_new_release(releases, tmp_path):
    """The new server's schedule backs up soon after its start (a run missed meanwhile): that must
    not hide the move; a backup the user makes in the new release ends the offer."""
    r1, r2, store = releases
    backup = manager_of(volume_of_release_1(tmp_path / "v1"), r1, "1.0", store).create_backup()
    new = manager_of(make_release(tmp_path / "v2", RELEASE_2), r2, "2.0", store)
    new.create_backup("Scheduled backup", kind="scheduled")
    assert new.status()["release"]["move"]["backup_id"] == backup["id"]
    new.create_backup("my first in 2.0")
    assert new.status()["release"]["move"] is None
