"""The archive format.

A backup is one compressed tar. Its data members are ``notebooks/...``, so that extracting it into
DIR gives DIR/notebooks exactly as the seed recipe ``docker cp C:/notebooks DIR`` does. After the
data comes the manifest ``ailab-backup-manifest.json`` (outside ``notebooks/``): it is written last
because it holds the SHA-256 of every file, known only once the file has been streamed.

Everything that reads an archive goes through :func:`read_archive`, which refuses hostile or broken
input before anything is written anywhere.
"""

import contextlib
import datetime as _dt
import functools
import gzip
import hashlib
import io
import json
import os
import posixpath
import queue
import stat
import tarfile
import threading
import zlib
from dataclasses import asdict, dataclass, field

import zstandard

from .errors import BackupError, InvalidArchive, TooLarge

DATA_ROOT = "notebooks"
MANIFEST_NAME = "ailab-backup-manifest.json"
FORMAT = "ailab-backup"
FORMAT_VERSION = 1
SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
CHUNK = 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
ROOT = "."  # the path of the notebooks folder itself in a manifest
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 3800  # Linux: NAME_MAX; PATH_MAX less the mount's own path

FILE, DIR, SYMLINK = "file", "dir", "symlink"
HARDLINK = "hardlink"  # only ever seen coming from Docker; never written to an archive


@dataclass
class Entry:
    """One file, folder or symlink, with the path relative to the notebooks folder."""

    path: str
    type: str
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    sha256: str | None = None
    target: str | None = None

    def to_json(self):
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data):
        try:
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise InvalidArchive(f"The manifest has a malformed entry: {exc}") from None

    def same_as(self, other):
        return self.to_json() == other.to_json()


@dataclass
class Manifest:
    created: str
    source: dict
    label: str = ""
    compression: str = "zstd"
    entries: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    @property
    def file_count(self):
        return sum(1 for e in self.entries if e.type == FILE)

    @property
    def total_bytes(self):
        return sum(e.size for e in self.entries if e.type == FILE)

    def content_digest(self):
        """A digest of what the backup holds (paths, types, contents, modes, owners, links) but
        not of times: two backups of an unchanged folder have the same digest."""
        digest = hashlib.sha256()
        for e in sorted(self.entries, key=lambda e: e.path):
            digest.update(json.dumps([e.path, e.type, e.size, e.mode, e.uid, e.gid, e.sha256, e.target]).encode())
        return digest.hexdigest()

    def to_json(self):
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "source": self.source,
            "label": self.label,
            "compression": self.compression,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
            "entries": [e.to_json() for e in self.entries],
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidArchive("The archive's manifest is not an ailab-backup manifest.")
        if data.get("format_version") != FORMAT_VERSION:
            raise InvalidArchive(
                f"The archive has format version {data.get('format_version')!r}; this version of "
                f"ailab-backup reads version {FORMAT_VERSION}. Update the extension to restore it."
            )
        entries = data.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArchive("The archive's manifest has no valid list of entries.")
        return cls(
            created=str(data.get("created", "")),
            source=data.get("source") if isinstance(data.get("source"), dict) else {},
            label=str(data.get("label", "")),
            compression=str(data.get("compression", "")),
            entries=[Entry.from_json(e) for e in entries],
            skipped=data.get("skipped") if isinstance(data.get("skipped"), list) else [],
        )


def utc_now():
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def member_name(path):
    return DATA_ROOT if path == ROOT else f"{DATA_ROOT}/{path}"


# ---------------------------------------------------------------------------------------------
# Safety rules, shared by the reader (hostile archives) and the writers (what a source holds)


def check_path(path):
    """Refuse any path that is not a plain relative path inside the notebooks folder."""
    if path == ROOT:
        return
    if not path or "\0" in path or path.startswith("/") or path.endswith("/"):
        raise InvalidArchive(f"Refused {path!r}: not a relative path inside notebooks/.")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidArchive(f"Refused {path!r}: the path has '..', '.' or empty parts.")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArchive(f"Refused {path!r}: the name is not valid UTF-8.") from None
    if len(encoded) > MAX_PATH_BYTES or any(len(p) > MAX_NAME_BYTES for p in encoded.split(b"/")):
        raise InvalidArchive(
            f"Refused {path[:60]!r}...: a name longer than {MAX_NAME_BYTES} bytes or a path longer "
            f"than {MAX_PATH_BYTES} bytes cannot be written on Linux."
        )


