"""What is in the volume: the size of each top-level folder, the next backup's estimate, folders
switched out of backups (CLI, REST) and what each backup left out; against the real Jupyter
server, the real Docker engine and the real CLI. Also what a restore tells the front end so it
can reload open documents (the restored files, GET /changes's last restore)."""

import json
import os
import threading

import pytest

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.docker_helper import KEPT_LABEL
from ailab_backup_ext.usage import parse_listing, summarize
from restutil import call, wait_job
from test_rest import conforms
from test_roundtrip import fill_volume
from treeutil import HELPER_IMAGE, our_helpers, run_in_volume

TREE = {
    "intro.ipynb": b'{"cells": []}',
    "ai_lab_secure_configuration_storage.sqlite": b"s" * 500,
    "models_cache/hub/model-a/weights.bin": b"w" * 30_000,
    "models_cache/hub/model-a/config.json": b"{}",
    "slc_workspace/flavor/build.log": b"l" * 4000,
    "slc_workspace/flavor/tmp.tmp": b"t" * 700,
    "work/analysis.ipynb": b'{"cells": [1]}',
    "work/models_cache/local.bin": b"x" * 100,  # a deeper folder of the same name: left out too
}


def write_tree(root):
    for rel, data in TREE.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(root, "empty_folder"))
    return root


def expected_rows(excludes=()):
    from ailab_backup_ext.sources import is_excluded

    rows = {}
    for rel, data in TREE.items():
        top = rel.split("/")[0] if "/" in rel else ""
        row = rows.setdefault(top, {"bytes": 0, "files": 0, "left_out_files": 0})
        row["bytes"] += len(data)
        row["files"] += 1
        row["left_out_files"] += is_excluded(rel, list(excludes))
    rows["empty_folder"] = {"bytes": 0, "files": 0, "left_out_files": 0}
    return rows


def rows_of(usage):
    return {r["name"]: {k: r[k] for k in ("bytes", "files", "left_out_files")} for r in usage["folders"]}


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_usage_per_top_level_folder_and_the_estimate_follow_the_excludes_locally(tmp_path, capsys):
    source = write_tree(str(tmp_path / "notebooks"))
    store = str(tmp_path / "store")
    base = ["--docker-url", "none", "--source-dir", source, "--store", store]
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=source, store=store))
    usage = manager.usage()
    assert rows_of(usage) == expected_rows()
    assert usage["total"] == {"bytes": sum(map(len, TREE.values())), "files": len(TREE)}
    assert usage["estimate"]["bytes"] == usage["total"]["bytes"] and usage["estimate"]["compressed_bytes"] is None
    assert usage["folders"][0]["name"] == "models_cache"  # the largest first

    # switched off from the CLI: kept beside the store, as the settings keep excludes
    out = cli(capsys, *base, "exclude", "models_cache", "slc_workspace")
    assert "models_cache/" in out and "no (excluded)" in out
    kept = json.loads((tmp_path / "store" / "settings.json").read_text())
    assert kept["excludes"] == ["models_cache", "slc_workspace"]
    cli(capsys, *base, "settings", "--set", "excludes=models_cache,slc_workspace,*.tmp")

    again = BackupManager(AILabBackup(docker_url="none", source_dir=source, store=store))
    usage = again.usage()
    excludes = ["models_cache", "slc_workspace", "*.tmp"]
    assert rows_of(usage) == expected_rows(excludes)
    left = {r["name"]: r["excluded"] for r in usage["folders"]}
    assert left["models_cache"] and left["slc_workspace"] and not left["work"]
    left_out = ("models_cache/", "slc_workspace/", "work/models_cache/")
    kept_bytes = sum(len(d) for rel, d in TREE.items() if not rel.startswith(left_out))
    assert usage["estimate"]["bytes"] == kept_bytes and usage["estimate"]["files"] == 3

    # the backup holds exactly what the estimate said, and records what it left out
    backup_id = cli(capsys, *base, "create").strip().splitlines()[-1]
    assert "(left out: models_cache, slc_workspace, *.tmp)" in cli(capsys, *base, "list")
    shown = json.loads(cli(capsys, *base, "show", backup_id))
    assert shown["excludes"] == excludes
    assert (shown["total_bytes"], shown["file_count"]) == (kept_bytes, 3)
    after = again.usage()  # the backup changed what the estimate rests on: measured again
    assert after["cached"] is False
    ratio = shown["size_bytes"] / shown["total_bytes"]
    assert after["estimate"]["based_on"] == backup_id
    assert after["estimate"]["compressed_bytes"] == round(kept_bytes * ratio)
    assert "estimate" in after["estimate"]["note"]

    # taken in again; a folder left out by a glob cannot be taken in by its name alone
    cli(capsys, *base, "exclude", "--include", "slc_workspace")
    assert json.loads((tmp_path / "store" / "settings.json").read_text())["excludes"] == ["models_cache", "*.tmp"]
    cli(capsys, *base, "settings", "--set", "excludes=models_*")
    assert main([*base, "exclude", "--include", "models_cache"]) == 1
    assert "left out by the exclude pattern 'models_*'" in capsys.readouterr().err
    assert json.loads((tmp_path / "store" / "settings.json").read_text())["excludes"] == ["models_*"]


