"""The REST API on the real Docker engine: a volume as AI-Lab has it, the store in a volume."""

import asyncio

import pytest

from ailab_backup_ext.handlers import SETTINGS_KEY
from restutil import call, server_config, wait_job
from test_roundtrip import fill_volume, make_tree
from treeutil import run_in_volume, volume_snapshot


@pytest.fixture
def jp_server_config(volumes):
    volume, store = volumes
    return server_config(volume=volume, store=store)


async def test_backup_and_replace_restore_of_a_volume(jp_fetch, docker_client, volumes, tmp_path):
    volume, store = volumes
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=5))
    before = volume_snapshot(docker_client, volume)

    _, status, _ = await call(jp_fetch, "status")
    assert status["mode"] == "docker" and status["docker"]["reachable"] and status["hint"] is None
    assert status["source"] == {"type": "volume", "name": volume, "found_by": "configured (volume)"}
    assert status["store"] == {"type": "volume", "name": store}

    _, body, _ = await call(jp_fetch, method="POST", body={"label": "docker"}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    assert job["state"] == "succeeded", job

    run_in_volume(docker_client, volume, "rm -rf /v/private /v/intro.ipynb && echo x > /v/stray")
    _, body, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", body={"mode": "replace"}, expect=202)
    restored = await wait_job(jp_fetch, body["job"]["id"])
    assert restored["state"] == "succeeded", restored
    assert "Restart the kernels" in restored["result"]["hint"]  # the SCS was restored
    assert volume_snapshot(docker_client, volume) == before

    _, data, _ = await call(jp_fetch, job["backup_id"], "download")
    _, listing, _ = await call(jp_fetch)
    sizes = {b["id"]: (b["size_bytes"], b["kind"]) for b in listing["backups"]}
    assert sizes[job["backup_id"]] == (len(data), "manual")
    assert sizes[restored["result"]["safety_backup_id"]][1] == "safety"  # taken before the restore


async def test_shutdown_during_a_backup_leaves_no_helper_and_no_partial_backup(
        jp_fetch, jp_serverapp, docker_client, volumes, tmp_path):
    volume, store = volumes
    run_in_volume(docker_client, volume, "dd if=/dev/urandom of=/v/big bs=1M count=150 2>/dev/null")
    _, body, _ = await call(jp_fetch, method="POST", body={}, expect=202)
    for _ in range(200):  # until data flows
        _, job, _ = await call(jp_fetch, "jobs", body["job"]["id"])
        if job["progress"]["done_bytes"] > 0:
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "running"

    await jp_serverapp.extension_manager.stop_all_extensions()  # what the server does when it stops

    manager = jp_serverapp.web_app.settings[SETTINGS_KEY]
    ended = manager.jobs.get(body["job"]["id"])
    assert await asyncio.to_thread(ended.done.wait, 300)
    if ended.state == "succeeded":  # the stop came once the commit began, which it does not tear
        assert [b["id"] for b in manager.list_backups()] == [ended.backup_id]
        assert manager.verify_backup(ended.backup_id)["ok"]
    else:
        assert ended.state == "failed" and "shutting down" in ended.error
        assert manager.list_backups() == []
        files = run_in_volume(docker_client, store, "find /v -type f")
        assert files.strip() == "", files  # not even a partial archive in the store
    # (the autouse fixture checks that no helper container is left)


@pytest.mark.parametrize("jp_server_config", [{
    "ServerApp": {"jpserver_extensions": {"ailab_backup_ext": True}},
    "AILabBackup": {"volume": "ailabtest-no-such-volume", "store": "/tmp/ailabtest-store"},
}])
async def test_missing_volume_is_a_clear_error(jp_fetch, docker_client):
    _, status, _ = await call(jp_fetch, "status")
    assert "does not exist" in status["hint"] and "docker volume ls" in status["hint"]
    _, body, _ = await call(jp_fetch, method="POST", body={}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    assert job["state"] == "failed" and "does not exist" in job["error"]
    assert "ailabtest-no-such-volume" not in [v.name for v in docker_client.volumes.list()]
