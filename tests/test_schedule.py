"""Scheduled backups against the real server and the real Docker engine, with the clock advanced
by the test instead of waited for."""

import asyncio
import threading

import pytest

from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.handlers import SETTINGS_KEY
from ailab_backup_ext.schedule import Scheduler, next_due, parse
from restutil import call, server_config
from treeutil import run_in_volume

HOUR = 3600


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def jp_server_config(volumes):
    volume, store = volumes
    return server_config(volume=volume, store=store, schedule="every 6h")


@pytest.fixture
def manager(jp_serverapp):
    """The server's manager, with the server's own schedule thread stopped: the test ticks."""
    for app in jp_serverapp.extension_manager.extension_apps["ailab_backup_ext"]:
        app._stopping.set()
    return jp_serverapp.web_app.settings[SETTINGS_KEY]


def run_tick(scheduler):
    job = scheduler.tick()
    scheduler.wait(300)
    return job


async def test_schedule_backs_up_skips_unchanged_and_catches_up_once(jp_fetch, manager, docker_client, volumes):
    volume, store = volumes
    run_in_volume(docker_client, volume, "echo v1 > /v/a.ipynb")
    clock = Clock()
    scheduler = manager.scheduler = Scheduler(manager, clock)

    # due at once (never ran): a backup appears, labelled as scheduled
    assert await asyncio.to_thread(run_tick, scheduler) is not None
    _, listing, _ = await call(jp_fetch)
    assert [(b["kind"], b["label"]) for b in listing["backups"]] == [("scheduled", "Scheduled backup")]
    _, schedule, _ = await call(jp_fetch, "schedule")
    assert schedule["last"]["outcome"] == "succeeded" and schedule["spec"] == "every 6h"
    assert await asyncio.to_thread(run_tick, scheduler) is None  # not due yet

    # six hours later, nothing changed: skipped and recorded as skipped
    clock.now += 6 * HOUR
    assert await asyncio.to_thread(run_tick, scheduler) is not None
    _, listing, _ = await call(jp_fetch)
    assert len(listing["backups"]) == 1
    _, status, _ = await call(jp_fetch, "status")
    assert status["schedule"]["last"]["outcome"] == "skipped"

    # a change: the next run backs up
    run_in_volume(docker_client, volume, "echo v2 > /v/a.ipynb")
    clock.now += 6 * HOUR
    await asyncio.to_thread(run_tick, scheduler)
    _, listing, _ = await call(jp_fetch)
    assert len(listing["backups"]) == 2

    # the server was down for two days: after a restart one run catches up, not eight
    run_in_volume(docker_client, volume, "echo v3 > /v/a.ipynb")
    clock.now += 48 * HOUR
    restarted = Scheduler(manager, clock)  # state read back from beside the store
    assert restarted.describe()["last"]["outcome"] == "succeeded"
    assert await asyncio.to_thread(run_tick, restarted) is not None
    assert await asyncio.to_thread(run_tick, restarted) is None
    _, listing, _ = await call(jp_fetch)
    assert len(listing["backups"]) == 3


async def test_schedule_set_from_ui_persists_and_failures_warn(jp_fetch, manager, docker_client, volumes):
    _, schedule, _ = await call(jp_fetch, "schedule", method="PUT", body={"spec": "daily 02:30"})
    assert schedule["spec"] == "daily 02:30" and schedule["next"].endswith("02:30:00Z")
    _, error, _ = await call(jp_fetch, "schedule", method="PUT", body={"spec": "sometimes"}, expect=400)
    assert "every 6h" in error["message"]
    assert Scheduler(manager).describe()["spec"] == "daily 02:30"  # kept beside the store

    await call(jp_fetch, "schedule", method="PUT", body={"spec": "every 1h"})
    volume, _ = volumes
    docker_client.volumes.get(volume).remove(force=True)  # the source is gone: the run fails
    clock = Clock()
    scheduler = manager.scheduler = Scheduler(manager, clock)
    await asyncio.to_thread(run_tick, scheduler)
    _, status, _ = await call(jp_fetch, "status")
    assert status["schedule"]["last"]["outcome"] == "failed"
    assert "does not exist" in status["schedule"]["warning"]


def test_a_running_job_makes_the_scheduled_run_wait(tmp_path):
    from ailab_backup_ext.config import AILabBackup
    from ailab_backup_ext.core import BackupManager

    (tmp_path / "nb").mkdir()
    manager = BackupManager(AILabBackup(source_dir=str(tmp_path / "nb"), store=str(tmp_path / "s"),
                                        docker_url="none", schedule="every 1h"))
    clock = Clock()
    scheduler = Scheduler(manager, clock)
    gate = threading.Event()
    manager.jobs.start("backup", lambda progress: gate.wait(30) and {})
    assert scheduler.tick() is None  # due, but a job runs: it waits
    gate.set()
    manager.jobs.get(manager.jobs.recent()[0].id).done.wait(10)
    assert run_tick(scheduler) is not None


def test_rules():
    assert parse("every 6h") == ("interval", 6 * HOUR) and parse("every 30m") == ("interval", 1800)
    assert parse("off") is None and parse("") is None
    with pytest.raises(BackupError):
        parse("every 0h")
    t = 1_800_000_000  # 2027-01-15T08:00:00Z
    assert next_due(("interval", HOUR), None, t) == t
    assert next_due(("interval", HOUR), t, t + 10) == t + HOUR
    daily = ("daily", (2, 30))
    assert next_due(daily, t, t) - t == 18.5 * HOUR  # tomorrow 02:30 after a run at 08:00
    assert next_due(daily, t - 2 * 24 * HOUR, t) < t  # missed while down: due now
