"""What the notebooks folder holds: the size and file count of each top-level folder, which of
them the excludes leave out, and an estimate of the next backup's size. Free of tornado.

Cheap on a volume of 100,000 files, and never by streaming the volume through Docker's archive
API: where this server sees the folder itself (the local folder, or AI-Lab's own mount of the
volume) a walk of ``stat`` calls; otherwise one helper container runs ``find`` and ``stat`` next to
the data and only the list of sizes comes back. The answer is cached (:data:`USAGE_TTL` seconds,
and until the change token of :mod:`.changes` moves: a backup, a restore, a setting, also one made
by another process), so polling UIs never
make the server walk the folder again and again.
"""

import datetime
import fnmatch
import io
import posixpath
import stat
import tarfile
import threading
import time

from .docker_helper import JOB_SCRIPT, single_file_tar
from .errors import BackupError, Unavailable
from .sources import DockerMountSource, LocalFolderSource, in_scope, is_excluded

USAGE_TTL = 60.0  # seconds an answer is reused while nothing was changed through this server
TOP_FILES = ""  # the row of the files lying directly in the notebooks folder
LISTING_AT = "/ailab/usage.txt"
MISSING_TOOL = 127
# run by a helper (busybox or a distribution's sh): one line "SIZE ./PATH" per regular file
USAGE_SCRIPT = (
    "cd FOLDER || exit 3\n"
    f"find . -xdev -type f -exec stat -c '%s %n' {{}} + > {LISTING_AT} 2>/ailab/usage.err\n"
    "rc=$?\n"
    f"[ $rc -eq {MISSING_TOOL} ] && exit {MISSING_TOOL}\n"
    "exit 0\n"  # a file removed while find ran is not an error: it is simply not counted
)


class _Excludes:
    """``is_excluded`` for many files of few folders: each folder is judged once."""

    def __init__(self, patterns):
        self.patterns = list(patterns)
        self._folders = {}

    def folder(self, path):
        found = self._folders.get(path)
        if found is None:
            found = self._folders[path] = is_excluded(path, self.patterns)
        return found

    def file(self, path):
        if not self.patterns:
            return False
        folder, name = posixpath.split(path)
        if folder and self.folder(folder):
            return True
        return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in self.patterns)


def excluded_by(name, patterns):
    """The first pattern that leaves the top-level entry ``name`` out, or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def summarize(files, patterns, top_kinds=None):
    """Rows per top-level entry from ``files`` (an iterable of (relative path, size) of regular
    files): bytes and files in it, and how much of it the ``patterns`` leave out."""
    excludes = _Excludes(patterns)
    rows = {}
    for path, size in files:
        top, sep, _ = path.partition("/")
        key = top if sep else TOP_FILES
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0, 0, 0, 0]  # bytes, files, bytes left out, files left out
        row[0] += size
        row[1] += 1
        if excludes.file(path):
            row[2] += size
            row[3] += 1
    for name in top_kinds or ():  # empty folders are folders too
        rows.setdefault(name, [0, 0, 0, 0])
    result = []
    for name, (size, count, out_bytes, out_files) in rows.items():
        by = excluded_by(name, patterns) if name != TOP_FILES else None
        result.append({"name": name, "type": "files" if name == TOP_FILES else "folder",
                       "bytes": size, "files": count, "excluded": by is not None, "excluded_by": by,
                       "left_out_bytes": out_bytes, "left_out_files": out_files})
    result.sort(key=lambda r: (-r["bytes"], r["name"]))
    return result


def local_files(folder, skip_paths=(), store_paths=()):
    """(path, size) of the regular files below ``folder``: by the walk of
    :class:`~.sources.LocalFolderSource` (no link followed, the store left out), plus the names of
    its top-level folders."""
    walker = LocalFolderSource(folder, skip_paths=list(skip_paths))
    walker.store_paths = list(store_paths)
    files, folders = [], []
    for rel, st, _fd, _name in walker._walk():
        if stat.S_ISREG(st.st_mode):
            files.append((rel, st.st_size))
        elif stat.S_ISDIR(st.st_mode) and "/" not in rel and rel != ".":
            folders.append(rel)
    return files, folders


def parse_listing(lines, skip_paths=()):
    """(path, size) from the helper's "SIZE ./PATH" lines; a line that does not start so continues
    the name before it (a newline in a file name)."""
    files = []
    for raw in lines:
        line = raw.rstrip(b"\n").decode("utf-8", "surrogateescape")
        size, sep, path = line.partition(" ./")
        if sep and size.isdigit():
            files.append([path, int(size)])
        elif files:
            files[-1][0] += "\n" + line
    return [(p, s) for p, s in files if not (skip_paths and in_scope(p, skip_paths))]


def helper_files(source, running=None):
    """(path, size) of the regular files of a Docker mount, found by ``find`` and ``stat`` in one
    helper container next to the data: only the list of sizes leaves Docker. ``running`` (a set)
    holds the helper's id meanwhile, for a server that stops to remove it."""
    docker = source.docker
    script = USAGE_SCRIPT.replace("FOLDER", _quoted(source.data_dir), 1).encode()
    running = set() if running is None else running
    with docker.container(source._mounts(read_only=True)) as helper, docker.answering("measure the notebooks folder"):
        running.add(helper.id)
        try:
            return _listing_of(docker, helper, script, source.skip_paths)
        finally:
            running.discard(helper.id)


