"""The sidebar with a second copy off the machine, end to end: a real `jupyter lab` subprocess backing
up a real Docker volume into a store volume, with ``copy_to`` a real S3 server (rclone serve s3),
driven by Chromium through Playwright.

- The encryption key is made in the sidebar: asked first, then shown once, with "save this key"
  and a download; the dialog cannot be closed as saved before the tick. The downloaded file holds
  the key of the server's key file; no key is in the notebooks volume or the store.
- A backup is shown held "here + off the machine"; "Delete here only" leaves it "only off the
  machine"; a restore (replace) then reads the encrypted copy off the machine, and the volume
  equals the backup.
- Without the key file, the sidebar says in red which file it needs, and so does the preview.
- A backup whose copy off the machine was deleted is copied again with one action.

Screenshots: tests/artifacts/sidebar-offsite.png, sidebar-key-dialog.png.
"""

import pytest
from playwright.sync_api import expect

from s3util import ACCESS_KEY, SECRET_KEY
from test_roundtrip import fill_volume, make_tree
from test_sidebar_browser import (  # noqa: F401 - page is a fixture used here
    ARTIFACTS,
    PANEL,
    TOKEN,
    _confirm,
    _item,
    _shot,
    page,
    running_lab,
    shown_on_failure,
)
from treeutil import run_in_volume, volume_snapshot

LABEL = "kept twice"


@pytest.fixture
def lab(tmp_path, docker_client, make_volume, s3_server, s3_bucket):
    """A real JupyterLab backing up a filled volume into a store volume, copying to S3."""
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, make_tree(str(tmp_path / "tree"), big_mb=2))
    key_file = tmp_path / "keys" / "age.key"
    args = (f"--AILabBackup.copy_to=s3://{s3_bucket}/ailab", f"--AILabBackup.s3_endpoint_url={s3_server.url}",
            "--AILabBackup.s3_region=us-east-1", "--AILabBackup.s3_timeout=10",
            f"--AILabBackup.age_identity_file={key_file}", "--AILabBackup.safety_backup=False")
    with running_lab(tmp_path, docker_client, volume, store, extra_args=args) as lab:
        lab.key_file, lab.bucket = key_file, s3_bucket
        yield lab


def test_sidebar_key_where_delete_here_and_restore_from_the_copy_off_the_machine(lab, page, docker_client,
                                                                                 s3_server):
    page, errors = page
    with shown_on_failure(page, "sidebar-offsite-failure.png"):
        _scenario(lab, page, errors, docker_client, s3_server)


