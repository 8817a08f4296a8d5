"""How an archive is written: checked as it is written, and incompressible data stored as it is."""

import io
import os
import shutil
import subprocess

import pytest

from ailab_backup_ext.archive import writer as archive_writer
from ailab_backup_ext.archive import Entry, Manifest, read_archive, write_archive
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError


def entries(files):
    yield Entry(".", "dir", mode=0o755), None
    for name, data in files.items():
        yield Entry(name, "file", size=len(data), mode=0o644, mtime=1_700_000_000), io.BytesIO(data)


class _Flipping:
    """A writer that passes everything on but flips one bit of the third piece it is given."""

    def __init__(self, raw):
        self.raw, self.pieces = raw, 0

    def write(self, data):
        self.pieces += 1
        if self.pieces == 3:
            data = bytes([data[0] ^ 1]) + bytes(data[1:])
        return self.raw.write(data)


class _CorruptingCompressor(archive_writer._Compressor):
    """Our compressor, with its output damaged on the way out, as a faulty compressor would."""

    def __init__(self, raw, compression):
        super().__init__(_Flipping(raw), compression)


@pytest.fixture
def corrupting_zstd(monkeypatch):
    monkeypatch.setattr(archive_writer, "_Compressor", _CorruptingCompressor)


def notebook_text(n):
    return "".join(f'{{"cell_type": "code", "source": ["print({i} * {i})"]}},\n' for i in range(n)).encode()


def test_damaged_output_is_caught_while_writing(corrupting_zstd):
    with pytest.raises(BackupError, match="did not decode back|decodes to"):
        write_archive(io.BytesIO(), entries({"a.ipynb": notebook_text(40_000)}), Manifest("now", {}), "zstd")


def test_a_backup_whose_archive_does_not_decode_is_not_kept(corrupting_zstd, tmp_path):
    source, store = tmp_path / "notebooks", tmp_path / "store"
    source.mkdir()
    (source / "a.ipynb").write_bytes(notebook_text(40_000))
    manager = BackupManager(AILabBackup(source_dir=str(source), store=str(store)))
    with pytest.raises(BackupError, match="not kept"):
        manager.create_backup()
    assert manager.list_backups() == []
    assert os.listdir(store / "data") == []  # no partial file either


def test_incompressible_files_cost_no_more_than_their_size_and_any_zstd_reads_them(tmp_path):
    """Such files go into frames of raw blocks (a speed matter, seen in the benchmark); what a
    user sees is that nothing grows and that plain tar --zstd still unpacks the archive."""
    noise, text = os.urandom(3 * 1024 * 1024), notebook_text(20_000)
    out = io.BytesIO()
    size, _ = write_archive(out, entries({"noise.bin": noise, "a.ipynb": text}), Manifest("now", {}), "zstd")
    # no bigger than the noise itself plus the small compressed part and block headers
    assert size < len(noise) + len(text) // 3
    manifest = read_archive(io.BytesIO(out.getvalue()))
    assert {e.path: e.size for e in manifest.entries if e.type == "file"} == {"noise.bin": len(noise), "a.ipynb": len(text)}
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed")
    path = tmp_path / "backup.tar.zst"
    path.write_bytes(out.getvalue())
    subprocess.check_call(["tar", "--zstd", "-xf", str(path), "-C", str(tmp_path)])
    assert (tmp_path / "notebooks" / "noise.bin").read_bytes() == noise
    assert (tmp_path / "notebooks" / "a.ipynb").read_bytes() == text


def test_a_stream_made_ahead_and_left_midway_is_closed_at_its_source():
    """put_archive makes its tar in a thread (read_ahead); when Docker fails midway, what made the
    tar (an open archive, a hashing thread) must be closed, not left waiting."""
    import threading

    from ailab_backup_ext.docker_helper import read_ahead

    closed = threading.Event()

    def source():
        try:
            while True:
                yield b"x" * (1024 * 1024)
        finally:
            closed.set()

    chunks = read_ahead(source())
    assert len(next(chunks)) >= 1024 * 1024
    chunks.close()  # the reader (the request to Docker) gave up
    assert closed.wait(5)


class _NotAFile:
    """Where an S3 upload streams: it takes bytes, and has no file descriptor to sync."""

    def __init__(self):
        self.out = io.BytesIO()

    def write(self, data):
        return self.out.write(data)