def symlink_escapes(path, target):
    """True when a symlink at ``path`` (relative to the folder) points outside the folder, or
    could: '..' is allowed only as leading parts, since after a name that is itself a symlink
    (``here -> .``) the kernel climbs from where that link points, not from the text."""
    if not target or target.startswith("/") or "\0" in target:
        return True
    parts = [p for p in target.split("/") if p not in ("", ".")]
    leading = 0
    while leading < len(parts) and parts[leading] == "..":
        leading += 1
    if ".." in parts[leading:]:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


class EntryChecker:
    """Applies the safety rules to a stream of entries: types, modes, links, duplicates, limits."""

    def __init__(self, max_total_bytes=0):
        self.seen = set()
        self.symlinks = set()
        self.total = 0
        self.max_total_bytes = max_total_bytes

    def check(self, entry):
        path = entry.path
        check_path(path)
        if path == ROOT and entry.type != DIR:
            raise InvalidArchive(f"Refused the notebooks folder itself: it is a {entry.type}, not a folder.")
        if path in self.seen:
            raise InvalidArchive(f"Refused {path!r}: it appears twice in the archive.")
        if entry.type not in (FILE, DIR, SYMLINK):
            raise InvalidArchive(
                f"Refused {path!r}: a {entry.type} is not allowed (only files, folders, symlinks)."
            )
        if entry.mode & (stat.S_ISUID | stat.S_ISGID):
            raise InvalidArchive(f"Refused {path!r}: setuid/setgid bits are not allowed.")
        if path != ROOT:
            parent = posixpath.dirname(path)
            while parent:
                if parent in self.symlinks:
                    raise InvalidArchive(f"Refused {path!r}: it lies behind the symlink {parent!r}.")
                parent = posixpath.dirname(parent)
        if entry.type == SYMLINK:
            if symlink_escapes(path, entry.target):
                raise InvalidArchive(
                    f"Refused {path!r}: the symlink points outside notebooks/ ({entry.target!r})."
                )
            self.symlinks.add(path)
        if entry.size < 0 or (entry.type != FILE and entry.size):
            raise InvalidArchive(f"Refused {path!r}: impossible size {entry.size}.")
        self.total += entry.size
        if self.max_total_bytes and self.total > self.max_total_bytes:
            raise TooLarge(
                f"The archive unpacks to more than the limit of {self.max_total_bytes} bytes "
                "(AILabBackup.max_archive_bytes). Raise the limit if the archive is trusted."
            )
        self.seen.add(path)


# ---------------------------------------------------------------------------------------------
# Streams


class Worker:
    """A thread that runs calls in the order given, at most ``depth`` behind the caller (bounded
    memory). Hashing, compressing, decoding and writing release the GIL, so handing one of them
    to a worker puts it on another core."""

    def __init__(self, name, depth=8):
        self._queue = queue.Queue(depth)
        self._error = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            call = self._queue.get()
            if call is None:
                return
            if self._error is None:  # after a failure, calls are dropped (the caller is told)
                try:
                    call[0](*call[1:])
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    self._error = exc

    def submit(self, fn, *args):
        if self._error is not None:
            raise self._error
        self._queue.put((fn, *args))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        try:
            self.close()  # the thread ends; its own error would only hide the one on its way
        except BaseException:  # noqa: BLE001
            pass

    def close(self):
        """Wait until every call has run; raise the first error one raised. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def hashing_worker():
    return Worker("ailab-backup-hash")


PARALLEL_MIN_BYTES = 256 * 1024


def hash_feeder(hasher, digest, size):
    """What hands the pieces of a ``size``-byte file to ``digest``: the hashing worker for large
    files; for small ones this thread, since a hand-over costs more than it saves there, and
    thousands of them keep the GIL passing between our threads instead of to the server's."""
    if size >= PARALLEL_MIN_BYTES:
        return functools.partial(hasher.submit, digest.update)
    return digest.update


