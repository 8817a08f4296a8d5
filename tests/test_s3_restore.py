"""A restore from S3 into a folder of this process reads the download once (issue 16): the ranged
download (decrypted, when the backup is encrypted) goes straight into the staged restore, whose
hidden staging folder in the target gets every checked file; nothing is spooled in temp. On the
real S3 server (rclone serve s3): the round trips are identical, and every fault found while
staging (a wrong key, the server killed, a damaged, cut or rewritten object) is our clear error
and changes nothing: the folder (with its own time) is as it was, no staging folder is left, and
nothing is left in temp. The same one read for a store in a Docker volume."""

import os
import shutil
import tempfile
import threading

import pyrage
import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.progress import Progress
from ailab_backup_ext.staged_restore import STAGING_PREFIX
from ailab_backup_ext.stores import s3 as s3_module
from test_s3 import own_s3  # noqa: F401 - fixture: an S3 server of the test alone
from test_roundtrip import make_tree
from treeutil import folder_snapshot

MB = 1024 * 1024


@pytest.fixture
def temp(tmp_path, monkeypatch):
    """This process's temp folder, empty: a spool of the download would be made here."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def manager_for(tmp_path, server, bucket, encrypted):
    manager = BackupManager(AILabBackup(
        docker_url="none", source_dir=str(tmp_path / "nb"), store=f"s3://{bucket}/backups",
        s3_endpoint_url=server.url, s3_region="us-east-1", s3_timeout=3, safety_backup=False,
        encryption="on" if encrypted else "off", age_identity_file=str(tmp_path / "keys" / "age.key")))
    if encrypted:
        manager.generate_key()
    return manager


class At(Progress):
    """Progress that, once the restore's check has passed ``at`` bytes, notes what the target and
    temp hold then and calls ``action``."""

    def __init__(self, at, target, temp, action=None):
        super().__init__()
        self.at, self.target, self.temp, self.action = at, target, temp, action
        self.seen = None

    def add_bytes(self, n):
        super().add_bytes(n)
        if self.seen is None and self.phase == "checking" and self.done_bytes >= self.at:
            self.seen = {"staging": [n for n in os.listdir(self.target) if n.startswith(STAGING_PREFIX)],
                         "temp": os.listdir(self.temp), "decrypting": decrypting_threads()}
            if self.action:
                self.action()


def decrypting_threads():
    """This process's running decryptors (threads: decrypting needs no child process)."""
    return [t.name for t in threading.enumerate() if t.name == "ailab-backup-decrypt"]


def staging_left(folder):
    return [n for n in os.listdir(folder) if n.startswith(STAGING_PREFIX)]


def unchanged(nb, before, temp):
    assert folder_snapshot(nb) == before  # the folder's own time too
    assert staging_left(nb) == []
    assert os.listdir(temp) == []
    assert decrypting_threads() == []  # no decryptor left running


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_restore_from_s3_reads_the_download_once_into_the_staging_folder(tmp_path, s3_server, s3_bucket, temp,
                                                                         encrypted):
    nb = make_tree(str(tmp_path / "nb"), big_mb=24)
    before = folder_snapshot(nb)
    manager = manager_for(tmp_path, s3_server, s3_bucket, encrypted)
    meta = manager.create_backup()
    assert any(k.endswith(".age") for k in s3_server.objects(s3_bucket)) == encrypted
    shutil.rmtree(nb)
    os.makedirs(nb)
    progress = At(8 * MB, nb, temp)
    result = manager.restore_backup(meta["id"], "replace", progress=progress)
    assert result["file_count"] == meta["file_count"]
    # midway through the download its checked files were in the staging folder, and nothing in temp
    assert len(progress.seen["staging"]) == 1 and progress.seen["temp"] == []
    assert len(progress.seen["decrypting"]) == encrypted  # decrypted as it was read, one thread
    unchanged(nb, before, temp)


def test_a_wrong_key_found_while_staging_changes_nothing(tmp_path, s3_server, s3_bucket, temp):
    nb = make_tree(str(tmp_path / "nb"), big_mb=4)
    manager = manager_for(tmp_path, s3_server, s3_bucket, encrypted=True)
    meta = manager.create_backup()
    with open(os.path.join(nb, "intro.ipynb"), "w") as f:
        f.write('{"cells": ["changed since"]}')
    before = folder_snapshot(nb)
    key_file = tmp_path / "keys" / "age.key"
    right_key = key_file.read_text()
    key_file.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    with pytest.raises(BackupError, match="does not open .*nothing was changed"):
        manager.restore_backup(meta["id"], "replace")
    unchanged(nb, before, temp)
    key_file.write_text(right_key)  # and with the right key it restores
    manager.restore_backup(meta["id"], "replace")
    assert (tmp_path / "nb" / "intro.ipynb").read_text() == '{"cells": [], "nbformat": 4}'
    assert staging_left(nb) == [] and decrypting_threads() == []


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_s3_killed_while_staging_changes_nothing(tmp_path, own_s3, temp, encrypted):
    server, bucket = own_s3
    nb = make_tree(str(tmp_path / "nb"), big_mb=60)
    manager = manager_for(tmp_path, server, bucket, encrypted)
    meta = manager.create_backup()
    os.unlink(os.path.join(nb, "intro.ipynb"))
    before = folder_snapshot(nb)
    progress = At(12 * MB, nb, temp, server.kill)
    with pytest.raises(BackupError) as failure:
        manager.restore_backup(meta["id"], "replace", progress=progress)
    assert progress.seen["staging"], "the server was killed while the restore was staging"
    message = str(failure.value)
    assert ("cannot be reached" in message or "did not answer" in message) and "Nothing" in message
    unchanged(nb, before, temp)