def test_an_archive_streamed_to_something_that_is_not_a_file_is_never_synced(monkeypatch):
    monkeypatch.setattr(archive_writer._VerifiedSink, "SYNC_EVERY", 64 * 1024)  # a file would sync often
    noise = os.urandom(1024 * 1024)
    out = _NotAFile()
    size, _ = write_archive(out, entries({"noise.bin": noise}), Manifest("now", {}), "zstd", sync=False)
    assert size == len(out.out.getvalue()) > len(noise)
    assert [e.size for e in read_archive(io.BytesIO(out.out.getvalue())).entries] == [0, len(noise)]


class _UnendedCompressor(archive_writer._Compressor):
    """Our compressor, which forgets to end its last frame (no end block, no checksum)."""

    def close(self):
        import zstandard

        self.stream.flush(zstandard.FLUSH_BLOCK)


def test_an_archive_whose_last_frame_is_not_ended_is_not_kept(monkeypatch):
    monkeypatch.setattr(archive_writer, "_Compressor", _UnendedCompressor)
    with pytest.raises(BackupError, match=r"compressed stream does not end \(\d+ of \d+ bytes decoded\): it is cut short"):
        write_archive(io.BytesIO(), entries({"a.ipynb": notebook_text(100)}), Manifest("now", {}), "zstd")


def test_a_file_is_synced_while_it_is_written_and_reads_back_whole(monkeypatch, tmp_path):
    monkeypatch.setattr(archive_writer._VerifiedSink, "SYNC_EVERY", 64 * 1024)
    noise = os.urandom(512 * 1024)
    path = tmp_path / "a.tar.zst"
    with open(path, "wb") as out:
        size, _ = write_archive(out, entries({"noise.bin": noise}), Manifest("now", {}), "zstd", sync=True)
    assert size == path.stat().st_size
    with open(path, "rb") as f:
        assert [e.size for e in read_archive(f).entries] == [0, len(noise)]


def _has_raw_frame(files):
    out = io.BytesIO()
    write_archive(out, entries(files), Manifest("now", {}), "zstd")
    return archive_writer._RAW_FRAME_HEADER in out.getvalue()


def test_files_of_1_mib_or_more_that_do_not_compress_are_stored_raw_and_no_others():
    """The README's promise: from STORE_MIN_BYTES on, an incompressible file goes into a frame of
    raw blocks (our own frame header, without a checksum flag), smaller or compressible ones not."""
    size = archive_writer.STORE_MIN_BYTES
    assert size == 1024 * 1024
    assert _has_raw_frame({"noise.bin": os.urandom(size)})
    assert not _has_raw_frame({"noise.bin": os.urandom(size - 1)})
    assert not _has_raw_frame({"text.ipynb": notebook_text(60_000)[: 2 * size]})
    assert not _has_raw_frame({"a.txt": b"small", "b.txt": b"files"})


class _OneMoreFrameCompressor(archive_writer._Compressor):
    """Our compressor, which adds a frame of its own at the end (one byte more than went in)."""

    def close(self):
        import zstandard

        super().close()
        self.raw.write(zstandard.ZstdCompressor().compress(b"x"))


def test_an_archive_that_decodes_to_more_than_went_in_is_not_kept(monkeypatch):
    monkeypatch.setattr(archive_writer, "_Compressor", _OneMoreFrameCompressor)
    with pytest.raises(BackupError, match=r"^The archive decodes to (\d+) bytes instead of (?!\1)\d+; it was not kept\.$"):
        write_archive(io.BytesIO(), entries({"a.ipynb": notebook_text(100)}), Manifest("now", {}), "zstd")


def test_a_call_handed_to_a_closed_worker_is_refused_not_lost():
    """A closed worker's thread has ended: a call handed to it then would never run (a staged file
    never written, then renamed into place), so it is refused at once."""
    from ailab_backup_ext.archive.threads import Worker

    ran = []
    worker = Worker("ailab-backup-test")
    worker.submit(ran.append, 1)
    worker.close()
    with pytest.raises(RuntimeError, match="closed worker"):
        worker.submit(ran.append, 2)
    worker.close()  # idempotent
    assert ran == [1]
