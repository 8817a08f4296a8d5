"""Restoring never loses data outside what it was asked to change (issue 18, items 7, 9, 10):

- no removal follows a symlink, neither one the restore itself wrote nor one swapped in;
- the store is never part of the source, however it is reached (a symlink, a bind mount, a
  volume's own folder);
- a selective restore never silently becomes a whole-folder one.

Each case runs against the real Docker engine and in local mode, and where a restore ran, undo
brings back exactly the state before it."""

import os
import subprocess

import pytest

from ailab_backup_ext.archive import ROOT, read_archive
from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.docker_helper import DockerHelper
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.sources import DockerMountSource, FolderWriter
from restutil import call, wait_job
from treeutil import HELPER_IMAGE, folder_snapshot, run_in_volume, volume_snapshot


class Place:
    """A notebooks folder, local or a Docker volume: its manager, a shell in it ($V is the
    folder) and a snapshot of it."""

    def __init__(self, kind, manager, sh, snapshot):
        self.kind, self.manager, self.sh, self.snapshot = kind, manager, sh, snapshot


def local_place(tmp_path, store=None):
    folder = tmp_path / "nb"
    folder.mkdir()
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(store or tmp_path / "store"),
                                        docker_url="none"))

    def sh(script):
        subprocess.run(["sh", "-ec", script], env={**os.environ, "V": str(folder)}, check=True)

    return Place("local", manager, sh, lambda: folder_snapshot(folder))


def docker_place(client, volume, store):
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    return Place("docker", manager, lambda script: run_in_volume(client, volume, "set -e; V=/v; " + script),
                 lambda: volume_snapshot(client, volume))


@pytest.fixture(params=["local", "docker"])
def place(request, tmp_path):
    if request.param == "local":
        return local_place(tmp_path)
    client = request.getfixturevalue("docker_client")
    make_volume = request.getfixturevalue("make_volume")
    return docker_place(client, make_volume(), make_volume("ailabstore"))


def backed_up_paths(manager, backup_id):
    with manager.open_archive(backup_id) as stream:
        return {e.path for e in read_archive(stream).entries}


# --- class: a removal follows a symlink ---------------------------------------------------------

LINK_LAYOUTS = {
    # (made before the backup, the change after it): the backup's link stands where a real
    # folder is now, whose content has the same names as the content behind the link
    "link-at-top": ('mkdir "$V/e" && echo keep > "$V/e/f" && ln -s e "$V/d"',
                    'rm "$V/d" && mkdir "$V/d" && echo other > "$V/d/f"'),
    "link-deeper-to-a-nested-tree": (
        'mkdir -p "$V/e/sub" "$V/x" && echo keep > "$V/e/sub/f" && echo keep2 > "$V/e/g" && ln -s ../e "$V/x/d"',
        'rm "$V/x/d" && mkdir -p "$V/x/d/sub" && echo other > "$V/x/d/sub/f" && echo o > "$V/x/d/g" '
        '&& echo new > "$V/x/d/sub/only-here"'),
}


@pytest.mark.parametrize("layout", LINK_LAYOUTS)
def test_removal_never_follows_a_symlink_the_restore_wrote(place, layout):
    made, changed = LINK_LAYOUTS[layout]
    place.sh(made)
    backup = place.manager.create_backup()
    at_backup = place.snapshot()
    place.sh(changed)
    before = place.snapshot()

    place.manager.restore_backup(backup["id"], "replace")
    # what the link pointed to is still there, and the folder is exactly as backed up
    assert place.snapshot() == at_backup
    place.manager.undo_last_restore()
    assert place.snapshot() == before


def test_docker_removal_never_crosses_a_link_on_its_way_or_inside(docker_client, make_volume):
    """What a listing said can change before the removal (a kernel writes the volume too): the
    helper enters each folder itself and removes nothing behind a link."""
    volume = make_volume()
    run_in_volume(docker_client, volume, """set -e; cd /v; mkdir out t t/sub; echo p > out/precious
        echo q > out/.x.sqlite.ailab-restore; ln -s out a; ln -s ../out t/link; ln -s /v/out t/abs
        ln -s ../../out t/sub/up; echo gone > t/sub/file""")
    before = volume_snapshot(docker_client, volume)
    source = DockerMountSource(DockerHelper("", HELPER_IMAGE), "volume", volume)
    with pytest.raises(BackupError, match="not changed: a/precious"):
        source._in_place("remove", ["a/precious"])
    with pytest.raises(BackupError, match="not changed: a/x.sqlite"):
        source._in_place("rename", ["a/x.sqlite"])
    assert volume_snapshot(docker_client, volume) == before
    source._in_place("remove", ["t"])
    after = volume_snapshot(docker_client, volume)
    assert not [p for p in after if p.startswith("t")]
    assert {p: v for p, v in after.items() if p != "."} == {
        p: v for p, v in before.items() if p != "." and not p.startswith("t")}


