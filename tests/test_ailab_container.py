"""The extension inside a container built like AI-Lab's Docker Edition (tests/ailab_container.py):
its entrypoint, its `jupyter` user (uid not 1000), its VOLUME, password auth and no token, the
four ways to start it, and what a killed server leaves."""

import json
import os
import re
import tarfile
import time

import pytest
import zstandard

from ailab_backup_ext.archive import read_archive
from ailab_backup_ext.docker_helper import (HELPER_LABEL, OWNER_LABEL, STARTED_LABEL, DockerHelper, owner_host,
                                            process_start)
from ailab_container import DEFAULT_NOTEBOOKS, JUPYTER_UID, NOTEBOOKS
from treeutil import HELPER_IMAGE, folder_snapshot, volume_snapshot

ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")
LOCAL_STORE = "/home/jupyter/.local/share/jupyter/ailab-backups"
CONTENT = (  # what a user has made, written as the user jupyter
    "mkdir -p project/.ipynb_checkpoints && echo '{\"cells\": []}' > project/analysis.ipynb && "
    "echo ckpt > project/.ipynb_checkpoints/analysis-checkpoint.ipynb && "
    "printf 'SQLite format 3\\000secret' > ai_lab_secure_configuration_storage.sqlite && "
    "echo hidden > .gitkeep && chmod 600 ai_lab_secure_configuration_storage.sqlite"
)


def server_helpers(docker_client, server, kept=False):
    """Helper containers made by the server in ``server`` (their owner label names its container:
    by id; before that label said the hostname, here the container's name); with ``kept``, only
    those it keeps for its lifetime (to look at the store volume), else only the others."""
    helpers = docker_client.api.containers(all=True, filters={"label": "ailab-backup.helper=1"})
    return [h for h in helpers
            if (h.get("Labels") or {}).get("ailab-backup.owner", "").rpartition(":")[0] in (server.id, server.name)
            and ("ailab-backup.kept" in (h.get("Labels") or {})) == kept]


def dangling_anonymous_volumes(docker_client):
    """Anonymous volumes (64 hex digits) that no container uses any more: leaked ones."""
    found = docker_client.api.volumes(filters={"dangling": True}).get("Volumes") or []
    return {v["Name"] for v in found if ANONYMOUS.match(v["Name"])}


def volume_count(docker_client):
    return len(docker_client.api.volumes().get("Volumes") or [])


class LeakCounter:
    """Per action: helper containers of the server left, anonymous volumes leaked, and the
    count of `docker volume ls` before and after (the engine is shared: that count is a figure,
    the first two are what is asserted)."""

    def __init__(self, docker_client, server):
        self.docker_client, self.server, self.rows = docker_client, server, {}

    def action(self, name, do):
        before, count = dangling_anonymous_volumes(self.docker_client), volume_count(self.docker_client)
        result = do()
        # a download's helper goes once the server has sent the last byte: give it a moment
        deadline = time.monotonic() + 10
        while True:
            helpers = len(server_helpers(self.docker_client, self.server))
            leaked = len(dangling_anonymous_volumes(self.docker_client) - before)
            if not (helpers or leaked) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        kept = server_helpers(self.docker_client, self.server, kept=True)
        workers = [h for h in kept if "ailab-backup.worker" in (h.get("Labels") or {})]
        self.rows[name] = {"helpers left": helpers, "anonymous volumes left": leaked,
                           "kept for listing": len(kept) - len(workers), "kept workers": len(workers),
                           "docker volume ls": (count, volume_count(self.docker_client))}
        return result

    def assert_nothing_left(self):
        print(json.dumps(self.rows))
        assert all(r["helpers left"] == 0 and r["anonymous volumes left"] == 0 for r in self.rows.values()), self.rows
        # the server keeps one helper to look at its store volume and one worker (for its source and
        # store), removed when it stops
        assert all(r["kept for listing"] <= 1 and r["kept workers"] <= 1 for r in self.rows.values()), self.rows
        assert self.rows  # some action was counted


def snapshot(docker_client, server, bind_folder=None):
    """The notebooks folder of the server, as a user would compare it (content, mode, owner, time)."""
    if bind_folder:
        return folder_snapshot(bind_folder)
    return volume_snapshot(docker_client, server.notebooks_mount()["Name"])


def archive_names(path):
    """The member names of a downloaded .tar.zst."""
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as raw, \
            tarfile.open(fileobj=raw, mode="r|") as tar:
        return {info.name for info in tar}


