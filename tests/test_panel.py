"""The notebook panel against a live server: its buttons, pressed, change what the REST API shows,
and the panel shows it: rows, progress, check icons, the red error, the restart hint.

The in-process server runs on the test's own event loop, so everything that may block (clicks,
waiting for the panel's background threads) runs in a thread.
"""

import json
import os
import time

import pytest

from ailab_backup_ext.handlers import SETTINGS_KEY
from ailab_backup_ext.panel import BackupPanel
from ailab_backup_ext.schedule import Scheduler
from restutil import run

SCS = "ai_lab_secure_configuration_storage.sqlite"


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "intro.ipynb").write_text('{"cells": []}')
    (jp_root_dir / SCS).write_bytes(b"encrypted bytes")
    return jp_root_dir



async def settled(panel):
    assert await run(panel.wait, 120), "the panel's background work did not end"
    return panel


async def make_panel(client):
    return await settled(await run(BackupPanel, client, poll=0.05))


async def click(panel, button):
    await run(button.click)
    return await settled(panel)


def shown(widget):
    return widget.layout.display != "none"


async def test_back_up_restore_delete_through_the_buttons(client, notebooks, jp_base_url):
    panel = await make_panel(client)
    assert "local" in panel.status.value and str(notebooks) in panel.status.value
    assert not shown(panel.warning) and panel.error.value == ""
    assert panel.backups == [] and "No backups yet" in panel.rows.children[0].value

    panel.label.value = "from the panel"
    await click(panel, panel.backup_button)
    [backup] = await run(client.list)
    assert backup["label"] == "from the panel" and panel.label.value == ""
    assert [b["id"] for b in panel.backups] == [backup["id"]] and panel.selected == backup["id"]
    assert len(panel.rows.children) == 1 and panel.rows.children[0].children[1].value == "from the panel"
    assert panel.progress.value == panel.progress.max and panel.progress.bar_style == "success"
    assert panel.backup_button.icon == "check" and not panel.backup_button.disabled
    assert f'href="{jp_base_url}ailab/backup/{backup["id"]}/download" download' in panel.download.value
    assert panel.error.value == ""

    # replace asks first, with the server's dry run; nothing happens before the second click
    (notebooks / "intro.ipynb").write_text("changed")
    (notebooks / "new.txt").write_text("new")
    panel.mode.value = "replace"
    await click(panel, panel.restore_button)
    assert shown(panel.confirm) and "deleted" in panel.question.value
    assert "1 overwritten, 1 removed, 1 unchanged" in panel.question.value, panel.question.value
    assert shown(panel.preview) and "max-height" not in panel.preview.value  # the box scrolls, by its layout
    assert panel.preview.layout.max_height and panel.preview.layout.overflow == "auto"
    overwritten, removed = panel.preview.value.split("Removed (1)")
    assert "Overwritten (1)" in overwritten and "<code>intro.ipynb</code>" in overwritten
    assert "<code>new.txt</code>" in removed
    assert [j["kind"] for j in await run(client.jobs)] == ["backup"]
    await click(panel, panel.yes_button)
    assert not shown(panel.confirm)
    assert (notebooks / "intro.ipynb").read_text() == '{"cells": []}' and not (notebooks / "new.txt").exists()
    [restore, _] = await run(client.jobs)
    assert restore["kind"] == "restore" and restore["result"]["mode"] == "replace"
    assert panel.progress.value == panel.progress.max and panel.restore_button.icon == "check"
    assert "Restart the kernels" in panel.message.value  # the SCS came back: kernels must reread it
    safety = restore["result"]["safety_backup_id"]
    assert safety in panel.message.value  # the state before, kept by the server for an undo
    assert [b["id"] for b in panel.backups] == [b["id"] for b in await run(client.list)] == [safety, backup["id"]]
    assert panel.selected == backup["id"]

    # delete: Cancel keeps the backup, Yes deletes it
    await click(panel, panel.delete_button)
    assert shown(panel.confirm) and backup["id"] in panel.question.value
    await click(panel, panel.no_button)
    assert not shown(panel.confirm) and len(await run(client.list)) == 2
    await click(panel, panel.delete_button)
    await click(panel, panel.yes_button)
    # refused: the safety backup lists files it holds as unchanged (undo needs them)
    assert "color: red" in panel.error.value and "Nothing was deleted" in panel.error.value
    assert len(await run(client.list)) == 2
    panel.select(safety)  # as clicking its row does
    await click(panel, panel.delete_button)
    await click(panel, panel.yes_button)
    assert [b["id"] for b in await run(client.list)] == [b["id"] for b in panel.backups] == [backup["id"]]
    assert panel.selected == backup["id"] and panel.delete_button.icon == "check"

