"""The schedule's rules and record in local mode, with the clock set by the test: what the
sidebar and the panel show (spec, last run, next run, warning) after each kind of run."""

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.schedule import Scheduler, next_due, parse

T = 1_800_000_000  # 2027-01-15T08:00:00Z
HOUR = 3600


class Clock:
    def __init__(self, now=T):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def scheduled(tmp_path):
    source = tmp_path / "nb"
    source.mkdir()
    (source / "a.txt").write_text("1")
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"),
                                        docker_url="none", schedule="every 2h"))
    clock = Clock()
    return manager, Scheduler(manager, clock), clock, source


def run(scheduler):
    job = scheduler.tick()
    scheduler.wait(60)
    return job


@pytest.mark.parametrize("spec, rule", [
    ("every 6h", ("interval", 6 * HOUR)), ("every 30m", ("interval", 1800)),
    ("every 2 hours", ("interval", 2 * HOUR)), ("every 1 hour", ("interval", HOUR)),
    ("every 45 minutes", ("interval", 45 * 60)), ("every 5min", ("interval", 300)),
    ("  EVERY 6H ", ("interval", 6 * HOUR)), ("daily 02:30", ("daily", (2, 30))),
    ("daily 0:00", ("daily", (0, 0))), ("daily 23:59", ("daily", (23, 59))),
    ("off", None), ("", None), ("none", None), (None, None), (" Off ", None),
])
def test_schedules_a_user_may_write(spec, rule):
    assert parse(spec) == rule


@pytest.mark.parametrize("spec", ["every 0h", "every 0m"])
def test_an_interval_of_nothing_is_refused_with_its_range(spec):
    with pytest.raises(BackupError, match=r"out of range: the interval must be from 1 minute to 365 days"):
        parse(spec)


@pytest.mark.parametrize("spec", ["daily 24:00", "daily 12:60", "daily 2:3",
                                  "every h", "every 6d", "sometimes", "every 6h please", "daily 123:00"])
def test_schedules_refused_with_the_forms_that_work(spec):
    with pytest.raises(BackupError, match=r"Unknown schedule .*'every 6h', 'every 30m', 'daily 02:30' \(UTC\) or 'off'"):
        parse(spec)


def test_when_runs_are_due():
    assert next_due(("interval", HOUR), None, T) == T  # never ran: now
    assert next_due(("interval", HOUR), T - 10, T) == T - 10 + HOUR
    assert next_due(("interval", HOUR), T - 5 * HOUR, T) == T - 4 * HOUR  # missed: due (in the past)
    daily = ("daily", (2, 30))
    assert next_due(daily, None, T) == T + 18.5 * HOUR  # 08:00 now: tomorrow 02:30
    assert next_due(("daily", (9, 15)), None, T) == T + 1.25 * HOUR  # later today
    assert next_due(("daily", (8, 0)), None, T) == T  # this very minute
    assert next_due(daily, T, T) == T + 18.5 * HOUR  # ran at 08:00: tomorrow
    assert next_due(daily, T - 5.5 * HOUR, T) == T + 18.5 * HOUR  # ran at 02:30 today: tomorrow
    assert next_due(daily, T - 6 * HOUR, T) == T - 5.5 * HOUR  # ran at 02:00, before today's slot
    assert next_due(daily, T - 2 * 24 * HOUR, T) == T - 2 * 24 * HOUR + 18.5 * HOUR  # missed: due once


def test_daily_slots_are_utc_and_on_the_minute(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/New_York")  # the server's local zone must not matter
    time.tzset()
    try:
        assert next_due(("daily", (2, 30)), None, T + 17.25) == T + 18.5 * HOUR  # 02:30:00.0, not :17.25
        assert next_due(("daily", (2, 30)), T + 17, T + 20) == T + 18.5 * HOUR
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_what_the_uis_show_after_each_kind_of_run(scheduled):
    manager, scheduler, clock, source = scheduled
    assert scheduler.describe() == {"spec": "every 2h", "enabled": True, "last": None,
                                    "next": "2027-01-15T08:00:00Z", "warning": None}

    job = run(scheduler)
    backup = job.result
    assert job.to_json()["kind"] == "backup"  # shown like any backup job, with its progress
    assert job.to_json()["progress"]["done_files"] == 1 and job.to_json()["progress"]["done_bytes"] == 1
    assert (backup["label"], backup["kind"]) == ("Scheduled backup", "scheduled")
    assert scheduler.describe() == {
        "spec": "every 2h", "enabled": True, "next": "2027-01-15T10:00:00Z", "warning": None,
        "last": {"outcome": "succeeded", "backup_id": backup["id"], "time": "2027-01-15T08:00:00Z"}}
    assert run(scheduler) is None  # not due before 10:00
    clock.now += HOUR
    assert run(scheduler) is None

    clock.now += HOUR  # 10:00, nothing changed: skipped, the same as the backup
    assert run(scheduler) is not None
    assert scheduler.describe()["last"] == {"outcome": "skipped", "same_as": backup["id"],
                                            "time": "2027-01-15T10:00:00Z"}
    assert scheduler.describe()["next"] == "2027-01-15T12:00:00Z"
    assert [b["id"] for b in manager.list_backups()] == [backup["id"]]

    (source / "a.txt").unlink()
    source.rmdir()  # the folder is gone: the run fails, and the UIs warn
    clock.now += 2 * HOUR
    run(scheduler)
    described = scheduler.describe()
    assert described["last"]["outcome"] == "failed" and described["last"]["time"] == "2027-01-15T12:00:00Z"
    assert described["warning"] == f"The last scheduled backup failed: {described['last']['error']}"
    assert "does not exist" in described["warning"]
    assert described["next"] == "2027-01-15T14:00:00Z"  # a failed run counts: no retry every tick


def test_set_from_a_ui_wins_and_persists_and_off_stops(scheduled):
    manager, scheduler, clock, _ = scheduled
    assert scheduler.set("  daily 02:30 ")["spec"] == "daily 02:30"
    again = Scheduler(manager, clock)  # a restarted server reads it back from beside the store
    assert again.spec == "daily 02:30" and again.describe()["next"] == "2027-01-16T02:30:00Z"
    assert again.tick() is None  # not due at 08:00
    with pytest.raises(BackupError):
        again.set("sometimes")
    assert Scheduler(manager, clock).spec == "daily 02:30"  # a refused spec changes nothing
    off = again.set("off")
    assert off == {"spec": "off", "enabled": False, "last": None, "next": None, "warning": None}
    clock.now += 48 * HOUR
    assert Scheduler(manager, clock).tick() is None and manager.list_backups() == []


def test_no_schedule_configured_is_off(tmp_path):
    manager = BackupManager(AILabBackup(source_dir=str(tmp_path), store=str(tmp_path / "s"), docker_url="none"))
    assert Scheduler(manager, Clock()).describe() == {"spec": "off", "enabled": False, "last": None, "next": None,
                                                      "warning": None}


def test_waiting_for_a_scheduled_run_gives_up_after_its_timeout(scheduled, monkeypatch):
    import threading
    import time

    manager, scheduler, _, _ = scheduled
    release = threading.Event()
    monkeypatch.setattr(manager, "create_backup", lambda *a, **k: release.wait(30) and {})
    job = scheduler.tick()
    started = time.monotonic()
    scheduler.wait(0.2)  # the run still goes on: wait returns, nothing recorded yet
    assert time.monotonic() - started < 5 and not job.done.is_set()
    assert scheduler.describe()["last"] is None
    release.set()
    scheduler.wait(10)
    assert scheduler.describe()["last"]["outcome"] == "succeeded"
