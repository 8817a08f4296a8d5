"""Backups in a folder of this machine: ``data/<id>.tar.zst`` (or ``.tar.gz``) and ``meta/<id>.json``."""

import json
import os
from contextlib import contextmanager

from ..errors import NotFound
from .records import meta_bytes
from .spool import remove_stale_spools_in, remove_unlocked_worker_spools, spool_file


class FolderStore:
    """Backups in a folder of this machine."""

    kind = "folder"

    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))

    @property
    def name(self):
        return self.path

    def describe(self):
        return {"type": self.kind, "name": self.path}

    def _dir(self, sub):
        path = os.path.join(self.path, sub)
        os.makedirs(path, exist_ok=True)
        return path

    def read_all_meta(self):
        meta_dir = os.path.join(self.path, "meta")
        if not os.path.isdir(meta_dir):
            return []
        found = []
        for name in os.listdir(meta_dir):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    with open(os.path.join(meta_dir, name), "rb") as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue  # removed meanwhile, or not ours
        return found

    def spool(self, name):
        """A temporary file next to where the archive will be kept (so committing is a rename)."""
        return spool_file(self._dir("data"), name)

    def remove_stale_spools(self):
        directory = os.path.join(self.path, "data")
        return remove_stale_spools_in(directory) + remove_unlocked_worker_spools(directory)

    def commit(self, spool_path, archive_name, meta):
        with open(spool_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(spool_path, os.path.join(self._dir("data"), archive_name))
        self._write_atomic(os.path.join(self._dir("meta"), meta["id"] + ".json"), meta_bytes(meta))

    @staticmethod
    def _write_atomic(path, data):
        temp = path + ".partial"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)

    def read_state(self, name):
        """A small JSON document kept beside the backups (e.g. the schedule), or None."""
        try:
            with open(os.path.join(self.path, name + ".json"), "rb") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_state(self, name, data):
        os.makedirs(self.path, exist_ok=True)
        self._write_atomic(os.path.join(self.path, name + ".json"), meta_bytes(data))

    @contextmanager
    def open_archive(self, archive_name):
        try:
            f = open(os.path.join(self.path, "data", archive_name), "rb")
        except FileNotFoundError:
            raise NotFound(f"The archive {archive_name} is missing from the store {self.path}.") from None
        with f:
            yield f

    def local_path(self, archive_name):
        path = os.path.join(self.path, "data", archive_name)
        return path if os.path.isfile(path) else None

    @contextmanager
    def local_copy(self, archive_name):
        """A path of this machine holding the archive (the stored file itself, here)."""
        path = os.path.join(self.path, "data", archive_name)
        if not os.path.isfile(path):
            raise NotFound(f"The archive {archive_name} is missing from the store {self.path}.")
        yield path

    def remove(self, backup_id, archive_name):
        # metadata first: once it is gone the backup is no longer listed, whatever happens next
        for path in (os.path.join(self.path, "meta", backup_id + ".json"),
                     os.path.join(self.path, "data", archive_name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