async def test_errors_show_the_servers_message_in_red(client, notebooks):
    first = await run(client.create, "one", wait=True, poll=0.05)
    panel = await make_panel(client)
    assert panel.selected == first["backup_id"]
    await run(client.delete, first["backup_id"])  # behind the panel's back

    await run(panel.restore_button.click)  # merge, the default, asks too
    await run(panel.yes_button.click)  # at once, before the dry run answers
    await settled(panel)
    assert "color: red" in panel.error.value and "No backup has the id" in panel.error.value
    assert not panel.restore_button.disabled and panel.restore_button.icon != "check"
    assert panel.backups == [] and "No backups yet" in panel.rows.children[0].value  # the table caught up

    await run(client.create, "two", wait=True, poll=0.05)
    await click(panel, panel.refresh_button)
    assert [b["label"] for b in panel.backups] == ["two"] and panel.refresh_button.icon == "check"
    assert panel.error.value == ""
    await run(client.delete, panel.selected)
    await click(panel, panel.refresh_button)
    await click(panel, panel.restore_button)
    assert "Select a backup first" in panel.error.value and not shown(panel.confirm)


async def test_progress_while_a_job_runs_without_blocking(client, notebooks):
    (notebooks / "big.bin").write_bytes(os.urandom(60_000_000))
    panel = await make_panel(client)
    values = []
    panel.progress.observe(lambda change: values.append(change["new"]), "value")

    started = time.monotonic()
    await run(panel.backup_button.click)
    assert time.monotonic() - started < 1  # the click returns at once: the kernel stays free
    assert panel.backup_button.disabled and shown(panel.progress_row)
    await settled(panel)
    assert values[-1] == panel.progress.max and any(0 < v < panel.progress.max for v in values), values
    assert not panel.backup_button.disabled and len(panel.backups) == 1

    # a panel opened while a job runs follows it
    job = await run(client.create)
    late = await run(BackupPanel, client, poll=0.05)
    await settled(late)
    assert late.progress.value == late.progress.max and len(late.backups) == 2
    assert (await run(client.job, job["id"]))["state"] == "succeeded"


async def test_selection_and_no_server(client, notebooks, monkeypatch):
    a = await run(client.create, "a", wait=True, poll=0.05)
    b = await run(client.create, "b", wait=True, poll=0.05)
    panel = await make_panel(client)
    assert panel.selected == b["backup_id"]  # the newest
    toggles = [row.children[0] for row in panel.rows.children]
    toggles[1].value = True  # a click on the older row
    assert panel.selected == a["backup_id"] and [t.value for t in toggles] == [False, True]
    assert toggles[1].icon == "dot-circle-o" and toggles[0].icon == "circle-o"
    toggles[1].value = False  # a second click keeps the row selected
    assert panel.selected == a["backup_id"] and toggles[1].value
    assert a["backup_id"] in panel.download.value

    monkeypatch.delenv("AILAB_BACKUP_URL", raising=False)
    orphan = BackupPanel()
    assert "INACCESSIBLE" in orphan.status.value and shown(orphan.warning)
    assert "No AI-Lab backup server found" in orphan.warning.value and "color: red" in orphan.warning.value
    assert orphan.backup_button.disabled and orphan.restore_button.disabled and orphan.undo_button.disabled
    assert "INACCESSIBLE" in orphan.schedule_text.value and orphan.schedule_button.disabled


def notebook(*cells):
    return json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [],
                                  "execution_count": None} for c in cells],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def option_values(panel):
    return [value for _, value in panel.paths.options]


