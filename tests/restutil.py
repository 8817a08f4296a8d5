"""Helpers for talking to the real Jupyter server in tests."""

import asyncio
import json
import socket
import time

import requests
from jupyter_client import BlockingKernelClient

from tornado.httpclient import HTTPClientError


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now, for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(process, url, timeout=120, log=lambda: ""):
    """Wait until the server started as ``process`` answers ``url`` (any HTTP answer: it is up);
    fail, with ``log()``, when it ends first or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log()
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the server did not answer {url} in {timeout} s\n{log()}"
        time.sleep(0.2)


def run(fn, *args, **kwargs):
    """A blocking call (the client, the panel) from an async test: in a thread, so the server
    in this event loop can answer it."""
    return asyncio.to_thread(fn, *args, **kwargs)


def server_config(**ailab_backup):
    """A test server with the extension, Jupyter's auth required everywhere, and these
    AILabBackup settings."""
    return {
        "ServerApp": {"jpserver_extensions": {"ailab_backup_ext": True}, "allow_unauthenticated_access": False},
        "AILabBackup": ailab_backup,
    }


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


def run_in_kernel(connection_file, code):
    """Run code in a kernel through its connection file; return what it printed."""
    client = BlockingKernelClient()
    client.load_connection_file(connection_file)
    # no heartbeat channel: without its manager a client may think a fresh kernel dead
    client.start_channels(hb=False)
    try:
        client.wait_for_ready(timeout=60)
        lines = []
        reply = client.execute_interactive(code, timeout=120, output_hook=lambda msg: lines.append(
            msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(lines)
    finally:
        client.stop_channels()


def browser_login(base, password):
    """A session logged in to a password-protected server as a browser is: the login cookie, and
    the XSRF token sent back with every request."""
    browser = requests.Session()
    browser.get(base + "login")
    xsrf = browser.cookies["_xsrf"]
    login = browser.post(base + "login", data={"password": password, "_xsrf": xsrf}, allow_redirects=False)
    assert login.status_code == 302, login.status_code
    browser.headers["X-XSRFToken"] = xsrf
    return browser


def run_in_new_kernel(base, runtime, password, code):
    """Log in to a server as a browser does, start a kernel, run ``code`` in it, return what it
    printed, and shut the kernel down."""
    browser = browser_login(base, password)
    kernel = browser.post(base + "api/kernels", json={})
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    try:
        return run_in_kernel(str(runtime / f"kernel-{kernel_id}.json"), code)
    finally:
        browser.delete(base + f"api/kernels/{kernel_id}")


STORE_WARNING = "TEST: the backups are kept inside this container; 'docker rm' deletes them. Download them."


def store_warning_config(path, warning=STORE_WARNING):
    """Write a test-only server config (for ``--config=path``) whose status says ``warning`` as
    its store_warning, as a server whose store would not survive its container does."""
    path.write_text(f"""
from ailab_backup_ext.core import BackupManager

_status = BackupManager.status
BackupManager.status = lambda self: {{**_status(self), "store_warning": {warning!r}}}
""")
    return path
