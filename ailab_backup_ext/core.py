"""The core object: back up, list, verify, restore, delete, export and import.

Free of tornado and UI code. The server extension keeps one :class:`BackupManager` in
``web_app.settings``; the command line makes its own.
"""

import datetime
import errno
import functools
import hashlib
import os
import posixpath
import shutil
import stat
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext

from .archive import (
    ARCHIVE_HASH_DEPTH,
    CHUNK,
    DIR,
    FILE,
    FORMAT_VERSION,
    PARTIAL_FORMAT_VERSION,
    SUFFIXES,
    EntryChecker,
    FeedingReader,
    Manifest,
    Worker,
    hashing_worker,
    iter_archive,
    read_archive,
    utc_now,
    write_archive,
)
from .config import AILabBackup
from .docker_helper import DockerHelper, find_covering_mount, on_container_filesystem
from .errors import BackupError, Busy, Cancelled, InsufficientStorage, InvalidArchive, NotFound, Unavailable
from .jobs import JobRunner
from .plan import NOTEBOOK_DIFF_LIMIT, check_chosen_paths, make_plan, normalize_paths, notebook_comparison, scan, selected
from .progress import Progress
from . import release as releases
from .release_move import MOVE_MODE, ReleaseMoves
from .schedule import Scheduler
from .settings import Settings
from .staged_restore import check_and_stage, clear_staging, staging_in, sync_filesystem
from .changes import ChangeWatch
from .checker import config_values, run_in_child
from .usage import Usage, toggled_excludes
from .sources import DockerMountSource, LocalFolderSource, is_excluded
from .stores import (FolderStore, MirroredStore, S3Store, VolumeStore, check_id, is_s3_url, make_id,
                     meta_is_sound, open_writer)
from .stores.age import Encryption
from .worker.runner import NotRouted, WorkerRunner

DEFAULT_STORE_VOLUME = "ailab-backups"
MAX_RESTORED_LISTED = 2000  # restored files named in a restore's result
JOURNAL_ATTEMPTS, JOURNAL_PAUSE = 4, 0.5
# the settings a worker container needs (the rest is where things are, which it is told apart)
WORKER_SETTINGS = ("compression", "excludes", "max_archive_bytes", "max_upload_bytes", "max_compression_ratio",
                   "max_entries", "safety_backup")
RESTART_HINT = (
    "Restart the kernels of open notebooks that use the Secure Configuration Storage, so that "
    "they read the restored file."
)


def default_local_store():
    from jupyter_core.paths import jupyter_data_dir

    return os.path.join(jupyter_data_dir(), "ailab-backups")


def store_is_folder(spec):
    return "/" in spec or spec.startswith(("~", "."))


