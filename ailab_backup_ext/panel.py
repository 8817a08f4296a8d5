"""The backup panel for a notebook: ``from ailab_backup_ext import BackupPanel; BackupPanel()``.

Stock ipywidgets in the look of AI-Lab's own widgets (notebook-connector): bordered groups with a
beige header, rows as flex boxes, LightCyan bordered buttons whose icon turns to "check" on success.
Every request goes through :class:`~ailab_backup_ext.client.BackupClient`, in background threads, so
the kernel stays free while a backup or restore runs.
"""

import datetime
import html
import re
import threading

import ipywidgets as widgets

from .client import BackupClient, BackupClientError
from .panel_offsite import OffsiteGroup, where_tag
from .panel_release import ReleaseMoveRow
from .panel_usage import UsageBox, reload_note

BORDER = "solid 1px"
WIDTH = "660px"
HEADER_STYLE = {"background": "Beige"}
BUTTON_STYLE = {"button_color": "LightCyan"}
COLUMNS = (("Created (UTC)", "190px"), ("Label", "160px"), ("Kind", "80px"), ("Size", "70px"), ("Files", "50px"),
           ("Where", "100px"))
KIND_COLORS = {"safety": "Moccasin", "scheduled": "LightCyan", "uploaded": "Lavender"}
LISTED = 200  # paths per section of a restore's preview; the counts say how many there are
CHOOSABLE = 2000  # paths offered for a selective restore (folders first)
SCHEDULES = (("Off", "off"), ("Every hour", "hourly"), ("Every 6 hours", "every6h"),
             ("Daily at (UTC)", "daily"), ("Other …", "custom"))
DEFAULT_DAILY = "02:00"
_EVERY = re.compile(r"^every\s+(\d+)\s*(m|min|minutes?|h|hours?)$")
_DAILY = re.compile(r"^daily\s+(\d{1,2}):(\d{2})$")


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


def _button(description, icon, tooltip, width="125px"):
    return widgets.Button(description=description, icon=icon, tooltip=tooltip, style=BUTTON_STYLE,
                          layout=widgets.Layout(border=BORDER, width=width))


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


def _runs(status):
    """Where backups and restores run (Docker mode): next to the data, or through the server and why."""
    worker = status.get("worker")
    if status.get("mode") != "docker" or not worker:
        return ""
    if worker.get("in_use"):
        return "<br>Runs: next to the data (helper container)"
    return f"<br>Runs: through the server: {html.escape(str(worker.get('why')))}"


def _place(place):
    return f"{place['type']} <b>{html.escape(place['name'])}</b>" if place else "<i>unknown</i>"


def _kind_tag(kind):
    kind = kind or "manual"
    if kind not in KIND_COLORS:
        return f'<span style="color: gray; font-size: 90%">{html.escape(kind)}</span>'
    return (f'<span style="background: {KIND_COLORS[kind]}; border: 1px solid silver; border-radius: 3px; '
            f'padding: 0 4px; font-size: 90%">{html.escape(kind)}</span>')


# the restore's preview -------------------------------------------------------------------------

def _choices(plan):
    """(label, path) of every path of the backup in a plan, folders first, at most CHOOSABLE."""
    items = [*(plan.get("added") or []), *(plan.get("overwritten") or []),
             *((plan.get("unchanged") or {}).get("items") or [])]
    folders = sorted(i["path"] for i in items if i.get("type") == "dir")
    files = sorted(i["path"] for i in items if i.get("type") != "dir")
    choices = [(f"{p}/", p) for p in folders] + [(p, p) for p in files]
    return choices[:CHOOSABLE], max(len(choices) - CHOOSABLE, 0)


def _counts(plan, mode):
    counts = ", ".join(f"{len(plan.get(k) or [])} {k}" for k in ("added", "overwritten", "removed")
                       if k != "removed" or mode == "replace")
    return f"{counts}, {(plan.get('unchanged') or {}).get('count', 0)} unchanged"


def _cells(notebook):
    if not notebook:
        return ""
    return (f' <span style="color: gray">— notebook: {notebook.get("cells_added", 0)} cells added, '
            f'{notebook.get("cells_removed", 0)} removed, {notebook.get("cells_changed", 0)} changed</span>')