def test_usage_is_cached_until_something_changes_or_the_ttl_ends(tmp_path):
    source = write_tree(str(tmp_path / "notebooks"))
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=source, store=str(tmp_path / "store")))
    now = [1000.0]
    manager.usage_cache.clock = lambda: now[0]
    first = manager.usage()
    with open(os.path.join(source, "work", "new.ipynb"), "wb") as f:
        f.write(b"n" * 10)
    assert manager.usage()["cached"] is True and manager.usage_cache.walks == 1
    assert manager.usage()["total"] == first["total"]  # not walked again
    now[0] += 61  # past the TTL
    assert manager.usage()["total"]["files"] == first["total"]["files"] + 1 and manager.usage_cache.walks == 2
    manager.set_folder_excluded("models_cache", True)  # a setting changed: measured again
    assert manager.usage_cache.walks == 3
    assert manager.usage(refresh=True)["cached"] is False and manager.usage_cache.walks == 4


def test_the_helpers_listing_is_read_whatever_the_names(tmp_path):
    lines = [b"12 ./a/b.txt\n", b"5 ./weird\n", b"name\n", b"7 ./store/x\n", b"3 ./top 1.txt\n"]
    assert parse_listing(lines, ["store"]) == [("a/b.txt", 12), ("weird\nname", 5), ("top 1.txt", 3)]
    rows = summarize([("a/b.txt", 12), ("top 1.txt", 3)], ["a"])
    assert [(r["name"], r["excluded"], r["left_out_bytes"]) for r in rows] == [("a", True, 12), ("", False, 0)]


def test_usage_of_a_docker_volume_in_one_helper_and_cached(docker_client, volumes, tmp_path):
    volume, store = volumes
    fill_volume(docker_client, volume, write_tree(str(tmp_path / "tree")))
    run_in_volume(docker_client, volume, "printf x > '/v/work/two\nlines.txt'")
    manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=HELPER_IMAGE))
    manager.docker.keep_helpers = True  # as in the server: the store is listed by its kept helper
    manager.settings.set({"excludes": ["models_cache"]})
    seen = []
    api = manager.docker.client.api
    original = api.create_container
    api.create_container = lambda *a, **k: seen.append(k["labels"]) or original(*a, **k)
    try:
        usage = manager.usage()
        walkers = [labels for labels in seen if KEPT_LABEL not in labels]
        assert len(walkers) == 1  # one helper walks the volume, none streams it
        rows = expected_rows(["models_cache"])
        rows["work"]["bytes"] += 1
        rows["work"]["files"] += 1
        got = rows_of(usage)
        rows.pop("empty_folder")  # find lists files: an empty folder has none to show
        got.pop("empty_folder", None)
        assert got == rows
        assert "helper container" in usage["how"]
        made = len(seen)
        assert manager.usage()["cached"] is True and len(seen) == made  # asked again: no container
    finally:
        api.create_container = original
    manager.docker.close()
    assert not our_helpers(docker_client)


