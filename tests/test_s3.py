"""The S3 store and the second copy, on a real S3-compatible server (rclone serve s3): every
operation, encryption, and the faults (server killed, wrong keys, missing bucket, timeout)."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pyrage
import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.progress import Progress
from s3util import ACCESS_KEY, SECRET_KEY, S3Server, s3_env
from test_roundtrip import make_tree
from treeutil import folder_snapshot


def s3_settings(tmp_path, server, bucket, prefix="backups", **settings):
    return {**dict(docker_url="none", source_dir=str(tmp_path / "nb"), store=f"s3://{bucket}/{prefix}",
                   s3_endpoint_url=server.url, s3_region="us-east-1", s3_timeout=3,
                   age_identity_file=str(tmp_path / "keys" / "age.key")), **settings}


def s3_manager(tmp_path, server, bucket, **settings):
    return BackupManager(AILabBackup(**s3_settings(tmp_path, server, bucket, **settings)))


def mirrored_manager(tmp_path, server, bucket, **settings):
    """The local folder store here, a second copy in S3."""
    settings = s3_settings(tmp_path, server, bucket, **settings)
    settings["copy_to"], settings["store"] = settings["store"], str(tmp_path / "store")
    return BackupManager(AILabBackup(**settings))


def wipe(folder):
    shutil.rmtree(folder)
    os.makedirs(folder)


@pytest.fixture
def own_s3(tmp_path, monkeypatch):
    """An S3 server of this test alone, to kill or stop; a bucket on it; its keys set."""
    server = S3Server(tmp_path / "s3root")
    s3_env(monkeypatch, server)
    try:
        yield server, server.bucket()
    finally:
        server.stop()


def test_round_trip_through_s3_is_identical(tmp_path, s3_server, s3_bucket):
    nb = make_tree(str(tmp_path / "nb"), big_mb=20)
    before = folder_snapshot(nb)
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    meta = manager.create_backup("first")
    assert s3_server.objects(s3_bucket) == [f"backups/data/{meta['archive']}", f"backups/meta/{meta['id']}.json"]
    assert [m["id"] for m in manager.list_backups()] == [meta["id"]]
    assert manager.verify_backup(meta["id"])["ok"]
    wipe(nb)
    result = manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(nb) == before
    assert result["safety_backup_id"] in {m["id"] for m in manager.list_backups()}


def test_every_operation_works_on_s3(tmp_path, s3_server, s3_bucket):
    """list, show, preview, download, upload, import, delete, prune and the schedule's state."""
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text('{"cells": [1]}')
    manager = s3_manager(tmp_path, s3_server, s3_bucket, safety_backup=False)
    first = manager.create_backup("one")
    (nb / "a.ipynb").write_text('{"cells": [1, 2]}')
    (nb / "b.txt").write_text("new")
    plan = manager.plan_restore(first["id"], "replace")
    assert [i["path"] for i in plan["overwritten"]] == ["a.ipynb"] and [i["path"] for i in plan["removed"]] == ["b.txt"]
    assert (nb / "b.txt").exists()  # a preview changes nothing
    with manager.open_archive(first["id"]) as stream:  # the download
        archive = stream.read()
    assert archive[:4] == b"\x28\xb5\x2f\xfd" and len(archive) == first["size_bytes"]
    (tmp_path / "down.tar.zst").write_bytes(archive)
    uploaded = manager.add_archive_file(str(tmp_path / "down.tar.zst"))
    assert uploaded["kind"] == "uploaded" and manager.get_backup(uploaded["id"])["sha256"] == first["sha256"]
    export = tmp_path / "export"
    manager.export_dir(str(export))
    second = manager.create_backup("two")
    assert [m["id"] for m in manager.list_backups()][0] == second["id"]
    assert sorted(manager.prune(keep=2)) == [first["id"]]
    assert {m["id"] for m in manager.list_backups()} == {uploaded["id"], second["id"]}
    manager.delete_backup(uploaded["id"])
    assert [m["id"] for m in manager.list_backups()] == [second["id"]]
    assert s3_server.objects(s3_bucket) == [f"backups/data/{second['archive']}", f"backups/meta/{second['id']}.json"]
    manager.scheduler.set("every 6h")  # kept beside the store: in the bucket
    assert json.loads(open(os.path.join(s3_server.root, s3_bucket, "backups/schedule.json")).read())["spec"] == "every 6h"
    assert s3_manager(tmp_path, s3_server, s3_bucket).scheduler.describe()["spec"] == "every 6h"
    wipe(nb)
    manager.import_dir(str(export))
    assert (nb / "a.ipynb").read_text() == '{"cells": [1, 2]}'


