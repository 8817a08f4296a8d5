"""The safe restore and the schedule in the "Backups" sidebar end to end: a real `jupyter lab`
subprocess backing up a real Docker volume, driven by Chromium through Playwright.

Back up; change a notebook (a cell added), a file in a folder, and add stray files; the restore
dialog previews it (merge, then replace: the notebook's cell summary under overwritten, the stray
files under removed); choosing only one folder (by keyboard) updates the preview from the server;
the restore changes that folder only; "Undo last restore" (the palette command, cancelled, then the
sidebar's button) brings back exactly the state before the restore. Then the schedule: a bad spec
is refused with the server's message, "every 6 hours" is saved (checked through REST), and the
scheduled run shows in the sidebar. Screenshots: tests/artifacts/sidebar-preview.png and
sidebar-schedule.png.
"""

import json
import os
import time

import pytest
from playwright.sync_api import expect

from test_roundtrip import fill_volume, make_tree
from test_safe_restore import notebook
from test_sidebar_browser import (  # noqa: F401 - page is a fixture used here
    ARTIFACTS,
    PANEL,
    TOKEN,
    _confirm,
    _item,
    _run_command_from_palette,
    _shot,
    page,
    running_lab,
    shown_on_failure,
)
from treeutil import run_in_volume, volume_snapshot

LABEL = "before the experiment"
FOLDER = "private"
CELLS = ("import pandas", "df = load()", "df.plot()")


@pytest.fixture
def lab(tmp_path, docker_client, make_volume):
    """JupyterLab backing up a small volume with a notebook of three cells."""
    volume, store = make_volume(), make_volume("ailabstore")
    tree = make_tree(str(tmp_path / "tree"), big_mb=1)
    with open(os.path.join(tree, "analysis.ipynb"), "w") as f:
        f.write(notebook(*CELLS))
    fill_volume(docker_client, volume, tree)
    with running_lab(tmp_path, docker_client, volume, store) as lab:
        yield lab


def _record_previews(page):
    """The bodies of the dry runs the page sends, in order."""
    bodies = []

    def seen(request):
        if request.method == "POST" and request.url.split("?")[0].endswith("/restore"):
            body = json.loads(request.post_data or "{}")
            if body.get("dry_run"):
                bodies.append(body)

    page.on("request", seen)
    return bodies


def _under(path, folder=FOLDER):
    return path == folder or path.startswith(folder + "/")


def test_sidebar_preview_selective_restore_undo_schedule(lab, page, docker_client):
    page, errors = page
    with shown_on_failure(page, "sidebar-safe-restore-failure.png"):
        _scenario(lab, page, errors, docker_client)