async def test_usage_over_rest_toggles_and_what_a_backup_left_out(jp_fetch, jp_root_dir):
    write_tree(str(jp_root_dir))
    _, usage, _ = await call(jp_fetch, "usage")
    conforms(usage, "/usage", "get", 200)
    assert rows_of(usage)["models_cache"]["bytes"] == 30_002
    _, changed, _ = await call(jp_fetch, "usage", method="PUT", body={"folder": "models_cache", "excluded": True})
    conforms(changed, "/usage", "put", 200)
    assert [r["excluded"] for r in changed["folders"] if r["name"] == "models_cache"] == [True]
    _, settings, _ = await call(jp_fetch, "settings")
    assert settings["excludes"] == ["models_cache"]
    for bad in ({"folder": "../etc", "excluded": True}, {"folder": "work", "excluded": "yes"}, {}):
        _, error, _ = await call(jp_fetch, "usage", method="PUT", body=bad, expect=400)
        assert "folder" in error["message"] or "excluded" in error["message"]
    _, settings, _ = await call(jp_fetch, "settings")
    assert settings["excludes"] == ["models_cache"]  # nothing changed

    _, body, _ = await call(jp_fetch, method="POST", body={"label": "l"}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    _, listed, _ = await call(jp_fetch)
    conforms(listed, "/", "get", 200)
    assert listed["backups"][0]["excludes"] == ["models_cache"]
    _, shown, _ = await call(jp_fetch, job["backup_id"])
    assert shown["excludes"] == ["models_cache"] and shown["total_bytes"] == changed["estimate"]["bytes"]


async def test_a_restore_names_its_files_as_jupyter_paths_and_changes_says_it_ended(jp_fetch, jp_root_dir):
    write_tree(str(jp_root_dir))
    _, before, _ = await call(jp_fetch, "changes")
    assert before["last_restore"] is None
    _, body, _ = await call(jp_fetch, method="POST", body={"label": "l"}, expect=202)
    backup_id = (await wait_job(jp_fetch, body["job"]["id"]))["backup_id"]
    _, body, _ = await call(jp_fetch, backup_id, "restore", method="POST", body={"paths": ["work"]}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    restored = job["result"]["restored"]
    assert sorted(restored["paths"]) == ["work/analysis.ipynb", "work/models_cache/local.bin"]
    assert restored["complete"] and restored["within"] == ["work"] and restored["scs"] is False
    _, after, _ = await call(jp_fetch, "changes")
    conforms(after, "/changes", "get", 200)
    conforms(job, "/jobs/{job_id}", "get", 200)
    assert after["last_restore"] == {"id": job["id"], "state": "succeeded", "finished": job["finished"]}
    assert after["token"] != before["token"]

    _, body, _ = await call(jp_fetch, backup_id, "restore", method="POST", body={}, expect=202)
    whole = (await wait_job(jp_fetch, body["job"]["id"]))["result"]["restored"]
    assert whole["within"] == [""] and whole["scs"] is True
    assert "ai_lab_secure_configuration_storage.sqlite" in whole["paths"]


@pytest.mark.parametrize("worker", [False, True], ids=["streamed", "worker"])
def test_a_restore_of_a_docker_volume_names_its_files_for_the_open_documents(
        docker_client, volumes, tmp_path, worker, request):
    """As in AI-Lab: the server sees the volume at its root folder (the mount of its own container),
    so the restored files are Jupyter paths; the same whether the restore ran in the worker."""
    volume, store = volumes
    image = request.getfixturevalue("python_image") if worker else HELPER_IMAGE
    fill_volume(docker_client, volume, write_tree(str(tmp_path / "tree")))
    manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=image), root_dir=str(tmp_path))
    assert manager.worker_status()["in_use"] is worker
    backup_id = manager.create_backup()["id"]
    manager.source.local_path = str(tmp_path)  # where this server sees the volume, as AI-Lab's does
    result = manager.restore_backup(backup_id, paths=["work", "ai_lab_secure_configuration_storage.sqlite"])
    assert sorted(result["restored"]["paths"]) == ["ai_lab_secure_configuration_storage.sqlite",
                                                   "work/analysis.ipynb", "work/models_cache/local.bin"]
    assert result["restored"]["scs"] is True and result["restored"]["complete"]
    manager.source.local_path = None  # a volume Jupyter does not show: no open document can be one of them
    assert manager.restore_backup(backup_id, paths=["work"])["restored"] is None


def test_a_job_that_starts_does_not_make_it_measure_again(tmp_path):
    source = write_tree(str(tmp_path / "notebooks"))
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=source, store=str(tmp_path / "store")))
    manager.usage()
    started, release = threading.Event(), threading.Event()

    def slow(progress):
        started.set()
        release.wait(30)
        return {}

    job = manager.jobs.start("backup", slow)
    try:
        started.wait(30)
        assert manager.changes.token()["job"] == job.id  # the sidebar's token moved
        assert manager.usage()["cached"] is True and manager.usage_cache.walks == 1
    finally:
        release.set()
        job.done.wait(30)
