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
from .docker_helper import find_covering_mount, own_container_id
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


def folders_holding(current_paths, protected, skip=()):
    """The folders above a path that stays whatever a restore does: one of ``current_paths``
    matching a ``protected`` pattern, or one of the ``skip`` paths (the store)."""
    holding = set()
    for path in [p for p in current_paths if is_excluded(p, protected)] + list(skip):
        parent = posixpath.dirname(path)
        while parent:
            holding.add(parent)
            parent = posixpath.dirname(parent)
    return holding


def removable_extras(current_paths, keep, protected, scope=None, skip=()):
    """Paths to remove for a 'replace': present now (within ``scope``), not kept, not matching a
    ``protected`` pattern, not one of the ``skip`` paths (the store); only the top-most of each
    removed subtree. A folder that holds a protected or skipped path is never removed whole:
    what else it holds is removed one by one."""
    current = sorted(p for p in current_paths if p != ROOT)
    holding = folders_holding(current, protected, skip)
    extras = []
    for path in current:
        if path in keep or is_excluded(path, protected) or in_scope(path, skip) or not in_scope(path, scope):
            continue
        if extras and path.startswith(extras[-1] + "/"):
            continue
        if path not in holding:
            extras.append(path)
    return extras


# ---------------------------------------------------------------------------------------------
# Local folder


class LocalFolderSource:
    """A folder of this machine: the embedded default when no Docker volume is used.

    Everything below the folder is reached through folder descriptors opened with O_NOFOLLOW,
    one name at a time (the ``*at`` calls): a folder swapped for a symlink midway, by a user who
    can write there while root restores, makes an error, never a read or a change outside."""

    kind = "folder"

    def __init__(self, path, found_by="configured", skip_paths=()):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.found_by = found_by
        # folders inside this one that are never part of it (the store, when it lies inside)
        self.skip_paths = [p for p in skip_paths if p]
        # folder stores to leave out also when reached by another path (a bind mount): by inode
        self.store_paths = []

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

    def exclude_store(self, store_path):
        """Keep the folder store ``store_path`` out of backups and restores, however it is
        reached: by its real path (symlinks resolved) and by its device and inode."""
        exclude_local_store(self, self.path, store_path)

    def _full(self, path):
        return self.path if path == ROOT else os.path.join(self.path, path)

    def _open_root(self):
        # the folder itself is what the user named (it may be a symlink); below it, nothing is followed
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            self.check_exists()
            raise
        except OSError as exc:
            raise BackupError(f"Cannot open the folder {self.path!r}: {exc.strerror}.") from None

    def _walk(self):
        """(relative path, lstat, folder fd, name) of everything, a folder before its content,
        sorted by name. Each folder is opened by name in its parent with O_NOFOLLOW and checked
        to be the one listed, so a folder swapped for a link midway is never followed."""
        self.check_exists()
        skip_folders = set()  # the store by device and inode, also when reached by another path
        for path in self.store_paths:
            try:
                st = os.stat(path)
                skip_folders.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        root = self._open_root()
        stack = [(ROOT, root, None)]  # (relative path, open fd, names still to visit or None)
        try:
            yield ROOT, os.fstat(root), root, None
            while stack:
                rel, fd, names = stack[-1]
                if names is None:
                    try:
                        names = sorted(os.listdir(fd), reverse=True)
                    except OSError as exc:
                        raise BackupError(f"Cannot read the folder {self._full(rel)!r}: {exc.strerror}.") from None
                    stack[-1] = (rel, fd, names)
                if not names:
                    stack.pop()
                    os.close(fd)
                    continue
                name = names.pop()
                child = name if rel == ROOT else f"{rel}/{name}"
                if child in self.skip_paths:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we walked: not part of it
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in skip_folders:
                        self.skip_paths.append(child)  # the store by another path: never removed either
                        continue
                    sub = open_folder_at(fd, name, self._full(child), st)
                    if sub is None:
                        continue  # gone meanwhile
                    stack.append((child, sub, None))
                yield child, st, fd, name
        finally:
            for _, fd, _ in stack:
                os.close(fd)

    @staticmethod
    def _entry(rel, st, dir_fd, name):
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
            target=os.readlink(name, dir_fd=dir_fd) if kind == SYMLINK else None,
        )

    def check_space(self, needed):
        """Refuse a restore that cannot fit, before anything is changed."""
        require_space(needed, shutil.disk_usage(self.path).free, self.place)

    @property
    def place(self):
        """The folder as errors name it."""
        return self.path

    def root_owner(self):
        st = os.stat(self.path)
        return st.st_uid, st.st_gid

    def list_entries(self):
        for rel, st, dir_fd, name in self._walk():
            yield self._entry(rel, st, dir_fd, name)

    @contextmanager
    def read_entries(self):
        def generate():
            for rel, st, dir_fd, name in self._walk():
                entry = self._entry(rel, st, dir_fd, name)
                if entry.type != FILE:
                    yield entry, None
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # deleted while we walked: not part of it
                        continue
                    if exc.errno == errno.ELOOP:  # swapped for a link meanwhile: never followed
                        continue
                    raise BackupError(f"Cannot read {self._full(rel)!r}: {exc.strerror}.") from None
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)  # replaced by something else meanwhile: not what was listed
                    continue
                os.set_blocking(fd, True)
                with os.fdopen(fd, "rb", buffering=0) as f:
                    yield entry, f

        with closing(generate()) as entries:
            yield entries

    def estimate(self):
        files = size = 0
        for _, st, _, _ in self._walk():
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
        return size, files

    # writing -----------------------------------------------------------------------------------

    def writer(self, root_fd, path):
        """What writes the entries (a one-pass restore sets one that renames staged files)."""
        return FolderWriter(root_fd, path)

    def write_entries(self, entries, replace=False, keep=None, protected=(), scope=None):
        """Write a checked stream of entries; with ``replace``, remove what is not in ``keep``
        ({path: Entry} of the whole backup; paths matching ``protected`` patterns and paths
        outside ``scope`` stay). Each file is written to a temporary name and renamed, so no
        reader (a kernel holding the SCS) ever sees half a file. Every change is made relative
        to a folder descriptor opened without following links (see :class:`FolderWriter`)."""
        os.makedirs(self.path, exist_ok=True)
        folder_times = []
        with self.writer(self._open_root(), self.path) as writer:
            for entry, content in entries:
                if self.skip_paths and in_scope(entry.path, self.skip_paths):
                    continue  # never into the store, whatever an (uploaded) archive holds
                if entry.path == ROOT:
                    if entry.type == DIR:
                        writer.set_folder(writer.root, entry)
                        folder_times.append(entry)
                    continue
                parent, name = writer.parent_of(entry.path, create=True)
                if entry.type == DIR:
                    writer.set_folder(writer.make_folder(parent, name), entry)
                    folder_times.append(entry)
                elif entry.type == FILE:
                    writer.write_file(parent, name, entry, content)
                elif entry.type == SYMLINK:
                    writer.write_symlink(parent, name, entry)
            if replace:
                # decided from the state after the writes, and removed through folder fds only
                current = [e.path for e in self.list_entries()]
                for path in removable_extras(current, keep, protected, scope, self.skip_paths):
                    writer.remove(path)
            for entry in reversed(folder_times):  # deepest last written, so set times last
                writer.set_time(entry)


