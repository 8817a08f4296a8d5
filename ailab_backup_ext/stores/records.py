"""What every store kind shares about a backup's records: its id, and its metadata document
(``meta/<id>.json``), which is the commit marker: written last, after the archive is complete and
verified, so an interrupted backup has none and is never listed."""

import json
import re

from ..errors import NotFound

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(backup_id):
    if not isinstance(backup_id, str) or not ID_PATTERN.fullmatch(backup_id) or ".." in backup_id:
        raise NotFound(f"{backup_id!r} is not a backup id. List the backups to see their ids.")
    return backup_id


ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar")


def meta_is_sound(meta):
    """A metadata file we can trust to name its archive: its id is an id and the archive is
    that id's file in data/, so a tampered file cannot make us read or delete anything else."""
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        return False
    backup_id = meta["id"]
    return (ID_PATTERN.fullmatch(backup_id) is not None and ".." not in backup_id
            and meta.get("archive") in {backup_id + s for s in ARCHIVE_SUFFIXES})


def make_id(slug, created):
    """A readable id from the source and the UTC time, e.g. ``notebooks-20261126T120000Z``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", slug).strip("-_")[:48] or "backup"
    return f"{slug}-{created.strftime('%Y%m%dT%H%M%SZ')}"


def meta_bytes(meta):
    return json.dumps(meta, indent=1, sort_keys=True).encode()
