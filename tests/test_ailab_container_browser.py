"""Both UIs in a real browser (Chromium through Playwright) against the AI-Lab-like container
(tests/ailab_container.py: AI-Lab's entrypoint, user `jupyter`, password login and no token, host
network), as an AI-Lab user meets them: the JupyterLab page logged in with the password, the
"Backups" sidebar open on the left and the notebook panel (``BackupPanel()`` in a notebook cell)
in the main area of the same page.

- Started without the Docker socket, the sidebar and the panel both show the store warning (where
  the backups are and what deletes them), in red; started with it, neither shows a warning.
- A backup made by clicking "Back up now" in the panel appears in the sidebar by itself (its
  change polling), with and without the socket, no click on Refresh.
- A setting made in the sidebar's form (an exclude and the retention) is there again after
  `docker restart` of the container: in the sidebar's form and in GET /ailab/backup/settings,
  and the next backup follows it.

Screenshots on a failure: tests/artifacts/ailab-container-*-failure.png.
"""

import contextlib
import json
import os
import re
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from ailab_container import NOTEBOOKS, PASSWORD
from test_ailab_container import archive_names
from test_panel_browser import run_all_cells_for_the_panel
from test_sidebar_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _item, shown_on_failure
from test_sidebar_settings_browser import show_sidebar

PANEL_NOTEBOOK = "backup-panel.ipynb"
LOADING = 120_000  # ms: the first status of a server in Docker mode makes its listing helper (vfs copies the image)
LAB_SETTINGS = {  # the user's JupyterLab settings: no news popup over the page, no kernel dialog
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "notebook-extension/tracker": {"autoStartDefaultKernel": True},
}


def prepare_user(server):
    """What the user has in the container before opening the page: a notebook with the panel's
    cell in the notebooks folder, and their JupyterLab settings (written as the user jupyter)."""
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                           "source": ["from ailab_backup_ext import BackupPanel\n", "\n", "BackupPanel()"]}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                            "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    files = {f"{NOTEBOOKS}/{PANEL_NOTEBOOK}": json.dumps(notebook)}
    for plugin, values in LAB_SETTINGS.items():
        files[f"/home/jupyter/.jupyter/lab/user-settings/@jupyterlab/{plugin}.jupyterlab-settings"] = json.dumps(values)
    server.python("import os, json\n"
                  f"for path, text in json.loads({json.dumps(files)!r}).items():\n"
                  "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
                  "    open(path, 'w').write(text)\n")


def log_in(page, url):
    """Open ``url`` as a user does: JupyterLab asks for the password first (no token)."""
    page.goto(url)
    password = page.locator("input[type=password]")
    expect(password).to_be_visible()
    password.fill(PASSWORD)
    page.locator("#login_submit").click()
    page.locator("#jp-main-dock-panel").wait_for()


@pytest.fixture
def browser():
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    """A page that records its script errors (``page.errors``) and its requests to our REST API
    (``page.requests``: time, method, path, status, the answer's start), for a failure's report."""
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(90_000)
    page.errors, page.requests = [], []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))

    def answered(response):
        path = response.url.partition("/ailab/backup")[2]
        if "/ailab/backup" in response.url:
            try:
                body = response.text()[:200]
            except Exception as exc:  # noqa: BLE001 - a download, or the page went away
                body = repr(exc)
            page.requests.append(f"{time.strftime('%H:%M:%S')} {response.request.method} {path} "
                                 f"{response.status} {body}")

    page.on("response", answered)
    page.on("requestfailed", lambda request: page.requests.append(
        f"{time.strftime('%H:%M:%S')} {request.method} {request.url} FAILED {request.failure}"))
    return page


@contextlib.contextmanager
def told_on_failure(page, server):
    """On a failure, print what the page asked of our API, and the server's warnings and errors."""
    try:
        yield
    except BaseException:
        print("requests of the page:", *page.requests, "the server's log:", server.errors(), sep="\n")
        raise


def is_red(locator):
    red, green, blue = map(int, re.findall(r"\d+", locator.evaluate("e => getComputedStyle(e).color"))[:3])
    return red > green + 80 and red > blue + 80


