"""Writing archives: the tar stream, the compressed (and, for zstd, raw-frame) output, checked as
it is written."""

import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib

import zstandard

from ..errors import BackupError, InvalidArchive
from .format import CHUNK, DATA_ROOT, DIR, FILE, MANIFEST_NAME, ROOT, Entry, member_name, utc_now
from .threads import Worker, hash_feeder, hashing_worker

class _VerifiedSink:
    """Where the compressor's output goes, in two worker threads: one writes it to ``out`` and
    decodes it again, one hashes it (the archive's SHA-256); so :meth:`close` can tell that the
    bytes written decode back to exactly what went in (the compressed format's checksum, and the
    length). A context manager: leaving it ends the threads."""

    SYNC_EVERY = 64 * 1024 * 1024

    def __init__(self, out, compression, sync):
        self.out = out
        self.sync = sync
        self.unsynced = 0
        self.size = 0
        self.decoded = 0
        self.digest = hashlib.sha256()
        if compression == "zstd":
            self.new_decoder = zstandard.ZstdDecompressor().decompressobj
        else:
            self.new_decoder = functools.partial(zlib.decompressobj, wbits=31)  # checks CRC-32 and length
        self.decoder = self.new_decoder()
        self.writer = Worker("ailab-backup-write")
        self.hasher = hashing_worker()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for worker in (self.writer, self.hasher):
            worker.__exit__(*exc_info)

    def write(self, data):
        self.write_parts((data,))
        return len(data)

    def write_parts(self, parts):
        self.writer.submit(self._take, parts)
        self.hasher.submit(self._hash, parts)

    def _hash(self, parts):
        for data in parts:
            self.digest.update(data)
            self.size += len(data)

    def _take(self, parts):
        for data in parts:
            self.out.write(data)
            self.unsynced += len(data)
            while data:  # frame by frame, so that the end of each one is seen (and its checksum)
                if self.decoder.eof:
                    self.decoder = self.new_decoder()
                self.decoded += len(self.decoder.decompress(data))
                data = self.decoder.unused_data if self.decoder.eof else b""
        if self.sync and self.unsynced >= self.SYNC_EVERY:  # so that the final fsync is short
            self.out.flush()
            os.fdatasync(self.out.fileno())
            self.unsynced = 0

    def flush(self):
        pass  # gzip asks; the workers keep the order and close() waits for them

    def close(self, expected_length):
        """Wait for the writes; return ``(size, sha256)`` of what was written, or raise when it
        does not decode back to ``expected_length`` bytes with a matching checksum."""
        self.hasher.close()
        try:
            self.writer.close()
        except (zlib.error, zstandard.ZstdError) as exc:
            raise BackupError(f"The archive did not decode back to what was written ({exc}); it was not kept.") from None
        if not self.decoder.eof:
            raise BackupError(
                f"The archive's compressed stream does not end ({self.decoded} of {expected_length} bytes "
                "decoded): it is cut short; it was not kept."
            )
        if self.decoded != expected_length:
            raise BackupError(
                f"The archive decodes to {self.decoded} bytes instead of {expected_length}; it was not kept."
            )
        return self.size, self.digest.hexdigest()


STORE_MIN_BYTES = 1024 * 1024  # smaller files are always compressed
_PROBE_BYTES = 128 * 1024
_RAW_BLOCK = 128 * 1024  # the largest zstd block
# a zstd frame header: magic, no content size, no checksum, window 128 KiB (one block)
_RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00\x38"
_RAW_FRAME_END = b"\x01\x00\x00"  # an empty raw block, the last one


class _Compressor:
    """A writable compressed stream over ``raw`` that leaves ``raw`` open when closed and counts
    what went in (``length``).

    With zstd, data that does not compress (media, archives, random bytes) can be stored as it
    is: the compressed frame is ended and the data goes into a frame of raw blocks, which any
    zstd reader decodes (RFC 8878); it costs a copy instead of a futile compression."""

    def __init__(self, raw, compression):
        self.raw = raw
        self.length = 0
        self.in_raw_frame = False
        self.compression = compression
        if compression == "zstd":
            # one thread (zstandard's default, not its pool): the C call releases the GIL while
            # Python reads and hashes on in other threads, and zstd's pool alone cost about 100 MB
            # of buffers.
            # The frame checksum lets a reader (and the writer's own check) prove the content.
            cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
            self.stream = cctx.stream_writer(raw, closefd=False)
            self.probe = zstandard.ZstdCompressor(level=1)
        elif compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def incompressible(self, sample):
        """True when storing ``sample``'s file as it is beats compressing it (zstd only)."""
        if self.compression != "zstd":
            return False
        sample = sample[:_PROBE_BYTES]
        return len(self.probe.compress(sample)) > 0.97 * len(sample)

    def _end_raw_frame(self):
        if self.in_raw_frame:
            self.raw.write(_RAW_FRAME_END)
            self.in_raw_frame = False

    def write(self, data):
        self._end_raw_frame()
        self.length += len(data)
        return self.stream.write(data)

    def write_stored(self, data):
        if not self.in_raw_frame:
            self.stream.flush(zstandard.FLUSH_FRAME)
            self.raw.write(_RAW_FRAME_HEADER)
            self.in_raw_frame = True
        view = memoryview(data)
        parts = []
        for start in range(0, len(view), _RAW_BLOCK):
            block = view[start : start + _RAW_BLOCK]
            parts += [(len(block) << 3).to_bytes(3, "little"), block]  # raw block, not last
        self.raw.write_parts(parts)
        self.length += len(data)

    def close(self):
        self._end_raw_frame()
        self.stream.close()


