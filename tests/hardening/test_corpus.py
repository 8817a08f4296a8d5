"""The corpus of hostile and broken archives (tests/hardening/corpus, made by make_corpus.py):
each one uploaded through REST and given to the CLI is refused with a 4xx or a clear message, and
nothing is written anywhere: the store, the notebooks folder and a Docker volume hash the same
before and after."""

import hashlib
import json
import os
import uuid

import pytest

from ailab_backup_ext.cli import main
from restutil import call
from treeutil import run_in_volume, volume_snapshot

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
with open(os.path.join(CORPUS, "index.json")) as f:
    INDEX = json.load(f)


def tree_hash(root):
    """One hash of every path, type, mode and content below root (what 'unchanged' means)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            digest.update(f"{os.path.relpath(full, root)}|{st.st_mode}|{st.st_size}".encode("utf-8", "surrogateescape"))
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def test_the_corpus_is_large_enough_and_kept_in_the_repository():
    assert len(INDEX) >= 30
    assert set(os.listdir(CORPUS)) == set(INDEX) | {"index.json"}  # none missing, none unlisted


@pytest.fixture
def notebooks(jp_root_dir):
    (jp_root_dir / "a.ipynb").write_text('{"cells": ["mine"]}')
    (jp_root_dir / "sub").mkdir()
    (jp_root_dir / "sub" / "keep.txt").write_text("keep")
    return jp_root_dir


@pytest.mark.parametrize("name", sorted(INDEX))
async def test_upload_is_refused_and_changes_nothing(jp_fetch, notebooks, tmp_path, name):
    (tmp_path / "store" / "data").mkdir(parents=True, exist_ok=True)  # an existing store
    (tmp_path / "store" / "meta").mkdir(exist_ok=True)
    before = tree_hash(tmp_path)
    with open(os.path.join(CORPUS, name), "rb") as f:
        data = f.read()
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=data, expect=None)
    assert 400 <= code < 500, (code, body)
    expected = "The upload is empty" if not data else INDEX[name]  # REST names an empty body itself
    assert expected in body["message"], body["message"]
    assert tree_hash(tmp_path) == before  # store, notebooks and everything beside them


@pytest.mark.parametrize("name", sorted(INDEX))
def test_cli_refuses_it_and_changes_nothing(tmp_path, capsys, name):
    source, store = tmp_path / "nb", tmp_path / "store"
    source.mkdir()
    (store / "data").mkdir(parents=True)
    (store / "meta").mkdir()
    (source / "a.ipynb").write_text('{"cells": ["mine"]}')
    before = tree_hash(tmp_path)
    status = main(["--source-dir", str(source), "--store", str(store), "import", "--file", os.path.join(CORPUS, name)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("ailab-backup: error:") and err.count("\n") == 1, err
    assert INDEX[name] in err
    assert tree_hash(tmp_path) == before


@pytest.fixture(scope="module")
def corpus_volume(docker_client):
    volume = docker_client.volumes.create(f"ailabtest-corpus-{uuid.uuid4().hex[:10]}")  # not a parallel run's
    run_in_volume(docker_client, volume.name, "echo mine > /v/a.ipynb && mkdir /v/sub && echo keep > /v/sub/keep.txt")
    yield volume.name
    volume.remove(force=True)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_restore_into_a_volume_is_refused_and_changes_nothing(docker_client, corpus_volume, tmp_path, capsys,
                                                            monkeypatch, name):
    """Placed in the store by hand (as someone with access to it could), then restored. The
    total-size limit is what stops a bomb here (a store's own archives meet no ratio limit)."""
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", str(2**30))
    store = tmp_path / "store"
    (store / "data").mkdir(parents=True)
    (store / "meta").mkdir()
    backup_id = "notebooks-20990101T000000Z"
    with open(os.path.join(CORPUS, name), "rb") as f:
        data = f.read()
    (store / "data" / f"{backup_id}.tar.zst").write_bytes(data)
    (store / "meta" / f"{backup_id}.json").write_text(json.dumps({
        "id": backup_id, "created": "2099-01-01T00:00:00Z", "archive": f"{backup_id}.tar.zst",
        "source": {}, "file_count": 1, "total_bytes": 1, "size_bytes": len(data)}))
    volume_before, store_before = volume_snapshot(docker_client, corpus_volume), tree_hash(store)
    status = main(["--volume", corpus_volume, "--store", str(store), "restore", backup_id, "--mode", "replace"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("ailab-backup: error:") and "Traceback" not in err, err
    assert volume_snapshot(docker_client, corpus_volume) == volume_before
    assert tree_hash(store) == store_before
