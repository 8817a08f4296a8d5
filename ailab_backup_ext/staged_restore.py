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

A file the folder already holds as the backup has it (same content, compared byte for byte with
the archive's checked content, same mode, owner and time in seconds) is neither staged nor moved:
it is recorded in :attr:`Staging.same` with what its ``lstat`` was, left out of the safety backup
(which names it as unchanged, held by the restored backup) and checked again, unchanged since,
before anything moves.
"""

import errno
import fcntl
import functools
import hashlib
import itertools
import os
import stat
import time
import uuid
from contextlib import contextmanager, nullcontext, suppress

from .archive import ARCHIVE_HASH_DEPTH, CHUNK, FILE, FeedingReader, Manifest, Worker, hashing_worker, iter_archive
from .archive.reader import _READ_ERRORS as READ_ERRORS
from .errors import BackupError, InvalidArchive
from .sources import FolderWriter, remove_at

STAGING_PREFIX = ".ailab-restore-"
SMALL_FILES_BATCH = 32  # small files handed to the staging's writer at once (at most CHUNK bytes of them)


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


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (OSError, ImportError):
        return None


def sync_filesystem(fd):
    """Everything written on the file system of ``fd`` on disk: one ``syncfs`` for all the staged
    files (not an fsync each), so that no rename into place can outlive, in a crash, the data it
    names. Falls back to ``sync`` where syncfs is missing."""
    try:
        if _libc() is not None and _libc().syncfs(fd) == 0:
            return
    except AttributeError:
        pass
    os.sync()


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd):
    """Have the disk begin writing the file ``fd`` now (sync_file_range, which waits for nothing),
    while the rest of the archive is checked: the syncfs before the renames then finds little left
    to write. A hint only (the syncfs is what makes the data durable)."""
    try:
        libc = _libc()
        if libc is not None:
            import ctypes

            libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), SYNC_FILE_RANGE_WRITE)
    except (AttributeError, OSError):
        pass


def signature(st):
    """What tells that a file was not changed since it was compared: any write, chmod, chown or
    utime changes its ctime; a replaced file has another inode."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def same_meta(st, entry):
    """The folder's file (an lstat) has the entry's type, size, mode, owner and time (seconds:
    what an archive keeps)."""
    return (stat.S_ISREG(st.st_mode) and st.st_size == entry.size and stat.S_IMODE(st.st_mode) == entry.mode
            and st.st_uid == entry.uid and st.st_gid == entry.gid and st.st_mtime_ns // 10**9 == entry.mtime)


class ChangedMeanwhile(BackupError):
    """A file found identical to the backup's was changed before the restore moved anything."""


def changed_meanwhile(path):
    return ChangedMeanwhile(
        f"{path!r} was changed while the restore was being prepared; nothing was changed. Restore "
        "again once nothing else writes to the folder."
    )


class Staging:
    """The staging folder of one restore: the checked files' content, each under a number, and
    the files the folder already holds as the backup has them."""

    def __init__(self, fd, name, root_fd, root_path, current, behind):
        self.fd, self.name = fd, name
        self.files = {}  # path in the backup -> name in the staging folder
        self.current = current  # path -> lstat of the folder's regular files before the restore
        self.same = {}  # path -> signature() of the folder's file found identical (not staged)
        self._reader = FolderWriter(os.dup(root_fd), root_path)  # None once closed
        self.behind = behind  # a Worker making and writing the staged files, or None: this thread
        self.writer_cpu = 0.0  # the CPU seconds ``behind`` spent
        self._small, self._small_bytes = [], 0  # small files not yet handed to ``behind``: (file, data, entry)

    def close(self):
        if self._reader is not None:
            self._reader.__exit__(None, None, None)
            self._reader = None

    def open_current(self, path):
        """The folder's file ``path`` opened for reading (never through a symlink) with its
        fstat, if it is still the regular file listed before the restore; else None."""
        listed = self.current.get(path)
        if listed is None or self._reader is None:
            return None
        parent, name = self._reader.parent_of(path)
        if parent is None:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), st

    def stage(self, entry, content, compare=True):
        listed = self.current.get(entry.path) if compare else None
        opened = self.open_current(entry.path) if listed is not None and same_meta(listed, entry) else None
        if opened is None:
            return self._write(entry, content)
        mine, st = opened
        with mine:
            if not same_meta(st, entry):
                return self._write(entry, content)
            matched = 0
            while True:
                chunk = content.read(CHUNK)
                if not chunk:
                    if matched == entry.size and not mine.read(1):
                        self.same[entry.path] = signature(st)  # identical: neither staged nor moved
                        return
                    return self._write(entry, content, mine, matched)
                if mine.read(len(chunk)) != chunk:
                    return self._write(entry, content, mine, matched, chunk)
                matched += len(chunk)

    def _write(self, entry, content, prefix_from=None, prefix=0, pending=b""):
        """Stage the entry: ``prefix`` bytes equal to the archive's read from ``prefix_from`` (a
        file compared that far), then ``pending`` and the rest of ``content``. With a worker
        ``behind``, the file is made and written by it while this thread reads (decompresses,
        checks) on: a file's creation costs as much as writing 100 KB."""
        staged = str(len(self.files))
        out = _StagedFile(self.fd, staged)
        run = self.behind.submit if self.behind is not None else (lambda step, *args: step(*args))
        if prefix_from is None and not pending and entry.size <= CHUNK:  # most files: one hand-over, not three
            data = content.read(CHUNK)
            more = content.read(CHUNK)
            if not more:
                if self.behind is None:
                    out.write_whole(data, entry)
                else:  # handed over with other small files: one hand-over for many
                    self._small.append((out, data, entry))
                    self._small_bytes += len(data)
                    if self._small_bytes >= CHUNK or len(self._small) >= SMALL_FILES_BATCH:
                        self._hand_small_files()
                self.files[entry.path] = staged
                return
            pending = data + more  # more than its size said (a member's reader never gives that)
        pieces = itertools.chain(_compared_prefix(entry, prefix_from, prefix), (pending,),
                                 iter(functools.partial(content.read, CHUNK), b""))
        run(out.open)
        try:
            for piece in pieces:  # fresh bytes each time: safe to hand over
                run(out.write, piece)
        except BaseException:
            with suppress(Exception):  # the worker's own failure is raised by written()
                run(out.abandon)  # the archive or the compared file failed: not left open
            raise
        run(out.finish, entry)
        self.files[entry.path] = staged

    def _hand_small_files(self):
        if self._small:
            batch, self._small, self._small_bytes = self._small, [], 0
            self.behind.submit(_write_small_files, batch)

    def hashes_as(self, entry):
        """True when the folder's file ``entry.path`` is the entry (its SHA-256 computed now,
        mode, owner, time); then it counts as found identical."""
        listed = self.current.get(entry.path)
        opened = self.open_current(entry.path) if listed is not None and same_meta(listed, entry) else None
        if opened is None:
            return False
        mine, st = opened
        with mine:
            if not same_meta(st, entry):
                return False
            digest = hashlib.sha256()
            while chunk := mine.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            return False
        self.same[entry.path] = signature(st)
        return True

    def check_same(self):
        """Raise :class:`ChangedMeanwhile` when a file found identical has changed since."""
        for path, sig in self.same.items():
            parent, name = self._reader.parent_of(path)
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False) if parent is not None else None
            except FileNotFoundError:
                st = None
            if st is None or signature(st) != sig:
                raise changed_meanwhile(path)

    def written(self):
        """Wait until every staged file is written; raise the first error writing one raised.
        Files staged after this (an undo's unchanged files, from another backup) are written here."""
        if self.behind is not None:
            self._hand_small_files()
            behind, self.behind = self.behind, None
            try:
                behind.close()
            finally:
                self.writer_cpu = behind.cpu

    def writer(self, root_fd, path):
        """A :class:`FolderWriter` that renames staged files into place instead of copying."""
        return _PlacingWriter(root_fd, path, self)


