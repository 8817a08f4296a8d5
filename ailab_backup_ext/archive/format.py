"""The archive format: its constants, :class:`Entry`, :class:`Manifest`, and the safety rules on
paths and links shared by the reader (hostile archives) and the writers (what a source holds).

A backup is one compressed tar. Its data members are ``notebooks/...``, so that extracting it into
DIR gives DIR/notebooks exactly as the seed recipe ``docker cp C:/notebooks DIR`` does. After the
data comes the manifest ``ailab-backup-manifest.json`` (outside ``notebooks/``): it is written last
because it holds the SHA-256 of every file, known only once the file has been streamed.
"""

import datetime as _dt
import hashlib
import json
import posixpath
from dataclasses import dataclass, field

from ..errors import InvalidArchive

DATA_ROOT = "notebooks"
MANIFEST_NAME = "ailab-backup-manifest.json"
FORMAT = "ailab-backup"
FORMAT_VERSION = 1
# a safety backup that leaves out the files a restore did not change (they are in other backups,
# see Manifest.unchanged): older readers, which would take it for the whole folder, refuse it
PARTIAL_FORMAT_VERSION = 2
READ_VERSIONS = (FORMAT_VERSION, PARTIAL_FORMAT_VERSION)
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
        # by hand, not dataclasses.asdict (a deep copy): this runs for every entry of a check
        return {k: v for k in _ENTRY_FIELDS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_json(cls, data):
        try:
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise InvalidArchive(f"The manifest has a malformed entry: {exc}") from None

    def same_as(self, other):
        return all(getattr(self, k) == getattr(other, k) for k in _ENTRY_FIELDS)


_ENTRY_FIELDS = tuple(Entry.__dataclass_fields__)


@dataclass
class Manifest:
    created: str
    source: dict
    label: str = ""
    compression: str = "zstd"
    entries: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    # the AI-Lab release the backup came from (see release.py); absent in older backups
    release: dict | None = None
    # files the folder held, left out of this archive because another backup holds the very same
    # file (a safety backup's files that its restore did not change): [(Entry with sha256, id of
    # the backup holding it)]; ``bases`` {id: that backup's archive SHA-256}
    unchanged: list = field(default_factory=list)
    bases: dict = field(default_factory=dict)

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
        found = {
            "format": FORMAT,
            "format_version": PARTIAL_FORMAT_VERSION if self.unchanged else FORMAT_VERSION,
            "created": self.created,
            "source": self.source,
            "label": self.label,
            "compression": self.compression,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
            "entries": [e.to_json() for e in self.entries],
            "skipped": self.skipped,
        }
        if self.release is not None:  # older readers ignore it: the format version stays
            found["release"] = self.release_record()
        if self.unchanged:
            found["unchanged"] = [{**e.to_json(), "in": held_by} for e, held_by in self.unchanged]
            found["bases"] = dict(self.bases)
        return found

    def release_record(self):
        """The release record with, per file, which are unchanged defaults of that release (by
        SHA-256 against its index of default files); None without a record."""
        if self.release is None:
            return None
        defaults = self.release.get("defaults") or {}
        unchanged = sorted(e.path for e in self.entries
                           if e.type == FILE and e.sha256 and defaults.get(e.path) == e.sha256)
        return {**self.release, "unchanged_defaults": unchanged}

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidArchive("The archive's manifest is not an ailab-backup manifest.")
        if data.get("format_version") not in READ_VERSIONS:
            raise InvalidArchive(
                f"The archive has format version {data.get('format_version')!r}; this version of "
                f"ailab-backup reads versions {FORMAT_VERSION} and {PARTIAL_FORMAT_VERSION}. Update the "
                "extension to restore it."
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
            release=data.get("release") if isinstance(data.get("release"), dict) else None,
            **_unchanged_from_json(data),
        )


def _unchanged_from_json(data):
    """The ``unchanged`` and ``bases`` of a manifest (version 2), checked: plain files with a
    SHA-256, each held by a listed backup, no path twice nor also among the entries."""
    if data.get("format_version") != PARTIAL_FORMAT_VERSION:
        return {}
    bases, listed = data.get("bases"), data.get("unchanged")
    if not isinstance(bases, dict) or not isinstance(listed, list) or not all(isinstance(e, dict) for e in listed) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in bases.items()):
        raise InvalidArchive("The archive's manifest has no valid list of unchanged files.")
    seen = {e.get("path") for e in data["entries"]}
    unchanged = []
    for item in listed:
        entry = Entry.from_json(item)
        check_path(entry.path)
        held_by = item.get("in")
        if entry.type != FILE or not isinstance(entry.sha256, str) or held_by not in bases or entry.path in seen \
                or entry.path == ROOT:
            raise InvalidArchive(f"The archive's manifest lists {entry.path!r} as unchanged wrongly.")
        seen.add(entry.path)
        unchanged.append((entry, held_by))
    return {"unchanged": unchanged, "bases": dict(bases)}


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
