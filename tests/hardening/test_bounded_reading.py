"""Reading an archive: every resource bounded (issue 18, items 1 and 2).

Each generated hostile archive of hostile.py (data after the end of the tar, a huge or deeply
nested manifest, pax global headers, chains of extended headers, a huge pax record, a flood of
long-named entries) is uploaded to the real server and given to the CLI: refused with a 4xx and a
message naming the problem, never a 500, and nothing is written. The limits that a trusted
archive may need raised (the entry count) are settings, and a sane archive at the edge of each
bound still goes through.
"""

import io
import json
import os

import pytest

from ailab_backup_ext.archive import read_archive
from ailab_backup_ext.cli import main
from hostile import CASES, many_entries, tar_body, valid_tar, zstd_zeros_frame
from restutil import call
from test_bad_input import M, compress, good_members
from test_corpus import tree_hash


def _store_and_notebooks(tmp_path, notebooks):
    """What must not change: the store, the notebooks and everything beside them (a check's
    spool comes and goes in the store's data/ folder, so folder times are not compared)."""
    (tmp_path / "store" / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "meta").mkdir(exist_ok=True)
    (notebooks / "a.ipynb").write_text('{"cells": ["mine"]}')
    return lambda: (tree_hash(tmp_path), tree_hash(notebooks))


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_upload_is_a_400_with_a_clear_message(jp_fetch, jp_root_dir, tmp_path, name):
    build, n, message = CASES[name]
    state = _store_and_notebooks(tmp_path, jp_root_dir)
    before = state()
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=build(n), expect=None, request_timeout=300)
    assert code == 400, (code, body)
    assert message in body["message"], body["message"]
    assert state() == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_import_is_one_clear_line_from_the_cli(tmp_path, capsys, name):
    build, n, message = CASES[name]
    source = tmp_path / "nb"
    source.mkdir()
    upload = tmp_path / "hostile.tar.zst"
    upload.write_bytes(build(n))
    state = _store_and_notebooks(tmp_path, source)
    before = state()
    status = main(["--source-dir", str(source), "--store", str(tmp_path / "store"), "import", "--file", str(upload)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("ailab-backup: error:") and err.count("\n") == 1, err
    assert message in err
    assert state() == before


def test_a_tar_writers_record_padding_after_the_end_is_still_accepted():
    """GNU tar and tarfile pad the end to a 10 KiB record: a few zeros more stay fine, in the
    tar or as a frame of their own."""
    assert read_archive(io.BytesIO(compress(valid_tar() + b"\0" * 9216, "zstd")), max_ratio=1000)
    assert read_archive(io.BytesIO(compress(valid_tar(), "zstd") + zstd_zeros_frame(9216)), max_ratio=1000)


async def test_sane_archive_of_many_long_named_folders_is_accepted(jp_fetch, tmp_path):
    """The flood's bound is on how much its headers unpack, not on long names: 3,000 folders
    named as in the flood but each one spelled out differently goes through."""
    members = good_members() + [M(f"notebooks/{os.urandom(8).hex()}" + "d" * 200, "dir") for _ in range(3000)]
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=compress(valid_tar(members), "zstd"),
                               expect=None)
    assert code == 201, body


async def test_entry_count_is_bounded_by_max_entries(jp_fetch, jp_serverapp, monkeypatch):
    monkeypatch.setattr(jp_serverapp.web_app.settings["ailab_backup"].config, "max_entries", 100)
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=many_entries(100, name_length=5), expect=None)
    assert code == 413, body
    assert "more than 100 entries (AILabBackup.max_entries)" in body["message"]
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=many_entries(90, name_length=5), expect=None)
    assert code == 201, body


def test_max_entries_has_a_high_default_and_help_text(monkeypatch):
    from ailab_backup_ext.config import AILabBackup

    assert AILabBackup().max_entries >= 1_000_000
    assert "entries" in AILabBackup.class_traits()["max_entries"].help
    monkeypatch.setenv("AILAB_BACKUP_MAX_ENTRIES", "7")
    assert AILabBackup().max_entries == 7


@pytest.mark.parametrize("pax", [{"mtime": "nan"}, {"mtime": "inf"}, {"uid": "99999999999999999999"},
                                 {"size": "-5"}, {"path": "notebooks/" + "x" * 100, "linkpath": "\0"}],
                         ids=["mtime-nan", "mtime-inf", "uid-huge", "size-negative", "nul-linkpath"])
async def test_malformed_pax_values_are_a_400_never_a_500(jp_fetch, pax):
    members = good_members()
    members.append(M("notebooks/odd.txt", data=b"odd", pax=pax))
    body = compress(tar_body(members) + tar_body([M("ailab-backup-manifest.json", data=json.dumps({}).encode())])
                    + b"\0" * 1024, "zstd")
    code, reply, _ = await call(jp_fetch, "upload", method="POST", body=body, expect=None)
    assert code == 400, (code, reply)
    assert reply["message"]
