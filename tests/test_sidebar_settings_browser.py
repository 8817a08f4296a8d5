"""The sidebar as an AI-Lab user meets it, end to end: a real `jupyter lab` subprocess backing up a
real Docker volume into a store volume, driven by Chromium (in the America/New_York zone) through
Playwright.

- The store warning (forced here by a test-only server config; the real detection is tested with
  the AI-Lab-like container) shows in red and stays, also right after a backup.
- A backup made through REST (as the notebook panel makes it) and one made by the CLI, while the
  sidebar is open, appear in it without a click on Refresh.
- Times are UTC, labelled "UTC", whatever the browser's zone.
- Settings made in the sidebar (helper image from the offered list, excludes, retention) are
  checked by the server, kept beside the store, and are there again after a server restart.

Screenshot: tests/artifacts/sidebar-settings.png.
"""

import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
from playwright.sync_api import expect, sync_playwright

from test_roundtrip import fill_volume, make_tree
from test_sidebar_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PANEL,
    TOKEN,
    _item,
    _shot,
    running_lab,
    shown_on_failure,
)
from restutil import STORE_WARNING as WARNING, store_warning_config
from treeutil import HELPER_IMAGE

def utc(created):
    """How both UIs show a server time: '2026-12-01 21:30:05 UTC'."""
    return created[:19].replace("T", " ") + " UTC"


@pytest.fixture
def other_image(docker_client):
    name = f"ailab-backup-other-{uuid.uuid4().hex[:8]}:test"
    docker_client.images.get(HELPER_IMAGE).tag(name)
    yield name
    docker_client.images.remove(name, noprune=True)


@pytest.fixture
def setup(tmp_path, docker_client, make_volume, other_image):
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=1))
    config = store_warning_config(tmp_path / "force_warning.py")
    args = (f"--config={config}", f"--AILabBackup.helper_image_choices={other_image}")
    return volume, store, args


def _open_sidebar(page, base):
    page.goto(f"{base}lab?token={TOKEN}")
    page.locator("#jp-main-dock-panel").wait_for()
    return show_sidebar(page)


def show_sidebar(page):
    """Open the "Backups" sidebar of the JupyterLab page, by its tab on the left; returns it."""
    page.locator(f".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='{PANEL[1:]}']").click()
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    return panel


def test_sidebar_warning_updates_by_itself_utc_and_settings_that_survive_a_restart(
        tmp_path, docker_client, setup, other_image):
    volume, store, args = setup
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400}, timezone_id="America/New_York")
            page.set_default_timeout(90_000)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            assert page.evaluate("new Date('2026-12-01T21:30:05Z').getHours()") == 16  # the zone is in effect
            with shown_on_failure(page, "sidebar-settings-failure.png"):
                (tmp_path / "first").mkdir()
                (tmp_path / "again").mkdir()
                with running_lab(tmp_path / "first", docker_client, volume, store, args) as lab:
                    _first_run(lab, page, errors, other_image)
                with running_lab(tmp_path / "again", docker_client, volume, store, args) as lab:
                    _after_restart(lab, page, other_image)
            assert not errors, errors
        finally:
            browser.close()


def _first_run(lab, page, errors, other_image):
    panel = _open_sidebar(page, lab.base)
    # our build is the one served: it has the settings
    settings = panel.get_by_role("region", name="Settings")
    expect(settings).to_be_visible()
    warning = panel.get_by_role("alert", name="Where the backups are")
    expect(warning).to_have_text(WARNING)
    red, green, blue = map(int, re.findall(r"\d+", warning.evaluate("e => getComputedStyle(e).color"))[:3])
    assert red > green + 80 and red > blue + 80, (red, green, blue)  # in red
    expect(panel).to_contain_text("No backups yet.")

    # a backup through REST, as the notebook panel makes it: it shows up by itself
    job = lab.rest("POST", json={"label": "made through REST"}, expect=202).json()["job"]
    item = _item(panel, "made through REST")
    expect(item).to_be_visible(timeout=120_000)
    done = lab.rest("GET", "jobs", job["id"]).json()
    assert done["state"] == "succeeded", done
    [backup] = lab.backups()
    # times in UTC, labelled, although the browser is in New York
    expect(item.locator("time")).to_have_text(utc(backup["created"]))
    expect(warning).to_have_text(WARNING)  # still there right after the backup

    # a backup by the command line, another process writing into the store volume: shown too
    env = {**os.environ, "AILAB_BACKUP_HELPER_IMAGE": HELPER_IMAGE}
    cli = subprocess.run([sys.executable, "-m", "ailab_backup_ext.cli", "--volume", lab.volume, "--store",
                          lab.store, "create", "--label", "made by the CLI"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    expect(_item(panel, "made by the CLI")).to_be_visible(timeout=60_000)
    expect(panel.locator("li.jp-AILabBackup-item")).to_have_count(2)

    # settings: the offered images only; absent ones cannot be chosen
    image = settings.get_by_role("combobox", name="Helper image")
    offered = image.locator("option").evaluate_all("os => os.map(o => [o.value, o.disabled])")
    assert [v for v, _ in offered] == ["", HELPER_IMAGE, other_image, "ubuntu"], offered
    save = settings.get_by_role("button", name="Save settings")
    expect(save).to_be_disabled()
    # a bad pattern: the server's message, nothing kept
    excludes = settings.get_by_role("textbox", name="Leave out of backups (one pattern a line)")
    excludes.fill("../outside")
    save.click()
    expect(settings.get_by_role("alert")).to_contain_text("not a relative pattern")
    assert lab.rest("GET", "settings").json()["kept"] == []
    image.select_option(other_image)
    excludes.fill("models_cache\n*.tmp")
    settings.get_by_role("spinbutton", name="Keep the newest backups (0: all)").fill("5")
    save.click()
    expect(settings).to_contain_text(f"Kept beside the store ({lab.store}): helper image, left out, retention.",
                                     timeout=60_000)
    kept = lab.rest("GET", "settings").json()
    assert (kept["helper_image"], kept["excludes"], kept["keep_last"]) == (other_image, ["models_cache", "*.tmp"], 5)
    expect(save).to_be_disabled()
    expect(settings.get_by_role("alert")).to_have_count(0)
    _shot(page, panel, "sidebar-settings.png")


def _after_restart(lab, page, other_image):
    panel = _open_sidebar(page, lab.base)
    settings = panel.get_by_role("region", name="Settings")
    expect(settings.get_by_role("combobox", name="Helper image")).to_have_value(other_image)
    expect(settings.get_by_role("textbox", name="Leave out of backups (one pattern a line)")).to_have_value(
        "models_cache\n*.tmp")
    expect(settings.get_by_role("spinbutton", name="Keep the newest backups (0: all)")).to_have_value("5")
    # the new server uses them: its backup's helpers come from the chosen image
    since = time.time()
    lab.rest("POST", json={"label": "after the restart"}, expect=202)
    expect(_item(panel, "after the restart")).to_be_visible(timeout=120_000)
    events = lab_helper_images(lab, since)
    assert events == {other_image}, events


def lab_helper_images(lab, since):
    """The images of the helper containers the lab's server created since ``since``."""
    import docker

    owner = f"ailab-backup.owner={socket.gethostname()}:{lab.pid}"
    events = docker.from_env().api.events(
        since=f"{since:.9f}", until=f"{time.time():.9f}", decode=True,
        filters={"type": "container", "event": "create", "label": ["ailab-backup.helper=1", owner]})
    return {e["Actor"]["Attributes"]["image"] for e in events}
