"""Automatic backups on a schedule, while the server runs.

The schedule ("every 6h", "every 30m", "daily 02:30" in UTC, or "off") comes from
``AILabBackup.schedule`` until a user sets it from a UI; that setting and the record of the last
run are kept beside the store (``schedule.json``), so they survive server restarts and never land in
the notebooks. Free of tornado: the server extension calls :meth:`Scheduler.tick` now and then; a
test calls it with its own clock.
"""

import datetime
import re
import threading
import time

from .errors import BackupError, Busy

STATE = "schedule"
_EVERY = re.compile(r"^every\s+(\d+)\s*(m|min|minutes?|h|hours?)$")
_DAILY = re.compile(r"^daily\s+(\d{1,2}):(\d{2})$")
MIN_INTERVAL, MAX_INTERVAL = 60, 365 * 86400  # a minute to a year: every date stays representable


def parse(spec):
    """('interval', seconds) or ('daily', (hour, minute)) or None for off; BackupError if bad."""
    text = (spec or "").strip().lower()
    if text in ("", "off", "none"):
        return None
    match = _EVERY.match(text)
    if match:
        seconds = int(match.group(1)) * (60 if match.group(2).startswith("m") else 3600)
        if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
            raise BackupError(
                f"The schedule {spec!r} is out of range: the interval must be from 1 minute to "
                f"{MAX_INTERVAL // 86400} days ('every 1m' to 'every {MAX_INTERVAL // 3600}h')."
            )
        return ("interval", seconds)
    match = _DAILY.match(text)
    if match and int(match.group(1)) < 24 and int(match.group(2)) < 60:
        return ("daily", (int(match.group(1)), int(match.group(2))))
    raise BackupError(f"Unknown schedule {spec!r}: use 'every 6h', 'every 30m', 'daily 02:30' (UTC) or 'off'.")


def _iso(ts):
    if ts is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError, TypeError):
        return None  # a time no calendar holds (a state written by an older version): unknown


def next_due(rule, last_run, now):
    """When the next run is due (a timestamp). A run missed while the server was down is due
    at once, and only once."""
    kind, value = rule
    if kind == "interval":
        return now if last_run is None else last_run + value
    hour, minute = value
    base = datetime.datetime.fromtimestamp(last_run if last_run is not None else now, datetime.timezone.utc)
    slot = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if last_run is None:
        return slot.timestamp() if slot.timestamp() >= now else (slot + datetime.timedelta(days=1)).timestamp()
    if slot.timestamp() <= last_run:
        slot += datetime.timedelta(days=1)
    return slot.timestamp()


class Scheduler:
    def __init__(self, manager, clock=time.time):
        self.manager = manager
        self.clock = clock
        self._lock = threading.Lock()
        self._state = None
        self._job = None

    # state kept beside the store -------------------------------------------------------------

    def state(self):
        if self._state is None:
            self._state = self.manager.store.read_state(STATE) or {}
        return self._state

    def _save(self):
        self.manager.store.write_state(STATE, self._state)

    @property
    def spec(self):
        state = self.state()
        return state["spec"] if "spec" in state else self.manager.config.schedule

    def set(self, spec):
        """Set the schedule from a UI; it persists and wins over the configuration."""
        parse(spec)
        with self._lock:
            self.state()["spec"] = spec.strip()
            self._save()
        return self.describe()

    def _rule(self):
        """The rule in force, and a warning when the stored or configured spec is not valid
        (then no backups run): never an error, so that status always answers."""
        try:
            return parse(self.spec), None
        except BackupError as exc:
            return None, f"{exc} No scheduled backups run until it is set again."

    def _last_run(self):
        """The recorded last run; one that is no time, or later than now (a state written by an
        older version, a clock set back), counts as none: the next run is due at once."""
        last = self.state().get("last_run")
        if isinstance(last, bool) or not isinstance(last, (int, float)) or not 0 <= last <= self.clock() + 60:
            return None
        return last

    def describe(self):
        state = self.state()
        rule, invalid = self._rule()
        last = state.get("last") if isinstance(state.get("last"), dict) else None
        try:
            upcoming = _iso(next_due(rule, self._last_run(), self.clock())) if rule else None
        except (OverflowError, OSError, ValueError, TypeError):
            upcoming = None
        failed = f"The last scheduled backup failed: {last.get('error')}" if last and last.get("outcome") == "failed" else None
        return {
            "spec": str(self.spec or "off"),
            "enabled": rule is not None,
            "last": last,
            "next": upcoming,
            "warning": invalid or failed,
        }

    # running ---------------------------------------------------------------------------------

    def tick(self):
        """Start a due run (or record how the running one ended). Returns the job started."""
        with self._lock:
            self._collect()
            rule, _ = self._rule()
            if self._job is None:
                self.manager.retry_copies()  # copies to AILabBackup.copy_to left pending
            if rule is None or self._job is not None:
                return None
            now = self.clock()
            if now < next_due(rule, self._last_run(), now):
                return None
            try:
                self._job = self.manager.jobs.start(
                    "backup", lambda progress: self.manager.create_backup(
                        "Scheduled backup", kind="scheduled", progress=progress, skip_unchanged=True))
            except Busy:
                return None  # a backup or restore runs: wait for it, try at the next tick
            self._started = now
            return self._job

    def _collect(self):
        job = self._job
        if job is None or not job.done.is_set():
            return
        self._job = None
        result = job.result or {}
        if job.state == "failed":
            last = {"outcome": "failed", "error": job.error}
        elif result.get("skipped"):
            last = {"outcome": "skipped", "same_as": result.get("same_as")}
        else:
            last = {"outcome": "succeeded", "backup_id": result.get("id")}
        last["time"] = _iso(self._started)
        self._state["last"] = last
        self._state["last_run"] = self._started
        self._save()

    def wait(self, timeout=None):
        """Wait for the running scheduled job to end and record it (for tests and shutdown)."""
        job = self._job
        if job is not None:
            job.done.wait(timeout)
        with self._lock:
            self._collect()