class FeedingReader:
    """Reads from ``raw``, handing every piece read to ``feed`` (e.g. a hash in a worker) and
    counting it for ``progress``."""

    def __init__(self, raw, feed=None, progress=None):
        self.raw = raw
        self.feed = feed
        self.progress = progress

    def read(self, size=-1):
        data = self.raw.read(size)
        if data:
            if self.feed is not None:
                self.feed(data)
            if self.progress is not None:
                self.progress.add_bytes(len(data))
        return data


class IterStream:
    """A readable stream over an iterator of byte chunks (Docker's archive responses)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.pending = b""

    def read(self, size=-1):
        if not self.pending:
            self.pending = next(self.chunks, b"")
        if size is None or size < 0:
            data = self.pending + b"".join(self.chunks)
            self.pending = b""
            return data
        if len(self.pending) <= size:
            data, self.pending = self.pending, b""
            return data
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


class _Prefixed(io.RawIOBase):
    """Gives back bytes already read to sniff the compression, then the rest of ``raw``."""

    def __init__(self, head, raw):
        self.head = head
        self.raw = raw

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_exactly(read, n):
    """``n`` bytes from ``read`` (fewer only at the end of the input)."""
    parts, got = [], 0
    while got < n:
        data = read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def open_decompressed(raw):
    """A readable stream of tar bytes from zstd, gzip or plain tar input (sniffed, not guessed)."""
    head = _read_exactly(raw.read, 4)
    source = io.BufferedReader(_Prefixed(head, raw), CHUNK)
    if head == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head[:2] == b"PK":
        raise InvalidArchive("This is a zip file, not a backup archive (.tar.zst or .tar.gz).")
    return source


class _VerifiedSink:
    """Where the compressor's output goes, in two worker threads: one writes it to ``out`` and
    decodes it again, one hashes it (the archive's SHA-256); so :meth:`close` can tell that the
    bytes written decode back to exactly what went in (the compressed format's checksum, and the
    length). A context manager: leaving it ends the threads."""

    SYNC_EVERY = 64 * 1024 * 1024

    def __init__(self, out, compression, sync=False):
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
        if not self.decoder.eof or self.decoded != expected_length:
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
            # one thread: the C call releases the GIL while Python reads and hashes on in other
            # threads, and zstd's own thread pool alone cost about 100 MB of buffers.
            # The frame checksum lets a reader (and the writer's own check) prove the content.
            cctx = zstandard.ZstdCompressor(level=1, threads=0, write_checksum=True)
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

    def write(self, data):
        if self.in_raw_frame:
            self.raw.write(_RAW_FRAME_END)
            self.in_raw_frame = False
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
        if self.in_raw_frame:
            self.raw.write(_RAW_FRAME_END)
            self.in_raw_frame = False
        self.stream.close()


# ---------------------------------------------------------------------------------------------
# Writing


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
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


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
        info = Entry(MANIFEST_NAME, FILE, size=len(data), mode=0o644, mtime=int(utc_now().timestamp()))
        for chunk in tar_stream([(info, io.BytesIO(data))], root_name=None):
            compressor.write(chunk)
        compressor.close()
        return sink.close(compressor.length)


# ---------------------------------------------------------------------------------------------
# Reading


def entry_from_tarinfo(info, path):
    if info.isreg():
        kind = FILE
    elif info.isdir():
        kind = DIR
    elif info.issym():
        kind = SYMLINK
    elif info.islnk():
        kind = HARDLINK
    elif info.ischr() or info.isblk():
        kind = "device file"
    elif info.isfifo():
        kind = "fifo"
    else:
        kind = f"tar member of type {info.type!r}"
    return Entry(
        path=path,
        type=kind,
        size=info.size if kind == FILE else 0,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime=int(info.mtime),
        target=info.linkname if kind in (SYMLINK, HARDLINK) else None,
    )


def data_path(name):
    """The path inside notebooks/ of a member name, or None for a name outside it."""
    if name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if name != "/" else name
    if name == DATA_ROOT:
        return ROOT
    if name.startswith(DATA_ROOT + "/"):
        return name[len(DATA_ROOT) + 1 :]
    return None


MAX_HEADER_DATA = 1024 * 1024  # pax records or a GNU long name: far more than any real one


class _Pieces:
    """The bytes of ``read(n)`` with their position, handed out in the pieces ``read`` gave
    (slices, not copies); ``read``/``tell`` serve tarfile's header code."""

    def __init__(self, read):
        self._read = read
        self._buf = memoryview(b"")
        self.pos = 0

    def piece(self, limit):
        """Up to ``limit`` bytes (fewer at a piece's end); empty only at the end of the input."""
        if not self._buf:
            data = self._read(CHUNK)
            if not data:
                return self._buf
            self._buf = memoryview(data)
        out = self._buf[:limit]
        self._buf = self._buf[len(out):]
        self.pos += len(out)
        return out

    def exactly(self, n):
        return _read_exactly(self.piece, n)

    def read(self, n):
        if n > MAX_HEADER_DATA:
            raise InvalidArchive(f"A tar header claims {n} bytes of extended header data: refused.")
        return self.exactly(n)

    def tell(self):
        return self.pos

    def skip_to(self, offset):
        while self.pos < offset:
            if not self.piece(offset - self.pos):
                raise tarfile.ReadError("unexpected end of data")


class _MemberData:
    """The data of one regular member; ``read`` returns bytes, as files do."""

    def __init__(self, pieces, size):
        self._pieces = pieces
        self._end = pieces.pos + size

    def read(self, size=-1):
        left = self._end - self._pieces.pos
        if left <= 0:
            return b""
        if size is None or size < 0 or size >= left:
            size = left
        # small reads are exact, as a file's are; large ones give what one piece holds
        data = self._pieces.exactly(size) if size == left or size < 65536 else bytes(self._pieces.piece(size))
        if not data or (len(data) < size and size == left):
            raise tarfile.ReadError("unexpected end of data")
        return data


class TarReader:
    """A tar stream, member by member, without tarfile's stream mode, whose buffering copied
    every byte several times. Headers are parsed by tarfile's own ``TarInfo.fromtarfile`` (pax,
    GNU long names, base-256 numbers), to which this object is the "tarfile"; data is read
    straight from the input. Strict: a bad header anywhere is an error, not an early end."""

    def __init__(self, read, encoding="utf-8", errors="surrogateescape"):
        self.fileobj = _Pieces(read)
        self.encoding = encoding
        self.errors = errors
        self.pax_headers = {}  # global pax headers (tarfile's header code keeps them here)
        self.offset = 0  # where the next header begins (set by tarfile's header code)
        self.ended = False

    def __iter__(self):
        while True:
            self.fileobj.skip_to(self.offset)  # what the consumer left unread, and the padding
            try:
                info = tarfile.TarInfo.fromtarfile(self)
            except tarfile.EOFHeaderError:
                self.ended = True
                return
            except tarfile.HeaderError as exc:
                raise tarfile.ReadError(str(exc) or type(exc).__name__) from None
            if info.sparse is not None:
                raise InvalidArchive(f"Refused {info.name!r}: sparse tar members are not supported.")
            yield info

    def data(self, info):
        """The data of the member just yielded (a regular file)."""
        return _MemberData(self.fileobj, info.size)

    def require_only_zeros(self):
        """After the end-of-archive block: refuse anything but zeros up to the end."""
        while True:
            part = self.fileobj.piece(CHUNK)
            if not part:
                return
            if bytes(part).count(0) != len(part):
                raise InvalidArchive("The archive has data after its end: it was altered or damaged.")


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile)