class BackupManager(ReleaseMoves):
    """One source (what is backed up) and one store (where backups are kept)."""

    # Long checks (uploads, local restore previews) in child processes (checker.py), so that they
    # never hold the interpreter of the server that runs this manager; the server turns it on.
    checks_in_child = False

    def __init__(self, config=None, root_dir=None):
        self.config = config or AILabBackup()
        self.root_dir = os.path.abspath(os.path.expanduser(root_dir or "~/notebooks"))
        self.docker = None
        if self.config.docker_url.lower() != "none":
            self.docker = DockerHelper(self.config.docker_url, self.config.helper_image, self.config.helper_cpus)
        self.worker = WorkerRunner(self.docker) if self.docker else None
        self._resolved = None
        self._settings_read = False
        self._busy = threading.Lock()
        self.jobs = JobRunner()
        self.scheduler = Scheduler(self)
        self.settings = Settings(self)  # the UIs' settings, kept beside the store
        self.revision = 0  # bumped on every change of the store made here
        self.changes = ChangeWatch(self)  # a token that tells UIs when to read again, cheaply
        self.usage_cache = Usage(self)  # what the folder holds, measured cheaply and cached

    def note_change(self):
        self.revision += 1

    # resolution ------------------------------------------------------------------------------

    def docker_version(self):
        """Docker's version, or None when it is disabled or unreachable."""
        if self.docker is None:
            return None
        try:
            return self.docker.version()
        except Unavailable:
            return None

    def resolve(self, refresh=False):
        """Find the source and the store once (or again with ``refresh``), and read the settings
        kept beside the store the first time."""
        places = self._places(refresh)
        if not self._settings_read:
            self._settings_read = True
            self.settings.load()  # its helper image serves every helper from now on
        return places

    def _places(self, refresh=False):
        """The source and the store, found once (or again with ``refresh``), without reading
        the settings kept beside the store (which needs a helper container in Docker)."""
        if self._resolved is None or refresh:
            source = self._find_source()
            store = self._find_store(source)
            if isinstance(store, FolderStore):
                # by real paths, devices and inodes, not by spelling: a store reached through a
                # symlink or a bind mount into the source would be backed up, and deleted by replace
                source.exclude_store(store.path)
            if isinstance(source, DockerMountSource) and isinstance(store, VolumeStore):
                if source.kind == "volume" and source.mount_name == store.volume:
                    raise BackupError("The store volume cannot be the volume it backs up. Set AILabBackup.store.")
            second = self._second_store()  # s3: AILabBackup.copy_to
            self._resolved = (source, MirroredStore(store, second) if second else store)
        return self._resolved

    @property
    def source(self):
        return self.resolve()[0]

    @property
    def store(self):
        return self.resolve()[1]

    def _require_docker(self, what):
        if self.docker is None:
            raise Unavailable(f"{what} needs Docker, but AILabBackup.docker_url is 'none'.")
        self.docker.version()  # raises Unavailable with a hint
        return self.docker

    def _find_source(self):
        cfg = self.config
        if cfg.source_dir:
            return LocalFolderSource(cfg.source_dir, "configured (source_dir)")
        if cfg.volume:
            docker = self._require_docker(f"The volume {cfg.volume!r}")
            return DockerMountSource(docker, "volume", cfg.volume, found_by="configured (volume)")
        if self.docker_version():
            own = self.docker.own_container()
            if own:
                mount, below = find_covering_mount(own.get("Mounts"), self.root_dir)
                if mount:
                    name = mount.get("Name") if mount.get("Type") == "volume" else mount.get("Source")
                    how = f"mount of this container at {mount['Destination']}"
                    source = DockerMountSource(self.docker, mount.get("Type"), name, below, how)
                    source.local_path = self.root_dir  # where this server sees it
                    return source
        return LocalFolderSource(self.root_dir, "Jupyter root directory")

    def _find_store(self, source):
        spec = self.config.store
        if is_s3_url(spec):
            return self._s3_store(spec)
        if spec and store_is_folder(spec):
            return FolderStore(spec)
        if spec:
            return VolumeStore(self._require_docker(f"The store volume {spec!r}"), spec)
        if isinstance(source, DockerMountSource):
            return VolumeStore(source.docker, DEFAULT_STORE_VOLUME)
        return FolderStore(default_local_store())

    # s3: the second store and encryption (see stores/) -----------------------------------------

    def encryption(self):
        cfg = self.config
        return Encryption(cfg.encryption, cfg.age_identity_file, cfg.age_recipients,
                          forbidden_dir=cfg.source_dir or self.root_dir)  # never inside the notebooks

    def _s3_store(self, spec):
        cfg = self.config
        return S3Store(spec, cfg.s3_endpoint_url, cfg.s3_region, cfg.s3_timeout, self.encryption())

    def _second_store(self):
        spec = self.config.copy_to
        if not spec:
            return None
        if is_s3_url(spec):
            return self._s3_store(spec)
        if store_is_folder(spec):
            return FolderStore(spec)
        return VolumeStore(self._require_docker(f"The copy_to volume {spec!r}"), spec)

    def _mirror(self):
        store = self.store
        if not isinstance(store, MirroredStore):
            raise BackupError("There is no second store to copy to: set AILabBackup.copy_to (e.g. "
                              "'s3://BUCKET/PREFIX').")
        return store

    def copy_backups(self, backup_ids=None):
        """Copy backups held here to the second store (all not there yet, when None)."""
        if backup_ids is not None:
            backup_ids = [check_id(i) for i in backup_ids]
        with self._busy_guard():
            result = self._mirror().copy_missing(backup_ids)
        if result["error"]:
            raise Unavailable(f"Copied {len(result['copied'])} backups; {len(result['pending'])} are pending "
                              f"(retried later): {result['error']}")
        return result

    def start_copy(self, backup_ids=None):
        mirror = self._mirror()  # no second store, an unknown id: answered now, not as a failed job
        for backup_id in backup_ids or ():
            if not mirror.held_by_primary(self.get_backup(backup_id)):
                raise NotFound(f"{backup_id} is not held in {mirror.primary.name} (only there is a copy "
                               "made from). It is kept off the machine already.")
        return self.jobs.start("copy", lambda progress: self.copy_backups(backup_ids))

    def retry_copies(self):
        """Copy the pending backups, unless a backup or restore runs (then: at the next try)."""
        if not isinstance(self.store, MirroredStore) or not self._busy.acquire(blocking=False):
            return None
        try:
            with self._one_operation():
                return self.store.copy_pending() if self.store.retry_due() else None
        finally:
            self._busy.release()

    def generate_key(self):
        """Make the age key that encrypts S3 copies; the answer holds the private key, once."""
        return self.encryption().generate()

    # the worker: operations run next to the data (see worker.runner) ---------------------------

    def worker_status(self):
        """{"in_use": bool, "why": ...}: whether backups and restores run in a worker container."""
        if self.worker is None:
            return {"in_use": False, "why": "Docker is not used (AILabBackup.docker_url is 'none')"}
        try:
            source, store = self.resolve()
            return self.worker.describe(source, store)
        except Exception as exc:  # noqa: BLE001 - status answers whatever Docker does
            return {"in_use": False, "why": f"undecided: {exc}"}

    def _in_worker(self, op, progress, write_source=False, **params):
        """Run ``op`` in a worker container; raises NotRouted when none can run it here."""
        if self.worker is None:
            raise NotRouted("no Docker")
        source, store = self._places()
        if self.docker_version() is None:  # a folder store is read here; a volume then says why not
            raise NotRouted("Docker is not reachable")
        with self._worker_first(op, write_source):
            source, store = self.resolve()
            config = {name: getattr(self.config, name) for name in WORKER_SETTINGS}
            config["excludes"] = self.settings.excludes  # a setting made in a UI wins, as in-process
            if op != "verify":  # the worker cannot see this server's container nor its defaults folder
                params["release"] = self.running_release()
            result = self.worker.run(op, source, store, config, progress, params, write_source=write_source)
        if op in ("backup", "restore", "release_move"):  # a new backup (a restore's safety backup too) for the UIs
            self.note_change()
        return result

    @contextmanager
    def _worker_first(self, op, write_source=False):
        """An operation whose command line's worker container for ``op`` is made first, so that
        what is read from the store before the job (the settings, a listing) goes through it: one
        container for the whole command (see WorkerRunner.made_first)."""
        with self._one_operation():
            if self.worker is None:
                yield
                return
            with self.worker.made_first(op, *self._places(), write_source):
                yield

    @property
    def mode(self):
        return "docker" if isinstance(self.source, DockerMountSource) else "local"

    def status(self):
        """What is backed up and where, whether Docker is reachable, and a hint when not right."""
        version = self.docker_version()
        result = {
            "mode": None,
            "source": None,
            "store": None,
            "docker": {"reachable": version is not None, "version": version,
                       "url": self.config.docker_url or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")},
            "hint": None,
            "store_warning": None,
        }
        if self.docker is None:
            result["docker"]["url"] = "none"
        active = self.jobs.active
        result["job"] = active.to_json() if active else None
        result["worker"] = None
        result["release"] = None
        try:
            result["schedule"] = self.scheduler.describe()
        except Exception as exc:  # noqa: BLE001 - the schedule never makes status fail
            result["schedule"] = None
            result["hint"] = result["hint"] or str(exc)
        try:
            source, store = self.resolve(refresh=True)
            result.update(mode=self.mode, source=source.describe(), store=store.describe())
            result["store_warning"] = self.store_warning()
            source.check_exists()
            if isinstance(source, DockerMountSource) or isinstance(getattr(store, "primary", store), VolumeStore):
                self.docker.image()
            result["worker"] = self.worker_status()
            result["release"] = self.release_status()
        except BackupError as exc:
            result["hint"] = str(exc)
        if result["hint"] is None and version is None and self.docker is not None:
            result["hint"] = (
                "Docker is not reachable, so the notebooks folder of this server is backed up "
                "directly. That is right for the VM editions; in the Docker edition, start AI-Lab "
                "with '--volume /var/run/docker.sock:/var/run/docker.sock' to back up the volume."
            )
        return result

    def store_warning(self):
        """What the user must know when the backups are kept on this container's own filesystem
        (not on a volume or bind mount): removing the container deletes them. None otherwise."""
        store = self.store
        if not isinstance(store, FolderStore) or not on_container_filesystem(store.path):
            return None
        return (
            f"Backups are kept inside this container, in {store.path}, not on a volume: 'docker rm' "
            "of the container (as AI-Lab's guide has you do when you replace the notebooks volume) "
            "deletes them all. Download the backups you want to keep, or start AI-Lab with "
            "'--volume /var/run/docker.sock:/var/run/docker.sock' so that backups go to the Docker "
            f"volume '{DEFAULT_STORE_VOLUME}', which survives the container."
        )

    # what the folder holds (see usage) ---------------------------------------------------------

    def usage(self, refresh=False):
        """Size and file count of each top-level folder, which ones the excludes leave out, and an
        estimate of the next backup (cached; ``refresh`` measures again)."""
        return self.usage_cache.get(refresh)

    def set_folder_excluded(self, name, excluded):
        """Leave the top-level folder ``name`` out of backups (or back it up again): the excludes
        kept beside the store, as the settings keep them. Returns the new usage."""
        self.settings.set({"excludes": toggled_excludes(self.settings.excludes, name, excluded)})
        return self.usage()

    # reading the store -----------------------------------------------------------------------

    def list_backups(self):
        return _newest_first(self.store.read_all_meta())

    def get_backup(self, backup_id):
        check_id(backup_id)
        for meta in self.list_backups():
            if meta["id"] == backup_id:
                return meta
        raise NotFound(f"No backup has the id {backup_id!r}. List the backups to see their ids.")

    def delete_backup(self, backup_id, where=None):
        """Delete a backup; with a second store, ``where`` ('here' or 'off the machine') deletes
        only that copy."""
        meta = self.get_backup(backup_id)
        if where is None:
            needing = [m["id"] for m in self.list_backups() if backup_id in (m.get("bases") or ())]
            if needing:  # a partial safety backup lists files as unchanged, held by this one
                raise BackupError(
                    f"The backup {backup_id} holds files that the safety backup {needing[0]} lists as "
                    "unchanged: undoing that restore needs them. Delete that safety backup first if the "
                    "restore no longer needs undoing. Nothing was deleted.")
            self.store.remove(backup_id, meta["archive"])
        elif where not in ("here", "off the machine", "off") or not isinstance(self.store, MirroredStore):
            raise BackupError(f"Unknown place {where!r}: 'here' or 'off' (with AILabBackup.copy_to set).")
        else:
            self.store.remove(backup_id, meta["archive"], "off the machine" if where == "off" else where)
        self.note_change()

    def _checked(self, path, meta=None, progress=None, max_ratio=0, cancel=None):
        """Read an archive file through and check everything; return its manifest and SHA-256."""
        with open(path, "rb") as f:
            return self._check_stream(f, meta, progress, max_ratio, cancel)

    def _check_stream(self, raw, meta=None, progress=None, max_ratio=0, cancel=None):
        digest = hashlib.sha256()
        with hashing_worker(ARCHIVE_HASH_DEPTH) as hasher:  # the archive's own hash, in a thread of its own
            hashed = FeedingReader(raw, functools.partial(hasher.submit, digest.update))
            manifest = read_archive(hashed, self.config.max_archive_bytes, progress, max_ratio,
                                    max_entries=self.config.max_entries, cancel=cancel,
                                    unchanged_files=(meta or {}).get("unchanged_files", 0))
            while hashed.read(CHUNK):  # whatever follows the compressed stream (compressed: bounded)
                pass
        digest = digest.hexdigest()
        if meta is not None and meta.get("sha256") and digest != meta["sha256"]:
            raise InvalidArchive(
                f"The archive of {meta['id']} does not match its recorded checksum: it was altered "
                "or damaged in the store."
            )
        return manifest, digest

    @contextmanager
    def _checked_copy(self, meta, progress=None):
        """The stored archive as a file of this machine, checked completely on the way, in one
        pass: the stored file itself in a folder store; from a volume, a copy made while checking."""
        path = self.store.local_path(meta["archive"])
        if path:
            yield path, self._checked(path, meta, progress)[0]
            return
        with self.store.spool(meta["archive"]) as spool:
            with open(spool, "wb") as out, self.store.open_archive(meta["archive"]) as src, \
                    Worker("ailab-backup-spool") as writer:  # the copy is written in a thread
                copying = FeedingReader(src, functools.partial(writer.submit, out.write))
                manifest, _ = self._check_stream(copying, meta, progress)
            yield spool, manifest

    def _checked_stored(self, meta, progress=None):
        """The stored archive read once and checked completely, nothing spooled: its manifest."""
        path = self.store.local_path(meta["archive"])
        if path:
            return self._checked(path, meta, progress)[0]
        with self.store.open_archive(meta["archive"]) as src:
            return self._check_stream(src, meta, progress)[0]

    def verify_backup(self, backup_id, progress=None):
        """Re-read a stored backup and check every entry against its manifest."""
        with self._one_operation():
            progress = progress or Progress()
            try:  # the worker lists the store itself: no listing here first
                return self._in_worker("verify", progress, backup_id=backup_id)
            except NotRouted:
                pass
            meta = self.get_backup(backup_id)
            progress.start("verifying", meta.get("total_bytes", 0), meta.get("file_count", 0))
            manifest = self._checked_stored(meta, progress)
        return {"id": backup_id, "ok": True, "files": manifest.file_count, "bytes": manifest.total_bytes}

    # backing up ------------------------------------------------------------------------------

    @contextmanager
    def _busy_guard(self):
        if not self._busy.acquire(blocking=False):
            raise Busy("A backup or restore of this source is already running. Wait for it to end.")
        try:
            with self._one_operation():
                yield
        finally:
            self._busy.release()

    @contextmanager
    def _one_operation(self):
        """Helper containers with the same mounts are shared until the operation ends."""
        with self.docker.session() if self.docker else nullcontext():
            yield

    def _safe_entries(self, entries, skipped, excludes):
        """What a source holds, minus what is excluded or cannot be restored safely (recorded in
        ``skipped``), checked by the same rules a restore applies."""
        checker = EntryChecker()
        refused_folders = set()  # listed once: what they hold is left out with them
        for entry, content in entries:
            if is_excluded(entry.path, excludes):
                continue
            if posixpath.dirname(entry.path) in refused_folders:  # a folder comes before its content
                if entry.type == DIR:
                    refused_folders.add(entry.path)
                continue
            if entry.mode & (stat.S_ISUID | stat.S_ISGID):
                entry.mode &= ~(stat.S_ISUID | stat.S_ISGID)
                skipped.append({"path": entry.path, "reason": "setuid/setgid bit dropped"})
            try:
                checker.check(entry)
            except InvalidArchive as exc:  # a fifo, a link out, a name not UTF-8 or too long: restore refuses it
                reason = str(exc)
                if entry.type == DIR:
                    refused_folders.add(entry.path)
                    reason += " Everything in the folder is left out with it."
                skipped.append({"path": entry.path, "reason": reason})
                continue
            yield entry, content

    def _estimate(self, newest):
        size, files = self.source.estimate()
        if not size and newest:  # Docker: the last backup's size is the best guess, and free
            size, files = newest.get("total_bytes", 0), newest.get("file_count", 0)
        return size, files

    def create_backup(self, label="", kind="manual", progress=None, skip_unchanged=False):
        """Back up the source into the store; return the new backup's metadata. With
        ``skip_unchanged``, a backup whose content equals the newest backup of the same source is
        not kept: the result is ``{"skipped": True, "same_as": id}``."""
        with self._busy_guard():
            meta = self._create(label, kind, progress or Progress(), skip_unchanged)
            if meta.get("skipped"):
                return meta
            if self.config.prune_after_backup and self.settings.keep_last:
                self._prune(self.settings.keep_last)
            return meta

    def start_backup(self, label=""):
        """Start a backup as a job (see :class:`JobRunner`); returns the job at once."""
        return self.jobs.start("backup", lambda progress: self.create_backup(label, progress=progress))

    def start_restore(self, backup_id, mode="merge", paths=None):
        if mode == MOVE_MODE:
            _no_paths_with_move(paths)
            return self.start_release_move(backup_id)
        _check_mode(mode)
        check_chosen_paths(paths)  # a bad path too (a 400), not a failed job
        self.get_backup(backup_id)  # an unknown id is answered now, not as a failed job
        return self.jobs.start("restore", lambda progress: self.restore_backup(backup_id, mode, progress, paths))

    def start_undo(self):
        self.last_safety_backup()  # nothing to undo is answered now
        return self.jobs.start("undo", lambda progress: self.undo_last_restore(progress))

    def _create(self, label, kind, progress, skip_unchanged=False, unchanged=None):
        """A backup that never holds a torn SQLite copy: if a database was caught mid-write
        (its ``-journal`` beside it), the backup is taken again, a few times at most.
        ``unchanged`` (a one-pass restore's safety backup): {path: (Entry, signature, id of the
        backup holding it, its archive's SHA-256)} of files left out of the archive and listed as
        unchanged, provided each is still as it was when found identical."""
        if unchanged is None:
            try:
                return self._in_worker("backup", progress, label=label, kind=kind, skip_unchanged=skip_unchanged)
            except NotRouted:
                pass
        for attempt in range(JOURNAL_ATTEMPTS):
            try:
                meta = self._create_once(label, kind, progress, skip_unchanged, unchanged)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise BackupError(
                        f"The disk is full ({exc.filename or 'the store'}): the backup was not kept. "
                        "Free space, delete old backups (or set AILabBackup.keep_last), or set "
                        "AILabBackup.store to a larger place."
                    ) from None
                raise
            if meta is not None:
                return meta
            time.sleep(JOURNAL_PAUSE * (attempt + 1))
        raise BackupError(
            "The Secure Configuration Storage (or another SQLite database) was being written during "
            "every attempt (its -journal file was present). Close notebooks that write to it, then "
            "back up again."
        )

    def _create_once(self, label, kind, progress, skip_unchanged=False, unchanged=None):
        source, store = self.resolve()
        backups = self.list_backups()
        newest = next((m for m in backups if m.get("source") == source.describe()), None)
        source.check_exists()
        if isinstance(source, LocalFolderSource):
            clear_staging(source)  # a one-pass restore's staging folder is never backed up
        created = utc_now()
        backup_id = self._unique_id(make_id(source.slug, created), backups)
        manifest = Manifest(created=created.isoformat().replace("+00:00", "Z"), source=source.describe(), label=label,
                            release=releases.known(self.running_release()))
        archive_name = backup_id + SUFFIXES[self.config.compression]
        total_bytes, total_files = self._estimate(newest)
        with open_writer(store, archive_name) as out:  # s3: a stream into the store (S3: no spool)
            progress.start("backing up", total_bytes, total_files)
            excludes = self.settings.excludes
            with source.read_entries() as entries:
                safe = self._safe_entries(entries, manifest.skipped, excludes)
                if unchanged:
                    safe = _leaving_out(safe, unchanged, manifest)
                size, digest = write_archive(out, safe, manifest, self.config.compression, progress,
                                             sync=out.sync)  # a folder store's file: fsynced on commit
            paths = {e.path for e in manifest.entries} | {e.path for e, _ in manifest.unchanged}
            if any(p.endswith("-journal") and p[: -len("-journal")] in paths for p in paths):
                return None  # a database was mid-write: try again
            digest_of_content = manifest.content_digest()
            if skip_unchanged and newest and newest.get("content_digest") == digest_of_content:
                progress.complete(manifest.total_bytes, manifest.file_count)
                return {"skipped": True, "same_as": newest["id"]}
            meta = {
                "id": backup_id,
                "created": manifest.created,
                "label": label,
                "kind": kind,
                "source": source.describe(),
                "size_bytes": size,
                "file_count": manifest.file_count,
                "total_bytes": manifest.total_bytes,
                "compression": self.config.compression,
                "archive": archive_name,
                "sha256": digest,
                "format_version": PARTIAL_FORMAT_VERSION if manifest.unchanged else FORMAT_VERSION,
                "skipped": manifest.skipped,
                "excludes": excludes,  # what it left out on purpose (the listing shows it)
                "content_digest": digest_of_content,
                "release": releases.summary(manifest.release_record()),
            }
            if manifest.unchanged:  # the files left out are in these backups (kept by prune)
                meta.update(unchanged_files=len(manifest.unchanged), bases=dict(manifest.bases))
            progress.start("storing", size, 1)
            out.commit(meta)
            self.note_change()
        progress.complete(manifest.total_bytes, manifest.file_count)
        return meta

    def _unique_id(self, base, backups=None):
        # base, base-2, base-3 ... for backups of one second; never below one still there, so a
        # newer backup never sorts (and is pruned) as older
        numbers = [_number_in_second(i) for m in (self.list_backups() if backups is None else backups)
                   if (i := str(m.get("id"))) == base or i.rpartition("-")[0] == base]
        return f"{base}-{max(numbers) + 1}" if numbers else base

    # restoring -------------------------------------------------------------------------------

    def restore_backup(self, backup_id, mode="merge", progress=None, paths=None):
        """Restore a backup (or the chosen ``paths`` of it) into the source. ``merge`` overwrites
        files from the backup and keeps the others (the seed recipe's behaviour); ``replace``
        makes the folder (or the chosen paths) exactly as in the backup. The archive is checked
        completely, then a safety backup of the current state is taken (for undo), and only then
        is anything changed. ``release-move``: see :meth:`release_move`."""
        if mode == MOVE_MODE:
            _no_paths_with_move(paths)
            return self.release_move(backup_id, progress)
        _check_mode(mode)
        with self._one_operation():
            result = self._restore(backup_id, mode, progress, paths)
        self.note_change()  # the folder changed: UIs and the usage cache look again
        return {**result, "restored": self._restored_documents(result)}

    def _jupyter_prefix(self):
        """Where the source lies below Jupyter's root folder ('' when it is the root), or None
        when Jupyter does not show it (then no open document can be a restored file)."""
        source = self.source
        folder = source.path if isinstance(source, LocalFolderSource) else getattr(source, "local_path", None)
        if not folder:
            return None
        rel = os.path.relpath(os.path.realpath(folder), os.path.realpath(self.root_dir))
        if rel == ".":
            return ""
        return None if rel == ".." or rel.startswith("../") else rel + "/"

    def _restored_documents(self, result):
        """The restored files as Jupyter's contents paths, for the front end to reload the open
        documents among them: {"paths", "complete" (False: only the first MAX_RESTORED_LISTED are
        named), "within" (the restored scope), "scs" (the SCS was restored)}; None when Jupyter does
        not show the source."""
        files = result.pop("restored_files", None) or []
        complete = result.pop("restored_files_complete", True)
        prefix = self._jupyter_prefix()
        if prefix is None:
            return None
        return {"paths": [prefix + p for p in files], "complete": complete,
                "within": [prefix + p for p in result.get("paths") or []] or [prefix.rstrip("/")],
                "scs": bool(result.get("hint"))}

    def _restore(self, backup_id, mode, progress, paths):
        progress = progress or Progress()
        try:  # the worker lists the store itself: no listing here first
            with self._busy_guard():
                return self._in_worker("restore", progress, write_source=True, backup_id=backup_id, mode=mode,
                                       paths=paths)
        except NotRouted:
            pass
        meta = self.get_backup(backup_id)
        with self._busy_guard():
            source = self.source
            source.check_exists()
            progress.start("checking", meta.get("total_bytes", 0), meta.get("file_count", 0))
            with self._checked_and_staged(meta, source, paths, progress) as (path, manifest, staging):
                everything = manifest.entries + [e for e, _ in manifest.unchanged]
                chosen = normalize_paths(paths, {e.path for e in everything})
                restored = selected(everything, chosen)
                total = sum(e.size for e in restored if e.type == FILE)
                unchanged = None
                if staging is None:
                    source.check_space(total)
                    restored = self._unchanged_in_place(source, manifest, restored)
                else:
                    unchanged = self._stage_unchanged(meta, manifest, staging, progress)
                safety = None
                if self.config.safety_backup:
                    safety = self._create(f"Before restoring {backup_id}", "safety", progress, unchanged=unchanged)
                if staging is not None:
                    staging.check_same()  # nothing found identical changed since: only then does anything move
                    if staging.files:  # the staged files on disk before any rename names them
                        progress.mark("syncfs")
                        sync_filesystem(staging.fd)
                wanted = {e.path for e in restored}
                progress.start("restoring", total, sum(1 for e in restored if e.type == FILE))
                with open(path, "rb") if staging is None else nullcontext() as f:
                    if staging is None:  # checked completely above: read it through once more
                        items = _data_only(iter_archive(f, self.config.max_archive_bytes, progress,
                                                        check_content=False))
                    else:  # checked and written into the staging folder: renamed into place
                        source.writer = staging.writer
                        items = progress.counting((e, None) for e in restored)
                    try:
                        source.write_entries(
                            ((e, c) for e, c in items if e.path in wanted),
                            replace=(mode == "replace"),
                            keep={e.path: e for e in restored},
                            protected=self.settings.excludes,
                            scope=chosen,
                        )
                    finally:
                        source.__dict__.pop("writer", None)
        files = [e for e in restored if e.type == FILE]
        progress.complete(sum(e.size for e in files), len(files))
        touches_scs = any(e.path.endswith(".sqlite") for e in files)
        return {
            "backup_id": backup_id,
            "mode": mode,
            "paths": chosen,
            "file_count": len(files),
            "total_bytes": sum(e.size for e in files),
            "safety_backup_id": safety["id"] if safety else None,
            "hint": RESTART_HINT if touches_scs else None,
            # named for the open documents to reload (see _restored_documents); capped, a job's result stays small
            "restored_files": [e.path for e in files[:MAX_RESTORED_LISTED]],
            "restored_files_complete": len(files) <= MAX_RESTORED_LISTED,
        }

    def _stage_unchanged(self, meta, manifest, staging, progress):
        """After a one-pass check: the files a partial backup lists as unchanged that the folder
        does not hold as listed (SHA-256 computed) staged from the backups holding them (each
        checked completely); what the safety backup may leave out ({path: (Entry, signature,
        holder's id, holder's archive SHA-256)}: the files found identical)."""
        needed = {}
        for entry, held_by in manifest.unchanged:
            if not staging.hashes_as(entry):
                needed.setdefault(held_by, {})[entry.path] = entry
        for held_by, entries in needed.items():
            try:
                base = self.get_backup(held_by)
            except NotFound:
                raise BackupError(
                    f"This backup holds only what its restore changed; {len(entries)} other files (e.g. "
                    f"{sorted(entries)[0]!r}) differ now and are in backup {held_by}, which was deleted. "
                    "Nothing was changed."
                ) from None
            if base.get("sha256") != manifest.bases.get(held_by):
                raise BackupError(f"Backup {held_by}, which holds files of this one, is not the one it was made "
                                  "with. Nothing was changed.")
            with self._archive_to_read(base) as archive:
                found = check_and_stage(archive, base, staging, self.config, progress, only=set(entries))
            held = {e.path: e for e in found.entries}
            for p, entry in entries.items():
                if p not in held or not held[p].same_as(entry) or p not in staging.files:
                    raise InvalidArchive(f"Backup {held_by} does not hold {p!r} as this backup lists it. "
                                         "Nothing was changed.")
        holders = {e.path: held_by for e, held_by in manifest.unchanged}
        entries = {e.path: e for e in manifest.entries} | {e.path: e for e, _ in manifest.unchanged}
        unchanged = {}
        for p, sig in staging.same.items():
            held_by = holders.get(p, meta["id"])
            unchanged[p] = (entries[p], sig, held_by, manifest.bases.get(held_by, meta.get("sha256")))
        return unchanged if all(u[3] for u in unchanged.values()) else None

    def _unchanged_in_place(self, source, manifest, restored):
        """A restore that is not one pass (chosen paths, or through Docker) of a partial backup:
        each file it lists as unchanged, within the restored paths, must be in the folder as
        listed (SHA-256 computed); it is kept, not written. Else nothing is changed."""
        unchanged = {e.path: e for e, _ in manifest.unchanged}
        wanted = {e.path for e in restored} & set(unchanged)
        if not wanted:
            return restored
        found = set()
        with source.read_entries() as entries:
            for entry, content in entries:
                if entry.path not in wanted or entry.type != FILE:
                    continue
                digest = hashlib.sha256()
                while chunk := content.read(CHUNK):
                    digest.update(chunk)
                entry.sha256 = digest.hexdigest()
                if entry.same_as(unchanged[entry.path]):
                    found.add(entry.path)
        if found != wanted:
            missing = sorted(wanted - found)
            raise BackupError(
                f"This backup holds only what its restore changed; {len(missing)} other files it lists (e.g. "
                f"{missing[0]!r}) differ now and are in backup {dict((e.path, h) for e, h in manifest.unchanged)[missing[0]]}. "
                "Restore the whole backup, with no paths chosen, from a folder or volume store. Nothing was changed."
            )
        return restored

    @contextmanager
    def _checked_and_staged(self, meta, source, paths, progress):
        """(archive file or None, manifest, staging or None): a whole restore of a folder of this
        process is checked and staged in one read (see staged_restore), of the archive file when
        the store has one here, else of the store's stream (S3: the ranged download, decrypted,
        with no spool); other restores are checked here and read again to write."""
        if paths is not None or not isinstance(source, LocalFolderSource):
            with self._checked_copy(meta, progress) as (path, manifest):
                yield path, manifest, None
            return
        source.check_space(meta.get("total_bytes", 0))  # all of it is staged before any file moves
        with staging_in(source) as staging:
            with self._archive_to_read(meta) as archive:  # a stream is closed before the files move
                manifest = check_and_stage(archive, meta, staging, self.config, progress)
            yield (archive if isinstance(archive, str) else None), manifest, staging  # the file, not a closed stream

    def _archive_to_read(self, meta):
        """The archive of ``meta`` to read once: its file when the store has one here, else the
        store's stream (S3's ranged download, a store volume's helper), with no spool."""
        path = self.store.local_path(meta["archive"])
        return nullcontext(path) if path else self.store.open_archive(meta["archive"])

    def plan_restore(self, backup_id, mode="merge", paths=None, progress=None, cancel=None):
        """A dry run: what restoring would add, overwrite (with a cell summary for notebooks),
        remove (replace only) and leave unchanged. Changes nothing. ``cancel`` (an Event) set by
        a client that went away stops it when it runs in a child process. ``release-move``: see
        :meth:`plan_release_move`."""
        if progress is None and cancel is not None:  # here or in a worker: it stops at its next progress
            progress = Progress(on_change=lambda _p: cancel.is_set() and _preview_abandoned())
        if mode == MOVE_MODE:
            _no_paths_with_move(paths)
            return self.plan_release_move(backup_id, progress)
        _check_mode(mode)
        with self._one_operation():
            source, store = self._places()  # the settings are read with the worker, if one runs it
            if self.checks_in_child and type(source) is LocalFolderSource and type(store) is FolderStore:
                # as resolved here, so that the child reads the very folder and store
                settings = {**config_values(self.config), "source_dir": source.path, "store": store.path}
                return run_in_child("plan", {"backup_id": backup_id, "mode": mode, "paths": paths}, settings,
                                    self.root_dir, cancel, "restore preview")
            return self._plan(backup_id, mode, paths, progress)

    def _plan(self, backup_id, mode, paths, progress):
        progress = progress or Progress()
        try:  # the worker lists the store itself: no listing here first
            return self._in_worker("plan", progress, backup_id=backup_id, mode=mode, paths=paths)
        except NotRouted:
            pass
        meta = self.get_backup(backup_id)
        source = self.source
        source.check_exists()
        with self._checked_copy(meta, progress) as (path, manifest):
            backup = {e.path: e for e in manifest.entries} | {e.path: e for e, _ in manifest.unchanged}
            chosen = normalize_paths(paths, set(backup))
            progress.start("comparing", meta.get("total_bytes", 0), meta.get("file_count", 0))
            with source.read_entries() as entries:
                current = scan(progress.counting(entries), lambda p: p.endswith(".ipynb"))
            everything = manifest.entries + [e for e, _ in manifest.unchanged]
            plan = make_plan(everything, current, mode, chosen, self.settings.excludes, source.skip_paths)
            notebooks = {item["path"]: item for item in plan["overwritten"] if item["path"].endswith(".ipynb")}
            if notebooks:
                with open(path, "rb") as f:
                    for entry, content in _data_only(iter_archive(f, check_content=False)):
                        if entry.path in notebooks and current[entry.path][0].type == FILE:
                            # never more than the limit of either side in memory
                            restored = content.read(NOTEBOOK_DIFF_LIMIT + 1) if entry.size <= NOTEBOOK_DIFF_LIMIT else None
                            notebooks[entry.path].update(notebook_comparison(current[entry.path][1], restored))
        return {"backup_id": backup_id, "mode": mode, "paths": chosen, **plan}

    def last_safety_backup(self):
        for meta in self.list_backups():
            if meta.get("kind") == "safety":
                return meta
        raise NotFound("There is no restore to undo: no safety backup was found.")

    def undo_last_restore(self, progress=None):
        """Bring back the state before the last restore: its safety backup, restored with replace.
        (That restore takes a safety backup too, so an undo can itself be undone.)"""
        with self._worker_first("restore", write_source=True):  # the listing, then the restore: one container
            meta = self.last_safety_backup()
            result = self.restore_backup(meta["id"], "replace", progress)
        return {**result, "undone": meta["id"]}

    def prune(self, keep=None):
        """Delete all but the ``keep`` newest backups (default: keep_last); the newest safety
        backup always stays. Returns the ids deleted."""
        with self._busy_guard():
            return self._prune(self.settings.keep_last if keep is None else keep)

    def _prune(self, keep):
        if keep <= 0:
            return []
        doomed = []
        for store in getattr(self.store, "stores", [self.store]):  # s3: retention in each store
            backups = _newest_first(store.read_all_meta())
            newest_safety = next((m for m in backups if m.get("kind") == "safety"), None)
            # the newest safety backup, and the backups holding the files it lists as unchanged
            kept = {newest_safety["id"], *(newest_safety.get("bases") or ())} if newest_safety else set()
            for meta in backups[keep:]:
                if meta["id"] not in kept:
                    store.remove(meta["id"], meta["archive"])
                    doomed.append(meta["id"])
        if doomed:
            self.note_change()
        return list(dict.fromkeys(doomed))

    # plain folders, as the seed recipes -------------------------------------------------------

    def export_dir(self, directory, progress=None):
        """Copy the source to ``directory/notebooks``, as ``docker cp C:/notebooks DIR`` does."""
        progress = progress or Progress()
        target = LocalFolderSource(os.path.join(directory, "notebooks"))
        with self._busy_guard():
            self.source.check_exists()
            progress.start("exporting", *self.source.estimate())
            skipped = []
            with self.source.read_entries() as entries:
                target.write_entries(progress.counting(self._safe_entries(entries, skipped, ())))
        return {"directory": target.path, "skipped": skipped}

    def import_dir(self, directory, mode="merge", progress=None):
        """Copy ``directory/notebooks`` into the source, as ``docker cp DIR/notebooks C:/`` does.
        Everything is checked before anything is written. ``docker cp`` does not keep owners, so
        imported files take the owner of the notebooks folder they land in: AI-Lab's user can
        edit them afterwards."""
        folder = LocalFolderSource(os.path.join(directory, "notebooks"))
        folder.check_exists()
        progress = progress or Progress()
        checker = EntryChecker(self.config.max_archive_bytes)
        keep = {}
        for entry in folder.list_entries():
            checker.check(entry)
            keep[entry.path] = entry
        with self._busy_guard():
            source = self.source
            source.check_exists()
            uid, gid = source.root_owner()
            for entry in keep.values():
                entry.uid, entry.gid = uid, gid
            progress.start("importing", checker.total, len(keep))
            with folder.read_entries() as entries:
                owned = ((keep.get(e.path, e), c) for e, c in entries)
                source.write_entries(
                    progress.counting(owned), replace=(mode == "replace"), keep=keep,
                    protected=self.settings.excludes,
                )
        return {"directory": folder.path, "mode": mode, "entries": len(keep)}

    # uploads ---------------------------------------------------------------------------------

    def add_archive_file(self, path):
        """Add an archive file of this machine to the store (a copy), checked like an upload."""
        if not os.path.isfile(path):
            raise NotFound(f"There is no file {path!r}.")
        with self.upload_spool() as spool:
            shutil.copyfile(path, spool)
            return self.add_uploaded(spool)

    def upload_spool(self):
        """A context manager giving a temporary path to receive an uploaded archive in."""
        return self.store.spool(f"upload-{uuid.uuid4().hex}")

    def check_upload_space(self, length):
        """Refuse an upload of ``length`` bytes (its Content-Length) that the place its spool is
        written to cannot hold, before a byte of it is received."""
        with self.upload_spool() as spool:
            free = shutil.disk_usage(os.path.dirname(spool)).free
        if length + UPLOAD_SPACE_MARGIN > free:
            raise InsufficientStorage(
                f"The upload needs {length // 2**20} MB but only {free // 2**20} MB are free where "
                f"it is received ({os.path.dirname(spool)}). Free space or delete old backups, then "
                "upload again."
            )

    def add_uploaded(self, path, cancel=None):
        """Check an uploaded archive completely and add it to the store; return its metadata.
        ``cancel`` (an Event) set by a client that went away stops the check."""
        path = os.path.abspath(path)
        if self.checks_in_child:
            found = run_in_child("check_upload", {"path": path}, config_values(self.config), self.root_dir, cancel,
                                 "check of the upload")
        else:
            found = self.check_upload_file(path, cancel)
        with _UPLOAD_COMMIT:  # checks run side by side: two of the same archive must not share an id
            if cancel is not None and cancel.is_set():
                raise Cancelled("The upload's client went away before it was stored; nothing was kept.")
            return self._store_uploaded(path, found)

    def check_upload_file(self, path, cancel=None):
        """Check an uploaded archive file completely; what it may carry into the store (capped)."""
        # an upload is untrusted: it also meets the compression-ratio limit (our own backups do
        # not, so that a big file of zeros never makes a backup unrestorable)
        manifest, digest = self._checked(path, max_ratio=self.config.max_compression_ratio, cancel=cancel)
        if manifest.unchanged:
            raise InvalidArchive(
                "This archive is a safety backup that holds only what its restore changed: the other "
                f"{len(manifest.unchanged)} files it lists are in other backups of the store it was made in. "
                "It cannot be brought in alone; bring in a whole backup."
            )
        return {"sha256": digest, "label": manifest.label[:MAX_LABEL_CHARS], "source": _capped_source(manifest.source),
                "created": manifest.created[:64].strip(), "file_count": manifest.file_count,
                "total_bytes": manifest.total_bytes, "skipped": _capped_skipped(manifest.skipped),
                "release": releases.summary(releases.checked_record(manifest.release, manifest.entries))}

    def _store_uploaded(self, path, found):
        source = found["source"]
        slug = source.get("name", "").rstrip("/").rsplit("/", 1)[-1] or "upload"
        created = _utc_time(found["created"]) or utc_now()
        backup_id = self._unique_id(make_id(slug, created))
        compression = _sniff_compression(path)
        archive_name = backup_id + SUFFIXES.get(compression, ".tar")
        meta = {
            "id": backup_id,
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "label": found["label"],
            "kind": "uploaded",
            "source": source,
            "size_bytes": os.path.getsize(path),
            "file_count": found["file_count"],
            "total_bytes": found["total_bytes"],
            "compression": compression,
            "archive": archive_name,
            "sha256": found["sha256"],
            "format_version": FORMAT_VERSION,
            "skipped": found["skipped"],
            "release": found["release"],
        }
        self.store.commit(path, archive_name, meta)
        self.note_change()
        return meta

    def open_archive(self, backup_id):
        """A context manager giving the stored archive of a backup as a readable stream."""
        meta = self.get_backup(backup_id)
        return self.store.open_archive(meta["archive"])


# What an upload may carry into the store's metadata (read by every listing): the manifest's own
# label, source and skipped list are the uploader's, and were copied whole.
MAX_LABEL_CHARS = 200  # as a label given to POST /ailab/backup
MAX_META_TEXT = 1024
MAX_SKIPPED_KEPT = 100
UPLOAD_SPACE_MARGIN = 64 * 1024 * 1024  # the check's own spool and the metadata
_UPLOAD_COMMIT = threading.Lock()


def _utc_time(text):
    """A time given by an upload, in UTC (a time without zone is taken as UTC), or None."""
    parsed = _parse_time(text)
    try:
        return parsed and parsed.replace(tzinfo=parsed.tzinfo or datetime.timezone.utc).astimezone(datetime.timezone.utc)
    except (ValueError, OverflowError):
        return None


def _capped_source(source):
    return {k: str(source[k])[:MAX_META_TEXT] for k in ("type", "name", "found_by") if isinstance(source.get(k), str)}


def _capped_skipped(skipped):
    kept = [{"path": str(item.get("path", ""))[:MAX_META_TEXT], "reason": str(item.get("reason", ""))[:MAX_META_TEXT]}
            for item in skipped[:MAX_SKIPPED_KEPT] if isinstance(item, dict)]
    if len(skipped) > MAX_SKIPPED_KEPT:
        kept.append({"path": "", "reason": f"and {len(skipped) - MAX_SKIPPED_KEPT} more, not kept with the upload"})
    return kept


def _number_in_second(backup_id):
    """n of an id ``...T120000Z-n`` (backups made in one second); 1 for the first (no suffix)."""
    head, _, tail = backup_id.rpartition("-")
    return int(tail) if tail.isdigit() and head.endswith("Z") else 1


def _newest_first(metas):
    return sorted((m for m in metas if meta_is_sound(m)), key=lambda m: (m.get("created", ""), _number_in_second(m["id"]), m["id"]), reverse=True)


def _preview_abandoned():
    raise Cancelled("The restore preview was stopped: its client went away. Nothing was changed.")


def _check_mode(mode):
    if mode not in ("merge", "replace"):
        raise BackupError(f"Unknown restore mode {mode!r}: use 'merge', 'replace' or '{MOVE_MODE}'.")


def _no_paths_with_move(paths):
    if paths is not None:
        raise BackupError(f"A {MOVE_MODE} restore takes no paths: it sorts every file of the backup itself. "
                          "Leave out 'paths' (--path), or use mode 'merge' to restore chosen paths.")


def _parse_time(text):
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _sniff_compression(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    return "none"


def _leaving_out(entries, unchanged, manifest):
    """The entries of a safety backup without the files ``unchanged`` names (see
    :meth:`BackupManager._create`), each listed in the manifest as unchanged instead, held by the
    backup it was found identical to; one changed since it was compared stops the restore."""
    from .staged_restore import changed_meanwhile, same_meta, signature

    for entry, content in entries:
        found = unchanged.get(entry.path) if entry.type == FILE else None
        if found is None:
            yield entry, content
            continue
        listed, sig, held_by, archive_sha = found
        st = os.fstat(content.fileno())
        if signature(st) != sig or not same_meta(st, listed):
            raise changed_meanwhile(entry.path)
        manifest.unchanged.append((listed, held_by))
        manifest.bases[held_by] = archive_sha


def _data_only(items):
    for entry, content in items:
        if not isinstance(entry, Manifest):
            yield entry, content

