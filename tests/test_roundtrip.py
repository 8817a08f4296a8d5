"""Backup, wipe, restore: the tree comes back identical, on a real Docker volume and locally."""

import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from ailab_backup_ext.cli import main
from treeutil import HELPER_IMAGE, folder_snapshot, run_in_volume, volume_snapshot

OLD = 1_600_000_000  # a fixed past time, so restored times are checked, not "now"


def make_tree(root, big_mb=100):
    """What an AI-Lab user has: notebooks, the SCS, hidden files, an empty folder, a symlink,
    unicode names, a private file owned by uid 1000, and a large file."""
    os.makedirs(root, exist_ok=True)
    files = {
        "intro.ipynb": b'{"cells": [], "nbformat": 4}',
        "ai_lab_secure_configuration_storage.sqlite": os.urandom(8192),
        ".gitkeep": b"",
        ".ipynb_checkpoints/intro-checkpoint.ipynb": b'{"cells": []}',
        "démo/Übung ünïcödé.ipynb": "Grüße, 世界".encode(),
        "private/secret.txt": b"only for jupyter",
        "data/big.bin": None,
    }
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            if content is None:
                for _ in range(big_mb):
                    f.write(os.urandom(1024 * 1024))
            else:
                f.write(content)
    os.makedirs(os.path.join(root, "empty"))
    os.symlink("intro.ipynb", os.path.join(root, "link-to-intro"))
    os.symlink("../intro.ipynb", os.path.join(root, "démo", "up-link"))
    secret = os.path.join(root, "private/secret.txt")
    os.chmod(secret, 0o600)
    os.chown(secret, 1000, 1000)
    os.chown(os.path.join(root, "private"), 1000, 1000)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames + [""]:
            os.utime(os.path.join(dirpath, name), (OLD, OLD), follow_symlinks=False)
    return root


def fill_volume(client, volume, tree):
    """Copy a local tree into a volume with the archive API, keeping owner, mode and times."""
    helper = client.containers.create(HELPER_IMAGE, ["true"], volumes={volume: {"bind": "/v", "mode": "rw"}})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(tree, arcname="v")
        helper.put_archive("/", buf.getvalue())
    finally:
        helper.remove(force=True)


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out.strip().splitlines()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree") / "notebooks"))


def test_docker_replace_round_trip(docker_client, make_volume, tree, tmp_path, capsys):
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, tree)
    before = volume_snapshot(docker_client, volume)
    assert before["private/secret.txt"][1:4] == (0o600, 1000, 1000)

    backup_id = cli(capsys, "--volume", volume, "--store", store, "create", "--label", "first")[-1]
    assert cli(capsys, "--volume", volume, "--store", store, "list")[1].startswith(backup_id)

    run_in_volume(docker_client, volume, "rm -rf /v/* /v/.[!.]* && echo new > /v/not-in-backup")
    cli(capsys, "restore", backup_id, "--mode", "replace", "--volume", volume, "--store", store)
    assert volume_snapshot(docker_client, volume) == before


def test_docker_merge_keeps_other_files(docker_client, make_volume, tree, capsys):
    volume, store = make_volume(), make_volume("ailabstore")
    fill_volume(docker_client, volume, tree)
    before = volume_snapshot(docker_client, volume)
    backup_id = cli(capsys, "--volume", volume, "--store", store, "create")[-1]

    run_in_volume(docker_client, volume,
                  "echo changed > /v/intro.ipynb && rm -r /v/empty && echo mine > /v/new.ipynb")
    cli(capsys, "--volume", volume, "--store", store, "restore", backup_id)
    after = volume_snapshot(docker_client, volume)
    assert after.pop("new.ipynb")[0] == "file"  # merge keeps what the backup does not have
    assert after == before


def test_local_round_trips(tree, tmp_path, capsys):
    source = tmp_path / "notebooks"
    subprocess.check_call(["cp", "-a", tree, str(source)])  # keeps owners, unlike shutil.copytree
    before = folder_snapshot(source)
    assert before["private/secret.txt"][1:4] == (0o600, 1000, 1000)  # so owners are checked
    store = tmp_path / "store"
    backup_id = cli(capsys, "--source-dir", source, "--store", store, "create")[-1]

    shutil.rmtree(source / "private")
    (source / "intro.ipynb").write_text("changed")
    (source / "extra.txt").write_text("not in the backup")
    cli(capsys, "--source-dir", source, "--store", store, "restore", backup_id)
    merged = folder_snapshot(source)
    assert merged.pop("extra.txt")[0] == "file"
    merged.pop(".")  # adding extra.txt changed the folder's time after the restore set it
    assert merged == {k: v for k, v in before.items() if k != "."}

    cli(capsys, "--source-dir", source, "--store", store, "restore", backup_id, "--mode", "replace")
    assert folder_snapshot(source) == before


