"""The notebook panel's part of moving to a new AI-Lab release: "Back up before upgrading", and,
when the status offers it, "Bring my work into this release" with its preview by category."""

import html

import ipywidgets as widgets

CATEGORY_TITLES = (  # category of the plan, title, colour
    ("scs", "Secure Configuration Storage: brought back", "DarkBlue"),
    ("brought_back", "Yours: brought back", "green"),
    ("overwritten", "Yours: replace the file here", "DarkOrange"),
    ("kept_both", "Changed by you and by the new release: both kept", "purple"),
    ("left_to_release", "Unchanged defaults: left as this release ships them", "gray"),
    ("added_by_release", "New in this release: stay", "gray"),
)
LISTED = 100


def release_counts(plan):
    counts = plan.get("counts") or {}
    return (f"{counts.get('scs', 0)} SCS, {counts.get('brought_back', 0)} brought back, {counts.get('overwritten', 0)} "
            f"replaced by yours, {counts.get('kept_both', 0)} kept both, {counts.get('left_to_release', 0)} left to "
            f"the release, {counts.get('unchanged', 0)} unchanged")


def release_plan_html(plan):
    """The preview of a release move, category by category."""
    lines = []
    for category, title, color in CATEGORY_TITLES:
        items = plan.get(category) or []
        if not items:
            continue
        lines.append(f'<b style="color: {color}">{title} ({len(items)})</b>')
        for item in items[:LISTED]:
            extra = ""
            if item.get("beside"):
                extra = f" — the release's version as <code>{html.escape(item['beside'])}</code>"
            elif item.get("why"):
                extra = f' <span style="color: gray">({html.escape(item["why"])})</span>'
            elif item.get("release_change"):
                extra = f' <span style="color: gray">({html.escape(item["release_change"])} in this release)</span>'
            lines.append(f"&nbsp;&nbsp;<code>{html.escape(item['path'])}</code>{extra}")
        if len(items) > LISTED:
            lines.append(f"&nbsp;&nbsp;<i>… and {len(items) - LISTED} more</i>")
    if not lines:
        lines.append("<i>Nothing to bring in: the backup holds nothing of yours.</i>")
    return '<div style="line-height: 1.4; font-size: 90%; white-space: nowrap">' + "<br>".join(lines) + "</div>"


class ReleaseMoveRow:
    """Widgets the panel shows: an offer (when the status has one) and the before-upgrade button."""

    def __init__(self, panel, make_button, show):
        self.panel, self._show = panel, show
        self.move = None
        self.offer = widgets.HTML(layout=widgets.Layout(padding="0 10px"))
        self.move_button = make_button("Bring my work into this release", "level-up",
                                       "Preview, then restore your work of another release into this one",
                                       width="270px")
        self.before_button = make_button("Back up before upgrading", "archive",
                                         "Back up now, labelled 'Before upgrading' with this release", width="210px")
        panel._icons.update({b.description: b.icon for b in (self.move_button, self.before_button)})
        self.offer_box = widgets.VBox([self.offer, self.move_button],
                                      layout=widgets.Layout(padding="0 10px", border="solid 1px DarkOrange",
                                                            margin="4px 10px"))
        self.move_button.on_click(lambda b: self.ask())
        self.before_button.on_click(lambda b: self.back_up_before_upgrading())
        show(self.offer_box, False)

    def show_status(self, status):
        self.move = (status.get("release") or {}).get("move")
        self.offer.value = self.panel._block(html.escape(self.move["message"])) if self.move else ""
        self._show(self.offer_box, bool(self.move))

    def back_up_before_upgrading(self):
        panel = self.panel
        panel._launch(self.before_button, lambda: panel._follow(panel.client.create(before_upgrade=True)), "backup")

    def ask(self):
        if not self.move:
            return
        panel, backup_id = self.panel, self.move["backup_id"]
        question = (f"Bring your work of <b>{html.escape(backup_id)}</b> into this release? What you made or "
                    "changed and the Secure Configuration Storage come back; notebooks you did not change stay "
                    "as this release ships them. A safety backup is taken first (“Undo restore”).")
        action = panel._ask(question + "<br><i>Comparing with the notebooks folder …</i>", "Yes, bring it in",
                            lambda: panel._launch(self.move_button, lambda: panel._follow(
                                panel.client.restore(backup_id, "release-move")), "restore"))
        panel._start(self._preview, action, backup_id, question)

    def _preview(self, action, backup_id, question):
        panel = self.panel
        plan = panel.client.plan_restore(backup_id, "release-move")
        if panel._pending is not action:
            return  # the question is gone
        panel.question.value = panel._block(f"{question}<br>Files: {release_counts(plan)}.")
        panel.preview.value = release_plan_html(plan)
        self._show(panel.preview, True)
