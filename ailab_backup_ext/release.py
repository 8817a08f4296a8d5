"""Moving to a new AI-Lab release without losing work.

Which release a backup came from (the image of the server's own container, with its tag, and
the release's default notebooks), which of its files were unchanged defaults of that release,
and the plan of "Bring my work into this release": what a user created or changed (and the
Secure Configuration Storage) comes back; unchanged defaults of the old release are left as the
running release ships them; a notebook that both the user and the new release changed is kept
twice: the user's version under its name, the new release's beside it as
``NAME (AI-Lab <release>).ipynb``.

AI-Lab's entrypoint copies ``$NOTEBOOK_DEFAULTS`` (``/home/jupyter/notebook-defaults``) into the
volume only where a file is missing, so a new volume holds exactly the new release's defaults.
Free of tornado and UI code.
"""

import hashlib
import json
import os
import posixpath
import stat
import tempfile

from .archive import CHUNK, DIR, FILE, ROOT, Manifest, check_path
from .errors import BackupError, InvalidArchive

DEFAULTS_FALLBACK = "/home/jupyter/notebook-defaults"
DEFAULTS_ENV = "NOTEBOOK_DEFAULTS"
SCS_NAME = "ai_lab_secure_configuration_storage.sqlite"
MAX_DEFAULTS = 5000  # more files than any release ships: the folder is not taken as its defaults
MAX_RECORD_TEXT = 1024
KEEP_IN_MEMORY = 16 * 1024 * 1024  # a kept current file larger than this is spooled to disk
CATEGORIES = ("scs", "brought_back", "overwritten", "kept_both", "left_to_release", "added_by_release")
_HEX = set("0123456789abcdef")


# the running release ------------------------------------------------------------------------------

def index_defaults(folder):
    """{path: sha256} of the regular files under ``folder`` (symlinks are not followed); None
    when it is no folder or holds more than :data:`MAX_DEFAULTS` files."""
    if not folder or not os.path.isdir(folder):
        return None
    found = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                if not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                check_path(rel)
                digest = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        digest.update(chunk)
            except (OSError, InvalidArchive):
                continue  # unreadable, or a name no backup can hold: not comparable
            found[rel] = digest.hexdigest()
            if len(found) > MAX_DEFAULTS:
                return None
    return found


def defaults_digest(defaults):
    if defaults is None:
        return None
    return hashlib.sha256(json.dumps(sorted(defaults.items())).encode()).hexdigest()


