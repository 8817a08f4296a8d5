"""Partial archives: a file named with its writer (our pid, or a worker's job id) next to where the
archive will be kept, renamed into place once whole and verified; those of writers that are gone
are removed by the next operation."""

import os
from contextlib import contextmanager

SPOOL_SUFFIX = ".ailab-partial"


@contextmanager
def spool_file(directory, name):
    """A temporary file named with our pid, deleted unless committed (renamed away); one left by
    a killed process is found by :func:`remove_stale_spools_in`."""
    path = os.path.join(directory, f".{name}.{os.getpid()}{SPOOL_SUFFIX}")
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def remove_stale_spools_in(directory):
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        pid = name[: -len(SPOOL_SUFFIX)].rsplit(".", 1)[-1] if name.endswith(SPOOL_SUFFIX) else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed


WORKER_SPOOL_TAG = ".worker-"  # .NAME.worker-<job id>.ailab-partial, locked while its worker runs


def remove_unlocked_worker_spools(directory):
    """Remove the partial archives of workers that are gone. A worker (in a container: its pid
    means nothing here) holds an exclusive flock on its partial file while it runs; the kernel
    drops the lock when the worker dies, however it dies."""
    import fcntl

    removed = 0
    try:
        names = [n for n in os.listdir(directory) if WORKER_SPOOL_TAG in n and n.endswith(SPOOL_SUFFIX)]
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its worker still runs
        else:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
