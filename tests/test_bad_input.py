"""Hostile and broken input, used as a user would: through the command line and the upload path.

Every bad archive is put into a folder store as if it were a backup, then restored (merge, replace,
one path, dry run), verified and uploaded; a few also into a real Docker volume. Each must be refused with one line ``ailab-backup: error: ...``
naming the problem, without a traceback, and nothing may change anywhere: not the notebooks
folder, not the store, not the folders around them.

The archives are built here with :mod:`tarfile` directly (not with the package's writer), starting
from a valid archive (see ``test_control_archive_is_restored``) and breaking one thing each.
"""

import gzip
import hashlib
import io
import json
import os
import random
import re
import stat
import tarfile
import uuid
import zipfile

import pytest
import zstandard

from ailab_backup_ext import cli
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import InvalidArchive, TooLarge
from treeutil import folder_snapshot, run_in_volume, volume_snapshot

MANIFEST = "ailab-backup-manifest.json"
MTIME = 1_700_000_000
BACKUP_ID = "notebooks-20260101T000000Z"
NEW_NOTEBOOK = b'{"cells": [], "restored": true}\n'
ABSOLUTE_TARGET = "/tmp/ailab-bad-input-escape.txt"  # where an absolute member would land

# ---------------------------------------------------------------------------------------------
# Building archives

_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
# what the reader calls each kind in the manifest (so the manifest is consistent with the data)
_MANIFEST_TYPES = {"chr": "device file", "blk": "device file"}


class M:
    """One tar member: ``kind`` is a key of _TAR_TYPES or a raw one-byte tar type."""

    def __init__(self, name, kind="file", data=b"", *, mode=None, target="", mtime=MTIME,
                 uid=1000, gid=1000, pax=None, in_manifest=True):
        self.name, self.kind, self.data, self.target = name, kind, data, target
        self.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
        self.mtime, self.uid, self.gid = mtime, uid, gid
        self.pax = pax or {}
        self.in_manifest = in_manifest

    def add_to(self, tar):
        info = tarfile.TarInfo(self.name)
        info.type = _TAR_TYPES.get(self.kind, self.kind)
        info.mode, info.mtime, info.uid, info.gid = self.mode, self.mtime, self.uid, self.gid
        info.uname = info.gname = ""
        if self.kind in ("symlink", "hardlink"):
            info.linkname = self.target
        if self.kind in ("chr", "blk"):
            info.devmajor, info.devminor = 1, 3
        if self.pax:
            info.pax_headers = dict(self.pax)
        if self.kind == "file":
            info.size = len(self.data)
            tar.addfile(info, io.BytesIO(self.data))
        else:
            tar.addfile(info)

    def manifest_entry(self):
        name = self.name[2:] if self.name.startswith("./") else self.name
        name = name.rstrip("/")
        path = "." if name == "notebooks" else name.removeprefix("notebooks/")
        kind = _MANIFEST_TYPES.get(self.kind, self.kind)
        if self.kind not in _TAR_TYPES:
            kind = f"tar member of type {self.kind!r}"
        entry = {"path": path, "type": kind, "size": 0, "mode": self.mode, "uid": self.uid,
                 "gid": self.gid, "mtime": self.mtime}
        if self.kind == "file":
            entry.update(size=len(self.data), sha256=hashlib.sha256(self.data).hexdigest())
        if self.kind in ("symlink", "hardlink"):
            entry["target"] = self.target
        return entry


def manifest_doc(members):
    entries = [m.manifest_entry() for m in members if m.in_manifest]
    files = [e for e in entries if e["type"] == "file"]
    return {
        "format": "ailab-backup",
        "format_version": 1,
        "created": "2026-01-01T00:00:00Z",
        "source": {"type": "folder", "name": "/home/jupyter/notebooks", "found_by": "test"},
        "label": "test",
        "compression": "zstd",
        "file_count": len(files),
        "total_bytes": sum(e["size"] for e in files),
        "entries": entries,
        "skipped": [],
    }


def tar_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            m.add_to(tar)
    return buf.getvalue()


def compress(raw, compression):
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(raw)
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    return raw


def archive(members, *, manifest=True, tweak=None, after=(), compression="zstd"):
    """A complete archive of ``members``, their manifest (changed by ``tweak``), then ``after``."""
    items = list(members)
    if manifest:
        doc = manifest_doc(members)
        if tweak:
            tweak(doc)
        items.append(M(MANIFEST, data=json.dumps(doc, indent=1).encode()))
    items += list(after)
    return compress(tar_of(items), compression)


def good_members():
    """A valid backup: it overwrites a.ipynb and adds sub/new.txt (see the source fixture)."""
    return [
        M("notebooks", "dir"),
        M("notebooks/a.ipynb", data=NEW_NOTEBOOK),
        M("notebooks/sub", "dir"),
        M("notebooks/sub/new.txt", data=b"new file\n"),
    ]


