"""The worker: backup, restore, verify and the preview run inside a helper container next to the
data, on the real engine, with a helper image that has Python (and neither our package nor
zstandard: the server brings them). What a user checks: the tree comes back identical, a bad
archive changes nothing, status says which path is used, nothing is spooled by the server."""

import hashlib
import os
import sys
import time

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import InvalidArchive
from test_roundtrip import fill_volume, make_tree
from treeutil import HELPER_IMAGE, run_in_volume, volume_snapshot

SCS = "ai_lab_secure_configuration_storage.sqlite"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree") / "notebooks"), big_mb=8)


@pytest.fixture(params=["volume", "folder"])
def store_kind(request):
    return request.param


@pytest.fixture
def counted(monkeypatch):
    """How many containers are created (every helper, worker or not)."""
    import docker.models.containers as containers

    made = []
    create = containers.ContainerCollection.create

    def counting(self, *args, **kwargs):
        made.append(kwargs.get("labels", {}))
        return create(self, *args, **kwargs)

    monkeypatch.setattr(containers.ContainerCollection, "create", counting)
    return made


def manager_for(volume, store, image):
    return BackupManager(AILabBackup(volume=volume, store=store, helper_image=image))


def test_worker_round_trips_are_identical_and_nothing_passes_through_the_server(
        docker_client, make_volume, tree, tmp_path, python_image, store_kind, counted, monkeypatch, request):
    volume = make_volume()
    store = make_volume("ailabstore") if store_kind == "volume" else str(tmp_path / "store")
    fill_volume(docker_client, volume, tree)
    original = volume_snapshot(docker_client, volume)
    manager = manager_for(volume, store, python_image)
    manager.docker.keep_helpers = True  # as in the server: listing reuses one kept helper, jobs one kept worker
    request.addfinalizer(manager.docker.close)
    assert manager.worker_status()["in_use"] is True
    manager.list_backups()
    # the server reads no archive byte and no file of the volume: only the store's metadata files
    # (the listing) may come through Docker's archive stream
    import ailab_backup_ext.docker_helper as docker_helper

    stream = docker_helper.DockerHelper.archive_stream

    def metadata_only(self, container, path):
        assert path.endswith("/meta"), f"{path} was streamed through the server"
        return stream(self, container, path)

    monkeypatch.setattr(docker_helper.DockerHelper, "archive_stream", metadata_only)
    monkeypatch.setattr(docker_helper.DockerHelper, "put_archive", None)  # nor was anything sent
    from ailab_backup_ext.stores import folder as folder_store, volume as volume_store

    def no_spool(*_args):
        raise AssertionError("the server spooled an archive")

    for store_module in (folder_store, volume_store):
        monkeypatch.setattr(store_module, "spool_file", no_spool)  # nothing in the server's temp folder
    counted.clear()
    backup = manager.create_backup(label="worker")
    assert len(counted) == 1  # one worker container for the whole backup, nothing else; kept for the next
    assert manager.verify_backup(backup["id"])["ok"]
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]

    run_in_volume(docker_client, volume, f"cd /v && echo changed > intro.ipynb && echo new > extra.txt && "
                                         f"rm -r empty && echo other > {SCS}")
    counted.clear()
    result = manager.restore_backup(backup["id"], "replace")
    assert len(counted) == 0  # check, safety backup and restore in the kept worker: no container made
    assert volume_snapshot(docker_client, volume) == original
    safety = result["safety_backup_id"]
    assert safety and safety in [b["id"] for b in manager.list_backups()]

    # undo brings back exactly the state before the restore
    manager.undo_last_restore()
    after_undo = volume_snapshot(docker_client, volume)
    assert after_undo["extra.txt"][-1] == hashlib.sha256(b"new\n").hexdigest()
    assert "empty" not in after_undo
    if store_kind == "folder":  # the server (not root in AI-Lab) can read what the worker made
        st = os.stat(os.path.join(store, "data", backup["archive"]))
        assert (st.st_uid, st.st_gid) == (os.stat(store).st_uid, os.stat(store).st_gid)


def test_worker_merge_and_selective_restore(docker_client, make_volume, tree, python_image):
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, tree)
    manager = manager_for(volume, store, python_image)
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, "cd /v && echo changed > intro.ipynb && echo mine > private/secret.txt "
                                         "&& echo keep > extra.txt")
    before = volume_snapshot(docker_client, volume)
    manager.restore_backup(backup["id"], "merge", paths=["private"])
    after = volume_snapshot(docker_client, volume)
    assert after["private/secret.txt"][-1] == hashlib.sha256(b"only for jupyter").hexdigest()
    assert after["private/secret.txt"][1:4] == (0o600, 1000, 1000)
    unchanged = {k: v for k, v in before.items() if not k.startswith("private")}
    assert {k: v for k, v in after.items() if not k.startswith("private")} == unchanged
    manager.restore_backup(backup["id"], "merge")
    after = volume_snapshot(docker_client, volume)
    assert after["intro.ipynb"][-1] == hashlib.sha256(b'{"cells": [], "nbformat": 4}').hexdigest()
    assert "extra.txt" in after  # merge keeps other files


