"""The S3 store on a real S3-compatible server (rclone serve s3): every operation, streamed."""

import os
import shutil

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from test_roundtrip import make_tree
from treeutil import folder_snapshot


def s3_manager(tmp_path, server, bucket, prefix="backups", **settings):
    cfg = AILabBackup(docker_url="none", source_dir=str(tmp_path / "nb"), store=f"s3://{bucket}/{prefix}",
                      s3_endpoint_url=server.url, s3_region="us-east-1", s3_timeout=5,
                      age_identity_file=str(tmp_path / "keys" / "age.key"), **settings)
    return BackupManager(cfg)


def test_round_trip_through_s3_is_identical(tmp_path, s3_server, s3_bucket):
    nb = make_tree(str(tmp_path / "nb"), big_mb=20)
    before = folder_snapshot(nb)
    manager = s3_manager(tmp_path, s3_server, s3_bucket)
    meta = manager.create_backup("first")
    assert s3_server.objects(s3_bucket) == [f"backups/data/{meta['archive']}", f"backups/meta/{meta['id']}.json"]
    assert [m["id"] for m in manager.list_backups()] == [meta["id"]]
    assert manager.verify_backup(meta["id"])["ok"]
    shutil.rmtree(nb)
    os.makedirs(nb)
    manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(nb) == before
