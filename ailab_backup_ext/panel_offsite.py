"""The panel's "Off the machine" group: where each backup lives, copying to the second store
(``AILabBackup.copy_to``, e.g. S3), retrying pending copies, and making the encryption key.

The private key is shown once, in a text box of this group, until the user says it is saved: then
the box is emptied, so the key is no longer in the widget's state (which JupyterLab can save into
the notebook file). It is never printed (a cell's output is saved with the notebook), never logged,
and the server keeps it only in its key file outside the notebooks folder.
"""

import html

import ipywidgets as widgets

WHERE_COLORS = {"both": "PaleGreen", "here": "Moccasin", "off the machine": "LightCyan"}
WHERE_TIPS = {"both": "Kept here and off the machine", "here": "Kept only on this machine",
              "off the machine": "Kept only off the machine (restores read it from there)"}


def where_tag(backup):
    """A backup's place: here, off the machine or both, and "copy pending" while its copy waits."""
    where = backup.get("where")
    if not where:
        return ""
    tag = (f'<span title="{WHERE_TIPS.get(where, "")}" style="background: {WHERE_COLORS.get(where, "white")}; '
           f'border: 1px solid silver; border-radius: 3px; padding: 0 4px; font-size: 90%">{html.escape(where)}</span>')
    if backup.get("copy") == "pending":
        tag += ' <span style="color: DarkOrange; font-size: 90%" title="Retried by the server">copy pending</span>'
    return tag


def second_store(status):
    """(the second store's description or None, the encryption description or None)."""
    store = (status or {}).get("store") or {}
    second = store.get("copy_to")
    off = second if second else store if store.get("type") == "s3" else None
    return second, (off or {}).get("encryption")


def key_problem(encryption, backups):
    """A red-worthy sentence when encrypted backups exist but the key cannot open them."""
    if not encryption:
        return None
    if encryption.get("error"):
        return encryption["error"]
    if not encryption.get("public_key") and any(b.get("encrypted") for b in backups):
        return (f"Backups off the machine are encrypted, but the key is missing: put the key you saved into "
                f"{encryption.get('key_file')} (mode 0600). Without it they cannot be restored.")
    return None


