"""What is backed up: a Docker mount (volume or bind mount) or a local folder.

Both speak the same language: ``read_entries()`` yields ``(Entry, file or None)`` in tree order
(a folder before what it holds), ``list_entries()`` the same without contents, and
``write_entries(entries, replace, keep)`` writes such a stream back.
"""

import dataclasses
import errno
import fnmatch
import os
import posixpath
import shutil
import stat
from contextlib import closing, contextmanager

from .archive import (
    CHUNK,
    DIR,
    FILE,
    HARDLINK,
    ROOT,
    SYMLINK,
    Entry,
    entry_from_tarinfo,
    tar_stream,
)
from .errors import BackupError, InvalidArchive, NotFound


def is_excluded(path, patterns):
    """True when ``path`` or one of its parent folders matches a glob pattern (or its name does)."""
    if path == ROOT or not patterns:
        return False
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix, name = "/".join(parts[:i]), parts[i - 1]
        if any(fnmatch.fnmatchcase(prefix, p) or fnmatch.fnmatchcase(name, p) for p in patterns):
            return True
    return False


def in_scope(path, chosen):
    """True when ``path`` is one of the ``chosen`` paths or lies below one (None: everything)."""
    return chosen is None or any(path == p or path.startswith(p + "/") for p in chosen)


def removable_extras(current_paths, keep, protected, scope=None):
    """Paths to remove for a 'replace': present now (within ``scope``), not kept, not protected;
    only the top-most of each removed subtree."""
    extras = []
    for path in sorted(p for p in current_paths if p != ROOT and p not in keep):
        if is_excluded(path, protected) or not in_scope(path, scope):
            continue
        if extras and path.startswith(extras[-1] + "/"):
            continue
        extras.append(path)
    return extras


# ---------------------------------------------------------------------------------------------
# Local folder