async def test_selective_restore_with_preview_then_undo(client, notebooks):
    (notebooks / "work.ipynb").write_text(notebook("a = 1", "b = 2"))
    (notebooks / "notes.txt").write_text("notes v1")
    (notebooks / "sub").mkdir()
    (notebooks / "sub" / "data.txt").write_text("data v1")
    first = await run(client.create, "before the changes", wait=True, poll=0.05)
    (notebooks / "work.ipynb").write_text(notebook("a = 1", "b = 3", "c = 4"))
    (notebooks / "notes.txt").write_text("notes v2")
    (notebooks / "sub" / "data.txt").write_text("data v2")

    panel = await make_panel(client)
    assert panel.undo_button.disabled  # no restore yet: nothing to undo
    await click(panel, panel.restore_button)
    assert shown(panel.confirm) and shown(panel.choose) and shown(panel.preview)
    assert "0 added, 3 overwritten, 3 unchanged" in panel.question.value, panel.question.value
    # every path of the backup can be chosen, folders first
    assert option_values(panel) == ["sub", SCS, "intro.ipynb", "notes.txt", "sub/data.txt", "work.ipynb"]
    assert panel.paths.options[0][0] == "sub/" and panel.paths.value == ()
    # the preview lists what would be overwritten, with the cells of a notebook
    assert "Overwritten (3)" in panel.preview.value and "Removed" not in panel.preview.value
    for path in ("notes.txt", "sub/data.txt", "work.ipynb"):
        assert f"<code>{path}</code>" in panel.preview.value
    assert "<code>work.ipynb</code>" in panel.preview.value.split("notebook: 0 cells added, 1 removed, 1 changed")[0]

    # choosing paths recomputes the preview for them
    await run(setattr, panel.paths, "value", ("notes.txt",))
    await settled(panel)
    assert "only the 1 chosen" in panel.question.value and "0 added, 1 overwritten, 0 unchanged" in panel.question.value
    assert "<code>notes.txt</code>" in panel.preview.value and "work.ipynb" not in panel.preview.value
    # another mode asks again, the choice stays
    await run(setattr, panel.mode, "value", "replace")
    await settled(panel)
    assert shown(panel.confirm) and panel.yes_button.description == "Yes, replace"
    assert panel.paths.value == ("notes.txt",) and "only the 1 chosen" in panel.question.value
    await run(setattr, panel.mode, "value", "merge")
    await settled(panel)
    assert panel.yes_button.description == "Yes, merge" and panel.paths.value == ("notes.txt",)

    await click(panel, panel.yes_button)
    assert panel.error.value == "" and panel.restore_button.icon == "check"
    assert (notebooks / "notes.txt").read_text() == "notes v1"  # the chosen path came back
    assert (notebooks / "sub" / "data.txt").read_text() == "data v2"  # the others stayed
    assert "c = 4" in (notebooks / "work.ipynb").read_text()
    restore = (await run(client.jobs))[0]
    assert restore["kind"] == "restore" and restore["result"]["paths"] == ["notes.txt"]
    assert restore["result"]["file_count"] == 1 and restore["backup_id"] == first["backup_id"]
    safety = restore["result"]["safety_backup_id"]
    assert safety in panel.message.value and "notes.txt" in panel.message.value
    assert "Restart the kernels" not in panel.message.value  # the SCS was not restored
    # the table tells a safety backup from a manual one
    kinds = {row.children[0].tooltip: row.children[2].value for row in panel.rows.children}
    assert ">safety<" in kinds[safety] and "manual" in kinds[first["backup_id"]]
    assert not panel.undo_button.disabled

    # undo asks first, then brings the earlier content back
    await click(panel, panel.undo_button)
    assert shown(panel.confirm) and safety in panel.question.value and not shown(panel.choose)
    assert "<code>notes.txt</code>" in panel.preview.value.split("Overwritten (1)")[1]
    await click(panel, panel.no_button)
    assert (notebooks / "notes.txt").read_text() == "notes v1"
    await click(panel, panel.undo_button)
    await click(panel, panel.yes_button)
    assert panel.error.value == "" and panel.undo_button.icon == "check"
    assert (notebooks / "notes.txt").read_text() == "notes v2"
    undo = (await run(client.jobs))[0]
    assert undo["kind"] == "undo" and undo["result"]["undone"] == safety
    assert "Undid the last restore" in panel.message.value and panel.progress_text.value == "Undo done."
    assert [b["id"] for b in panel.backups] == [b["id"] for b in await run(client.list)]  # refreshed
    assert not panel.undo_button.disabled  # an undo keeps a safety backup too: it can be undone

    # nothing left to undo (deleted behind the panel's back): the server's message
    for backup in await run(client.list):
        if backup["kind"] == "safety":
            await run(client.delete, backup["id"])
    await click(panel, panel.undo_button)
    assert shown(panel.confirm) and "Cannot compare" in panel.question.value
    await click(panel, panel.yes_button)
    assert "color: red" in panel.error.value and "no restore to undo" in panel.error.value
    assert panel.undo_button.disabled and panel.undo_button.icon != "check"