class _CountingReader:
    """Counts the bytes read from ``raw`` (the compressed size, for the ratio limit)."""

    def __init__(self, raw):
        self.raw = raw
        self.count = 0

    def read(self, size=-1):
        data = self.raw.read(size)
        self.count += len(data)
        return data


def iter_archive(raw, max_total_bytes=0, progress=None, max_ratio=0, check_content=True):
    """Yield ``(Entry, reader)`` for each data member, checking each one; the last item is
    ``(Manifest, None)`` after checking the manifest against the data.

    File readers must be consumed (or not) before the next item; what is not read is skipped.
    Each file is hashed (in a worker thread) and checked against the manifest, unless
    ``check_content`` is false: then only names, types, sizes, modes, owners and times are
    (for a second read of an archive already checked completely).
    With ``max_ratio``, an archive that would unpack to more than that many times its compressed
    size read so far (at least 1 MiB) is refused as a decompression bomb, from the headers alone.
    Raises :class:`InvalidArchive` on anything hostile or broken.
    """
    checker = EntryChecker(max_total_bytes)
    counted = _CountingReader(raw)
    found, digests = [], []
    manifest = None
    try:
        with hashing_worker() if check_content else contextlib.nullcontext() as hasher:
            tar = TarReader(open_decompressed(counted).read)
            for info in tar:
                path = data_path(info.name)
                if path is None:
                    manifest = _read_manifest(tar, info, manifest)
                    continue
                if manifest is not None:
                    raise InvalidArchive("The archive has data after its manifest: it was altered or damaged.")
                entry = entry_from_tarinfo(info, path)
                checker.check(entry)
                if max_ratio and checker.total > max_ratio * max(counted.count, 1 << 20):
                    raise TooLarge(
                        f"The archive would unpack to more than {max_ratio} times its size (at "
                        f"{entry.path!r}): refused as a decompression bomb. If it is yours, raise "
                        "AILabBackup.max_compression_ratio."
                    )
                if entry.type == FILE:
                    feed = None
                    if hasher is not None:
                        digest = hashlib.sha256()
                        digests.append((entry, digest))
                        feed = hash_feeder(hasher, digest, entry.size)
                    reader = FeedingReader(tar.data(info), feed, progress)
                    yield entry, reader
                    while reader.read(CHUNK):  # hash whatever the consumer did not read
                        pass
                    if progress:
                        progress.add_file()
                else:
                    yield entry, None
                found.append(entry)
            if manifest is not None:
                tar.require_only_zeros()
        for entry, digest in digests:  # the hashing thread has finished
            entry.sha256 = digest.hexdigest()
    except _READ_ERRORS as exc:
        raise InvalidArchive(
            f"The archive is damaged or truncated ({exc or type(exc).__name__}). "
            "Nothing was changed; use another backup."
        ) from None
    if manifest is None:
        raise InvalidArchive(
            f"The archive has no {MANIFEST_NAME}: it was not made by ailab-backup or is truncated. "
            "A plain notebooks/ folder can be brought in with 'ailab-backup import --dir DIR'."
        )
    _match_manifest(manifest, found, check_content)
    yield manifest, None