def test_local_removal_never_crosses_a_link_on_its_way_or_inside(tmp_path):
    folder, outside = tmp_path / "nb", tmp_path / "outside"
    for path in (folder / "t" / "sub", outside):
        path.mkdir(parents=True)
    (outside / "precious").write_text("p")
    (folder / "a").symlink_to(outside)
    (folder / "t" / "link").symlink_to("../../outside")
    (folder / "t" / "abs").symlink_to(outside)
    (folder / "t" / "sub" / "up").symlink_to(outside)
    kept_outside = folder_snapshot(outside)
    with FolderWriter(os.open(folder, os.O_RDONLY | os.O_DIRECTORY), str(folder)) as writer:
        writer.remove("a/precious")
        writer.remove("t")
    assert folder_snapshot(outside) == kept_outside
    assert sorted(os.listdir(folder)) == ["a"]


def test_replace_never_removes_a_folder_that_holds_an_excluded_path(place):
    """``excludes`` are kept by replace: also when the folder holding one is not in the backup."""
    place.manager.config.excludes = ["models_cache"]
    place.sh('echo one > "$V/a.txt"')
    backup = place.manager.create_backup()
    place.sh('mkdir -p "$V/proj/models_cache" && echo weights > "$V/proj/models_cache/w.bin" '
             '&& echo mine > "$V/proj/x.txt"')
    before = place.snapshot()
    plan = place.manager.plan_restore(backup["id"], "replace")
    assert [i["path"] for i in plan["removed"]] == ["proj/x.txt"]
    place.manager.restore_backup(backup["id"], "replace")
    after = place.snapshot()
    assert after["proj/models_cache/w.bin"] == before["proj/models_cache/w.bin"]
    assert "proj/x.txt" not in after
    place.manager.undo_last_restore()
    assert place.snapshot() == before


# --- class: the store inside the source by another path ---------------------------------------


def _store_survives_replace_and_undo(place, store_files, store_rel):
    """Back up, change, restore with replace, undo: the store never appears in a backup, keeps
    every backup (the safety one too), and undo brings the folder back exactly."""
    def outside_store(snapshot):
        return {p: v for p, v in snapshot.items()
                if p != store_rel and not p.startswith(store_rel + "/") and p != "."}

    place.sh('echo one > "$V/a.txt" && mkdir -p "$V/sub" && echo two > "$V/sub/b.txt"')
    backup = place.manager.create_backup()
    assert backed_up_paths(place.manager, backup["id"]) == {ROOT, "a.txt", "sub", "sub/b.txt"}
    place.sh('echo changed > "$V/a.txt" && echo new > "$V/new.txt"')
    before = outside_store(place.snapshot())

    result = place.manager.restore_backup(backup["id"], "replace")
    ids = {m["id"] for m in place.manager.list_backups()}
    assert ids == {backup["id"], result["safety_backup_id"]}
    assert all(os.path.exists(f) for f in store_files())
    assert "new.txt" not in place.snapshot()
    place.manager.undo_last_restore()
    assert outside_store(place.snapshot()) == before
    assert all(os.path.exists(f) for f in store_files())


def _store_files(store):
    def files():
        found = [os.path.join(d, n) for d, _, names in os.walk(store) for n in names]
        assert len([f for f in found if f.endswith(".json") and "/meta/" in f]) >= 1
        return found
    return files


@pytest.mark.parametrize("spelling", ["store-through-link", "source-through-link"])
def test_store_inside_the_source_by_another_path_local(tmp_path, spelling):
    folder, link = tmp_path / "nb", tmp_path / "link"
    folder.mkdir()
    link.symlink_to(folder)
    source, store = (folder, link / "backups") if spelling == "store-through-link" else (link, folder / "backups")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(store), docker_url="none"))

    def sh(script):
        subprocess.run(["sh", "-ec", script], env={**os.environ, "V": str(folder)}, check=True)

    place = Place("local", manager, sh, lambda: folder_snapshot(folder))
    files = _store_files(folder / "backups")
    _store_survives_replace_and_undo(place, files, "backups")


def test_a_restore_never_writes_into_the_store_inside_the_source(tmp_path):
    """An archive (from elsewhere, uploaded) may hold the path where this store lies."""
    folder = tmp_path / "nb"
    (folder / "backups").mkdir(parents=True)
    (folder / "backups" / "note.txt").write_text("from the archive")
    (folder / "a.txt").write_text("one")
    elsewhere = BackupManager(AILabBackup(source_dir=str(folder), store=str(tmp_path / "other"), docker_url="none"))
    archive = elsewhere.create_backup()["archive"]
    (folder / "backups" / "note.txt").write_text("the store's own")
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(folder / "backups"), docker_url="none"))
    uploaded = manager.add_archive_file(str(tmp_path / "other" / "data" / archive))
    assert "backups/note.txt" in backed_up_paths(manager, uploaded["id"])
    manager.restore_backup(uploaded["id"], "replace")
    assert (folder / "backups" / "note.txt").read_text() == "the store's own"
    assert {m["kind"] for m in manager.list_backups()} == {"uploaded", "safety"}


