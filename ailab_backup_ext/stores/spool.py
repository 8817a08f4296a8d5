"""Partial archives: a file named with its writer (our pid, or a worker's job id) next to where the
archive will be kept, renamed into place once whole and verified; those of writers that are gone
are removed by the next operation. A writer holds an exclusive flock on its partial file while it
runs, and the kernel drops it when the writer dies, however it dies: a pid alone cannot say that
of a writer in another pid namespace (the server in AI-Lab's container and a command line on the
host sharing a folder store), nor of a pid used again."""

import fcntl
import os
from contextlib import contextmanager

SPOOL_SUFFIX = ".ailab-partial"


@contextmanager
def spool_file(directory, name):
    """A temporary file named with our pid, deleted unless committed (renamed away); one left by
    a killed process is found by :func:`remove_stale_spools_in`."""
    path = os.path.join(directory, f".{name}.{os.getpid()}{SPOOL_SUFFIX}")
    # not O_EXCL: one left by an earlier process with our pid (a restarted container's server has
    # the same pid again) is ours to write over
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while we run: see _locked (the writer opens it again)
        yield path
    finally:
        os.close(fd)
        if os.path.exists(path):
            os.unlink(path)


def remove_stale_spools_in(directory):
    def stale(path):
        pid = os.path.basename(path)[: -len(SPOOL_SUFFIX)].rsplit(".", 1)[-1]
        # unlocked, and a pid that runs no writer: a writer of an older version holds no lock, and
        # one in another pid namespace has a pid that means nothing here; our own pid, unlocked, is
        # an earlier process's (a restarted container's server has the same pid again)
        return pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))) and not _locked(path)

    return _remove_each(directory, lambda name: name.endswith(SPOOL_SUFFIX), stale)


def _remove_each(directory, named, stale):
    """Remove the files of ``directory`` whose name is ``named`` and whose path is ``stale``;
    return how many were removed."""
    try:
        names = [name for name in os.listdir(directory) if named(name)]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        if stale(path):
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def _locked(path):
    """Whether a running writer holds the flock of the partial file at ``path`` (an unreadable
    one counts as locked: it is left alone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the lock just taken, if any
    return False


WORKER_SPOOL_TAG = ".worker-"  # .NAME.worker-<job id>.ailab-partial, locked while its worker runs


def remove_unlocked_worker_spools(directory):
    """Remove the partial archives of workers that are gone (a worker runs in a container: its
    pid means nothing here, its flock does)."""
    return _remove_each(directory, lambda name: WORKER_SPOOL_TAG in name and name.endswith(SPOOL_SUFFIX),
                        lambda path: not _locked(path))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