@pytest.mark.parametrize("socket", [False, True], ids=["no socket", "socket"])
def test_warning_in_both_uis_and_a_panel_backup_shows_in_the_sidebar_by_itself(
        socket, ailab_server, make_volume, browser):
    env = {"AILAB_BACKUP_STORE": make_volume("ailabstore")} if socket else {}
    server = ailab_server(notebooks=make_volume(), socket=socket, env=env)
    prepare_user(server)
    client = server.backup_client()
    warning_text = client.status()["store_warning"]
    if socket:
        assert warning_text is None  # the store is a volume: it survives the container
    else:
        assert "'docker rm'" in warning_text and "deletes them" in warning_text, warning_text  # the real detection
    page = new_page(browser)
    with shown_on_failure(page, f"ailab-container-{'socket' if socket else 'no-socket'}-failure.png"), \
            told_on_failure(page, server):
        log_in(page, server.base + f"lab/tree/{PANEL_NOTEBOOK}")
        sidebar = show_sidebar(page)
        expect(sidebar).to_contain_text("No backups yet.", timeout=LOADING)
        sidebar_warning = sidebar.get_by_role("alert", name="Where the backups are")

        panel = run_all_cells_for_the_panel(page)
        expect(panel).to_contain_text("No backups yet", timeout=LOADING)
        panel_warning = panel.locator("p", has_text="deletes them")
        runs = sidebar.get_by_label("Where the work runs")
        if socket:
            expect(sidebar.get_by_role("alert")).to_have_count(0)
            expect(panel_warning).to_have_count(0)
            # the image is the server's own, with Python: the work runs next to the data, and both say so
            assert client.status()["worker"]["in_use"] is True
            expect(runs).to_have_text("next to the data (helper container)")
            expect(panel).to_contain_text("Runs: next to the data (helper container)")
        else:
            for warning in (sidebar_warning, panel_warning):
                expect(warning).to_be_visible()
                expect(warning).to_have_text(warning_text)
                assert is_red(warning)
            expect(runs).to_have_count(0)  # a local folder: no helper container to speak of
            expect(panel).not_to_contain_text("Runs:")

        # the sidebar, open beside the panel all the while, shows each backup clicked in the panel
        # without a click on Refresh (it once showed 3 backups while 4 existed)
        labels = ["clicked in the panel", "clicked again", "and a third time"]
        for count, label in enumerate(labels, 1):
            panel.locator("input[placeholder='Label (optional)']").fill(label)
            panel.locator("button", has_text="Back up now").click()
            expect(panel.get_by_text(label, exact=True)).to_be_visible(timeout=180_000)  # its table row
            expect(panel).to_contain_text("Backed up as")
            assert [b["label"] for b in client.list()] == labels[:count][::-1]
            # its refresh lists the volume store through a helper of AI-Lab's own image: on a slow
            # vfs engine (2026-12-04: 2.9 s to create a container of a 42 MB image) over 30 s
            expect(_item(sidebar, label)).to_be_visible(timeout=120_000)
            expect(sidebar.locator("li.jp-AILabBackup-item")).to_have_count(count)
        if not socket:  # still there after a successful backup, in both
            for warning in (sidebar_warning, panel_warning):
                expect(warning).to_be_visible()
                expect(warning).to_have_text(warning_text)
    assert not page.errors, f"{page.errors}\n{server.errors()}"


def test_a_setting_made_in_the_sidebar_survives_docker_restart(ailab_server, make_volume, browser, tmp_path):
    store = make_volume("ailabstore")
    server = ailab_server(notebooks=make_volume(), env={"AILAB_BACKUP_STORE": store})
    prepare_user(server)
    server.exec("sh", "-c", f"cd {NOTEBOOKS} && mkdir models_cache && echo w > models_cache/weights.bin && "
                            "echo '{}' > keep.ipynb")
    page = new_page(browser)
    with shown_on_failure(page, "ailab-container-settings-failure.png"), told_on_failure(page, server):
        log_in(page, server.base + "lab")
        settings = show_sidebar(page).get_by_role("region", name="Settings")
        excludes = settings.get_by_role("textbox", name="Leave out of backups (one pattern a line)")
        keep_last = settings.get_by_role("spinbutton", name="Keep the newest backups (0: all)")
        expect(excludes).to_have_value("", timeout=LOADING)
        excludes.click()
        page.keyboard.type("models_cache")
        keep_last.fill("3")
        settings.get_by_role("button", name="Save settings").click()
        expect(settings).to_contain_text(f"Kept beside the store ({store}): left out, retention.", timeout=60_000)

        server.restart()  # docker restart: the same container, its server started again

        # the page again (?reset: the sidebar's tab in its first state, not the layout saved
        # with the sidebar open), with a new login should the server ask for it
        page.goto(server.base + "lab?reset")
        if page.locator("input[type=password]").count():
            log_in(page, server.base + "lab?reset")
        page.locator("#jp-main-dock-panel").wait_for()
        settings = show_sidebar(page).get_by_role("region", name="Settings")
        expect(settings.get_by_role("textbox", name="Leave out of backups (one pattern a line)")).to_have_value(
            "models_cache", timeout=LOADING)
        expect(settings.get_by_role("spinbutton", name="Keep the newest backups (0: all)")).to_have_value("3")
        expect(settings).to_contain_text(f"Kept beside the store ({store}): left out, retention.")
    client = server.backup_client()
    kept = client.session.get(server.base + "ailab/backup/settings", timeout=60)
    assert kept.status_code == 200, kept.text
    kept = kept.json()
    assert (kept["excludes"], kept["keep_last"], sorted(kept["kept"])) == (
        ["models_cache"], 3, ["excludes", "keep_last"]), kept
    # and the restarted server follows them
    job = client.create("after the restart", wait=True)
    assert job["state"] == "succeeded", job
    names = archive_names(client.download(job["backup_id"], str(tmp_path)))
    assert "notebooks/keep.ipynb" in names
    assert not [n for n in names if n.startswith("notebooks/models_cache")], names
    assert not page.errors, f"{page.errors}\n{server.errors()}"