def _scenario(lab, page, errors, docker_client):
    page.goto(f"{lab.base}lab?token={TOKEN}")
    page.locator("#jp-main-dock-panel").wait_for()
    _run_command_from_palette(page, "Open backups")
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    schedule = panel.get_by_role("region", name="Schedule")
    expect(schedule).to_contain_text("Off")
    expect(schedule).to_contain_text("never")

    # a backup of the first state
    panel.locator("input[name='label']").fill(LABEL)
    panel.get_by_role("button", name="Back up now").click()
    item = _item(panel, LABEL)
    expect(item).to_be_visible(timeout=300_000)
    expect(item.locator(".jp-AILabBackup-tag")).to_have_count(0)  # the user's own: no tag
    [backup] = lab.backups()
    original = volume_snapshot(docker_client, lab.volume)

    # a cell added to the notebook, a changed file in the folder, stray files inside and outside it
    run_in_volume(docker_client, lab.volume, f"""
        cd /v && printf '%s' '{notebook(*CELLS, "print(1)")}' > analysis.ipynb && echo mine > stray.txt &&
        echo broken > {FOLDER}/secret.txt && echo extra > {FOLDER}/extra.txt""")
    changed = volume_snapshot(docker_client, lab.volume)

    # the dialog previews the restore before anything happens: merge first (the default)
    previews = _record_previews(page)
    item.get_by_role("button", name=f"Restore {LABEL}").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-Dialog-header")).to_contain_text("Restore backup")
    expect(dialog.locator("input[value='merge']")).to_be_checked()
    preview = dialog.get_by_role("region", name="Preview")
    overwritten = preview.get_by_role("list", name="Overwritten")
    removed = preview.get_by_role("list", name="Removed")
    expect(overwritten.locator("li")).to_have_count(2, timeout=120_000)
    notebook_item = overwritten.locator("li", has_text="analysis.ipynb")
    expect(notebook_item).to_contain_text("restoring removes 1 cell")  # the cell added since the backup
    expect(overwritten.locator("li", has_text=f"{FOLDER}/secret.txt")).to_have_count(1)
    expect(removed).to_have_count(0)  # merge removes nothing
    expect(preview).to_contain_text("none removed (merge)")
    restore_button = dialog.locator(".jp-Dialog-footer button", has_text="Restore")
    expect(restore_button).to_be_enabled()

    # replace: the stray files are listed as removed
    dialog.locator("input[value='replace']").check()
    expect(dialog).to_contain_text("Replace removes every file that is not in this backup")
    expect(removed.locator("li")).to_have_count(2)
    expect(removed.locator("li", has_text="stray.txt")).to_have_count(1)
    expect(removed.locator("li", has_text=f"{FOLDER}/extra.txt")).to_have_count(1)
    expect(overwritten.locator("li")).to_have_count(2)
    expect(notebook_item).to_contain_text("restoring removes 1 cell")
    summary = preview.get_by_label("Summary")
    expect(summary).to_contain_text("0 added")
    expect(summary).to_contain_text("2 overwritten")
    expect(summary).to_contain_text("2 removed")
    assert previews and all(p["mode"] == "replace" and "paths" not in p for p in previews), previews

    # the tree of the changed paths: everything chosen; paths only in the volume now are shown
    # (removed with their folder) but cannot be chosen alone
    tree = dialog.get_by_role("list", name="Files to restore")

    def box(name):
        return tree.get_by_role("checkbox", name=name, exact=True)

    everything = box("Everything")
    for name in ("Everything", FOLDER, f"{FOLDER}/secret.txt", "analysis.ipynb"):
        expect(box(name)).to_be_checked()
        expect(box(name)).to_be_enabled()
    for name in ("stray.txt", f"{FOLDER}/extra.txt"):
        expect(box(name)).to_be_checked()
        expect(box(name)).to_be_disabled()
    page.mouse.move(5, 5)
    dialog.locator(".jp-Dialog-content").screenshot(path=str(ARTIFACTS / "sidebar-preview.png"),
                                                    animations="disabled")

    # nothing chosen: the Restore button waits
    everything.click()
    expect(everything).not_to_be_checked()
    expect(preview).to_contain_text("Nothing is chosen")
    expect(restore_button).to_be_disabled()

    # only the folder, by keyboard: its children follow, the preview is asked again for it alone
    box(FOLDER).focus()
    page.keyboard.press("Space")
    expect(box(FOLDER)).to_be_checked()
    expect(box(f"{FOLDER}/secret.txt")).to_be_checked()
    expect(box(f"{FOLDER}/extra.txt")).to_be_checked()  # replace removes it with the folder
    expect(box("analysis.ipynb")).not_to_be_checked()
    expect(box("stray.txt")).not_to_be_checked()
    expect(everything).not_to_be_checked()
    assert everything.evaluate("el => el.indeterminate")
    expect(overwritten.locator("li")).to_have_count(1, timeout=120_000)
    expect(overwritten).to_contain_text(f"{FOLDER}/secret.txt")
    expect(removed.locator("li")).to_have_count(1)
    expect(removed).to_contain_text(f"{FOLDER}/extra.txt")
    expect(preview).not_to_contain_text("analysis.ipynb")
    expect(preview).not_to_contain_text("stray.txt")
    expect(preview).to_have_attribute("aria-busy", "false")
    expect(dialog).to_contain_text("Replace removes every file that is not in this backup from the chosen folders")
    assert previews[-1] == {"mode": "replace", "paths": [FOLDER], "dry_run": True}, previews
    assert volume_snapshot(docker_client, lab.volume) == changed  # previews change nothing

    # restore: only the folder changes, back to the backup
    _confirm(page, "Restore")
    done = panel.get_by_role("status")
    expect(done).to_contain_text(f"{FOLDER} restored: 1 file.", timeout=300_000)
    expect(panel.get_by_role("progressbar")).to_have_count(0)
    after = volume_snapshot(docker_client, lab.volume)
    assert {p: v for p, v in after.items() if _under(p)} == {p: v for p, v in original.items() if _under(p)}
    outside = sorted(p for p in set(after) | set(changed) if not _under(p) and after.get(p) != changed.get(p))
    # every other entry as before, the notebooks folder itself too: content, mode, owner, time
    assert outside == [], outside
    assert after != changed

    # the safety backup taken first is listed, tagged
    safety = [b for b in lab.backups() if b["kind"] == "safety"]
    assert len(safety) == 1, lab.backups()
    expect(_item(panel, safety[0]["label"] or "Unlabelled backup").locator(".jp-AILabBackup-tag")).to_have_text(
        "safety")

    # undo: the palette command asks first (Cancel changes nothing) ...
    _run_command_from_palette(page, "Undo last restore")
    expect(page.locator(".jp-Dialog")).to_contain_text("Put the notebooks folder back exactly as it was")
    _confirm(page, "Cancel")
    assert volume_snapshot(docker_client, lab.volume) == after
    # ... the sidebar's button, confirmed, brings back exactly the state before the restore
    undo = done.get_by_role("button", name="Undo last restore")
    expect(undo).to_be_enabled()
    undo.click()
    _confirm(page, "Undo")
    expect(panel.get_by_role("status")).to_contain_text("The last restore was undone.", timeout=300_000)
    expect(panel.get_by_role("progressbar")).to_have_count(0)
    expect(panel.get_by_role("status").get_by_role("button", name="Undo last restore")).to_have_count(0)
    assert volume_snapshot(docker_client, lab.volume) == changed
    expect(page.locator(".jp-toast-message, .Toastify__toast").filter(has_text="Undo finished")).not_to_have_count(0)
    assert backup["id"] in [b["id"] for b in lab.backups()]

    # the schedule: a bad spec is refused with the server's message, nothing saved
    choice = schedule.get_by_role("combobox", name="Back up automatically")
    save = schedule.get_by_role("button", name="Save")
    expect(save).to_be_disabled()  # nothing changed yet
    choice.select_option("custom")
    schedule.get_by_role("textbox", name="Schedule spec").fill("every banana")
    save.click()
    expect(schedule.get_by_role("alert")).to_contain_text("Unknown schedule")
    assert lab.rest("GET", "schedule").json()["spec"] == "off"
    # every 6 hours, by keyboard: saved, shown, and what the server has
    choice.focus()
    choice.select_option("every6h")
    expect(schedule.get_by_role("alert")).to_have_count(0)
    expect(save).to_be_enabled()
    choice.press("Tab")
    expect(save).to_be_focused()
    page.keyboard.press("Enter")
    expect(schedule.locator("dd").first).to_have_text("Every 6 hours")
    expect(save).to_be_disabled()
    saved = lab.rest("GET", "schedule").json()
    assert saved["spec"] == "every 6h" and saved["enabled"] is True and saved["next"], saved
    assert lab.rest("GET", "status").json()["schedule"]["spec"] == "every 6h"

    # the first run is due at once (the server looks every 30 s): it shows after a refresh
    deadline = time.monotonic() + 240
    while not (last := lab.rest("GET", "schedule").json()["last"]):
        assert time.monotonic() < deadline, "the scheduled backup did not run"
        time.sleep(2)
    assert last["outcome"] in ("succeeded", "skipped"), last
    panel.get_by_role("button", name="Refresh status and list").click()
    expect(schedule).to_contain_text("succeeded" if last["outcome"] == "succeeded" else "skipped")
    expect(schedule.get_by_role("alert")).to_have_count(0)
    if last["outcome"] == "succeeded":
        scheduled = [b for b in lab.backups() if b["kind"] == "scheduled"]
        assert [b["id"] for b in scheduled] == [last["backup_id"]], scheduled
        expect(_item(panel, scheduled[0]["label"] or "Unlabelled backup").locator(
            ".jp-AILabBackup-tag")).to_have_text("scheduled")
    _shot(page, panel, "sidebar-schedule.png")
    assert not errors, errors
