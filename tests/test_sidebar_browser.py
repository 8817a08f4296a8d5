"""The "Backups" sidebar end to end: a real `jupyter lab` subprocess backing up a real Docker volume
into a store volume, driven by Chromium through Playwright.

Back up with a label (the progress bar shows, the job ends, the backup is listed), download it
(the bytes equal the stored archive), upload the downloaded file again after a REST delete, restore
it with "replace" after a change in the volume (the volume is exactly as before), delete it with
confirmation. Screenshots of the sidebar in the light and the dark theme go to tests/artifacts/.

CI installs Chromium from apt (scripts/test.sh); a missing browser fails this test on purpose.
"""

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from test_roundtrip import fill_volume, make_tree
from restutil import free_port, wait_for_server
from treeutil import HELPER_IMAGE, our_helpers, run_in_volume, volume_snapshot

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TOKEN = "sidebar-browser-test-token"
LABEL = "before the upgrade"
PANEL = "#ailab-backup-panel"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stop(server):
    """SIGTERM (jupyter cancels its jobs and removes their helpers), then SIGKILL of its group."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)  # the group of the server started here, nothing else
        server.wait(30)


class Lab:
    def __init__(self, base, volume, store, tmp_path):
        self.base, self.volume, self.store, self.tmp_path = base, volume, store, tmp_path

    def rest(self, method, *path, expect=200, **kwargs):
        """A token-authenticated request to /ailab/backup/..."""
        url = self.base + "/".join(("ailab/backup",) + path)
        response = requests.request(method, url, headers={"Authorization": f"token {TOKEN}"}, timeout=120, **kwargs)
        assert response.status_code == expect, (method, url, response.status_code, response.text[:500])
        return response

    def backups(self):
        return self.rest("GET").json()["backups"]


@pytest.fixture
def lab(tmp_path, docker_client, make_volume):
    """A real JupyterLab (token auth) backing up a filled Docker volume into a store volume."""
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=30))
    with running_lab(tmp_path, docker_client, volume, store) as lab:
        yield lab


@contextlib.contextmanager
def running_lab(tmp_path, docker_client, volume, store, extra_args=()):
    """Start `jupyter lab` (token auth) on a free port for the volume and the store (and
    ``extra_args``); stop it after, and check that it left no helper container behind."""
    root = tmp_path / "root"
    root.mkdir()
    settings = tmp_path / "settings" / "@jupyterlab"
    for plugin, values in (("apputils-extension/notification", '{"fetchNews": "false", "checkForUpdates": false}'),):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(values)  # no news popup
    env = {k: v for k, v in os.environ.items() if not k.startswith("AILAB_BACKUP_")}
    env["AILAB_BACKUP_HELPER_IMAGE"] = HELPER_IMAGE
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    port = free_port()
    log_path = tmp_path / "lab.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--allow-root",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}",
         f"--AILabBackup.volume={volume}", f"--AILabBackup.store={store}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *extra_args],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(server, base + "api/status", 180, lambda: log_path.read_text(errors="replace")[-3000:])
        lab = Lab(base, volume, store, tmp_path)
        lab.pid = server.pid  # its helpers are labelled with it
        yield lab
    finally:
        _stop(server)
        log.close()
        # the server's helper containers are labelled with its pid (os.execvp keeps ours)
        left = our_helpers(docker_client, server.pid)
        for container in left:
            container.remove(force=True)
        assert not left, f"the server left helper containers behind: {[c.id[:12] for c in left]}"


@pytest.fixture
def page(lab):
    """A Chromium page and the list of its uncaught script errors; the browser is always closed."""
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page.set_default_timeout(90_000)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()


def _run_command_from_palette(page, text):
    palette = page.locator(".lm-CommandPalette")
    search = palette.locator("input.lm-CommandPalette-input")
    for attempt in range(3):
        page.locator("body").press("Control+Shift+C")
        try:
            expect(search).to_be_focused(timeout=10_000)
            break
        except AssertionError:
            # on a busy machine the first key press can come before JupyterLab is ready for it
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    search.fill(text)
    palette.locator(".lm-CommandPalette-item", has_text=text).first.click()


def _confirm(page, button):
    """Press a button of JupyterLab's modal dialog and wait until the dialog is gone."""
    dialog = page.locator(".jp-Dialog")
    dialog.locator(".jp-Dialog-footer button", has_text=button).click()
    expect(dialog).to_have_count(0)