def _plan_html(plan, mode):
    """What a restore would overwrite, remove (replace) and add, path by path."""
    sections = [("Overwritten", "DarkOrange", plan.get("overwritten") or []),
                ("Removed", "red", (plan.get("removed") or []) if mode == "replace" else []),
                ("Added", "green", plan.get("added") or [])]
    lines = []
    for title, color, items in sections:
        if not items:
            continue
        lines.append(f'<b style="color: {color}">{title} ({len(items)})</b>')
        for item in items[:LISTED]:
            path = html.escape(item["path"]) + ("/" if item.get("type") == "dir" else "")
            size = "" if item.get("type") == "dir" else f' <span style="color: gray">{_size(item.get("size"))}</span>'
            lines.append(f"&nbsp;&nbsp;<code>{path}</code>{size}{_cells(item.get('notebook'))}")
        if len(items) > LISTED:
            lines.append(f"&nbsp;&nbsp;<i>… and {len(items) - LISTED} more</i>")
    if not lines:
        lines.append("<i>Nothing would change: the files are as in the backup.</i>")
    return '<div style="line-height: 1.4; font-size: 90%; white-space: nowrap">' + "<br>".join(lines) + "</div>"


# the schedule -----------------------------------------------------------------------------------

def _schedule_form(spec):
    """(choice, text) of the schedule form that shows a spec of the server."""
    raw = (spec or "").strip()
    text = raw.lower()
    if text in ("", "off", "none"):
        return "off", ""
    every = _EVERY.match(text)
    if every:
        minutes = int(every.group(1)) * (1 if every.group(2).startswith("m") else 60)
        return {60: ("hourly", ""), 360: ("every6h", "")}.get(minutes, ("custom", raw))
    daily = _DAILY.match(text)
    if daily and int(daily.group(1)) < 24 and int(daily.group(2)) < 60:
        return "daily", f"{int(daily.group(1)):02d}:{daily.group(2)}"
    return "custom", raw


def _schedule_spec(choice, text):
    """The spec to send for the form; the server checks it."""
    return {"off": "off", "hourly": "every 1h", "every6h": "every 6h"}.get(
        choice, f"daily {text.strip()}" if choice == "daily" else text.strip())


def _spec_words(spec):
    text = (spec or "").strip().lower()
    if text in ("", "off", "none"):
        return "Off"
    every = _EVERY.match(text)
    if every:
        n, minutes = int(every.group(1)), every.group(2).startswith("m")
        unit = ("minute" if minutes else "hour") + ("" if n == 1 else "s")
        return f"Every {unit}" if n == 1 else f"Every {n} {unit}"
    daily = _DAILY.match(text)
    if daily:
        return f"Daily at {int(daily.group(1)):02d}:{daily.group(2)} UTC"
    return html.escape(spec)


def _last_run(last):
    if not last:
        return "never"
    when = f"{_created(last['time'])} UTC, " if last.get("time") else ""
    outcome = last.get("outcome")
    if outcome == "succeeded":
        return f"{when}<b>succeeded</b>: {html.escape(str(last.get('backup_id')))}"
    if outcome == "skipped":
        same = f" since {html.escape(str(last['same_as']))}" if last.get("same_as") else ""
        return f"{when}<b>skipped</b> (nothing changed{same})"
    if outcome == "failed":
        return f'{when}<b style="color: red">failed</b>'
    return f"{when}{html.escape(str(outcome))}"


