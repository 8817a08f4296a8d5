"""BackupClient, the one Python client of the REST API, against a live server: every method, the
errors it raises, a download/upload round trip, and the kernel credential on a password-only server.

The in-process server runs on the test's own event loop: blocking client calls go to a thread.
"""

import json
import os

import pytest

from ailab_backup_ext.client import BackupClient, BackupClientError
from ailab_backup_ext.extension import kernel_environment
from restutil import call, run
from restutil import run_in_new_kernel

CHUNK_BIG = 30_000_000


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "intro.ipynb").write_text('{"cells": []}')
    (jp_root_dir / ".hidden").write_text("hidden")
    (jp_root_dir / "sub").mkdir()
    (jp_root_dir / "sub" / "data.bin").write_bytes(os.urandom(200_000))
    return jp_root_dir



def stored_archive(tmp_path, backup):
    [path] = [p for p in (tmp_path / "store").rglob(backup["id"] + ".tar.*")]
    return path


async def test_status_create_list_show_jobs(client, notebooks):
    status = await run(client.status)
    assert status["mode"] == "local" and status["source"]["name"] == str(notebooks)
    assert status["hint"] is None and status["job"] is None
    assert await run(client.list) == []

    seen = []
    job = await run(client.create, "first", wait=True, on_progress=seen.append, poll=0.05)
    assert job["state"] == "succeeded" and job["kind"] == "backup" and job["backup_id"]
    assert seen and seen[-1]["state"] == "succeeded"
    assert job["progress"]["done_files"] == job["progress"]["total_files"] == 3

    started = await run(client.create)  # without wait: the job at once, not finished yet
    assert started["state"] in ("queued", "running", "succeeded") and started["backup_id"] is None
    second = await run(client.wait, started["id"], poll=0.05)
    assert second["state"] == "succeeded" and (await run(client.job, started["id"]))["state"] == "succeeded"
    assert [j["id"] for j in await run(client.jobs)][:2] == [started["id"], job["id"]]

    backups = await run(client.list)
    assert [b["id"] for b in backups] == [second["backup_id"], job["backup_id"]]  # newest first
    assert backups[1]["label"] == "first" and backups[1]["file_count"] == 3
    detail = await run(client.show, job["backup_id"])
    assert detail["label"] == "first" and len(detail["manifest"]["sha256"]) == 64


