"""The kept worker's job starter: a process that imported our code once, and forks each job.

A job in the server's kept worker is a ``docker exec``. Started as ``python -m
ailab_backup_ext.worker.main`` it pays the interpreter's start and our imports each time (0.2 s
here, 0.3-0.7 s under load). Instead the kept container's main process forks this zygote at start
(:data:`KEPT_MAIN`), which imports the worker's code and waits on a unix socket in the container.
A job's exec runs the tiny :data:`CLIENT` (``python -I -S``: no site, nothing of ours imported),
which hands the zygote its standard input, output and error (SCM_RIGHTS) and the job; the forked
child runs :func:`main.main` on those, so everything is as with a process of its own: its
progress lines and the ``pid`` line (the server stops the job by a SIGTERM to that pid) go to the
exec's output, and the exec ends with the child's exit status (by the same signal when it was
killed by one).

When the zygote is not there (not yet ready, died, or could not import our code), the client
execs ``python -m ailab_backup_ext.worker.main --job-env`` as before: it falls back only when no
child of the zygote started the job (the child itself says it started, before doing anything).
"""

import os
import selectors
import signal
import socket
import struct
import sys

SOCKET_AT = "/ailab/zygote.sock"  # in the container's own file system, never in a mount
PID_AT = "/ailab/zygote.pid"
_HEADER = struct.Struct("!Q")  # the job's length, sent with the three descriptors
_ACCEPT_TIMEOUT = 5.0  # a client sends everything at once; a stuck one does not hold the zygote

# the kept container's main process: forks the zygote, then waits on its standard input, which the
# server holds attached; when the server goes (however it ends) the input closes, this process
# (pid 1) ends, and with it every process of the container, which the engine then removes
KEPT_MAIN = (
    "import os, sys\n"
    "if os.fork() == 0:\n"
    "    try:\n"
    "        sys.path.insert(0, sys.argv[1])\n"
    "        from ailab_backup_ext.worker.zygote import serve\n"
    "        serve()\n"
    "    finally:\n"
    "        os._exit(0)\n"
    "sys.stdin.buffer.read()\n"
)

# a job's exec: python -I -S -c CLIENT SOCKET_AT, with the job in the environment (runner.JOB_ENV)
CLIENT = (
    "import os, signal, socket, sys, time\n"
    "def fallback():\n"
    "    os.execv(sys.executable, [sys.executable, '-m', 'ailab_backup_ext.worker.main', '--job-env'])\n"
    "job = os.environ.get('AILAB_BACKUP_JOB', '').encode()\n"
    "try:\n"
    "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "    s.connect(sys.argv[1])\n"
    "    socket.send_fds(s, [len(job).to_bytes(8, 'big')], [0, 1, 2])\n"
    "    s.sendall(job)\n"
    "    replies = s.makefile('rb')\n"
    "    started = replies.readline()\n"
    "except OSError:\n"
    "    fallback()\n"
    "if not started.startswith(b'S'):\n"
    "    fallback()\n"  # no child started the job: nothing of it ran
    "pid = int(started[1:])\n"
    "try:\n"
    "    ended = replies.readline()\n"
    "except OSError:\n"
    "    ended = b''\n"
    "if ended.startswith(b'X'):\n"
    "    code = int(ended[1:])\n"
    "else:\n"  # the zygote went: the job's process goes on alone; its end is this exec's
    "    def alive():\n"
    "        try:\n"
    "            with open(f'/proc/{pid}/stat') as f:\n"
    "                return f.read().rpartition(')')[2].split()[0] != 'Z'\n"
    "        except OSError:\n"
    "            return False\n"
    "    while alive():\n"
    "        time.sleep(0.1)\n"
    "    code = 1\n"
    "if code < 0:\n"
    "    signal.signal(-code, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), -code)\n"
    "os._exit(code & 255)\n"
)


def serve(path=SOCKET_AT):
    """Import the worker's code, then fork a child for each job that connects (one thread: a
    fork from it copies no other thread's held lock), and tell each client its child's end."""
    from . import main as worker_main  # everything a job imports, once

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD wakes the loop
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temp = f"{path}.{os.getpid()}"
    listener.bind(temp)
    listener.listen(16)
    os.replace(temp, path)  # ready: a client never finds a socket nobody accepts on yet
    with open(PID_AT, "w") as f:
        f.write(str(os.getpid()))
    waiting = {}  # child's pid -> its client's connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    inherited = (listener, selector, wake_r, wake_w)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                _accept(listener, waiting, inherited, worker_main)
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        _reap(waiting)


def _accept(listener, waiting, inherited, worker_main):
    conn, _ = listener.accept()
    fds = []
    try:
        conn.settimeout(_ACCEPT_TIMEOUT)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            raise OSError("not a job")
        (size,) = _HEADER.unpack(header)
        job = bytearray()
        while len(job) < size:
            piece = conn.recv(min(size - len(job), 1 << 20))
            if not piece:
                raise OSError("the job was cut short")
            job += piece
        pid = os.fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        conn.close()  # the client falls back: no child started
        return
    if pid == 0:
        _child(conn, fds, job.decode(), waiting, inherited, worker_main)
    for fd in fds:
        os.close(fd)
    waiting[pid] = conn


def _child(conn, fds, job, waiting, inherited, worker_main):
    """The job's process: the client's descriptors as its own 0, 1 and 2; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        listener, selector, wake_r, wake_w = inherited
        selector.close()
        listener.close()
        os.close(wake_r)
        os.close(wake_w)
        for other in waiting.values():  # other jobs' clients: theirs alone
            other.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.settimeout(None)
        conn.sendall(b"S%d\n" % os.getpid())  # started: from here the client never falls back
        conn.close()
        code = worker_main.main(["--zygote"], job_text=job)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on the job's stderr
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _reap(waiting):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(b"X%d\n" % os.waitstatus_to_exitcode(status))
            except OSError:
                pass
            conn.close()
