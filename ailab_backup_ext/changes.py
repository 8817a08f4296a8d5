"""A cheap answer to "did anything change?", for UIs that poll (the sidebar).

Listing a volume store, or asking for the status, creates a helper container each time; a UI that
did that every few seconds would keep Docker busy. The change token costs no helper container:

- ``manager.revision``, bumped by the manager on every change it makes to the store (backups of
  the sidebar, the notebook panel, REST and the schedule all run in the server's manager), the
  running job, and the schedule's and the settings' state held in memory;
- the store's own change marker, for changes made by another process (``ailab-backup`` on the
  command line, another server, ``docker run`` by hand): a folder store's ``stat`` times; for a
  volume store, Docker's event log: containers not made by this process that mounted it; none for
  an S3 store. With a second copy elsewhere (``copy_to``), the primary is watched.

Free of tornado.
"""

import hashlib
import json
import os
import threading
import time

from .docker_helper import HELPER_LABEL, OWNER_LABEL, helper_labels
from .errors import BackupError
from .stores import FolderStore, VolumeStore

OVERLAP = 2.0  # seconds asked again at each look, so that no event at the border is lost
KEEP_OWN = 1000


class ChangeWatch:
    def __init__(self, manager, clock=time.time):
        self.manager = manager
        self.clock = clock
        self._lock = threading.Lock()
        self._since = None
        self._seen = 0  # timeNano of the newest foreign event counted
        self._foreign = 0
        self._last_marker = None
        self._ours = {}  # ids of our own helper containers seen created, oldest first

    def token(self, with_job=True):
        """{"token": opaque text that changes when the backups, the running job, the schedule or
        the settings may have changed; "job": the running job's id or None}. Without ``with_job``
        the token leaves out the running job (what is cached until the job changes something)."""
        manager = self.manager
        marker = self._store_marker()
        if self._last_marker is not None and marker != self._last_marker:
            manager.settings.invalidate()  # another process may have changed them
        self._last_marker = marker
        active = manager.jobs.active
        held = [manager.revision, marker, active.id if active and with_job else None]
        for owner in (manager.scheduler, manager.settings):
            with owner._lock:  # not while it changes; one at a time, so no lock waits for another
                held.append(json.dumps(owner._state, sort_keys=True, default=str))
        digest = hashlib.sha256(json.dumps(held, default=str).encode()).hexdigest()[:16]
        if not with_job:
            return {"token": digest}
        return {"token": digest, "job": active.id if active else None, "last_restore": self.last_restore()}

    def last_restore(self):
        """{"id", "state", "finished"} of the newest finished restore or undo job of this server
        (None before the first): the front end reloads the open documents it restored."""
        for job in self.manager.jobs.recent():
            if job.kind in ("restore", "undo") and job.done.is_set():
                return {"id": job.id, "state": job.state, "finished": job.finished}
        return None

    def _store_marker(self):
        try:
            store = self.manager.store
        except BackupError as exc:
            return f"unresolved: {exc}"
        store = getattr(store, "primary", store)  # with a second copy elsewhere, the primary is watched
        if isinstance(store, FolderStore):
            stamps = []
            for sub in ("", "meta"):
                try:
                    stamps.append(os.stat(os.path.join(store.path, sub)).st_mtime_ns)
                except OSError:
                    stamps.append(0)
            return stamps
        if isinstance(store, VolumeStore):
            return self._foreign_helpers(store)
        return None  # an S3 store: what other processes write there shows at the next listing

    def _foreign_helpers(self, store):
        """How many times a container not made by this process (``ailab-backup`` on the command
        line, another server, a ``docker run`` by hand) let go of the store volume since the watch
        began: two requests to Docker's event log, no container."""
        api = self.manager.docker.client.api
        own = f"{OWNER_LABEL}={helper_labels()[OWNER_LABEL]}"
        with self._lock:
            now = self.clock()
            since = now if self._since is None else self._since - OVERLAP
            window = {"since": f"{since:.9f}", "until": f"{now:.9f}", "decode": True}
            try:
                for event in api.events(filters={"type": "container", "event": "create",
                                                 "label": [f"{HELPER_LABEL}=1", own]}, **window):
                    self._ours[event.get("id")] = None
                for event in api.events(filters={"type": "volume", "event": "unmount", "volume": store.volume},
                                        **window):
                    stamp = int(event.get("timeNano") or 0)
                    container = ((event.get("Actor") or {}).get("Attributes") or {}).get("container")
                    if stamp > self._seen and container not in self._ours:
                        self._foreign += 1
                        self._seen = stamp
            except Exception as exc:  # noqa: BLE001 - Docker gone: the token says so
                return f"docker unreachable: {type(exc).__name__}"
            while len(self._ours) > KEEP_OWN:
                self._ours.pop(next(iter(self._ours)))
            self._since = now
            return self._foreign