def with_bad(*bad, **kwargs):
    """The valid members (which a careless reader would already have written), then ``bad``."""
    return lambda: archive(good_members() + list(bad), **kwargs)


def _entry(doc, path):
    return next(e for e in doc["entries"] if e["path"] == path)


def _set(path, **changes):
    def tweak(doc):
        _entry(doc, path).update(changes)
    return tweak


def _noise(n, seed=1):
    return random.Random(seed).randbytes(n)


def _truncated(compression, keep=0.5):
    def build():
        data = archive(good_members() + [M("notebooks/big.bin", data=_noise(300_000))], compression=compression)
        return data[: int(len(data) * keep)]
    return build


def _flipped(compression, where=0.5, content=b"x" * 200_000):
    """16 bytes inverted at ``where`` (a fraction of the archive's length)."""
    def build():
        data = bytearray(archive(good_members() + [M("notebooks/big.bin", data=content)],
                                 compression=compression))
        i = int(len(data) * where)
        for k in range(i, i + 16):
            data[k] ^= 0xFF
        return bytes(data)
    return build


def _plain_tar_cut_in_file_data():
    raw = archive(good_members() + [M("notebooks/big.bin", data=b"y" * 100_000)], compression="none")
    return raw[:60_000]  # big.bin's data runs from about 3 KB to 103 KB


def _cut_before_manifest():
    """All data members complete, then the stream ends where the manifest would begin."""
    members = good_members()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            m.add_to(tar)
        cut = tar.offset
        M(MANIFEST, data=json.dumps(manifest_doc(members)).encode()).add_to(tar)
    return compress(buf.getvalue()[:cut], "zstd")


def _zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notebooks/a.ipynb", NEW_NOTEBOOK)
    return buf.getvalue()


def _garbage():
    return bytes((i * 7919 + 13) % 251 for i in range(20_000))


def _raw_manifest(data, kind="file"):
    return lambda: compress(tar_of(good_members() + [M(MANIFEST, kind, data)]), "zstd")


def _two_manifests():
    members = good_members()
    manifest = M(MANIFEST, data=json.dumps(manifest_doc(members)).encode())
    return compress(tar_of(members + [manifest, manifest]), "zstd")


def _trailing_garbage():
    # the manifest member, then bytes that are not a tar member (no end-of-archive blocks)
    members = good_members()
    manifest = M(MANIFEST, data=json.dumps(manifest_doc(members)).encode())
    raw = tar_of(members + [manifest]).rstrip(b"\0")
    raw += b"\0" * (-len(raw) % 512)
    return compress(raw + _garbage()[:4096], "zstd")