class OffsiteGroup:
    """Built by :class:`~ailab_backup_ext.panel.BackupPanel`, which calls :meth:`show` with each
    status and listing; uses the panel's confirm row, message and error areas and its threads."""

    def __init__(self, panel, button):
        self.panel = panel
        self.second = None
        self.encryption = None
        self.text = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.problem = widgets.HTML(layout=widgets.Layout(padding="0 10px", display="none"))
        self.copy_button = button("Copy selected", "cloud-upload", "Copy the selected backup off the machine",
                                  width="140px")
        self.copy_all_button = button("Copy all", "cloud-upload", "Copy every backup that is only here off the "
                                      "machine (pending copies too)", width="140px")
        self.delete_here_button = button("Delete here", "trash", "Delete only the copy on this machine of the "
                                         "selected backup (the one off the machine stays)", width="140px")
        self.key_button = button("Make key…", "key", "Make the key that encrypts backups kept off the machine",
                                 width="140px")
        self.key_text = widgets.Textarea(rows=2, layout=widgets.Layout(width="520px"))
        self.key_note = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.key_saved_button = widgets.Button(description="I have saved the key", button_style="danger",
                                               icon="check", layout=widgets.Layout(width="200px"))
        self.key_box = widgets.VBox([self.key_note, widgets.Box([self.key_text],
                                                                layout=widgets.Layout(padding="0 10px")),
                                     widgets.Box([self.key_saved_button], layout=widgets.Layout(padding="4px 10px"))])
        self.buttons = [self.copy_button, self.copy_all_button, self.delete_here_button, self.key_button]
        self.copy_button.on_click(lambda b: self._copy_selected())
        self.copy_all_button.on_click(lambda b: self._copy_all())
        self.delete_here_button.on_click(lambda b: self._ask_delete_here())
        self.key_button.on_click(lambda b: self._ask_key())
        self.key_saved_button.on_click(lambda b: self.forget_key())
        self.key_box.layout.display = "none"

    def rows(self, header, row):
        """The group's children (``header`` and ``row`` are the panel's layout helpers)."""
        self.group_children = [header("Off the machine"), self.text, self.problem,
                               row([self.copy_button, self.copy_all_button, self.delete_here_button], width="560px",
                                   justify_content="flex-start"),
                               row([self.key_button], width="560px", justify_content="flex-start"), self.key_box]
        return self.group_children

    # showing ------------------------------------------------------------------------------------

    def show(self, status, backups):
        """Show the second store and the key; returns whether the group has anything to show."""
        self.second, self.encryption = second_store(status)
        if not self.second and not self.encryption:  # nothing kept off the machine (or no status yet)
            return False
        lines = []
        if self.second:
            lines.append(f"Second copy in <b>{html.escape(str(self.second.get('name')))}</b>"
                         f" ({html.escape(str(self.second.get('endpoint') or self.second.get('type')))})")
            pending = (status.get("store") or {}).get("copies_pending") or []
            if pending:
                copies = "copy" if len(pending) == 1 else "copies"
                lines.append(f'<b style="color: DarkOrange">{len(pending)} {copies} pending</b>: retried by the '
                             "server; “Copy all” tries now.")
        enc = self.encryption
        if enc and enc.get("public_key"):
            lines.append(f"Encrypted ({html.escape(str(enc.get('mode')))}) with the key "
                         f"<code>{html.escape(enc['public_key'][:16])}…</code> in "
                         f"<code>{html.escape(str(enc.get('key_file')))}</code>")
        elif enc and not enc.get("error"):
            lines.append("<b>Not encrypted</b>: no key yet. “Make key…” makes one, so the storage provider can "
                         "read nothing.")
        self.text.value = self.panel._block("<br>".join(lines))
        problem = key_problem(enc, backups)
        if problem is None and self.second:
            error = (status.get("store") or {}).get("copy_error")
            problem = f"The last copy failed: {error}" if error else None
        self.problem.value = self.panel._red(problem) if problem else ""
        self.problem.layout.display = "" if problem else "none"
        self.enable()
        return True

    def enable(self):
        selected = next((b for b in self.panel.backups if b["id"] == self.panel.selected), None)
        busy = self.panel._busy or not self.second
        self.copy_button.disabled = busy or selected is None or selected.get("where") != "here"
        self.delete_here_button.disabled = busy or selected is None or selected.get("where") != "both"
        self.copy_all_button.disabled = busy or not any(b.get("where") == "here" for b in self.panel.backups)
        self.key_button.disabled = self.panel._busy or not self.encryption or bool(self.encryption.get("public_key"))

    # actions ------------------------------------------------------------------------------------

    def _copy_selected(self):
        backup_id = self.panel.selected
        self.panel._launch(self.copy_button, lambda: self._follow(self.panel.client.copy(backup_id)), "copy")

    def _copy_all(self):
        self.panel._launch(self.copy_all_button, lambda: self._follow(self.panel.client.copy()), "copy")

    def _follow(self, job):
        panel = self.panel
        try:
            job = panel.client.wait(job, on_progress=panel._show_progress, poll=panel.poll)
        finally:
            panel._refresh()  # where each backup is now, also after a failed copy (pending)
        panel.progress.value, panel.progress.bar_style = panel.progress.max, "success"
        result = job.get("result") or {}
        copied, already = result.get("copied") or [], result.get("already") or []
        panel.progress_text.value = "Copy done."
        panel.message.value = panel._block(
            f"Copied {len(copied)} backup{'s' if len(copied) != 1 else ''} off the machine"
            + (f" ({len(already)} already there)" if already else "") + ".")

    def _ask_delete_here(self):
        backup_id = self.panel.selected
        self.panel._ask(f"Delete the copy of <b>{html.escape(str(backup_id))}</b> on this machine? The copy off "
                        "the machine stays, and restores read it from there.", "Yes, delete here",
                        lambda: self._delete_here(backup_id))

    def _delete_here(self, backup_id):
        def work():
            self.panel.client.delete(backup_id, where="here")
            self.panel.message.value = f"Deleted the copy of {html.escape(backup_id)} on this machine."
            self.panel._refresh()

        self.panel._launch(self.delete_here_button, work)

    def _ask_key(self):
        self.panel._ask(
            "Make an encryption key? Backups copied off the machine are then encrypted with it on this machine. "
            "<b>You must save the key somewhere safe, away from this machine (a password manager): without it, "
            "nothing encrypted with it can be restored, by anyone.</b> It is shown only once.",
            "Yes, make a key", self._make_key)

    def _make_key(self):
        def work():
            key = self.panel.client.make_key()
            self.key_note.value = self.panel._block(
                f'<b style="color: red">Save this key now — without it nothing can be restored.</b> '
                f"{html.escape(key.get('message', ''))} It is shown only this once; the server keeps it in "
                f"<code>{html.escape(str(key.get('key_file')))}</code> only. Copy it from the box below, then "
                "press the button: the box is emptied.")
            self.key_text.value = key["private_key"]
            self.key_box.layout.display = ""
            self.panel._refresh()

        self.panel._launch(self.key_button, work)

    def forget_key(self):
        """Empty the key's box (the key leaves the widget state) and hide it."""
        self.key_text.value = ""
        self.key_note.value = ""
        self.key_box.layout.display = "none"
        self.panel.message.value = "The key is no longer shown. Keep your saved copy safe."

