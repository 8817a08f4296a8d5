"""The command line's containers, on the real engine: each worker command (backup, restore with
its safety backup, undo, verify, the restore preview) makes one helper container, which reads the
settings kept beside the store before it runs the job, and none is left behind. A setting that
names another helper image is still obeyed (then a second container runs the job in it)."""

import json
import os

import docker.models.containers as containers
import pytest

from ailab_backup_ext import cli
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from test_roundtrip import fill_volume, make_tree
from treeutil import our_helpers, volume_snapshot


@pytest.fixture
def created(monkeypatch):
    """(image, labels) of each container created in this process from now on."""
    made = []
    create = containers.ContainerCollection.create

    def counting(self, image, *args, **kwargs):
        made.append((image, kwargs.get("labels") or {}))
        return create(self, image, *args, **kwargs)

    monkeypatch.setattr(containers.ContainerCollection, "create", counting)
    return made


@pytest.fixture
def probed(monkeypatch, tmp_path):
    """A probe cache of its own, filled for ``image`` before anything is counted: what an image's
    Python is was learnt by an earlier command."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def probe(image):
        BackupManager(AILabBackup(helper_image=image)).worker.probe()

    return probe


def ailab_backup(capsys, *argv):
    assert cli.main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_each_worker_command_makes_one_container_and_leaves_none(
        docker_client, make_volume, tmp_path, python_image, created, probed, capsys):
    volume, store, target = make_volume(), make_volume("ailabstore"), make_volume()
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=2))
    original = volume_snapshot(docker_client, volume)
    probed(python_image)
    options = ["--helper-image", python_image, "--store", store]

    def one_container(*argv):
        del created[:]
        out = ailab_backup(capsys, *options, *argv)
        assert ["ailab-backup.worker" in labels for _, labels in created] == [True], created
        assert our_helpers(docker_client) == []
        return out

    backup_id = one_container("--volume", volume, "create").strip().splitlines()[-1]
    assert "OK" in one_container("--volume", volume, "verify", backup_id)
    assert "Nothing was changed" in one_container("--volume", target, "restore", backup_id, "--dry-run")
    before = volume_snapshot(docker_client, target)
    out = one_container("--volume", target, "restore", backup_id, "--mode", "replace")
    assert "The state before is kept as" in out  # the safety backup, taken by the same worker
    assert volume_snapshot(docker_client, target) == original
    assert "Undone" in one_container("--volume", target, "undo")  # the listing too goes through its worker
    assert volume_snapshot(docker_client, target) == before


def test_a_helper_image_kept_in_the_settings_runs_the_job(
        docker_client, make_volume, tmp_path, python_image, created, probed, capsys, monkeypatch):
    other = f"{python_image.partition(':')[0]}-other:{python_image.partition(':')[2]}"
    docker_client.images.get(python_image).tag(other)
    try:
        volume, store = make_volume(), str(tmp_path / "store")
        fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=1))
        os.makedirs(store)
        with open(os.path.join(store, "settings.json"), "w") as f:
            json.dump({"helper_image": other}, f)
        probed(python_image)
        monkeypatch.setenv("AILAB_BACKUP_HELPER_IMAGE", python_image)  # configured, not pinned: the setting wins
        del created[:]
        ailab_backup(capsys, "--volume", volume, "--store", store, "create")
        images = [image for image, labels in created if "ailab-backup.worker" in labels]
        assert images[-1] == other and len(created) <= 2  # one read the settings (the first), the last ran the job
        assert len(os.listdir(os.path.join(store, "meta"))) == 1
        assert our_helpers(docker_client) == []
    finally:
        docker_client.images.remove(other, noprune=True)


@pytest.mark.parametrize("worker", [True, False], ids=["in the worker", "in this process"])
def test_an_exclude_given_on_the_command_line_wins_over_the_kept_excludes(
        docker_client, make_volume, tmp_path, python_image, probed, capsys, worker):
    """``--exclude`` is for this run: it replaces the excludes kept beside the store, wherever
    the backup runs (the worker reads the kept settings itself)."""
    from treeutil import HELPER_IMAGE, run_in_volume

    volume, store = make_volume(), str(tmp_path / "store")
    run_in_volume(docker_client, volume, "mkdir /v/by_setting /v/by_option && echo a > /v/by_setting/a.ipynb"
                                         " && echo b > /v/by_option/b.ipynb && echo c > /v/c.ipynb")
    os.makedirs(store)
    with open(os.path.join(store, "settings.json"), "w") as f:
        json.dump({"excludes": ["by_setting"]}, f)
    image = python_image if worker else HELPER_IMAGE
    if worker:
        probed(python_image)
    options = ["--helper-image", image, "--store", store]
    out = ailab_backup(capsys, *options, "--volume", volume, "--exclude", "by_option", "create")
    assert BackupManager(AILabBackup(volume=volume, store=store, helper_image=image)).status()["worker"]["in_use"] \
        == worker

    def restored(backup_id):
        target = make_volume()  # empty: a restore leaves what is excluded in place
        ailab_backup(capsys, *options, "--volume", target, "restore", backup_id, "--mode", "replace")
        return {path for path in volume_snapshot(docker_client, target) if path.endswith(".ipynb")}

    assert restored(out.strip().splitlines()[-1]) == {"by_setting/a.ipynb", "c.ipynb"}
    kept = ailab_backup(capsys, *options, "--volume", volume, "create").strip().splitlines()[-1]
    assert restored(kept) == {"by_option/b.ipynb", "c.ipynb"}, "without --exclude, the kept excludes hold"
    assert our_helpers(docker_client) == []
