"""Long archive checks in a child process of their own (:func:`run_in_child`).

The check of an upload and the restore preview of a local folder parse tar headers in Python.
Run in a thread of the server, they hold the interpreter for tens of milliseconds at a time, and
the server's event loop (status, listings, the UIs) waits for them. In a child process they
only cost a core. The server runs at most ``AILabBackup.check_processes`` of them at a time.

The child only reads (the uploaded spool, the store, the notebooks folder): killing it, when its
client went away, leaves nothing behind. It reads its job as JSON on stdin and prints one JSON
line on stdout, ``{"result": ...}`` or ``{"error": {"type": ..., "message": ...}}``; it stops
by itself if the server that started it dies.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import time

from . import errors
from .errors import BackupError, Cancelled

POLL_SECONDS = 0.1  # how soon a check whose client went away is stopped
CHECK_NICENESS = 10
CONFIG_TYPES = (str, int, float, bool, list, type(None))
_KNOWN_ERRORS = {cls.__name__: cls for cls in vars(errors).values()
                 if isinstance(cls, type) and issubclass(cls, BackupError)}
log = logging.getLogger(__name__)
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_values(config):
    """The settings of ``config`` (an AILabBackup) as JSON, for the child to make the same one."""
    values = {name: getattr(config, name) for name in config.trait_names(config=True)}
    return {name: value for name, value in values.items() if isinstance(value, CONFIG_TYPES)}


def run_in_child(op, params, settings, root_dir, cancel=None, what="check"):
    """Run ``op`` of :func:`run` in a child process, on a BackupManager of these ``settings``
    (:func:`config_values`) and ``root_dir``; return its result, or raise its error. ``cancel``
    (an Event) set meanwhile kills the child and raises :class:`Cancelled`."""
    job = json.dumps({"op": op, "params": params, "config": settings, "root_dir": root_dir})
    child = subprocess.Popen([sys.executable, "-c", _start_code(os.getpid())], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
    try:
        pending = job.encode()
        while True:
            try:
                out, err = child.communicate(pending, timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pending = None  # given already: a second communicate() must not send it again
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"The {what} was stopped: its client went away. Nothing was kept.") from None
    finally:
        if child.poll() is None:
            child.kill()  # it only reads: nothing of it is left to remove
            child.communicate()
    return _outcome(child.returncode, out, err, what)


def _start_code(server):
    """The child's command: the very code of this server, wherever it was imported from, and not
    the working folder's modules (-c puts it first on the path: the notebooks folder, where a
    json.py may lie)."""
    return (f"import sys; sys.path.pop(0); p = {_PACKAGE_PARENT!r}\n"
            "if p not in sys.path: sys.path.insert(0, p)\n"
            f"from ailab_backup_ext.checker import main; sys.exit(main({server}))")


def _outcome(returncode, out, err, what):
    lines = out.strip().splitlines()
    try:
        message = json.loads(lines[-1]) if lines else {}
    except ValueError:
        message = {}
    if "result" in message:
        return message["result"]
    if "error" in message:
        reported = message["error"]
        kind, text = reported.get("type"), reported.get("message", "")
        if kind in _KNOWN_ERRORS:
            raise _KNOWN_ERRORS[kind](text)
        if kind == "OSError" and reported.get("errno"):
            raise OSError(reported["errno"], text, reported.get("filename"))
        reason = f"{kind}: {text}"
    else:
        reason = f"exit status {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    tail = err.decode(errors="replace").strip()[-2000:]
    log.warning("ailab-backup: the %s process failed (%s)%s", what, reason, f":\n{tail}" if tail else "")
    raise BackupError(f"The {what} stopped unexpectedly ({reason[:300]}); nothing was kept. "
                      "The server's log has the details; try again, and report it if it happens again.")


def run(job):
    """The child's side: the operation ``job`` names, on a BackupManager made like the server's."""
    from .config import AILabBackup
    from .core import BackupManager

    config = AILabBackup(**{**job["config"], "docker_url": "none"})
    manager = BackupManager(config, root_dir=job["root_dir"])
    params = job["params"]
    if job["op"] == "check_upload":
        return manager.check_upload_file(params["path"])
    if job["op"] == "plan":  # of a local folder and a folder store, as the server resolved them
        return manager._plan(params["backup_id"], params["mode"], params["paths"], None)
    raise BackupError(f"Unknown check {job['op']!r}.")


def _stop_when_orphaned(parent):
    """The server died (this process was given to another parent): stop, as it would have."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(3)


def main(server):
    """``server``: the pid of the server that started this process (it may have died already)."""
    threading.Thread(target=_stop_when_orphaned, args=(server,), daemon=True).start()
    try:
        os.nice(CHECK_NICENESS)  # when cores are short, the server's requests go first
    except OSError:
        pass
    from .worker.main import error_message

    try:
        message = {"result": run(json.load(sys.stdin))}
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line
        if not isinstance(exc, (BackupError, OSError)):
            import traceback

            traceback.print_exc()  # stderr: the server logs it
        message = {"error": error_message(exc)}
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
    return 0
