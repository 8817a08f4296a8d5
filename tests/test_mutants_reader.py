"""The archive reader's tar layer at its edges: how a file's data is handed out (sizes, ends,
truncation) and how extended headers (pax records, long names) are bounded. Fast and
Docker-free, so the mutation run (tests/MUTANTS.md, "archive/reader.py") checks them."""

import io
import json
import tarfile

import pytest

from ailab_backup_ext.archive import iter_archive, read_archive
from ailab_backup_ext.archive.reader import MAX_HEADER_DATA
from ailab_backup_ext.errors import InvalidArchive
from hardening.hostile import manifest_member, tar_body
from test_bad_input import MANIFEST, M, archive, compress, good_members, manifest_doc

BIG = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: more than one read of the input


def _files(data, read):
    """{path: what ``read(reader)`` gives} for each file of the archive ``data``."""
    got = {}
    for entry, reader in iter_archive(io.BytesIO(data)):
        if reader is not None:
            got[entry.path] = read(reader)
    return got


def _big_archive(compression):
    return archive([M("notebooks", "dir"), M("notebooks/big.bin", data=BIG), M("notebooks/small", data=b"abc")],
                   compression=compression)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_files_reader_asked_for_nothing_gives_nothing_and_the_file_stays_whole(compression):
    def read(reader):
        assert reader.read(0) == b""
        first = reader.read(1)
        assert reader.read(0) == b""
        return first + reader.read()

    assert _files(_big_archive(compression), read) == {"big.bin": BIG, "small": b"abc"}


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_files_reader_gives_small_reads_exactly_as_asked_across_the_inputs_pieces(compression):
    """Reads below 64 KiB give exactly what is asked, as a file's do (a parser reading a header
    of fixed size relies on that), also where the input's pieces end."""
    def read(reader):
        parts = []
        while True:
            part = reader.read(1000)
            if not part:
                return parts
            parts.append(part)

    got = _files(_big_archive(compression), read)
    assert [len(p) for p in got["big.bin"][:-1]] == [1000] * (len(BIG) // 1000)
    assert b"".join(got["big.bin"]) == BIG and got["small"] == [b"abc"]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_files_reader_read_whole_gives_the_whole_file_at_once(compression):
    assert _files(_big_archive(compression), lambda reader: reader.read()) == {"big.bin": BIG, "small": b"abc"}
    assert _files(_big_archive(compression), lambda reader: reader.read(len(BIG) + 1)) == {"big.bin": BIG,
                                                                                          "small": b"abc"}


def test_a_file_cut_short_in_the_archive_is_an_error_not_an_early_end():
    """An archive cut in the middle of a file's data: its reader raises, whether the consumer
    reads it in pieces or whole, and never hands out a short file as if it were complete."""
    members = [M("notebooks", "dir"), M("notebooks/big.bin", data=BIG)]
    cut = tar_body(members)[: 512 * 3 + len(BIG) // 2]  # root header, file header, half its data
    for read in (lambda r: r.read(), lambda r: r.read(100_000), lambda r: r.read(1000)):
        got = []
        with pytest.raises(tarfile.ReadError, match="^unexpected end of data$"):
            for entry, reader in iter_archive(io.BytesIO(cut)):
                while reader is not None:
                    part = read(reader)
                    if not part:
                        break
                    got.append(part)
        assert len(b"".join(got)) < len(BIG)


# --- extended headers ------------------------------------------------------------------------


def _with_extended_headers(*headers):
    """A valid archive whose last member is preceded by ``headers`` (raw tar blocks)."""
    members = good_members()
    body = tar_body(members[:-1]) + b"".join(headers) + tar_body(members[-1:])
    return compress(body + tar_body([manifest_member(members)]) + b"\0" * 1024, "zstd")


def _pax(kind, record_bytes):
    """A pax header (``kind`` 'x' or Solaris 'X') whose data takes ``record_bytes`` rounded up
    to whole 512-byte blocks: one "comment" record."""
    value = "c" * (record_bytes - len(" comment=\n") - 5)
    header = tarfile.TarInfo._create_pax_generic_header({"comment": value}, kind, "utf-8")
    assert len(header) == 512 + -(-record_bytes // 512) * 512, len(header)
    return header


def _refusal(data):
    with pytest.raises(InvalidArchive) as refused:
        read_archive(io.BytesIO(data))
    return str(refused.value)


TOO_MUCH = (f"A tar member has more than {MAX_HEADER_DATA} bytes of extended headers (pax records or long "
            "names): refused.")


def test_a_members_extended_headers_may_take_exactly_64_kib():
    manifest = read_archive(io.BytesIO(_with_extended_headers(_pax(tarfile.XHDTYPE, MAX_HEADER_DATA))))
    assert [e.path for e in manifest.entries][-1] == "sub/new.txt"
    assert _refusal(_with_extended_headers(_pax(tarfile.XHDTYPE, MAX_HEADER_DATA + 1))) == TOO_MUCH


def test_a_members_extended_headers_count_together():
    """Two extended headers of different kinds before one member: allowed, but their data
    counts together against the limit."""
    half = MAX_HEADER_DATA // 2
    ok = _with_extended_headers(_pax(tarfile.XHDTYPE, half), _pax(tarfile.SOLARIS_XHDTYPE, half))
    assert [e.path for e in read_archive(io.BytesIO(ok)).entries][-1] == "sub/new.txt"
    over = _with_extended_headers(_pax(tarfile.XHDTYPE, half), _pax(tarfile.SOLARIS_XHDTYPE, half + 512))
    assert _refusal(over) == TOO_MUCH


def test_two_pax_headers_in_a_row_are_refused_as_a_chain():
    chain = _with_extended_headers(_pax(tarfile.XHDTYPE, 100), _pax(tarfile.XHDTYPE, 100))
    assert _refusal(chain) == ("A tar member is preceded by a chain of extended headers (pax records or GNU long "
                               "names, the same kind twice): the archive is refused.")


def _damaged(data):
    return f"The archive is damaged or truncated ({data}). Nothing was changed; use another backup."


def test_an_archive_cut_inside_a_header_is_refused_as_truncated():
    """Cut within a header block, just before its type flag, or just after it."""
    body = tar_body(good_members())
    header = tar_body([M("notebooks/next.txt", data=b"x")])[:512]
    for keep in (100, 156, 157, 511):
        assert _refusal(body + header[:keep]) == _damaged("truncated header"), keep


def test_a_sparse_member_is_refused_by_name_of_its_kind():
    """GNU sparse files (type 'S', or pax's GNU.sparse records) are not ours: refused, whole."""
    gnu = archive(good_members() + [M("notebooks/sparse", tarfile.GNUTYPE_SPARSE)])
    assert _refusal(gnu) == "The archive has a sparse tar member: sparse members are not supported."
    pax = archive(good_members() + [M("notebooks/sparse", data=b"12345",
                                      pax={"GNU.sparse.map": "0,5", "GNU.sparse.size": "5"})])
    assert _refusal(pax) == "Refused 'notebooks/sparse': sparse tar members are not supported."


def test_a_header_that_tarfile_cannot_parse_is_refused_as_malformed_not_a_crash():
    """tarfile's header code raises ValueError on a sparse map that is not numbers: a damaged
    archive like any other, named by what went wrong."""
    bad = tar_body(good_members() + [M("notebooks/x", data=b"x", pax={"GNU.sparse.map": "x,y"})])
    assert _refusal(bad + b"\0" * 1024) == _damaged("a malformed header (ValueError)")


# --- the manifest's allowance -----------------------------------------------------------------


def _with_manifest_of(members, size):
    """An archive of ``members`` whose manifest is padded with spaces to ``size`` bytes."""
    text = json.dumps(manifest_doc(members)).encode()
    return archive(members, manifest=False, after=[M(MANIFEST, data=text + b" " * (size - len(text)))])


def test_a_partial_safety_backups_manifest_may_take_1_kib_more_for_each_unchanged_file():
    """The store's record says how many unchanged files (listed, not in the data) a partial
    safety backup's manifest names: 1 KiB each on top of 4 MiB and what the entries found allow.
    Without that count (a restore's second read), nothing more."""
    members = good_members()
    found = sum(512 + 12 * len(path) for path in (".", "a.ipynb", "sub", "sub/new.txt"))

    for unchanged in (0, 3):
        limit = 4 * 1024 * 1024 + found + 1024 * unchanged
        assert len(read_archive(io.BytesIO(_with_manifest_of(members, limit)), unchanged_files=unchanged).entries) == 4
        with pytest.raises(InvalidArchive) as refused:
            read_archive(io.BytesIO(_with_manifest_of(members, limit + 1)), unchanged_files=unchanged)
        assert str(refused.value) == (
            f"The archive's manifest is {limit + 1} bytes, more than its 4 entries can need ({limit} bytes at "
            "most): it was altered or crafted, and is refused.")
    limit = 4 * 1024 * 1024 + found
    with pytest.raises(InvalidArchive, match=f"more than its 4 entries can need \\({limit} bytes at most\\)"):
        list(iter_archive(io.BytesIO(_with_manifest_of(members, limit + 1)), check_content=False))


# --- the ratio limit on what is actually unpacked ---------------------------------------------


def _unpacking_to(total):
    """A valid zstd archive whose tar is ``total`` bytes: a file of zeros, then zeros after the
    end (a tar writer's padding) to make up the size."""
    members = good_members() + [M("notebooks/zeros.bin", data=b"\0" * (total - 64 * 1024))]
    tar = tar_body(members + [manifest_member(members)])
    return compress(tar + b"\0" * (total - len(tar)), "zstd")


def test_what_is_unpacked_may_reach_the_ratio_limit_exactly_and_not_one_block_more():
    """With a ratio limit of 1 (AILabBackup.max_compression_ratio) an upload may unpack to 1 MiB
    (the least any upload may unpack to, times the ratio), its headers' sizes within that: 1 MiB
    exactly passes, one tar block more is refused by what is unpacked, named in the message."""
    from ailab_backup_ext.errors import TooLarge

    exact = _unpacking_to(1 << 20)
    assert len(exact) < 64 * 1024
    assert [e.path for e in read_archive(io.BytesIO(exact), max_ratio=1).entries][-1] == "zeros.bin"
    over = _unpacking_to((1 << 20) + 512)
    with pytest.raises(TooLarge) as refused:
        read_archive(io.BytesIO(over), max_ratio=1)
    assert str(refused.value) == (
        f"The archive would unpack to more than 1 times its size ({(1 << 20) + 512} bytes unpacked from "
        f"{len(over)}): refused as a decompression bomb. If it is yours, raise AILabBackup.max_compression_ratio.")


def test_an_upload_that_does_not_compress_is_never_taken_for_a_bomb_however_large():
    """Beyond 1 MiB, the limit grows with the compressed bytes read: 6 MiB of random data pass a
    ratio limit of 4 (their headers come when more than 1 MiB was read)."""
    import os as _os

    members = good_members() + [M("notebooks/r1.bin", data=_os.urandom(3 << 20)),
                                M("notebooks/r2.bin", data=_os.urandom(3 << 20))]
    data = archive(members)
    assert [e.path for e in read_archive(io.BytesIO(data), max_ratio=4).entries][-2:] == ["r1.bin", "r2.bin"]


def test_a_link_target_counts_for_the_manifest_as_much_as_its_path():
    """Each entry allows 512 bytes and 12 a character of its path and of its link target."""
    members = good_members() + [M("notebooks/l", "symlink", target="sub/new.txt")]
    paths = [(".", ""), ("a.ipynb", ""), ("sub", ""), ("sub/new.txt", ""), ("l", "sub/new.txt")]
    limit = 4 * 1024 * 1024 + sum(512 + 12 * (len(path) + len(target)) for path, target in paths)

    assert len(read_archive(io.BytesIO(_with_manifest_of(members, limit))).entries) == 5
    with pytest.raises(InvalidArchive, match=f"more than its 5 entries can need \\({limit} bytes at most\\)"):
        read_archive(io.BytesIO(_with_manifest_of(members, limit + 1)))


def test_declared_sizes_at_the_ratio_limit_pass_the_headers_check_and_what_is_unpacked_decides():
    """Files that declare exactly the limit (1 MiB at a ratio of 1) pass the check of their
    headers' sizes; the headers around them then make what is unpacked exceed it."""
    from ailab_backup_ext.errors import TooLarge
    from test_bad_input import NEW_NOTEBOOK

    rest = (1 << 20) - len(NEW_NOTEBOOK) - len(b"new file\n")
    members = good_members() + [M("notebooks/zeros.bin", data=b"\0" * rest)]
    tar = tar_body(members + [manifest_member(members)]) + b"\0" * 1024
    data = compress(tar, "zstd")
    with pytest.raises(TooLarge) as refused:
        read_archive(io.BytesIO(data), max_ratio=1)
    assert str(refused.value).startswith(
        f"The archive would unpack to more than 1 times its size ({len(tar)} bytes unpacked from {len(data)}):")


def test_headers_may_unpack_to_exactly_a_fifth_of_the_ratio_limit():
    """At a ratio limit of 5, an upload's headers may take 64 KiB (128 headers of 512 bytes,
    the manifest's included) before its compressed size counts; one more is a flood."""
    def with_headers(count):
        return archive([M("notebooks", "dir")] + [M(f"notebooks/f{i}") for i in range(count - 2)])

    assert len(read_archive(io.BytesIO(with_headers(128)), max_ratio=5).entries) == 127
    with pytest.raises(InvalidArchive) as refused:
        read_archive(io.BytesIO(with_headers(129)), max_ratio=5)
    assert str(refused.value) == (
        "The archive's headers and names alone unpack to more than 1 times its size: a flood of crafted members, "
        "refused. If it is yours, raise AILabBackup.max_compression_ratio.")


def test_chains_of_extended_headers_of_every_kind_are_refused():
    """One of each kind is a member's right (pax, Solaris pax, GNU long name and long link);
    any kind again, or all four, is a chain."""
    def long_header(kind):
        return tarfile.TarInfo._create_gnu_long_header("notebooks/sub/new.txt", kind, "utf-8", "strict")

    x, solaris = _pax(tarfile.XHDTYPE, 100), _pax(tarfile.SOLARIS_XHDTYPE, 100)
    name, link = long_header(tarfile.GNUTYPE_LONGNAME), long_header(tarfile.GNUTYPE_LONGLINK)
    chain = ("A tar member is preceded by a chain of extended headers (pax records or GNU long names, the same kind "
             "twice): the archive is refused.")
    for headers in ((x, name, x), (name, link, x, solaris), (name, name)):
        assert _refusal(_with_extended_headers(*headers)) == chain
    assert [e.path for e in read_archive(io.BytesIO(_with_extended_headers(name, x, solaris))).entries][-1] == \
        "sub/new.txt"


def test_an_archive_cut_in_the_padding_after_a_file_is_refused_as_truncated():
    body = tar_body(good_members())  # the last member: sub/new.txt, 9 bytes, then 503 of padding
    assert _refusal(body[:-400]) == _damaged("unexpected end of data")


@pytest.mark.parametrize("cut", ["in a file's data", "between members"])
def test_a_zstd_archive_of_several_frames_is_read_to_its_end(cut):
    """zstd -T (pzstd, multithreaded writers) writes one frame after another: the tar goes on in
    the next frame, and every frame is read, not only the first."""
    tar = _big_archive("none")
    split = len(tar) // 2 if cut == "in a file's data" else 512  # after the folder's header
    frames = compress(tar[:split], "zstd") + compress(tar[split:], "zstd")
    assert _files(frames, lambda reader: reader.read()) == {"big.bin": BIG, "small": b"abc"}