def open_folder_at(dir_fd, name, where, expected=None):
    """``name`` in the folder ``dir_fd`` opened as a folder, never through a symlink, and (when
    ``expected`` is an lstat of it) checked to be that very folder; None when it is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise BackupError(
                f"{where!r} was replaced by a symlink or a file while it was being read or written; "
                "nothing was followed. Try again once nothing else changes the folder."
            ) from None
        raise BackupError(f"Cannot open the folder {where!r}: {exc.strerror}.") from None
    if expected is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            os.close(fd)
            raise BackupError(f"{where!r} was replaced while it was being read; try again.")
    return fd


def remove_at(dir_fd, name):
    """Remove ``name`` of the folder ``dir_fd`` (a folder with all it holds) without following
    any symlink: each folder is opened O_NOFOLLOW and emptied through its descriptor."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # Linux answers EISDIR for a folder, some filesystems EPERM
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
    fd = _open_to_empty(dir_fd, name)
    if fd is None:
        return
    stack = [(dir_fd, name, fd, _empty_files(fd))]  # (parent fd, name, fd, its folders left)
    try:
        while stack:
            parent, folder, fd, subfolders = stack[-1]
            if subfolders:
                sub = subfolders.pop()
                sub_fd = _open_to_empty(fd, sub)
                if sub_fd is not None:  # on the stack before it is emptied: closed on any error
                    stack.append((fd, sub, sub_fd, None))
                    stack[-1] = (fd, sub, sub_fd, _empty_files(sub_fd))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(folder, dir_fd=parent)
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def _open_to_empty(dir_fd, name):
    """The folder ``name`` opened O_NOFOLLOW; a link or file found there instead is unlinked
    (only the name goes) and None is returned, as when it is gone."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    return None


def _empty_files(fd):
    """Unlink every non-folder in the folder ``fd``; return the names of its folders."""
    folders = []
    with os.scandir(fd) as children:
        for child in children:
            if child.is_dir(follow_symlinks=False):
                folders.append(child.name)
                continue
            try:
                os.unlink(child.name, dir_fd=fd)
            except FileNotFoundError:
                pass
    return folders


class FolderWriter:
    """Writes below a folder through descriptors: the chain of open folders of the current path
    (entries come in tree order) is kept, so each entry costs a few ``*at`` calls."""

    def __init__(self, root_fd, path):
        self.root = root_fd
        self.path = path
        self._chain = []  # [(name, fd)] from the root down to the last parent used

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for _, fd in self._chain:
            os.close(fd)
        self._chain = []
        os.close(self.root)

    def _where(self, path):
        return os.path.join(self.path, path)

    def parent_of(self, path, create=False):
        """(fd of the folder holding ``path``, its name). With ``create``, missing parents are
        made and anything in the way that is not a real folder is replaced (a symlink there
        would let a write land outside); without, None when a parent is not a real folder."""
        parts = path.split("/")
        folders, name = parts[:-1], parts[-1]
        common = 0
        while common < min(len(folders), len(self._chain)) and self._chain[common][0] == folders[common]:
            common += 1
        for _, fd in self._chain[common:]:
            os.close(fd)
        del self._chain[common:]
        for i in range(common, len(folders)):
            parent = self._chain[-1][1] if self._chain else self.root
            where = self._where("/".join(folders[: i + 1]))
            if create:
                fd = self.make_folder(parent, folders[i], 0o755)
            else:
                try:
                    fd = open_folder_at(parent, folders[i], where)
                except BackupError:
                    return None, name
                if fd is None:
                    return None, name
            self._chain.append((folders[i], fd))
        return (self._chain[-1][1] if self._chain else self.root), name

    def make_folder(self, parent, name, mode=0o700):
        """``name`` in ``parent`` as a real folder (made, or what is there replaced), opened."""
        for _ in range(3):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                remove_at(parent, name)
                st = None
            if st is None:
                try:
                    os.mkdir(name, mode, dir_fd=parent)
                except FileExistsError:
                    continue
            try:
                return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise
                # swapped meanwhile: replace it again
        raise BackupError(
            f"{self._where(name)!r} keeps being replaced while the restore writes it; nothing was "
            "followed. Stop what changes the folder, then restore again."
        )

    @staticmethod
    def _own_fd(fd, entry):
        try:
            os.fchown(fd, entry.uid, entry.gid)
        except PermissionError:
            pass  # not root: files stay ours, which is what a non-root user can edit anyway

    def set_folder(self, fd, entry):
        try:
            os.fchmod(fd, entry.mode)
            self._own_fd(fd, entry)
        finally:
            if fd != self.root:
                os.close(fd)

    def write_file(self, parent, name, entry, content):
        temp = f".{name}.ailab-restore-{os.getpid()}"
        try:
            os.unlink(temp, dir_fd=parent)  # left by an earlier, killed restore
        except FileNotFoundError:
            pass
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = entry.size
                while remaining:
                    chunk = content.read(min(CHUNK, remaining))
                    if not chunk:
                        raise InvalidArchive(f"{entry.path!r} ended early.")
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fchmod(out.fileno(), entry.mode)
                self._own_fd(out.fileno(), entry)
                os.utime(out.fileno(), (entry.mtime, entry.mtime))
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                remove_at(parent, name)
            # atomic: a reader never sees half a file (the SCS!); a symlink there is replaced, not followed
            os.replace(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=parent)
            except FileNotFoundError:
                pass
            raise

    def write_symlink(self, parent, name, entry):
        remove_at(parent, name)
        os.symlink(entry.target, name, dir_fd=parent)
        try:
            os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        except PermissionError:
            pass
        os.utime(name, (entry.mtime, entry.mtime), dir_fd=parent, follow_symlinks=False)

    def remove(self, path):
        parent, name = self.parent_of(path)
        if parent is not None:  # a parent is gone or no longer a real folder: nothing of ours there
            remove_at(parent, name)

    def set_time(self, entry):
        if entry.path == ROOT:
            os.utime(self.root, (entry.mtime, entry.mtime))
            return
        parent, name = self.parent_of(entry.path)
        if parent is None:
            return
        try:
            fd = open_folder_at(parent, name, self._where(entry.path))
        except BackupError:
            return  # replaced meanwhile: its time is not ours to set
        if fd is not None:
            try:
                os.utime(fd, (entry.mtime, entry.mtime))
            finally:
                os.close(fd)


def require_space(needed, free, place):
    """Refuse a restore of ``needed`` bytes into ``place`` (as errors name it), which has ``free``."""
    if needed > free:
        raise BackupError(
            f"The restore needs {needed // 2**20} MB but {place} has {free // 2**20} MB free. "
            "Free space, or restore only some folders. Nothing was changed."
        )


def exclude_local_store(source, folder, store_path):
    """Leave the folder store ``store_path`` out of ``source`` when it lies inside ``folder``
    (where this process sees the source): compared by real paths (symlinks resolved) into
    ``source.skip_paths``, and, for a local walk, by device and inode (a bind mount inside).
    A store that is the folder itself is refused."""
    if not folder or not os.path.isdir(folder):
        return
    real_folder, real_store = os.path.realpath(folder), os.path.realpath(store_path)
    same = real_folder == real_store
    try:
        same = same or os.path.samefile(folder, store_path)
    except OSError:
        pass
    if same:
        raise BackupError(
            f"The store {store_path!r} is the folder it backs up ({folder!r}). Set AILabBackup.store "
            "to a folder outside it."
        )
    inside = os.path.relpath(real_store, real_folder)
    if inside != ".." and not inside.startswith("../") and inside not in source.skip_paths:
        source.skip_paths.append(inside)  # the store is never part of a backup
    if hasattr(source, "store_paths"):
        source.store_paths.append(real_store)


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
        # folders inside the mount that are never part of it (a folder store that lies inside)
        self.skip_paths = []
        # where this process sees the mount's folder, when it does (the mount of its own container)
        self.local_path = None

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

    def exclude_store(self, store_path):
        """Leave the folder store ``store_path`` out when it lies inside the mount, by real paths
        and inodes where this process sees the mount (its own container's mount, or the Docker
        host's own folder), and by host paths when another mount of this server's container
        holds the store."""
        exclude_local_store(self, self.local_path or self._host_folder(), store_path)
        own = self.docker.own_container() if self.local_path else None
        mount, below = find_covering_mount((own or {}).get("Mounts"), os.path.realpath(store_path))
        if not mount:
            return
        if self.kind == "bind" and mount.get("Type") == "bind":
            ours, theirs = posixpath.join(self.mount_name, self.subpath), posixpath.join(mount["Source"], below)
        elif self.kind == "volume" and mount.get("Type") == "volume" and mount.get("Name") == self.mount_name:
            ours, theirs = posixpath.join("/", self.subpath), posixpath.join("/", below)
        else:
            return
        inside = posixpath.relpath(posixpath.normpath(theirs), posixpath.normpath(ours))
        if inside == ".":
            raise BackupError(
                f"The store {store_path!r} is the {self.kind} it backs up ({self.name!r}). Set "
                "AILabBackup.store to a folder outside it."
            )
        if inside != ".." and not inside.startswith("../") and inside not in self.skip_paths:
            self.skip_paths.append(inside)

    def _host_folder(self):
        """The mount's folder as this process sees it, when it runs on the Docker host itself
        (not in a container of this engine): a bind mount's source, a volume's mountpoint."""
        if own_container_id() is not None:
            return None
        if self.kind == "bind":
            folder = self.mount_name
        else:
            try:
                folder = self.docker.client.api.inspect_volume(self.mount_name).get("Mountpoint")
            except Exception:  # noqa: BLE001 - missing volume or engine: check_exists says so later
                return None
        return posixpath.join(folder, self.subpath) if folder and self.subpath else folder

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
                    if self.skip_paths and in_scope(rest, self.skip_paths):
                        continue  # the store: never read, listed or removed
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
        """Refuse a restore that cannot fit, before anything is changed: this path writes the
        files in place, so a disk that fills midway would leave some overwritten and one cut
        short. The free space is what ``df`` in a helper says (not visible from here)."""
        if needed <= 0:
            return
        try:
            out = self.docker.run(self._mounts(read_only=True), ["df", "-P", "-k", self.data_dir])
            free = int(out.decode(errors="replace").strip().splitlines()[-1].split()[3]) * 1024
        except (BackupError, IndexError, ValueError):
            return  # an image without df: Docker still reports a full disk, as before
        require_space(needed, free, f"the {self.kind} {self.name!r}")

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
        parent, root_name = posixpath.split(self.data_dir)
        renames, folders = [], []

        def staged():
            for entry, content in entries:
                if self.skip_paths and in_scope(entry.path, self.skip_paths):
                    continue  # never into the store, whatever an (uploaded) archive holds
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
        if renames:
            self._in_place("rename", [path for _, path in renames])
        if replace:
            # what to remove is decided from the state after the writes: a folder the backup
            # turned into a symlink is no longer listed below, so nothing is removed through it
            current = [e.path for e in self.list_entries()]
            extras = removable_extras(current, keep, protected, scope, self.skip_paths)
            if extras:
                self._in_place("remove", extras)
        if renames or (replace and extras):
            # renaming and removing changed the times of the folders involved: set them again
            with self.docker.container(self._mounts(read_only=False)) as helper:
                self.docker.put_archive(helper, parent, tar_stream(folders, root_name), what)

    def _in_place(self, operation, paths):
        """Remove (or move into place from their temporary names) ``paths`` of the folder in a
        helper, by IN_PLACE_SCRIPT: it never follows a symlink on the way or inside."""
        below = self.subpath + "/" if self.subpath else ""
        listing = b"".join(f"{below}{p}".encode(errors="surrogateescape") + b"\0" for p in paths)
        self.docker.run(
            self._mounts(read_only=False),
            ["sh", "-c", f"xargs -0 -r sh /ailab/in_place.sh {operation} < /ailab/paths.list"],
            files={"/ailab/in_place.sh": IN_PLACE_SCRIPT.encode(), "/ailab/paths.list": listing},
        )


# Run by a helper (busybox or dash): ``sh in_place.sh remove|rename PATH...``, paths relative to
# the mount. Each folder is entered one at a time and is checked, after entering, to be the real
# folder of that name (not a symlink swapped in): nothing outside the mount can be reached. A
# folder is emptied the same way, never by a recursive rm that might follow a link put in midway.
IN_PLACE_SCRIPT = r"""
set -u
MOUNT='/ailab/mount'
failed=0
real_cwd() { cwd=$(pwd -P; printf x); cwd=${cwd%?x}; }   # keeps a name's trailing newline
enter_one() {   # cd into the real folder $1 of the current folder, never through a symlink
    local before
    real_cwd; before=${cwd%/}
    if [ -L "$1" ] || [ ! -d "$1" ]; then return 1; fi
    cd -P -- "./$1" || return 1
    real_cwd
    [ "$cwd" = "$before/$1" ]
}
enter_path() {  # cd along the folders of the relative path $1
    local rest part
    rest=$1
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        if [ "$part" = "$rest" ]; then rest=''; else rest=${rest#*/}; fi
        enter_one "$part" || return 1
    done
}
remove_tree() { # remove $1 of the current folder; a folder's content first, link-safe
    local name up child
    name=$1
    if [ -L "$name" ] || [ ! -d "$name" ]; then
        rm -f -- "./$name"
        return
    fi
    real_cwd; up=$cwd
    enter_one "$name" || return 1
    set --
    for child in .[!.]* ..?* *; do
        if [ -d "$child" ] && [ ! -L "$child" ]; then
            remove_tree "$child" || return 1
        elif [ -e "$child" ] || [ -L "$child" ]; then
            set -- "$@" "./$child"
            if [ $# -ge 500 ]; then rm -f -- "$@" || return 1; set --; fi
        fi
    done
    if [ $# -gt 0 ]; then rm -f -- "$@" || return 1; fi
    cd -P .. || return 1
    real_cwd
    [ "$cwd" = "$up" ] || return 1
    rmdir -- "./$name"
}
operation=$1
shift
for path do
    cd -P "$MOUNT" || exit 1
    case $path in */*) folder=${path%/*} name=${path##*/} ;; *) folder='' name=$path ;; esac
    if ! enter_path "$folder"; then
        echo "not changed: $path (a folder on its way is a symlink, or was moved meanwhile)" >&2
        failed=1
        continue
    fi
    if [ "$operation" = rename ]; then
        if [ -d "$name" ] && [ ! -L "$name" ]; then remove_tree "$name" || failed=1; fi
        mv -f -T -- "./.$name.ailab-restore" "./$name" || failed=1
    elif ! remove_tree "$name"; then
        echo "not removed: $path (a folder in it was swapped for a symlink, or moved meanwhile)" >&2
        failed=1
    fi
done
exit $failed
"""
