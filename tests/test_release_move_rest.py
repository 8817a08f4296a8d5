"""Bring my work into this release through the REST API of a real Jupyter server (local mode):
the server runs release 2.0 (its defaults folder and name configured), the backup came from a
server of 1.0 that used the same store."""

import html
import io
import json

import pytest

from ailab_backup_ext.archive import Entry, Manifest, write_archive
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.panel_release import CATEGORY_TITLES
from releaseutil import AFTER_MOVE, BESIDE, RELEASE_1, RELEASE_2, check_plan, digests, file_digests, make_release, \
    volume_of_release_1
from restutil import call, run, wait_job
from test_panel import click, make_panel, shown
from test_rest import conforms
from treeutil import folder_snapshot


@pytest.fixture
def jp_server_config(tmp_path):
    return {
        "ServerApp": {"jpserver_extensions": {"ailab_backup_ext": True}, "allow_unauthenticated_access": False},
        "AILabBackup": {"store": str(tmp_path / "store"), "docker_url": "none",
                        "notebook_defaults": make_release(tmp_path / "r2", RELEASE_2), "release": "2.0"},
    }


@pytest.fixture
def old_backup(tmp_path, jp_root_dir):
    """A backup of release 1.0 in the shared store, and the server's folder as 2.0 filled it."""
    old = BackupManager(AILabBackup(source_dir=volume_of_release_1(tmp_path / "v1"), store=str(tmp_path / "store"),
                                    docker_url="none", notebook_defaults=make_release(tmp_path / "r1", RELEASE_1),
                                    release="1.0"))
    make_release(jp_root_dir, RELEASE_2)
    return old.create_backup(label="Before upgrading (AI-Lab 1.0)")["id"]


async def test_preview_then_move_by_rest_holds_what_the_plan_said(jp_fetch, jp_root_dir, old_backup):
    _, status, _ = await call(jp_fetch, "status")
    conforms(status, "/status", "get", 200)
    assert status["release"]["move"]["backup_id"] == old_backup
    assert status["release"]["running"]["name"] == "2.0"
    _, listing, _ = await call(jp_fetch)
    conforms(listing, "/", "get", 200)
    assert listing["backups"][0]["release"]["name"] == "1.0"
    before = folder_snapshot(jp_root_dir)

    _, plan, _ = await call(jp_fetch, old_backup, "restore", method="POST",
                            body={"mode": "release-move", "dry_run": True})
    conforms(plan, "/{backup_id}/restore", "post", 200)
    check_plan(plan)
    assert folder_snapshot(jp_root_dir) == before

    await call(jp_fetch, old_backup, "restore", method="POST", body={"mode": "release-move", "paths": ["x"]},
               expect=400)
    _, body, _ = await call(jp_fetch, old_backup, "restore", method="POST", body={"mode": "release-move"},
                            expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    conforms(job, "/jobs/{job_id}", "get", 200)
    assert job["state"] == "succeeded", job
    assert {c: job["result"][c] for c in ("kept_both", "left_to_release", "brought_back")} == \
        {c: plan[c] for c in ("kept_both", "left_to_release", "brought_back")}
    assert file_digests(folder_snapshot(jp_root_dir)) == digests(AFTER_MOVE)
    _, status, _ = await call(jp_fetch, "status")
    assert status["release"]["move"] is None  # brought in


async def test_a_before_upgrading_backup_is_one_call_and_labelled_so(jp_fetch, jp_root_dir):
    (jp_root_dir / "mine.ipynb").write_text("{}")
    _, body, _ = await call(jp_fetch, method="POST", body={"before_upgrade": True}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    _, backup, _ = await call(jp_fetch, job["backup_id"])
    conforms(backup, "/{backup_id}", "get", 200)
    assert backup["label"] == "Before upgrading (AI-Lab 2.0)"
    assert backup["release"]["defaults_count"] == len(RELEASE_2)
    for wrong in ("yes", {}, 1):  # not a yes or no: refused, and no backup made
        _, refused, _ = await call(jp_fetch, method="POST", body={"before_upgrade": wrong}, expect=400)
        assert "before_upgrade must be true or false" in refused["message"]
    _, listed, _ = await call(jp_fetch)
    assert [b["id"] for b in listed["backups"]] == [backup["id"]]


async def test_an_uploaded_release_record_is_bounded_like_other_metadata(jp_fetch, jp_root_dir):
    data = b'{"cells": []}'
    claimed = {"name": "x" * 100_000, "image": 5, "defaults": {"../etc/passwd": "0" * 64, "a.ipynb": "nothex"},
               "unchanged_defaults": ["everything"]}
    archive = io.BytesIO()
    manifest = Manifest(created="2026-01-01T00:00:00Z", source={"type": "folder", "name": "x"}, release=claimed)
    write_archive(archive, [(Entry(".", "dir", mode=0o755), None),
                            (Entry("a.ipynb", "file", size=len(data)), io.BytesIO(data))], manifest, "zstd")
    _, uploaded, _ = await call(jp_fetch, "upload", method="POST", body=archive.getvalue(), expect=201)
    conforms(uploaded, "/upload", "post", 201)
    release = uploaded["release"]
    assert release["name"] == "x" * 1024 and release["image"] is None
    assert release["defaults_count"] is None and release["unchanged_defaults"] == 0  # an index it cannot hold
    _, plan, _ = await call(jp_fetch, uploaded["id"], "restore", method="POST",
                            body={"mode": "release-move", "dry_run": True})
    assert [i["path"] for i in plan["brought_back"]] == ["a.ipynb"]  # nothing taken for an old default
    assert json.dumps(plan).count("x" * 1025) == 0


async def test_the_panel_offers_the_move_previews_its_categories_and_brings_it_in(client, jp_root_dir, old_backup):
    panel = await make_panel(client)
    row = panel.release_move
    assert shown(row.offer_box) and "AI-Lab 1.0" in row.offer.value and "AI-Lab 2.0" in row.offer.value
    await click(panel, row.move_button)
    assert shown(panel.confirm) and shown(panel.preview), panel.question.value
    for _, title, _ in CATEGORY_TITLES:
        assert title in panel.preview.value, (title, panel.preview.value)
    assert "1 kept both" in panel.question.value and html.escape(BESIDE) in panel.preview.value
    assert file_digests(folder_snapshot(jp_root_dir)) == digests(RELEASE_2)  # only a preview so far
    await click(panel, panel.yes_button)
    assert panel.error.value == "", panel.error.value
    assert file_digests(folder_snapshot(jp_root_dir)) == digests(AFTER_MOVE)
    assert not shown(row.offer_box) and "Undo restore" in panel.message.value

    await click(panel, row.before_button)
    newest = (await run(client.list))[0]
    assert newest["label"] == "Before upgrading (AI-Lab 2.0)" and newest["kind"] == "manual"
