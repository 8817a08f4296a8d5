"""The backup panel for a notebook: ``from ailab_backup_ext import BackupPanel; BackupPanel()``.

Stock ipywidgets in the look of AI-Lab's own widgets (notebook-connector): bordered groups with a
beige header, rows as flex boxes, LightCyan bordered buttons whose icon turns to "check" on success.
Every request goes through :class:`~ailab_backup_ext.client.BackupClient`, in background threads, so
the kernel stays free while a backup or restore runs.
"""

import datetime
import html
import threading

import ipywidgets as widgets

from .client import BackupClient, BackupClientError

BORDER = "solid 1px"
WIDTH = "560px"
HEADER_STYLE = {"background": "Beige"}
BUTTON_STYLE = {"button_color": "LightCyan"}
COLUMNS = (("Created (UTC)", "195px"), ("Label", "190px"), ("Size", "80px"), ("Files", "60px"))


def _header(text):
    return widgets.Label(text, style=HEADER_STYLE,
                         layout=widgets.Layout(display="flex", justify_content="center", border=BORDER))


def _group(children):
    return widgets.Box(children, layout=widgets.Layout(display="flex", flex_flow="column", border=BORDER,
                                                       max_width=WIDTH, margin="12px 0 0 0"))


def _row(children, width="370px", **layout):
    look = {"display": "flex", "flex_flow": "row", "max_width": width, "justify_content": "space-between",
            "align_items": "center", "padding": "0 0 0 10px", "margin": "4px 0", **layout}
    return widgets.Box(children, layout=widgets.Layout(**look))


def _button(description, icon, tooltip):
    return widgets.Button(description=description, icon=icon, tooltip=tooltip, style=BUTTON_STYLE,
                          layout=widgets.Layout(border=BORDER, width="125px"))


def _show(widget, visible):
    widget.layout.display = "" if visible else "none"


def _size(n):
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _created(text):
    try:
        when = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(text)[:19].replace("T", " ")


def _place(place):
    return f"{place['type']} <b>{html.escape(place['name'])}</b>" if place else "<i>unknown</i>"


