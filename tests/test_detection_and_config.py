"""Finding the source inside AI-Lab, configuration from every place, and the CLI's manners."""

import json
import os

import pytest

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.docker_helper import DockerHelper, find_covering_mount
from ailab_backup_ext.sources import DockerMountSource, LocalFolderSource
from ailab_backup_ext.stores import FolderStore, VolumeStore
from treeutil import HELPER_IMAGE

ROOT = "/home/jupyter/notebooks"


@pytest.fixture
def ailab_like_container(docker_client, make_volume, tmp_path):
    """A real container started like AI-Lab: a volume at /home/jupyter/notebooks, plus a bind."""
    volume = make_volume()
    container = docker_client.containers.create(
        HELPER_IMAGE, ["true"],
        volumes={volume: {"bind": ROOT, "mode": "rw"}, str(tmp_path): {"bind": "/data", "mode": "ro"}},
    )
    yield volume, docker_client.api.inspect_container(container.id)
    container.remove(force=True)


def test_mount_covering_root_dir_of_real_container(ailab_like_container, tmp_path):
    volume, attrs = ailab_like_container
    mount, below = find_covering_mount(attrs["Mounts"], ROOT)
    assert (mount["Type"], mount["Name"], below) == ("volume", volume, ".")
    mount, below = find_covering_mount(attrs["Mounts"], ROOT + "/project")
    assert (mount["Name"], below) == (volume, "project")
    mount, _ = find_covering_mount(attrs["Mounts"], "/data/x")
    assert (mount["Type"], mount["Source"]) == ("bind", str(tmp_path))
    assert find_covering_mount(attrs["Mounts"], "/home/jupyter") == (None, None)
    assert find_covering_mount(attrs["Mounts"], "/home/jupyter/notebooks-other") == (None, None)


def test_manager_inside_container_backs_up_the_covering_volume(ailab_like_container, monkeypatch, docker_client):
    volume, attrs = ailab_like_container
    had_store = bool(docker_client.volumes.list(filters={"name": "^ailab-backups$"}))
    # the server "runs in" that container: its own inspect data is the real container's
    monkeypatch.setattr(DockerHelper, "own_container", lambda self: attrs)
    manager = BackupManager(AILabBackup(), root_dir=ROOT)
    source, store = manager.resolve()
    assert isinstance(source, DockerMountSource) and source.mount_name == volume
    assert "mount of this container" in source.found_by
    assert isinstance(store, VolumeStore) and store.volume == "ailab-backups"
    assert manager.status()["mode"] == "docker"
    # looking (status, list) never makes the store: a volume appears only with the first backup
    assert manager.list_backups() == [] or had_store
    assert bool(docker_client.volumes.list(filters={"name": "^ailab-backups$"})) == had_store


def test_outside_a_container_the_root_folder_is_backed_up(docker_client, tmp_path):
    manager = BackupManager(AILabBackup(), root_dir=str(tmp_path))
    source, store = manager.resolve()
    assert isinstance(source, LocalFolderSource) and source.path == str(tmp_path)
    assert isinstance(store, FolderStore) and store.path.endswith("ailab-backups")


def test_no_docker_means_local_folder_with_a_hint(tmp_path):
    manager = BackupManager(AILabBackup(docker_url="unix:///nonexistent/docker.sock"), root_dir=str(tmp_path))
    status = manager.status()
    assert status["mode"] == "local" and status["docker"]["reachable"] is False
    assert "docker.sock" in status["hint"]


def test_environment_variables_set_every_trait(monkeypatch):
    monkeypatch.setenv("AILAB_BACKUP_STORE", "/srv/backups")
    monkeypatch.setenv("AILAB_BACKUP_EXCLUDES", "models_cache, *.tmp")
    monkeypatch.setenv("AILAB_BACKUP_COMPRESSION", "gzip")
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "1000")
    config = AILabBackup()
    assert (config.store, config.excludes, config.compression, config.max_archive_bytes) == (
        "/srv/backups", ["models_cache", "*.tmp"], "gzip", 1000)
    assert config.helper_image == HELPER_IMAGE  # conftest sets AILAB_BACKUP_HELPER_IMAGE
    assert AILabBackup(store="/other").store == "/other"  # explicit settings win


def test_every_trait_has_help():
    for name, trait in AILabBackup.class_traits(config=True).items():
        assert len(trait.help) > 20, name


def test_options_before_or_after_the_subcommand(tmp_path, capsys):
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "a.ipynb").write_text("{}")
    assert main(["--source-dir", str(tmp_path / "nb"), "create", "--store", str(tmp_path / "s"),
                 "--compression", "gzip"]) == 0
    backup_id = capsys.readouterr().out.strip().splitlines()[-1]
    with open(tmp_path / "s" / "data" / f"{backup_id}.tar.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip indeed, not just the name
    assert main(["list", "--json", "--store", str(tmp_path / "s"), "--source-dir", str(tmp_path / "nb")]) == 0
    assert [b["id"] for b in json.loads(capsys.readouterr().out)] == [backup_id]


def test_seed_variables_are_the_defaults(docker_client, make_volume, tmp_path, capsys, monkeypatch):
    volume = make_volume()
    monkeypatch.setenv("VOLUME", volume)
    monkeypatch.setenv("DIR", str(tmp_path / "backup"))
    assert main(["export"]) == 0
    assert (tmp_path / "backup" / "notebooks").is_dir()


@pytest.mark.parametrize("args, says", [
    (["--source-dir", "/nonexistent/nb", "create"], "does not exist"),
    (["--store", "/tmp/x", "--source-dir", "/tmp", "show", "no-such-id"], "No backup has the id"),
    (["--store", "/tmp/x", "--source-dir", "/tmp", "restore", "../etc"], "is not a backup id"),
    (["--docker-url", "unix:///nonexistent.sock", "--volume", "v", "list"], "Docker is not reachable"),
])
def test_expected_errors_are_one_line_without_traceback(args, says, capsys, tmp_path):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("ailab-backup: error:") and says in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_helper_image_is_named(docker_client, make_volume, capsys):
    volume = make_volume()
    assert main(["--helper-image", "not-here:1", "--volume", volume, "--store", "/tmp/s", "create"]) == 1
    err = capsys.readouterr().err
    assert "'not-here:1' is not present" in err and "docker pull not-here:1" in err
    assert err.startswith("ailab-backup: error:") and "Traceback" not in err and err.count("\n") == 1


def test_what_cannot_be_restored_is_left_out_and_named(tmp_path, capsys):
    """A fifo, a link out of the folder and a setuid bit: the backup is taken without them,
    says so, and restores."""
    source = tmp_path / "nb"
    source.mkdir()
    (source / "a.ipynb").write_text("{}")
    os.mkfifo(source / "pipe")
    os.symlink("/etc/passwd", source / "out")
    (source / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(source / "run.sh", 0o4755)
    store = str(tmp_path / "s")
    assert main(["--source-dir", str(source), "--store", store, "create"]) == 0
    captured = capsys.readouterr()
    backup_id = captured.out.split()[-1]
    notes = [line for line in captured.err.splitlines() if line.startswith("note: left out")]
    assert [n.split()[3] for n in notes] == ["out:", "pipe:", "run.sh:"], notes
    assert "fifo" in notes[1] and "points outside" in notes[0] and "setuid" in notes[2]
    (source / "a.ipynb").write_text("changed")
    assert main(["--source-dir", str(source), "--store", store, "restore", backup_id]) == 0
    assert (source / "a.ipynb").read_text() == "{}" and os.stat(source / "run.sh").st_mode & 0o7777 == 0o755
