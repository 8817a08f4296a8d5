#!/usr/bin/env python3
"""Benchmark: what is in the volume (``GET /ailab/backup/usage``) on a volume of 100,000 files.

Run on demand, against a real Docker engine (not a test)::

    AILAB_BACKUP_HELPER_IMAGE=ailab-backup-helper:test python benchmarks/usage.py [--files 100000]

Makes a Docker volume of ``--files`` files (100 top-level folders, 10 subfolders each, a few
larger files), then measures, as a server does it (the store listed by its kept helper):

* cold: the first answer, by one helper container running find and stat next to the data;
* cached: the same question again (nothing changed: no container, no walk);
* after a setting changed (an exclude switched on): measured again;
* local: the same tree as a folder this process sees (AI-Lab's server sees its own mount): a walk.

Reports milliseconds and the helper containers created (the kept listing helper apart), and
removes every volume, container and folder it made.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import docker

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ailab_backup_ext.config import AILabBackup  # noqa: E402
from ailab_backup_ext.core import BackupManager  # noqa: E402
from ailab_backup_ext.docker_helper import KEPT_LABEL  # noqa: E402

IMAGE = os.environ.get("AILAB_BACKUP_HELPER_IMAGE", "ailab-backup-helper:test")
FILL = (
    "cd /v && n=0; for t in $(seq 1 100); do for s in $(seq 1 10); do mkdir -p top$t/sub$s; "
    "seq 1 PER | sed \"s|^|top$t/sub$s/f|\" | xargs touch; done; done; "
    "for t in $(seq 1 100); do head -c 100000 /dev/zero > top$t/big.bin; done"
)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1000, value


def counting(manager):
    """Count the containers the manager's Docker client creates (the kept listing helper apart)."""
    made = []
    api = manager.docker.client.api
    original = api.create_container

    def create(*args, **kwargs):
        if KEPT_LABEL not in (kwargs.get("labels") or {}):
            made.append(1)
        return original(*args, **kwargs)

    api.create_container = create
    return made


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    per = max(1, args.files // 1000)
    client = docker.from_env(timeout=600)
    run_id = uuid.uuid4().hex[:8]
    volume = client.volumes.create(f"ailab-bench-usage-{run_id}").name
    store = client.volumes.create(f"ailab-bench-usagestore-{run_id}").name
    local = tempfile.mkdtemp(prefix="ailab-bench-usage-")
    results = {}
    manager = None
    try:
        client.containers.run(IMAGE, ["sh", "-c", FILL.replace("PER", str(per))], remove=True, network_disabled=True,
                              volumes={volume: {"bind": "/v", "mode": "rw"}})
        manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=IMAGE))
        manager.docker.keep_helpers = True  # as the server
        manager.store.read_all_meta()  # the server's kept listing helper exists already
        made = counting(manager)
        ms, usage = timed(manager.usage)
        results["files"] = usage["total"]["files"]
        results["cold_ms"], results["cold_containers"] = round(ms), len(made)
        before = len(made)
        ms, cached = timed(manager.usage)
        assert cached["cached"]
        results["cached_ms"], results["cached_containers"] = round(ms, 1), len(made) - before
        manager.settings.set({"excludes": ["top1"]})
        before = len(made)
        ms, after = timed(manager.usage)
        results["after_exclude_ms"], results["after_exclude_containers"] = round(ms), len(made) - before
        assert after["estimate"]["files"] == usage["total"]["files"] - per * 10 - 1
        # the same tree as a local folder (as AI-Lab's server sees its mount)
        for t in range(1, 101):
            for s in range(1, 11):
                folder = os.path.join(local, f"top{t}", f"sub{s}")
                os.makedirs(folder)
                for i in range(1, per + 1):
                    open(os.path.join(folder, f"f{i}"), "wb").close()
        walks = []
        for _ in range(3):
            local_manager = BackupManager(AILabBackup(docker_url="none", source_dir=local,
                                                      store=os.path.join(local + "-store")))
            ms, _ = timed(local_manager.usage)
            walks.append(ms)
        results["local_walk_ms_median_of_3"] = round(statistics.median(walks))
    finally:
        if manager is not None:
            manager.docker.close()
        client.volumes.get(volume).remove(force=True)
        client.volumes.get(store).remove(force=True)
        shutil.rmtree(local, ignore_errors=True)
        shutil.rmtree(local + "-store", ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
