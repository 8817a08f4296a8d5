"""The REST API against the real Jupyter server (local mode here; Docker in test_rest_docker.py)."""

import asyncio
import json
import os

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ailab_backup_ext.handlers import OPENAPI_PATH, ROUTES
from restutil import call, wait_job
from treeutil import folder_snapshot


@pytest.fixture
def jp_server_config(tmp_path):
    return {
        "ServerApp": {"jpserver_extensions": {"ailab_backup_ext": True}, "allow_unauthenticated_access": False},
        "AILabBackup": {"store": str(tmp_path / "store"), "docker_url": "none", "max_upload_bytes": 50_000_000},
    }


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "intro.ipynb").write_text('{"cells": []}')
    (jp_root_dir / "sub").mkdir()
    (jp_root_dir / "sub" / "data.csv").write_bytes(os.urandom(100_000))
    return jp_root_dir


with open(OPENAPI_PATH) as f:
    OPENAPI = json.load(f)
_REGISTRY = Registry().with_resource("urn:api", Resource.from_contents(OPENAPI, default_specification=DRAFT202012))


def conforms(data, path, method, status):
    """Check a live response against the OpenAPI document."""
    spec = OPENAPI["paths"][path][method]["responses"][str(status)]
    schema = spec["content"]["application/json"]["schema"]
    schema = json.loads(json.dumps(schema).replace('"#/components', '"urn:api#/components'))
    jsonschema.Draft202012Validator(schema, registry=_REGISTRY).validate(data)


async def backup_now(jp_fetch, label=""):
    _, body, headers = await call(jp_fetch, method="POST", body={"label": label}, expect=202)
    conforms(body, "/", "post", 202)
    assert headers["Location"].endswith("/ailab/backup/jobs/" + body["job"]["id"])
    job = await wait_job(jp_fetch, body["job"]["id"])
    conforms(job, "/jobs/{job_id}", "get", 200)
    assert job["state"] == "succeeded", job
    return job


async def test_backup_list_show_download_delete(jp_fetch, notebooks):
    _, status, _ = await call(jp_fetch, "status")
    conforms(status, "/status", "get", 200)
    assert status["mode"] == "local" and status["source"]["name"] == str(notebooks)

    job = await backup_now(jp_fetch, "before the demo")
    progress = job["progress"]
    assert progress["done_files"] == progress["total_files"] >= 2
    _, listing, _ = await call(jp_fetch)
    conforms(listing, "/", "get", 200)
    [backup] = listing["backups"]
    assert (backup["id"], backup["label"], backup["file_count"]) == (job["backup_id"], "before the demo", 2)

    _, detail, _ = await call(jp_fetch, backup["id"])
    conforms(detail, "/{backup_id}", "get", 200)
    _, data, headers = await call(jp_fetch, backup["id"], "download")
    assert headers["Content-Disposition"] == f'attachment; filename="{backup["id"]}.tar.zst"'
    assert int(headers["Content-Length"]) == len(data) == backup["size_bytes"]

    await call(jp_fetch, backup["id"], method="DELETE", expect=204)
    _, listing, _ = await call(jp_fetch)
    assert listing["backups"] == []
    _, error, _ = await call(jp_fetch, backup["id"], expect=404)
    conforms(error, "/{backup_id}", "get", 404)
    assert "No backup has the id" in error["message"]


async def test_restore_replace_and_merge(jp_fetch, notebooks):
    before = folder_snapshot(notebooks)
    job = await backup_now(jp_fetch)
    (notebooks / "intro.ipynb").write_text("broken")
    (notebooks / "new.txt").write_text("new")

    _, body, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", body={"mode": "merge"}, expect=202)
    done = await wait_job(jp_fetch, body["job"]["id"])
    assert done["state"] == "succeeded" and done["result"]["mode"] == "merge"
    assert (notebooks / "new.txt").exists() and (notebooks / "intro.ipynb").read_text() == '{"cells": []}'

    _, body, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", body={"mode": "replace"}, expect=202)
    assert (await wait_job(jp_fetch, body["job"]["id"]))["state"] == "succeeded"
    assert folder_snapshot(notebooks) == before


async def test_bad_requests(jp_fetch, notebooks):
    job = await backup_now(jp_fetch)
    _, error, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST", body={"mode": "wipe"}, expect=400)
    assert "merge" in error["message"]
    await call(jp_fetch, "nope", "restore", method="POST", body={}, expect=404)
    await call(jp_fetch, "..%2F..%2Fetc", "download", expect=404)
    await call(jp_fetch, method="POST", body=b"not json", expect=400)
    _, error, _ = await call(jp_fetch, method="POST", body={"label": 5}, expect=400)
    await call(jp_fetch, "jobs", "0" * 32, expect=404)
    _, jobs, _ = await call(jp_fetch, "jobs")
    conforms(jobs, "/jobs", "get", 200)
    assert jobs["jobs"][0]["id"] == job["id"]