def test_worker_refuses_a_damaged_archive_and_changes_nothing(docker_client, make_volume, python_image):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && dd if=/dev/urandom of=a.bin bs=1k count=300 2>/dev/null "
                                         "&& echo one > b.txt")
    manager = manager_for(volume, store, python_image)
    backup = manager.create_backup()
    # one byte of the stored archive flipped, in the middle
    run_in_volume(docker_client, store, f"f=/v/data/{backup['archive']}; s=$(wc -c < $f); "
                                        "printf 'X' | dd of=$f bs=1 seek=$((s/2)) conv=notrunc 2>/dev/null")
    run_in_volume(docker_client, volume, "cd /v && echo two > b.txt")
    before = volume_snapshot(docker_client, volume)
    with pytest.raises(InvalidArchive):
        manager.verify_backup(backup["id"])
    with pytest.raises(InvalidArchive):
        manager.restore_backup(backup["id"], "replace")
    assert volume_snapshot(docker_client, volume) == before
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]  # no safety backup either


def test_status_says_which_path_is_in_use_and_why(docker_client, make_volume, python_image, tmp_path):
    volume, store = make_volume(), make_volume("ailabstore")
    streaming = manager_for(volume, store, HELPER_IMAGE).status()["worker"]
    assert streaming["in_use"] is False
    assert "Python" in streaming["why"] and "helper_image" in streaming["why"]
    assert manager_for(volume, store, python_image).status()["worker"]["in_use"] is True
    local = BackupManager(AILabBackup(docker_url="none", source_dir=str(tmp_path),
                                      store=str(tmp_path / "store"))).status()["worker"]
    assert local["in_use"] is False


def test_worker_with_an_image_built_like_ailabs(docker_client, make_volume, ailab_like_image):
    """Its own entrypoint (a server), user 1000, no package of ours: the server's own interpreter
    path is used, as root, with our code brought in."""
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, f"cd /v && echo one > a.txt && echo scs > {SCS} && chown 1000:100 a.txt")
    manager = manager_for(volume, store, ailab_like_image)
    assert manager.worker.probe()["python"] == sys.executable
    original = volume_snapshot(docker_client, volume)
    backup = manager.create_backup()
    run_in_volume(docker_client, volume, f"cd /v && echo two > a.txt && echo extra > b.txt && echo new > {SCS}")
    manager.restore_backup(backup["id"], "replace")
    assert volume_snapshot(docker_client, volume) == original


def test_listing_a_volume_store_after_the_first_is_fast_and_sees_other_writers(
        docker_client, make_volume, python_image, counted):
    volume, store = make_volume(), make_volume("ailabstore")
    run_in_volume(docker_client, volume, "cd /v && echo one > a.txt")
    server = manager_for(volume, store, python_image)
    server.docker.keep_helpers = True  # as the server extension sets it
    try:
        first = server.create_backup()
        server.list_backups()
        counted.clear()
        started = time.monotonic()
        for _ in range(5):
            assert [b["id"] for b in server.list_backups()] == [first["id"]]
        assert (time.monotonic() - started) / 5 < 0.1
        assert counted == []  # no container made for listing
        # another process (the command line, streaming) writes the store: seen at once
        other = manager_for(volume, store, HELPER_IMAGE).create_backup()
        assert {b["id"] for b in server.list_backups()} == {first["id"], other["id"]}
        third = manager_for(volume, store, HELPER_IMAGE).create_backup(label="a second one streamed")
        assert {b["id"] for b in server.list_backups()} == {first["id"], other["id"], third["id"]}
        manager_for(volume, store, HELPER_IMAGE).delete_backup(first["id"])
        assert {b["id"] for b in server.list_backups()} == {other["id"], third["id"]}
    finally:
        server.docker.close()


def test_streaming_and_worker_backups_restore_each_other(docker_client, make_volume, tree, tmp_path, python_image):
    """The same format on both paths: a backup of one is restored by the other, identically."""
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, tree)
    original = volume_snapshot(docker_client, volume)
    by_stream = manager_for(volume, store, HELPER_IMAGE).create_backup()
    by_worker = manager_for(volume, store, python_image).create_backup()
    for backup, image in ((by_stream, python_image), (by_worker, HELPER_IMAGE)):
        run_in_volume(docker_client, volume, "cd /v && rm -rf ./* ./.[!.]* && echo x > stray.txt")
        manager_for(volume, store, image).restore_backup(backup["id"], "replace")
        assert volume_snapshot(docker_client, volume) == original


def test_a_worker_commit_never_overwrites_a_backup_committed_meanwhile(tmp_path):
    """Two workers that chose the same id (same source, same second): the second gets the next
    free id, and the first one's archive and metadata stay as they were."""
    from ailab_backup_ext.worker.main import MountedStore

    first, second = (MountedStore(str(tmp_path), job, {"type": "volume", "name": "s"}) for job in ("a1", "b2"))
    metas = []
    for store, content in ((first, b"first"), (second, b"second")):
        meta = {"id": "nb-20261201T000000Z", "archive": "nb-20261201T000000Z.tar.zst"}
        with store.spool(meta["archive"]) as spool:
            with open(spool, "wb") as f:
                f.write(content)
            store.commit(spool, meta["archive"], meta)
        metas.append(meta)
    assert [m["id"] for m in metas] == ["nb-20261201T000000Z", "nb-20261201T000000Z-2"]
    assert (tmp_path / "data" / "nb-20261201T000000Z.tar.zst").read_bytes() == b"first"
    assert (tmp_path / "data" / "nb-20261201T000000Z-2.tar.zst").read_bytes() == b"second"
    assert sorted(m["id"] for m in first.read_all_meta()) == [m["id"] for m in metas]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.endswith(".ailab-partial")]
