"""Helpers for the hardening tests: a Docker daemon that can "stop" (a socket proxy), our own
helper containers, and our own spool files. The engine is shared with other runs: everything
here looks only at what this process (or a server it started) made."""

import glob
import os
import socket
import tempfile
import threading
import time

DOCKER_SOCKET = "/var/run/docker.sock"
from treeutil import our_helpers, run_in_volume


def our_helper_mounting(client, volume):
    """Our one helper container that mounts ``volume`` (an operation shares one per mount)."""
    [helper] = [c for c in our_helpers(client)
                if any(m.get("Name") == volume for m in c.attrs.get("Mounts") or [])]
    return helper


def remove_our_helpers(client, pid=None, host=None):
    """Remove the helpers of ``pid`` on ``host`` (this process by default), never others'."""
    for helper in our_helpers(client, pid, host):
        try:
            helper.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def our_spools(directory=None, pid=None):
    """Spool files of ``pid`` (default: this process) in ``directory`` (default: the temp dir)."""
    directory = directory or tempfile.gettempdir()
    return glob.glob(os.path.join(glob.escape(directory), f".*.{pid or os.getpid()}.ailab-partial"))


class DockerProxy:
    """A Unix socket at ``path`` forwarding to the real Docker socket. ``kill()`` is the daemon
    stopping: the socket goes away and every open connection is cut; ``start()`` brings it back.
    A GET of an API path ending in one of ``refused`` ('/events') gets 403 Forbidden, as from the
    socket proxies that hide parts of the API."""

    def __init__(self, path, target=DOCKER_SOCKET, refused=()):
        self.path = str(path)
        self.target = target
        self.refused = tuple(refused)
        self.url = f"unix://{self.path}"
        self._listener = None
        self._conns = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        assert self._listener is None, "already running"
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(128)
        listener.settimeout(0.05)
        self._stop = threading.Event()
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True,
                                        name="docker-proxy")
        self._thread.start()

    def kill(self):
        """Stop at once: no new connection is accepted, every open one is cut."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stop.set()
        try:
            os.unlink(self.path)  # as when dockerd stops: nothing listens there any more
        except FileNotFoundError:
            pass
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _cut(conn)
        self._thread.join(5)
        listener.close()

    def _accept(self, listener, stop):
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                _cut(client)
                continue
            with self._lock:
                if stop.is_set():
                    _cut(client)
                    _cut(upstream)
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, a is client), daemon=True).start()

    def _refuses(self, data):
        # a request's head comes in one piece from docker-py, and a body never starts with "GET /v"
        if not (self.refused and data.startswith(b"GET /v")):
            return False
        path = data.split(b" ", 2)[1].split(b"?")[0].decode()
        return path.endswith(self.refused)

    def _pump(self, src, dst, from_client=False):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if from_client and self._refuses(data):
                    body = b'{"message":"forbidden by the socket proxy"}'
                    src.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            self._conns.discard(src)
        # the other direction closes its own source; close ours once both are done with it
        if src not in self._conns and dst not in self._conns:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def _cut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def wait_until(condition, timeout=30, pause=0.1):
    """Poll ``condition()`` until it is true (returned) or ``timeout`` seconds passed (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(pause)


def files_in_volume(client, volume):
    """Every file (not folder) in a volume, as paths below it."""

    out = run_in_volume(client, volume, "cd /v && find . -type f")
    return sorted(line[2:] for line in out.splitlines() if line.strip())


def files_below(path):
    """Every file (not folder) below a local folder, as relative paths."""
    found = []
    for dirpath, _, filenames in os.walk(path):
        found += [os.path.relpath(os.path.join(dirpath, n), path) for n in filenames]
    return sorted(found)


def check_processes(parent=None):
    """Pids of the live check processes (ailab_backup_ext/checker.py) that ``parent`` (this
    process by default, where the test server runs) started."""
    parent = parent or os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue  # gone meanwhile
        if int(ppid) == parent and state != "Z" and b"ailab_backup_ext.checker" in command:
            found.append(int(entry))
    return found