async def test_download_upload_round_trip_delete(client, notebooks, tmp_path, jp_fetch):
    job = await run(client.create, "round trip", wait=True, poll=0.05)
    [backup] = await run(client.list)
    stored = stored_archive(tmp_path, backup).read_bytes()

    target = tmp_path / "down" / "mine.tar.zst"
    target.parent.mkdir()
    assert await run(client.download, backup["id"], str(target)) == str(target)
    assert target.read_bytes() == stored and len(stored) == backup["size_bytes"]
    into_folder = await run(client.download, backup["id"], str(target.parent))
    assert os.path.basename(into_folder) == backup["id"] + ".tar.zst"
    assert sorted(os.listdir(target.parent)) == sorted(["mine.tar.zst", backup["id"] + ".tar.zst"])  # no .part

    assert await run(client.delete, job["backup_id"]) is None
    assert await run(client.list) == []
    uploaded = await run(client.upload, str(target))
    assert uploaded["kind"] == "uploaded" and uploaded["label"] == "round trip"
    _, again, _ = await call(jp_fetch, uploaded["id"], "download")
    assert again == stored

    with pytest.raises(BackupClientError) as refused:
        half = tmp_path / "half.tar.zst"
        half.write_bytes(stored[: len(stored) // 2])
        await run(client.upload, str(half))
    assert refused.value.status == 400 and "damaged or truncated" in refused.value.message


async def test_restore_merge_and_replace(client, notebooks):
    job = await run(client.create, wait=True, poll=0.05)
    (notebooks / "intro.ipynb").write_text("broken")
    (notebooks / "new.txt").write_text("new")

    seen = []
    done = await run(client.restore, job["backup_id"], wait=True, on_progress=seen.append, poll=0.05)
    assert done["kind"] == "restore" and done["result"]["mode"] == "merge" and seen
    assert (notebooks / "intro.ipynb").read_text() == '{"cells": []}' and (notebooks / "new.txt").exists()

    plan = await run(client.plan_restore, job["backup_id"], mode="replace")
    assert [i["path"] for i in plan["removed"]] == ["new.txt"] and plan["overwritten"] == []
    assert (notebooks / "new.txt").exists()  # a dry run changes nothing
    started = await run(client.restore, job["backup_id"], mode="replace")
    assert started["kind"] == "restore"
    done = await run(client.wait, started, poll=0.05)
    assert done["result"]["mode"] == "replace" and not (notebooks / "new.txt").exists()

    undone = await run(client.undo, wait=True, poll=0.05)  # back to the state before that restore
    assert undone["result"]["undone"] == done["result"]["safety_backup_id"]
    assert (notebooks / "new.txt").read_text() == "new"

    backed_up = (notebooks / "sub" / "data.bin").read_bytes()  # what the backup holds
    (notebooks / "sub" / "data.bin").write_bytes(b"changed")
    (notebooks / "intro.ipynb").write_text("changed too")
    await run(client.restore, job["backup_id"], paths=["sub"], wait=True, poll=0.05)
    assert (notebooks / "sub" / "data.bin").read_bytes() == backed_up
    assert (notebooks / "intro.ipynb").read_text() == "changed too"  # not among the paths


async def test_errors_carry_the_servers_message_and_status(client, notebooks, tmp_path):
    with pytest.raises(BackupClientError) as unknown:
        await run(client.show, "nb-20260101T000000Z")
    assert unknown.value.status == 404 and "No backup has the id" in unknown.value.message
    assert "No backup has the id" in str(unknown.value)
    for method, args in ((client.delete, ("nope",)), (client.restore, ("nope",)), (client.job, ("0" * 32,)),
                         (client.download, ("nope", str(tmp_path / "x")))):
        with pytest.raises(BackupClientError) as error:
            await run(method, *args)
        assert error.value.status == 404, method
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()

    job = await run(client.create, wait=True, poll=0.05)
    with pytest.raises(BackupClientError) as bad_mode:
        await run(client.restore, job["backup_id"], mode="wipe")
    assert bad_mode.value.status == 400 and "merge" in bad_mode.value.message
    with pytest.raises(BackupClientError) as bad_label:
        await run(client.create, "x" * 201)
    assert bad_label.value.status == 400 and "200 characters" in bad_label.value.message

    # a job that fails raises, with the job
    [backup] = await run(client.list)
    archive = stored_archive(tmp_path, backup)
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(BackupClientError) as failed:
        await run(client.restore, backup["id"], wait=True, poll=0.05)
    assert failed.value.job["state"] == "failed" and failed.value.job_id == failed.value.job["id"]
    assert failed.value.message == failed.value.job["error"] and failed.value.status is None


async def test_conflict_names_the_running_job(client, notebooks):
    (notebooks / "big.bin").write_bytes(os.urandom(CHUNK_BIG))  # long enough to overlap
    first = await run(client.create)
    with pytest.raises(BackupClientError) as busy:
        await run(client.create)
    assert busy.value.status == 409 and busy.value.job_id == first["id"]
    assert first["id"] in busy.value.message
    await run(client.wait, first, poll=0.05)


async def test_openapi_and_undo_without_restore(client, notebooks):
    document = await run(client.openapi)
    assert "/undo" in document["paths"] and document["info"]["title"] == "AI-Lab backup"
    with pytest.raises(BackupClientError) as nothing:
        await run(client.undo)
    assert nothing.value.status == 404 and "no restore to undo" in nothing.value.message


async def test_schedule_get_and_set(client, notebooks, jp_serverapp):
    for app in jp_serverapp.extension_manager.extension_apps["ailab_backup_ext"]:
        app._stopping.set()  # no scheduled backup starts behind the test's back
    schedule = await run(client.schedule)
    assert schedule == {"spec": "off", "enabled": False, "last": None, "next": None, "warning": None}

    daily = await run(client.set_schedule, "daily 02:30")
    assert daily["spec"] == "daily 02:30" and daily["enabled"] and daily["next"].endswith("T02:30:00Z")
    assert await run(client.schedule) == daily == (await run(client.status))["schedule"]

    with pytest.raises(BackupClientError) as bad:
        await run(client.set_schedule, "sometimes")
    assert bad.value.status == 400 and "Unknown schedule" in bad.value.message and "every 6h" in bad.value.message
    assert (await run(client.schedule))["spec"] == "daily 02:30"  # unchanged

    every = await run(client.set_schedule, " every 30m ")
    assert every["spec"] == "every 30m" and every["enabled"] and every["last"] is None
    off = await run(client.set_schedule, "off")
    assert off["spec"] == "off" and not off["enabled"] and off["next"] is None
    assert (await run(client.schedule))["spec"] == "off"


async def test_refusals_and_no_server(client, notebooks, jp_serverapp, jp_http_port, jp_base_url, monkeypatch):
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    for wrong in (BackupClient(url, token="wrong"), BackupClient(url)):
        with pytest.raises(BackupClientError) as refused:
            await run(wrong.list)
        assert refused.value.status in (403, 302), refused.value.status

    with pytest.raises(BackupClientError) as unreachable:
        await run(BackupClient("http://127.0.0.1:1/", timeout=5).status)
    assert unreachable.value.status is None and "Cannot reach" in unreachable.value.message

    # as a kernel of this server: its environment holds the kernel credential
    for name, value in kernel_environment(jp_serverapp).items():
        monkeypatch.setenv(name, value)
    assert os.environ["AILAB_BACKUP_URL"].endswith(jp_base_url)
    own = BackupClient()
    assert own.base_path == jp_base_url and own.download_href("a b") == f"{jp_base_url}ailab/backup/a%20b/download"
    assert (await run(own.status))["mode"] == "local"
    for name in ("HTTP_PROXY", "http_proxy"):  # a proxy never sees the kernel's secret
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    assert (await run(BackupClient().status))["mode"] == "local"
    with pytest.raises(BackupClientError):  # while a client with a URL uses the environment's proxy
        await run(BackupClient(url, token=jp_serverapp.identity_provider.token, timeout=5).status)

    monkeypatch.delenv("AILAB_BACKUP_URL")
    with pytest.raises(BackupClientError) as nowhere:
        BackupClient()
    assert "No AI-Lab backup server found" in nowhere.value.message


KERNEL_CODE = """
import json
from ailab_backup_ext.client import BackupClient, BackupClientError
c = BackupClient()
job = c.create("from a kernel", wait=True, poll=0.1)
try:
    c.show("nope")
    error = None
except BackupClientError as e:
    error = [e.status, e.message]
print(json.dumps({"ids": [b["id"] for b in c.list()], "created": job["backup_id"], "error": error,
                  "labels": [b["label"] for b in c.list()]}))
"""


def test_kernel_of_password_only_server_uses_the_kernel_credential(password_only_server, tmp_path):
    base, runtime = password_only_server
    (tmp_path / "nb" / "work.ipynb").write_text('{"cells": []}')
    # from outside, without the password, the client is refused
    with pytest.raises(BackupClientError) as refused:
        BackupClient(base).list()
    assert refused.value.status in (403, 302)

    seen = json.loads(run_in_new_kernel(base, runtime, "ailab", KERNEL_CODE))
    assert seen["ids"] == [seen["created"]] and seen["labels"] == ["from a kernel"]
    assert seen["error"][0] == 404 and "No backup has the id" in seen["error"][1]
    assert [p.name for p in (tmp_path / "store").rglob(seen["created"] + ".tar.zst")]
