"""A schedule out of range is refused, and no stored schedule ever makes /status or /schedule
fail (issue 18, item 11), against the real server."""

import pytest

from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.handlers import SETTINGS_KEY
from ailab_backup_ext.schedule import parse
from restutil import call

OUT_OF_RANGE = ["every 99999999999999h", "every 99999999999999999999999m", "every 8761h", "every 525601m",
                "every 0h", "every 0m"]


@pytest.fixture
def manager(jp_serverapp):
    for app in jp_serverapp.extension_manager.extension_apps["ailab_backup_ext"]:
        app._stopping.set()  # the test ticks, not the server's thread
    return jp_serverapp.web_app.settings[SETTINGS_KEY]


@pytest.mark.parametrize("spec", OUT_OF_RANGE)
async def test_interval_out_of_range_is_refused_and_changes_nothing(jp_fetch, manager, spec):
    with pytest.raises(BackupError, match="out of range|Unknown schedule"):
        parse(spec)
    await call(jp_fetch, "schedule", method="PUT", body={"spec": "every 6h"})
    _, error, _ = await call(jp_fetch, "schedule", method="PUT", body={"spec": spec}, expect=400)
    assert "1 minute" in error["message"] and "every 8760h" in error["message"], error
    _, schedule, _ = await call(jp_fetch, "schedule")
    assert schedule["spec"] == "every 6h" and schedule["enabled"]


def test_bounds_themselves_are_accepted():
    assert parse("every 1m") == ("interval", 60)
    assert parse("every 8760h") == ("interval", 8760 * 3600)
    assert parse("every 525600 minutes") == ("interval", 525600 * 60)


@pytest.mark.parametrize("state", [
    {"spec": "every 99999999999999h", "last_run": 1_800_000_000},  # written before the bound
    {"spec": "every 6h", "last_run": 1e300},                        # a time no calendar holds
    {"spec": "daily 02:30", "last_run": 1e300},
    {"spec": "every 6h", "last_run": "yesterday", "last": "broken"},
])
async def test_status_and_schedule_answer_whatever_is_stored(jp_fetch, manager, state):
    manager.store.write_state("schedule", state)
    manager.scheduler._state = None  # read it again, as after a restart
    _, status, _ = await call(jp_fetch, "status")
    _, schedule, _ = await call(jp_fetch, "schedule")
    assert status["mode"] == "local"
    assert schedule["spec"] == state["spec"]
    # a nonsense last run counts as none: the next run is due at once (or at the daily time)
    assert (schedule["next"] is None) == ("9999" in state["spec"])
    if "9999" in state["spec"]:
        assert not schedule["enabled"] and "out of range" in schedule["warning"]
        assert manager.scheduler.tick() is None  # and no backup starts from it
    # setting it again from the UI puts it right
    _, fixed, _ = await call(jp_fetch, "schedule", method="PUT", body={"spec": "every 1h"})
    assert fixed["enabled"] and fixed["warning"] is None
