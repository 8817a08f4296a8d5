"""The second copy in S3 through the REST API of the real Jupyter server: locally, and with the
notebooks and the store in real Docker volumes."""

import logging
import shutil

import pytest

from restutil import call, server_config, wait_job
from s3util import ACCESS_KEY, SECRET_KEY
from test_roundtrip import fill_volume, make_tree
from treeutil import folder_snapshot, run_in_volume, volume_snapshot


def copy_to_s3(server, bucket, tmp_path):
    return dict(copy_to=f"s3://{bucket}/ailab", s3_endpoint_url=server.url, s3_region="us-east-1", s3_timeout=5,
                age_identity_file=str(tmp_path / "keys" / "age.key"))


async def run_job(jp_fetch, *path, body=None):
    _, answer, _ = await call(jp_fetch, *path, method="POST", body=body or {}, expect=202)
    job = await wait_job(jp_fetch, answer["job"]["id"])
    assert job["state"] == "succeeded", job
    return job


async def where(jp_fetch):
    _, listing, _ = await call(jp_fetch)
    return {b["id"]: (b.get("where"), b.get("copy")) for b in listing["backups"]}


class TestLocal:
    @pytest.fixture
    def jp_server_config(self, tmp_path, s3_server, s3_bucket):
        return server_config(store=str(tmp_path / "store"), docker_url="none", safety_backup=False,
                             **copy_to_s3(s3_server, s3_bucket, tmp_path))

    async def test_key_copy_where_and_restore_from_the_copy(self, jp_fetch, jp_root_dir, s3_server, s3_bucket,
                                                            tmp_path, caplog):
        caplog.set_level(logging.DEBUG)  # even a server logging everything never logs the keys
        make_tree(str(jp_root_dir), big_mb=3)
        before = folder_snapshot(str(jp_root_dir))
        _, key, headers = await call(jp_fetch, "key", method="POST", body={}, expect=201)
        assert "without it, nothing" in key["message"] and headers["Cache-Control"] == "no-store"
        _, again, _ = await call(jp_fetch, "key", method="POST", body={}, expect=400)
        assert key["private_key"] not in again["message"]
        _, status, _ = await call(jp_fetch, "status")
        assert status["store"]["copy_to"]["encryption"]["public_key"] == key["public_key"]
        assert key["private_key"] not in str(status)

        backup_id = (await run_job(jp_fetch))["backup_id"]
        assert (await where(jp_fetch))[backup_id] == ("both", None)
        await call(jp_fetch, backup_id, method="DELETE", params={"where": "here"}, expect=204)
        assert (await where(jp_fetch))[backup_id] == ("off the machine", None)
        shutil.rmtree(jp_root_dir / "private")
        await run_job(jp_fetch, backup_id, "restore", body={"mode": "replace"})
        assert folder_snapshot(str(jp_root_dir)) == before

        await call(jp_fetch, backup_id, "copy", method="POST", body={}, expect=404)  # only backups here copy
        second = (await run_job(jp_fetch))["backup_id"]
        await call(jp_fetch, second, method="DELETE", params={"where": "off"}, expect=204)
        assert (await where(jp_fetch))[second] == ("here", None)
        await run_job(jp_fetch, second, "copy")
        assert (await where(jp_fetch))[second] == ("both", None)
        await call(jp_fetch, second, method="DELETE", params={"where": "off"}, expect=204)
        await run_job(jp_fetch, "copies")
        assert (await where(jp_fetch))[second] == ("both", None)
        assert caplog.records and not any(k in caplog.text for k in (ACCESS_KEY, SECRET_KEY, key["private_key"]))


class TestDocker:
    @pytest.fixture
    def jp_server_config(self, volumes, tmp_path, s3_server, s3_bucket):
        volume, store = volumes
        return server_config(volume=volume, store=store, safety_backup=False,
                             **copy_to_s3(s3_server, s3_bucket, tmp_path))

    async def test_volume_backup_copied_to_s3_restores_after_the_store_volume_is_lost(
            self, jp_fetch, docker_client, volumes, tmp_path):
        volume, store = volumes
        fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=5))
        before = volume_snapshot(docker_client, volume)
        backup_id = (await run_job(jp_fetch, body={"label": "docker"}))["backup_id"]
        assert (await where(jp_fetch))[backup_id] == ("both", None)
        run_in_volume(docker_client, store, "rm -rf /v/*")  # e.g. 'docker volume prune --all'
        run_in_volume(docker_client, volume, "rm -rf /v/* /v/.[!.]*")
        assert (await where(jp_fetch))[backup_id] == ("off the machine", None)
        await run_job(jp_fetch, backup_id, "restore", body={"mode": "replace"})
        assert volume_snapshot(docker_client, volume) == before
