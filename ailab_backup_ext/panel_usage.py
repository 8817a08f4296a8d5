"""The notebook panel's "In the folder" group and its note after a restore (see :mod:`.panel`).

The size of each top-level folder with a switch to leave it out of backups (kept beside the store
as the excludes setting), and the next backup's estimate. After a restore, the kernel cannot reach
JupyterLab's open documents: JupyterLab with this extension reloads the restored ones by itself;
the note names the restored notebooks to reload in other front ends.
"""

import html

import ipywidgets as widgets

LISTED_TO_RELOAD = 10


def size_text(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def estimate_text(usage):
    e = usage["estimate"]
    stored = "" if e.get("compressed_bytes") is None else f", about {size_text(e['compressed_bytes'])} stored"
    return f"The next backup would hold {size_text(e['bytes'])} in {e['files']} files{stored} (an estimate)."


def reload_note(result):
    """HTML for the panel's message after a restore: which restored documents to reload."""
    restored = (result or {}).get("restored")
    if not restored:
        return ""
    documents = [p for p in restored.get("paths", []) if p.endswith((".ipynb", ".py", ".md", ".txt", ".json"))]
    if not documents:
        return ""
    shown = ", ".join(html.escape(p) for p in documents[:LISTED_TO_RELOAD])
    more = f" and {len(documents) - LISTED_TO_RELOAD} more" if len(documents) > LISTED_TO_RELOAD else ""
    return ("<br>JupyterLab reloads the restored documents it has open by itself. If one of these is open "
            f"elsewhere, reload it there (File › Reload from Disk) before saving: {shown}{more}.")


class UsageBox(widgets.VBox):
    """Rows "[x] back up  folder/  size  files" and the estimate; ``start`` runs work in the
    panel's background threads, ``changed`` is called after a folder was switched."""

    def __init__(self, client, start, changed=lambda: None):
        super().__init__(layout=widgets.Layout(padding="0 10px"))
        self.client = client
        self._start = start
        self._changed = changed
        self.usage = None
        self._filling = False
        self.switches = {}
        self.text = widgets.HTML("Measuring …")
        self.estimate = widgets.HTML()
        self.rows = widgets.VBox(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.children = [self.text, self.rows, self.estimate]

    def load(self, refresh=False):
        self.show(self.client.usage(refresh))

    def show(self, usage):
        self.usage = usage
        self._filling = True
        try:
            rows = []
            self.switches = {}
            for row in usage["folders"]:
                name = "(files at the top)" if row["type"] == "files" else row["name"] + "/"
                facts = widgets.HTML(f"{html.escape(name)} &nbsp; {size_text(row['bytes'])}, {row['files']} files"
                                     + (f" <span style='color: gray'>(left out by {html.escape(row['excluded_by'])!s})"
                                        "</span>" if row["excluded"] and row["excluded_by"] != row["name"] else ""))
                if row["type"] != "folder":
                    rows.append(widgets.HBox([widgets.HTML(layout=widgets.Layout(width="110px")), facts]))
                    continue
                switch = widgets.Checkbox(value=not row["excluded"], description="back up", indent=False,
                                          disabled=row["excluded"] and row["excluded_by"] != row["name"],
                                          layout=widgets.Layout(width="110px"))
                switch.observe(lambda change, folder=row["name"]: self._switched(folder, change["new"]), "value")
                self.switches[row["name"]] = switch
                rows.append(widgets.HBox([switch, facts]))
            self.rows.children = rows
            self.text.value = (f"{size_text(usage['total']['bytes'])} in {usage['total']['files']} files. "
                               "Untick a folder to leave it out of backups.")
            note = html.escape(usage["estimate"]["note"])
            self.estimate.value = f"<span title='{note}'>{estimate_text(usage)}</span>"
        finally:
            self._filling = False

    def _switched(self, folder, back_up):
        if not self._filling:
            self._start(self._set, folder, back_up)

    def _set(self, folder, back_up):
        try:
            self.show(self.client.set_folder_excluded(folder, not back_up))
            self._changed()
        except Exception:
            self.load()  # refused: show the folders as they are; the panel shows the error
            raise
