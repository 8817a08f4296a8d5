"""The kernel secret (AILAB_BACKUP_TOKEN) goes to kernels only (issue 18, item 13): a kernel the
server starts, directly, for a notebook's session or after a restart, holds it and the client
and the panel work from there; a terminal, a child of the same server, does not hold it."""

import json
import os
import subprocess
import sys
import time

import pytest
import requests
import websocket

from restutil import free_port, run_in_kernel, wait_for_server

TOKEN = "test-token-of-jupyter"

KERNEL_CODE = """
import json, os
from ailab_backup_ext import BackupPanel
from ailab_backup_ext.client import BackupClient
panel = BackupPanel()
print(json.dumps({"has_secret": bool(os.environ.get("AILAB_BACKUP_TOKEN")),
                  "mode": BackupClient().status()["mode"],
                  "panel": panel.status.value, "panel_can_back_up": not panel.backup_button.disabled}))
"""


@pytest.fixture
def server(tmp_path):
    (tmp_path / "nb").mkdir()
    runtime = tmp_path / "runtime"
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("AILAB_BACKUP_TOKEN", None)
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={tmp_path / 'nb'}",
         f"--AILabBackup.store={tmp_path / 'store'}", "--AILabBackup.docker_url=none", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(process, base + "api/status", 60, lambda: (tmp_path / "server.log").read_text())
        yield base, runtime
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def api(base, method, path, **kwargs):
    response = requests.request(method, base + path, headers={"Authorization": f"token {TOKEN}"}, timeout=60,
                                **kwargs)
    assert response.status_code < 300, (path, response.status_code, response.text)
    return response.json() if response.content else None


def test_kernels_hold_the_secret_and_reach_the_api(server):
    base, runtime = server
    kernel = api(base, "POST", "api/kernels", json={})
    session = api(base, "POST", "api/sessions", json={"path": "work.ipynb", "type": "notebook", "name": "work.ipynb",
                                                      "kernel": {"name": "python3"}})
    try:
        for kernel_id in (kernel["id"], session["kernel"]["id"]):
            seen = json.loads(run_in_kernel(str(runtime / f"kernel-{kernel_id}.json"), KERNEL_CODE))
            assert seen["has_secret"] and seen["mode"] == "local", seen
            assert "INACCESSIBLE" not in seen["panel"] and seen["panel_can_back_up"], seen
        api(base, "POST", f"api/kernels/{kernel['id']}/restart")
        seen = json.loads(run_in_kernel(str(runtime / f"kernel-{kernel['id']}.json"), KERNEL_CODE))
        assert seen["has_secret"] and seen["mode"] == "local", seen  # a restart keeps it
    finally:
        api(base, "DELETE", f"api/sessions/{session['id']}")
        api(base, "DELETE", f"api/kernels/{kernel['id']}")


def terminal_output(base, name, command, until, timeout=30):
    """Run ``command`` in the terminal ``name`` through its websocket; what it printed up to ``until``."""
    ws = websocket.create_connection(base.replace("http", "ws") + f"terminals/websocket/{name}",
                                     header=[f"Authorization: token {TOKEN}"], timeout=timeout)
    try:
        ws.send(json.dumps(["stdin", command + "\r"]))
        seen, deadline = "", time.monotonic() + timeout
        while until not in seen and time.monotonic() < deadline:
            message = json.loads(ws.recv())
            if message[0] == "stdout":
                seen += message[1]
        return seen
    finally:
        ws.close()


def test_terminals_do_not_hold_the_secret(server):
    base, _ = server
    terminal = api(base, "POST", "api/terminals")
    try:
        # printed as computed, so the echo of the typed command never matches
        out = terminal_output(base, terminal["name"],
                              'echo "SECRET=$(printenv AILAB_BACKUP_TOKEN | wc -c)=URL=$(printenv AILAB_BACKUP_URL | wc -c)=END"',
                              "=END\r")
        assert "SECRET=0=URL=0=END" in out.replace(" ", ""), out
    finally:
        api(base, "DELETE", f"api/terminals/{terminal['name']}")
