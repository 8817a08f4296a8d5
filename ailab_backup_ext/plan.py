"""What a restore would do, shown before the user confirms (a dry run), and the choice of paths
for a selective restore."""

import difflib
import hashlib
import json
import posixpath

from .archive import CHUNK, FILE, ROOT, check_path
from .errors import BackupError
from .sources import folders_holding, in_scope, is_excluded

NOTEBOOK_DIFF_LIMIT = 16 * 1024 * 1024  # larger notebooks are compared by hash alone
NOTEBOOK_TOO_LARGE = f"too large to compare (more than {NOTEBOOK_DIFF_LIMIT // 2**20} MiB): compared by content hash only"


def check_chosen_paths(paths):
    """The chosen paths, cleaned of surrounding blanks and slashes; a spelling of the whole
    folder ("", ".", "/", "./", "a/..") is refused: with replace, it would remove everything
    that is not in the backup, which a user choosing one path never meant."""
    if paths is None:
        return None
    if not paths:  # an empty choice (a filter that matched nothing) is not "everything"
        raise BackupError("No path was chosen. Name at least one file or folder of the backup, or choose "
                          "no paths at all (leave out --path or 'paths') to restore everything.")
    chosen = []
    for raw in paths:
        path = str(raw).strip().strip("/")
        if posixpath.normpath("/" + path) == "/":
            raise BackupError(
                f"{raw!r} names the whole notebooks folder, not a file or folder inside it. To restore "
                "everything, choose no paths (leave out --path); otherwise name a path inside the backup."
            )
        check_path(path)
        chosen.append(path)
    return chosen


def normalize_paths(paths, known):
    """Check the paths a user chose; each must be in the backup. None: everything."""
    chosen = check_chosen_paths(paths)
    for path in chosen or ():
        if path not in known:
            raise BackupError(f"{path!r} is not in this backup. Preview the restore to see its paths.")
    return chosen


def selected(entries, chosen):
    """The entries under the chosen paths, with the folders above them (so that missing ones are
    made with the right owner and mode); the notebooks folder itself, always there, stays as it is."""
    if chosen is None:
        return list(entries)
    wanted = set()
    for entry in entries:
        if in_scope(entry.path, chosen):
            wanted.add(entry.path)
            parent = posixpath.dirname(entry.path)
            while parent:
                wanted.add(parent)
                parent = posixpath.dirname(parent)
    return [e for e in entries if e.path in wanted]


def scan(entries, want_content):
    """{path: (Entry with sha256, content bytes or None)} of a source's current state;
    ``want_content(path)`` says which (small) files to keep for a notebook diff."""
    state = {}
    for entry, content in entries:
        data = None
        if entry.type == FILE:
            digest = hashlib.sha256()
            keep = want_content(entry.path) and entry.size <= NOTEBOOK_DIFF_LIMIT
            parts = [] if keep else None
            for chunk in iter(lambda: content.read(CHUNK), b""):
                digest.update(chunk)
                if keep:
                    parts.append(chunk)
            entry.sha256 = digest.hexdigest()
            data = b"".join(parts) if keep else None
        state[entry.path] = (entry, data)
    return state


def _differs(new, old):
    if new.type != old.type:
        return True
    if new.type == FILE:
        return new.sha256 != old.sha256
    return new.type == "symlink" and new.target != old.target


def make_plan(backup_entries, current, mode, chosen, protected, skip=()):
    """Sort every path into added, overwritten, removed (replace only) and unchanged; a folder
    that holds a protected path or one of the ``skip`` paths (the store) is not removed."""
    plan = {"added": [], "overwritten": [], "removed": [], "unchanged": {"count": 0, "bytes": 0, "items": []}}
    in_backup = set()
    for entry in selected(backup_entries, chosen):
        in_backup.add(entry.path)
        if entry.path == ROOT:
            continue
        now = current.get(entry.path)
        if now is None:
            plan["added"].append({"path": entry.path, "type": entry.type, "size": entry.size})
        elif _differs(entry, now[0]):
            plan["overwritten"].append({"path": entry.path, "type": entry.type, "size": entry.size,
                                        "current_size": now[0].size})
        else:
            plan["unchanged"]["count"] += 1
            plan["unchanged"]["bytes"] += entry.size
            plan["unchanged"]["items"].append({"path": entry.path, "type": entry.type, "size": entry.size})
    if mode == "replace":
        holding = folders_holding(current, protected, skip)
        for path, (entry, _) in sorted(current.items()):
            if path in holding or in_scope(path, skip):
                continue
            if path != ROOT and path not in in_backup and in_scope(path, chosen) and not is_excluded(path, protected):
                plan["removed"].append({"path": path, "type": entry.type, "size": entry.size})
    return plan


def _cells(data):
    notebook = json.loads(data)
    return [(c.get("cell_type"), "".join(c.get("source", "")) if isinstance(c.get("source"), list)
             else str(c.get("source", ""))) for c in notebook.get("cells", [])]


def notebook_comparison(current, restored):
    """What a preview says of an overwritten notebook: ``{"notebook": cells}`` (see
    :func:`notebook_diff`), or ``{"notebook_note": ...}`` when a side is larger than
    :data:`NOTEBOOK_DIFF_LIMIT` (``None``: not read, since it is); the cell diff reads no more."""
    if current is None or restored is None or max(len(current), len(restored)) > NOTEBOOK_DIFF_LIMIT:
        return {"notebook_note": NOTEBOOK_TOO_LARGE}
    return {"notebook": notebook_diff(current, restored)}


def notebook_diff(current, restored):
    """Cells a restore would add, remove or change in a notebook; None when either side is not
    a readable notebook."""
    try:
        old, new = _cells(current), _cells(restored)
    except (ValueError, AttributeError, TypeError):
        return None
    counts = {"cells_added": 0, "cells_removed": 0, "cells_changed": 0}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "replace":
            common = min(i2 - i1, j2 - j1)
            counts["cells_changed"] += common
            counts["cells_removed"] += (i2 - i1) - common
            counts["cells_added"] += (j2 - j1) - common
        elif tag == "delete":
            counts["cells_removed"] += i2 - i1
        elif tag == "insert":
            counts["cells_added"] += j2 - j1
    return counts
