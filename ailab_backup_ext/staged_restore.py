"""A restore in one pass, for a folder of this process (the worker's mounted volume, or the
notebooks folder of a VM edition) and an archive file it can read.

The archive is read once: checked completely (every file's SHA-256, the manifest, the archive's
own SHA-256) while each file's content is written into a hidden staging folder inside the
folder restored to (the same file system, so that a file moves into place by a rename). Only
once the archive proved sound is the safety backup taken and are the files renamed into place;
nothing visible changes before. The staging folder is locked (flock) while its restore runs, left
out of backups and of a replace's removals, and removed at the end; one left by a killed restore
goes with the next restore or worker job. The folder's own time is kept across the staging
folder's making and removal, so that a safety backup, and an undo, see the folder as it was.
"""

import errno
import fcntl
import functools
import hashlib
import os
import stat
import uuid
from contextlib import contextmanager, nullcontext

from .archive import CHUNK, FILE, FeedingReader, Manifest, Worker, hashing_worker, iter_archive
from .archive.reader import _READ_ERRORS as READ_ERRORS
from .errors import InvalidArchive
from .sources import FolderWriter, remove_at

STAGING_PREFIX = ".ailab-restore-"


@contextmanager
def _time_kept(fd):
    """Whatever happens in it to the folder ``fd``'s entries, its times stay."""
    st = os.fstat(fd)
    try:
        yield
    finally:
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def clear_staging(source):
    """Remove the staging folders of ``source`` (a LocalFolderSource) that no running restore holds
    (a killed one's), and leave those left (another process's running restore's, or any on the
    read-only mount of a backup) out of what the source reads or removes."""
    for name in remove_stale_staging(source.path):
        if name not in source.skip_paths:
            source.skip_paths.append(name)


def remove_stale_staging(path):
    """Remove the staging folders that no running restore holds from ``path``; the names of those
    left (held by one, or on a read-only mount)."""
    try:
        root = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    held = []
    try:
        for name in os.listdir(root):
            if not name.startswith(STAGING_PREFIX):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held.append(name)  # a running restore's
                continue
            finally:
                os.close(fd)
            try:
                with _time_kept(root):
                    remove_at(root, name)
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                held.append(name)  # a backup's read-only mount: left out now, removed by a restore
    finally:
        os.close(root)
    return held


class Staging:
    """The staging folder of one restore: the checked files' content, each under a number."""

    def __init__(self, fd, name, behind=None):
        self.fd, self.name = fd, name
        self.files = {}  # path in the backup -> name in the staging folder
        self.behind = behind  # a Worker making and writing the staged files, or None: this thread

    def stage(self, entry, content):
        staged = str(len(self.files))
        if self.behind is not None:
            self._stage_behind(staged, entry, content)
            self.files[entry.path] = staged
            return
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.fd)
        with os.fdopen(fd, "wb") as out:
            while chunk := content.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fchmod(out.fileno(), entry.mode)
            FolderWriter._own_fd(out.fileno(), entry)
            os.utime(out.fileno(), (entry.mtime, entry.mtime))
        self.files[entry.path] = staged

    def _stage_behind(self, staged, entry, content):
        """As :meth:`stage`, but the file is made and written by the worker ``behind`` while this
        thread reads (decompresses, checks) on: a file's creation costs as much as writing 100 KB."""
        out = _StagedFile(self.fd, staged)
        self.behind.submit(out.open)
        while chunk := content.read(CHUNK):  # fresh bytes each time: safe to hand over
            self.behind.submit(out.write, chunk)
        self.behind.submit(out.finish, entry)

    def written(self):
        """Wait until every staged file is written; raise the first error writing one raised."""
        if self.behind is not None:
            self.behind.close()

    def writer(self, root_fd, path):
        """A :class:`FolderWriter` that renames staged files into place instead of copying."""
        return _PlacingWriter(root_fd, path, self)