def _listing_of(docker, helper, script, skip_paths):
    """Run the usage script in the created ``helper`` and read its listing back."""
    helper.put_archive("/", single_file_tar(JOB_SCRIPT.lstrip("/"), script))
    helper.start()
    code = helper.wait().get("StatusCode")
    if code == MISSING_TOOL:
        raise Unavailable(f"The helper image {docker.image()!r} has no 'find' or 'stat', which measuring the "
                          "folders needs. Choose another helper image in the settings (AI-Lab's own, ubuntu).")
    if code != 0:
        logs = helper.logs(stdout=True, stderr=True).decode(errors="replace").strip()[-300:]
        raise BackupError(f"Measuring the notebooks folder failed in the helper container: {logs}")
    with docker.archive_stream(helper, LISTING_AT) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            member = tar.next()
            listing = tar.extractfile(member) if member is not None else None
            return parse_listing(io.BufferedReader(listing) if listing else [], skip_paths)


def _quoted(path):
    return "'" + path.replace("'", "'\\''") + "'"


class Usage:
    """The cached answer of :meth:`~.core.BackupManager.usage` for one manager."""

    def __init__(self, manager, ttl=USAGE_TTL, clock=time.monotonic):
        self.manager = manager
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()  # one walk at a time; who comes meanwhile gets its answer
        self._cached = None  # (key, when, answer)
        self.walks = 0  # how many times the folder was walked (the tests and the benchmark)
        self._helpers = set()  # the helper measuring now, if any
        self.closed = False

    def close(self):
        """The server stops: remove a helper still measuring (its thread is not waited for)."""
        self.closed = True
        docker = self.manager.docker
        for helper_id in list(self._helpers):
            docker._remove(helper_id)

    def invalidate(self):
        self._cached = None

    def get(self, refresh=False):
        manager = self.manager
        excludes = manager.settings.excludes
        # the change token: backups, restores and settings made here, or by another process in the
        # store; not the running job (a job that starts changes nothing yet: no second measurement)
        key = (manager.changes.token(with_job=False)["token"], tuple(excludes))
        with self._lock:
            cached = self._cached
            now = self.clock()
            if cached and not refresh and cached[0] == key and now - cached[1] < self.ttl:
                return {**cached[2], "cached": True, "age_seconds": round(now - cached[1], 1)}
            answer = self._measure(excludes)
            self._cached = (key, self.clock(), answer)
            return {**answer, "cached": False, "age_seconds": 0.0}

    def _measure(self, excludes):
        source = self.manager.source
        source.check_exists()
        local = source.path if isinstance(source, LocalFolderSource) else getattr(source, "local_path", None)
        folders = []
        if local:
            files, folders = local_files(local, source.skip_paths, getattr(source, "store_paths", ()))
            how = "a walk of the folder by this server (no helper container)"
        elif isinstance(source, DockerMountSource):
            if self.closed:
                raise Unavailable("The server is stopping; nothing is measured any more.")
            files = helper_files(source, self._helpers)
            how = f"find and stat in one helper container ({source.docker.image()})"
        else:  # pragma: no cover - every source is one of the two
            raise BackupError("This source cannot be measured.")
        self.walks += 1
        rows = summarize(files, excludes, folders)
        total_bytes = sum(r["bytes"] for r in rows)
        total_files = sum(r["files"] for r in rows)
        kept_bytes = total_bytes - sum(r["left_out_bytes"] for r in rows)
        kept_files = total_files - sum(r["left_out_files"] for r in rows)
        return {
            "source": source.describe(),
            "folders": rows,
            "total": {"bytes": total_bytes, "files": total_files},
            "excludes": list(excludes),
            "estimate": self._estimate(source, kept_bytes, kept_files),
            "computed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "how": how,
        }

    def _estimate(self, source, kept_bytes, kept_files):
        """The next backup: what it would hold, and its stored size guessed from the newest
        backup of this source (its archive's size over what it held)."""
        basis = None
        try:
            for meta in self.manager.list_backups():
                if meta.get("source") == source.describe() and meta.get("total_bytes") and meta.get("kind") != "safety":
                    basis = meta
                    break
        except BackupError:
            basis = None  # no store to read now: no ratio, the rest still holds
        ratio = basis["size_bytes"] / basis["total_bytes"] if basis and basis.get("size_bytes") else None
        if ratio is not None:
            note = (f"An estimate: the archive is guessed at {ratio:.0%} of what it holds, as the newest "
                    f"backup ({basis['id']}) was; files that compress differently change it.")
        else:
            note = "An estimate of what the backup would hold; its compressed size is known after the first backup."
        return {"bytes": kept_bytes, "files": kept_files,
                "compressed_bytes": round(kept_bytes * ratio) if ratio is not None else None,
                "ratio": round(ratio, 4) if ratio is not None else None,
                "based_on": basis["id"] if basis else None, "estimate": True, "note": note}


def toggled_excludes(current, name, excluded):
    """The excludes with the top-level entry ``name`` left out (``excluded``) or taken in again.
    BackupError when another pattern (a glob) leaves it out: that pattern must be changed."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise BackupError("Name one top-level folder of the notebooks folder, e.g. 'models_cache'.")
    if not isinstance(excluded, bool):
        raise BackupError("'excluded' must be true (leave the folder out of backups) or false (back it up).")
    patterns = list(current)
    if excluded:
        return patterns if excluded_by(name, patterns) is not None else patterns + [name]
    patterns = [p for p in patterns if p != name]
    other = excluded_by(name, patterns)
    if other is not None:
        raise BackupError(f"{name!r} is left out by the exclude pattern {other!r}: change or remove that pattern "
                          "in the settings to back it up.")
    return patterns