def test_upload_of_a_broken_archive_to_s3_is_refused_and_nothing_kept(tmp_path, s3_server, s3_bucket):
    (tmp_path / "nb").mkdir()
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(5000))
    with pytest.raises(BackupError):
        manager.add_archive_file(str(bad))
    assert s3_server.objects(s3_bucket) == []


def test_users_prefix_is_filled_from_jupyterhub_user(tmp_path, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "x.ipynb").write_text("{}")
    manager = s3_manager(tmp_path, s3_server, s3_bucket, prefix="users/{username}")
    meta = manager.create_backup()
    assert manager.status()["store"]["name"] == f"s3://{s3_bucket}/users/alice"
    assert f"users/alice/meta/{meta['id']}.json" in s3_server.objects(s3_bucket)


# encryption -----------------------------------------------------------------------------------

def test_encrypted_round_trip_and_manual_restore_with_age(tmp_path, s3_server, s3_bucket):
    nb = make_tree(str(tmp_path / "nb"), big_mb=12)
    before = folder_snapshot(nb)
    manager = s3_manager(tmp_path, s3_server, s3_bucket, encryption="on")
    with pytest.raises(BackupError, match="no key"):
        manager.create_backup()
    assert s3_server.objects(s3_bucket) == []
    key = manager.generate_key()
    assert "without it" in key["message"] and key["private_key"].startswith("AGE-SECRET-KEY-1")
    assert oct(os.stat(key["key_file"]).st_mode & 0o777) == "0o600"
    with pytest.raises(BackupError, match="already exists"):
        manager.generate_key()
    meta = manager.create_backup("secret")
    stored = os.path.join(s3_server.root, s3_bucket, f"backups/data/{meta['archive']}.age")
    with open(stored, "rb") as f:
        assert f.read(21) == b"age-encryption.org/v1"
    listed = json.loads(open(os.path.join(s3_server.root, s3_bucket, f"backups/meta/{meta['id']}.json")).read())
    assert listed["encrypted"] is True and listed["id"] == meta["id"] and listed["size_bytes"] == meta["size_bytes"]
    assert "private" not in json.dumps(listed)  # no path of the notebooks in what stays readable
    assert manager.verify_backup(meta["id"])["ok"]
    wipe(nb)
    manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(nb) == before
    # by hand, as the README says: age -d -i KEY FILE | tar --zstd -xp (scripts/test.sh installs
    # the reference age; where it is missing, pyrage stands in for it)
    out = tmp_path / "by-hand"
    out.mkdir()
    if shutil.which("age"):
        subprocess.run(["bash", "-o", "pipefail", "-c", 'age -d -i "$0" "$1" | tar --zstd -xp', key["key_file"],
                        stored], cwd=out, check=True)
    else:
        plain = pyrage.decrypt(open(stored, "rb").read(), [pyrage.x25519.Identity.from_str(key["private_key"])])
        subprocess.run(["tar", "--zstd", "-x", "-C", str(out)], input=plain, check=True)
    assert (out / "notebooks" / "intro.ipynb").read_bytes() == open(os.path.join(nb, "intro.ipynb"), "rb").read()


def test_wrong_or_missing_key_is_refused_and_nothing_changes(tmp_path, s3_server, s3_bucket):
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("old")
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    manager.generate_key()
    meta = manager.create_backup()
    (nb / "a.ipynb").write_text("current")
    before, objects = folder_snapshot(str(nb)), s3_server.objects(s3_bucket)
    key_file = tmp_path / "keys" / "age.key"
    key_file.unlink()
    with pytest.raises(BackupError, match="key to open it is missing"):
        manager.restore_backup(meta["id"])
    key_file.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    for attempt in (manager.restore_backup, manager.verify_backup, manager.plan_restore):
        with pytest.raises(BackupError, match="does not open"):
            attempt(meta["id"])
    assert folder_snapshot(str(nb)) == before and s3_server.objects(s3_bucket) == objects


