"""The interface every store kind implements, and what core uses to write and read through it.

A store keeps ``data/<archive>`` (the compressed tar, ``<id>.tar.zst`` or ``.tar.gz``) and
``meta/<id>.json`` for each backup, plus small JSON state documents (the schedule, pending copies).
The metadata is the commit marker: written last, after the archive is complete and verified, so an
interrupted backup has none and is never listed. Kinds: :class:`~ailab_backup_ext.stores.folder.FolderStore`
(a folder of this machine), :class:`~ailab_backup_ext.stores.volume.VolumeStore` (a Docker volume),
:class:`~ailab_backup_ext.stores.s3.S3Store` (an S3 bucket prefix), and
:class:`~ailab_backup_ext.stores.mirror.MirroredStore` (a store plus a second copy elsewhere).
"""

from contextlib import contextmanager
from typing import Protocol, runtime_checkable

HERE, OFF = "here", "off the machine"


@runtime_checkable
class Store(Protocol):
    """What core needs from a place that keeps backups. Errors are :class:`BackupError`\\ s whose
    message says what went wrong and what to do; they never hold credentials."""

    kind: str  # "folder", "volume", "s3", "mirrored"

    @property
    def name(self) -> str:
        """A short human name: the folder path, the volume name, the ``s3://`` URL."""

    def describe(self) -> dict:
        """``{"type": kind, "name": name, ...}`` for status and listings; no secrets."""

    def read_all_meta(self) -> list:
        """Every metadata document found (unchecked: core keeps those :func:`meta_is_sound`)."""

    def spool(self, name):
        """A context manager giving a temporary local path (for an upload or a copy); deleted on
        leaving unless :meth:`commit` moved it away. Named with our pid, so a killed process's
        spool is found by :meth:`remove_stale_spools`."""

    def commit(self, spool_path, archive_name, meta) -> None:
        """Keep the archive file at ``spool_path`` as ``data/<archive_name>``, then write ``meta``
        (last: from then on the backup is listed)."""

    # optional: open_writer(archive_name) -> a context manager giving an ArchiveWriter that
    # streams into the store with no local copy (S3). Without it :func:`open_writer` spools.

    def open_archive(self, archive_name):
        """A context manager giving the stored archive as a readable stream (decrypted, for an
        encrypted store); :class:`NotFound` when this store does not hold it."""

    def local_path(self, archive_name):
        """The path of this machine holding the archive as it is stored, when there is one (a
        folder store), so that a restore reads it in place instead of copying it first; else None."""

    def remove(self, backup_id, archive_name) -> None:
        """Delete a backup: its metadata first (unlisted at once), then its archive."""

    def read_state(self, name):
        """A small JSON document kept beside the backups (e.g. ``schedule``), or None."""

    def write_state(self, name, data) -> None:
        """Replace the state document ``name`` with ``data`` (JSON-serialisable)."""

    def remove_stale_spools(self) -> int:
        """Remove what killed processes left (spools, unfinished uploads); return how many."""


class ArchiveWriter:
    """Where core writes a new archive: ``write(bytes)``, then ``commit(meta)`` once it is
    verified. Leaving the context without a commit discards everything written. ``sync`` says
    whether the writer is a local file that core's writer should fsync as it goes."""

    sync = False

    def write(self, data):
        raise NotImplementedError

    def commit(self, meta):
        raise NotImplementedError


class _SpoolingWriter(ArchiveWriter):
    """The writer of a store without a streaming one: a local spool file, committed whole."""

    def __init__(self, store, archive_name, path, file, sync):
        self.store, self.archive_name, self.path, self.file, self.sync = store, archive_name, path, file, sync
        self.committed = False  # pragma: no mutate (nothing reads it)

    def write(self, data):
        return self.file.write(data)

    def flush(self):
        self.file.flush()

    def fileno(self):
        return self.file.fileno()

    def commit(self, meta):
        self.file.close()
        self.store.commit(self.path, self.archive_name, meta)
        self.committed = True  # pragma: no mutate (nothing reads it)


@contextmanager
def open_writer(store, archive_name):
    """The :class:`ArchiveWriter` of ``store`` for a new archive: its own streaming one when it
    has one (S3: a multipart upload), else a spool file committed whole."""
    if hasattr(store, "open_writer"):
        with store.open_writer(archive_name) as writer:
            yield writer
        return
    from .folder import FolderStore  # the folder store's spool is the final file's neighbour

    with store.spool(archive_name) as path, open(path, "wb") as f:
        yield _SpoolingWriter(store, archive_name, path, f, sync=isinstance(store, FolderStore))


def location_of(store):
    """``here`` for a store on this machine (a folder, a Docker volume), else ``off the machine``."""
    return OFF if store.kind == "s3" else HERE
