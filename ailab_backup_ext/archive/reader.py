"""Reading archives.

Everything that reads an archive goes through :func:`read_archive` or :func:`iter_archive`, which
refuse hostile or broken input before anything is written anywhere.
"""

import contextlib
import gzip
import hashlib
import io
import json
import posixpath
import stat
import tarfile
import zlib

import zstandard

from ..errors import Cancelled, InvalidArchive, TooLarge
from .format import (
    CHUNK,
    DATA_ROOT,
    DIR,
    FILE,
    HARDLINK,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    ROOT,
    SYMLINK,
    Entry,
    Manifest,
    check_path,
    symlink_escapes,
)
from .threads import FeedingReader, hash_feeder, hashing_worker

class EntryChecker:
    """Applies the safety rules to a stream of entries: types, modes, links, duplicates, limits."""

    def __init__(self, max_total_bytes=0, max_entries=0):
        self.seen = set()
        self.symlinks = set()
        self.total = 0
        self.max_total_bytes = max_total_bytes
        self.max_entries = max_entries

    def check(self, entry):
        path = entry.path
        if self.max_entries and len(self.seen) >= self.max_entries:
            raise TooLarge(
                f"The archive has more than {self.max_entries} entries (AILabBackup.max_entries): "
                "refused. Raise the limit if the archive is trusted."
            )
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
        if not (0 <= entry.uid < 2**32 and 0 <= entry.gid < 2**32 and -(2**63) <= entry.mtime < 2**63):
            raise InvalidArchive(f"Refused {path!r}: impossible owner or time ({entry.uid}:{entry.gid}, {entry.mtime}).")
        self.total += entry.size
        if self.max_total_bytes and self.total > self.max_total_bytes:
            raise TooLarge(
                f"The archive unpacks to more than the limit of {self.max_total_bytes} bytes "
                "(AILabBackup.max_archive_bytes). Raise the limit if the archive is trusted."
            )
        self.seen.add(path)


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


class _HeadThen:
    """The same for zstd, which reads ``read_size`` pieces itself: ``raw``'s pieces as they come,
    with no buffer (and no copy) in between."""

    def __init__(self, head, raw):
        self.head = head
        self.raw = raw

    def read(self, size=-1):
        if self.head:
            head, self.head = self.head, b""
            return head
        return self.raw.read(size)


# What zstd asks its input for at a time: an S3 range (stores/s3.py RANGE_BYTES) whole, so that a
# download's pieces are handed on as they came, never sliced into copies.
COMPRESSED_READ_BYTES = 4 * 1024 * 1024
ARCHIVE_HASH_DEPTH = 2  # such pieces waiting for the archive's SHA-256 thread: 8 MiB at most


def open_decompressed(raw):
    """A readable stream of tar bytes from zstd, gzip or plain tar input (sniffed, not guessed)."""
    head = _read_exactly(raw.read, 4)
    if head == b"\x28\xb5\x2f\xfd":  # read in large pieces (the default, 128 KiB, costs more hand-overs)
        return zstandard.ZstdDecompressor().stream_reader(_HeadThen(head, raw), read_size=COMPRESSED_READ_BYTES,
                                                          read_across_frames=True)
    source = io.BufferedReader(_Prefixed(head, raw), CHUNK)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head[:2] == b"PK":
        raise InvalidArchive("This is a zip file, not a backup archive (.tar.zst or .tar.gz).")
    return source