def test_store_is_the_source_by_another_path_is_refused(tmp_path):
    folder, link = tmp_path / "nb", tmp_path / "link"
    folder.mkdir()
    link.symlink_to(folder)
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(link), docker_url="none"))
    with pytest.raises(BackupError, match="is the folder it backs up"):
        manager.create_backup()
    assert os.listdir(folder) == []


@pytest.fixture
def bind_mount(tmp_path):
    """``nb/mnt`` a bind mount of ``outside`` (root only), unmounted afterwards."""
    folder, outside = tmp_path / "nb", tmp_path / "outside"
    (folder / "mnt").mkdir(parents=True)
    outside.mkdir()
    done = subprocess.run(["mount", "--bind", str(outside), str(folder / "mnt")], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.decode().strip()}")
    yield folder, outside
    subprocess.run(["umount", "-l", str(folder / "mnt")], check=True)


def test_store_reached_through_a_bind_mount_inside_the_source_local(bind_mount):
    folder, outside = bind_mount
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(outside / "store"), docker_url="none"))

    def sh(script):
        subprocess.run(["sh", "-ec", script], env={**os.environ, "V": str(folder)}, check=True)

    # the folder holding the store (mnt) is not in the first backup: replace removes it, but
    # never the store inside it
    subprocess.run(["umount", str(folder / "mnt")], check=True)
    os.rmdir(folder / "mnt")
    place = Place("local", manager, sh, lambda: folder_snapshot(folder, skip=("mnt/store",)))
    sh('echo one > "$V/a.txt"')
    backup = manager.create_backup()
    (folder / "mnt").mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(folder / "mnt")], check=True)
    sh('echo mine > "$V/mnt/other.txt"')
    assert backed_up_paths(manager, manager.create_backup(label="with mnt")["id"]) == {
        ROOT, "a.txt", "mnt", "mnt/other.txt"}
    before = place.snapshot()
    manager.restore_backup(backup["id"], "replace")
    assert len(manager.list_backups()) == 3  # two and the safety backup, all still there
    assert not (outside / "other.txt").exists()
    place.manager.undo_last_restore()
    assert place.snapshot() == before


@pytest.mark.parametrize("spelling", ["volume-folder", "through-link"])
def test_folder_store_in_the_volume_own_folder_docker(docker_client, make_volume, tmp_path, spelling):
    """On the Docker host, a folder store in the volume's own folder (/var/lib/docker/volumes/
    X/_data), named directly or through a symlink."""
    volume = make_volume()
    mountpoint = docker_client.api.inspect_volume(volume)["Mountpoint"]
    if not os.path.isdir(mountpoint):
        pytest.skip("the volume's folder is not visible here (Docker runs elsewhere)")
    (tmp_path / "link").symlink_to(mountpoint)
    store = os.path.join(mountpoint if spelling == "volume-folder" else tmp_path / "link", "backups")
    place = docker_place(docker_client, volume, "unused")
    place.manager = BackupManager(AILabBackup(volume=volume, store=str(store)))
    _store_survives_replace_and_undo(place, _store_files(os.path.join(mountpoint, "backups")), "backups")


def test_folder_store_in_the_host_folder_of_a_bind_mount_source_docker(docker_client, tmp_path):
    host = tmp_path / "host-notebooks"
    host.mkdir()
    manager = BackupManager(AILabBackup(store=str(host / "backups")))
    docker = manager.docker
    manager._find_source = lambda: DockerMountSource(docker, "bind", str(host), found_by="test")

    def sh(script):
        run_in_bind(docker_client, host, "set -e; V=/v; " + script)

    place = Place("docker", manager, sh, lambda: folder_snapshot(host))
    _store_survives_replace_and_undo(place, _store_files(host / "backups"), "backups")


def run_in_bind(client, host, script):
    client.containers.run(HELPER_IMAGE, ["sh", "-c", script], volumes={str(host): {"bind": "/v", "mode": "rw"}},
                          remove=True, network_disabled=True)


