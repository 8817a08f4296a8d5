"""Settings a user makes in the UIs or with ``ailab-backup settings``: the helper image, the
excludes and the retention (``keep_last``), plus the schedule (kept by :mod:`.schedule`).

Inside AI-Lab's Docker edition, environment variables never reach the server (its entrypoint runs
Jupyter through sudo), so these are kept beside the store (``settings.json``), as the schedule is:
they survive restarts, never land in the notebooks, and win over ``AILabBackup``'s configured
values until reset. Free of tornado.

A request may not name an arbitrary image: the helper image is one the server offers (see
:meth:`Settings.offered_images`), present in Docker. Excludes are relative glob patterns.
"""

import os
import posixpath
import threading

from .errors import BackupError

STATE = "settings"
_NOT_GIVEN = object()
KEYS = ("helper_image", "excludes", "keep_last")
SCHEDULE = "schedule"
FALLBACK_IMAGE = "ubuntu"  # as docker_helper falls back to
MAX_EXCLUDES = 100
MAX_PATTERN = 300
MAX_KEEP = 100_000


def check_excludes(value):
    """The excludes as a clean list; BackupError (nothing changed) when one is not a relative
    glob pattern inside the notebooks folder."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise BackupError("'excludes' must be a list of glob patterns, e.g. [\"models_cache\", \"*.tmp\"].")
    patterns = []
    for raw in value:
        pattern = raw.strip().rstrip("/")
        if not pattern:
            continue
        if len(pattern) > MAX_PATTERN or "\0" in pattern or "\n" in pattern:
            raise BackupError(f"The exclude pattern {raw[:60]!r} is too long or holds a control character.")
        if pattern.startswith(("/", "~")) or ".." in pattern.split("/") or pattern in (".", "*", "**"):
            raise BackupError(
                f"The exclude pattern {raw!r} is not a relative pattern inside the notebooks folder "
                "(no leading '/', no '..', not everything): use e.g. 'models_cache' or '*.tmp'.")
        if posixpath.normpath(pattern) != pattern:
            raise BackupError(f"Write the exclude pattern {raw!r} as {posixpath.normpath(pattern)!r}.")
        if pattern not in patterns:
            patterns.append(pattern)
    if len(patterns) > MAX_EXCLUDES:
        raise BackupError(f"At most {MAX_EXCLUDES} exclude patterns, please.")
    return patterns


def check_keep_last(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEEP:
        raise BackupError(f"'keep_last' must be a whole number from 0 (keep all) to {MAX_KEEP}.")
    return value


class Settings:
    """The effective settings of one :class:`~.core.BackupManager`: what is kept beside the
    store, else the configuration. ``pinned`` names keys given for one run (the CLI's options),
    which win over what is kept."""

    def __init__(self, manager):
        self.manager = manager
        self.pinned = set()
        self._state = None
        self._stamp = None
        self._lock = threading.RLock()

    # reading -------------------------------------------------------------------------------

    def load(self, refresh=False):
        """Read what is kept beside the store (once; again with ``refresh`` or when a folder
        store's file changed) and use its helper image."""
        with self._lock:
            stamp = self._file_stamp()
            if self._state is None or refresh or (stamp is not None and stamp != self._stamp):
                self._state = self.manager.store.read_state(STATE) or {}
                self._stamp = stamp
                self._apply_image()
            return self._state

    def invalidate(self):
        """Read again on the next use (the store was changed by another process)."""
        with self._lock:
            self._state = None

    def _file_stamp(self):
        path = getattr(self.manager.store, "path", None)  # a folder store: a stat tells a change
        if path is None:
            return None
        try:
            return os.stat(os.path.join(path, STATE + ".json")).st_mtime_ns
        except OSError:
            return 0

    def value(self, key):
        state = self.load()
        if key in state and key not in self.pinned:
            return state[key]
        return getattr(self.manager.config, key)

    @property
    def excludes(self):
        return list(self.value("excludes"))

    @property
    def keep_last(self):
        return self.value("keep_last")

    @property
    def helper_image(self):
        """The configured image name; '' lets Docker's helper choose (own image, else ubuntu)."""
        return self.value("helper_image")

    def _apply_image(self):
        if self.manager.docker is not None:
            self.manager.docker.use_image(self.helper_image)

    def offered_images(self):
        """The images a UI may choose for helpers: [{name, present, why}]. '' (automatic) is the
        configuration's choice; then the configured image, this server's own container image,
        the images of AILabBackup.helper_image_choices, and ubuntu."""
        cfg, docker = self.manager.config, self.manager.docker
        names = [("", "the configuration's choice" + (f" ({cfg.helper_image})" if cfg.helper_image else
                                                        ": this server's image, else ubuntu"))]
        if docker is None:
            return [{"name": "", "present": True, "why": "Docker is not used"}]
        if cfg.helper_image:
            names.append((cfg.helper_image, "configured (AILabBackup.helper_image)"))
        try:
            own = docker.own_container()
        except Exception:  # noqa: BLE001 - Docker unreachable: no own image to offer now
            own = None
        if own:
            names.append(((own.get("Config") or {}).get("Image") or own.get("Image"), "this server's own image"))
        names += [(name, "offered (AILabBackup.helper_image_choices)") for name in cfg.helper_image_choices]
        names.append((FALLBACK_IMAGE, "plain Ubuntu"))
        offered, seen = [], set()
        for name, why in names:
            if name in seen:
                continue
            seen.add(name)
            offered.append({"name": name, "present": name == "" or self._present(name), "why": why})
        return offered

    def _present(self, name):
        import docker as docker_sdk

        try:
            self.manager.docker.client.images.get(name)
            return True
        except docker_sdk.errors.ImageNotFound:
            return False
        except Exception:  # noqa: BLE001 - Docker unreachable: not usable now
            return False

    def describe(self, refresh=True):
        """The effective settings, where each comes from, and the helper images offered."""
        state = dict(self.load(refresh=refresh))
        cfg = self.manager.config
        scheduler = self.manager.scheduler
        if refresh:
            with scheduler._lock:  # not while the schedule thread records a run
                scheduler._state = None  # read it again too: another process may have set it
        return {
            "helper_image": self.helper_image,
            "excludes": self.excludes,
            "keep_last": self.keep_last,
            "schedule": scheduler.spec or "off",
            "kept": sorted([k for k in KEYS if k in state and k not in self.pinned]
                           + ([SCHEDULE] if "spec" in scheduler.state() else [])),
            "configured": {"helper_image": cfg.helper_image, "excludes": list(cfg.excludes),
                           "keep_last": cfg.keep_last, "schedule": cfg.schedule or "off"},
            "helper_images": self.offered_images(),
            "store": self.manager.store.describe(),
        }

    # changing ------------------------------------------------------------------------------

    def set(self, changes):
        """Change some settings: ``{key: value}``, a value of None resets the key to the
        configuration's. Everything is checked before anything is kept. Returns :meth:`describe`."""
        if not isinstance(changes, dict) or not changes:
            raise BackupError("Send the settings to change, e.g. {\"keep_last\": 10}.")
        unknown = sorted(set(changes) - set(KEYS) - {SCHEDULE})
        if unknown:
            raise BackupError(f"Unknown setting {unknown[0]!r}: the settings are "
                              f"{', '.join(KEYS + (SCHEDULE,))}.")
        checked = {}
        for key, value in changes.items():
            if value is None or key == SCHEDULE or (key == "helper_image" and value == ""):
                checked[key] = None if value == "" and key != SCHEDULE else value  # '' resets the image
            elif key == "excludes":
                checked[key] = check_excludes(value)
            elif key == "keep_last":
                checked[key] = check_keep_last(value)
            else:
                checked[key] = self._check_image(value)
        schedule = checked.pop(SCHEDULE, _NOT_GIVEN)  # a sentinel: False is a value, and refused
        if schedule is not None and schedule is not _NOT_GIVEN:
            from .schedule import parse

            if not isinstance(schedule, str):
                raise BackupError("'schedule' must be a text: 'every 6h', 'daily 02:30' (UTC) or 'off'.")
            parse(schedule)
        with self._lock:
            state = dict(self.load(refresh=True))
            for key, value in checked.items():
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
            old = self._state
            self._state = state
            try:
                self._apply_image()  # the new image writes the file: a missing old one cannot lock us out
                if checked:
                    self.manager.store.write_state(STATE, state)
            except BaseException:
                self._state = old
                self._apply_image()
                raise
            self._stamp = self._file_stamp()
            self.pinned -= set(checked)
        if schedule is None:
            self._reset_schedule()
        elif schedule is not _NOT_GIVEN:
            self.manager.scheduler.set(schedule)
        self.manager.note_change()
        return self.describe(refresh=False)

    def _reset_schedule(self):
        scheduler = self.manager.scheduler
        with scheduler._lock:
            state = scheduler.state()
            if "spec" in state:
                del state["spec"]
                scheduler._save()

    def _check_image(self, name):
        if not isinstance(name, str):
            raise BackupError("'helper_image' must be the name of an offered image.")
        name = name.strip()
        if self.manager.docker is None:
            raise BackupError("Docker is not used (AILabBackup.docker_url is 'none'): there is no helper image "
                              "to choose.")
        offered = {i["name"]: i for i in self.offered_images()}
        if name not in offered:
            choices = ", ".join(repr(n) for n in offered if n) or "none"
            raise BackupError(f"The image {name!r} is not one this server offers for helpers: choose one of "
                              f"{choices}, or '' for the configuration's choice. An administrator can offer "
                              "more with AILabBackup.helper_image_choices.")
        if not offered[name]["present"]:
            raise BackupError(f"The image {name!r} is not present in Docker: pull it first ('docker pull "
                              f"{name}' on the Docker host), then choose it again.")
        return name