def _scenario(lab, page, errors, docker_client, s3_server):
    before = volume_snapshot(docker_client, lab.volume)
    page.goto(f"{lab.base}lab?token={TOKEN}")
    page.locator("#jp-main-dock-panel").wait_for()
    page.locator(f".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='{PANEL[1:]}']").click()
    panel = page.locator(PANEL)
    offsite = panel.get_by_role("region", name="Off the machine")
    expect(offsite).to_contain_text(f"s3://{lab.bucket}/ailab (s3)")
    expect(offsite).to_contain_text("no key")

    # the key: asked, then shown once; "saved" only after the tick; the download holds it
    offsite.get_by_role("button", name="Make encryption key…").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("without it, nothing encrypted with it can be restored")
    assert not lab.key_file.exists()
    dialog.locator(".jp-Dialog-footer button", has_text="Make key").click()  # the next dialog follows
    expect(dialog.locator(".jp-Dialog-header")).to_contain_text("Save this key — without it nothing can be restored")
    shown_key = dialog.get_by_label("The private key").input_value()
    assert shown_key.startswith("AGE-SECRET-KEY-1") and shown_key in lab.key_file.read_text()
    saved = dialog.locator(".jp-Dialog-footer button", has_text="I have saved the key")
    expect(saved).to_be_disabled()
    with page.expect_download() as download:
        dialog.get_by_role("button", name="Download the key file").click()
    downloaded = lab.tmp_path / "downloaded.key"
    download.value.save_as(downloaded)
    assert download.value.suggested_filename == "ailab-backup-age.key"
    assert [line for line in downloaded.read_text().splitlines() if not line.startswith("#")] == [shown_key]
    dialog.screenshot(path=str(ARTIFACTS / "sidebar-key-dialog.png"), animations="disabled")
    dialog.get_by_label("I have saved this key somewhere safe, away from this machine").check()
    expect(saved).to_be_enabled()
    _confirm(page, "I have saved the key")
    expect(offsite).to_contain_text("on (key age1")
    expect(offsite.get_by_role("button", name="Make encryption key…")).to_have_count(0)

    # a backup: kept here and off the machine (encrypted)
    panel.locator("input[name='label']").fill(LABEL)
    panel.get_by_role("button", name="Back up now").click()
    item = _item(panel, LABEL)
    expect(item).to_be_visible(timeout=300_000)
    expect(item.get_by_label("Kept: both")).to_have_text("here + off the machine", timeout=60_000)
    [backup] = lab.backups()
    assert backup["where"] == "both" and backup["encrypted"], backup
    expect(panel.locator("[role=alert]")).to_have_count(0)
    _shot(page, panel, "sidebar-offsite.png")

    # delete the copy here through the UI: only off the machine is left
    item.get_by_role("button", name=f"Delete {LABEL}").click()
    expect(page.locator(".jp-Dialog")).to_contain_text("kept here and off the machine")
    _confirm(page, "Delete here only")
    # (the sidebar's refresh after it asks Docker a few things: slow on a busy machine)
    expect(item.get_by_label("Kept: off the machine")).to_have_text("only off the machine", timeout=60_000)
    assert [b["where"] for b in lab.backups()] == ["off the machine"]
    archive = lab.rest("GET", backup["id"]).json()["manifest"]["archive"]
    assert archive not in run_in_volume(docker_client, lab.store, "find /v -type f")
    assert any(k.endswith(archive + ".age") for k in s3_server.objects(lab.bucket))

    # the notebooks changed: a restore with replace reads the encrypted copy off the machine
    run_in_volume(docker_client, lab.volume,
                  "echo changed > /v/intro.ipynb && echo mine > /v/new.ipynb && rm -r /v/empty")
    item.get_by_role("button", name=f"Restore {LABEL}").click()
    dialog.locator("input[value='replace']").check()
    _confirm(page, "Restore")
    toast = page.locator(".jp-toast-message, .Toastify__toast").filter(has_text="Restore finished")
    expect(toast).not_to_have_count(0, timeout=300_000)
    assert volume_snapshot(docker_client, lab.volume) == before
    expect(panel.locator(".jp-AILabBackup-error")).to_have_count(0)

    # the key gone: the sidebar says so in red, and the restore's preview says which file it needs
    lab.key_file.rename(lab.key_file.with_suffix(".away"))
    panel.get_by_role("button", name="Refresh status and list").click()
    expect(offsite.get_by_role("alert", name="Off the machine problem")).to_contain_text(
        f"encrypted, but the key is missing: put the key you saved into {lab.key_file}", timeout=60_000)
    item.get_by_role("button", name=f"Restore {LABEL}").click()
    expect(dialog).to_contain_text("The preview failed", timeout=120_000)
    expect(dialog).to_contain_text(f"the key to open it is missing: put the key saved when encryption was set up "
                                   f"into {lab.key_file}")
    _confirm(page, "Cancel")
    lab.key_file.with_suffix(".away").rename(lab.key_file)
    panel.get_by_role("button", name="Refresh status and list").click()
    expect(offsite.get_by_role("alert")).to_have_count(0, timeout=60_000)

    # its copy off the machine deleted too, a new backup is copied again with one action
    lab.rest("POST", expect=202, json={"label": "second"})
    second = _item(panel, "second")
    expect(second.get_by_label("Kept: both")).to_be_visible(timeout=300_000)
    [new] = [b for b in lab.backups() if b["label"] == "second"]
    lab.rest("DELETE", new["id"], params={"where": "off"}, expect=204)
    panel.get_by_role("button", name="Refresh status and list").click()
    expect(second.get_by_label("Kept: here")).to_have_text("only here", timeout=60_000)
    expect(second.get_by_role("button", name="Copy second off the machine")).to_be_visible()
    offsite.get_by_role("button", name="Copy 1 older backup off the machine").click()
    expect(second.get_by_label("Kept: both")).to_be_visible(timeout=120_000)
    assert {b["label"]: b["where"] for b in lab.backups()} == {LABEL: "off the machine", "second": "both"}

    # the key is nowhere but its file: not in the notebooks volume, the store, or the server's log
    for volume in (lab.volume, lab.store):
        assert run_in_volume(docker_client, volume, "grep -rl AGE-SECRET-KEY /v || true").strip() == ""
    log = (lab.tmp_path / "lab.log").read_text(errors="replace")
    assert shown_key not in log and ACCESS_KEY not in log and SECRET_KEY not in log
    expect(panel.locator(".jp-AILabBackup-error")).to_have_count(0)
    assert not errors, errors
