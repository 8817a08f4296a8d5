"""Helpers for talking to the real Jupyter server in tests."""

import asyncio
import json

from tornado.httpclient import HTTPClientError


async def call(jp_fetch, *path, method="GET", body=None, expect=200, **kwargs):
    """A request to /ailab/backup/...; returns (status, parsed JSON or raw bytes, headers)."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body)
    try:
        response = await jp_fetch("ailab", "backup", *path, method=method, body=body, **kwargs)
    except HTTPClientError as exc:
        response = exc.response
        assert response is not None, exc
    assert expect is None or response.code == expect, (response.code, response.body[:500])
    content = response.body
    if response.headers.get("Content-Type", "").startswith("application/json") and content:
        content = json.loads(content)
    return response.code, content, response.headers


async def wait_job(jp_fetch, job_id, timeout=300):
    for _ in range(int(timeout / 0.1)):
        _, job, _ = await call(jp_fetch, "jobs", job_id)
        if job["state"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")