def _write_small_files(batch):
    for out, data, entry in batch:
        out.write_whole(data, entry)


def _compared_prefix(entry, prefix_from, prefix):
    """The first ``prefix`` bytes of the folder's file ``prefix_from``, found equal to the archive's."""
    for start in range(0, prefix, CHUNK):
        wanted = min(CHUNK, prefix - start)
        piece = os.pread(prefix_from.fileno(), wanted, start)
        if len(piece) != wanted:  # a regular file reads short only at its end
            raise changed_meanwhile(entry.path)  # shrunk while compared
        yield piece


class _StagedFile:
    """One staged file, written by the staging's worker: open, write..., finish (closed on any error).
    A bare file descriptor, no buffered file object: the pieces are large, and thousands of small
    files are made one after the other."""

    def __init__(self, dir_fd, name):
        self.dir_fd, self.name, self.fd = dir_fd, name, None

    def open(self):
        self.fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.dir_fd)

    def write(self, chunk):
        try:
            written = os.write(self.fd, chunk)
            if written < len(chunk):  # rare for a file (a signal, a full disk: then the next write raises)
                view = memoryview(chunk)[written:]
                while view:
                    view = view[os.write(self.fd, view):]
        except BaseException:
            self.abandon()
            raise

    def abandon(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def write_whole(self, data, entry):
        self.open()
        self.write(data)
        self.finish(entry)

    def finish(self, entry):
        try:
            start_writeback(self.fd)
            os.fchmod(self.fd, entry.mode)
            FolderWriter._own_fd(self.fd, entry)
            os.utime(self.fd, (entry.mtime, entry.mtime))
        finally:
            self.abandon()


class _PlacingWriter(FolderWriter):
    def __init__(self, root_fd, path, staging):
        super().__init__(root_fd, path)
        self.staging = staging

    def write_file(self, parent, name, entry, content):
        if entry.path in self.staging.same:  # identical already: left where it is
            if self.staging.same[entry.path][3] != entry.mtime * 10**9:  # only the time's fraction differs
                os.utime(name, ns=(entry.mtime * 10**9, entry.mtime * 10**9), dir_fd=parent, follow_symlinks=False)
            return
        staged = self.staging.files[entry.path]  # each file of a checked archive is staged or found identical
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
                current = {rel: st for rel, st, _, _ in source._walk() if stat.S_ISREG(st.st_mode)}
                staging = Staging(fd, name, root, source.path, current, worker)
                try:
                    yield staging
                finally:
                    staging.close()
        finally:
            if name in source.skip_paths:
                source.skip_paths.remove(name)
            with _time_kept(root):
                remove_at(root, name)
            os.close(fd)
    finally:
        os.close(root)


def check_and_stage(path, meta, staging, config, progress, only=None):
    """Read the archive file ``path`` (or a readable stream of it, e.g. a store's download: then
    nothing is spooled) once: check everything (as a restore's check does) while each file is
    written into ``staging`` (unless the folder holds it identical already); the manifest. With
    ``only`` (a set of paths), only those files are staged, never compared. Raises InvalidArchive
    on any fault (a stream's own errors, such as a store gone or a wrong key, are raised as they
    are)."""
    digest = hashlib.sha256()
    cpu_before = time.thread_time()
    with _opened(path) as raw, hashing_worker(ARCHIVE_HASH_DEPTH) as hasher:
        hashed = FeedingReader(raw, functools.partial(hasher.submit, digest.update))
        try:
            for entry, content in iter_archive(hashed, config.max_archive_bytes, progress,
                                               max_entries=config.max_entries,
                                               unchanged_files=meta.get("unchanged_files", 0)):
                if isinstance(entry, Manifest):  # the last item, always (or iter_archive raises)
                    manifest = entry
                elif entry.type == FILE and (only is None or entry.path in only):
                    staging.stage(entry, content, compare=only is None)  # reads the file here: its read errors come here
        except READ_ERRORS as exc:
            raise InvalidArchive(
                f"The archive is damaged or truncated ({exc or type(exc).__name__}). "
                "Nothing was changed; use another backup."
            ) from None
        while hashed.read(CHUNK):  # whatever follows the compressed stream (bounded)
            pass
        progress.add_thread_cpu("reading: zstd, tar, small files' SHA-256, comparing", time.thread_time() - cpu_before)
        progress.mark("waiting for the hashing thread")
    progress.add_thread_cpu("SHA-256 of the archive (thread)", hasher.cpu)
    progress.mark("waiting for the staged files' writer")
    staging.written()
    progress.add_thread_cpu("writing staged files (thread)", staging.writer_cpu)
    if meta.get("sha256") and digest.hexdigest() != meta["sha256"]:
        raise InvalidArchive(
            f"The archive of {meta['id']} does not match its recorded checksum: it was altered "
            "or damaged in the store."
        )
    return manifest


def _opened(archive):
    """The archive file ``archive`` opened, or the stream ``archive`` as it is (its owner closes it)."""
    return open(archive, "rb") if isinstance(archive, (str, bytes, os.PathLike)) else nullcontext(archive)