def test_verify_and_delete(tree, tmp_path, capsys):
    store = tmp_path / "store"
    backup_id = cli(capsys, "--source-dir", tree, "--store", store, "create")[-1]
    assert "OK" in cli(capsys, "--source-dir", tree, "--store", store, "verify", backup_id)[-1]
    archive = next((store / "data").iterdir())
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the stored archive
    archive.write_bytes(bytes(data))
    assert main(["--source-dir", str(tree), "--store", str(store), "verify", backup_id]) == 1
    assert "error" in capsys.readouterr().err
    cli(capsys, "--source-dir", tree, "--store", store, "delete", backup_id)
    assert len(cli(capsys, "--source-dir", tree, "--store", store, "list")) == 1  # the header alone
    assert not list((store / "data").iterdir())


def seed_backup(volume, directory):
    """The seed page's backup recipe, verbatim but for the image (no registry here)."""
    c = subprocess.check_output(["docker", "run", "--detach", "-v", f"{volume}:/notebooks", HELPER_IMAGE,
                                 "sleep", "100000"], text=True).strip()
    try:
        subprocess.check_call(["docker", "cp", f"{c}:/notebooks", str(directory)])
    finally:
        subprocess.check_call(["docker", "rm", "-f", c], stdout=subprocess.DEVNULL)


def test_seed_recipe_backup_imports_and_plain_tar_matches_it(docker_client, make_volume, tree, tmp_path, capsys):
    volume = make_volume()
    fill_volume(docker_client, volume, tree)
    original = volume_snapshot(docker_client, volume)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    seed_backup(volume, seed_dir)

    # a backup made by the seed recipe, brought in with import --dir, equals the original in all
    # that docker cp keeps (content, mode, time, links); docker cp drops owners, so the files
    # take the owner of the notebooks folder: AI-Lab's user can edit them
    target = make_volume()
    run_in_volume(docker_client, target, "chown 1000:100 /v")  # AI-Lab's user: uid and gid differ
    # a store of the test's own: the default one, ailab-backups, may be a user's real store
    cli(capsys, "--volume", target, "--store", make_volume("ailabstore"), "import", "--dir", seed_dir)
    imported = volume_snapshot(docker_client, target)
    assert {k: (v[0], v[1], v[4], v[5]) for k, v in imported.items()} == {
        k: (v[0], v[1], v[4], v[5]) for k, v in original.items()}
    assert {v[2:4] for v in imported.values()} == {(1000, 100)}

    # our archive, extracted with plain tar, equals the seed recipe's DIR/notebooks
    store = tmp_path / "store"
    backup_id = cli(capsys, "--volume", volume, "--store", store, "create")[-1]
    plain = tmp_path / "plain"
    plain.mkdir()
    archive = store / "data" / f"{backup_id}.tar.zst"
    subprocess.check_call(["tar", "--zstd", "-xpf", str(archive), "-C", str(plain), "notebooks"])
    assert folder_snapshot(plain / "notebooks", with_owner=False) == folder_snapshot(seed_dir / "notebooks", with_owner=False)
    # beyond docker cp, which gives every file to the user running it, ours keeps owners
    assert folder_snapshot(plain / "notebooks")["private/secret.txt"][2:4] == (1000, 1000)


def test_export_writes_what_seed_recipe_writes(docker_client, make_volume, tree, tmp_path, capsys):
    volume = make_volume()
    fill_volume(docker_client, volume, tree)
    seed_dir, ours = tmp_path / "seed", tmp_path / "ours"
    seed_dir.mkdir()
    seed_backup(volume, seed_dir)
    cli(capsys, "--volume", volume, "export", "--dir", ours)
    assert folder_snapshot(ours / "notebooks", with_owner=False) == folder_snapshot(seed_dir / "notebooks", with_owner=False)
    assert folder_snapshot(ours / "notebooks")["private"][2:4] == (1000, 1000)


def test_excludes_leave_folders_out_and_replace_keeps_them(tree, tmp_path, capsys):
    source = tmp_path / "notebooks"
    shutil.copytree(tree, source, symlinks=True)
    store = tmp_path / "store"
    backup_id = cli(capsys, "--source-dir", source, "--store", store, "--exclude", "data", "create")[-1]
    assert main(["--source-dir", str(source), "--store", str(store), "show", backup_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["file_count"] == 6  # 7 files in the tree, data/big.bin left out
    assert shown["total_bytes"] < 1024 * 1024
    (source / "intro.ipynb").write_text("changed")
    cli(capsys, "--source-dir", source, "--store", store, "--exclude", "data", "restore", backup_id, "--mode", "replace")
    assert (source / "data" / "big.bin").stat().st_size == 100 * 1024 * 1024  # excluded: never removed
    with open(os.path.join(tree, "intro.ipynb"), "rb") as f:
        assert (source / "intro.ipynb").read_bytes() == f.read()