class _StagedFile:
    """One staged file, written by the staging's worker: open, write..., finish (closed on any error)."""

    def __init__(self, dir_fd, name):
        self.dir_fd, self.name, self.out = dir_fd, name, None

    def open(self):
        fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.dir_fd)
        self.out = os.fdopen(fd, "wb")

    def write(self, chunk):
        try:
            self.out.write(chunk)
        except BaseException:
            self.out.close()
            raise

    def finish(self, entry):
        with self.out as out:
            out.flush()
            os.fchmod(out.fileno(), entry.mode)
            FolderWriter._own_fd(out.fileno(), entry)
            os.utime(out.fileno(), (entry.mtime, entry.mtime))


class _PlacingWriter(FolderWriter):
    def __init__(self, root_fd, path, staging):
        super().__init__(root_fd, path)
        self.staging = staging

    def write_file(self, parent, name, entry, content):
        staged = self.staging.files.get(entry.path)
        if staged is None:  # not staged (never happens for a checked archive): copied as before
            return super().write_file(parent, name, entry, content)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            remove_at(parent, name)
        # atomic, as a copied file's rename: a reader never sees half a file; a symlink there is replaced
        try:
            os.replace(staged, name, src_dir_fd=self.staging.fd, dst_dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # another file system mounted inside the folder: copied from the staged file (checked)
            fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.staging.fd)
            with os.fdopen(fd, "rb") as content:
                super().write_file(parent, name, entry, content)
            os.unlink(staged, dir_fd=self.staging.fd)


@contextmanager
def staging_in(source, behind=True):
    """A locked staging folder in ``source`` (a LocalFolderSource), left out of everything the
    source reads or removes meanwhile, and removed on leaving; the source's own time is kept.
    ``behind``: its files are written by a worker thread (ended before the folder is removed)."""
    root = source._open_root()
    try:
        clear_staging(source)
        name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        with _time_kept(root):
            os.mkdir(name, 0o700, dir_fd=root)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until removed: see remove_stale_staging
            source.skip_paths.append(name)
            with Worker("ailab-backup-stage") if behind else nullcontext() as worker:
                yield Staging(fd, name, worker)
        finally:
            if name in source.skip_paths:
                source.skip_paths.remove(name)
            with _time_kept(root):
                remove_at(root, name)
            os.close(fd)
    finally:
        os.close(root)


def check_and_stage(path, meta, staging, config, progress):
    """Read the archive file ``path`` (or a readable stream of it, e.g. a store's download: then
    nothing is spooled) once: check everything (as a restore's check does) while each file is
    written into ``staging``; the manifest. Raises InvalidArchive on any fault (a stream's own
    errors, such as a store gone or a wrong key, are raised as they are)."""
    digest = hashlib.sha256()
    manifest = None
    with _opened(path) as raw, hashing_worker() as hasher:
        hashed = FeedingReader(raw, functools.partial(hasher.submit, digest.update))
        try:
            for entry, content in iter_archive(hashed, config.max_archive_bytes, progress,
                                               max_entries=config.max_entries):
                if isinstance(entry, Manifest):
                    manifest = entry
                elif entry.type == FILE:
                    staging.stage(entry, content)  # reads the file here: its read errors come here
        except READ_ERRORS as exc:
            raise InvalidArchive(
                f"The archive is damaged or truncated ({exc or type(exc).__name__}). "
                "Nothing was changed; use another backup."
            ) from None
        while hashed.read(CHUNK):  # whatever follows the compressed stream (bounded)
            pass
    staging.written()
    if manifest is None:
        raise InvalidArchive("The archive has no manifest: it was cut short or is not a backup.")
    if meta.get("sha256") and digest.hexdigest() != meta["sha256"]:
        raise InvalidArchive(
            f"The archive of {meta['id']} does not match its recorded checksum: it was altered "
            "or damaged in the store."
        )
    return manifest


def _opened(archive):
    """The archive file ``archive`` opened, or the stream ``archive`` as it is (its owner closes it)."""
    return open(archive, "rb") if isinstance(archive, (str, bytes, os.PathLike)) else nullcontext(archive)