# (id, builder, fragment of the one-line message)
CASES = [
    # paths
    pytest.param(with_bad(M(ABSOLUTE_TARGET, data=b"evil")), "Refused member '/tmp/", id="absolute-path"),
    pytest.param(with_bad(M("/notebooks/abs.txt", data=b"evil")), "Refused member '/notebooks/abs.txt'",
                 id="absolute-path-under-notebooks"),
    pytest.param(with_bad(M("notebooks/../escape.txt", data=b"evil")), "'..'", id="dotdot-one-up"),
    pytest.param(with_bad(M("notebooks/sub/../../../escape.txt", data=b"evil")), "'..'", id="dotdot-deep"),
    pytest.param(with_bad(M("notebooks/a/../b.txt", data=b"evil")), "'..'", id="dotdot-inside"),
    pytest.param(with_bad(M("../escape.txt", data=b"evil")), "Refused member '../escape.txt'", id="dotdot-leading"),
    pytest.param(with_bad(M("notebooks/./dot.txt", data=b"evil")), "'.'", id="dot-part"),
    pytest.param(with_bad(M("notebooks/" + ABSOLUTE_TARGET, data=b"evil")), "not a relative path",
                 id="empty-part-making-an-absolute-path"),
    pytest.param(with_bad(M("other/x.txt", data=b"evil")), "only notebooks/", id="outside-notebooks"),
    pytest.param(with_bad(M("notebooksX/x.txt", data=b"evil")), "only notebooks/", id="sibling-prefix"),
    pytest.param(with_bad(M("notebooks/a.ipynb", pax={"path": "notebooks/nul\0name"}, data=b"evil")),
                 "not a relative path", id="nul-in-name"),
    # symlinks
    pytest.param(with_bad(M("notebooks/etc", "symlink", target="/etc")), "points outside", id="symlink-absolute"),
    pytest.param(with_bad(M("notebooks/up", "symlink", target="../escape.txt")), "points outside",
                 id="symlink-dotdot"),
    pytest.param(with_bad(M("notebooks/sub/up", "symlink", target="../../x")), "points outside",
                 id="symlink-dotdot-from-subfolder"),
    pytest.param(with_bad(M("notebooks/up", "symlink", target="sub/../../x")), "points outside",
                 id="symlink-dotdot-through-subfolder"),
    pytest.param(with_bad(M("notebooks/empty", "symlink", target="")), "points outside", id="symlink-empty-target"),
    pytest.param(with_bad(M("notebooks/here", "symlink", target="."),
                          M("notebooks/chain", "symlink", target="here/../escape.txt")),
                 "points outside", id="symlink-chain-escape"),
    pytest.param(with_bad(M("notebooks/link", "symlink", target="."), M("notebooks/link/x.txt", data=b"evil")),
                 "behind the symlink", id="member-behind-symlink-to-dot"),
    pytest.param(with_bad(M("notebooks/link", "symlink", target="sub"), M("notebooks/link/x.txt", data=b"evil")),
                 "behind the symlink", id="member-behind-symlink-to-subfolder"),
    pytest.param(with_bad(M("notebooks/link", "symlink", target="sub"), M("notebooks/link/deeper", "dir"),
                          M("notebooks/link/deeper/x.txt", data=b"evil")),
                 "behind the symlink", id="folder-behind-symlink"),
    # the root member
    pytest.param(lambda: archive([M("notebooks", "symlink", target="/etc")]), "not a folder",
                 id="root-symlink-absolute"),
    pytest.param(lambda: archive([M("notebooks", "symlink", target="."), M("notebooks/escape.txt", data=b"evil")]),
                 "Refused", id="root-symlink-to-dot"),
    pytest.param(lambda: archive([M("notebooks", data=b"evil")]), "Refused", id="root-is-a-file"),
    # member types and modes
    pytest.param(with_bad(M("notebooks/hard", "hardlink", target="notebooks/a.ipynb")), "hardlink",
                 id="hardlink-inside"),
    pytest.param(with_bad(M("notebooks/passwd", "hardlink", target="/etc/passwd")), "hardlink",
                 id="hardlink-absolute"),
    pytest.param(with_bad(M("notebooks/null", "chr")), "device file", id="char-device"),
    pytest.param(with_bad(M("notebooks/disk", "blk")), "device file", id="block-device"),
    pytest.param(with_bad(M("notebooks/pipe", "fifo")), "fifo", id="fifo"),
    pytest.param(with_bad(M("notebooks/odd", b"Z")), "not allowed", id="unknown-member-type"),
    pytest.param(with_bad(M("notebooks/run.sh", data=b"#!/bin/sh\n", mode=0o4755)), "setuid/setgid",
                 id="setuid-file"),
    pytest.param(with_bad(M("notebooks/shared", "dir", mode=0o2775)), "setuid/setgid", id="setgid-folder"),
    pytest.param(lambda: archive([M("notebooks", "dir", mode=0o4755)] + good_members()[1:]), "setuid/setgid",
                 id="setuid-root-folder"),
    # duplicates
    pytest.param(with_bad(M("notebooks/a.ipynb", data=b"second")), "appears twice", id="duplicate-file"),
    pytest.param(with_bad(M("notebooks", "dir")), "appears twice", id="duplicate-root"),
    pytest.param(with_bad(M("./notebooks/sub/new.txt", data=b"second")), "appears twice",
                 id="duplicate-spelled-differently"),
    # manifest against data
    pytest.param(with_bad(M("notebooks/grown.txt", data=b"x" * 5000),
                          tweak=_set("grown.txt", size=100)), "does not match the manifest",
                 id="member-larger-than-declared"),
    pytest.param(with_bad(tweak=_set("a.ipynb", sha256=hashlib.sha256(b"other").hexdigest())),
                 "does not match the manifest", id="sha256-differs"),
    pytest.param(with_bad(tweak=_set("a.ipynb", mode=0o600)), "does not match the manifest", id="mode-differs"),
    pytest.param(with_bad(tweak=_set("sub/new.txt", mtime=MTIME + 1)), "does not match the manifest",
                 id="mtime-differs"),
    pytest.param(with_bad(tweak=_set("sub", type="file")), "does not match the manifest", id="type-differs"),
    pytest.param(with_bad(M("notebooks/smuggled.txt", data=b"x", in_manifest=False)), "not in its manifest",
                 id="member-not-in-manifest"),
    pytest.param(with_bad(tweak=lambda d: d["entries"].append({**_entry(d, "a.ipynb"), "path": "gone.txt"})),
                 "missing from the archive", id="manifest-lists-missing-file"),
    pytest.param(with_bad(tweak=lambda d: d["entries"].append(_entry(d, "a.ipynb"))), "twice",
                 id="manifest-lists-twice"),
    pytest.param(with_bad(tweak=lambda d: d["entries"][1].pop("type")), "malformed entry",
                 id="manifest-entry-malformed"),
    pytest.param(with_bad(tweak=lambda d: d.update(format_version=3)), "format version 3",
                 id="manifest-format-version-3"),
    pytest.param(with_bad(tweak=lambda d: d.update(format_version=2)), "no valid list of unchanged files",
                 id="manifest-version-2-without-unchanged"),
    pytest.param(with_bad(tweak=lambda d: d.update(format_version=2, bases={"x": "0" * 64}, unchanged=[
        {**_entry(d, "a.ipynb"), "in": "x"}])), "as unchanged wrongly", id="manifest-unchanged-also-an-entry"),
    pytest.param(with_bad(tweak=lambda d: d.update(format_version=2, bases={"x": "0" * 64}, unchanged=[
        {**_entry(d, "a.ipynb"), "path": "../out.txt", "in": "x"}])), "Refused", id="manifest-unchanged-outside"),
    pytest.param(with_bad(tweak=lambda d: d.pop("format_version")), "format version None",
                 id="manifest-without-format-version"),
    pytest.param(with_bad(tweak=lambda d: d.update(format="tar-backup")), "not an ailab-backup manifest",
                 id="manifest-wrong-format"),
    pytest.param(with_bad(tweak=lambda d: d.update(entries={"a.ipynb": {}})), "no valid list of entries",
                 id="manifest-entries-not-a-list"),
    pytest.param(_raw_manifest(b"{not json"), "not valid JSON", id="manifest-not-json"),
    pytest.param(_raw_manifest(b"\xff\xfe\x00garbage"), "not valid JSON", id="manifest-not-utf8"),
    pytest.param(_raw_manifest(b"[1, 2]"), "not an ailab-backup manifest", id="manifest-is-a-list"),
    pytest.param(_raw_manifest(b"", "dir"), "not a plain file", id="manifest-is-a-folder"),
    pytest.param(lambda: archive(good_members(), manifest=False), "has no ailab-backup-manifest.json",
                 id="manifest-missing"),
    # after the manifest
    pytest.param(with_bad(after=[M("notebooks/late.txt", data=b"late")]), "data after its manifest",
                 id="data-after-manifest"),
    pytest.param(_two_manifests, "Refused member 'ailab-backup-manifest.json'", id="second-manifest"),
    pytest.param(with_bad(after=[M("README", data=b"hi")]), "Refused member 'README'", id="other-member-after-manifest"),
    pytest.param(_trailing_garbage, "damaged", id="garbage-after-manifest"),
    # broken streams
    pytest.param(_truncated("zstd"), "damaged or truncated", id="truncated-zstd"),
    pytest.param(_truncated("gzip"), "damaged or truncated", id="truncated-gzip"),
    pytest.param(_plain_tar_cut_in_file_data, "damaged or truncated", id="truncated-tar-in-file-data"),
    pytest.param(_cut_before_manifest, "truncated", id="truncated-before-manifest"),
    pytest.param(_truncated("zstd", keep=0.02), "damaged or truncated", id="truncated-zstd-early"),
    pytest.param(_flipped("zstd", where=0.3), "damaged or truncated", id="corrupted-zstd-stream"),
    pytest.param(_flipped("zstd", content=_noise(200_000)), "'big.bin' does not match the manifest",
                 id="corrupted-zstd-file-data"),
    pytest.param(_flipped("gzip"), "damaged or truncated", id="corrupted-gzip"),
    pytest.param(_flipped("none", where=0.0), "damaged or truncated", id="corrupted-tar-first-header"),
    pytest.param(_flipped("none", where=0.01), "truncated", id="corrupted-tar-later-header"),
    pytest.param(_flipped("none", content=_noise(200_000)), "'big.bin' does not match the manifest",
                 id="corrupted-tar-file-data"),
    # not an archive at all
    pytest.param(_zip, "zip file", id="zip-file"),
    pytest.param(_garbage, "damaged or truncated", id="garbage-bytes"),
    pytest.param(lambda: b"", "damaged or truncated", id="empty-file"),
    pytest.param(lambda: b"\x28\xb5\x2f\xfd", "damaged or truncated", id="zstd-magic-only"),
    pytest.param(lambda: gzip.compress(b"just some text, not a tar\n"), "damaged or truncated", id="gzip-of-text"),
]