@pytest.mark.parametrize("start", ["named volume", "anonymous volume", "bind mount", "no socket"])
def test_the_four_starts_back_up_restore_download_and_undo_leaving_nothing(
        start, ailab_server, docker_client, make_volume, tmp_path):
    socket = start != "no socket"
    bind_folder = str(tmp_path / "notebooks") if start == "bind mount" else None
    if bind_folder:
        (tmp_path / "notebooks").mkdir()
    notebooks = {"named volume": make_volume, "no socket": make_volume}.get(start, lambda: bind_folder)()
    store = make_volume("ailabstore")
    server = ailab_server(notebooks=notebooks, socket=socket, env={"AILAB_BACKUP_STORE": store})
    mount = server.notebooks_mount()
    if start == "anonymous volume":
        assert mount["Type"] == "volume" and ANONYMOUS.match(mount["Name"])  # the image's VOLUME
    server.exec("sh", "-c", f"cd {NOTEBOOKS} && {CONTENT}")
    client = server.backup_client()
    leaks = LeakCounter(docker_client, server)

    status = leaks.action("status", client.status)
    if socket:
        assert status["mode"] == "docker" and status["hint"] is None, status
        expected = {"named volume": ("volume", notebooks), "anonymous volume": ("volume", mount.get("Name")),
                    "bind mount": ("bind", bind_folder)}[start]
        assert (status["source"]["type"], status["source"]["name"]) == expected, status
        assert status["store"] == {"type": "volume", "name": store}  # docker run -e reached it
        assert status["store_warning"] is None
    else:
        assert status["mode"] == "local" and status["docker"]["reachable"] is False
        assert status["store"]["name"] == LOCAL_STORE, status
        # where the backups are, what deletes them, and what to do instead
        warning = status["store_warning"]
        assert LOCAL_STORE in warning and "'docker rm'" in warning and "deletes them" in warning, warning
        assert "Download" in warning and "/var/run/docker.sock" in warning, warning

    before = snapshot(docker_client, server, bind_folder)
    owners = {entry[2:4] for entry in before.values()}
    assert owners == {(JUPYTER_UID, JUPYTER_UID)}, owners  # the entrypoint's chown -R, the user's files

    job = leaks.action("backup", lambda: client.create("before the change", wait=True))
    assert job["state"] == "succeeded", job
    backup_id = job["backup_id"]
    listing = leaks.action("list", client.list)
    assert [b["id"] for b in listing] == [backup_id]
    downloaded = leaks.action("download", lambda: client.download(backup_id, str(tmp_path)))
    names = archive_names(downloaded)
    for path in [*DEFAULT_NOTEBOOKS, "project/analysis.ipynb", "ai_lab_secure_configuration_storage.sqlite"]:
        assert f"notebooks/{path}" in names, sorted(names)

    server.exec("sh", "-c", f"cd {NOTEBOOKS} && rm -r project && echo changed > start.ipynb && echo new > stray.txt")
    changed = snapshot(docker_client, server, bind_folder)
    job = leaks.action("restore", lambda: client.restore(backup_id, "replace", wait=True))
    assert job["state"] == "succeeded", job
    assert snapshot(docker_client, server, bind_folder) == before  # owners (the jupyter uid) kept too

    job = leaks.action("undo", lambda: client.undo(wait=True))
    assert job["state"] == "succeeded", job
    assert snapshot(docker_client, server, bind_folder) == changed
    leaks.assert_nothing_left()

    if not socket:  # the detection itself, for real: the store on the container's layer, the notebooks not
        found = json.loads(server.python(
            "import json; from ailab_backup_ext.docker_helper import on_container_filesystem as on\n"
            f"print(json.dumps([on({LOCAL_STORE!r}), on({NOTEBOOKS!r} + '/project')]))"))
        assert found == [True, False]