def _read_manifest(tar, info, found_before):
    if info.name != MANIFEST_NAME or found_before is not None:
        raise InvalidArchive(
            f"Refused member {info.name!r}: an archive holds only notebooks/ and one {MANIFEST_NAME}."
        )
    if not info.isreg() or info.size > MAX_MANIFEST_BYTES:
        raise InvalidArchive("The archive's manifest is not a plain file.")
    try:
        return Manifest.from_json(json.loads(tar.data(info).read()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArchive("The archive's manifest is not valid JSON.") from None


def _match_manifest(manifest, found, check_content=True):
    declared = {}
    for entry in manifest.entries:
        if entry.path in declared:
            raise InvalidArchive(f"The manifest lists {entry.path!r} twice.")
        declared[entry.path] = entry
    for entry in found:
        other = declared.pop(entry.path, None)
        if other is None:
            raise InvalidArchive(f"{entry.path!r} is in the archive but not in its manifest.")
        if not check_content:
            entry.sha256 = other.sha256
        if not entry.same_as(other):
            raise InvalidArchive(
                f"{entry.path!r} does not match the manifest (content, size, mode, owner or time "
                "differs): the archive is damaged or was altered."
            )
    if declared:
        missing = sorted(declared)[0]
        raise InvalidArchive(
            f"{len(declared)} entries of the manifest are missing from the archive, e.g. {missing!r}."
        )


def read_archive(raw, max_total_bytes=0, progress=None, max_ratio=0):
    """Check a whole archive; return its :class:`Manifest` or raise :class:`InvalidArchive`."""
    manifest = None
    for item, _ in iter_archive(raw, max_total_bytes, progress, max_ratio):
        manifest = item
    return manifest