# ---------------------------------------------------------------------------------------------
# The user's side: a notebooks folder, a store, the command line


class Place:
    def __init__(self, root):
        self.root = root
        self.source = root / "home" / "notebooks"
        self.store = root / "store"
        self.upload = root / "upload.tar.zst"

    def args(self, *rest):
        return ["--source-dir", str(self.source), "--store", str(self.store), *rest]

    def manager(self, **settings):
        return BackupManager(AILabBackup(source_dir=str(self.source), store=str(self.store), **settings))


def _make_source(path):
    (path / "sub").mkdir(parents=True)
    (path / "a.ipynb").write_bytes(b'{"cells": [], "old": true}\n')
    (path / "keep.txt").write_text("only in the folder\n")
    (path / "sub" / "b.txt").write_text("b\n")
    (path / "sub" / "new.txt").write_text("an older new.txt\n")
    os.symlink("sub/b.txt", path / "link-to-b")
    for p in (path / "a.ipynb", path / "keep.txt", path / "sub" / "b.txt", path / "sub" / "new.txt",
              path / "sub", path):
        os.utime(p, (MTIME - 100, MTIME - 100))


@pytest.fixture
def place(tmp_path):
    p = Place(tmp_path)
    _make_source(p.source)
    (p.root / "home" / "outside.txt").write_text("next to the notebooks folder\n")
    (p.store / "data").mkdir(parents=True)
    (p.store / "meta").mkdir()
    if os.path.lexists(ABSOLUTE_TARGET):
        os.unlink(ABSOLUTE_TARGET)
    yield p
    assert not os.path.lexists(ABSOLUTE_TARGET), "an absolute member was written"


