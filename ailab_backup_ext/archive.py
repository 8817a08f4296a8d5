"""The archive format.

A backup is one compressed tar. Its data members are ``notebooks/...``, so that extracting it into
DIR gives DIR/notebooks exactly as the seed recipe ``docker cp C:/notebooks DIR`` does. After the
data comes the manifest ``ailab-backup-manifest.json`` (outside ``notebooks/``): it is written last
because it holds the SHA-256 of every file, known only once the file has been streamed.

Everything that reads an archive goes through :func:`read_archive`, which refuses hostile or broken
input before anything is written anywhere.
"""

import collections
import datetime as _dt
import gzip
import hashlib
import io
import json
import posixpath
import stat
import tarfile
import zlib
from dataclasses import asdict, dataclass, field

import zstandard

from .errors import InvalidArchive, TooLarge

DATA_ROOT = "notebooks"
MANIFEST_NAME = "ailab-backup-manifest.json"
FORMAT = "ailab-backup"
FORMAT_VERSION = 1
SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
CHUNK = 1024 * 1024
READ_BUFFER = 64 * 1024  # tarfile slices its buffer for every 512-byte header: keep it small
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


class _HashingWriter(io.RawIOBase):
    """Passes writes through, counting and hashing the bytes (the archive file's SHA-256)."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.digest = hashlib.sha256()

    def writable(self):
        return True

    def write(self, data):
        self.raw.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class _HashingReader(io.RawIOBase):
    """Reads from ``raw`` while hashing; used to hash a file as tarfile copies it."""

    def __init__(self, raw, progress=None):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.progress = progress

    def readable(self):
        return True

    def read(self, size=-1):
        data = self.raw.read(size)
        self.digest.update(data)
        if self.progress and data:
            self.progress.add_bytes(len(data))
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class IterStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks (Docker's archive responses)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.pending = memoryview(b"")  # a view, so that partial reads never copy the rest

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending:
            try:
                self.pending = memoryview(next(self.chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


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


def _read_exactly(raw, n):
    parts, got = [], 0
    while got < n:
        data = raw.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def open_decompressed(raw):
    """A readable stream of tar bytes from zstd, gzip or plain tar input (sniffed, not guessed)."""
    head = _read_exactly(raw, 4)
    source = io.BufferedReader(_Prefixed(head, raw), CHUNK)
    if head == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head[:2] == b"PK":
        raise InvalidArchive("This is a zip file, not a backup archive (.tar.zst or .tar.gz).")
    return source


class _Compressor:
    """A writable compressed stream over ``raw`` that leaves ``raw`` open when closed."""

    def __init__(self, raw, compression):
        if compression == "zstd":
            # one thread: measured as fast here (the C call releases the GIL while Python reads
            # on), and zstd's thread pool alone cost about 100 MB of buffers
            cctx = zstandard.ZstdCompressor(level=3, threads=0)
            self.stream = cctx.stream_writer(raw, closefd=False)
        elif compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def write(self, data):
        return self.stream.write(data)

    def close(self):
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


def tar_stream(entries, root_name=DATA_ROOT, end=True):
    """Tar bytes, as an iterator of chunks, of ``(Entry, file)`` pairs named under ``root_name``
    (``None``: named by their paths alone), closed with the end-of-archive blocks unless ``end``
    is false. Streams files of any size in bounded memory."""
    for entry, content in entries:
        info = tarinfo_for(entry)
        if root_name is None:
            info.name = entry.path
        elif root_name != DATA_ROOT:
            info.name = root_name if entry.path == ROOT else f"{root_name}/{entry.path}"
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if entry.type == FILE:
            remaining = entry.size
            while remaining:
                chunk = content.read(min(CHUNK, remaining))
                if not chunk:
                    raise InvalidArchive(f"{entry.path!r} ended early: it changed while it was read. Try again.")
                remaining -= len(chunk)
                yield chunk
            if entry.size % tarfile.BLOCKSIZE:
                yield tarfile.NUL * (tarfile.BLOCKSIZE - entry.size % tarfile.BLOCKSIZE)
    if end:
        yield tarfile.NUL * (tarfile.BLOCKSIZE * 2)


def write_archive(out, entries, manifest, compression, progress=None):
    """Stream ``entries`` ((Entry, file or None) pairs) into ``out`` as a compressed archive,
    hashing each file exactly as it goes in. Fills ``manifest.entries`` and returns
    ``(archive_size, archive_sha256)``."""
    counted = _HashingWriter(out)
    compressor = _Compressor(counted, compression)
    manifest.compression = compression

    def hashed():
        for entry, content in entries:
            reader = _HashingReader(content, progress) if entry.type == FILE else None
            yield entry, reader
            if reader is not None:
                entry.sha256 = reader.digest.hexdigest()
            manifest.entries.append(entry)
            if progress:
                progress.add_file()

    for chunk in tar_stream(hashed(), end=False):
        compressor.write(chunk)
    data = json.dumps(manifest.to_json(), indent=1).encode()
    info = Entry(MANIFEST_NAME, FILE, size=len(data), mode=0o644, mtime=int(utc_now().timestamp()))
    for chunk in tar_stream([(info, io.BytesIO(data))], root_name=None):
        compressor.write(chunk)
    compressor.close()
    return counted.size, counted.digest.hexdigest()


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


class _TailKeeper(io.RawIOBase):
    """Passes the tar bytes through, keeping the last ones read, so that what follows the
    manifest can be checked: tarfile's stream reader takes a bad header there as the end."""

    KEEP = 4 * 1024 * 1024

    def __init__(self, raw):
        self.raw = raw
        self.pos = 0
        self.tail = collections.deque()  # (start position, bytes): references, no copies

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n:
            self.tail.append((self.pos, data))
            self.pos += n
            while self.tail and self.pos - self.tail[0][0] - len(self.tail[0][1]) > self.KEEP:
                self.tail.popleft()
        return n

    def require_only_zeros_from(self, offset):
        def junk():
            return InvalidArchive("The archive has data after its manifest: it was altered or damaged.")

        if not self.tail or offset < self.tail[0][0]:
            raise junk()
        for start, data in self.tail:
            part = data[max(0, offset - start):]
            if part.count(0) != len(part):
                raise junk()
        for data in iter(lambda: self.raw.read(CHUNK), b""):
            if data.count(0) != len(data):
                raise junk()


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile)