# The tar stream, member by member


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
    try:
        mtime = int(info.mtime)
    except (ValueError, OverflowError, TypeError):  # a pax mtime of nan or inf
        raise InvalidArchive(f"Refused {path!r}: its time {info.mtime!r} is not a time.") from None
    return Entry(
        path=path,
        type=kind,
        size=info.size if kind == FILE else 0,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime=mtime,
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


MAX_HEADER_DATA = 64 * 1024  # a member's pax records and GNU long names: far more than any real one
# At most one of each extended header before a member (pax 'x', GNU long name 'L', long link 'K',
# Solaris 'X'): tarfile reads a chain of them by recursion, so a long chain was a RecursionError.
_EXTENDED_TYPES = frozenset(b"xLKX")
_MAX_EXTENDED = 3
_TYPE_OFFSET = 156  # of the type flag in a header block
MAX_TRAILING_ZEROS = 64 * 1024  # after the end-of-archive blocks: a tar writer's record padding
# An upload's headers and names (what the reader holds in memory, entry by entry) may unpack to at
# most a fifth of its ratio limit (200 times by default) the compressed bytes read so far: a sane
# archive's are below (about 80 times for a tree of empty files with long names), a flood of
# crafted members is not.
METADATA_SHARE = 5
RATIO_FLOOR = 1 << 20  # what a small upload may unpack to in any case, times the ratio
METADATA_FLOOR = 64 * 1024


class _Pieces:
    """The bytes of ``read(n)`` with their position, handed out in the pieces ``read`` gave
    (slices, not copies); ``read``/``tell`` serve tarfile's header code."""

    def __init__(self, read):
        self._read = read
        self._buf = memoryview(b"")
        self.pos = 0
        self.header_bytes = 0  # read by tarfile's header code, in all
        self.begin_member()

    def begin_member(self):
        self._reads = 0  # by tarfile's header code for this member: header, data, header, ...
        self._extended = b""
        self._extended_bytes = 0

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
        """tarfile's header code reads a header block, and when it is an extended header its data
        and the next header block, and so on: bounded here, before tarfile parses any of it."""
        is_header = self._reads % 2 == 0
        self._reads += 1
        if not is_header:
            self._extended_bytes += n
            if self._extended_bytes > MAX_HEADER_DATA:
                raise InvalidArchive(
                    f"A tar member has more than {MAX_HEADER_DATA} bytes of extended headers (pax "
                    "records or long names): refused."
                )
        data = self.exactly(n)
        self.header_bytes += len(data)
        if is_header and len(data) > _TYPE_OFFSET:
            kind = data[_TYPE_OFFSET]
            if kind == ord("g"):
                raise InvalidArchive(
                    "The archive has a pax global header (applied to every later member): "
                    "ailab-backup never writes one, so the archive is refused."
                )
            if kind == ord("S"):
                raise InvalidArchive("The archive has a sparse tar member: sparse members are not supported.")
            if kind in _EXTENDED_TYPES:
                if kind in self._extended or len(self._extended) >= _MAX_EXTENDED:
                    raise InvalidArchive(
                        "A tar member is preceded by a chain of extended headers (pax records or "
                        "GNU long names, the same kind twice): the archive is refused."
                    )
                self._extended += bytes((kind,))
        return data

    def tell(self):
        return self.pos

    def skip_to(self, offset):
        while self.pos < offset:
            if not self.piece(offset - self.pos):
                raise tarfile.ReadError("unexpected end of data")


def _as_bytes(piece):
    """A piece (a memoryview) as bytes: a whole piece as read is that very bytes object (bytes
    never change: safe to hand over), so that the big files' data is not copied once more."""
    whole = piece.obj
    if type(whole) is bytes and len(whole) == len(piece) and piece.contiguous:
        return whole
    return bytes(piece)


class _MemberData:
    """The data of one regular member; ``read`` returns bytes, as files do."""

    def __init__(self, pieces, size):
        self._pieces = pieces
        self._end = pieces.pos + size

    def read(self, size=-1):
        left = self._end - self._pieces.pos
        if left <= 0 or size == 0:
            return b""
        if size is None or size < 0 or size >= left:
            size = left
        # small reads are exact, as a file's are; large ones give what one piece holds
        data = self._pieces.exactly(size) if size == left or size < 65536 else _as_bytes(self._pieces.piece(size))
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

    def __iter__(self):
        while True:
            self.fileobj.skip_to(self.offset)  # what the consumer left unread, and the padding
            self.fileobj.begin_member()
            try:
                info = tarfile.TarInfo.fromtarfile(self)
            except tarfile.EOFHeaderError:
                return
            except tarfile.HeaderError as exc:
                raise tarfile.ReadError(str(exc) or type(exc).__name__) from None
            except (ValueError, OverflowError, UnicodeError, LookupError, RecursionError) as exc:
                # tarfile's header code was not written for hostile input: whatever else it
                # raises is a damaged header too, never a crash
                raise tarfile.ReadError(f"a malformed header ({type(exc).__name__})") from None
            if info.sparse is not None:
                raise InvalidArchive(f"Refused {info.name!r}: sparse tar members are not supported.")
            yield info

    def data(self, info):
        """The data of the member just yielded (a regular file)."""
        return _MemberData(self.fileobj, info.size)

    def require_only_zeros(self):
        """After the end-of-archive block: refuse anything but a few zeros up to the end (a tar
        writer pads to its record size); nothing more is decompressed."""
        left = MAX_TRAILING_ZEROS
        while True:
            part = self.fileobj.piece(left + 1)
            if not part:
                return
            if bytes(part).count(0) != len(part) or len(part) > left:
                raise InvalidArchive(
                    "The archive has data after its end (more than a tar writer's padding): it was "
                    "altered or damaged."
                )
            left -= len(part)


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


def _bomb(max_ratio, where):
    return TooLarge(
        f"The archive would unpack to more than {max_ratio} times its size ({where}): refused as a "
        "decompression bomb. If it is yours, raise AILabBackup.max_compression_ratio."
    )


class _BoundedDecompressed:
    """The decompressed stream, counted as it is read: with ``max_ratio``, refused once it
    unpacks to more than that many times the compressed bytes read so far, whatever the bytes are
    (file data, headers, padding, what follows the end); and stopped when ``cancel`` is set."""

    def __init__(self, stream, counted, max_ratio, cancel):
        self.stream = stream
        self.counted = counted
        self.max_ratio = max_ratio
        self.cancel = cancel
        self.count = 0

    def check_cancel(self):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("The check was stopped: its client went away. Nothing was kept.")

    def read(self, size=-1):
        self.check_cancel()
        data = self.stream.read(size)
        self.count += len(data)
        if self.max_ratio and self.count > self.max_ratio * max(self.counted.count, RATIO_FLOOR):
            raise _bomb(self.max_ratio, f"{self.count} bytes unpacked from {self.counted.count}")
        return data


def iter_archive(raw, max_total_bytes=0, progress=None, max_ratio=0, check_content=True, *,
                 max_entries=0, cancel=None, unchanged_files=0):
    """Yield ``(Entry, reader)`` for each data member, checking each one; the last item is
    ``(Manifest, None)`` after checking the manifest against the data.

    File readers must be consumed (or not) before the next item; what is not read is skipped.
    Each file is hashed (in a worker thread) and checked against the manifest, unless
    ``check_content`` is false: then only names, types, sizes, modes, owners and times are
    (for a second read of an archive already checked completely).
    With ``max_ratio`` (an upload), an archive that would unpack to more than that many times its
    compressed size read so far (at least 1 MiB) is refused as a decompression bomb: from the
    headers (the sizes they declare), and from what is actually unpacked; its headers and names
    alone may unpack to a fifth of that at most (:data:`METADATA_SHARE`). ``max_entries`` bounds the
    number of entries; ``cancel`` (an Event) stops the read with :class:`Cancelled`.
    ``unchanged_files``: how many files the store's record of a partial safety backup says its
    manifest lists as unchanged (not in the data): its allowance grows by that many entries.
    Every resource is bounded: what follows the end of the tar, the extended headers of a member,
    the manifest (by the entries found). Raises :class:`InvalidArchive` on anything hostile or broken.
    """
    checker = EntryChecker(max_total_bytes, max_entries)
    counted = _CountingReader(raw)
    found, digests = [], []
    manifest = None
    manifest_allowance = MANIFEST_BASE_BYTES + 2 * MANIFEST_BYTES_PER_ENTRY * max(0, int(unchanged_files or 0))
    metadata_ratio = max_ratio / METADATA_SHARE
    try:
        with hashing_worker() if check_content else contextlib.nullcontext() as hasher:
            stream = _BoundedDecompressed(open_decompressed(counted), counted, max_ratio, cancel)
            tar = TarReader(stream.read)
            for info in tar:
                stream.check_cancel()
                if metadata_ratio and tar.fileobj.header_bytes > metadata_ratio * max(counted.count, METADATA_FLOOR):
                    raise InvalidArchive(
                        f"The archive's headers and names alone unpack to more than {metadata_ratio:.0f} "
                        "times its size: a flood of crafted members, refused. If it is yours, raise "
                        "AILabBackup.max_compression_ratio."
                    )
                path = data_path(info.name)
                if path is None:
                    manifest = _read_manifest(tar, info, manifest, manifest_allowance, len(found),
                                              max(0, int(unchanged_files or 0)))
                    continue
                if manifest is not None:
                    raise InvalidArchive("The archive has data after its manifest: it was altered or damaged.")
                entry = entry_from_tarinfo(info, path)
                checker.check(entry)
                manifest_allowance += MANIFEST_BYTES_PER_ENTRY + 12 * (len(path) + len(entry.target or ""))
                if max_ratio and checker.total > max_ratio * max(counted.count, RATIO_FLOOR):
                    raise _bomb(max_ratio, f"at {entry.path!r}")
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
        if hasher is not None and progress is not None:
            progress.add_thread_cpu("SHA-256 of large files (thread)", hasher.cpu)
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


# What a manifest may take: a base (its header and the list of skipped paths) and, for each entry
# found in the data, a JSON object with its path and link target (12 bytes a character at most,
# escaped); an object more than those is refused while parsing, so memory stays bounded.
MANIFEST_BASE_BYTES = 4 * 1024 * 1024
MANIFEST_BYTES_PER_ENTRY = 512
MANIFEST_BASE_OBJECTS = 100_000


def _read_manifest(tar, info, found_before, allowance, entry_count, unchanged_files):
    if info.name != MANIFEST_NAME or found_before is not None:
        raise InvalidArchive(
            f"Refused member {info.name!r}: an archive holds only notebooks/ and one {MANIFEST_NAME}."
        )
    if not info.isreg():
        raise InvalidArchive("The archive's manifest is not a plain file.")
    limit = min(allowance, MAX_MANIFEST_BYTES)
    if info.size > limit:
        raise InvalidArchive(
            f"The archive's manifest is {info.size} bytes, more than its {entry_count} entries can "
            f"need ({limit} bytes at most): it was altered or crafted, and is refused."
        )
    objects = [0]
    max_objects = MANIFEST_BASE_OBJECTS + entry_count + unchanged_files

    def counted_object(pairs):
        objects[0] += 1
        if objects[0] > max_objects:
            raise InvalidArchive(
                f"The archive's manifest holds more than {max_objects} JSON objects for "
                f"{entry_count} entries: it was altered or crafted, and is refused."
            )
        return dict(pairs)

    try:
        return Manifest.from_json(json.loads(tar.data(info).read(), object_pairs_hook=counted_object))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidArchive("The archive's manifest is not valid JSON.") from None


def _match_manifest(manifest, found, check_content):
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


def read_archive(raw, max_total_bytes=0, progress=None, max_ratio=0, *, max_entries=0, cancel=None,
                 unchanged_files=0):
    """Check a whole archive; return its :class:`Manifest` or raise :class:`InvalidArchive`
    (see :func:`iter_archive` for the limits)."""
    manifest = None
    for item, _ in iter_archive(raw, max_total_bytes, progress, max_ratio, max_entries=max_entries, cancel=cancel,
                                unchanged_files=unchanged_files):
        manifest = item
    return manifest