def put_backup(store, data, backup_id=BACKUP_ID, compression="zstd", sha256=None):
    """Put ``data`` into a folder store as the archive of a committed backup."""
    suffix = {"zstd": ".tar.zst", "gzip": ".tar.gz"}.get(compression, ".tar")
    archive_name = backup_id + suffix
    (store / "data" / archive_name).write_bytes(data)
    meta = {
        "id": backup_id,
        "created": "2026-01-01T00:00:00Z",
        "label": "",
        "kind": "manual",
        "source": {"type": "folder", "name": "/home/jupyter/notebooks", "found_by": "test"},
        "size_bytes": len(data),
        "file_count": 2,
        "total_bytes": len(NEW_NOTEBOOK) + 9,
        "compression": compression,
        "archive": archive_name,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),  # the store itself is consistent
        "format_version": 1,
        "skipped": [],
    }
    (store / "meta" / f"{backup_id}.json").write_text(json.dumps(meta, indent=1))
    return meta


def run_cli(capsys, argv):
    capsys.readouterr()
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(result, fragment):
    status, out, err = result
    assert "Traceback" not in out + err
    assert status == 1, (status, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ailab-backup: error: "), err
    assert fragment in lines[0], err
    return lines[0]


def everything(place):
    return folder_snapshot(place.root)


# ---------------------------------------------------------------------------------------------
# The builder makes valid archives: without this, every refusal below could be for nothing


@pytest.mark.parametrize("mode", ["merge", "replace"])
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_control_archive_is_restored(place, capsys, mode, compression):
    data = archive(good_members(), compression=compression)
    put_backup(place.store, data, compression=compression)
    assert run_cli(capsys, place.args("verify", BACKUP_ID))[0] == 0
    before = folder_snapshot(place.source)
    assert run_cli(capsys, place.args("restore", BACKUP_ID, "--mode", mode))[0] == 0
    after = folder_snapshot(place.source)
    assert after != before
    assert (place.source / "a.ipynb").read_bytes() == NEW_NOTEBOOK
    assert (place.source / "sub" / "new.txt").read_bytes() == b"new file\n"
    assert (place.source / "keep.txt").exists() == (mode == "merge")
    place.upload.write_bytes(data)
    meta = place.manager().add_uploaded(str(place.upload))
    assert meta["id"] in {m["id"] for m in place.manager().list_backups()}


# ---------------------------------------------------------------------------------------------
# Bad archives: refused, nothing written


# how a user restores: whole (both modes), only one file of it, or as a preview
RESTORE_WAYS = {
    "merge": ["--mode", "merge"],
    "replace": ["--mode", "replace"],
    "one-path": ["--mode", "replace", "--path", "a.ipynb"],
    "dry-run": ["--dry-run"],
}


@pytest.mark.parametrize("way", list(RESTORE_WAYS))
@pytest.mark.parametrize("build, fragment", CASES)
def test_restore_refuses_bad_archive(place, capsys, build, fragment, way):
    put_backup(place.store, build())
    source_before, all_before = folder_snapshot(place.source), everything(place)
    # the store is part of everything(): not even the safety backup taken before a restore is made
    line = assert_refused(run_cli(capsys, place.args("restore", BACKUP_ID, *RESTORE_WAYS[way])), fragment)
    assert folder_snapshot(place.source) == source_before, line
    assert everything(place) == all_before, line
    assert not (place.root / "home" / "escape.txt").exists()
    assert not (place.root / "escape.txt").exists()


@pytest.mark.parametrize("build, fragment", CASES)
def test_verify_refuses_bad_archive(place, capsys, build, fragment):
    put_backup(place.store, build())
    before = everything(place)
    assert_refused(run_cli(capsys, place.args("verify", BACKUP_ID)), fragment)
    assert everything(place) == before


@pytest.mark.parametrize("build, fragment", CASES)
def test_upload_refuses_bad_archive(place, build, fragment):
    place.upload.write_bytes(build())
    manager = place.manager()
    listed = manager.list_backups()
    before = everything(place)
    with pytest.raises(InvalidArchive, match=re.escape(fragment)):
        manager.add_uploaded(str(place.upload))
    assert manager.list_backups() == listed
    assert everything(place) == before


# ---------------------------------------------------------------------------------------------
# Sizes and stored checksums


def _big_archive():
    return archive(good_members() + [M("notebooks/big.bin", data=b"z" * 50_000)])


@pytest.mark.parametrize("mode", ["merge", "replace"])
def test_restore_refuses_archive_over_the_limit(place, capsys, monkeypatch, mode):
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "10000")
    put_backup(place.store, _big_archive())
    before = everything(place)
    line = assert_refused(run_cli(capsys, place.args("restore", BACKUP_ID, "--mode", mode)), "more than the limit")
    assert "max_archive_bytes" in line
    assert everything(place) == before


