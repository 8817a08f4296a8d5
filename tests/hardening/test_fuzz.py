"""Fuzzing: the served OpenAPI document drives schemathesis against a real server (no 5xx, every
response as documented), and hypothesis throws broken and hostile archives at the reader."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailab_backup_ext.archive import Manifest, read_archive, write_archive, Entry
from ailab_backup_ext.errors import InvalidArchive, TooLarge
from ailab_backup_ext.handlers import OPENAPI_PATH
from restutil import free_port, wait_for_server

with open(OPENAPI_PATH) as f:
    SCHEMA = schemathesis.openapi.from_dict(json.load(f))
TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real jupyter server in local mode, with a backup in its store."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "nb").mkdir()
    (tmp / "nb" / "a.ipynb").write_text('{"cells": []}')
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp / 'nb'}", "--allow-root",
         f"--AILabBackup.store={tmp / 'store'}", "--AILabBackup.docker_url=none",
         "--AILabBackup.max_upload_bytes=1000000", "--ServerApp.allow_unauthenticated_access=False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/ailab/backup"
    auth = {"Authorization": f"token {TOKEN}"}
    try:
        wait_for_server(process, base + "/status", 30)
        job = requests.post(base, json={"label": "fuzz"}, headers=auth).json()["job"]
        for _ in range(100):
            if requests.get(f"{base}/jobs/{job['id']}", headers=auth).json()["state"] == "succeeded":
                break
            time.sleep(0.1)
        yield base, auth
    finally:
        process.terminate()
        process.wait(30)


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails_with_5xx(case, server):
    base, auth = server
    # "schema-valid" is not always meaningful here: an upload must be a real archive and a
    # schedule a known rule. Their refusals are 400s with a message, which every other check
    # (status documented, body as documented, no 5xx) still verifies.
    case.call_and_validate(base_url=base, headers=auth, excluded_checks=[positive_data_acceptance])


# --- the archive reader -----------------------------------------------------------------------

def valid_archive(compression="zstd"):
    out = io.BytesIO()
    entries = [
        (Entry(".", "dir", mode=0o755), None),
        (Entry("a.ipynb", "file", size=11, mode=0o644), io.BytesIO(b'{"cells":1}')),
        (Entry("d", "dir", mode=0o700), None),
        (Entry("d/b.bin", "file", size=300, mode=0o600, uid=1000, gid=1000), io.BytesIO(os.urandom(300))),
        (Entry("d/l", "symlink", target="b.bin"), None),
    ]
    write_archive(out, entries, Manifest(created="2026-01-01T00:00:00Z", source={}), compression)
    return out.getvalue()


VALID = {c: valid_archive(c) for c in ("zstd", "gzip")}


@settings(max_examples=300, deadline=None)
@given(compression=st.sampled_from(["zstd", "gzip"]), data=st.data())
def test_a_damaged_archive_is_refused_or_read_whole(compression, data):
    raw = bytearray(VALID[compression])
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del raw[at:]
    elif how == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        del raw[at:at + data.draw(st.integers(1, 64))]
    try:
        manifest = read_archive(io.BytesIO(bytes(raw)))
    except (InvalidArchive, TooLarge):
        return
    # read whole: then it holds exactly what was written (e.g. a flip in gzip's header time)
    assert [e.path for e in manifest.entries] == [".", "a.ipynb", "d", "d/b.bin", "d/l"]


names = st.one_of(
    st.sampled_from(["notebooks", "notebooks/a", "notebooks/../x", "/etc/passwd", "notebooks/./a",
                     "notebooks//a", "x/y", "notebooks/a/../../b", "ailab-backup-manifest.json", "./notebooks/a"]),
    st.text(min_size=1, max_size=30).map(lambda t: "notebooks/" + t),
)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                         tarfile.FIFOTYPE, tarfile.BLKTYPE])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(st.tuples(names, kinds, st.binary(max_size=40), st.text(max_size=20),
                                  st.sampled_from([0o644, 0o4755, 0o2755, 0o777])), max_size=6),
       with_manifest=st.booleans())
def test_any_generated_tar_is_refused_with_a_clear_error_or_checked(members, with_manifest):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content, link, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
        if with_manifest:
            data = json.dumps({"format": "ailab-backup", "format_version": 1, "entries": []}).encode()
            info = tarfile.TarInfo("ailab-backup-manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    try:
        manifest = read_archive(io.BytesIO(buf.getvalue()))
    except (InvalidArchive, TooLarge) as exc:
        assert str(exc)  # a message, never an empty one
        return
    assert manifest.entries == []  # only an archive with no data can match an empty manifest