async def test_a_selective_restore_of_the_scs_says_to_restart_kernels(client, notebooks):
    backup = await run(client.create, wait=True, poll=0.05)
    (notebooks / SCS).write_bytes(b"other bytes")
    (notebooks / "intro.ipynb").write_text("changed")
    panel = await make_panel(client)
    await click(panel, panel.restore_button)
    await run(setattr, panel.paths, "value", (SCS,))
    await settled(panel)
    await click(panel, panel.yes_button)
    assert (notebooks / SCS).read_bytes() == b"encrypted bytes" and (notebooks / "intro.ipynb").read_text() == "changed"
    assert (await run(client.jobs))[0]["result"]["paths"] == [SCS]
    assert "Restart the kernels" in panel.message.value and backup["backup_id"] in panel.message.value


@pytest.fixture
def manager(jp_serverapp):
    """The server's manager, with the server's own schedule thread stopped: no scheduled backup
    starts behind a test's back; a test ticks the scheduler itself."""
    for app in jp_serverapp.extension_manager.extension_apps["ailab_backup_ext"]:
        app._stopping.set()
    return jp_serverapp.web_app.settings[SETTINGS_KEY]


async def test_schedule_set_from_the_panel(client, notebooks, manager):
    panel = await make_panel(client)
    assert "Schedule: <b>Off</b>" in panel.schedule_text.value and "Last run: never" in panel.schedule_text.value
    assert panel.schedule_choice.value == "off" and not shown(panel.schedule_warning)

    panel.schedule_choice.value = "daily"
    assert panel.schedule_value.value == "02:00" and panel.schedule_value.layout.visibility == "visible"
    panel.schedule_value.value = "03:15"
    await click(panel, panel.schedule_button)
    assert panel.error.value == "" and panel.schedule_button.icon == "check"
    schedule = await run(client.schedule)
    assert schedule["spec"] == "daily 03:15" and schedule["next"].endswith("T03:15:00Z")
    assert "Daily at 03:15 UTC" in panel.schedule_text.value
    assert f"Next run: {schedule['next'][:10]} 03:15:00 UTC" in panel.schedule_text.value
    assert (panel.schedule_choice.value, panel.schedule_value.value) == ("daily", "03:15")

    # "Other …" starts from the schedule chosen; the server checks what is typed
    panel.schedule_choice.value = "custom"
    assert panel.schedule_value.value == "daily 03:15"
    panel.schedule_value.value = "sometimes"
    await click(panel, panel.schedule_button)
    assert "color: red" in panel.error.value and "Unknown schedule" in panel.error.value
    assert (await run(client.schedule))["spec"] == "daily 03:15"
    panel.schedule_value.value = "every 30m"
    await click(panel, panel.schedule_button)
    assert panel.error.value == "" and "Every 30 minutes" in panel.schedule_text.value
    assert (await run(client.status))["schedule"]["spec"] == "every 30m"

    # a schedule set elsewhere shows up on refresh; the form follows it
    await run(client.set_schedule, "every 6h")
    await click(panel, panel.refresh_button)
    assert "Every 6 hours" in panel.schedule_text.value and panel.schedule_choice.value == "every6h"
    panel.schedule_choice.value = "off"
    await click(panel, panel.schedule_button)
    assert (await run(client.schedule))["spec"] == "off" and "Schedule: <b>Off</b>" in panel.schedule_text.value


class Clock:
    def __init__(self, now=1_800_000_000.0):  # 2027-01-15T08:00:00Z
        self.now = now

    def __call__(self):
        return self.now


async def test_a_failed_scheduled_run_shows_a_red_warning(client, notebooks, manager, tmp_path, monkeypatch):
    await run(client.set_schedule, "every 1h")
    scheduler = manager.scheduler = Scheduler(manager, Clock())

    monkeypatch.setattr(manager.config, "source_dir", str(tmp_path / "gone"))  # the source is gone: the run fails
    manager.resolve(refresh=True)

    def tick():
        assert scheduler.tick() is not None
        scheduler.wait(60)

    await run(tick)
    monkeypatch.undo()
    manager.resolve(refresh=True)

    panel = await make_panel(client)
    assert shown(panel.schedule_warning) and "color: red" in panel.schedule_warning.value
    assert "The last scheduled backup failed" in panel.schedule_warning.value
    assert "does not exist" in panel.schedule_warning.value
    assert "2027-01-15 08:00:00 UTC, <b style=\"color: red\">failed</b>" in panel.schedule_text.value
    assert "Next run: 2027-01-15 09:00:00 UTC" in panel.schedule_text.value
    assert not shown(panel.warning)  # the source is back: no other warning

    # the next run succeeds: the warning goes
    scheduler.clock.now += 3600
    await run(tick)
    await click(panel, panel.refresh_button)
    assert not shown(panel.schedule_warning) and "<b>succeeded</b>" in panel.schedule_text.value
    [backup] = await run(client.list)
    assert backup["kind"] == "scheduled" and ">scheduled<" in panel.rows.children[0].children[2].value