def test_limit_counts_the_data_not_the_manifest(place, capsys, monkeypatch):
    """A manifest that declares small sizes does not get a big member past the limit."""
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "10000")
    data = archive(good_members() + [M("notebooks/big.bin", data=b"z" * 50_000)],
                   tweak=_set("big.bin", size=10))
    put_backup(place.store, data)
    before = everything(place)
    assert_refused(run_cli(capsys, place.args("restore", BACKUP_ID)), "more than the limit")
    assert everything(place) == before


def test_upload_and_verify_refuse_archive_over_the_limit(place, capsys, monkeypatch):
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "10000")
    data = _big_archive()
    put_backup(place.store, data)
    place.upload.write_bytes(data)
    before = everything(place)
    assert_refused(run_cli(capsys, place.args("verify", BACKUP_ID)), "more than the limit")
    manager = place.manager()
    assert manager.config.max_archive_bytes == 10000
    with pytest.raises(TooLarge, match="more than the limit"):
        manager.add_uploaded(str(place.upload))
    assert [m["id"] for m in manager.list_backups()] == [BACKUP_ID]
    assert everything(place) == before
    # and under the limit the same archive is fine
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "100000")
    assert run_cli(capsys, place.args("verify", BACKUP_ID))[0] == 0


@pytest.mark.parametrize("command", [["verify"], ["restore", "--mode", "merge"], ["restore", "--mode", "replace"]])
def test_archive_altered_in_the_store_is_refused(place, capsys, command):
    """A valid archive whose bytes differ from the checksum recorded at backup time."""
    put_backup(place.store, archive(good_members()), sha256=hashlib.sha256(b"the original").hexdigest())
    before = everything(place)
    cmd, *rest = command
    assert_refused(run_cli(capsys, place.args(cmd, BACKUP_ID, *rest)), "does not match its recorded checksum")
    assert everything(place) == before


# ---------------------------------------------------------------------------------------------
# The same against a real Docker volume

VOLUME_CASES = [
    pytest.param(with_bad(M("notebooks/../escape.txt", data=b"evil")), "'..'", id="dotdot"),
    pytest.param(with_bad(M("/ailab/escape.txt", data=b"evil")), "Refused member '/ailab/escape.txt'", id="absolute"),
    pytest.param(with_bad(M("notebooks/etc", "symlink", target="/etc")), "points outside", id="symlink-absolute"),
    pytest.param(with_bad(M("notebooks/up", "symlink", target="../../x")), "points outside", id="symlink-dotdot"),
    pytest.param(with_bad(M("notebooks/link", "symlink", target="."), M("notebooks/link/x.txt", data=b"evil")),
                 "behind the symlink", id="behind-symlink"),
    pytest.param(with_bad(M("notebooks/hard", "hardlink", target="notebooks/a.ipynb")), "hardlink", id="hardlink"),
    pytest.param(with_bad(M("notebooks/run.sh", data=b"#!/bin/sh\n", mode=0o4755)), "setuid", id="setuid"),
    pytest.param(_truncated("zstd"), "damaged or truncated", id="truncated-zstd"),
    pytest.param(_flipped("gzip"), "damaged or truncated", id="corrupted-gzip"),
    pytest.param(with_bad(tweak=_set("a.ipynb", sha256="0" * 64)), "does not match the manifest", id="sha256"),
    pytest.param(with_bad(M("notebooks/here", "symlink", target="."),
                          M("notebooks/chain", "symlink", target="here/../escape.txt")),
                 "points outside", id="symlink-chain-escape"),
    pytest.param(lambda: archive([M("notebooks", "symlink", target="."), M("notebooks/escape.txt", data=b"evil")]),
                 "Refused", id="root-symlink-to-dot"),
    pytest.param(lambda: archive([M("notebooks", data=b"evil")]), "Refused", id="root-is-a-file"),
]


@pytest.fixture
def filled_volume(docker_client, make_volume):
    name = make_volume()
    run_in_volume(docker_client, name, (
        "mkdir -p /v/sub && printf old > /v/a.ipynb && printf keep > /v/keep.txt && printf b > /v/sub/b.txt"
        " && ln -s sub/b.txt /v/link-to-b && chown -R 1000:100 /v && chmod 0775 /v/sub"
        " && touch -h -d @1600000000 /v/a.ipynb /v/keep.txt /v/sub/b.txt /v/link-to-b /v/sub /v"
    ))
    return name


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["merge", "replace"])
@pytest.mark.parametrize("build, fragment", VOLUME_CASES)
def test_restore_into_volume_refuses_bad_archive(place, capsys, docker_client, filled_volume, build, fragment, mode):
    put_backup(place.store, build())
    before = volume_snapshot(docker_client, filled_volume)
    assert set(before) == {".", "a.ipynb", "keep.txt", "sub", "sub/b.txt", "link-to-b"}
    store_before = folder_snapshot(place.store)
    result = run_cli(capsys, ["--volume", filled_volume, "--store", str(place.store),
                              "restore", BACKUP_ID, "--mode", mode])
    assert_refused(result, fragment)
    assert volume_snapshot(docker_client, filled_volume) == before
    assert folder_snapshot(place.store) == store_before
    # the helper-container check is the autouse fixture _no_helper_left


