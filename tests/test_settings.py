"""Settings kept beside the store (helper image, excludes, retention, schedule) through REST, the
Python client and the CLI, and the cheap change token the sidebar polls: against the real Jupyter
server, the real Docker engine and the real CLI."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from ailab_backup_ext.cli import main
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.handlers import SETTINGS_KEY
from restutil import call, run, server_config, wait_job
from treeutil import HELPER_IMAGE, run_in_volume


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "intro.ipynb").write_text('{"cells": []}')
    (jp_root_dir / "models_cache").mkdir()
    (jp_root_dir / "models_cache" / "weights.bin").write_bytes(b"w" * 1000)
    return jp_root_dir


async def backup_now(jp_fetch):
    _, body, _ = await call(jp_fetch, method="POST", body={"label": ""}, expect=202)
    job = await wait_job(jp_fetch, body["job"]["id"])
    assert job["state"] == "succeeded", job
    return job


async def test_settings_kept_beside_the_store_win_over_the_configuration(client, notebooks, jp_fetch, jp_serverapp,
                                                                          tmp_path):
    settings = await run(client.settings)
    assert (settings["excludes"], settings["keep_last"], settings["kept"]) == ([], 0, [])
    assert settings["store"] == {"type": "folder", "name": str(tmp_path / "store")}

    changed = await run(client.set_settings, excludes=["models_cache", " *.tmp "], keep_last=2)
    assert changed["excludes"] == ["models_cache", "*.tmp"] and changed["keep_last"] == 2
    assert changed["kept"] == ["excludes", "keep_last"] and changed["configured"]["keep_last"] == 0
    assert (tmp_path / "store" / "settings.json").is_file()  # beside the store, not in the notebooks
    assert not any(p.name == "settings.json" for p in notebooks.rglob("*"))

    # backups follow them: the excluded folder is left out, only the newest 2 are kept
    ids = [(await backup_now(jp_fetch))["backup_id"] for _ in range(3)]
    _, shown, _ = await call(jp_fetch, ids[-1])
    assert shown["file_count"] == 1  # intro.ipynb only
    assert [b["id"] for b in await run(client.list)] == ids[:0:-1]

    # a restart: a new manager of the same store and configuration reads them back
    manager = jp_serverapp.web_app.settings[SETTINGS_KEY]
    again = BackupManager(manager.config, root_dir=str(notebooks))
    assert again.settings.excludes == ["models_cache", "*.tmp"] and again.settings.keep_last == 2

    # None goes back to the configuration's value
    reset = await run(client.set_settings, excludes=None)
    assert reset["excludes"] == [] and reset["kept"] == ["keep_last"]


@pytest.mark.parametrize("body, words", [
    ({"excludes": ["/etc"]}, "not a relative pattern"),
    ({"excludes": ["../outside"]}, "not a relative pattern"),
    ({"excludes": ["*"]}, "not a relative pattern"),
    ({"excludes": ["models_cache\n/etc"]}, "control character"),
    ({"excludes": "models_cache"}, "must be a list of glob patterns"),  # as the API document says
    ({"excludes": [1]}, "must be a list of glob patterns"),
    ({"keep_last": -1}, "whole number"),
    ({"keep_last": "5"}, "whole number"),
    ({"keep_last": True}, "whole number"),
    ({"schedule": "sometimes"}, "Unknown schedule"),
    ({"schedule": False}, "'schedule' must be a text"),
    ({"schedule": 6}, "'schedule' must be a text"),
    ({"helper_image": "alpine"}, "Docker is not used"),
    ({"store": "/tmp/elsewhere"}, "Unknown setting 'store'"),
    ({}, "Send the settings to change"),
])
async def test_bad_settings_are_refused_and_change_nothing(jp_fetch, notebooks, body, words):
    await call(jp_fetch, "settings", method="PUT", body={"keep_last": 3})
    mixed = {"keep_last": 5, **body} if body else body  # with a good value: that is not kept either
    _, error, _ = await call(jp_fetch, "settings", method="PUT", body=mixed, expect=400)
    assert words in error["message"], error
    _, settings, _ = await call(jp_fetch, "settings")
    assert (settings["excludes"], settings["keep_last"], settings["schedule"]) == ([], 3, "off")


async def test_the_schedule_is_a_setting_too(client, notebooks):
    settings = await run(client.set_settings, schedule="daily 02:30")
    assert settings["schedule"] == "daily 02:30" and "schedule" in settings["kept"]
    assert (await run(client.schedule))["spec"] == "daily 02:30"
    settings = await run(client.set_settings, schedule=None)
    assert settings["schedule"] == "off" and "schedule" not in settings["kept"]


def test_cli_settings_are_the_ones_the_server_reads(tmp_path, capsys):
    source, store = tmp_path / "nb", tmp_path / "store"
    source.mkdir()
    base = ["--source-dir", str(source), "--store", str(store), "--docker-url", "none", "settings"]
    assert main(base + ["--set", "keep_last=4", "--set", "excludes=models_cache,*.tmp",
                        "--set", "schedule=every 6h"]) == 0
    capsys.readouterr()
    assert main(base + ["--set", "excludes=/etc"]) == 1  # refused, nothing changed
    assert "not a relative pattern" in capsys.readouterr().err
    assert main(base + ["--set", "keep_last=many"]) == 1
    assert "whole number" in capsys.readouterr().err
    server_side = BackupManager(AILabBackup(source_dir=str(source), store=str(store), docker_url="none"))
    assert server_side.settings.keep_last == 4 and server_side.settings.excludes == ["models_cache", "*.tmp"]
    assert server_side.scheduler.spec == "every 6h"
    assert main(base + ["--reset", "excludes"]) == 0
    assert '"excludes": []' in capsys.readouterr().out
    # an option given for one run wins for that run only
    cli = BackupManager(AILabBackup(source_dir=str(source), store=str(store), docker_url="none",
                                    excludes=["only-now"]))
    cli.settings.pinned = {"excludes"}
    assert cli.settings.excludes == ["only-now"]


# Docker: the helper image and the change token -----------------------------------------------


@pytest.fixture
def other_image(docker_client):
    """The helper image under a second name of this run (removed after): an image that is
    present but must be offered before a UI may choose it."""
    name = f"ailab-backup-other-{uuid.uuid4().hex[:8]}:test"
    docker_client.images.get(HELPER_IMAGE).tag(name)
    yield name
    docker_client.images.remove(name, noprune=True)


@pytest.fixture
def jp_server_config(request, tmp_path):
    """Local mode (as in conftest), or for a test that asks for ``volumes`` a volume and a store
    volume (and ``other_image`` offered, when asked for)."""
    if "volumes" not in request.fixturenames:
        return server_config(store=str(tmp_path / "store"), docker_url="none")
    volume, store = request.getfixturevalue("volumes")
    extra = request.getfixturevalue("other_image") if "other_image" in request.fixturenames else None
    return server_config(volume=volume, store=store, helper_image_choices=[extra] if extra else [])


def helpers_created(docker_client, since):
    """Helper containers this process (the in-process server) created since ``since``, from
    Docker's event log (other runs share the engine)."""
    owner = f"ailab-backup.owner={socket.gethostname()}:{os.getpid()}"
    return list(docker_client.api.events(
        since=f"{since:.9f}", until=f"{time.time():.9f}", decode=True,
        filters={"type": "container", "event": "create", "label": ["ailab-backup.helper=1", owner]}))