def _watch_progress_bars(page):
    """Record every progress bar the sidebar shows, however short-lived: (aria-label, value)."""
    page.evaluate("""panel => {
        window.__ailabBars = [];
        const seen = () => {
            for (const bar of document.querySelectorAll(panel + ' [role=progressbar]')) {
                window.__ailabBars.push([bar.getAttribute('aria-label'), bar.getAttribute('aria-valuenow')]);
            }
        };
        window.__ailabObserver?.disconnect();
        window.__ailabObserver = new MutationObserver(seen);
        window.__ailabObserver.observe(document.querySelector(panel),
            {subtree: true, childList: true, attributes: true, characterData: true});
    }""", PANEL)


def _bars(page):
    return page.evaluate("window.__ailabBars")


def _item(panel, label):
    """The list entry whose label is exactly ``label``."""
    exact = panel.page.locator(".jp-AILabBackup-itemLabel", has_text=re.compile(f"^{re.escape(label)}$"))
    return panel.locator("li.jp-AILabBackup-item").filter(has=exact)


def _shot(page, panel, name):
    page.mouse.move(1200, 800)  # no hover effect in the picture
    panel.screenshot(path=str(ARTIFACTS / name), animations="disabled")


@contextlib.contextmanager
def shown_on_failure(page, name):
    """On a failure, a screenshot of what the browser showed (ARTIFACTS/name)."""
    try:
        yield
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / name))
        raise


def test_sidebar_backup_download_upload_restore_delete(lab, page, docker_client):
    page, errors = page
    with shown_on_failure(page, "sidebar-failure.png"):
        _scenario(lab, page, errors, docker_client)