@pytest.mark.docker
def test_restore_into_volume_control(place, capsys, docker_client, filled_volume):
    """The same valid archive does change the volume: the refusals above are real."""
    put_backup(place.store, archive(good_members()))
    before = volume_snapshot(docker_client, filled_volume)
    result = run_cli(capsys, ["--volume", filled_volume, "--store", str(place.store), "restore", BACKUP_ID])
    assert result[0] == 0, result
    after = volume_snapshot(docker_client, filled_volume)
    assert after != before and "sub/new.txt" in after


# ---------------------------------------------------------------------------------------------
# import --dir: a plain folder is checked by the same rules before anything is copied


@pytest.fixture
def import_dir(tmp_path):
    folder = tmp_path / "incoming"
    (folder / "notebooks" / "sub").mkdir(parents=True)
    (folder / "notebooks" / "a.ipynb").write_bytes(NEW_NOTEBOOK)
    (folder / "notebooks" / "sub" / "new.txt").write_text("new\n")
    return folder


def _import_refused(place, capsys, folder, fragment, mode):
    before = folder_snapshot(place.source)
    around = folder_snapshot(place.root / "home", skip=("notebooks",))
    line = assert_refused(run_cli(capsys, place.args("import", "--dir", str(folder), "--mode", mode)), fragment)
    assert folder_snapshot(place.source) == before, line
    assert folder_snapshot(place.root / "home", skip=("notebooks",)) == around, line
    assert not os.path.lexists(place.store / "data" / "x") and not os.listdir(place.store / "meta")


def _add_symlink_to_etc(nb):
    os.symlink("/etc", nb / "etc")


def _add_dotdot_symlink(nb):
    os.symlink("../../outside.txt", nb / "sub" / "up")


def _add_fifo(nb):
    os.mkfifo(nb / "sub" / "pipe")