def test_store_in_another_mount_of_the_server_container_is_found_by_host_paths(tmp_path):
    """In AI-Lab's container: notebooks bind-mounted from /srv/nb, the store a second mount of
    /srv/nb/backups at /backups. The store is found inside by the mounts' host paths."""
    helper = DockerHelper("", HELPER_IMAGE)
    helper.own_container = lambda: {"Mounts": [
        {"Type": "bind", "Source": "/srv/nb", "Destination": str(tmp_path / "notebooks")},
        {"Type": "bind", "Source": "/srv/nb/backups", "Destination": str(tmp_path / "backups")}]}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "backups").mkdir()
    source = DockerMountSource(helper, "bind", "/srv/nb")
    source.local_path = str(tmp_path / "notebooks")
    source.exclude_store(str(tmp_path / "backups" / "store"))
    assert source.skip_paths == ["backups/store"]
    volume = DockerMountSource(helper, "volume", "nbvol", subpath="work")
    volume.local_path = str(tmp_path / "notebooks")
    helper.own_container = lambda: {"Mounts": [
        {"Type": "volume", "Name": "nbvol", "Destination": str(tmp_path / "backups")}]}
    volume.exclude_store(str(tmp_path / "backups" / "work" / "keep"))
    assert volume.skip_paths == ["keep"]
    with pytest.raises(BackupError, match="is the volume it backs up"):
        volume.exclude_store(str(tmp_path / "backups" / "work"))


# --- class: a selective restore that silently becomes a whole-folder one ----------------------

WHOLE_FOLDER_SPELLINGS = ["", " ", ".", "/", "//", "./", "/.", "./.", "a/..", "a/../", "a/b/../..", " ./ "]


def _refused(call_):
    with pytest.raises(BackupError) as refused:
        call_()
    message = str(refused.value)
    assert "whole notebooks folder" in message or "'..'" in message or "No path was chosen" in message, message


def test_whole_folder_spellings_of_a_path_are_refused(place):
    place.sh('mkdir "$V/a" && echo one > "$V/a/x" && echo two > "$V/keep.txt"')
    backup = place.manager.create_backup()
    place.sh('echo three > "$V/added.txt"')
    before, ids = place.snapshot(), {m["id"] for m in place.manager.list_backups()}
    spellings = WHOLE_FOLDER_SPELLINGS if place.kind == "local" else [".", "//", "a/.."]
    for spelling in spellings:
        for paths in ([spelling], ["a", spelling], []):
            _refused(lambda: place.manager.restore_backup(backup["id"], "replace", paths=paths))
            _refused(lambda: place.manager.plan_restore(backup["id"], "replace", paths=paths))
            _refused(lambda: place.manager.start_restore(backup["id"], "replace", paths=paths))
    assert place.snapshot() == before  # nothing removed, nothing written
    assert {m["id"] for m in place.manager.list_backups()} == ids  # not even a safety backup
    # a real path still restores just that path
    place.manager.restore_backup(backup["id"], "replace", paths=["a/"])
    assert "added.txt" in place.snapshot()


@pytest.mark.parametrize("spelling", [".", "", "//", "a/.."])
def test_whole_folder_spellings_are_refused_by_the_cli(tmp_path, capsys, spelling):
    place = local_place(tmp_path)
    place.sh('mkdir "$V/a" && echo one > "$V/a/x"')
    backup = place.manager.create_backup()
    place.sh('echo mine > "$V/mine.txt"')
    before = place.snapshot()
    common = ["--source-dir", str(tmp_path / "nb"), "--store", str(tmp_path / "store"), "--docker-url", "none"]
    for extra in ([], ["--dry-run"]):
        assert main([*common, "restore", backup["id"], "--mode", "replace", "--path", spelling, *extra]) == 1
        err = capsys.readouterr().err
        assert "whole notebooks folder" in err or "'..'" in err, err
        assert len(err.strip().splitlines()) == 1
    assert place.snapshot() == before


@pytest.mark.parametrize("spelling", [".", "", "//", "/.", "a/.."])
async def test_whole_folder_spellings_are_a_400_through_rest(jp_fetch, jp_root_dir, spelling):
    (jp_root_dir / "a").mkdir()
    (jp_root_dir / "a" / "x").write_text("one")
    _, body, _ = await call(jp_fetch, method="POST", body={}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    (jp_root_dir / "mine.txt").write_text("mine")
    before = folder_snapshot(jp_root_dir)
    for dry_run in (False, True):
        _, error, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", expect=400,
                                 body={"mode": "replace", "paths": [spelling], "dry_run": dry_run})
        assert "whole notebooks folder" in error["message"] or "'..'" in error["message"], error
        _, error, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", expect=400,
                                 body={"mode": "replace", "paths": [], "dry_run": dry_run})
        assert "No path was chosen" in error["message"], error
    _, jobs, _ = await call(jp_fetch, "jobs")
    assert [j["kind"] for j in jobs["jobs"]] == ["backup"]
    assert folder_snapshot(jp_root_dir) == before
