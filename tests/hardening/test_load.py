"""Load: many backups and deletes in a row leak nothing (helpers, temporary files, descriptors,
memory); many clients listing and downloading while a backup runs are all served."""

import asyncio
import gc
import os
import time

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.jobs import KEEP_FINISHED
from hardutil import files_below, files_in_volume, our_helpers, our_spools
from restutil import call, server_config, wait_job
from test_roundtrip import fill_volume

MB = 1 << 20
RSS_GROWTH_LIMIT = 30 * MB


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def make_notebooks(root):
    """What a user has, small: notebooks, the SCS, a hidden folder, a subfolder."""
    (root / "sub").mkdir(parents=True)
    (root / ".ipynb_checkpoints").mkdir()
    for i in range(20):
        (root / f"nb{i:02d}.ipynb").write_bytes(b'{"cells": [], "nbformat": 4}' + os.urandom(8000))
    (root / "sub" / "data.csv").write_bytes(os.urandom(200_000))
    (root / ".ipynb_checkpoints" / "nb00-checkpoint.ipynb").write_text('{"cells": []}')
    (root / "ai_lab_secure_configuration_storage.sqlite").write_bytes(os.urandom(8192))


def cycles(manager, count, via_jobs):
    """``count`` times: back up, then delete that backup."""
    for _ in range(count):
        if via_jobs:  # as the REST API does: a job in the runner's worker thread
            job = manager.start_backup("load")
            assert job.done.wait(120), "the backup job did not end"
            assert job.state == "succeeded", job.error
            backup_id = job.backup_id
        else:
            backup_id = manager.create_backup(label="load")["id"]
        manager.delete_backup(backup_id)


def measure(manager, warm_up, count, via_jobs=False):
    """Warm up, then run ``count`` cycles; return the growth of descriptors and of RSS."""
    cycles(manager, warm_up, via_jobs)
    gc.collect()
    fds, rss = open_fds(), rss_bytes()
    started = time.monotonic()
    cycles(manager, count, via_jobs)
    gc.collect()
    return open_fds() - fds, rss_bytes() - rss, time.monotonic() - started


def test_200_backups_and_deletes_in_a_row_leak_nothing(tmp_path):
    source, store = tmp_path / "nb", tmp_path / "store"
    make_notebooks(source)
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(store), docker_url="none"))
    fd_growth, rss_growth, seconds = measure(manager, warm_up=10, count=200, via_jobs=True)

    assert abs(fd_growth) <= 2, f"{fd_growth} more open file descriptors after 200 backups"
    assert rss_growth < RSS_GROWTH_LIMIT, f"RSS grew by {rss_growth / MB:.1f} MB over 200 backups"
    assert manager.list_backups() == []
    assert files_below(store) == [], "archives, spools or metadata left in the store"
    assert our_spools() == []
    assert len(manager.jobs.recent()) <= KEEP_FINISHED  # finished jobs do not pile up
    print(f"200 local backups and deletes: {seconds:.1f} s, fds {fd_growth:+d}, RSS {rss_growth / MB:+.1f} MB")


def test_30_docker_volume_backups_and_deletes_in_a_row_leak_nothing(docker_client, make_volume, tmp_path):
    volume, store = make_volume(), make_volume("ailabstore")
    make_notebooks(tmp_path / "nb")
    fill_volume(docker_client, volume, str(tmp_path / "nb"))
    manager = BackupManager(AILabBackup(volume=volume, store=store))
    fd_growth, rss_growth, seconds = measure(manager, warm_up=3, count=30)

    assert abs(fd_growth) <= 2, f"{fd_growth} more open file descriptors after 30 backups"
    assert rss_growth < RSS_GROWTH_LIMIT, f"RSS grew by {rss_growth / MB:.1f} MB over 30 backups"
    assert our_helpers(docker_client) == []
    assert manager.list_backups() == []
    assert files_in_volume(docker_client, store) == [], "archives or metadata left in the store volume"
    assert our_spools() == []
    print(f"30 Docker backups and deletes: {seconds:.1f} s, fds {fd_growth:+d}, RSS {rss_growth / MB:+.1f} MB")


# ---------------------------------------------------------------------------------------------
# 50 clients while a backup runs (the in-process server, as tests/test_rest.py)


@pytest.fixture
def jp_server_config(tmp_path):
    # gzip: slower than zstd, so that the 100 MB backup surely runs while the clients come
    return server_config(store=str(tmp_path / "store"), docker_url="none", compression="gzip")


CLIENTS = 50
SLOW = {"request_timeout": 300, "connect_timeout": 300}  # 100 requests share a few connections


async def test_50_clients_list_and_download_while_a_backup_runs(jp_fetch, jp_root_dir, tmp_path):
    make_notebooks(jp_root_dir)
    (jp_root_dir / "sub" / "model.bin").write_bytes(os.urandom(4 * MB))  # a download that takes a while
    _, body, _ = await call(jp_fetch, method="POST", body={"label": "existing"}, expect=202)
    first = await wait_job(jp_fetch, body["job"]["id"])
    assert first["state"] == "succeeded", first
    existing = first["backup_id"]
    [meta] = [m for m in (await call(jp_fetch))[1]["backups"] if m["id"] == existing]
    stored = (tmp_path / "store" / "data" / f"{existing}.tar.gz").read_bytes()
    assert len(stored) == meta["size_bytes"]

    (jp_root_dir / "big.bin").write_bytes(os.urandom(100 * MB))
    _, body, _ = await call(jp_fetch, method="POST", body={"label": "big"}, expect=202)
    job_id = body["job"]["id"]
    for _ in range(600):
        _, job, _ = await call(jp_fetch, "jobs", job_id)
        if job["state"] != "queued" and job["progress"]["done_bytes"] > 0:
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "running", job  # the clients come while it runs

    async def client():
        _, listing, _ = await call(jp_fetch, **SLOW)
        ids = [b["id"] for b in listing["backups"]]
        _, data, _ = await call(jp_fetch, existing, "download", **SLOW)
        _, job, _ = await call(jp_fetch, "jobs", job_id, **SLOW)
        return ids, data, job["state"]

    results = await asyncio.gather(*(client() for _ in range(CLIENTS)))  # each asserts its 200s
    assert all(ids == [existing] for ids, _, _ in results), "a listing showed the running backup"
    assert all(data == stored for _, data, _ in results), "a download differs from the stored archive"
    overlapped = sum(state == "running" for _, _, state in results)
    assert overlapped, "the backup ended before any client was served: make it bigger"

    done = await wait_job(jp_fetch, job_id)
    assert done["state"] == "succeeded", done
    _, listing, _ = await call(jp_fetch)
    assert {b["id"] for b in listing["backups"]} == {existing, done["backup_id"]}
    [big] = [b for b in listing["backups"] if b["id"] == done["backup_id"]]
    assert big["total_bytes"] > 100 * MB
    assert files_below(tmp_path / "store") == sorted(
        [f"data/{existing}.tar.gz", f"data/{big['id']}.tar.gz", f"meta/{existing}.json", f"meta/{big['id']}.json"])
    print(f"{overlapped} of {CLIENTS} clients were served while the backup ran")
