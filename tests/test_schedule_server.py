"""The schedule run by a real `jupyter server` process: its own schedule thread takes the backup
(AILabBackup.schedule_tick_seconds=1 instead of 30, so the test waits seconds), and a restart
after a missed run catches up once."""

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from restutil import free_port, wait_for_server

TOKEN = "schedule-test-token"


class Server:
    """`jupyter server` with the extension in local mode: root ``nb``, store ``store``."""

    def __init__(self, tmp_path, schedule):
        self.tmp_path, self.schedule = tmp_path, schedule
        self.process = None

    def start(self):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/"
        self.log = open(self.tmp_path / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={self.tmp_path / 'nb'}",
             f"--AILabBackup.store={self.tmp_path / 'store'}", "--AILabBackup.docker_url=none",
             f"--AILabBackup.schedule={self.schedule}", "--AILabBackup.schedule_tick_seconds=1", "--allow-root"],
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(self.tmp_path / "runtime")},
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_server(self.process, self.base + "api/status", 60, self.read_log)

    def read_log(self):
        return (self.tmp_path / "server.log").read_text(errors="replace")[-3000:]

    def get(self, path=""):
        response = requests.get(self.base + "ailab/backup" + path, headers={"Authorization": f"token {TOKEN}"},
                                timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.log.close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "a.ipynb").write_text("v1")
    made = []

    def make(schedule):
        made.append(Server(tmp_path, schedule))
        made[-1].start()
        return made[-1]

    yield make
    for one in made:
        one.stop()


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def scheduled(server):
    return [b for b in server.get()["backups"] if b["kind"] == "scheduled"]


def test_the_running_server_takes_the_scheduled_backup_itself(server, tmp_path):
    running = server("every 6h")  # never ran: due at once, taken at the next tick (in 1 s, not 30)
    [backup] = wait_for("a scheduled backup", lambda: scheduled(running), timeout=20)
    assert backup["label"] == "Scheduled backup" and backup["file_count"] == 1
    schedule = wait_for("the run recorded", lambda: running.get("/schedule")["last"] and running.get("/schedule"))
    assert schedule["last"]["outcome"] == "succeeded" and schedule["last"]["backup_id"] == backup["id"]
    time.sleep(3)  # three more ticks: not due again for six hours
    assert len(scheduled(running)) == 1


def test_a_restarted_server_catches_up_a_missed_run_once(server, tmp_path):
    first = server("every 1h")
    wait_for("the first scheduled backup", lambda: scheduled(first))
    wait_for("the run recorded", lambda: first.get("/schedule")["last"])
    first.stop()
    (tmp_path / "nb" / "a.ipynb").write_text("v2")

    # a restart within the hour: the record beside the store says the run is not due yet
    second = server("every 1h")
    time.sleep(3)  # three ticks
    assert len(scheduled(second)) == 1
    second.stop()

    # the server stays down for three hours (the record is moved back three hours: a test
    # cannot wait them): the next start catches up the missed run, once
    state_file = tmp_path / "store" / "schedule.json"
    state = json.loads(state_file.read_text())
    state["last_run"] -= 3 * 3600
    state_file.write_text(json.dumps(state))
    third = server("every 1h")
    backups = wait_for("the missed run", lambda: len(scheduled(third)) == 2 and scheduled(third))
    time.sleep(3)  # three ticks more: one run caught up, not three
    assert len(scheduled(third)) == 2
    assert third.get("/schedule")["last"]["backup_id"] == backups[0]["id"] != backups[1]["id"]