# The tar stream


def tarinfo_for(entry):
    info = tarfile.TarInfo(member_name(entry.path))
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = entry.mtime
    if entry.type == FILE:
        info.type, info.size = tarfile.REGTYPE, entry.size
    elif entry.type == DIR:
        info.type = tarfile.DIRTYPE
    else:
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    return info


def tar_header(entry, root_name=DATA_ROOT):
    """The header blocks of ``entry``, named under ``root_name`` (``None``: by its path alone)."""
    info = tarinfo_for(entry)
    if root_name is None:
        info.name = entry.path
    elif root_name != DATA_ROOT:
        info.name = root_name if entry.path == ROOT else f"{root_name}/{entry.path}"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8")  # names that are not UTF-8: surrogateescape


def file_chunks(entry, content):
    """The data of a file entry read from ``content``: exactly ``entry.size`` bytes, in chunks."""
    remaining = entry.size
    while remaining:
        chunk = content.read(min(CHUNK, remaining))
        if not chunk:
            raise InvalidArchive(f"{entry.path!r} ended early: it changed while it was read. Try again.")
        remaining -= len(chunk)
        yield chunk


def tar_padding(size):
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def tar_stream(entries, root_name=DATA_ROOT, end=True):
    """Tar bytes, as an iterator of chunks, of ``(Entry, file)`` pairs named under ``root_name``
    (``None``: named by their paths alone), closed with the end-of-archive blocks unless ``end``
    is false. Streams files of any size in bounded memory."""
    for entry, content in entries:
        yield tar_header(entry, root_name)
        if entry.type == FILE:
            yield from file_chunks(entry, content)
            if entry.size % tarfile.BLOCKSIZE:
                yield tar_padding(entry.size)
    if end:
        yield tarfile.NUL * (tarfile.BLOCKSIZE * 2)


def write_archive(out, entries, manifest, compression, progress=None, sync=False):
    """Stream ``entries`` ((Entry, file or None) pairs) into ``out`` as a compressed archive,
    hashing each file exactly as it goes in. Fills ``manifest.entries`` and returns
    ``(archive_size, archive_sha256)``.

    The work is shared by threads, since hashing, compressing, decoding and writing release the
    GIL: this one reads and compresses, one hashes the large files, one writes the compressed
    bytes and decodes them again, one hashes them. So the archive is checked as it is written:
    it decodes back to exactly the bytes that went in (the compressed format's checksum, and the
    length), or this raises and nothing is kept. With ``sync``, ``out`` (a
    file) is flushed to disk as it goes, for a caller that fsyncs it at the end."""
    sink = _VerifiedSink(out, compression, sync)
    hasher = hashing_worker()
    manifest.compression = compression
    digests = []
    with hasher, sink:
        compressor = _Compressor(sink, compression)
        for entry, content in entries:
            compressor.write(tar_header(entry))
            if entry.type == FILE:
                digest = hashlib.sha256()
                digests.append((entry, digest))
                feed = hash_feeder(hasher, digest, entry.size)
                stored = None  # whether the data is stored as it is (decided on its first chunk)
                for chunk in file_chunks(entry, content):
                    feed(chunk)
                    if stored is None:
                        stored = entry.size >= STORE_MIN_BYTES and compressor.incompressible(chunk)
                    if stored:
                        compressor.write_stored(chunk)
                    else:
                        compressor.write(chunk)
                    if progress:
                        progress.add_bytes(len(chunk))
                compressor.write(tar_padding(entry.size))
            manifest.entries.append(entry)
            if progress:
                progress.add_file()
        hasher.close()
        for entry, digest in digests:
            entry.sha256 = digest.hexdigest()
        data = json.dumps(manifest.to_json(), indent=1).encode()
        info = Entry(MANIFEST_NAME, FILE, size=len(data), mtime=int(utc_now().timestamp()))
        for chunk in tar_stream([(info, io.BytesIO(data))], root_name=None):
            compressor.write(chunk)
        compressor.close()
        return sink.close(compressor.length)
