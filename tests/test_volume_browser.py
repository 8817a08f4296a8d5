"""What is in the volume, and open documents after a restore, in the real browser: a real
`jupyter lab` subprocess driven by Chromium through Playwright.

- A folder switched off in the sidebar's "In the folder" (a real Docker volume) is missing from
  the next backup, which records that it left it out.
- A notebook open in JupyterLab during a restore made through REST (the sidebar closed) shows the
  restored content afterwards, and saving it writes no old content over the restored file: no
  "changed on disk" question.

Screenshots: tests/artifacts/sidebar-usage.png, reopen-after-restore.png.
"""

import io
import json
import os
import time

import requests

from playwright.sync_api import expect, sync_playwright

from ailab_backup_ext.archive import read_archive
from test_roundtrip import fill_volume, make_tree
from test_sidebar_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PANEL, TOKEN, _item, _shot, running_lab, \
    shown_on_failure
from treeutil import run_in_volume

SCS = "ai_lab_secure_configuration_storage.sqlite"


def _browser_page(p):
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.set_default_timeout(90_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return browser, page, errors


def _wait_job(lab, job_id):
    for _ in range(600):
        job = lab.rest("GET", "jobs", job_id).json()
        if job["state"] in ("succeeded", "failed"):
            assert job["state"] == "succeeded", job
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end")


def test_a_folder_switched_off_in_the_sidebar_is_missing_from_the_next_backup(tmp_path, docker_client, make_volume):
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=1))
    run_in_volume(docker_client, volume, "mkdir -p /v/models_cache/hub && head -c 300000 /dev/urandom > "
                                         "/v/models_cache/hub/weights.bin && echo '{}' > /v/models_cache/hub/c.json")
    with sync_playwright() as p, running_lab(tmp_path, docker_client, volume, store) as lab:
        browser, page, errors = _browser_page(p)
        try:
            with shown_on_failure(page, "sidebar-usage-failure.png"):
                page.goto(f"{lab.base}lab?token={TOKEN}")
                page.locator("#jp-main-dock-panel").wait_for()
                page.locator(f".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='{PANEL[1:]}']").click()
                panel = page.locator(PANEL)
                usage = panel.get_by_role("region", name="In the folder")
                row = usage.locator("tr[data-folder='models_cache']")
                expect(row).to_contain_text("models_cache/", timeout=90_000)
                expect(row).to_contain_text("2")  # files
                before = lab.rest("GET", "usage").json()
                expect(usage.locator(".jp-AILabBackup-estimate")).to_contain_text(
                    f"{before['estimate']['files']} files")

                switch = usage.get_by_role("checkbox", name="Back up models_cache")
                expect(switch).to_be_checked()
                switch.uncheck()
                expect(switch).not_to_be_checked()
                expect(usage.locator(".jp-AILabBackup-estimate")).to_contain_text(
                    f"{before['estimate']['files'] - 2} files")
                settings = lab.rest("GET", "settings").json()
                assert settings["excludes"] == ["models_cache"] and "excludes" in settings["kept"]
                _shot(page, usage, "sidebar-usage.png")

                panel.locator("input[name='label']").fill("without the models")
                panel.get_by_role("button", name="Back up now").click()
                item = _item(panel, "without the models")
                expect(item).to_be_visible(timeout=300_000)
                expect(item).to_contain_text("left out: models_cache")  # the backup says what it left out
            [backup] = lab.backups()
            shown = lab.rest("GET", backup["id"]).json()
            assert shown["excludes"] == ["models_cache"]
            manifest = read_archive(io.BytesIO(lab.rest("GET", backup["id"], "download").content))
            paths = {e.path for e in manifest.entries}
            assert "intro.ipynb" in paths and not [p for p in paths if p.startswith("models_cache")]
            assert backup["file_count"] == before["estimate"]["files"] - 2
            assert not errors, errors
        finally:
            browser.close()


def _notebook(marker):
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                   "source": [f"{marker} = 1"]}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5})


def _save(page, cells):
    cells.first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")