def _scenario(lab, page, errors, docker_client):
    before = volume_snapshot(docker_client, lab.volume)
    page.goto(f"{lab.base}lab?token={TOKEN}")
    page.locator("#jp-main-dock-panel").wait_for()

    # the sidebar's tab is in the left area; the palette command opens it and focuses the label
    tab = page.locator(f".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='{PANEL[1:]}']")
    expect(tab).to_be_visible()
    expect(tab).to_have_attribute("title", "Backups")
    _run_command_from_palette(page, "Open backups")
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    expect(tab).to_have_class(re.compile(r"\blm-mod-current\b"))
    label_input = panel.locator("input[name='label']")
    expect(label_input).to_be_focused()

    # the status: Docker mode, the configured volumes
    status = panel.get_by_role("region", name="Status")
    expect(status).to_contain_text("Docker volume")
    expect(status).to_contain_text(f"{lab.volume} (volume)")
    expect(status).to_contain_text(f"{lab.store} (volume)")
    expect(status.locator("dd.jp-AILabBackup-ok")).to_contain_text("reachable")
    expect(panel).to_contain_text("No backups yet.")
    expect(panel.locator("[role=alert]")).to_have_count(0)

    # back up now, with a label: a progress bar while it runs, then the backup in the list
    _watch_progress_bars(page)
    label_input.fill(LABEL)
    back_up = panel.get_by_role("button", name="Back up now")
    back_up.click()
    item = _item(panel, LABEL)
    expect(item).to_be_visible(timeout=300_000)
    expect(panel.get_by_role("progressbar")).to_have_count(0)
    bars = _bars(page)
    assert bars and {name for name, _ in bars} == {"backup progress"}, bars
    expect(page.locator(".jp-toast-message, .Toastify__toast").filter(has_text="Backup finished.")).not_to_have_count(0)
    expect(back_up).to_be_enabled()
    expect(label_input).to_have_value("")
    [backup] = lab.backups()
    assert backup["label"] == LABEL and backup["kind"] == "manual"
    expect(item).to_contain_text(f"{backup['file_count']} files")
    expect(item.locator(".jp-AILabBackup-itemLabel")).to_have_attribute("title", backup["id"])
    expect(panel.locator("[role=alert]")).to_have_count(0)
    stored = lab.rest("GET", backup["id"]).json()["manifest"]

    # download through the UI: the same bytes as the stored archive
    with page.expect_download() as download:
        item.get_by_role("link", name=f"Download {LABEL}").click()
    received = lab.tmp_path / "downloaded"
    download.value.save_as(received)
    assert download.value.failure() is None
    assert download.value.suggested_filename == stored["archive"]
    data = received.read_bytes()
    assert data == lab.rest("GET", backup["id"], "download").content
    assert len(data) == backup["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == stored["sha256"]

    # deleted behind the sidebar's back: refresh shows it gone; the upload brings it back
    lab.rest("DELETE", backup["id"], expect=204)
    panel.get_by_role("button", name="Refresh status and list").click()
    expect(item).to_have_count(0)
    expect(panel).to_contain_text("No backups yet.")
    panel.get_by_role("region", name="Upload a backup").locator("input[type=file]").set_input_files(received)
    expect(item).to_be_visible(timeout=300_000)
    [uploaded] = lab.backups()
    assert uploaded["label"] == LABEL and uploaded["kind"] == "uploaded"
    assert lab.rest("GET", uploaded["id"]).json()["manifest"]["sha256"] == stored["sha256"]
    expect(item.locator(".jp-AILabBackup-itemLabel")).to_have_attribute("title", uploaded["id"])
    expect(panel.locator("[role=alert]")).to_have_count(0)

    _shot(page, panel, "sidebar-light.png")
    assert page.evaluate("document.body.dataset.jpThemeLight") == "true"

    # the dark theme, through the Settings menu
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
    page.locator(".lm-Menu-item", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^JupyterLab Dark$")).first.click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-name", "JupyterLab Dark")
    page.wait_for_timeout(500)  # the theme's CSS applied
    _shot(page, panel, "sidebar-dark.png")

    # a notebook changed, one added, a folder gone: restore with "replace" brings back the backup
    run_in_volume(docker_client, lab.volume,
                  "echo changed > /v/intro.ipynb && echo mine > /v/new.ipynb && rm -r /v/empty")
    assert volume_snapshot(docker_client, lab.volume) != before
    _watch_progress_bars(page)
    item.get_by_role("button", name=f"Restore {LABEL}").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-Dialog-header")).to_contain_text("Restore backup")
    expect(dialog.locator("input[value='merge']")).to_be_checked()  # the safe mode is the default
    dialog.locator("input[value='replace']").check()
    expect(dialog).to_contain_text("Replace removes every file that is not in this backup")
    dialog.screenshot(path=str(ARTIFACTS / "sidebar-restore-dialog-dark.png"), animations="disabled")
    _confirm(page, "Restore")
    try:  # a picture of the progress bar, when the restore is still running (no assertion)
        panel.get_by_role("progressbar").wait_for(timeout=10_000)
        panel.screenshot(path=str(ARTIFACTS / "sidebar-progress-dark.png"))
    except PlaywrightError:
        pass
    hint = panel.get_by_role("status")  # the SCS was restored: restart the kernels
    expect(hint).to_contain_text("Restart the kernels", timeout=300_000)
    expect(panel.get_by_role("progressbar")).to_have_count(0)
    bars = _bars(page)
    assert bars and {name for name, _ in bars} == {"restore progress"}, bars
    expect(page.locator(".jp-toast-message, .Toastify__toast").filter(has_text="Restore finished")).not_to_have_count(0)
    assert volume_snapshot(docker_client, lab.volume) == before
    panel.get_by_role("button", name="Dismiss the restore hint").click()
    expect(hint).to_have_count(0)
    # a safety backup of the replaced state (taken before a restore, when the server does) is listed
    others = [b for b in lab.backups() if b["id"] != uploaded["id"]]
    assert all(b["kind"] == "safety" for b in others), others
    for other in others:  # tagged, so that they are told apart from the user's own backups
        expect(_item(panel, other["label"] or "Unlabelled backup").locator(".jp-AILabBackup-tag")).to_have_text(
            "safety")
    expect(panel.locator("li.jp-AILabBackup-item")).to_have_count(1 + len(others))

    # delete through the UI: Cancel keeps it, Delete removes it
    item.get_by_role("button", name=f"Delete {LABEL}").click()
    expect(page.locator(".jp-Dialog")).to_contain_text(f'Delete the backup "{LABEL}"')
    _confirm(page, "Cancel")
    expect(item).to_be_visible()
    assert uploaded["id"] in [b["id"] for b in lab.backups()]
    item.get_by_role("button", name=f"Delete {LABEL}").click()
    _confirm(page, "Delete")
    expect(item).to_have_count(0)
    expect(panel.locator("li.jp-AILabBackup-item")).to_have_count(len(others))
    if not others:
        expect(panel).to_contain_text("No backups yet.")
    assert lab.backups() == others
    kept = {f for b in others for f in (f"data/{lab.rest('GET', b['id']).json()['manifest']['archive']}",
                                        f"meta/{b['id']}.json")}
    assert set(run_in_volume(docker_client, lab.store, "cd /v && find . -type f").split()) == {
        f"./{f}" for f in kept}
    expect(panel.locator("[role=alert]")).to_have_count(0)
    assert not errors, errors


def _jupyter(*args):
    result = subprocess.run([sys.executable, "-m", "jupyter", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return ANSI.sub("", result.stdout + result.stderr)


def test_extensions_are_installed_enabled_and_ok():
    labext = _jupyter("labextension", "list")
    assert re.search(r"^\s*ailab-backup-ext v\S+ enabled OK\b", labext, re.M), labext
    server = _jupyter("server", "extension", "list")
    assert re.search(r"^\s*ailab_backup_ext enabled\s*$", server, re.M), server
    assert re.search(r"^\s*ailab_backup_ext \S+ OK\s*$", server, re.M), server
