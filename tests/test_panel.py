"""The notebook panel against a live server: its buttons, pressed, change what the REST API shows,
and the panel shows it: rows, progress, check icons, the red error, the restart hint.

The in-process server runs on the test's own event loop, so everything that may block (clicks,
waiting for the panel's background threads) runs in a thread.
"""

import asyncio
import os
import time

import pytest

from ailab_backup_ext.client import BackupClient
from ailab_backup_ext.panel import BackupPanel

SCS = "ai_lab_secure_configuration_storage.sqlite"


@pytest.fixture
def jp_server_config(tmp_path):
    return {
        "ServerApp": {"jpserver_extensions": {"ailab_backup_ext": True}, "allow_unauthenticated_access": False},
        "AILabBackup": {"store": str(tmp_path / "store"), "docker_url": "none"},
    }


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "intro.ipynb").write_text('{"cells": []}')
    (jp_root_dir / SCS).write_bytes(b"encrypted bytes")
    return jp_root_dir


@pytest.fixture
def client(jp_serverapp, jp_fetch, jp_http_port, jp_base_url):
    return BackupClient(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", token=jp_serverapp.identity_provider.token)


def run(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


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
    assert [b["id"] for b in await run(client.list)] == [b["id"] for b in panel.backups] == [safety]
    assert panel.selected == safety and panel.delete_button.icon == "check"

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
    assert orphan.backup_button.disabled and orphan.restore_button.disabled