# the second copy ------------------------------------------------------------------------------

def test_copy_to_s3_lives_in_both_and_restores_from_the_copy(tmp_path, s3_server, s3_bucket):
    nb = make_tree(str(tmp_path / "nb"), big_mb=5)
    before = folder_snapshot(nb)
    manager = mirrored_manager(tmp_path, s3_server, s3_bucket, safety_backup=False)
    manager.generate_key()
    meta = manager.create_backup()
    listed = manager.get_backup(meta["id"])
    assert listed["where"] == "both" and "copy" not in listed
    assert f"backups/data/{meta['archive']}.age" in s3_server.objects(s3_bucket)
    manager.delete_backup(meta["id"], "here")
    assert manager.get_backup(meta["id"])["where"] == "off the machine"
    assert not os.listdir(tmp_path / "store" / "data")
    wipe(nb)
    manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(nb) == before


def test_older_backups_are_copied_with_one_action_and_retention_applies_to_each_store(tmp_path, s3_server, s3_bucket):
    nb = tmp_path / "nb"
    nb.mkdir()
    local_only = BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=str(tmp_path / "store")))
    old = []
    for n in range(3):
        (nb / "f.txt").write_text(str(n))
        old.append(local_only.create_backup()["id"])
    manager = mirrored_manager(tmp_path, s3_server, s3_bucket)
    assert {m["where"] for m in manager.list_backups()} == {"here"}
    result = manager.copy_backups()
    assert sorted(result["copied"]) == sorted(old)
    assert {m["where"] for m in manager.list_backups()} == {"both"}
    manager.delete_backup(old[0], "off")
    assert manager.get_backup(old[0])["where"] == "here"
    assert manager.copy_backups([old[0]])["copied"] == [old[0]]
    deleted = manager.prune(keep=1)
    assert set(deleted) == set(old[:2])
    assert [m["id"] for m in manager.list_backups()] == [old[2]]
    assert sorted(s3_server.objects(s3_bucket)) == [f"backups/data/{old[2]}.tar.zst", f"backups/meta/{old[2]}.json"]


def test_second_store_down_the_backup_succeeds_and_the_copy_is_retried(tmp_path, own_s3):
    server, bucket = own_s3
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("{}")
    manager = mirrored_manager(tmp_path, server, bucket)
    server.kill()
    meta = manager.create_backup()
    listed = manager.get_backup(meta["id"])
    assert listed["where"] == "here" and listed["copy"] == "pending"
    assert manager.status()["store"]["copies_pending"] == [meta["id"]]
    assert manager.retry_copies() is None  # failed just now: the next tick waits a pause
    server.start()
    manager.store.retry_pause = 0  # the pause is over
    assert manager.retry_copies()["copied"] == [meta["id"]]
    listed = manager.get_backup(meta["id"])
    assert listed["where"] == "both" and "copy" not in listed
    assert manager.status()["store"]["copies_pending"] == []


def test_a_scheduled_tick_retries_a_pending_copy(tmp_path, own_s3):
    server, bucket = own_s3
    (tmp_path / "nb").mkdir()
    manager = mirrored_manager(tmp_path, server, bucket)
    server.kill()
    meta = manager.create_backup()
    server.start()
    manager.store.retry_pause = 0
    manager.scheduler.tick()  # the schedule is off: the tick only retries the copy
    assert manager.get_backup(meta["id"])["where"] == "both"


# faults ---------------------------------------------------------------------------------------

class KillAt(Progress):
    """Progress that calls ``action`` once ``phase`` has passed ``at`` bytes."""

    def __init__(self, phase, at, action):
        super().__init__()
        self.when, self.at, self.action, self.done = phase, at, action, False

    def add_bytes(self, n):
        super().add_bytes(n)
        if not self.done and self.phase == self.when and self.done_bytes >= self.at:
            self.done = True
            self.action()