class BackupPanel(widgets.VBox):
    """Back up, restore, download and delete backups of the AI-Lab notebooks folder and its Secure
    Configuration Storage. ``client`` defaults to ``BackupClient()`` (the kernel's own server)."""

    def __init__(self, client=None, poll=0.5, **kwargs):
        super().__init__(layout=widgets.Layout(display="flex", flex_flow="column", align_items="stretch",
                                               padding="0 0 12px 0"), **kwargs)
        self.add_class("ailab-backup-panel")
        self.poll = poll
        self.backups = []
        self.selected = None
        self._toggles = {}
        self._pending = None
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._running = 0

        self.status = widgets.HTML("Loading …", layout=widgets.Layout(padding="0 10px"))
        self.warning = widgets.HTML(layout=widgets.Layout(padding="0 10px", display="none"))
        self.rows = widgets.VBox(layout=widgets.Layout(max_height="260px", overflow="auto", padding="0 0 0 10px"))
        columns = [widgets.HTML(f"<b>{name}</b>", layout=widgets.Layout(width=w)) for name, w in COLUMNS]
        self.label = widgets.Text(placeholder="Label (optional)", layout=widgets.Layout(width="210px"))
        self.backup_button = _button("Back up now", "archive", "Back up the notebooks folder and the SCS now")
        self.mode = widgets.Dropdown(options=[("merge: keep other files", "merge"),
                                              ("replace: exactly as backed up", "replace")],
                                     layout=widgets.Layout(width="210px"))
        self.restore_button = _button("Restore", "history", "Restore the selected backup")
        self.download = widgets.HTML(layout=widgets.Layout(width="100px"))
        self.delete_button = _button("Delete", "trash", "Delete the selected backup")
        self.refresh_button = _button("Refresh", "refresh", "Read the backups and the status again")
        self.question = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.yes_button = widgets.Button(description="Yes", button_style="danger",
                                         layout=widgets.Layout(width="150px"))
        self.no_button = widgets.Button(description="Cancel", layout=widgets.Layout(border=BORDER, width="125px"),
                                        style=BUTTON_STYLE)
        self.confirm = widgets.VBox([self.question,
                                     _row([self.yes_button, self.no_button], justify_content="flex-start")])
        self.progress = widgets.IntProgress(min=0, max=100, layout=widgets.Layout(width="220px"))
        self.progress_text = widgets.Label(layout=widgets.Layout(width="320px"))
        self.progress_row = _row([self.progress, self.progress_text], width=WIDTH)
        self.message = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.error = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self._icons = {b.description: b.icon for b in (self.backup_button, self.restore_button,
                                                        self.delete_button, self.refresh_button)}
        for widget in (self.confirm, self.progress_row):
            _show(widget, False)

        self.children = [
            _group([_header("AI-Lab Backup"), self.status, self.warning]),
            _group([_header("Backups"), _row(columns, width=WIDTH, justify_content="flex-start"), self.rows]),
            _group([
                _header("Actions"),
                _row([self.label, self.backup_button]),
                _row([self.mode, self.restore_button]),
                _row([self.download, self.delete_button, self.refresh_button]),
                self.confirm, self.progress_row, self.message, self.error,
            ]),
        ]
        self.backup_button.on_click(lambda b: self._backup())
        self.restore_button.on_click(lambda b: self._ask_restore())
        self.delete_button.on_click(lambda b: self._ask_delete())
        self.refresh_button.on_click(lambda b: self._start(self._refresh_clicked))
        self.yes_button.on_click(lambda b: self._confirmed())
        self.no_button.on_click(lambda b: self._cancel())

        try:
            self.client = client or BackupClient()
        except BackupClientError as exc:
            self.client = None
            self.status.value = "<b>INACCESSIBLE</b>"
            self._warn(str(exc))
            self._set_busy(True)
            self.refresh_button.disabled = True
            return
        self._show_selection()
        self._start(self._refresh, follow_running_job=True)

    # background work -------------------------------------------------------------------------

    def wait(self, timeout=None):
        """Block until no background work of this panel runs (for tests and scripts)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def _start(self, fn, *args, **kwargs):
        """Run ``fn`` in a thread; a BackupClientError lands in the (red) error area."""
        with self._idle:
            self._running += 1
        threading.Thread(target=self._guarded, args=(fn, args, kwargs), daemon=True,
                         name="ailab-backup-panel").start()

    def _guarded(self, fn, args, kwargs):
        try:
            fn(*args, **kwargs)
        except BackupClientError as exc:
            self._fail(str(exc.message))
        except Exception as exc:  # noqa: BLE001 - a panel shows what went wrong, it does not die
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    # reading ----------------------------------------------------------------------------------

    def _refresh(self, follow_running_job=False):
        status = self.client.status()
        self._show_status(status)
        self._show_backups(self.client.list())
        job = status.get("job")
        if follow_running_job and job and job["state"] not in ("succeeded", "failed"):
            self._set_busy(True)  # a job started elsewhere (another panel, the sidebar, a script)
            try:
                self._follow(job)
            finally:
                self._set_busy(False)

    def _refresh_clicked(self):
        self.error.value = self.message.value = ""
        self.refresh_button.icon = "refresh"
        self._refresh()
        self.refresh_button.icon = "check"

    def _show_status(self, status):
        docker = status.get("docker") or {}
        if docker.get("url") == "none":
            reach = "not used"
        elif docker.get("reachable"):
            reach = f"reachable ({html.escape(str(docker.get('version')))})"
        else:
            reach = "<b>NOT REACHABLE</b>"
        source, store, mode = _place(status.get("source")), _place(status.get("store")), status.get("mode")
        self.status.value = self._block(f"Backs up {source}<br>into {store}<br>"
                                        f"Mode: <b>{html.escape(str(mode))}</b> · Docker: {reach}")
        self._warn(status.get("hint"))

    def _warn(self, text):
        self.warning.value = f'<p style="color: red; word-wrap: break-word">{html.escape(text)}</p>' if text else ""
        _show(self.warning, bool(text))

    def _show_backups(self, backups, select=None):
        with self._lock:
            self.backups = backups
            ids = [b["id"] for b in backups]
            keep = select if select in ids else self.selected if self.selected in ids else None
            self._toggles = {}
            rows = []
            for b in backups:
                toggle = widgets.ToggleButton(description=_created(b.get("created")), tooltip=b["id"],
                                              icon="circle-o", layout=widgets.Layout(width=COLUMNS[0][1]))
                toggle.observe(lambda change, i=b["id"]: self._toggled(i, change["new"]), "value")
                self._toggles[b["id"]] = toggle
                label = b.get("label") or ("" if b.get("kind") in (None, "manual") else f"({b['kind']})")
                cells = [widgets.Label(label, tooltip=label, layout=widgets.Layout(width=COLUMNS[1][1])),
                         widgets.Label(_size(b.get("size_bytes")), layout=widgets.Layout(width=COLUMNS[2][1])),
                         widgets.Label(str(b.get("file_count", "")), layout=widgets.Layout(width=COLUMNS[3][1]))]
                rows.append(_row([toggle, *cells], width=WIDTH, justify_content="flex-start", padding="0"))
            if not rows:
                rows = [widgets.HTML("<i>No backups yet: press “Back up now”.</i>")]
            self.rows.children = rows
            self.selected = None
            if keep is None and backups:
                keep = backups[0]["id"]
            self.select(keep)

    def select(self, backup_id):
        """Select a backup by its id (None: no selection), as clicking its row does."""
        if backup_id is not None and backup_id not in self._toggles:
            raise KeyError(f"No backup {backup_id!r} in the panel.")
        self.selected = backup_id
        for i, toggle in self._toggles.items():
            toggle.value = i == backup_id
        self._show_selection()

    def _toggled(self, backup_id, on):
        if on and self.selected != backup_id:
            self.select(backup_id)
        elif not on and self.selected == backup_id:
            self._toggles[backup_id].value = True  # one row stays selected
        self._mark_selected()

    def _mark_selected(self):
        for toggle in self._toggles.values():
            toggle.icon = "dot-circle-o" if toggle.value else "circle-o"
            toggle.button_style = "info" if toggle.value else ""

    def _show_selection(self):
        self._mark_selected()
        if self.selected is None or self.client is None:
            self.download.value = '<span style="color: gray; padding: 0 10px">Download</span>'
        else:
            href = html.escape(self.client.download_href(self.selected))
            self.download.value = (
                f'<a href="{href}" download title="Download {html.escape(self.selected)}" style="display: '
                'inline-block; box-sizing: border-box; width: 100px; height: 28px; line-height: 26px; '
                'text-align: center; border: 1px solid; background: LightCyan; color: inherit; '
                'text-decoration: none">&#x2B07; Download</a>')

    # actions ----------------------------------------------------------------------------------

    def _backup(self):
        label = self.label.value.strip()
        self._launch(self.backup_button, lambda: self._follow(self.client.create(label)), "backup")

    def _ask_restore(self):
        if self._need_selection():
            backup_id, mode = self.selected, self.mode.value
            what = ("The notebooks folder becomes exactly as in the backup: files made since are <b>deleted</b>."
                    if mode == "replace" else "Files from the backup overwrite the ones here; other files stay.")
            question = f"Restore <b>{html.escape(backup_id)}</b> ({mode})? {what}"
            action = self._ask(question + "<br><i>Comparing with the notebooks folder …</i>", f"Yes, {mode}",
                               lambda: self._restore(backup_id, mode))
            self._start(self._preview, backup_id, mode, question, action)

    def _preview(self, backup_id, mode, question, action):
        """Say in the question what the restore would change (the server's dry run)."""
        try:
            plan = self.client.plan_restore(backup_id, mode)
        except BackupClientError:
            if self._pending is action:
                self._cancel()
            raise
        if self._pending is action:  # still the question shown
            counts = ", ".join(f"{len(plan.get(k) or [])} {k}" for k in ("added", "overwritten", "removed")
                               if k != "removed" or mode == "replace")
            unchanged = (plan.get("unchanged") or {}).get("count", 0)
            self.question.value = self._block(f"{question}<br>Files: {counts}, {unchanged} unchanged.")

    def _restore(self, backup_id, mode):
        self._launch(self.restore_button, lambda: self._follow(self.client.restore(backup_id, mode)), "restore")

    def _ask_delete(self):
        if self._need_selection():
            backup_id = self.selected
            self._ask(f"Delete the backup <b>{html.escape(backup_id)}</b>? This cannot be undone.",
                      "Yes, delete", lambda: self._delete(backup_id))

    def _delete(self, backup_id):
        def work():
            self.client.delete(backup_id)
            self.message.value = f"Deleted {html.escape(backup_id)}."
            self._show_backups(self.client.list())

        self._launch(self.delete_button, work)

    def _need_selection(self):
        self.error.value = ""
        if self.selected is None:
            self._fail("Select a backup first.")
            return False
        return True

    def _ask(self, question, yes, action):
        self.question.value = self._block(question)
        self.yes_button.description = yes
        self._pending = action
        _show(self.confirm, True)
        return action

    @staticmethod
    def _block(text):
        """HTML lines closer together than the widget's default line height."""
        return f'<div style="line-height: 1.5; margin: 4px 0">{text}</div>'

    def _confirmed(self):
        action, self._pending = self._pending, None
        _show(self.confirm, False)
        if action is not None:
            action()

    def _cancel(self):
        self._pending = None
        _show(self.confirm, False)

    def _launch(self, button, work, job=None):
        """Run an action in the background with the action buttons disabled (at once, so a second
        click cannot start it twice); its button shows "check" on success."""
        self.error.value = self.message.value = ""
        button.icon = self._icons[button.description]
        self._set_busy(True)
        if job:
            self.progress.value, self.progress.bar_style = 0, "info"
            self.progress_text.value = f"Starting the {job} …"
            _show(self.progress_row, True)
        self._start(self._act, button, work)

    def _act(self, button, work):
        try:
            work()
            button.icon = "check"
        except BackupClientError:
            if self.progress.value == 0:
                _show(self.progress_row, False)  # refused before it began: no bar to show
            self.progress.bar_style, self.progress_text.value = "danger", "Failed."
            try:
                self._show_backups(self.client.list())  # e.g. a backup deleted elsewhere: gone here too
            except BackupClientError:
                pass
            raise
        finally:
            self._set_busy(False)

    def _set_busy(self, busy):
        for b in (self.backup_button, self.restore_button, self.delete_button, self.yes_button):
            b.disabled = busy

    def _fail(self, text):
        self.error.value = f'<p style="color: red; word-wrap: break-word">{html.escape(text)}</p>'

    def _follow(self, job):
        """Show a job's progress until it ends (in this background thread); raise if it failed."""
        self.progress.value, self.progress.bar_style = 0, "info"
        _show(self.progress_row, True)
        try:
            job = self.client.wait(job, on_progress=self._show_progress, poll=self.poll)
        except BackupClientError:
            self._refresh()
            raise
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        result = job.get("result") or {}
        if job["kind"] == "backup":
            self.progress_text.value = "Backup done."
            self.message.value = f"Backed up as <b>{html.escape(str(job.get('backup_id')))}</b>."
            self.label.value = ""
        else:
            self.progress_text.value = "Restore done."
            note = (f"Restored <b>{html.escape(str(job.get('backup_id')))}</b> "
                    f"({html.escape(str(result.get('mode')))}): {result.get('file_count', '?')} files.")
            if result.get("safety_backup_id"):
                note += (f"<br>The state before is kept as <b>{html.escape(result['safety_backup_id'])}</b>: "
                         "restore it with <i>replace</i> to undo.")
            if result.get("hint"):
                note += f"<br><b>{html.escape(result['hint'])}</b>"
            self.message.value = self._block(note)
        self._show_status(self.client.status())
        self._show_backups(self.client.list(), select=job.get("backup_id"))
        return job

    def _show_progress(self, job):
        p = job.get("progress") or {}
        done, total = p.get("done_bytes", 0), p.get("total_bytes", 0)
        if not total:
            done, total = p.get("done_files", 0), p.get("total_files", 0)
        percent = 100 if job["state"] == "succeeded" else int(100 * done / total) if total else 0
        self.progress.value = min(max(percent, 0), self.progress.max)
        phase = p.get("phase") or job["state"]
        self.progress_text.value = (f"{job['kind'].capitalize()} – {phase}: {p.get('done_files', 0)}/"
                                    f"{p.get('total_files', 0)} files, {_size(p.get('done_bytes'))}")