def _open_tar_reader(stream):
    return tarfile.open(
        fileobj=stream,
        mode="r|",
        encoding="utf-8",
        errors="surrogateescape",
        bufsize=READ_BUFFER,
    )


class _CountingReader(io.RawIOBase):
    """Counts the bytes read from ``raw`` (the compressed size, for the ratio limit)."""

    def __init__(self, raw):
        self.raw = raw
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def iter_archive(raw, max_total_bytes=0, progress=None, max_ratio=0):
    """Yield ``(Entry, reader)`` for each data member, checking each one; the last item is
    ``(Manifest, None)`` after checking the manifest against the data.

    File readers must be consumed (or not) before the next item; what is not read is hashed here.
    With ``max_ratio``, an archive that would unpack to more than that many times its compressed
    size read so far (at least 1 MiB) is refused as a decompression bomb, from the headers alone.
    Raises :class:`InvalidArchive` on anything hostile or broken.
    """
    checker = EntryChecker(max_total_bytes)
    counted = _CountingReader(raw)
    found = []
    manifest = None
    try:
        stream = _TailKeeper(open_decompressed(counted))
        with _open_tar_reader(stream) as tar:
            for info in tar:
                path = data_path(info.name)
                if path is None:
                    if info.name != MANIFEST_NAME or manifest is not None:
                        raise InvalidArchive(
                            f"Refused member {info.name!r}: an archive holds only notebooks/ and "
                            f"one {MANIFEST_NAME}."
                        )
                    if not info.isreg() or info.size > MAX_MANIFEST_BYTES:
                        raise InvalidArchive("The archive's manifest is not a plain file.")
                    try:
                        manifest = Manifest.from_json(json.loads(tar.extractfile(info).read()))
                    except (ValueError, UnicodeDecodeError):
                        raise InvalidArchive("The archive's manifest is not valid JSON.") from None
                    manifest_end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    continue
                if manifest is not None:
                    raise InvalidArchive("The archive has data after its manifest.")
                entry = entry_from_tarinfo(info, path)
                checker.check(entry)
                if max_ratio and checker.total > max_ratio * max(counted.count, 1 << 20):
                    raise TooLarge(
                        f"The archive would unpack to more than {max_ratio} times its size (at "
                        f"{entry.path!r}): refused as a decompression bomb. If it is yours, raise "
                        "AILabBackup.max_compression_ratio."
                    )
                if entry.type == FILE:
                    reader = _HashingReader(tar.extractfile(info), progress)
                    yield entry, reader
                    while reader.read(CHUNK):  # hash whatever the consumer did not read
                        pass
                    entry.sha256 = reader.digest.hexdigest()
                    if progress:
                        progress.add_file()
                else:
                    yield entry, None
                found.append(entry)
        if manifest is not None:
            stream.require_only_zeros_from(manifest_end)
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
    _match_manifest(manifest, found)
    yield manifest, None


def _match_manifest(manifest, found):
    declared = {}
    for entry in manifest.entries:
        if entry.path in declared:
            raise InvalidArchive(f"The manifest lists {entry.path!r} twice.")
        declared[entry.path] = entry
    for entry in found:
        other = declared.pop(entry.path, None)
        if other is None:
            raise InvalidArchive(f"{entry.path!r} is in the archive but not in its manifest.")
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