class BackupPanel(widgets.VBox):
    """Back up, restore (all or chosen paths, after a preview), undo a restore, download and delete
    backups of the AI-Lab notebooks folder and its Secure Configuration Storage, and set the
    schedule of automatic backups. ``client`` defaults to ``BackupClient()`` (the kernel's own
    server)."""

    def __init__(self, client=None, poll=0.5, **kwargs):
        super().__init__(layout=widgets.Layout(display="flex", flex_flow="column", align_items="stretch",
                                               padding="0 0 12px 0"), **kwargs)
        self.add_class("ailab-backup-panel")
        self.poll = poll
        self.backups = []
        self.selected = None
        self.schedule = None
        self._toggles = {}
        self._pending = None
        self._restore_question = None  # (backup_id, mode, action, question) while a restore is asked
        self._choices = {}  # backup id -> the paths to choose from (a backup never changes)
        self._plans = 0  # the newest dry run asked; older answers are dropped
        self._filling = False
        self._busy = False
        self._loaded_spec = None
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
        self.restore_button = _button("Restore", "history", "Restore the selected backup (after a preview)")
        self.undo_button = _button("Undo restore", "undo", "Undo the last restore: bring back the state before "
                                   "it (its safety backup)", width="145px")
        self.undo_button.layout.margin = "0 0 0 20px"
        self.download = widgets.HTML(layout=widgets.Layout(width="100px"))
        self.delete_button = _button("Delete", "trash", "Delete the selected backup")
        self.refresh_button = _button("Refresh", "refresh", "Read the backups and the status again")

        self.question = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.paths = widgets.SelectMultiple(rows=6, layout=widgets.Layout(width="380px"))
        self.whole_button = _button("Whole backup", "check-square-o", "Restore everything (clear the choice)",
                                    width="140px")
        self.paths_note = widgets.HTML()
        self.choose = widgets.VBox([
            widgets.HTML(self._block("<b>Restore only</b> these files and folders (none chosen: the whole backup; "
                                     "Ctrl- or Shift-click for several):")),
            _row([self.paths, self.whole_button], width=WIDTH, justify_content="flex-start", align_items="flex-start",
                 padding="0", margin="0"),
            self.paths_note,
        ], layout=widgets.Layout(padding="0 10px"))
        self.preview = widgets.HTML(layout=widgets.Layout(max_height="170px", overflow="auto", padding="2px 6px",
                                                          border="solid 1px silver", margin="4px 10px"))
        self.yes_button = widgets.Button(description="Yes", button_style="danger",
                                         layout=widgets.Layout(width="150px"))
        self.no_button = widgets.Button(description="Cancel", layout=widgets.Layout(border=BORDER, width="125px"),
                                        style=BUTTON_STYLE)
        self.confirm = widgets.VBox([self.question, self.choose, self.preview,
                                     _row([self.yes_button, self.no_button], justify_content="flex-start")])
        self.progress = widgets.IntProgress(min=0, max=100, layout=widgets.Layout(width="220px"))
        self.progress_text = widgets.Label(layout=widgets.Layout(width="320px"))
        self.progress_row = _row([self.progress, self.progress_text], width=WIDTH)
        self.message = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.error = widgets.HTML(layout=widgets.Layout(padding="0 10px"))

        self.schedule_text = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.schedule_warning = widgets.HTML(layout=widgets.Layout(padding="0 10px", display="none"))
        self.schedule_choice = widgets.Dropdown(options=SCHEDULES, value="off", layout=widgets.Layout(width="140px"))
        self.schedule_value = widgets.Text(layout=widgets.Layout(width="90px", visibility="hidden"))
        self.schedule_button = _button("Save", "save", "Save the schedule (the server checks it)")

        self.store_warning = widgets.HTML(layout=widgets.Layout(padding="0 10px", display="none"))
        self.settings = None
        self._loaded_settings = None
        self.settings_text = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.helper_image = widgets.Dropdown(description="Helper image", options=[("(loading)", "")],
                                             style={"description_width": "110px"},
                                             layout=widgets.Layout(width="470px"))
        self.excludes = widgets.Textarea(description="Leave out", placeholder="one pattern a line, e.g. models_cache",
                                         rows=3, style={"description_width": "110px"},
                                         layout=widgets.Layout(width="470px"))
        self.keep_last = widgets.BoundedIntText(description="Keep newest", min=0, max=100_000,
                                                style={"description_width": "110px"},
                                                layout=widgets.Layout(width="200px"))
        self.settings_button = _button("Save settings", "save", "Save the settings (the server checks them)",
                                       width="140px")

        self._icons = {b.description: b.icon for b in (self.backup_button, self.restore_button, self.undo_button,
                                                        self.delete_button, self.refresh_button,
                                                        self.schedule_button, self.settings_button)}
        self._status = None
        self.offsite = OffsiteGroup(self, _button)  # s3: where each backup is, copies, the key
        self.offsite_group = _group(self.offsite.rows(_header, _row))
        self._icons.update({b.description: b.icon for b in self.offsite.buttons})
        for widget in (self.confirm, self.progress_row, self.choose, self.preview, self.offsite_group):
            _show(widget, False)
        self.release_move = ReleaseMoveRow(self, _button, _show)  # moving to a new AI-Lab release

        self.children = [
            _group([_header("AI-Lab Backup"), self.status, self.store_warning, self.warning,
                    self.release_move.offer_box]),
            _group([_header("Backups"), _row(columns, width=WIDTH, justify_content="flex-start"), self.rows]),
            self.offsite_group,
            _group([
                _header("Actions"),
                _row([self.label, self.backup_button]),
                _row([self.release_move.before_button], justify_content="flex-end"),
                _row([self.mode, self.restore_button, self.undo_button], width="540px", justify_content="flex-start"),
                _row([self.download, self.delete_button, self.refresh_button]),
                self.confirm, self.progress_row, self.message, self.error,
            ]),
            _group([
                _header("Automatic backups"),
                self.schedule_text, self.schedule_warning,
                _row([self.schedule_choice, self.schedule_value, self.schedule_button]),
            ]),
            _group([
                _header("Settings"),
                self.settings_text,
                _row([self.helper_image], width=WIDTH),
                _row([self.excludes], width=WIDTH),
                _row([self.keep_last, widgets.HTML('<span style="color: gray">backups (0: all)</span>'),
                      self.settings_button], width=WIDTH),
            ]),
        ]
        self.restore_button.layout.margin = "0 0 0 25px"  # under "Back up now"
        self.backup_button.on_click(lambda b: self._backup())
        self.restore_button.on_click(lambda b: self._ask_restore())
        self.undo_button.on_click(lambda b: self._ask_undo())
        self.delete_button.on_click(lambda b: self._ask_delete())
        self.refresh_button.on_click(lambda b: self._start(self._refresh_clicked))
        self.yes_button.on_click(lambda b: self._confirmed())
        self.no_button.on_click(lambda b: self._cancel())
        self.whole_button.on_click(lambda b: setattr(self.paths, "value", ()))
        self.paths.observe(lambda change: self._paths_changed(), "value")
        self.mode.observe(lambda change: self._mode_changed(), "value")
        self.schedule_choice.observe(lambda change: self._schedule_choice_changed(change["old"]), "value")
        self.schedule_button.on_click(lambda b: self._start(self._save_schedule))
        self.settings_button.on_click(lambda b: self._start(self._save_settings))

        try:
            self.client = client or BackupClient()
        except BackupClientError as exc:
            self.client = None
            self.status.value = "<b>INACCESSIBLE</b>"
            self.schedule_text.value = "<b>INACCESSIBLE</b>"
            self._warn(str(exc))
            self._set_busy(True)
            for widget in (self.refresh_button, self.schedule_button, self.schedule_choice, self.schedule_value,
                           self.settings_button, self.helper_image, self.excludes, self.keep_last):
                widget.disabled = True
            return
        # a folder switched there changes the excludes shown under Settings
        self.in_folder = UsageBox(self.client, self._start, lambda: self._show_settings(self.client.settings()))
        self.children = [*self.children, _group([_header("In the folder"), self.in_folder])]
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
        self._show_settings(self.client.settings())
        self.in_folder.load()
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
        self._status = status
        docker = status.get("docker") or {}
        if docker.get("url") == "none":
            reach = "not used"
        elif docker.get("reachable"):
            reach = f"reachable ({html.escape(str(docker.get('version')))})"
        else:
            reach = "<b>NOT REACHABLE</b>"
        source, store, mode = _place(status.get("source")), _place(status.get("store")), status.get("mode")
        self.status.value = self._block(f"Backs up {source}<br>into {store}<br>"
                                        f"Mode: <b>{html.escape(str(mode))}</b> · Docker: {reach}"
                                        + _runs(status))
        self._warn(status.get("hint"))
        # where the backups are and what deletes them: stays, in red, also after a backup
        warning = status.get("store_warning")
        self.store_warning.value = self._red(warning) if warning else ""
        _show(self.store_warning, bool(warning))
        self._show_schedule(status["schedule"] if "schedule" in status else self.client.schedule())
        self.release_move.show_status(status)

    def _warn(self, text):
        self.warning.value = self._red(text) if text else ""
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
                label = b.get("label") or ""
                cells = [widgets.Label(label, tooltip=label, layout=widgets.Layout(width=COLUMNS[1][1])),
                         widgets.HTML(_kind_tag(b.get("kind")), layout=widgets.Layout(width=COLUMNS[2][1])),
                         widgets.Label(_size(b.get("size_bytes")), layout=widgets.Layout(width=COLUMNS[3][1])),
                         widgets.Label(str(b.get("file_count", "")), layout=widgets.Layout(width=COLUMNS[4][1])),
                         widgets.HTML(where_tag(b), layout=widgets.Layout(width=COLUMNS[5][1]))]
                rows.append(_row([toggle, *cells], width=WIDTH, justify_content="flex-start", padding="0"))
            if not rows:
                rows = [widgets.HTML("<i>No backups yet: press “Back up now”.</i>")]
            self.rows.children = rows
            self.selected = None
            if keep is None and backups:
                keep = backups[0]["id"]
            self.select(keep)
        self._show_undo()
        _show(self.offsite_group, self.offsite.show(self._status, backups))

    def select(self, backup_id):
        """Select a backup by its id (None: no selection), as clicking its row does."""
        if backup_id is not None and backup_id not in self._toggles:
            raise KeyError(f"No backup {backup_id!r} in the panel.")
        asked = self._restore_question
        if asked and asked[0] != backup_id and self._pending is asked[2]:
            self._cancel()  # the question was about another backup
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
        self.offsite.enable()
        if self.selected is None or self.client is None:
            self.download.value = '<span style="color: gray; padding: 0 10px">Download</span>'
        else:
            href = html.escape(self.client.download_href(self.selected))
            self.download.value = (
                f'<a href="{href}" download title="Download {html.escape(self.selected)}" style="display: '
                'inline-block; box-sizing: border-box; width: 100px; height: 28px; line-height: 26px; '
                'text-align: center; border: 1px solid; background: LightCyan; color: inherit; '
                'text-decoration: none">&#x2B07; Download</a>')

    def _safety_backup(self):
        """The backup an undo would bring back: the newest safety backup (as the server picks it)."""
        return next((b for b in self.backups if b.get("kind") == "safety"), None)

    def _show_undo(self):
        self.undo_button.disabled = self._busy or self._safety_backup() is None

    # the schedule -----------------------------------------------------------------------------

    def _show_schedule(self, schedule):
        self.schedule = schedule
        if not schedule:
            self.schedule_text.value = self._block("Schedule: <i>unknown</i>")
            self._schedule_warn(None)
            return
        next_run = f"{_created(schedule['next'])} UTC" if schedule.get("next") else "—"
        self.schedule_text.value = self._block(f"Schedule: <b>{_spec_words(schedule.get('spec'))}</b><br>"
                                               f"Last run: {_last_run(schedule.get('last'))}<br>"
                                               f"Next run: {next_run}")
        self._schedule_warn(schedule.get("warning"))
        unchanged = self._loaded_spec is None or self._form_spec() == _schedule_spec(*_schedule_form(self._loaded_spec))
        if unchanged:  # the form follows the server unless the user is editing it
            self._loaded_spec = schedule.get("spec") or "off"
            choice, text = _schedule_form(self._loaded_spec)
            self.schedule_choice.value = choice
            self.schedule_value.value = text

    def _schedule_warn(self, text):
        self.schedule_warning.value = self._red(text) if text else ""
        _show(self.schedule_warning, bool(text))

    def _form_spec(self):
        return _schedule_spec(self.schedule_choice.value, self.schedule_value.value)

    def _schedule_choice_changed(self, old):
        choice = self.schedule_choice.value
        self.schedule_value.layout.visibility = "visible" if choice in ("daily", "custom") else "hidden"
        if choice == "daily":
            self.schedule_value.placeholder = "HH:MM"
            if not re.match(r"^\d{1,2}:\d{2}$", self.schedule_value.value.strip()):
                self.schedule_value.value = DEFAULT_DAILY
        elif choice == "custom":  # "Other …" starts from the schedule chosen before, to edit it
            self.schedule_value.placeholder = "every 30m"
            self.schedule_value.value = "" if old == "off" else _schedule_spec(old, self.schedule_value.value)
        else:
            self.schedule_value.value = ""

    def _save_schedule(self):
        self.error.value = self.message.value = ""
        self.schedule_button.icon = self._icons[self.schedule_button.description]
        spec = self._form_spec()
        schedule = self.client.set_schedule(spec)
        self._loaded_spec = None  # show what the server keeps
        self._show_schedule(schedule)
        self.schedule_button.icon = "check"
        self.message.value = f"Schedule saved: {_spec_words(schedule.get('spec'))}."

    # the settings -----------------------------------------------------------------------------

    def _settings_form(self):
        return (self.helper_image.value, [p.strip() for p in self.excludes.value.splitlines() if p.strip()],
                self.keep_last.value)

    def _show_settings(self, settings):
        """Show the server's settings; the form follows them unless the user is editing it."""
        self.settings = settings
        kept = settings.get("kept") or []
        where = html.escape(str((settings.get("store") or {}).get("name", "the store")))
        self.settings_text.value = self._block(
            f"Kept beside the store ({where}), so they survive restarts: "
            f"<b>{html.escape(', '.join(kept)) if kept else 'none yet'}</b>; the others come from "
            "the configuration (<code>~/.jupyter/jupyter_server_config.py</code>).")
        options = []
        for image in settings.get("helper_images") or []:
            name = image["name"]
            text = f"{name or '(automatic)'} — {image.get('why', '')}" + ("" if image.get("present") else
                                                                            " (not present)")
            options.append((text, name))
        if self._loaded_settings is None or self._settings_form() == self._loaded_settings:
            self.helper_image.options = options or [("(automatic)", "")]
            current = settings.get("helper_image") or ""
            self.helper_image.value = current if current in {v for _, v in options} else options[0][1] if options else ""
            self.excludes.value = "\n".join(settings.get("excludes") or [])
            self.keep_last.value = int(settings.get("keep_last") or 0)
            self._loaded_settings = self._settings_form()

    def _save_settings(self):
        self.error.value = self.message.value = ""
        self.settings_button.icon = self._icons[self.settings_button.description]
        form, loaded = self._settings_form(), self._loaded_settings or (None, None, None)
        changes = {key: new for key, new, old in zip(("helper_image", "excludes", "keep_last"), form, loaded)
                   if new != old}  # only what was changed here becomes kept beside the store
        if not changes:
            self.message.value = "Nothing changed in the settings."
            return
        settings = self.client.set_settings(**changes)
        self._loaded_settings = None  # show what the server keeps
        self._show_settings(settings)
        self.in_folder.load()  # other excludes: other sizes left out
        self.settings_button.icon = "check"
        self.message.value = "Settings saved beside the store."

    # actions ----------------------------------------------------------------------------------

    def _backup(self):
        label = self.label.value.strip()
        self._launch(self.backup_button, lambda: self._follow(self.client.create(label)), "backup")

    def _ask_restore(self, keep=()):
        if not self._need_selection():
            return
        backup_id, mode = self.selected, self.mode.value
        what = ("The notebooks folder (or the chosen paths) becomes exactly as in the backup: files made since "
                "are <b>deleted</b>." if mode == "replace" else
                "Files from the backup overwrite the ones here; other files stay.")
        question = f"Restore <b>{html.escape(backup_id)}</b> ({mode})? {what}"
        action = self._ask(question + "<br><i>Comparing with the notebooks folder …</i>", f"Yes, {mode}",
                           lambda: self._restore(backup_id, mode, self._chosen()))
        self._restore_question = (backup_id, mode, action, question)
        choices = self._choices.get(backup_id)
        offered = {path for _, path in choices[0]} if choices else set()
        self._filling = True
        try:
            self.paths.options = choices[0] if choices else []
            self.paths.value = tuple(p for p in keep if p in offered)
        finally:
            self._filling = False
        self.paths_note.value = ""
        _show(self.choose, choices is not None)
        _show(self.preview, False)
        self._start(self._preview, action, backup_id, mode, question, self._chosen())

    def _chosen(self):
        return list(self.paths.value) or None

    def _preview(self, action, backup_id, mode, question, paths=None, selectable=True):
        """Say in the question what the restore would change (the server's dry run), list the paths
        in the preview box, and offer the backup's paths for a selective restore. An undo
        (``selectable=False``) is asked even when its dry run fails: the server decides."""
        with self._lock:
            self._plans += 1
            ticket = self._plans
        try:
            plan = self.client.plan_restore(backup_id, mode, paths)
        except BackupClientError as exc:
            if self._pending is action and not selectable:
                self.question.value = self._block(f"{question}<br><i>Cannot compare with the notebooks folder: "
                                                  f"{html.escape(exc.message)}</i>")
                return
            if self._pending is action:
                self._cancel()
            raise
        if self._pending is not action or ticket != self._plans:
            return  # the question is gone, or a newer dry run was asked
        if selectable and backup_id not in self._choices and not paths:
            self._choices[backup_id] = _choices(plan)
            self._filling = True
            try:
                self.paths.options = self._choices[backup_id][0]
            finally:
                self._filling = False
        if selectable:
            more = self._choices.get(backup_id, ((), 0))[1]
            self.paths_note.value = (f'<span style="color: gray; font-size: 90%">… and {more} more files: choose '
                                     "their folder.</span>" if more else "")
            _show(self.choose, backup_id in self._choices)
        only = f" (only the {len(paths)} chosen)" if paths else ""
        self.question.value = self._block(f"{question}<br>Files{only}: {_counts(plan, mode)}.")
        self.preview.value = _plan_html(plan, mode)
        _show(self.preview, True)

    def _paths_changed(self):
        asked = self._restore_question
        if self._filling or not asked or self._pending is not asked[2]:
            return
        backup_id, mode, action, question = asked
        self.preview.value = "<i>Comparing with the notebooks folder …</i>"
        self._start(self._preview, action, backup_id, mode, question, self._chosen())

    def _mode_changed(self):
        asked = self._restore_question
        if asked and self._pending is asked[2]:
            self._ask_restore(keep=self.paths.value)  # the same question for the other mode

    def _restore(self, backup_id, mode, paths):
        self._launch(self.restore_button,
                     lambda: self._follow(self.client.restore(backup_id, mode, paths=paths)), "restore")

    def _ask_undo(self):
        self.error.value = ""
        safety = self._safety_backup()
        if safety is None:
            self._fail("There is no restore to undo.")
            return
        question = (f"Undo the last restore? The notebooks folder becomes exactly as before it: the safety backup "
                    f"<b>{html.escape(safety['id'])}</b> is restored with <i>replace</i>. The state now is kept "
                    "as a new safety backup, so the undo can be undone too.")
        action = self._ask(question + "<br><i>Comparing with the notebooks folder …</i>", "Yes, undo",
                           lambda: self._undo())
        self._start(self._preview, action, safety["id"], "replace", question, selectable=False)

    def _undo(self):
        self._launch(self.undo_button, lambda: self._follow(self.client.undo()), "undo")

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
        self._restore_question = None
        for widget in (self.choose, self.preview):
            _show(widget, False)
        _show(self.confirm, True)
        return action

    @staticmethod
    def _block(text):
        """HTML lines closer together than the widget's default line height."""
        return f'<div style="line-height: 1.5; margin: 4px 0">{text}</div>'

    @staticmethod
    def _red(text):
        return f'<p style="color: red; word-wrap: break-word">{html.escape(text)}</p>'

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
        self._busy = busy
        for b in (self.backup_button, self.restore_button, self.delete_button, self.yes_button,
                  self.release_move.move_button, self.release_move.before_button):
            b.disabled = busy
        self._show_undo()
        self.offsite.enable()

    def _fail(self, text):
        self.error.value = self._red(text)

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
            undone = result.get("undone")
            self.progress_text.value = "Undo done." if undone else "Restore done."
            if undone:
                note = (f"Undid the last restore: the notebooks folder is as before it again "
                        f"(<b>{html.escape(str(undone))}</b>), {result.get('file_count', '?')} files.")
            else:
                paths = result.get("paths")
                only = f" of {', '.join(html.escape(p) for p in paths)}" if paths else ""
                note = (f"Restored <b>{html.escape(str(job.get('backup_id')))}</b> "
                        f"({html.escape(str(result.get('mode')))}): {result.get('file_count', '?')} files{only}.")
            if result.get("safety_backup_id"):
                note += (f"<br>The state before is kept as <b>{html.escape(result['safety_backup_id'])}</b>: "
                         "“Undo restore” brings it back.")
            if result.get("hint"):
                note += f"<br><b>{html.escape(result['hint'])}</b>"
            note += reload_note(result)
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
