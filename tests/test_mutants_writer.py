"""How a backup is written, seen from what a user gets back: a gzip backup of a large file, a file
that changes while it is read, links whose target is not UTF-8, the owners a plain ``tar`` sees,
the streams a restore through Docker sends and the answers it reads back, the progress of a
check. Fast and Docker-free, so the mutation run (tests/MUTANTS.md) checks
``ailab_backup_ext/archive/writer.py`` and ``threads.py`` with them."""

import hashlib
import io
import os
import random
import subprocess
import sys
import tarfile
import threading

import pytest
import zstandard

from ailab_backup_ext.archive import DIR, FILE, ROOT, SYMLINK, Entry, Manifest, read_archive, write_archive
from ailab_backup_ext.archive import writer as archive_writer
from ailab_backup_ext.archive.threads import IterStream, Worker, hashing_worker
from ailab_backup_ext.archive.writer import tar_stream
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.progress import Progress
from test_archive_writing import _NotAFile  # a stream with no file descriptor (an S3 upload)


def _manager(tmp_path, **config):
    source = tmp_path / "notebooks"
    source.mkdir(exist_ok=True)
    return source, BackupManager(AILabBackup(source_dir=str(source), store=str(tmp_path / "store"), **config))


def _archive_path(tmp_path, meta):
    (path,) = [p for p in (tmp_path / "store" / "data").iterdir() if p.name.startswith(meta["id"] + ".")]
    return path