def test_a_notebook_open_during_a_rest_restore_shows_the_restored_content_and_saving_keeps_it(
        tmp_path, docker_client):
    root = tmp_path / "root"  # running_lab's Jupyter root: the folder backed up here (local mode)
    args = (f"--AILabBackup.source_dir={root}", "--AILabBackup.docker_url=none")
    with sync_playwright() as p, running_lab(tmp_path, docker_client, "unused", str(tmp_path / "store"), args) as lab:
        notebook = root / "work.ipynb"
        notebook.write_text(_notebook("RESTORED_VERSION"))
        (root / "ai_lab_secure_configuration_storage.sqlite").write_bytes(b"scs v1")
        job = lab.rest("POST", json={"label": "good"}, expect=202).json()["job"]
        backup_id = _wait_job(lab, job["id"])["backup_id"]
        notebook.write_text(_notebook("CHANGED_LATER"))
        os.utime(notebook, (time.time() + 5, time.time() + 5))  # clearly newer than the backup

        browser, page, errors = _browser_page(p)
        try:
            with shown_on_failure(page, "reopen-after-restore-failure.png"):
                page.goto(f"{lab.base}lab/tree/work.ipynb?token={TOKEN}")
                cells = page.locator(".jp-NotebookPanel .jp-Cell .cm-content")
                expect(cells.first).to_contain_text("CHANGED_LATER", timeout=90_000)
                expect(page.locator(PANEL)).to_be_hidden()  # the sidebar is closed
                # the kernel's start writes its metadata into the notebook: saved, as a user would
                idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                expect(idle).to_have_count(1, timeout=90_000)
                time.sleep(3)  # its kernel info too
                _save(page, cells)
                time.sleep(3)
                expect(page.locator(".jp-mod-dirty")).to_have_count(0)

                job = lab.rest("POST", backup_id, "restore", json={"paths": ["work.ipynb"]}, expect=202).json()["job"]
                done = _wait_job(lab, job["id"])
                assert done["result"]["restored"]["paths"] == ["work.ipynb"]
                assert "RESTORED_VERSION" in notebook.read_text()
                expect(cells.first).to_contain_text("RESTORED_VERSION", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "reopen-after-restore.png"))

                _save(page, cells)
                time.sleep(3)
                expect(page.locator(".jp-Dialog")).to_have_count(0)  # no "changed on disk" question
                saved = notebook.read_text()
                assert "RESTORED_VERSION" in saved and "CHANGED_LATER" not in saved

                # unsaved changes here: asked first; "Take the restored one" takes it
                notebook.write_text(_notebook("CHANGED_AGAIN"))
                page.get_by_role("menuitem", name="File").click()
                page.get_by_role("menuitem", name="Reload Notebook from Disk").click()
                expect(cells.first).to_contain_text("CHANGED_AGAIN", timeout=30_000)
                cells.first.click()
                page.keyboard.type("UNSAVED_EDIT = 2\n")
                page.keyboard.press("Escape")
                expect(page.locator(".jp-mod-dirty")).not_to_have_count(0)
                job = lab.rest("POST", backup_id, "restore", json={"paths": ["work.ipynb"]}, expect=202).json()["job"]
                _wait_job(lab, job["id"])
                dialog = page.locator(".jp-Dialog")
                expect(dialog).to_contain_text("unsaved changes", timeout=30_000)
                dialog.get_by_role("button", name="Take the restored one").click()
                expect(cells.first).to_contain_text("RESTORED_VERSION", timeout=30_000)
                expect(page.locator(".jp-NotebookPanel")).not_to_contain_text("UNSAVED_EDIT")

                # a restore of the SCS: the kernels of open notebooks are offered a restart
                kernels = requests.get(f"{lab.base}api/kernels", headers={"Authorization": f"token {TOKEN}"},
                                       timeout=30).json()
                assert len(kernels) == 1
                job = lab.rest("POST", backup_id, "restore", json={"paths": [SCS]}, expect=202).json()["job"]
                assert _wait_job(lab, job["id"])["result"]["restored"]["scs"] is True
                toast = page.locator(".Toastify__toast").filter(
                    has_text="Secure Configuration Storage was restored")
                expect(toast).to_contain_text("work.ipynb", timeout=30_000)
                log = tmp_path / "lab.log"
                assert f"Kernel restarted: {kernels[0]['id']}" not in log.read_text(errors="replace")
                page.get_by_role("button", name="Restart kernels").click()
                for _ in range(150):  # the notebook's kernel, started again by the server
                    if f"Kernel restarted: {kernels[0]['id']}" in log.read_text(errors="replace"):
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError("the kernel was not restarted")
            assert not errors, errors
        finally:
            browser.close()