@pytest.mark.parametrize("encryption", ["off", "on"])
def test_server_killed_during_upload_nothing_listed(tmp_path, own_s3, encryption):
    server, bucket = own_s3
    make_tree(str(tmp_path / "nb"), big_mb=60)
    manager = s3_manager(tmp_path, server, bucket, encryption=encryption)
    if encryption == "on":
        manager.generate_key()
    with pytest.raises(BackupError) as failure:
        manager.create_backup(progress=KillAt("backing up", 30 * 1024 * 1024, server.kill))
    assert "cannot be reached" in str(failure.value) or "did not answer" in str(failure.value)
    server.start()
    assert manager.list_backups() == []
    assert not [k for k in server.objects(bucket) if "/meta/" in k]


def test_stale_multipart_uploads_of_ours_are_aborted(tmp_path, s3_server, s3_bucket, monkeypatch):
    import datetime
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no other run's stale spools counted
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    client = manager.store.client
    client.create_multipart_upload(Bucket=s3_bucket, Key="backups/data/killed.tar.zst")
    client.create_multipart_upload(Bucket=s3_bucket, Key="other/data/not-ours.tar.zst")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=25)
    assert manager.store.remove_stale_spools() == 0  # fresh: could be a running backup
    assert manager.store.remove_stale_spools(now=later) == 1
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/data/not-ours.tar.zst"]


def test_server_killed_during_download_nothing_changes(tmp_path, own_s3):
    server, bucket = own_s3
    nb = make_tree(str(tmp_path / "nb"), big_mb=60)
    manager = s3_manager(tmp_path, server, bucket)
    meta = manager.create_backup()
    os.unlink(os.path.join(nb, "intro.ipynb"))
    before = folder_snapshot(nb)
    with pytest.raises(BackupError) as failure:
        manager.restore_backup(meta["id"], "replace", progress=KillAt("checking", 20 * 1024 * 1024, server.kill))
    assert "Nothing" in str(failure.value) or "cannot be reached" in str(failure.value)
    assert folder_snapshot(nb) == before


def test_timeout_is_a_clear_error_and_nothing_listed(tmp_path, own_s3):
    server, bucket = own_s3
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("{}")
    manager = s3_manager(tmp_path, server, bucket, s3_timeout=1)
    server.pause()
    try:
        with pytest.raises(BackupError, match="did not answer within 1 s"):
            manager.create_backup()
    finally:
        server.resume()
    assert manager.list_backups() == []