def _members(path):
    """The tar members of a backup's archive as any tar reads them (zstd or gzip)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    else:
        import gzip
        raw = gzip.decompress(raw)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return tar.getmembers()


def test_a_gzip_backup_of_a_large_file_that_does_not_compress_restores_whole(tmp_path):
    """Raw (stored) frames are a zstd matter: with gzip, a file of 1 MiB or more that does not
    compress is compressed like any other, and comes back byte for byte."""
    source, manager = _manager(tmp_path, compression="gzip")
    noise = os.urandom(archive_writer.STORE_MIN_BYTES + 4096)
    (source / "noise.bin").write_bytes(noise)
    meta = manager.create_backup()
    assert _archive_path(tmp_path, meta).name.endswith(".tar.gz")
    (source / "noise.bin").write_bytes(b"changed")
    manager.restore_backup(meta["id"])
    assert (source / "noise.bin").read_bytes() == noise


def test_a_file_that_shrinks_while_it_is_backed_up_is_named_and_the_backup_is_not_kept(tmp_path):
    source, manager = _manager(tmp_path)
    big = source / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    cut = []

    def shrink_after_the_first_chunk(progress):
        if progress.phase == "backing up" and progress.done_bytes and not cut:
            cut.append(progress.done_bytes)
            os.truncate(big, progress.done_bytes)  # as a notebook saved meanwhile would

    with pytest.raises(BackupError) as refused:
        manager.create_backup(progress=Progress(shrink_after_the_first_chunk))
    assert cut
    assert "'big.bin' ended early: it changed while it was read. Try again." in str(refused.value)
    assert manager.list_backups() == []
    assert os.listdir(tmp_path / "store" / "data") == []  # no partial archive either


def test_links_whose_target_is_not_utf8_come_back_byte_for_byte(tmp_path):
    """A link's target is bytes to Linux: one that is not UTF-8 (a name from an old Latin-1
    system) is backed up and restored as it was, inside the folder or dangling."""
    source, manager = _manager(tmp_path)
    (source / "café.txt").write_bytes(b"x")
    targets = {b"latin1": b"caf\xe9.txt", b"dangling": b"sub/\xff\xfe", b"plain": b"caf\xc3\xa9.txt"}
    for name, target in targets.items():
        os.symlink(target, os.path.join(os.fsencode(source), name))
    meta = manager.create_backup()
    assert meta["skipped"] == []
    for name in targets:
        os.remove(os.path.join(os.fsencode(source), name))
    manager.restore_backup(meta["id"])
    assert {name: os.readlink(os.path.join(os.fsencode(source), name)) for name in targets} == targets


def test_an_archive_names_no_users_or_groups_only_their_numbers(tmp_path):
    """AI-Lab's user on one machine is another name (or none) on the next: GNU tar extracting as
    root would prefer a name it finds over the number, so the members carry numbers alone."""
    source, manager = _manager(tmp_path)
    (source / "a.ipynb").write_text("{}")
    (source / "sub").mkdir()
    os.symlink("../a.ipynb", source / "sub" / "link")
    meta = manager.create_backup()
    members = [m for m in _members(_archive_path(tmp_path, meta)) if m.name.startswith("notebooks")]
    assert len(members) == 4
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    assert {(m.uid, m.gid) for m in members} == {(os.getuid(), os.getgid())}


def test_a_restore_streamed_into_a_folder_names_every_member_under_it_with_its_data():
    """What a restore through Docker sends (put_archive into the target's parent): every member
    under the target folder's own name, each file's data whole and padded, links as they were."""
    files = {"a.ipynb": b"x" * 700, "sub/b.txt": b"y" * 512, "sub/empty": b""}
    entries = [(Entry(ROOT, DIR, mode=0o755), None), (Entry("sub", DIR, mode=0o700), None)]
    entries += [(Entry(p, FILE, size=len(d), mode=0o640, mtime=1_700_000_000), io.BytesIO(d)) for p, d in files.items()]
    entries.append((Entry("sub/l", SYMLINK, target="b.txt"), None))
    data = b"".join(tar_stream(entries, "restored"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        got = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}
        links = {m.name: m.linkname for m in members if m.issym()}
        names = [m.name for m in members]
    assert names == ["restored", "restored/sub", "restored/a.ipynb", "restored/sub/b.txt", "restored/sub/empty",
                     "restored/sub/l"]
    assert got == {f"restored/{p}": d for p, d in files.items()}
    assert links == {"restored/sub/l": "b.txt"}


def test_an_unknown_compression_is_refused_by_name_and_nothing_is_written():
    out = io.BytesIO()
    with pytest.raises(ValueError) as refused:
        write_archive(out, [(Entry(ROOT, DIR, mode=0o755), None)], Manifest("now", {}), "bz2")
    assert str(refused.value) == "unknown compression 'bz2'"
    assert out.getvalue() == b""


def test_by_default_an_archive_goes_to_any_stream_even_one_that_is_not_a_file(monkeypatch):
    """Syncing as it goes is for a caller that asks (a folder store's file): by default a large
    archive streams to anything that takes bytes."""
    monkeypatch.setattr(archive_writer._VerifiedSink, "SYNC_EVERY", 64 * 1024)  # a file would sync often
    noise = os.urandom(1024 * 1024)
    out = _NotAFile()
    entries = [(Entry(ROOT, DIR, mode=0o755), None), (Entry("noise.bin", FILE, size=len(noise)), io.BytesIO(noise))]
    size, _ = write_archive(out, entries, Manifest("now", {}), "zstd")
    assert size == len(out.out.getvalue()) > len(noise)
    assert [e.size for e in read_archive(io.BytesIO(out.out.getvalue())).entries] == [0, len(noise)]


def test_a_check_counts_its_bytes_as_it_reads_them(tmp_path):
    """The progress bar of a verify, and of a restore's check, moves with the data, not only at
    its end."""
    source, manager = _manager(tmp_path)
    sizes = {"a.bin": 3 * 1024 * 1024 + 5, "b.ipynb": 1000}
    for name, size in sizes.items():
        (source / name).write_bytes(os.urandom(size))
    meta = manager.create_backup()
    for phase, run in (("verifying", manager.verify_backup), ("checking", manager.restore_backup)):
        seen = []
        run(meta["id"], progress=Progress(lambda p: seen.append((p.phase, p.done_bytes, p.done_files))))
        counted = [(done, files) for name, done, files in seen if name == phase]
        assert counted[-1] == (sum(sizes.values()), len(sizes)), phase
        assert any(0 < done < sizes["a.bin"] for done, _ in counted), phase  # during the large file


def _chunked(data, rng):
    """``data`` cut as Docker's answers come (requests never yields an empty piece)."""
    chunks, at = [], 0
    while at < len(data):
        n = rng.choice([1, 7, 512, 4096, 65536, 1024 * 1024])
        chunks.append(data[at:at + n])
        at += n
    return chunks


def test_an_archive_read_through_dockers_chunked_answer_is_the_same_archive():
    """A backup of a Docker volume, or one kept in a volume store, is read as Docker streams it
    (IterStream over its chunks): whatever the cut, every file and its hash comes through."""
    files = {"a.ipynb": os.urandom(300_000), "b.bin": os.urandom(1_500_000), "c.txt": b"c" * 10_000}
    out = io.BytesIO()
    entries = [(Entry(ROOT, DIR, mode=0o755), None)]
    entries += [(Entry(p, FILE, size=len(d)), io.BytesIO(d)) for p, d in files.items()]
    write_archive(out, entries, Manifest("now", {}), "zstd")
    rng = random.Random(19)
    for _ in range(5):
        manifest = read_archive(IterStream(_chunked(out.getvalue(), rng)))
        assert {e.path: e.sha256 for e in manifest.entries if e.type == FILE} == \
            {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_reads_of_any_size_from_a_chunked_answer_give_its_bytes_in_order():
    rng = random.Random(7)
    data = os.urandom(200_000)
    for _ in range(20):
        stream, got = IterStream(_chunked(data, rng)), []
        while True:
            size = rng.choice([1, 100, 511, 4096, 70_000])
            piece = stream.read(size)
            assert len(piece) <= size
            if not piece:
                break
            got.append(piece)
        assert b"".join(got) == data
    for whole in (-1, None):
        stream = IterStream(_chunked(data, rng))
        first = stream.read(10)
        assert first + stream.read(whole) == data
        assert stream.read(whole) == b"" and stream.read(5) == b""
    assert IterStream([]).read(10) == b"" and IterStream([]).read() == b""


def test_a_read_of_nothing_from_a_chunked_answer_gives_nothing_and_keeps_the_rest():
    stream = IterStream([b"abc", b"de"])
    assert stream.read(0) == b""
    assert stream.read() == b"abcde"


def _noise_entries(sizes, seed=3):
    """A root folder and incompressible files of ``sizes`` (stored as raw zstd frames)."""
    rng = random.Random(seed)
    entries = [(Entry(ROOT, DIR, mode=0o755), None)]
    for n, size in enumerate(sizes):
        data = rng.randbytes(size)
        entries.append((Entry(f"f{n}.bin", FILE, size=size), io.BytesIO(data)))
    return entries


def test_an_archive_written_to_a_file_that_asks_for_it_is_synced_as_it_grows(tmp_path, monkeypatch):
    """A folder store's archive is flushed to disk whenever ``SYNC_EVERY`` bytes went out since
    the last time, so the kernel never holds a whole 20 GB archive in dirty pages and the store's
    final fsync is short; without ``sync`` nothing syncs (an S3 upload has no file)."""
    every = 2 * 1024 * 1024
    monkeypatch.setattr(archive_writer._VerifiedSink, "SYNC_EVERY", every)
    # what one hand-over to the writing thread holds at most: a 1 MiB chunk in raw blocks
    one_take = archive_writer.CHUNK + 3 * (archive_writer.CHUNK // archive_writer._RAW_BLOCK)
    synced_at = []  # the file's length at each fdatasync
    real = os.fdatasync
    monkeypatch.setattr(archive_writer.os, "fdatasync", lambda fd: (synced_at.append(os.fstat(fd).st_size), real(fd)))
    for sync in (True, False):
        synced_at.clear()
        with open(tmp_path / f"a{sync}.tar.zst", "wb") as out:
            size, _ = write_archive(out, _noise_entries([9 * 1024 * 1024, 5 * 1024 * 1024]),
                                    Manifest("now", {}), "zstd", sync=sync)
        if not sync:
            assert synced_at == []
            continue
        assert size > 14 * 1024 * 1024
        gaps = [b - a for a, b in zip([0] + synced_at, synced_at)]
        assert len(synced_at) >= size // (every + one_take), synced_at
        assert all(every <= gap < every + one_take for gap in gaps), gaps
        assert size - synced_at[-1] < every + one_take


def test_a_backup_runs_in_named_threads_that_are_gone_when_it_ends(tmp_path):
    """In a thread dump of a stuck server (py-spy, faulthandler) the backup's threads say what
    they are; none of them outlives the backup."""
    seen = set()

    class Peek(io.BytesIO):
        def read(self, size=-1):
            seen.update(t.name for t in threading.enumerate())
            return super().read(size)

    before = set(threading.enumerate())
    data = os.urandom(1024 * 1024)
    entries = [(Entry(ROOT, DIR, mode=0o755), None), (Entry("a.bin", FILE, size=len(data)), Peek(data))]
    write_archive(io.BytesIO(), entries, Manifest("now", {}), "zstd")
    assert {"ailab-backup-write", "ailab-backup-hash"} <= seen
    assert set(threading.enumerate()) == before


def test_a_worker_never_closed_does_not_keep_the_process_alive():
    """If a backup's error path ever missed a ``close``, the CLI and the server would still exit
    instead of hanging on the worker's thread."""
    # Python's exit waits for no daemon thread (seen here, where the mutation run sees it) ...
    with Worker("left-open-here"), hashing_worker():
        threads = [t for t in threading.enumerate() if t.name in ("left-open-here", "ailab-backup-hash")]
        assert len(threads) == 2 and all(t.daemon for t in threads)
    # ... and a process that leaves two open ends at once
    code = "from ailab_backup_ext.archive.threads import Worker, hashing_worker\n" \
           "w = Worker('left-open'); h = hashing_worker(); w.submit(len, 'a call'); print('end')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "end" in done.stdout


def test_a_sink_handed_two_whole_frames_in_one_write_checks_both():
    """The check as it is written decodes frame after frame within one write, whoever cuts the
    writes: a stream whose second frame lost a byte is refused, a whole one passes."""
    first, second = b"notebook " * 5000, os.urandom(70_000)
    frames = [zstandard.ZstdCompressor(level=1, write_checksum=True).compress(p) for p in (first, second)]
    whole = io.BytesIO()
    with archive_writer._VerifiedSink(whole, "zstd", sync=False) as sink:
        sink.write(frames[0] + frames[1])
        assert sink.close(len(first) + len(second)) == (len(frames[0]) + len(frames[1]),
                                                        hashlib.sha256(frames[0] + frames[1]).hexdigest())
    cut = frames[1][:-9] + frames[1][-8:]  # a byte of its content gone
    with pytest.raises(BackupError, match="not kept"):
        with archive_writer._VerifiedSink(io.BytesIO(), "zstd", sync=False) as sink:
            sink.write(frames[0] + cut)
            sink.close(len(first) + len(second))


def test_a_compressed_stream_ended_inside_a_stored_file_still_decodes_whole():
    """The compressor's own contract, whatever writes last: closing it in the middle of a raw
    frame ends that frame, so any zstd reader gets every byte back."""
    sink = io.BytesIO()

    class Parts:  # what _VerifiedSink offers the compressor
        write = sink.write

        @staticmethod
        def write_parts(parts):
            for part in parts:
                sink.write(part)

    compressor = archive_writer._Compressor(Parts, "zstd")
    head, stored = b"header " * 100, os.urandom(300_000)
    compressor.write(head)
    compressor.write_stored(stored)
    compressor.close()
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sink.getvalue()), read_across_frames=True) as r:
        assert r.read() == head + stored
    assert compressor.length == len(head) + len(stored)