async def test_settings_set_from_the_panel(client, notebooks):
    panel = await make_panel(client)
    assert "none yet" in panel.settings_text.value and panel.excludes.value == "" and panel.keep_last.value == 0
    assert [value for _, value in panel.helper_image.options] == [""]  # no Docker here: nothing to choose

    panel.excludes.value = "models_cache\n*.tmp\n"
    panel.keep_last.value = 3
    await click(panel, panel.settings_button)
    assert panel.error.value == "" and panel.settings_button.icon == "check"
    settings = await run(client.settings)
    assert (settings["excludes"], settings["keep_last"], settings["kept"]) == (
        ["models_cache", "*.tmp"], 3, ["excludes", "keep_last"])
    assert "excludes, keep_last" in panel.settings_text.value

    # a bad pattern: the server's message in red, nothing kept
    panel.excludes.value = "/etc"
    await click(panel, panel.settings_button)
    assert "color: red" in panel.error.value and "not a relative pattern" in panel.error.value
    assert (await run(client.settings))["excludes"] == ["models_cache", "*.tmp"]

    # set elsewhere: shown on refresh, the form follows (once it is no longer being edited)
    panel.excludes.value = "models_cache\n*.tmp"
    await run(client.set_settings, keep_last=7)
    await click(panel, panel.refresh_button)
    assert panel.keep_last.value == 7


WARNING = "The backups are kept inside this container: 'docker rm' deletes them. Download them."


async def test_the_store_warning_stays_red_after_a_backup(client, notebooks, monkeypatch):
    from ailab_backup_ext.core import BackupManager

    status = BackupManager.status
    monkeypatch.setattr(BackupManager, "status", lambda self: {**status(self), "store_warning": WARNING})
    panel = await make_panel(client)
    assert shown(panel.store_warning) and "color: red" in panel.store_warning.value
    assert "docker rm&#x27; deletes them" in panel.store_warning.value
    await click(panel, panel.backup_button)
    assert "Backed up as" in panel.message.value
    assert shown(panel.store_warning) and "docker rm&#x27; deletes them" in panel.store_warning.value

    monkeypatch.setattr(BackupManager, "status", status)  # the store is safe: the warning goes
    await click(panel, panel.refresh_button)
    assert not shown(panel.store_warning)


async def test_folders_switched_in_the_panel_and_what_to_reload_after_a_restore(client, notebooks):
    (notebooks / "models_cache").mkdir()
    (notebooks / "models_cache" / "weights.bin").write_bytes(b"w" * 5000)
    panel = await make_panel(client)
    box = panel.in_folder
    assert "models_cache/" in box.rows.children[0].children[1].value  # the largest first
    assert "in 3 files" in box.estimate.value
    await run(setattr, box.switches["models_cache"], "value", False)
    await settled(panel)
    assert panel.error.value == ""
    assert (await run(client.settings))["excludes"] == ["models_cache"]
    assert panel.excludes.value == "models_cache"  # the Settings show it
    assert "in 2 files" in box.estimate.value

    backup = await run(client.create, "no models", wait=True)
    assert backup["result"]["excludes"] == ["models_cache"] and backup["result"]["file_count"] == 2
    (notebooks / "intro.ipynb").write_text('{"cells": [1]}')
    await click(panel, panel.refresh_button)  # the new backup is selected first
    await click(panel, panel.restore_button)
    await click(panel, panel.yes_button)
    assert "reload it there" in panel.message.value and "intro.ipynb" in panel.message.value


@pytest.mark.parametrize("worker, shown_text", [
    ({"in_use": True, "why": "the helper image has Python 3.11"}, "Runs: next to the data (helper container)"),
    ({"in_use": False, "why": "the helper image busybox has no Python 3.10+; set AILabBackup.helper_image"},
     "Runs: through the server: the helper image busybox has no Python 3.10+; set AILabBackup.helper_image"),
], ids=["worker", "streaming"])
async def test_the_panel_says_where_the_work_runs_in_docker_mode(client, notebooks, monkeypatch, worker, shown_text):
    from ailab_backup_ext.core import BackupManager

    status = BackupManager.status
    monkeypatch.setattr(BackupManager, "status", lambda self: {**status(self), "mode": "docker", "worker": worker})
    panel = await make_panel(client)
    assert shown_text in panel.status.value
    monkeypatch.setattr(BackupManager, "status", status)  # local mode: nothing runs in a container
    await click(panel, panel.refresh_button)
    assert "Runs:" not in panel.status.value
