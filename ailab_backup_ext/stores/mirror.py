"""A store with a second copy elsewhere (``AILabBackup.copy_to``), e.g. S3 beside the volume.

Each backup committed to the primary store is then copied to the second one and read back there
(its SHA-256 must match). If that fails (the second store unreachable, a timeout), the backup
stays, and its id is recorded as pending in the primary store's state ``copies``: the copy is tried
again after the next backup and at every tick of the schedule. Listing merges both stores and says
where each backup lives; reading takes the primary's copy, else the second's.
"""

import hashlib
import threading
import time
from contextlib import ExitStack, contextmanager

from ..archive import CHUNK
from ..errors import BackupError, NotFound
from .records import meta_is_sound
from .base import HERE, OFF, location_of, open_writer

STATE = "copies"
BOTH = "both"
RETRY_PAUSE = 300  # seconds between retries of a failing second store (each may wait for a timeout)
LIST_PAUSE = 60  # after a failed listing of the second store, list the primary alone this long
_listing_failed_at = {}  # second store's name -> time (module-wide: stores are made anew often)


class MirroredStore:
    kind = "mirrored"

    def __init__(self, primary, second):
        self.primary, self.second = primary, second
        self._lock = threading.Lock()  # one copying at a time (after a backup, at a tick, on request)
        self.last_error = None
        self._cached_state = None  # read once per object, so that a tick costs nothing
        self.retry_pause = RETRY_PAUSE

    @property
    def name(self):
        return self.primary.name

    @property
    def stores(self):
        return [self.primary, self.second]

    def describe(self):
        state = self._state()
        return {**self.primary.describe(), "copy_to": self.second.describe(),
                "copies_pending": state.get("pending", []), "copy_error": state.get("error")}

    # state -----------------------------------------------------------------------------------

    def _state(self):
        if self._cached_state is None:
            self._cached_state = self.primary.read_state(STATE) or {}
        return self._cached_state

    def _set_pending(self, add=(), drop=(), error=None):
        state = self._state()
        pending = [i for i in state.get("pending", []) if i not in drop]
        pending += [i for i in add if i not in pending]
        state = {"pending": pending, "error": error if pending else None,
                 "failed_at": time.time() if error else None}
        self.primary.write_state(STATE, state)
        self._cached_state = state

    def retry_due(self):
        """Whether copies are pending and the pause after the last failure is over."""
        state = self._state()
        return bool(state.get("pending")) and time.time() >= (state.get("failed_at") or 0) + self.retry_pause

    # reading ---------------------------------------------------------------------------------

    def labels(self):
        """What listings call the primary store and the second one."""
        here_label, off_label = location_of(self.primary), location_of(self.second)
        if here_label == off_label:  # two stores of one kind: name them
            return self.primary.name, self.second.name
        return here_label, off_label

    def held_by_primary(self, meta):
        return self.labels()[0] in meta.get("locations", [])

    def read_all_meta(self):
        here_label, off_label = self.labels()
        merged = {}
        for meta in self.primary.read_all_meta():
            if isinstance(meta, dict) and isinstance(meta.get("id"), str):
                merged[meta["id"]] = dict(meta, locations=[here_label])
        second = []
        if time.monotonic() >= _listing_failed_at.get(self.second.name, -LIST_PAUSE) + LIST_PAUSE:
            try:  # unreachable, it would make every listing wait for its timeout: paused a while
                second = self.second.read_all_meta()
                _listing_failed_at.pop(self.second.name, None)
            except BackupError as exc:
                self.last_error = str(exc)
                _listing_failed_at[self.second.name] = time.monotonic()
        for meta in second:
            if not (isinstance(meta, dict) and isinstance(meta.get("id"), str)):
                continue
            if meta["id"] in merged:
                merged[meta["id"]]["locations"].append(off_label)
                merged[meta["id"]]["encrypted_copy"] = bool(meta.get("encrypted"))
            else:
                merged[meta["id"]] = dict(meta, locations=[off_label])
        pending = set(self._state().get("pending", []))
        for meta in merged.values():
            meta["where"] = BOTH if len(meta["locations"]) > 1 else meta["locations"][0]
            if meta["id"] in pending:
                meta["copy"] = "pending"
        return list(merged.values())

    @contextmanager
    def open_archive(self, archive_name):
        with ExitStack() as stack:
            try:
                stream = stack.enter_context(self.primary.open_archive(archive_name))
            except NotFound:
                stream = stack.enter_context(self.second.open_archive(archive_name))
            yield stream

    def local_path(self, archive_name):
        return self.primary.local_path(archive_name)

    def read_state(self, name):
        return self.primary.read_state(name)

    def write_state(self, name, data):
        self.primary.write_state(name, data)

    # writing ---------------------------------------------------------------------------------

    def spool(self, name):
        return self.primary.spool(name)

    def commit(self, spool_path, archive_name, meta):
        self.primary.commit(spool_path, archive_name, meta)
        self.after_commit(meta)

    @contextmanager
    def open_writer(self, archive_name):
        with open_writer(self.primary, archive_name) as writer:
            yield _CopyingWriter(writer, self)

    def after_commit(self, meta):
        """Copy a new backup and the pending ones; a failure only leaves them pending. A safety
        backup (taken before a restore, for undo) is not copied: the restore waits for it."""
        if meta.get("kind") != "safety":
            self.copy_pending(also=[meta])

    def copy_pending(self, also=()):
        """Copy the pending backups (and ``also``): ``{"copied": [...], "pending": [...], "error"}``."""
        with self._lock:
            pending = self._state().get("pending", [])
            wanted = {m["id"]: m for m in also}
            if pending:
                known = {m["id"]: m for m in self.primary.read_all_meta() if meta_is_sound(m)}
                wanted.update({i: known[i] for i in pending if i in known})
                gone = [i for i in pending if i not in known]  # deleted meanwhile
            else:
                gone = []
            return self._copy_all(list(wanted.values()), gone)

    def copy_missing(self, backup_ids=None):
        """Copy the given backups (all those only here, when None) to the second store."""
        with self._lock:
            there = {m.get("id") for m in self.second.read_all_meta() if isinstance(m, dict)}
            # as listings do: a tampered file could name an archive outside data/, read and written
            metas = [m for m in self.primary.read_all_meta() if meta_is_sound(m)]
            if backup_ids is not None:
                known = {m["id"] for m in metas}
                missing = [i for i in backup_ids if i not in known]
                if missing:
                    raise NotFound(f"{', '.join(missing)}: not a backup in {self.primary.name} (only "
                                   "backups held here can be copied). List the backups to see their ids.")
                metas = [m for m in metas if m["id"] in backup_ids]
            already = [m["id"] for m in metas if m["id"] in there]
            result = self._copy_all([m for m in metas if m["id"] not in there], [])
            result["already"] = already
            return result

    def _copy_all(self, metas, gone):
        copied, failed, error = [], [], None
        for meta in metas:
            if error is not None:  # the second store failed: the rest waits for the next try
                failed.append(meta["id"])
                continue
            try:
                self.copy_one(meta)
                copied.append(meta["id"])
            except BackupError as exc:
                error = str(exc)
                failed.append(meta["id"])
        self.last_error = error
        if copied and error is None:
            _listing_failed_at.pop(self.second.name, None)  # it answers again: list it again
        self._set_pending(add=failed, drop=copied + gone, error=error)
        return {"copied": copied, "pending": failed, "error": error}

    def copy_one(self, meta):
        """Stream one backup's archive from the primary store into the second, then read it back
        there: it must give the same SHA-256 (decrypted, when the copy is encrypted)."""
        archive = meta["archive"]
        digest = hashlib.sha256()
        # what the listing added, and what the source store said of its own copy
        clean = {k: v for k, v in meta.items()
                 if k not in ("locations", "where", "copy", "encrypted_copy", "encrypted", "stored_bytes")}
        with self.primary.open_archive(archive) as src, open_writer(self.second, archive) as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
            if meta.get("sha256") and digest.hexdigest() != meta["sha256"]:
                raise BackupError(f"The archive of {meta['id']} here does not match its checksum; it was "
                                  "not copied. Verify it.")
            out.commit(clean)
        check = hashlib.sha256()
        try:
            with self.second.open_archive(archive) as copy:
                while chunk := copy.read(CHUNK):
                    check.update(chunk)
        except BackupError:
            self._remove_quietly(meta)
            raise
        if check.hexdigest() != digest.hexdigest():
            self._remove_quietly(meta)
            raise BackupError(f"The copy of {meta['id']} in {self.second.name} reads back differently; it "
                              "was removed there and will be copied again.")

    def _remove_quietly(self, meta):
        try:
            self.second.remove(meta["id"], meta["archive"])
        except BackupError:
            pass

    def remove(self, backup_id, archive_name, where=None):
        """Delete a backup from both stores (``where``: only ``here`` or ``off``)."""
        targets = {None: self.stores, HERE: [self.primary], OFF: [self.second]}[where]
        for store in targets:
            store.remove(backup_id, archive_name)
        if where in (None, HERE):
            state = self._state()
            if backup_id in state.get("pending", []):
                self._set_pending(drop=[backup_id], error=state.get("error"))

    def remove_stale_spools(self):
        removed = self.primary.remove_stale_spools()
        try:
            removed += self.second.remove_stale_spools()
        except BackupError:
            pass
        return removed


class _CopyingWriter:
    """The primary store's writer; its commit then copies the new backup to the second store."""

    def __init__(self, writer, mirror):
        self.writer, self.mirror = writer, mirror
        self.sync = writer.sync

    def write(self, data):
        return self.writer.write(data)

    def flush(self):
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def fileno(self):
        return self.writer.fileno()

    def commit(self, meta):
        self.writer.commit(meta)
        self.mirror.after_commit(meta)