def test_wrong_credentials_and_missing_bucket_are_clear_and_never_show_the_keys(tmp_path, s3_server, s3_bucket, monkeypatch):
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("{}")
    settings = s3_settings(tmp_path, s3_server, s3_bucket)
    cli = [sys.executable, "-m", "ailab_backup_ext.cli", "--docker-url", "none", "--source-dir", str(nb),
           "--store", settings["store"], "--s3-endpoint-url", s3_server.url, "--s3-region", "us-east-1"]
    outputs = []

    def ailab_backup(*args, **env):
        done = subprocess.run(cli + list(args), capture_output=True, text=True, env={**os.environ, **env})
        outputs.append(done.stdout + done.stderr)
        return done

    good = ailab_backup("create")
    assert good.returncode == 0, good.stderr
    wrong_secret = ailab_backup("create", AWS_SECRET_ACCESS_KEY=SECRET_KEY[::-1])
    assert wrong_secret.returncode == 1 and "refused the credentials" in wrong_secret.stderr
    wrong_id = ailab_backup("list", AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1")
    assert wrong_id.returncode == 1 and "refused the credentials" in wrong_id.stderr
    no_bucket = ailab_backup("create", "--store", "s3://no-such-bucket-here/x")
    assert no_bucket.returncode == 1 and "does not exist" in no_bucket.stderr
    status = ailab_backup("status", AWS_SECRET_ACCESS_KEY="wrong")
    assert json.loads(status.stdout)["store"]["type"] == "s3"
    ailab_backup("list")
    listed = ailab_backup("list", "--json")
    assert len(json.loads(listed.stdout)) == 1  # the refused attempts kept nothing
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    outputs.append(json.dumps(manager.status()))
    everything = "\n".join(outputs)
    for secret in (ACCESS_KEY, SECRET_KEY, SECRET_KEY[::-1]):
        assert secret not in everything
    for root in (str(nb), os.path.join(s3_server.root, s3_bucket)):
        for dirpath, _, files in os.walk(root):
            for name in files:
                data = open(os.path.join(dirpath, name), "rb").read()
                assert ACCESS_KEY.encode() not in data and SECRET_KEY.encode() not in data


def test_second_store_killed_during_the_copy_keeps_the_local_backup(tmp_path, own_s3):
    server, bucket = own_s3
    nb = make_tree(str(tmp_path / "nb"), big_mb=40)
    manager = mirrored_manager(tmp_path, server, bucket)
    meta = manager.create_backup()
    wipe(str(tmp_path / "store"))  # a fresh local store ...
    manager = mirrored_manager(tmp_path, server, bucket)
    manager.store.second.remove(meta["id"], meta["archive"])
    original = manager.store.second.open_writer

    def writer_that_kills(archive_name):  # ... whose copy loses the server half-way
        ctx = original(archive_name)
        writer = ctx.__enter__()
        real_write, sent = writer.write, [0]

        def write(data):
            sent[0] += len(data)
            if sent[0] > 20 * 1024 * 1024 and server.process.poll() is None:
                server.kill()
            return real_write(data)
        writer.write = write
        return _Entered(ctx, writer)

    manager.store.second.open_writer = writer_that_kills
    second = manager.create_backup()
    assert manager.get_backup(second["id"])["copy"] == "pending"
    assert manager.verify_backup(second["id"])["ok"]
    with pytest.raises(BackupError):
        manager.store.second.read_all_meta()
    server.start()
    assert [m["id"] for m in manager.store.second.read_all_meta()] == []


class _Entered:
    def __init__(self, ctx, value):
        self.ctx, self.value = ctx, value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def test_cli_keygen_copy_all_and_list_where(tmp_path, s3_server, s3_bucket, monkeypatch, capsys):
    from ailab_backup_ext.cli import main

    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("{}")
    monkeypatch.setenv("AILAB_BACKUP_AGE_IDENTITY_FILE", str(tmp_path / "keys" / "age.key"))
    monkeypatch.setenv("AILAB_BACKUP_S3_ENDPOINT_URL", s3_server.url)
    base = ["--docker-url", "none", "--source-dir", str(nb), "--store", str(tmp_path / "store")]
    assert main(base + ["create"]) == 0
    backup_id = capsys.readouterr().out.strip()
    mirrored = base + ["--copy-to", f"s3://{s3_bucket}/cli"]
    assert main(mirrored + ["keygen"]) == 0
    out = capsys.readouterr().out
    assert "without it, nothing encrypted with it can be restored" in out and "AGE-SECRET-KEY-1" in out
    assert main(mirrored + ["list"]) == 0
    assert f"{backup_id}" in (listing := capsys.readouterr().out) and "here " in listing and "both" not in listing
    assert main(mirrored + ["copy"]) == 1  # neither an id nor --all
    assert "Say which" in capsys.readouterr().err
    assert main(mirrored + ["copy", "--all"]) == 0
    assert "Copied 1 backups" in capsys.readouterr().out
    assert main(mirrored + ["list"]) == 0
    assert "both" in capsys.readouterr().out
    assert main(base + ["copy", "--all"]) == 1  # no second store set
    assert "copy_to" in capsys.readouterr().err
    assert f"cli/data/{backup_id}.tar.zst.age" in s3_server.objects(s3_bucket)


@pytest.mark.parametrize("encryption", ["off", "on"])
def test_an_archive_is_found_with_one_head_request_in_its_own_mode(tmp_path, s3_server, s3_bucket, encryption):
    """The key of the configured mode is asked for first: no 404 before the first range."""
    make_tree(str(tmp_path / "nb"), big_mb=1)
    manager = s3_manager(tmp_path, s3_server, s3_bucket, encryption=encryption)
    if encryption == "on":
        manager.generate_key()
    meta = manager.create_backup()
    store = manager.store
    heads = []
    store.client.meta.events.register("provide-client-params.s3.HeadObject", lambda **kw: heads.append(kw["params"]["Key"]))
    with store.open_archive(meta["archive"]) as reader:
        assert reader.read(1)
    assert heads == [f"backups/data/{meta['archive']}" + (".age" if encryption == "on" else "")]
