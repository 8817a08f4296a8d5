"""The demo notebook in a real browser: a real `jupyter lab`, Chromium through Playwright, Run All
Cells, a click on "Back up now", and the new backup appears in the panel's table; its Download link
works with the browser's cookie; "Restore" previews what it would overwrite in a scrolling box. A
screenshot of the panel, with that preview open, goes to tests/artifacts/panel.png.

CI installs Chromium from apt (scripts/test.sh); a missing browser fails this test on purpose.
"""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from restutil import STORE_WARNING as WARNING, free_port, store_warning_config, wait_for_server

PROJECT = Path(__file__).resolve().parent.parent
NOTEBOOK = PROJECT / "notebooks" / "backup_and_restore.ipynb"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TOKEN = "browser-test-token"


@contextlib.contextmanager
def running_lab(tmp_path, extra_args=()):
    """A real JupyterLab (token auth, local mode) whose root holds a copy of the demo notebook."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    (root / "my-work.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    port = free_port()
    settings = tmp_path / "settings" / "@jupyterlab"
    for plugin, values in (("apputils-extension/notification", '{"fetchNews": "false", "checkForUpdates": false}'),
                           ("notebook-extension/tracker", '{"autoStartDefaultKernel": true}')):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(values)  # no news popup, no kernel dialog
    env = {k: v for k, v in os.environ.items() if not k.startswith("AILAB_BACKUP_")}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--allow-root",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
         f"--AILabBackup.store={tmp_path / 'store'}", "--AILabBackup.docker_url=none",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *extra_args],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(server, base + "api/status", 120, lambda: (tmp_path / "lab.log").read_text()[-3000:])
        yield base, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


def run_all_cells_for_the_panel(page):
    """In the notebook open on ``page``: wait for its kernel, Run All Cells from the menu, and
    return the notebook panel (BackupPanel) the cells show; fails with the cell's error instead."""
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for()
    expect(page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")).to_have_text("Python 3 (ipykernel)",
                                                                                  timeout=90_000)
    expect(page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")).to_be_visible(
        timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    panel = page.locator(".ailab-backup-panel")
    error = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    expect(panel.or_(error).first).to_be_visible(timeout=90_000)
    assert not error.count(), "the panel's cell failed:\n" + error.first.inner_text()
    expect(panel).to_contain_text("AI-Lab Backup")
    return panel


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path) as lab:
        yield lab


def backups(base):
    response = requests.get(base + "ailab/backup", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    response.raise_for_status()
    return response.json()["backups"]


def test_demo_notebook_backs_up_from_the_browser(lab):
    base, tmp_path = lab
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1700}, accept_downloads=True)
        try:
            page.set_default_timeout(90_000)
            page.goto(f"{base}lab/tree/{NOTEBOOK.name}?token={TOKEN}")
            panel = run_all_cells_for_the_panel(page)
            expect(panel).to_contain_text("No backups yet")
            expect(panel).to_contain_text("local")

            panel.locator("input[placeholder='Label (optional)']").fill("from the browser")
            panel.locator("button", has_text="Back up now").click()
            expect(panel).to_contain_text("Backed up as", timeout=120_000)
            [backup] = backups(base)
            assert backup["label"] == "from the browser"
            row = panel.locator(f"button[title='{backup['id']}']")
            expect(row).to_be_visible()
            expect(panel).to_contain_text("from the browser")
            expect(panel.locator("button", has_text="Back up now").locator(".fa-check")).to_be_attached()

            # the Download link is relative to the page and works with the browser's cookie
            link = panel.locator("a[download]")
            assert link.get_attribute("href") == f"/ailab/backup/{backup['id']}/download"
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / "downloaded.tar.zst"
            download.value.save_as(saved)
            assert saved.stat().st_size == backup["size_bytes"]
            assert download.value.suggested_filename == backup["id"] + ".tar.zst"

            # the schedule group shows the server's schedule
            expect(panel).to_contain_text("Automatic backups")
            expect(panel).to_contain_text("Schedule: Off")

            # Restore previews first: a changed notebook is listed with its cells, in a box that scrolls
            (tmp_path / "root" / "my-work.ipynb").write_text(
                '{"cells": [{"cell_type": "markdown", "source": "new", "metadata": {}}], "metadata": {}, '
                '"nbformat": 4, "nbformat_minor": 5}')
            panel.locator("button", has_text="Restore").first.click()
            expect(panel).to_contain_text("Overwritten (1)")
            box = panel.locator(".widget-html", has_text="Overwritten (1)")
            expect(box).to_contain_text("my-work.ipynb")
            expect(box).to_contain_text("— notebook: 0 cells added, 1 removed, 0 changed")
            assert box.evaluate("e => getComputedStyle(e).overflow") == "auto"
            expect(panel.locator("select[multiple] option", has_text="my-work.ipynb")).to_be_attached()
            expect(panel.locator("button", has_text="Yes, merge")).to_be_visible()

            page.mouse.move(0, 0)
            page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
            panel.screenshot(path=str(ARTIFACTS / "panel.png"))
            panel.locator("button", has_text="Cancel").click()
            expect(panel.locator("button", has_text="Yes, merge")).to_be_hidden()
            assert len(backups(base)) == 1  # nothing was restored
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "panel-failure.png"))  # what the browser showed
            raise
        finally:
            browser.close()


@pytest.fixture
def warned_lab(tmp_path):
    """The lab, its status saying (forced by a test-only server config) that the store does not
    survive the container."""
    config = store_warning_config(tmp_path / "force_warning.py")
    with running_lab(tmp_path, (f"--config={config}",)) as lab:
        yield lab


def test_panel_store_warning_stays_red_and_times_are_utc(warned_lab):
    base, tmp_path = warned_lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1700}, timezone_id="America/New_York")
        try:
            page.set_default_timeout(90_000)
            page.goto(f"{base}lab/tree/{NOTEBOOK.name}?token={TOKEN}")
            panel = run_all_cells_for_the_panel(page)
            warning = panel.locator("p", has_text=WARNING)
            expect(warning).to_be_visible()
            assert warning.evaluate("e => getComputedStyle(e).color") == "rgb(255, 0, 0)"

            panel.locator("button", has_text="Back up now").click()
            expect(panel).to_contain_text("Backed up as", timeout=120_000)
            expect(warning).to_be_visible()  # still there right after the backup
            [backup] = backups(base)
            # UTC, as the column says, whatever the browser's zone
            expect(panel).to_contain_text("Created (UTC)")
            expect(panel.locator(f"button[title='{backup['id']}']")).to_have_text(
                backup["created"][:19].replace("T", " "))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "panel-warning-failure.png"))
            raise
        finally:
            browser.close()