def test_a_server_killed_midway_leaves_no_helper_nor_volume_once_started_again(
        ailab_server, docker_client, make_volume, tmp_path):
    store = make_volume("ailabstore")
    server = ailab_server(notebooks=make_volume(), env={"AILAB_BACKUP_STORE": store})
    server.exec("sh", "-c", f"dd if=/dev/urandom of={NOTEBOOKS}/big.bin bs=1M count=300 2>/dev/null")
    client = server.backup_client()
    before = dangling_anonymous_volumes(docker_client)
    job = client.create("to be killed")
    for _ in range(600):
        job = client.job(job["id"])
        if job["progress"]["done_bytes"] > 0:
            break
        time.sleep(0.05)
    assert job["state"] == "running", job
    # the job's helpers: a worker per operation, or the kept worker (which goes with its server)
    working = server_helpers(docker_client, server) + [
        h for h in server_helpers(docker_client, server, kept=True) if "ailab-backup.worker" in (h.get("Labels") or {})]
    server.kill()
    assert working, "no helper of the killed server (was it mid-job?)"
    dead_servers_kept = {h["Id"] for h in server_helpers(docker_client, server, kept=True)}

    server.start()  # docker start: same hostname, and the server most likely gets the same pid
    deadline = time.monotonic() + 60
    while server_helpers(docker_client, server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server_helpers(docker_client, server) == [], server.logs()
    assert dead_servers_kept.isdisjoint(h["Id"] for h in server_helpers(docker_client, server, kept=True))
    assert dangling_anonymous_volumes(docker_client) - before == set()
    # the worker may have finished the backup on its own after the server died: a backup that is
    # listed must then be whole (every file checked against its manifest), never a partial one
    client = server.backup_client()
    for meta in client.list():
        assert meta["label"] == "to be killed", meta
        with open(client.download(meta["id"], str(tmp_path)), "rb") as f:
            manifest = read_archive(f)
        assert (manifest.file_count, manifest.total_bytes) == (meta["file_count"], meta["total_bytes"])


def test_settings_given_with_docker_run_e_reach_the_server_through_sudo(ailab_server, docker_client, make_volume,
                                                                       tmp_path):
    store = make_volume("ailabstore")
    server = ailab_server(notebooks=make_volume(), env={
        "AILAB_BACKUP_STORE": store, "AILAB_BACKUP_EXCLUDES": "models_cache, *.tmp", "JUPYTER_PASSWORD": "kept"})
    environment = server.server_environment()
    # the entrypoint dropped them as sudo --preserve-env=JUPYTER_PASSWORD does ...
    assert "AILAB_BACKUP_EXCLUDES" not in environment and environment["JUPYTER_PASSWORD"] == "kept"
    server.exec("sh", "-c", f"cd {NOTEBOOKS} && mkdir models_cache && echo w > models_cache/weights.bin && "
                            "echo t > scratch.tmp && echo '{}' > keep.ipynb")
    client = server.backup_client()
    # ... and yet they take effect, read from the container's own Config.Env (checked before any
    # backup: without it, the backup would go to the shared default volume)
    assert client.status()["store"] == {"type": "volume", "name": store}
    job = client.create(wait=True)
    assert job["state"] == "succeeded", job
    names = archive_names(client.download(job["backup_id"], str(tmp_path)))
    assert "notebooks/keep.ipynb" in names
    assert not {n for n in names if n.startswith("notebooks/models_cache") or n.endswith(".tmp")}, names


def test_the_server_finds_its_own_container_and_image_for_real(ailab_server, ailab_image, docker_client,
                                                              make_volume):
    volume, store = make_volume(), make_volume("ailabstore")
    server = ailab_server(notebooks=volume, env={"AILAB_BACKUP_STORE": store})
    found = json.loads(server.python(
        "import json\n"
        "from ailab_backup_ext import docker_helper as d\n"
        "helper = d.DockerHelper()\n"
        "found = {'mountinfo': d.own_container_id(), 'inspected': helper.own_container()['Id'],\n"
        "         'image': helper.image()}\n"
        "d.own_container_id = lambda: None  # no container id in mountinfo: the hostname fallback\n"
        "found['by hostname'] = d.DockerHelper().own_container()['Id']\n"
        "print(json.dumps(found))"))
    assert found == {"mountinfo": server.id, "inspected": server.id, "by hostname": server.id,
                     "image": docker_client.images.get(ailab_image.name).id}  # the helper image: ours
    status = server.backup_client().status()
    assert status["source"] == {"type": "volume", "name": volume,
                                "found_by": f"mount of this container at {NOTEBOOKS}"}, status


def test_helpers_of_a_dead_owner_are_stale_those_of_a_live_one_stay(docker_client):
    """After `docker start` a server may get the pid of the killed one: its helpers still go, told
    apart by the start time of the process that made them. Helpers of a server whose container
    was removed (`docker rm -f` mid-job) go too; those of a live owner stay."""
    made = []

    def helper(owner, started=""):
        labels = {HELPER_LABEL: "1", OWNER_LABEL: owner, STARTED_LABEL: started}
        made.append(docker_client.containers.create(HELPER_IMAGE, ["true"], labels=labels, network_disabled=True))
        return made[-1].id

    mine = f"{owner_host()}:{os.getpid()}"
    earlier, ours = helper(mine, "1"), helper(mine, process_start(os.getpid()))
    removed_container, live_container = helper("0" * 64 + ":8"), helper(f"{ours}:8")
    try:
        DockerHelper(helper_image=HELPER_IMAGE).remove_stale_helpers()
        left = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": HELPER_LABEL + "=1"})}
        assert (earlier in left, ours in left, removed_container in left, live_container in left) == (
            False, True, False, True)
    finally:
        for container in made:
            try:
                container.remove(v=True, force=True)
            except Exception:  # noqa: BLE001 - removed by the test
                pass
