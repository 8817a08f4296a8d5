"""Moving to a new AI-Lab release for real: two AI-Lab-like containers (tests/ailab_container.py)
of two made-up releases, each with its NOTEBOOK_DEFAULTS in Config.Env only (the entrypoint's
sudo drops it), one volume each and the shared store volume; by REST, in the worker."""

import json

from ailab_container import JUPYTER_UID, NOTEBOOKS, VENV
from releaseutil import (AFTER_MOVE, RELEASE_1, RELEASE_2, USER_CHANGES, check_plan, digests, file_digests,
                         make_release)
from treeutil import volume_snapshot

DEFAULTS_AT = "/opt/release-defaults"  # not the image's /home/jupyter/notebook-defaults: only Config.Env says it


def write_as_user(server, files):
    server.python(
        f"import json, os\nfiles = json.loads({json.dumps(json.dumps(files))})\n"
        "for path, content in files.items():\n"
        f"    full = os.path.join({NOTEBOOKS!r}, path)\n"
        "    os.makedirs(os.path.dirname(full), exist_ok=True)\n"
        "    with open(full, 'w') as f:\n"
        "        f.write(content)\n")


def test_bring_work_from_the_old_container_into_the_new_release(ailab_server, ailab_image, docker_client,
                                                                make_volume, tmp_path):
    repository = ailab_image.name.rsplit(":", 1)[0]
    image = docker_client.images.get(ailab_image.name)
    tags = [f"{repository}:1.0", f"{repository}:2.0"]  # two releases: their tags and their defaults
    for tag in tags:
        image.tag(repository, tag.rsplit(":", 1)[1])
    try:
        store, old_volume, new_volume = make_volume("ailabstore"), make_volume(), make_volume()
        env = {"AILAB_BACKUP_STORE": store, "NOTEBOOK_DEFAULTS": DEFAULTS_AT}
        args = ("--notebook-defaults", DEFAULTS_AT)

        def server(tag, defaults, volume):
            return ailab_server(image=tag, notebooks=volume, env=env, binds={defaults: DEFAULTS_AT}, args=args)

        old = server(tags[0], make_release(tmp_path / "r1", RELEASE_1), old_volume)
        write_as_user(old, USER_CHANGES)
        client = old.backup_client()
        status = client.status()
        assert status["worker"]["in_use"], status["worker"]  # the worker is given the server's release
        assert status["release"]["running"]["image"] == tags[0] and status["release"]["running"]["name"] == "1.0"
        job = client.create(before_upgrade=True, wait=True)
        assert job["state"] == "succeeded", job
        backup_id = job["backup_id"]
        meta = client.show(backup_id)
        assert meta["label"] == "Before upgrading (AI-Lab 1.0)"
        assert (meta["release"]["defaults_count"], meta["release"]["unchanged_defaults"]) == (len(RELEASE_1), 2)
        old.remove()  # as AI-Lab's guide says: docker rm -f, then a new container with a new volume

        new = server(tags[1], make_release(tmp_path / "r2", RELEASE_2), new_volume)
        client = new.backup_client()
        assert [b["id"] for b in client.list()] == [backup_id]  # the old container's, from the shared store
        move = client.status()["release"]["move"]
        assert move["backup_id"] == backup_id and "AI-Lab 1.0" in move["message"], move
        before = volume_snapshot(docker_client, new_volume)
        assert file_digests(before) == digests(RELEASE_2)  # the entrypoint of 2.0 filled it

        # the command line in a terminal of the new container finds the same (its own container, the store)
        out = new.exec(f"{VENV}/bin/ailab-backup", "restore", backup_id, "--into-release", "--dry-run")
        for line in ("both  data/flights.ipynb  (AI-Lab 2.0's version kept as data/flights (AI-Lab 2.0).ipynb)",
                     "release old_demo.ipynb", "new  my/analysis.ipynb", "Nothing was changed."):
            assert line in out, (line, out)
        plan = client.plan_restore(backup_id, "release-move")
        check_plan(plan)
        assert volume_snapshot(docker_client, new_volume) == before
        job = client.restore(backup_id, "release-move", wait=True)
        assert job["state"] == "succeeded", job
        after = volume_snapshot(docker_client, new_volume)
        assert file_digests(after) == digests(AFTER_MOVE)  # exactly what the plan said
        assert {after[path][2:4] for path in AFTER_MOVE} == {(JUPYTER_UID, JUPYTER_UID)}
        assert client.status()["release"]["move"] is None
        job = client.undo(wait=True)
        assert job["state"] == "succeeded", job
        assert file_digests(volume_snapshot(docker_client, new_volume)) == digests(RELEASE_2)
    finally:
        for tag in tags:
            docker_client.images.remove(tag)
