"""The archive reader's tar layer at its edges: how a file's data is handed out (sizes, ends,
truncation) and how extended headers (pax records, long names) are bounded. Fast and
Docker-free, so the mutation run (tests/MUTANTS.md, "archive/reader.py") checks them."""

import io
import tarfile

import pytest

from ailab_backup_ext.archive import iter_archive, read_archive
from ailab_backup_ext.archive.reader import MAX_HEADER_DATA
from ailab_backup_ext.errors import InvalidArchive
from hardening.hostile import manifest_member, tar_body
from test_bad_input import M, archive, compress, good_members

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