def tag_of(image):
    """The release named by an image reference: its tag ('exasol/ai-lab:6.0.0' -> '6.0.0'),
    'latest' without one, a short digest for a reference by digest or id."""
    if not image:
        return None
    if "@" in image:
        return image.rsplit("@", 1)[1][:19]
    if image.startswith("sha256:"):
        return image[:19]
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def find_running_release(configured_dir="", configured_name="", own_container=None):
    """The record of the release this server runs: ``name``, ``image`` (with tag) and
    ``image_id`` of its own container (None outside one), the defaults folder and its index.
    The folder is ``configured_dir``, else NOTEBOOK_DEFAULTS of the container's ``Config.Env``
    (the entrypoint's sudo drops it from the server's environment), else of this process's
    environment, else /home/jupyter/notebook-defaults."""
    config = (own_container or {}).get("Config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    image = config.get("Image") or None
    folder = configured_dir or env.get(DEFAULTS_ENV) or os.environ.get(DEFAULTS_ENV) or DEFAULTS_FALLBACK
    defaults = index_defaults(folder)
    return {
        "name": configured_name or tag_of(image),
        "image": image,
        "image_id": (own_container or {}).get("Image") or None,
        "defaults_dir": folder,  # where it looked: the index is None when no folder is there
        "defaults": defaults,
        "defaults_digest": defaults_digest(defaults),
    }


def known(record):
    """The record, or None when it knows nothing of the release (no image, name nor defaults):
    a backup then records none, as the backups made before releases were recorded."""
    if record and any(record.get(k) for k in ("name", "image", "image_id", "defaults_digest")):
        return record
    return None


def summary(record):
    """What a listing shows of a release record (no per-file index), or None."""
    if not record:
        return None
    found = {k: record.get(k) for k in ("name", "image", "image_id", "defaults_digest")}
    defaults = record.get("defaults")
    found["defaults_count"] = len(defaults) if isinstance(defaults, dict) else None
    if "unchanged_defaults" in record:
        found["unchanged_defaults"] = len(record["unchanged_defaults"])
    return found


def checked_record(claimed, entries):
    """The release record an uploaded manifest claims, bounded like its other metadata: texts
    cut to 1024 characters, an index only of sane paths and SHA-256 digests (else none), and
    the unchanged defaults worked out again from the archive's own entries. None when it
    claims none."""
    if not isinstance(claimed, dict):
        return None

    def text(key):
        value = claimed.get(key)
        return value[:MAX_RECORD_TEXT] if isinstance(value, str) and value else None

    defaults = claimed.get("defaults")
    if not (isinstance(defaults, dict) and len(defaults) <= MAX_DEFAULTS and all(
            isinstance(k, str) and _sane_path(k) and isinstance(v, str) and len(v) == 64 and set(v) <= _HEX
            for k, v in defaults.items())):
        defaults = None
    record = {"name": text("name"), "image": text("image"), "image_id": text("image_id"),
              "defaults_dir": text("defaults_dir"), "defaults": defaults,
              "defaults_digest": defaults_digest(defaults)}
    if known(record) is None:
        return None
    return Manifest(created="", source={}, entries=list(entries), release=record).release_record()


def _sane_path(path):
    try:
        check_path(path)
    except InvalidArchive:
        return False
    return path != ROOT


def differs(a, b):
    """True when two release summaries (or records) name different releases, False when the
    same, None when it cannot be told (a side has no record, or nothing known on both)."""
    if not a or not b:
        return None
    known = [k for k in ("defaults_digest", "image", "name") if a.get(k) and b.get(k)]
    if not known:
        return None
    return any(a[k] != b[k] for k in known)


def label(record):
    return (record or {}).get("name") or "new release"


# the plan -----------------------------------------------------------------------------------------

def beside_name(path, release_label, taken):
    """Where the running release's version of ``path`` goes when the user's version takes its
    name: ``dir/NAME (AI-Lab 6.0.0).ipynb``, numbered when that is taken, within Linux's 255
    bytes per name."""
    head, name = posixpath.split(path)
    stem, ext = posixpath.splitext(name)
    tag = "".join(c if c.isprintable() and c != "/" else "_" for c in release_label)[:60]
    for n in range(1, 1000):
        suffix = f" (AI-Lab {tag})" + (f" {n}" if n > 1 else "") + ext
        room = 255 - len(suffix.encode())
        short = stem.encode()[:room].decode(errors="ignore")
        candidate = posixpath.join(head, short + suffix)
        if candidate not in taken:
            return candidate
    raise BackupError(f"No free name beside {path!r} for the new release's version.")


def scan_current(entries, hash_paths, keep_paths, diff_paths, diff_limit):
    """{path: (Entry, content)} of the current folder: SHA-256 only of ``hash_paths`` (the
    rest is not read), the content kept of ``keep_paths`` (a spooled file: they are written
    back beside) and of ``diff_paths`` up to ``diff_limit`` bytes (bytes, for a notebook diff)."""
    state = {}
    for entry, content in entries:
        data = None
        if entry.type == FILE and entry.path in hash_paths:
            digest = hashlib.sha256()
            keep = entry.path in keep_paths
            spool = tempfile.SpooledTemporaryFile(KEEP_IN_MEMORY) if keep else None
            parts = [] if entry.path in diff_paths and entry.size <= diff_limit else None
            for chunk in iter(lambda: content.read(CHUNK), b""):
                digest.update(chunk)
                if spool is not None:
                    spool.write(chunk)
                if parts is not None:
                    parts.append(chunk)
            entry.sha256 = digest.hexdigest()
            data = {"spool": spool, "bytes": b"".join(parts) if parts is not None else None}
        state[entry.path] = (entry, data)
    return state


def may_keep_both(entry, old_defaults, new_defaults):
    """Whether the current file at a backup entry's path may have to move beside (known before
    the current folder is read): the running release ships it, differently from the backup's
    version, and the file was no unchanged default of the old release."""
    new = new_defaults.get(entry.path)
    if entry.type != FILE or new is None or new == entry.sha256:
        return False
    old = old_defaults.get(entry.path) if old_defaults is not None else None
    return old != entry.sha256 and (old is None or old != new)


def make_move_plan(backup_entries, old_record, new_record, current, skip=()):
    """Sort every file and symlink of a backup for "Bring my work into this release" (see the
    module's docstring); each lands in exactly one category:

    - ``scs``: the Secure Configuration Storage, always brought back;
    - ``brought_back``: made or changed by the user, not in the current folder: written;
    - ``overwritten``: the user's version replaces what the current folder holds (a default the
      new release did not change, or a file made here since);
    - ``kept_both``: the user's version under its name, the running release's (what the
      current folder holds) moved to ``beside``;
    - ``left_to_release``: an unchanged default of the old release: left as the running release
      ships it (``release_change``: unchanged, updated or removed);
    - ``added_by_release``: defaults of the running release that the backup does not hold;
    - ``unchanged``: already identical here.

    Without a release record (an old backup, a folder of the seed recipe) nothing is known to
    be an old default: files are compared with the running release's defaults only."""
    old_defaults = (old_record or {}).get("defaults")
    new_defaults = (new_record or {}).get("defaults") or {}
    plan = {category: [] for category in CATEGORIES}
    plan["unchanged"] = {"count": 0, "bytes": 0, "items": []}
    in_backup = {e.path for e in backup_entries}
    taken = set(current) | in_backup
    for entry in backup_entries:
        if entry.path == ROOT or entry.type == DIR or any(
                entry.path == s or entry.path.startswith(s + "/") for s in skip):
            continue
        now = current.get(entry.path)
        now_entry = now[0] if now else None
        same = now_entry is not None and _same(entry, now_entry)
        item = {"path": entry.path, "type": entry.type, "size": entry.size}
        old = old_defaults.get(entry.path) if old_defaults is not None else None
        new = new_defaults.get(entry.path)
        is_scs = posixpath.basename(entry.path) == SCS_NAME
        if entry.type == FILE and old is not None and old == entry.sha256 and not is_scs:
            change = "unchanged" if new == old else ("removed" if new is None else "updated")
            plan["left_to_release"].append({**item, "release_change": change})
        elif same:
            plan["unchanged"]["count"] += 1
            plan["unchanged"]["bytes"] += entry.size
            plan["unchanged"]["items"].append(item)
        elif is_scs:
            plan["scs"].append({**item, "action": "overwritten" if now_entry else "added"})
        elif now_entry is None:
            plan["brought_back"].append({**item, "why": _why(entry, old_defaults, new)})
        elif (now_entry.type == FILE and new is not None and now_entry.sha256 == new
              and may_keep_both(entry, old_defaults, new_defaults)):
            beside = beside_name(entry.path, label(new_record), taken)
            taken.add(beside)
            plan["kept_both"].append({**item, "beside": beside, "current_size": now_entry.size})
        else:
            plan["overwritten"].append({**item, "current_size": now_entry.size,
                                        "why": _why(entry, old_defaults, new)})
    for path in sorted(new_defaults):
        if path not in in_backup and path in current:
            plan["added_by_release"].append({"path": path, "type": FILE, "size": current[path][0].size})
    return plan


def _same(a, b):
    if a.type != b.type:
        return False
    if a.type == FILE:
        return a.sha256 is not None and a.sha256 == b.sha256
    return a.target == b.target


def _why(entry, old_defaults, new):
    if old_defaults is None:
        return "not a default of the running release" if new is None else "differs from the running release's default"
    if entry.path in old_defaults:
        return "changed by you" + ("; removed in the running release" if new is None else "")
    return "made by you"


def written_paths(plan):
    """The backup's paths a move writes, and {beside: path} of the current files moved beside."""
    paths = {item["path"] for category in ("scs", "brought_back", "overwritten", "kept_both") for item in plan[category]}
    return paths, {item["beside"]: item["path"] for item in plan["kept_both"]}


def counts(plan):
    return {category: len(plan[category]) for category in CATEGORIES} | {"unchanged": plan["unchanged"]["count"]}