async def test_upload_round_trip_and_refusals(jp_fetch, notebooks, tmp_path):
    job = await backup_now(jp_fetch, "to upload")
    _, archive, _ = await call(jp_fetch, job["backup_id"], "download")
    await call(jp_fetch, job["backup_id"], method="DELETE", expect=204)

    _, uploaded, _ = await call(jp_fetch, "upload", method="POST", body=archive, expect=201)
    conforms(uploaded, "/upload", "post", 201)
    assert uploaded["label"] == "to upload" and uploaded["kind"] == "uploaded"
    _, again, _ = await call(jp_fetch, uploaded["id"], "download")
    assert again == archive

    store_before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    _, error, _ = await call(jp_fetch, "upload", method="POST", body=archive[: len(archive) // 2], expect=400)
    conforms(error, "/upload", "post", 400)
    assert "damaged or truncated" in error["message"]
    await call(jp_fetch, "upload", method="POST", body=b"PK\x03\x04 a zip file", expect=400)
    _, error, _ = await call(jp_fetch, "upload", method="POST", body=b"\0" * 60_000_000, expect=413)
    assert "max_upload_bytes" in error["message"]
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == store_before


async def test_ten_simultaneous_backups_give_one_job_and_nine_conflicts(jp_fetch, notebooks):
    (notebooks / "big.bin").write_bytes(os.urandom(30_000_000))  # long enough to overlap
    results = await asyncio.gather(*(call(jp_fetch, method="POST", body={}, expect=None) for _ in range(10)),
                                   return_exceptions=True)
    codes = sorted(r.code if isinstance(r, Exception) else r[0] for r in results)
    assert codes == [202] + [409] * 9, codes


async def test_openapi_document_covers_every_route(jp_fetch):
    _, served, _ = await call(jp_fetch, "openapi.json")
    assert served == OPENAPI
    jsonschema.Draft202012Validator.check_schema({"$defs": OPENAPI["components"]["schemas"]})
    documented = {p.rstrip("/") for p in OPENAPI["paths"]}
    routed = {pattern.replace("\\", "").replace("(?P<backup_id>[^/]+)", "{backup_id}")
              .replace("(?P<job_id>[^/]+)", "{job_id}") for pattern, _ in ROUTES}
    assert routed == documented


async def test_dry_run_selective_restore_and_undo(jp_fetch, notebooks):
    await call(jp_fetch, "undo", method="POST", body={}, expect=404)  # nothing to undo yet
    job = await backup_now(jp_fetch)
    backed_up = (notebooks / "sub" / "data.csv").read_bytes()
    (notebooks / "intro.ipynb").write_text("changed")
    (notebooks / "sub" / "data.csv").write_text("changed too")
    (notebooks / "stray.txt").write_text("new")
    before = folder_snapshot(notebooks)

    _, plan, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST",
                            body={"mode": "replace", "dry_run": True})
    conforms(plan, "/{backup_id}/restore", "post", 200)
    assert {i["path"] for i in plan["overwritten"]} == {"intro.ipynb", "sub/data.csv"}
    assert [i["path"] for i in plan["removed"]] == ["stray.txt"]
    assert folder_snapshot(notebooks) == before  # a dry run changes nothing

    _, body, _ = await call(jp_fetch, job["backup_id"], "restore", method="POST",
                            body={"mode": "replace", "paths": ["sub"]}, expect=202)
    done = await wait_job(jp_fetch, body["job"]["id"])
    assert done["state"] == "succeeded" and done["result"]["safety_backup_id"]
    assert (notebooks / "sub" / "data.csv").read_bytes() == backed_up
    assert (notebooks / "intro.ipynb").read_text() == "changed" and (notebooks / "stray.txt").exists()
    await call(jp_fetch, job["backup_id"], "restore", method="POST", body={"paths": "sub"}, expect=400)

    _, body, _ = await call(jp_fetch, "undo", method="POST", body={}, expect=202)
    assert (await wait_job(jp_fetch, body["job"]["id"]))["state"] == "succeeded"
    assert folder_snapshot(notebooks) == before


async def test_decompression_bomb_upload_is_refused_before_reading(jp_fetch, tmp_path):
    import io

    from ailab_backup_ext.archive import Entry, Manifest, write_archive

    class Zeros:
        def __init__(self, n):
            self.n = n

        def read(self, k=-1):
            k = min(k, self.n)
            self.n -= k
            return b"\0" * k

    bomb = io.BytesIO()
    write_archive(bomb, [(Entry(".", "dir", mode=0o755), None),
                         (Entry("zeros.bin", "file", size=3_000_000_000), Zeros(3_000_000_000))],
                  Manifest(created="2026-01-01T00:00:00Z", source={}), "zstd")
    assert len(bomb.getvalue()) < 200_000  # 3 GB of zeros in a small file
    _, error, _ = await call(jp_fetch, "upload", method="POST", body=bomb.getvalue(), expect=413)
    assert "decompression bomb" in error["message"] and "max_compression_ratio" in error["message"]
    _, listing, _ = await call(jp_fetch)
    assert listing["backups"] == []
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # nothing stored
