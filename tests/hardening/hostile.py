"""Generated hostile archives, each growing one dimension of what a reader must bound: what comes
after the end of the tar, the manifest, pax global headers, the entry count, chains of extended
headers, nesting. Used by the tests (a small ``n``: refused with a 400 and a clear message) and by
benchmarks/hostile_inputs.py (growing ``n``: peak memory and time stay flat).

Built with :mod:`tarfile` and raw bytes, from the valid archive of tests/test_bad_input.py, not
with the package's writer.
"""

import io
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_bad_input import MANIFEST, M, compress, good_members, manifest_doc  # noqa: E402

_ZSTD_RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00\x38"  # no content size, window 128 KiB
_RLE_BLOCK = 128 * 1024


def tar_body(members):
    """The tar blocks of ``members``, without the end-of-archive blocks."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    for m in members:
        m.add_to(tar)
    return buf.getvalue()  # not closed: no end blocks


def manifest_member(members, tweak=None):
    doc = manifest_doc(members)
    if tweak:
        tweak(doc)
    return M(MANIFEST, data=json.dumps(doc).encode())


def valid_tar(members=None):
    members = good_members() if members is None else members
    return tar_body(members + [manifest_member(members)]) + b"\0" * 1024


def zstd_zeros_frame(n):
    """A zstd frame of RLE blocks that unpacks to ``n`` zero bytes in about n / 32768 bytes."""
    blocks = []
    while n > 0:
        size = min(n, _RLE_BLOCK)
        n -= size
        header = (size << 3) | (1 << 1) | (1 if n == 0 else 0)  # RLE block, last or not
        blocks.append(header.to_bytes(3, "little") + b"\0")
    return _ZSTD_RAW_FRAME_HEADER + b"".join(blocks)


def trailing_zero_frame(n):
    """A valid archive, then a zstd frame of ``n`` zero bytes after the end of the tar."""
    return compress(valid_tar(), "zstd") + zstd_zeros_frame(n)


def trailing_zeros_in_tar(n):
    """A valid archive whose tar has ``n`` zero bytes more after its end (one compressed frame)."""
    return compress(valid_tar() + b"\0" * n, "zstd")


def padding_bomb(n):
    """A valid archive whose one file's declared data is ``n`` zero bytes (in the headers'
    sizes, so the ratio limit sees it before it is unpacked)."""
    return compress(valid_tar(good_members() + [M("notebooks/zeros.bin", data=b"\0" * n)]), "zstd")


def huge_manifest(n):
    """A valid archive whose manifest carries ``n`` empty JSON objects more."""
    members = good_members()
    pad = lambda doc: doc.update(pad=[{}] * n)  # noqa: E731
    return compress(tar_body(members + [manifest_member(members, pad)]) + b"\0" * 1024, "zstd")


def nested_manifest(n):
    """A valid archive whose manifest nests ``n`` lists deep."""
    members = good_members()
    doc = json.dumps(manifest_doc(members))[:-1] + ', "pad": ' + "[" * n + "]" * n + "}"
    return compress(tar_body(members + [M(MANIFEST, data=doc.encode())]) + b"\0" * 1024, "zstd")


def pax_global_headers(n):
    """``n`` members, each after a pax global header of 200 records (applied to every member
    after it by tarfile's header code, and accumulated)."""
    members = good_members() + [M(f"notebooks/f{i}.txt", data=b"x") for i in range(n)]
    parts = []
    for i, m in enumerate(members):
        records = {f"ailab.{i}.{k}": "v" * 20 for k in range(200)}
        parts.append(tarfile.TarInfo._create_pax_generic_header(records, tarfile.XGLTYPE, "utf-8"))
        parts.append(tar_body([m]))
    return compress(b"".join(parts) + tar_body([manifest_member(members)]) + b"\0" * 1024, "zstd")


def many_entries(n, name_length=200):
    """``n`` folders with long names (each one a pax path record), and their manifest."""
    members = good_members() + [M("notebooks/" + "d" * name_length + f"{i:08d}", "dir", mtime=0, uid=0, gid=0) for i in range(n)]
    return compress(valid_tar(members), "zstd")


def header_chain(n, kind=tarfile.GNUTYPE_LONGNAME):
    """A valid archive, with a chain of ``n`` GNU long-name headers (or pax headers with
    ``kind=tarfile.XHDTYPE``) before one of its members."""
    members = good_members()
    if kind == tarfile.XHDTYPE:
        one = tarfile.TarInfo._create_pax_generic_header({"path": "notebooks/sub/new.txt"}, kind, "utf-8")
    else:
        one = tarfile.TarInfo._create_gnu_long_header("notebooks/sub/new.txt", kind, "utf-8", "strict")
    before, last = tar_body(members[:-1]), tar_body(members[-1:])
    return compress(before + one * n + last + tar_body([manifest_member(members)]) + b"\0" * 1024, "zstd")


def huge_pax_record(n):
    """A member whose pax header holds an ``n``-byte record."""
    members = good_members()
    members[1].pax = {"comment": "c" * n}
    return compress(valid_tar(members), "zstd")


def notebook_of_size(n):
    """A notebook of ``n`` bytes: one cell of spaces (compresses to almost nothing)."""
    head, tail = b'{"cells": [{"cell_type": "code", "source": "', b'"}]}'
    return head + b" " * max(0, n - len(head) - len(tail)) + tail


def big_notebook(n):
    """A valid archive holding a notebook ``a.ipynb`` of ``n`` bytes."""
    members = good_members()
    members[1] = M("notebooks/a.ipynb", data=notebook_of_size(n))
    return compress(valid_tar(members), "zstd")


# name -> (builder, small n that must be refused, what the refusal says)
CASES = {
    "trailing-zstd-zero-frame": (trailing_zero_frame, 1 << 30, "data after its end"),
    "trailing-zeros-in-tar": (trailing_zeros_in_tar, 1 << 20, "data after its end"),
    "huge-manifest": (huge_manifest, 2_000_000, "manifest is"),
    "nested-manifest": (nested_manifest, 100_000, "manifest is not valid JSON"),
    "pax-global-headers": (pax_global_headers, 10, "pax global header"),
    "gnu-long-name-chain": (header_chain, 3000, "chain of extended headers"),
    "pax-header-chain": (lambda n: header_chain(n, tarfile.XHDTYPE), 3000, "chain of extended headers"),
    "huge-pax-record": (huge_pax_record, 1 << 20, "bytes of extended headers"),
    "many-long-named-entries": (many_entries, 20_000, "headers and names alone"),
}
