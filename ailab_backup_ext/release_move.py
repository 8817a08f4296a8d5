"""The BackupManager's side of moving to a new AI-Lab release (see release.py for the rules):
which release runs, whether the status offers a move, the preview and the move itself, from a
stored backup or from a plain folder of the seed recipe. Free of tornado and UI code."""

import dataclasses
import posixpath
from contextlib import contextmanager, nullcontext

from . import release as rel
from .archive import DIR, FILE, EntryChecker, Manifest, iter_archive
from .errors import BackupError
from .plan import NOTEBOOK_DIFF_LIMIT, notebook_comparison, scan
from .progress import Progress
from .sources import LocalFolderSource
from .worker.runner import NotRouted

MOVE_MODE = "release-move"
SAFETY_LABEL = "Before bringing {} into this release"
BEFORE_UPGRADE_LABEL = "Before upgrading"


class ReleaseMoves:
    """Mixed into :class:`~ailab_backup_ext.core.BackupManager`."""

    _running_release = None  # the worker is given the server's (it cannot see the server's folders)

    def running_release(self):
        """The record of the release this server runs (found once: it cannot change while the
        server runs): see :func:`release.find_running_release`."""
        if self._running_release is None:
            own = None
            if self.docker is not None:
                try:
                    self.docker.version()
                    own = self.docker.own_container()
                except Exception:  # noqa: BLE001 - no Docker: a release without an image
                    own = None
            self._running_release = rel.find_running_release(self.config.notebook_defaults, self.config.release, own)
        return self._running_release

    def before_upgrade_label(self):
        name = self.running_release().get("name")
        return f"{BEFORE_UPGRADE_LABEL} (AI-Lab {name})" if name else BEFORE_UPGRADE_LABEL

    def release_status(self, backups=None):
        """``running``: the running release; ``move``: the backup a release move is offered for
        (the newest backup made by a user, or one scheduled in another release, when it came
        from another release and was not brought in yet), with a message; else None."""
        running = rel.summary(self.running_release())
        backups = self.list_backups() if backups is None else backups
        candidate = None
        for meta in backups:
            if meta.get("kind") == "safety" or (
                    meta.get("kind") == "scheduled" and rel.differs(meta.get("release"), running) is False):
                continue
            candidate = meta
            break
        move = None
        if candidate and rel.differs(candidate.get("release"), running):
            done = any(m.get("kind") == "safety" and m.get("label") == SAFETY_LABEL.format(candidate["id"])
                       for m in backups)
            if not done:
                old = candidate["release"].get("name") or candidate["release"].get("image") or "another release"
                move = {"backup_id": candidate["id"], "from": candidate["release"], "message": (
                    f"The newest backup ({candidate['id']}) came from AI-Lab {old}; this server runs AI-Lab "
                    f"{rel.label(running)}. 'Bring my work into this release' restores what you made or "
                    "changed and the Secure Configuration Storage, and leaves the notebooks you did not "
                    "change as this release ships them (preview first; undo brings back the state before).")}
        return {"running": running, "move": move}

    # the move ---------------------------------------------------------------------------------

    def plan_release_move(self, backup_id, progress=None):
        """The preview of "Bring my work into this release" for a backup: its files by category
        (see :func:`release.make_move_plan`). Changes nothing."""
        with self._one_operation():
            try:
                return self._in_worker("release_plan", progress or Progress(), backup_id=backup_id)
            except NotRouted:
                return self._release_move(backup_id, progress, apply=False)

    def release_move(self, backup_id, progress=None):
        """Bring the work of a backup (from another release) into the running release: the
        plan of :meth:`plan_release_move`, made again from the folder as it is now, then carried
        out after a safety backup (so "Undo last restore" takes it back)."""
        progress = progress or Progress()
        with self._one_operation():
            try:
                with self._busy_guard():
                    result = self._in_worker("release_move", progress, write_source=True, backup_id=backup_id)
            except NotRouted:
                result = self._release_move(backup_id, progress, apply=True)
        self.note_change()  # the folder changed: UIs and the usage cache look again
        return {**result, "restored": self._restored_documents(result)}  # the open documents to reload

    def start_release_move(self, backup_id):
        self.get_backup(backup_id)  # an unknown id is answered now, not as a failed job
        return self.jobs.start("restore", lambda progress: self.release_move(backup_id, progress))

    def _release_move(self, backup_id, progress, apply):
        progress = progress or Progress()
        meta = self.get_backup(backup_id)
        if meta.get("unchanged_files"):
            raise BackupError(f"{backup_id} is a safety backup that holds only what its restore changed; a release "
                              "move needs a whole backup. Undo the restore instead, or move from another backup.")
        with self._busy_guard() if apply else nullcontext():
            progress.start("checking", meta.get("total_bytes", 0), meta.get("file_count", 0))
            with self._checked_copy(meta, progress) as (path, manifest):
                @contextmanager
                def read_backup():
                    with open(path, "rb") as f:
                        yield (item for item in iter_archive(f, self.config.max_archive_bytes, check_content=False)
                               if not isinstance(item[0], Manifest))

                old = rel.checked_record(manifest.release, manifest.entries)  # bounded, whoever made it
                return self._move(manifest.entries, old, read_backup, progress, apply, backup_id)

    def import_dir_into_release(self, directory, apply=True, progress=None):
        """Bring ``directory/notebooks`` (a folder of the seed recipe's ``docker cp``) into the
        running release as a backup would be: it has no release record, so its files are
        compared with the running release's defaults only."""
        folder = LocalFolderSource(posixpath.join(directory, "notebooks"))
        folder.check_exists()
        progress = progress or Progress()
        checker = EntryChecker(self.config.max_archive_bytes)  # everything checked before anything is written
        for entry in folder.list_entries():
            checker.check(entry)
        with folder.read_entries() as entries:
            entries = [entry for entry, _ in scan(entries, lambda p: False).values()]

        with self._busy_guard() if apply else nullcontext():
            return self._move(entries, None, folder.read_entries, progress, apply, folder.path)

    def _move(self, entries, old, read_side, progress, apply, what):
        source = self.source
        source.check_exists()
        new = self.running_release()
        if new.get("defaults") is None:  # nothing could be left "as the release ships it"
            raise BackupError(
                f"The default notebooks of the running release are not known: there is no folder "
                f"{new.get('defaults_dir')!r} "
                "(NOTEBOOK_DEFAULTS). Set AILabBackup.notebook_defaults to the release's defaults folder, or "
                "restore with mode 'merge' instead; nothing was changed.")
        new_defaults = new["defaults"]
        old_defaults = (old or {}).get("defaults")
        paths = {e.path for e in entries if e.type != DIR}
        keep = {e.path for e in entries if rel.may_keep_both(e, old_defaults, new_defaults)}
        notebooks_in_backup = {p for p in paths if p.endswith(".ipynb")}
        progress.start("comparing", 0, 0)
        with source.read_entries() as current_entries:
            current = rel.scan_current(current_entries, paths, keep, notebooks_in_backup, NOTEBOOK_DIFF_LIMIT)
        try:
            plan = rel.make_move_plan(entries, old, new, current, source.skip_paths)
            compared = {item["path"]: item for category in ("overwritten", "kept_both") for item in plan[category]
                        if item["path"].endswith(".ipynb") and current[item["path"]][0].type == FILE}
            if compared:
                with read_side() as items:
                    for entry, content in items:
                        if entry.path in compared:
                            mine = content.read(NOTEBOOK_DIFF_LIMIT + 1) if entry.size <= NOTEBOOK_DIFF_LIMIT else None
                            compared[entry.path].update(notebook_comparison(current[entry.path][1]["bytes"], mine))
            result = {"backup_id": what, "mode": MOVE_MODE, "from_release": rel.summary(old),
                      "to_release": rel.summary(new), **plan, "counts": rel.counts(plan)}
            if not apply:
                return result
            return {**result, **self._carry_out(plan, entries, current, read_side, progress, what)}
        finally:
            for _, data in current.values():
                if data and data["spool"] is not None:
                    data["spool"].close()

    def _carry_out(self, plan, entries, current, read_side, progress, what):
        source = self.source
        written, beside = rel.written_paths(plan)
        sizes = {e.path: e.size for e in entries}
        total = sum(sizes[p] for p in written) + sum(current[p][0].size for p in beside.values())
        source.check_space(total)
        safety = None
        if self.config.safety_backup:
            safety = self._create(SAFETY_LABEL.format(what), "safety", progress)
        uid, gid = source.root_owner()  # as import does: the jupyter user of this release edits them
        above = {posixpath.dirname(p) for p in written}
        for path in list(above):
            while path:
                above.add(path)
                path = posixpath.dirname(path)
        folders_now = {p for p, (e, _) in current.items() if e.type == DIR}
        holding = {posixpath.dirname(e.path) for e in entries if e.type != DIR}
        for path in list(holding):
            while path:
                holding.add(path)
                path = posixpath.dirname(path)
        above |= {e.path for e in entries if e.type == DIR and e.path not in holding}  # the user's empty folders

        def stream():
            for new_path, old_path in sorted(beside.items()):  # the running release's version, moved beside
                entry, data = current[old_path]
                data["spool"].seek(0)
                yield dataclasses.replace(entry, path=new_path, uid=uid, gid=gid), data["spool"]
            with read_side() as items:
                for entry, content in items:
                    if entry.path in written or (entry.type == DIR and entry.path in above - folders_now):
                        yield dataclasses.replace(entry, uid=uid, gid=gid), content

        progress.start("restoring", total, len(written) + len(beside))
        source.write_entries(progress.counting(stream()), protected=self.settings.excludes)
        progress.complete(total, len(written) + len(beside))
        touches_scs = bool(plan["scs"]) or any(p.endswith(".sqlite") for p in written)
        from .core import MAX_RESTORED_LISTED, RESTART_HINT

        changed = sorted(set(written) | set(beside))  # named for the open documents to reload
        return {"file_count": len(written) + len(beside), "total_bytes": total,
                "safety_backup_id": safety["id"] if safety else None,
                "hint": RESTART_HINT if touches_scs else None,
                "restored_files": changed[:MAX_RESTORED_LISTED],
                "restored_files_complete": len(changed) <= MAX_RESTORED_LISTED}
