"""The release move in the "Backups" sidebar: a real `jupyter lab` of release 2.0 (its defaults
folder and name configured) on a real Docker volume as 2.0's entrypoint filled it, with a backup of
release 1.0 in the shared store; Chromium through Playwright. The sidebar offers the move, its
dialog previews every category, and confirming it leaves the volume as the plan said.
Screenshot: tests/artifacts/sidebar-release-move.png."""

import pytest
from playwright.sync_api import expect

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from releaseutil import (AFTER_MOVE, BESIDE, RELEASE_1, RELEASE_2, digests, file_digests, make_release,
                         volume_of_release_1)
from test_roundtrip import fill_volume
from test_sidebar_browser import (  # noqa: F401 - page is a fixture used here
    PANEL,
    TOKEN,
    _confirm,
    _shot,
    page,
    running_lab,
    shown_on_failure,
)
from treeutil import HELPER_IMAGE, volume_snapshot

CATEGORIES = {  # what the dialog shows of each category of the scenario (releaseutil.py)
    "scs": "Secure Configuration Storage: brought back (1)",
    "brought_back": "Yours: brought back (3)",
    "overwritten": "Yours: replace the file here (1)",
    "kept_both": "Changed by you and by the new release: both kept (1)",
    "left_to_release": "Unchanged defaults: left as this release ships them (2)",
    "added_by_release": "New in this release: stay (1)",
}


@pytest.fixture
def lab(tmp_path, docker_client, make_volume):
    old_volume, volume, store = make_volume(), make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, old_volume, volume_of_release_1(tmp_path / "v1"))
    fill_volume(docker_client, volume, make_release(tmp_path / "v2", RELEASE_2))
    old = BackupManager(AILabBackup(volume=old_volume, store=store, helper_image=HELPER_IMAGE, release="1.0",
                                    notebook_defaults=make_release(tmp_path / "r1", RELEASE_1)))
    old.create_backup(label="Before upgrading (AI-Lab 1.0)")
    args = [f"--AILabBackup.notebook_defaults={make_release(tmp_path / 'r2', RELEASE_2)}", "--AILabBackup.release=2.0"]
    with running_lab(tmp_path, docker_client, volume, store, extra_args=args) as lab:
        yield lab


def test_sidebar_offers_the_move_previews_its_categories_and_brings_it_in(lab, page, docker_client):
    page, errors = page
    with shown_on_failure(page, "sidebar-release-move-failure.png"):
        page.goto(f"{lab.base}lab?token={TOKEN}")
        page.locator("#jp-main-dock-panel").wait_for()
        page.locator(f".jp-SideBar [data-id='{PANEL[1:]}']").click()  # its tab in the left side bar
        panel = page.locator(PANEL)
        offer = panel.locator(".jp-AILabBackup-releaseOffer")
        expect(offer).to_contain_text("came from AI-Lab 1.0", timeout=120_000)
        expect(offer).to_contain_text("runs AI-Lab 2.0")
        before = volume_snapshot(docker_client, lab.volume)

        offer.get_by_role("button", name="Bring my work into this release").click()
        dialog = page.locator(".jp-Dialog")
        for category, title in CATEGORIES.items():
            expect(dialog.locator(f"section[data-category='{category}'] h4")).to_have_text(title, timeout=120_000)
        expect(dialog.locator("section[data-category='kept_both']")).to_contain_text(BESIDE)
        expect(dialog.locator("section[data-category='left_to_release']")).to_contain_text("old_demo.ipynb")
        _shot(page, dialog, "sidebar-release-move.png")
        assert volume_snapshot(docker_client, lab.volume) == before  # only a preview so far

        _confirm(page, "Bring it in")
        expect(offer).to_have_count(0, timeout=120_000)  # done: the status no longer offers it
        expect(panel.get_by_role("button", name="Undo last restore")).to_be_visible()
        assert file_digests(volume_snapshot(docker_client, lab.volume)) == digests(AFTER_MOVE)
        assert errors == []