class LocalFolderSource:
    """A folder of this machine: the embedded default when no Docker volume is used."""

    kind = "folder"

    def __init__(self, path, found_by="configured", skip_paths=()):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.found_by = found_by
        # folders inside this one that are never part of it (the store, when it lies inside)
        self.skip_paths = [p for p in skip_paths if p]

    @property
    def name(self):
        return self.path

    @property
    def slug(self):
        return os.path.basename(self.path.rstrip("/")) or "root"

    def describe(self):
        return {"type": self.kind, "name": self.path, "found_by": self.found_by}

    def check_exists(self):
        if not os.path.isdir(self.path):
            raise NotFound(
                f"The folder {self.path!r} does not exist. Set AILabBackup.source_dir to the "
                "notebooks folder."
            )

    def _full(self, path):
        return self.path if path == ROOT else os.path.join(self.path, path)

    def _walk(self):
        """(relative path, lstat) of everything, a folder before its content, sorted by name."""
        self.check_exists()
        stack = [ROOT]
        while stack:
            rel = stack.pop()
            full = self._full(rel)
            st = os.lstat(full)
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    names = sorted(os.listdir(full), reverse=True)
                except OSError as exc:
                    raise BackupError(f"Cannot read the folder {full!r}: {exc.strerror}.") from None
                for name in names:
                    child = name if rel == ROOT else f"{rel}/{name}"
                    if child not in self.skip_paths:
                        stack.append(child)

    @staticmethod
    def _entry(rel, st, full):
        mode = st.st_mode
        if stat.S_ISREG(mode):
            kind = FILE
        elif stat.S_ISDIR(mode):
            kind = DIR
        elif stat.S_ISLNK(mode):
            kind = SYMLINK
        elif stat.S_ISFIFO(mode):
            kind = "fifo"
        elif stat.S_ISSOCK(mode):
            kind = "socket"
        else:
            kind = "device file"
        return Entry(
            path=rel,
            type=kind,
            size=st.st_size if kind == FILE else 0,
            mode=stat.S_IMODE(mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime=int(st.st_mtime),
            target=os.readlink(full) if kind == SYMLINK else None,
        )

    def check_space(self, needed):
        """Refuse a restore that cannot fit, before anything is changed."""
        free = shutil.disk_usage(self.path).free
        if needed > free:
            raise BackupError(
                f"The restore needs {needed // 2**20} MB but {self.path} has {free // 2**20} MB free. "
                "Free space, or restore only some folders."
            )

    def root_owner(self):
        st = os.stat(self.path)
        return st.st_uid, st.st_gid

    def list_entries(self):
        for rel, st in self._walk():
            yield self._entry(rel, st, self._full(rel))

    @contextmanager
    def read_entries(self):
        def generate():
            for rel, st in self._walk():
                full = self._full(rel)
                entry = self._entry(rel, st, full)
                if entry.type != FILE:
                    yield entry, None
                    continue
                try:
                    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # deleted while we walked: not part of it
                        continue
                    raise BackupError(f"Cannot read {full!r}: {exc.strerror}.") from None
                with os.fdopen(fd, "rb", buffering=0) as f:
                    yield entry, f

        yield generate()

    def estimate(self):
        files = size = 0
        for rel, st in self._walk():
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
        return size, files

    # writing -----------------------------------------------------------------------------------

    def _make_parents(self, path):
        """Create the parent folders of ``path``, replacing anything in the way that is not a real
        folder (a symlink there would let a write land outside)."""
        parent = posixpath.dirname(path)
        if not parent:
            return
        current = self.path
        for part in parent.split("/"):
            current = os.path.join(current, part)
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(current)
                os.mkdir(current, 0o755)

    @staticmethod
    def _remove(full):
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)

    @staticmethod
    def _own(full, entry, follow=True):
        try:
            os.chown(full, entry.uid, entry.gid, follow_symlinks=follow)
        except PermissionError:
            pass  # not root: files stay ours, which is what a non-root user can edit anyway

    def _write_file(self, full, entry, content):
        directory, name = os.path.split(full)
        temp = os.path.join(directory, f".{name}.ailab-restore-{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = entry.size
                while remaining:
                    chunk = content.read(min(CHUNK, remaining))
                    if not chunk:
                        raise InvalidArchive(f"{entry.path!r} ended early.")
                    out.write(chunk)
                    remaining -= len(chunk)
                os.fchmod(out.fileno(), entry.mode)
            self._own(temp, entry)
            os.utime(temp, (entry.mtime, entry.mtime))
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            os.replace(temp, full)  # atomic: a reader never sees half a file (the SCS!)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise

    def write_entries(self, entries, replace=False, keep=None, protected=(), scope=None):
        """Write a checked stream of entries; with ``replace``, remove what is not in ``keep``
        ({path: Entry} of the whole backup; paths matching ``protected`` patterns and paths
        outside ``scope`` stay). Each file is written to a temporary name and renamed, so no
        reader (a kernel holding the SCS) ever sees half a file."""
        os.makedirs(self.path, exist_ok=True)
        folder_times = []
        for entry, content in entries:
            full = self._full(entry.path)
            if entry.path != ROOT:
                self._make_parents(entry.path)
            if entry.type == DIR:
                if not os.path.isdir(full) or os.path.islink(full):
                    self._remove(full)
                    os.mkdir(full, 0o700)
                os.chmod(full, entry.mode)
                self._own(full, entry)
                folder_times.append((full, entry.mtime))
            elif entry.type == FILE:
                self._write_file(full, entry, content)
            elif entry.type == SYMLINK:
                self._remove(full)
                os.symlink(entry.target, full)
                self._own(full, entry, follow=False)
                os.utime(full, (entry.mtime, entry.mtime), follow_symlinks=False)
        if replace:
            current = [e.path for e in self.list_entries()]
            for path in removable_extras(current, keep, list(protected) + self.skip_paths, scope):
                self._remove(self._full(path))
        for full, mtime in reversed(folder_times):  # deepest last written, so set times last
            os.utime(full, (mtime, mtime))


# ---------------------------------------------------------------------------------------------
# Docker mount


class DockerMountSource:
    """A Docker volume or bind mount, reached through helper containers.

    The mount is attached at ``/ailab/mount`` in the helper; ``subpath`` selects the folder in it
    that is the notebooks folder (empty when the mount is the notebooks folder itself).
    """

    MOUNT_POINT = "/ailab/mount"

    def __init__(self, docker, mount_type, name, subpath="", found_by="configured"):
        self.docker = docker
        self.kind = "volume" if mount_type == "volume" else "bind"
        self.mount_name = name
        self.subpath = "" if subpath in ("", ".") else subpath.strip("/")
        self.found_by = found_by

    @property
    def name(self):
        return self.mount_name + (f":{self.subpath}" if self.subpath else "")

    @property
    def slug(self):
        name = self.mount_name.rstrip("/").rsplit("/", 1)[-1]
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            name = "anonymous-" + name[:12]  # Docker's generated volume names are 64 hex digits
        return name or "volume"

    def describe(self):
        return {"type": self.kind, "name": self.name, "found_by": self.found_by}

    @property
    def data_dir(self):
        return posixpath.join(self.MOUNT_POINT, self.subpath) if self.subpath else self.MOUNT_POINT

    def check_exists(self):
        if self.kind == "volume":
            self.docker.require_volume(self.mount_name)

    def _mounts(self, read_only):
        self.check_exists()
        return [self.docker.mount(self.kind, self.mount_name, self.MOUNT_POINT, read_only)]

    def _tar_members(self, helper, path):
        try:
            # closed with this generator: Docker's stream must end before the helper is removed
            with closing(self.docker.tar_members(helper, path)) as members:
                for tar, info in members:
                    # Docker names members after the folder asked for: strip that first part
                    _, _, rest = info.name.partition("/")
                    yield tar, info, rest or ROOT
        except NotFound:
            raise NotFound(f"{path} does not exist in the {self.kind} {self.name!r}.") from None

    @contextmanager
    def read_entries(self):
        with self.docker.container(self._mounts(read_only=True)) as helper:

            def generate():
                hardlinked = []
                for tar, info, path in self._tar_members(helper, self.data_dir):
                    entry = entry_from_tarinfo(info, path)
                    if entry.type == HARDLINK:
                        hardlinked.append(path)  # fetched again below, as a plain file
                    elif entry.type == FILE:
                        yield entry, tar.data(info)
                    else:
                        yield entry, None
                for path in hardlinked:
                    for tar, info, _ in self._tar_members(helper, f"{self.data_dir}/{path}"):
                        yield entry_from_tarinfo(info, path), tar.data(info)

            # closed before the helper is removed, also when the reader stops early
            with closing(generate()) as entries:
                yield entries

    def list_entries(self):
        with self.docker.container(self._mounts(read_only=True)) as helper:
            for _, info, path in self._tar_members(helper, self.data_dir):
                yield entry_from_tarinfo(info, path)

    def check_space(self, needed):
        pass  # a volume's free space is not visible from here; Docker reports a full disk itself

    def root_owner(self):
        with self.docker.container(self._mounts(read_only=True)) as helper:
            with closing(self._tar_members(helper, self.data_dir)) as members:
                for _, info, _ in members:
                    return info.uid, info.gid  # the folder itself comes first; stop reading there
        return 0, 0

    def estimate(self):
        return 0, 0  # unknown without reading the volume; callers use the last backup's size

    def write_entries(self, entries, replace=False, keep=None, protected=(), scope=None):
        """As :meth:`LocalFolderSource.write_entries`. Docker writes files in place, so SQLite
        files (the SCS) are written under a temporary name and renamed afterwards."""
        current = [e.path for e in self.list_entries()] if replace else []
        parent, root_name = posixpath.split(self.data_dir)
        renames, folders = [], []

        def staged():
            for entry, content in entries:
                if entry.type == FILE and entry.path.endswith(".sqlite"):
                    head, name = posixpath.split(entry.path)
                    temp = posixpath.join(head, f".{name}.ailab-restore")
                    renames.append((temp, entry.path))
                    entry = dataclasses.replace(entry, path=temp)
                elif entry.type == DIR:
                    folders.append((entry, None))
                yield entry, content

        what = f"the {self.kind} {self.name!r}"
        with self.docker.container(self._mounts(read_only=False)) as helper:
            self.docker.put_archive(helper, parent, tar_stream(staged(), root_name), what)
        extras = removable_extras(current, keep, protected, scope) if replace else []
        if not (renames or extras):
            return

        def listing(paths):
            return b"".join(f"{self.data_dir}/{p}".encode(errors="surrogateescape") + b"\0" for p in paths)

        self.docker.run(
            self._mounts(read_only=False),
            ["sh", "-c", "xargs -0 -r -n 2 mv -f -- < /ailab/rename.list && xargs -0 -r rm -rf -- < /ailab/remove.list"],
            files={"/ailab/rename.list": listing(p for pair in renames for p in pair),
                   "/ailab/remove.list": listing(extras)},
        )
        # renaming and removing changed the times of the folders involved: set them again
        with self.docker.container(self._mounts(read_only=False)) as helper:
            self.docker.put_archive(helper, parent, tar_stream(folders, root_name), what)