async def test_only_an_offered_present_image_can_be_chosen(jp_fetch, jp_serverapp, docker_client, volumes,
                                                           other_image):
    volume, _ = volumes
    run_in_volume(docker_client, volume, "echo hi > /v/a.ipynb")
    _, settings, _ = await call(jp_fetch, "settings")
    offered = {i["name"]: i["present"] for i in settings["helper_images"]}
    assert offered == {"": True, HELPER_IMAGE: True, other_image: True, "ubuntu": offered["ubuntu"]}

    # an image that exists but is not offered, and one offered but absent: refused, nothing changed
    sneaky = f"ailab-backup-sneaky-{uuid.uuid4().hex[:8]}:test"
    docker_client.images.get(HELPER_IMAGE).tag(sneaky)
    try:
        _, error, _ = await call(jp_fetch, "settings", method="PUT", body={"helper_image": sneaky}, expect=400)
        assert "not one this server offers" in error["message"] and other_image in error["message"]
    finally:
        docker_client.images.remove(sneaky, noprune=True)
    if not offered["ubuntu"]:
        _, error, _ = await call(jp_fetch, "settings", method="PUT", body={"helper_image": "ubuntu"}, expect=400)
        assert "not present in Docker" in error["message"]
    _, settings, _ = await call(jp_fetch, "settings")
    assert settings["helper_image"] == HELPER_IMAGE and settings["kept"] == []

    # the offered one: kept, and every helper from now on is made from it
    _, settings, _ = await call(jp_fetch, "settings", method="PUT", body={"helper_image": other_image})
    assert settings["helper_image"] == other_image and settings["kept"] == ["helper_image"]
    since = time.time()
    await backup_now(jp_fetch)
    images = {e["Actor"]["Attributes"]["image"] for e in helpers_created(docker_client, since)}
    assert images == {other_image}

    # a restart reads it back from the store volume
    manager = jp_serverapp.web_app.settings[SETTINGS_KEY]
    again = BackupManager(manager.config, root_dir=manager.root_dir)
    again.resolve()
    assert again.docker.image() == other_image
    # '' goes back to the configuration's image
    _, settings, _ = await call(jp_fetch, "settings", method="PUT", body={"helper_image": ""})
    assert settings["helper_image"] == HELPER_IMAGE and settings["kept"] == []


async def test_polling_the_change_token_makes_no_helper_container(jp_fetch, docker_client, volumes, tmp_path):
    volume, store = volumes
    run_in_volume(docker_client, volume, "echo hi > /v/a.ipynb")
    await call(jp_fetch, "status")  # the server's first reads (the schedule, the settings) are done
    await asyncio.sleep(1)  # and so is its start's clean-up (partial archives, stale helpers)
    _, first, _ = await call(jp_fetch, "changes")
    since = time.time()
    started = time.perf_counter()
    polls = 30
    tokens = [(await call(jp_fetch, "changes"))[1]["token"] for _ in range(polls)]
    per_poll = (time.perf_counter() - started) / polls
    assert helpers_created(docker_client, since) == []
    assert set(tokens) == {first["token"]}  # nothing changed, nothing said
    print(f"change token: {per_poll * 1000:.1f} ms per poll, 0 helper containers in {polls} polls")

    # a backup through REST (as the panel makes it) changes it
    await backup_now(jp_fetch)
    _, after_rest, _ = await call(jp_fetch, "changes")
    assert after_rest["token"] != first["token"] and after_rest["job"] is None

    # a backup by the CLI, another process, into the same store volume changes it too
    env = {**os.environ, "AILAB_BACKUP_HELPER_IMAGE": HELPER_IMAGE}
    cli = subprocess.run([sys.executable, "-m", "ailab_backup_ext.cli", "--volume", volume, "--store", store,
                          "create", "--label", "from the CLI"], env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    _, after_cli, _ = await call(jp_fetch, "changes")
    assert after_cli["token"] != after_rest["token"]
    _, again, _ = await call(jp_fetch, "changes")
    assert again["token"] == after_cli["token"]  # said once, then quiet