def _add_setuid(nb):
    (nb / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(nb / "run.sh", 0o4755)


def _add_setgid_folder(nb):
    (nb / "shared").mkdir()
    os.chmod(nb / "shared", 0o2775)


def _add_device(nb):
    try:
        os.mknod(nb / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create a device file here")


def _add_socket(nb):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(nb / "sock"))
    s.close()


def _add_symlink_chain(nb):
    os.symlink(".", nb / "here")
    os.symlink("here/../outside.txt", nb / "chain")


IMPORT_CASES = [
    pytest.param(_add_symlink_to_etc, "points outside", id="symlink-to-etc"),
    pytest.param(_add_dotdot_symlink, "points outside", id="symlink-dotdot"),
    pytest.param(_add_fifo, "fifo", id="fifo"),
    pytest.param(_add_device, "device file", id="device-file"),
    pytest.param(_add_socket, "socket", id="socket"),
    pytest.param(_add_setuid, "setuid/setgid", id="setuid-file"),
    pytest.param(_add_setgid_folder, "setuid/setgid", id="setgid-folder"),
    pytest.param(_add_symlink_chain, "points outside", id="symlink-chain-escape"),
]


@pytest.mark.parametrize("mode", ["merge", "replace"])
@pytest.mark.parametrize("add, fragment", IMPORT_CASES)
def test_import_refuses_bad_folder(place, capsys, import_dir, add, fragment, mode):
    add(import_dir / "notebooks")
    _import_refused(place, capsys, import_dir, fragment, mode)


def test_import_control(place, capsys, import_dir):
    assert run_cli(capsys, place.args("import", "--dir", str(import_dir)))[0] == 0
    assert (place.source / "a.ipynb").read_bytes() == NEW_NOTEBOOK


def test_import_refuses_folder_over_the_limit(place, capsys, import_dir, monkeypatch):
    monkeypatch.setenv("AILAB_BACKUP_MAX_ARCHIVE_BYTES", "10000")
    (import_dir / "notebooks" / "big.bin").write_bytes(b"z" * 50_000)
    _import_refused(place, capsys, import_dir, "more than the limit", "merge")


def test_import_without_notebooks_folder(place, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = everything(place)
    line = assert_refused(run_cli(capsys, place.args("import", "--dir", str(empty))), "does not exist")
    assert str(empty / "notebooks") in line
    assert everything(place) == before


# ---------------------------------------------------------------------------------------------
# Ids


@pytest.mark.parametrize("command", [["show"], ["verify"], ["delete"], ["restore"], ["restore", "--mode", "replace"]])
def test_unknown_id(place, capsys, command):
    put_backup(place.store, archive(good_members()))
    before = everything(place)
    cmd, *rest = command
    line = assert_refused(run_cli(capsys, place.args(cmd, "notebooks-20990101T000000Z", *rest)), "No backup has the id")
    assert "'notebooks-20990101T000000Z'" in line
    assert everything(place) == before


BAD_IDS = ["../evil", "sub/evil", "..", "/etc/passwd", "a..b", ".hidden", "evil\nsecond line", "evil\n"]


@pytest.mark.parametrize("command", [["show"], ["verify"], ["delete"], ["restore"]])
@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_id_with_slash_or_dotdot_is_refused(place, capsys, command, bad_id):
    """Even when a (tampered) metadata file claims that id, it is never used as a path."""
    put_backup(place.store, archive(good_members()))
    # a metadata file claiming the bad id, and the file a path built from it would reach
    tampered = put_backup(place.store, archive(good_members()), backup_id="tampered")
    tampered["id"] = bad_id
    (place.store / "meta" / "tampered.json").write_text(json.dumps(tampered))
    (place.store / "evil.json").write_text("{}")
    before = everything(place)
    cmd, *rest = command
    status, out, err = run_cli(capsys, place.args(cmd, bad_id, *rest))
    assert status == 1 and "Traceback" not in err
    assert err.startswith("ailab-backup: error: ") and "is not a backup id" in err
    assert everything(place) == before


def _tamper_archive_name(place):
    """A metadata file (edited by hand, or by anyone who can write the store) whose archive
    lies outside the store's data/ folder."""
    meta = put_backup(place.store, archive(good_members()))
    meta["archive"] = "../../home/outside.txt"
    (place.store / "meta" / f"{BACKUP_ID}.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("command", [["verify"], ["restore"], ["restore", "--mode", "replace"]])
def test_metadata_naming_an_archive_outside_the_store_read(place, capsys, command):
    _tamper_archive_name(place)
    before = everything(place)
    cmd, *rest = command
    # a metadata file that names anything but its own archive in data/ is not trusted at all
    assert_refused(run_cli(capsys, place.args(cmd, BACKUP_ID, *rest)), "No backup has the id")
    assert everything(place) == before


def test_metadata_naming_an_archive_outside_the_store_delete(place, capsys):
    _tamper_archive_name(place)
    assert_refused(run_cli(capsys, place.args("delete", BACKUP_ID)), "No backup has the id")
    assert (place.root / "home" / "outside.txt").exists(), "delete removed a file outside the store"


# ---------------------------------------------------------------------------------------------
# Docker: a missing volume, an unreachable engine


@pytest.mark.docker
@pytest.mark.parametrize("command", [["create"], ["restore", BACKUP_ID], ["export", "--dir", "{tmp}"],
                                     ["import", "--dir", "{tmp}"]])
def test_missing_volume(place, capsys, docker_client, tmp_path, command):
    name = f"does-not-exist-xyz-{uuid.uuid4().hex[:8]}"
    assert not docker_client.volumes.list(filters={"name": name})
    put_backup(place.store, archive(good_members()))
    (tmp_path / "notebooks").mkdir()
    before = everything(place)
    argv = ["--volume", name, "--store", str(place.store)] + [a.format(tmp=tmp_path) for a in command]
    line = assert_refused(run_cli(capsys, argv), "does not exist")
    assert f"volume {name!r}" in line and "docker volume ls" in line
    assert not [v for v in docker_client.volumes.list() if v.name == name], "the volume was created"
    assert everything(place) == before


@pytest.mark.docker
def test_missing_volume_not_created_by_status_or_list(place, capsys, docker_client):
    name = f"does-not-exist-xyz-{uuid.uuid4().hex[:8]}"
    status, out, err = run_cli(capsys, ["--volume", name, "--store", str(place.store), "status"])
    assert status == 0 and "Traceback" not in err
    assert run_cli(capsys, ["--volume", name, "--store", str(place.store), "list"])[0] == 0
    assert not [v for v in docker_client.volumes.list() if v.name == name], "the volume was created"


@pytest.mark.parametrize("argv", [
    ["--volume", "x", "create"],
    ["--volume", "x", "list"],
    ["--volume", "x", "restore", BACKUP_ID],
    ["--source-dir", "{source}", "--store", "some-store-volume", "list"],
])
def test_unreachable_docker(place, capsys, argv):
    put_backup(place.store, archive(good_members()))
    argv = [a.format(source=place.source) for a in argv]
    if "--store" not in argv:
        argv = ["--store", str(place.store)] + argv
    before = everything(place)
    line = assert_refused(run_cli(capsys, ["--docker-url", "unix:///nonexistent.sock"] + argv),
                          "Docker is not reachable at unix:///nonexistent.sock")
    assert "/var/run/docker.sock" in line and "docker_url" in line  # what to do about it
    assert everything(place) == before