def damage(data, how):
    if how == "cut":
        return data[: len(data) * 2 // 3]
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1:]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("how", ["flipped", "cut"])
def test_a_damaged_or_cut_object_changes_nothing(tmp_path, s3_server, s3_bucket, temp, encrypted, how):
    nb = make_tree(str(tmp_path / "nb"), big_mb=20)
    manager = manager_for(tmp_path, s3_server, s3_bucket, encrypted)
    meta = manager.create_backup()
    with open(os.path.join(nb, "data", "big.bin"), "r+b") as f:
        f.write(b"changed since the backup")
    before = folder_snapshot(nb)
    key = next(k for k in s3_server.objects(s3_bucket) if "/data/" in k)
    client = s3_server.client()
    data = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=damage(data, how))  # as a damaged store would hold it
    progress = At(4 * MB, nb, temp)
    with pytest.raises(BackupError) as failure:
        manager.restore_backup(meta["id"], "replace", progress=progress)
    assert progress.seen["staging"], "the damage was found while staging"
    message = str(failure.value)
    assert "damaged" in message or "truncated" in message or "does not match" in message, message
    unchanged(nb, before, temp)


def test_an_object_rewritten_while_staging_changes_nothing(tmp_path, s3_server, s3_bucket, temp, monkeypatch):
    monkeypatch.setattr(s3_module, "RANGE_BYTES", MB)  # the later ranges are asked for after the rewrite
    nb = make_tree(str(tmp_path / "nb"), big_mb=30)
    manager = manager_for(tmp_path, s3_server, s3_bucket, encrypted=False)
    meta = manager.create_backup()
    os.unlink(os.path.join(nb, "intro.ipynb"))
    before = folder_snapshot(nb)
    key = next(k for k in s3_server.objects(s3_bucket) if "/data/" in k)
    client = s3_server.client()
    data = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

    def rewrite():  # the same size, other bytes: its ETag changes
        client.put_object(Bucket=s3_bucket, Key=key, Body=data[: len(data) // 2] + os.urandom(len(data) - len(data) // 2))

    progress = At(2 * MB, nb, temp, rewrite)
    with pytest.raises(BackupError, match="changed .* rewritten meanwhile. Nothing was changed"):
        manager.restore_backup(meta["id"], "replace", progress=progress)
    assert progress.seen["staging"]
    unchanged(nb, before, temp)


class Watching(Progress):
    """Progress that notes what temp holds once ``at`` bytes were checked."""

    def __init__(self, at, temp):
        super().__init__()
        self.at, self.temp, self.seen = at, temp, None

    def add_bytes(self, n):
        super().add_bytes(n)
        if self.seen is None and self.done_bytes >= self.at:
            self.seen = {"temp": os.listdir(self.temp), "decrypting": decrypting_threads()}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_verifying_an_s3_backup_reads_it_once_without_a_spool(tmp_path, s3_server, s3_bucket, temp, encrypted):
    nb = make_tree(str(tmp_path / "nb"), big_mb=24)
    manager = manager_for(tmp_path, s3_server, s3_bucket, encrypted)
    meta = manager.create_backup()
    progress = Watching(8 * MB, temp)
    assert manager.verify_backup(meta["id"], progress=progress)["ok"]
    assert progress.seen == {"temp": [], "decrypting": ["ailab-backup-decrypt"] if encrypted else []}
    assert os.listdir(temp) == [] and decrypting_threads() == []
    key = next(k for k in s3_server.objects(s3_bucket) if "/data/" in k)  # and damage is still found
    client = s3_server.client()
    data = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=damage(data, "flipped"))
    with pytest.raises(BackupError, match="damaged|does not match"):
        manager.verify_backup(meta["id"])
    assert os.listdir(temp) == [] and decrypting_threads() == []
    assert os.path.isdir(nb)


# the same one read for a store in a Docker volume (reached through a helper container) --------

def test_a_restore_from_a_volume_store_into_a_folder_reads_it_once_and_leaves_no_helper(
        tmp_path, temp, docker_client, make_volume):
    from treeutil import our_helpers

    nb = make_tree(str(tmp_path / "nb"), big_mb=12)
    before = folder_snapshot(nb)
    manager = BackupManager(AILabBackup(source_dir=nb, store=make_volume("ailabtest-store"), safety_backup=False))
    assert manager.store.kind == "volume"
    meta = manager.create_backup()
    shutil.rmtree(nb)
    os.makedirs(nb)
    progress = At(4 * MB, nb, temp)
    manager.restore_backup(meta["id"], "replace", progress=progress)
    assert len(progress.seen["staging"]) == 1 and progress.seen["temp"] == []
    unchanged(nb, before, temp)
    assert our_helpers(docker_client) == []
