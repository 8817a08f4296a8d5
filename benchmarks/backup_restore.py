#!/usr/bin/env python3
"""Benchmark: ``ailab-backup`` against the seed recipe (``docker run`` + ``docker cp``).

Run on demand, against a real Docker engine (not a test)::

    AILAB_BACKUP_HELPER_IMAGE=ailab-backup-helper:test python benchmarks/backup_restore.py [--size-mb 500]

It makes a Docker volume of about ``--size-mb`` MB (notebooks of 10-200 KB plus four large
incompressible files), then measures, each as its own child process (wall time, and peak RSS from
``os.wait4``):

* seed backup:  docker run -d -v VOL:/notebooks IMAGE sleep; docker cp C:/notebooks DIR; docker rm -f C
* our backup:   ailab-backup --volume VOL --store STOREVOL create   (and with --store /a/folder)
* seed restore: the same into a fresh empty volume, docker cp DIR/notebooks C:/
* our restore:  ailab-backup --volume NEWVOL --store STOREVOL restore ID   (and from the folder store)
* our worker: the same commands with a helper image that has Python (made here from this machine's
  Python, like the tests' image; our code is brought in by the CLI): backup and restore run
  inside the helper container, next to the data (the restore: --mode replace, safety backup
  included); the CLI's temp folder is watched during the volume-store backup
* Docker Desktop's volumes-backup-extension method: a helper mounts the volume and a folder and
  runs ``tar -I 'zstd -T0' -cf /vackup/FILE -C /vackup-volume .``, and ``tar -I zstd -xf`` to
  restore (a small image made here from this machine's GNU tar and zstd); each also followed by
  a sync of what it wrote (``sync FILE`` after the export, ``sync -f`` after the import), as
  durable as ours
* archive API only: a Python client that only creates a helper and reads the volume's tar stream
  through (out), or sends the seed's folder as a ready-made tar (in): what any tool that works
  through the Docker socket pays before doing anything with the data (shown, not a target)

Every restored volume is compared, file by file (type, size, SHA-256, mode), with the original.
Prints a table, checks the targets, writes ``benchmarks/results/latest.json``, and removes every
volume, container and temporary folder it made, also on error or Ctrl-C.
"""

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid

import docker

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
DEFAULT_IMAGE = "ailab-backup-helper:test"
MB = 1024 * 1024
TARGET_RATIO = 1.0
TARGET_RSS_MB = 150.0

# the default 500 MB volume: 2,000 notebooks (log-uniform 10-200 KB, ~130 MB) + 4 x 100 MB random
BASE_SIZE_MB = 500
BASE_NOTEBOOKS = 2000
BIG_FILES = 4
BASE_BIG_FILE_MB = 100
FOLDERS = ["", "sklearn", "transformers", "udf", "tutorials/basics", "tutorials/advanced", "my_work"]
SCS_NAME = "ai_lab_secure_configuration_storage.sqlite"


# ------------------------------------------------------------------------------------------------
# Measuring child processes


def dockerd_cpu():
    """CPU seconds (user + system) used so far by dockerd, or None if it cannot be found."""
    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm in ("dockerd", "containerd"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


# Linux gives a child's ru_maxrss as at least the peak RSS of the process that spawned it (exec
# records the old address space's high-water mark, and with vfork that is the parent's). So children
# are not spawned from this (big) process but from a tiny launcher started first; its own peak
# (~10 MB, shown as the measurement floor) is then the only bias.
LAUNCHER = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child; the benchmark ends us
spawn_stdin = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
for line in sys.stdin:
    req = json.loads(line)
    actions = spawn_stdin + [
        (os.POSIX_SPAWN_OPEN, 1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(req["cmd"][0], req["cmd"], req["env"], file_actions=actions,
                              setsigdef=(signal.SIGINT,))
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        continue
    _, status, ru = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "status": os.waitstatus_to_exitcode(status),
                      "maxrss_kb": ru.ru_maxrss, "cpu": ru.ru_utime + ru.ru_stime}), flush=True)
"""


class Launcher:
    """The tiny process that spawns and measures the children (see LAUNCHER)."""

    _proc = None

    @classmethod
    def start(cls):
        if cls._proc is None:
            cls._proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, bufsize=1)

    @classmethod
    def run(cls, cmd, env, stdout, stderr):
        cls.start()
        request = {"cmd": list(cmd), "env": dict(os.environ if env is None else env),
                   "stdout": stdout, "stderr": stderr}
        cls._proc.stdin.write(json.dumps(request) + "\n")
        reply = json.loads(cls._proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"cannot run {cmd[0]}: {reply['error']}")
        return reply

    @classmethod
    def stop(cls):
        if cls._proc is not None:
            try:
                cls._proc.stdin.close()  # the launcher ends after the child it runs, if any
            except OSError:
                pass
            cls._proc.wait()
            cls._proc = None


class Measured:
    """One child process: wall seconds, peak RSS, CPU, exit status and output."""

    def __init__(self, cmd, env=None, check=True):
        self.cmd = list(cmd)
        with tempfile.TemporaryDirectory(prefix="ailab-bench-out-") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            reply = Launcher.run(cmd, env, out, err)
            with open(out, "rb") as f:
                self.stdout = f.read().decode(errors="replace")
            with open(err, "rb") as f:
                self.stderr = f.read().decode(errors="replace")
        self.seconds = reply["seconds"]
        self.returncode = reply["status"]
        self.rss_mb = reply["maxrss_kb"] / 1024  # Linux: KiB
        self.cpu = reply["cpu"]
        if check and self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with status {self.returncode}:\n{self.stderr.strip()[-2000:]}"
            )


class InProcess:
    """One call made in this process (the server's kept worker needs a long-lived process): wall
    seconds and this process's CPU; its peak RSS is not the call's own, so it is not counted."""

    def __init__(self, name, call):
        self.cmd = [name]
        t0, c0 = time.perf_counter(), time.process_time()
        self.value = call()
        self.seconds, self.cpu = time.perf_counter() - t0, time.process_time() - c0
        self.rss_mb, self.returncode, self.counts_for_rss = 0.0, 0, False


class Operation:
    """One benchmarked operation, possibly made of several child processes (the seed recipe)."""

    def __init__(self, name, kind, side):
        self.name, self.kind, self.side = name, kind, side  # kind: backup|restore, side: seed|ours
        self.steps = []
        self.dockerd_cpu = None
        self.verified = None
        self.note = ""

    def __enter__(self):
        # what the operation before left for the kernel to write back is written now, untimed:
        # otherwise it competes for the disk with this one (the peer's untar and docker cp sync
        # nothing, ours sync what they write)
        os.sync()
        self._d0 = dockerd_cpu()
        return self

    def __exit__(self, *exc):
        d1 = dockerd_cpu()
        if self._d0 is not None and d1 is not None:
            self.dockerd_cpu = d1 - self._d0

    def run(self, cmd, env=None, measured_rss=True):
        step = Measured(cmd, env)
        step.counts_for_rss = measured_rss
        self.steps.append(step)
        return step

    @property
    def seconds(self):
        return sum(s.seconds for s in self.steps)

    @property
    def rss_mb(self):
        return max((s.rss_mb for s in self.steps if s.counts_for_rss), default=None)

    @property
    def cpu(self):
        return sum(s.cpu for s in self.steps)

    def to_json(self):
        return {
            "name": self.name,
            "kind": self.kind,
            "side": self.side,
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": None if self.rss_mb is None else round(self.rss_mb, 1),
            "child_cpu_seconds": round(self.cpu, 3),
            "dockerd_cpu_seconds": None if self.dockerd_cpu is None else round(self.dockerd_cpu, 3),
            "verified": self.verified,
            "note": self.note,
            "timeline": getattr(self, "timeline", None),
            "kept_worker_cpu_seconds": getattr(self, "worker_cpu", None),
            "steps": [
                {"cmd": s.cmd, "seconds": round(s.seconds, 3), "peak_rss_mb": round(s.rss_mb, 1),
                 "cpu_seconds": round(s.cpu, 3), "counts_for_rss": s.counts_for_rss}
                for s in self.steps
            ],
        }


# ------------------------------------------------------------------------------------------------
# Test data


class Words:
    """Text that compresses like real notebook content: a Zipf-ish vocabulary, code-like lines."""

    def __init__(self, rng):
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["import", "from", "def", "return", "for", "in", "if", "else", "print", "self",
                 "pandas", "pd", "np", "df", "model", "query", "exasol", "pyexasol", "conn",
                 "sklearn", "fit", "predict", "train", "test", "score", "schema", "table", "udf",
                 "the", "a", "of", "to", "and", "is", "with", "data", "this", "we", "notebook"]
        vocab += ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(3000)]
        self.vocab = vocab
        self.weights = [1 / (i + 1) for i in range(len(vocab))]
        self.cum = list(_accumulate(self.weights))

    def words(self, n):
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def prose(self, n):
        return " ".join(self.words(n))

    def code_line(self):
        w = self.words(6)
        pattern = self.rng.randrange(5)
        if pattern == 0:
            return f"{w[0]}_{w[1]} = {w[2]}.{w[3]}({w[4]}, {w[5]}={self.rng.randint(0, 999)})"
        if pattern == 1:
            return f"for {w[0]} in {w[1]}.{w[2]}():"
        if pattern == 2:
            return f"    {w[0]}.{w[1]}({w[2]!r}, {w[3]}[{self.rng.randint(0, 99)}])"
        if pattern == 3:
            return f"# {' '.join(w)}"
        return f"{w[0]} = \"SELECT {w[1]}, {w[2]} FROM {w[3]}.{w[4]} WHERE {w[5]} > {self.rng.random():.4f}\""


def _accumulate(values):
    total = 0.0
    for v in values:
        total += v
        yield total


def make_notebook(words, rng, target):
    """An .ipynb JSON document of about ``target`` bytes."""
    cells, size = [], 400
    while size < target:
        if rng.random() < 0.35:
            lines = [("## " if i == 0 else "") + words.prose(rng.randint(5, 25)) + "\n"
                     for i in range(rng.randint(1, 8))]
            cell = {"cell_type": "markdown", "metadata": {}, "source": lines}
        else:
            lines = [words.code_line() + "\n" for _ in range(rng.randint(2, 25))]
            outputs = []
            roll = rng.random()
            if roll < 0.5:
                text = [words.prose(rng.randint(3, 12)) + "\n" for _ in range(rng.randint(1, 20))]
                outputs.append({"name": "stdout", "output_type": "stream", "text": text})
            elif roll < 0.58 and target - size > 6000:  # a plot: base64 PNG, hardly compressible
                png = base64.b64encode(os.urandom(rng.randint(2000, min(40000, (target - size) * 3 // 4)))).decode()
                outputs.append({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": ["<Figure size 640x480 with 1 Axes>"]}})
            cell = {"cell_type": "code", "execution_count": rng.randint(1, 200), "metadata": {},
                    "outputs": outputs, "source": lines}
        cells.append(cell)
        size += len(json.dumps(cell, indent=1)) + 4
    nb = {"cells": cells,
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                      "name": "python3"},
                       "language_info": {"name": "python", "version": "3.10.12"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1, ensure_ascii=False).encode() + b"\n"


def generate_tree(root, size_mb, seed=20241126):
    """Write the test tree into ``root``; return (file count, total bytes)."""
    rng = random.Random(seed)
    words = Words(rng)
    scale = size_mb / BASE_SIZE_MB
    n_notebooks = max(10, round(BASE_NOTEBOOKS * scale))
    big_bytes = max(1, round(BASE_BIG_FILE_MB * scale * MB))
    files = total = 0
    for folder in FOLDERS + ["data", "scratch"]:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i in range(n_notebooks):
        target = int(math.exp(rng.uniform(math.log(10_000), math.log(200_000))))  # 10-200 KB
        folder = rng.choice(FOLDERS)
        data = make_notebook(words, rng, target)
        with open(os.path.join(root, folder, f"notebook_{i:04d}.ipynb"), "wb") as f:
            f.write(data)
        files += 1
        total += len(data)
    for i in range(BIG_FILES):
        with open(os.path.join(root, "data", f"model_{i}.bin"), "wb") as f:
            left = big_bytes
            while left:
                chunk = os.urandom(min(8 * MB, left))
                f.write(chunk)
                left -= len(chunk)
        files += 1
        total += big_bytes
    scs = os.urandom(96 * 1024)
    with open(os.path.join(root, SCS_NAME), "wb") as f:
        f.write(scs)
    os.chmod(os.path.join(root, SCS_NAME), 0o600)
    return files + 1, total + len(scs)


# ------------------------------------------------------------------------------------------------
# Docker bookkeeping


class Resources:
    """Everything this run made, removed on exit whatever happens."""

    LABEL = "ailab-backup.benchmark"

    def __init__(self, client, image, prefix):
        self.client = client
        self.image = image
        self.prefix = prefix
        self.volumes, self.containers, self.folders, self.images = [], [], [], []
        self.count = 0

    @property
    def label_option(self):
        return ["--label", f"{self.LABEL}={self.prefix}"]

    def volume(self, tag):
        """A new, empty volume."""
        self.count += 1
        name = f"{self.prefix}-{tag}-{self.count}"
        self.volumes.append(name)
        self.client.volumes.create(name, labels={self.LABEL: self.prefix})
        return name

    def remove_volume(self, name):
        self.client.volumes.get(name).remove()
        self.volumes.remove(name)

    def reserve_volume(self, tag):
        """A volume name that something else (the CLI) will create; removed at the end."""
        name = f"{self.prefix}-{tag}"
        self.volumes.append(name)
        return name

    def folder(self, tag, parent=None):
        path = tempfile.mkdtemp(prefix=f"{self.prefix}-{tag}-", dir=parent)
        self.folders.append(path)
        return path

    def container_id(self, cid):
        self.containers.append(cid)
        return cid

    def cleanup(self, settle=False):
        """Remove everything; with ``settle``, once more a moment later, for the requests an
        interrupted docker client had already sent (a container created after the first pass)."""
        self._cleanup_once()
        if settle:
            time.sleep(2)
            self._cleanup_once()

    def _cleanup_once(self):
        problems = []
        # containers are listed without being inspected, so that others' busy containers (an
        # inspect waits for an archive request in progress) cannot block the cleanup
        try:
            for c in self.client.api.containers(all=True, filters={"label": f"{self.LABEL}={self.prefix}"}):
                self.containers.append(c["Id"])
        except docker.errors.APIError as exc:
            problems.append(f"listing containers: {exc}")
        for cid in dict.fromkeys(self.containers):
            try:
                self.client.api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                problems.append(f"container {cid[:12]}: {exc}")
        # helper containers left behind by an interrupted CLI still hold our volumes; the list call
        # (unlike containers.list) inspects no container, so others' busy containers cannot block it
        try:
            for c in self.client.api.containers(all=True, filters={"label": "ailab-backup.helper"}):
                if any(str(m.get("Name", "")).startswith(self.prefix) for m in c.get("Mounts") or []):
                    self.client.api.remove_container(c["Id"], force=True)
        except docker.errors.APIError as exc:
            problems.append(f"helper containers: {exc}")
        for name in list(self.volumes):
            try:
                self.client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001
                problems.append(f"volume {name}: {exc}")
        for image in self.images:
            try:
                self.client.images.remove(image, force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001
                problems.append(f"image {image}: {exc}")
        for path in self.folders:
            shutil.rmtree(path, ignore_errors=True)
            if os.path.exists(path):
                problems.append(f"folder {path} not removed")
        for p in problems:
            print(f"cleanup: {p}", file=sys.stderr)


def fill_volume(res, volume, folder):
    """Copy the contents of ``folder`` into ``volume`` (a created, never started container)."""
    cid = subprocess.run(["docker", "create", *res.label_option, "-v", f"{volume}:/notebooks", res.image, "true"],
                         check=True, capture_output=True, text=True).stdout.strip()
    res.container_id(cid)
    subprocess.run(["docker", "cp", f"{folder}/.", f"{cid}:/notebooks"], check=True)
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)


def snapshot(res, volume):
    """{path: (type, size, sha256 or link target, mode)} of everything in ``volume``."""
    helper = res.client.containers.create(res.image, ["true"], volumes={volume: {"bind": "/notebooks", "mode": "ro"}},
                                          network_disabled=True, labels={res.LABEL: res.prefix})
    try:
        chunks, _ = helper.get_archive("/notebooks", chunk_size=MB)
        stream = _ChunkReader(chunks)
        found = {}
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                path = info.name.partition("/")[2] or "."
                if info.isreg():
                    digest = hashlib.sha256()
                    f = tar.extractfile(info)
                    for chunk in iter(lambda: f.read(MB), b""):
                        digest.update(chunk)
                    found[path] = ("file", info.size, digest.hexdigest(), info.mode & 0o7777)
                elif info.isdir():
                    found[path] = ("dir", 0, "", info.mode & 0o7777)
                elif info.issym():
                    found[path] = ("symlink", 0, info.linkname, info.mode & 0o7777)
                else:
                    found[path] = (f"type {info.type!r}", info.size, info.linkname, info.mode & 0o7777)
        return found
    finally:
        helper.remove(force=True)


class _ChunkReader:
    def __init__(self, chunks):
        self.chunks, self.pending = iter(chunks), b""

    def read(self, n=-1):
        while n < 0 or len(self.pending) < n:
            try:
                self.pending += next(self.chunks)
            except StopIteration:
                break
        if n < 0:
            n = len(self.pending)
        data, self.pending = self.pending[:n], self.pending[n:]
        return data


def compare(expected, actual):
    """(content equal, metadata note): paths, types, sizes and SHA-256 must match; modes noted."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(p for p in set(expected) & set(actual) if expected[p][:3] != actual[p][:3])
    modes = sorted(p for p in set(expected) & set(actual) if expected[p][3] != actual[p][3] and p != ".")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if extra:
        problems.append(f"{len(extra)} extra (e.g. {extra[0]!r})")
    if differ:
        problems.append(f"{len(differ)} differ in content (e.g. {differ[0]!r})")
    note = f"{len(modes)} mode differences (e.g. {modes[0]!r})" if modes else ""
    return not problems, "; ".join(problems + ([note] if note else []))


# ------------------------------------------------------------------------------------------------
# The benchmark


def cli_command(code_dir=None):
    """Our command line; with ``code_dir``, the one of the package in that folder (-P: not the
    one of the current folder)."""
    exe = None if code_dir else shutil.which("ailab-backup")
    return [exe] if exe else [sys.executable, "-P", "-m", "ailab_backup_ext.cli"]


def cli_env(image, code_dir=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AILAB_BACKUP_") and k not in ("VOLUME", "DIR")}
    env["AILAB_BACKUP_HELPER_IMAGE"] = image
    if code_dir:
        env["PYTHONPATH"] = os.path.abspath(code_dir)
    return env


def check_baseline_cli(code_dir, image):
    """The baseline's command line runs the baseline's code, not ours."""
    code_dir = os.path.abspath(code_dir)
    found = subprocess.run([sys.executable, "-P", "-c", "import ailab_backup_ext.cli as c; print(c.__file__)"],
                           env=cli_env(image, code_dir), capture_output=True, text=True, check=True).stdout.strip()
    if not found.startswith(code_dir + os.sep):
        raise RuntimeError(f"the baseline command line runs {found}, not the code in {code_dir}")


def seed_backup(res, volume, image, tmp_dir):
    target = res.folder("seed-backup", tmp_dir)  # exists, so docker cp makes DIR/notebooks
    op = Operation("seed backup (docker cp)", "backup", "seed")
    with op:
        cid = res.container_id(
            op.run(["docker", "run", "--detach", *res.label_option, "-v", f"{volume}:/notebooks", image, "sleep", "100000"],
                   measured_rss=False).stdout.strip())
        op.run(["docker", "cp", f"{cid}:/notebooks", target])
        op.run(["docker", "rm", "-f", cid], measured_rss=False)
    return op, target


def seed_restore(res, folder, image, expected):
    volume = res.volume("seed-restore")
    op = Operation("seed restore (docker cp)", "restore", "seed")
    with op:
        cid = res.container_id(
            op.run(["docker", "run", "--detach", *res.label_option, "-v", f"{volume}:/notebooks", image, "sleep", "100000"],
                   measured_rss=False).stdout.strip())
        op.run(["docker", "cp", f"{folder}/notebooks", f"{cid}:/"])
        op.run(["docker", "rm", "-f", cid], measured_rss=False)
    op.verified, op.note = compare(expected, snapshot(res, volume))
    res.remove_volume(volume)
    return op


def our_backup(name, volume, store, image):
    op = Operation(name, "backup", "ours")
    with op:
        step = op.run(cli_command() + ["--volume", volume, "--store", store, "create"], env=cli_env(image))
    op.backup_id = step.stdout.strip().splitlines()[-1]
    return op


def our_restore(res, name, store, backup_id, image, expected):
    volume = res.volume("our-restore")
    op = Operation(name, "restore", "ours")
    with op:
        op.run(cli_command() + ["--volume", volume, "--store", store, "restore", backup_id], env=cli_env(image))
    op.verified, op.note = compare(expected, snapshot(res, volume))
    res.remove_volume(volume)
    return op


# What Docker's archive API alone costs a Python client, doing nothing else with the data: the
# least any tool that backs up through the socket (as we must) pays, beside the seed recipe
API_ONLY = r"""
import sys, docker
from docker.types import Mount
mode, volume, image, label = sys.argv[1:5]
client = docker.from_env(timeout=600)
api = client.api
helper = api.create_container(image, ["true"], labels=dict([label.split("=", 1)]),
                              host_config=api.create_host_config(mounts=[Mount("/notebooks", volume, type="volume")]))
try:
    if mode == "out":  # read the stream through and drop it
        response = api._get(api._url("/containers/{0}/archive", helper["Id"]), params={"path": "/notebooks"},
                            stream=True, headers={"Accept-Encoding": "identity"})
        api._raise_for_status(response)
        for _ in response.iter_content(1 << 20):
            pass
    else:  # send a ready-made tar file
        with open(sys.argv[5], "rb") as f:
            api.put_archive(helper["Id"], "/", iter(lambda: f.read(1 << 20), b""))
finally:
    api.remove_container(helper["Id"], force=True)
"""


def api_only_backup(res, volume, image):
    op = Operation("archive API only, out", "backup", "api")
    with op:
        op.run([sys.executable, "-c", API_ONLY, "out", volume, image, res.label_option[1]])
    return op


def api_only_restore(res, tar_path, image, expected):
    volume = res.volume("api-restore")
    op = Operation("archive API only, in", "restore", "api")
    with op:
        op.run([sys.executable, "-c", API_ONLY, "in", volume, image, res.label_option[1], tar_path])
    op.verified, op.note = compare(expected, snapshot(res, volume))
    res.remove_volume(volume)
    return op


def build_tar_image(client, prefix):
    """Docker Desktop's extension's tools in a small image: this machine's GNU tar and zstd
    (with the libraries they need) and busybox for sh."""
    root = tempfile.mkdtemp(prefix=f"{prefix}-tarimage-")
    try:
        for tool in ("/usr/bin/tar", "/usr/bin/zstd"):
            binaries = [tool] + [line.split()[-2] if "=>" in line else line.split()[0]
                                 for line in subprocess.run(["ldd", tool], capture_output=True, text=True).stdout
                                 .splitlines() if "/" in line]
            for path in binaries:
                target = root + path
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(os.path.realpath(path), target)
        os.makedirs(os.path.join(root, "bin"), exist_ok=True)
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
        for applet in ("sh", "sync"):  # sync -f: the peer's restore made as durable as ours (syncfs)
            os.symlink("busybox", os.path.join(root, "bin", applet))
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True).stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)
    name = f"{prefix}-tar:latest"
    client.api.import_image_from_data(tar, repository=f"{prefix}-tar", tag="latest")
    return name


def vackup_backup(res, volume, image, folder, file_name, sync=False):
    """The peer's export; with ``sync``, followed by ``sync FILE`` (an fsync of the archive) in
    the same container: the durability our backup gives (its archive and metadata fsync'd before
    it is listed)."""
    op = Operation("Docker Desktop ext. backup" + (" + sync" if sync else ""), "backup",
                   "vackup+sync" if sync else "vackup")
    tar = f"/usr/bin/tar -I 'zstd -T0' -cf /vackup/{file_name} -C /vackup-volume ."
    with op:
        op.run(["docker", "run", "--rm", *res.label_option, "--network", "none", "-v", f"{volume}:/vackup-volume",
                "-v", f"{folder}:/vackup", image, "sh", "-c",
                f"{tar} && sync /vackup/{file_name}" if sync else f"exec {tar}"])
    return op


def vackup_restore(res, folder, file_name, image, expected, sync=False):
    """The peer's import; with ``sync``, followed by ``sync -f`` on the volume in the same
    container: the durability our restore gives (one syncfs before anything is renamed into place)."""
    volume = res.volume("vackup-restore")
    untar = f"/usr/bin/tar -I zstd -xf /vackup/{file_name} -C /vackup-volume"  # GNU tar, not busybox sh's applet
    op = Operation("Docker Desktop ext. restore" + (" + sync -f" if sync else ""), "restore",
                   "vackup+sync" if sync else "vackup")
    with op:
        op.run(["docker", "run", "--rm", *res.label_option, "--network", "none", "-v", f"{volume}:/vackup-volume",
                "-v", f"{folder}:/vackup", image, "sh", "-c",
                f"{untar} && sync -f /vackup-volume" if sync else f"exec {untar}"])
    op.verified, op.note = compare(expected, snapshot(res, volume))
    res.remove_volume(volume)
    return op


class TempWatch:
    """The largest size a folder reached (sampled every 20 ms): the CLI's temp folder."""

    def __init__(self, path):
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(0.02):
            size = 0
            for dirpath, _, filenames in os.walk(self.path):
                for name in filenames:
                    try:
                        size += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
            self.peak = max(self.peak, size)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker_backup(res, name, volume, store, image, tmp_dir, code_dir=None):
    op = Operation(name, "backup", "baseline" if code_dir else "ours")
    env = {**cli_env(image, code_dir), "TMPDIR": tmp_dir}
    with op, TempWatch(tmp_dir) as watch:
        step = op.run(cli_command(code_dir) + ["--volume", volume, "--store", store, "create"], env=env)
    op.backup_id = step.stdout.strip().splitlines()[-1]
    op.temp_peak_bytes = watch.peak
    op.note = f"CLI temp folder peak {watch.peak} bytes"
    return op


def worker_restore(res, name, store, backup_id, image, expected, code_dir=None):
    volume = res.volume("worker-restore")
    op = Operation(name, "restore", "baseline" if code_dir else "ours")
    with op:
        op.run(cli_command(code_dir) + ["--volume", volume, "--store", store, "restore", backup_id, "--mode",
                                        "replace"], env=cli_env(image, code_dir))
    op.verified, op.note = compare(expected, snapshot(res, volume))
    res.remove_volume(volume)
    return op


def server_manager(volume, store, image):
    """A BackupManager as the server extension makes it: its kept worker made now, before it is timed."""
    from ailab_backup_ext.config import AILabBackup
    from ailab_backup_ext.core import BackupManager

    manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=image))
    manager.docker.keep_helpers = True
    manager.worker.prepare(*manager.resolve())
    return manager


def server_backup(name, manager):
    op = Operation(name, "backup", "ours")
    with op:
        op.steps.append(InProcess(name, manager.create_backup))
    op.backup_id = op.steps[-1].value["id"]
    return op


# what is in the volume before a timed restore, made outside the timing
EMPTY_VOLUME = "rm -rf /v/* /v/.[!.]*; true"
# ~10 % of the files differ: every 20th notebook changed (a byte appended), every 20th other one
# removed, as many new files added; the big files and the SCS stay as they are
TENTH_DIFFERS = (
    "cd /v && i=0; for f in $(find . -name '*.ipynb' | sort); do i=$((i+1)); "
    "case $((i % 20)) in 0) printf ' ' >> \"$f\";; 10) rm \"$f\"; head -c 30000 /dev/urandom > \"$f.new\";; esac; done"
)


def server_restore(res, name, volume, timed, expected, prepare=EMPTY_VOLUME, side="ours"):
    """A replace restore by a server's kept worker into its ``volume`` (``timed()``: the timed
    call), emptied first (default), or as it is (``prepare=None``: the backup's own content, a
    restore over itself), or changed by the script ``prepare``."""
    if prepare:
        res.client.containers.run(res.image, ["sh", "-c", prepare], remove=True, volumes={volume: {"bind": "/v"}},
                                  network_disabled=True, labels={res.LABEL: res.prefix})
    op = Operation(name, "restore", side)
    before = kept_worker_cpu(res.client, volume)
    with op:
        op.steps.append(timed())
    after = kept_worker_cpu(res.client, volume)
    op.worker_cpu = after - before if before is not None and after is not None else None
    op.verified, op.note = compare(expected, snapshot(res, volume))
    return op


def kept_worker_cpu(client, volume):
    """CPU seconds used so far by the kept worker container that mounts ``volume`` (its cgroup's,
    whatever process in it did the work: a job's own, the zygote's child), or None."""
    found = client.api.containers(filters={"label": "ailab-backup.worker=kept", "volume": volume})
    if len(found) != 1:
        return None
    try:
        stats = client.api.stats(found[0]["Id"], stream=False, one_shot=True)
        return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
    except (docker.errors.APIError, KeyError, TypeError):
        return None


# The old code's server (``--baseline-code DIR``): a long-lived process with DIR first on its path,
# whose kept worker runs DIR's code, restoring on request; its answers are timed in it as ours are here
BASELINE_SERVER = r"""
import json, sys, time
import ailab_backup_ext
from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
setup = json.loads(sys.stdin.readline())
manager = BackupManager(AILabBackup(volume=setup["volume"], store=setup["store"], helper_image=setup["image"]))
manager.docker.keep_helpers = True
try:
    manager.worker.prepare(*manager.resolve())
    print(json.dumps({"code": ailab_backup_ext.__file__}), flush=True)
    for line in sys.stdin:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            manager.restore_backup(json.loads(line)["backup_id"], "replace")
        except Exception as exc:
            print(json.dumps({"error": repr(exc)}), flush=True)
            continue
        print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                          "timeline": getattr(manager.worker, "last_timeline", None)}), flush=True)
finally:
    manager.docker.close()
"""


class BaselineServer:
    """The old code's server (see BASELINE_SERVER), with its own volume to restore into."""

    def __init__(self, code_dir, volume, store, image):
        code_dir = os.path.abspath(code_dir)
        if not os.path.isfile(os.path.join(code_dir, "ailab_backup_ext", "__init__.py")):
            raise SystemExit(f"--baseline-code {code_dir}: no ailab_backup_ext package in it "
                             "(make one with: git archive main ailab_backup_ext | tar -x -C DIR)")
        self.volume = volume
        env = {**os.environ, "PYTHONPATH": code_dir}
        self.proc = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
                                     cwd=code_dir)  # -c puts the current folder first on the path
        self.proc.stdin.write(json.dumps({"volume": volume, "store": store, "image": image}) + "\n")
        code = self._answer().get("code", "")
        if not code.startswith(code_dir + os.sep):
            raise RuntimeError(f"the baseline server runs {code}, not the code in {code_dir}")

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline server ended (status {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the baseline server failed: {answer['error']}")
        return answer

    def restore(self, backup_id):
        self.proc.stdin.write(json.dumps({"backup_id": backup_id}) + "\n")
        return self._answer()

    def close(self):
        try:
            self.proc.stdin.close()  # it closes its manager (its kept worker goes) and ends
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Answered:
    """A call timed in another process (the baseline server): its wall seconds and CPU."""

    def __init__(self, name, answer):
        self.cmd = [name]
        self.seconds, self.cpu = answer["seconds"], answer["cpu"]
        self.value = answer
        self.rss_mb, self.returncode, self.counts_for_rss = 0.0, 0, False


def server_restores(res, prefix, server, backup_id, expected):
    """The three replace restores of a server's kept worker (ours: a BackupManager here; the
    baseline's: a BaselineServer): into empty, over itself, with ~10 % of the files differing."""
    ops = []
    for case, prepare in (("into empty", EMPTY_VOLUME), ("over itself", None), (", 10% differ", TENTH_DIFFERS)):
        name = f"{prefix} restore{'' if case.startswith(',') else ' '}{case}"
        if isinstance(server, BaselineServer):
            ops.append(server_restore(res, name, server.volume, lambda: Answered(name, server.restore(backup_id)),
                                      expected, prepare, side="baseline"))
            ops[-1].timeline = ops[-1].steps[-1].value.get("timeline")
        else:
            ops.append(server_restore(res, name, server.source.mount_name,
                                      lambda: InProcess(name, lambda: server.restore_backup(backup_id, "replace")),
                                      expected, prepare))
            ops[-1].timeline = getattr(server.worker, "last_timeline", None)  # none in --baseline-code older than it
    return ops


# What the machine does at best, measured in the same run: the limits of a restore's phases.
# Writing is measured in a container on a fresh volume (the file system a restore writes to),
# with the volume's own file sizes (each file's writeback started once written, as a restore
# does), then one syncfs.
WRITE_PROBE = r"""
import ctypes, json, os, sys, time
sizes = json.loads(sys.argv[1])
os.makedirs("/v/w")
block = memoryview(os.urandom(1 << 20))
libc = ctypes.CDLL(None)
t0, c0 = time.perf_counter(), time.process_time()
for i, size in enumerate(sizes):
    fd = os.open(f"/v/w/{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    left = size
    while left:
        left -= os.write(fd, block[:min(left, len(block))])
    libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), 2)  # writeback begins, as ours
    os.close(fd)
t1, c1 = time.perf_counter(), time.process_time()
fd = os.open("/v", os.O_RDONLY)
ctypes.CDLL(None).syncfs(fd)
t2 = time.perf_counter()
print(json.dumps({"write_s": t1 - t0, "write_cpu_s": c1 - c0, "syncfs_s": t2 - t1}))
"""


def machine_limits(res, python_image, archive_path, sizes):
    """In CPU seconds of one thread (steadier than wall time on a shared machine): SHA-256 MB/s,
    zstd's time to decompress our archive (and its MB/s), writing the volume's files into a
    volume (and its MB/s; wall time too), and the wall time of a syncfs after that."""
    import zstandard

    data = os.urandom(64 * MB)
    best = min(_timed(lambda: hashlib.sha256(data).digest()) for _ in range(3))
    limits = {"sha256_mb_s": 64 / best}
    with open(archive_path, "rb") as f:
        compressed = f.read()
    out = {"n": 0}

    def decompress():
        reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
        out["n"] = sum(len(c) for c in iter(lambda: reader.read(MB), b""))
    zstd_s = min(_timed(decompress) for _ in range(2))
    limits |= {"zstd_s": zstd_s, "zstd_mb_s": out["n"] / MB / zstd_s, "archive_bytes": len(compressed),
               "tar_bytes": out["n"]}
    volume = res.volume("write-probe")
    try:
        probe = res.client.containers.run(python_image, ["/usr/local/bin/python3", "-c", WRITE_PROBE, json.dumps(sizes)],
                                          remove=True, volumes={volume: {"bind": "/v"}}, network_disabled=True,
                                          labels={res.LABEL: res.prefix})
        written = json.loads(probe.decode().strip().splitlines()[-1])
    finally:
        res.remove_volume(volume)
    limits |= {"write_s": written["write_s"], "write_cpu_s": written["write_cpu_s"],
               "write_mb_s": sum(sizes) / MB / written["write_cpu_s"], "syncfs_s": written["syncfs_s"],
               "file_bytes": sum(sizes)}
    return limits


def _timed(call):
    t0 = time.thread_time()
    call()
    return time.thread_time() - t0


def phase_table(ops, name):
    """The median per phase of the rounds' timelines of the restore ``name``: [phase, wall s,
    CPU s] in the order they ran; and the helper threads' CPU seconds (medians)."""
    timelines = [op.timeline for op in ops if op.name == name and getattr(op, "timeline", None)]
    if not timelines:
        return None, None
    walls, cpus, order = {}, {}, []
    for t in timelines:
        phases = t["phases"] + [["(end)", t["total"], None]]
        for (phase, at, cpu), (_, next_at, next_cpu) in zip(phases, phases[1:]):
            if phase not in walls:
                order.append(phase)
            walls.setdefault(phase, []).append(next_at - at)
            if cpu is not None and next_cpu is not None:
                cpus.setdefault(phase, []).append(next_cpu - cpu)
    rows = [[p, median(walls[p]), median(cpus[p]) if p in cpus else None] for p in order]
    threads = {k: median([t["threads"][k] for t in timelines if k in t["threads"]])
               for k in dict.fromkeys(k for t in timelines for k in t["threads"])}
    return rows, threads


def against_limits(rows, threads, limits):
    """The restore's main tasks beside what this machine needs for them at least."""
    def thread(prefix):
        return sum(v for k, v in threads.items() if k.startswith(prefix))

    walls = {phase: wall for phase, wall, _ in rows}
    sha_limit = (limits["archive_bytes"] + limits["file_bytes"]) / MB / limits["sha256_mb_s"]
    lines = [
        ("two SHA-256 passes (threads; small files' part is in the reading thread)",
         thread("SHA-256"), sha_limit, "CPU"),
        ("reading thread: zstd, tar, small files' SHA-256", thread("reading"), limits["zstd_s"], "CPU (limit: zstd)"),
        ("writing the staged files (thread)", thread("writing"), limits["write_cpu_s"], "CPU"),
        ("syncfs", walls.get("syncfs", 0.0), limits["syncfs_s"], "wall"),
        ("checking and staging, wall (limit: all its CPU on 2 cores)", walls.get("checking", 0.0),
         (sha_limit + limits["zstd_s"] + limits["write_cpu_s"]) / 2, "wall"),
    ]
    print("  against this machine's limits:")
    for what, measured, limit, kind in lines:
        print(f"    {what:<72} {measured:6.3f} s, limit {limit:6.3f} s ({kind})")


def print_phases(ops, limits):
    """Where a restore into empty spends its time, phase by phase, with each phase's limit here."""
    for name in ("server worker restore into empty", "baseline server worker restore into empty"):
        rows, threads = phase_table(ops, name)
        if rows is None:
            continue
        started = sorted({str(op.timeline.get("started_by")) for op in ops
                          if op.name == name and getattr(op, "timeline", None)})
        print(f"{name}: phases (median of the rounds; wall and worker-process CPU seconds; job started by "
              f"{', '.join(started)})")
        for phase, wall, cpu in rows:
            print(f"  {phase:<45} {wall:>7.3f} s  {'' if cpu is None else f'CPU {cpu:.3f} s'}")
        for task, cpu in threads.items():
            print(f"  thread CPU: {task:<63} {cpu:.3f} s")
        if limits:
            against_limits(rows, threads, limits)
        print()
    if limits:
        sha = (limits["archive_bytes"] + limits["file_bytes"]) / MB / limits["sha256_mb_s"]
        print("limits on this machine, measured in this run (CPU seconds of one thread unless said):")
        print(f"  SHA-256 {limits['sha256_mb_s']:.0f} MB/s per core: the archive ({limits['archive_bytes'] / MB:.0f} MB)"
              f" and its files ({limits['file_bytes'] / MB:.0f} MB) hashed once each: {sha:.3f} s CPU")
        print(f"  zstd decompression of our archive ({limits['tar_bytes'] / MB:.0f} MB of tar), one thread: "
              f"{limits['zstd_s']:.3f} s ({limits['zstd_mb_s']:.0f} MB/s)")
        print(f"  writing the volume's files into a fresh volume (os.write, from a container): "
              f"{limits['write_cpu_s']:.3f} s CPU ({limits['write_mb_s']:.0f} MB/s), {limits['write_s']:.3f} s wall; "
              f"then syncfs {limits['syncfs_s']:.3f} s wall")
        print()


def worker_phases(volume, store, image, run_in):
    """One instrumented backup and replace restore in this process: when each phase began
    (from the worker's progress) and what the containers cost, to show where the time goes."""
    import docker.models.containers as containers

    from ailab_backup_ext.config import AILabBackup
    from ailab_backup_ext.core import BackupManager
    from ailab_backup_ext.progress import Progress

    timings = {}

    def timed(cls, method):
        original = getattr(cls, method)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timings.setdefault(method, []).append(round(time.perf_counter() - t0, 3))
        setattr(cls, method, wrapper)
        return original

    saved = {m: timed(containers.ContainerCollection if m == "create" else containers.Container, m)
             for m in ("create", "put_archive", "start", "remove")}
    results = {}
    try:
        manager = BackupManager(AILabBackup(volume=volume, store=store, helper_image=image))
        manager.worker.probe()
        for what in ("backup", "restore", "restore (10% differ)", "restore (into empty)"):
            if what != "backup" and what != "restore":
                run_in(volume, TENTH_DIFFERS if "10%" in what else EMPTY_VOLUME)
            phases, t0 = [], time.perf_counter()

            def on_change(progress, phases=phases):
                if not phases or phases[-1][0] != progress.phase:
                    phases.append((progress.phase, round(time.perf_counter() - t0, 3)))
            timings.clear()
            before = manager.worker.containers_created
            if what == "backup":
                backup_id = manager.create_backup(progress=Progress(on_change))["id"]
            else:
                manager.restore_backup(backup_id, "replace", Progress(on_change))
            results[what] = {"total": round(time.perf_counter() - t0, 3), "phases began at": phases,
                             "docker calls": dict(timings), "containers": manager.worker.containers_created - before}
    finally:
        for method, original in saved.items():
            setattr(containers.ContainerCollection if method == "create" else containers.Container, method, original)
    return results


def run_benchmark(args):
    client = docker.from_env(timeout=600)
    client.images.get(args.image)  # fails early without the helper image (there is no registry)
    prefix = f"ailab-bench-{uuid.uuid4().hex[:8]}"
    res = Resources(client, args.image, prefix)
    ops = []
    finished = False
    info = {"rss_floor_mb": round(Measured(["true"]).rss_mb, 1), "load_before": os.getloadavg()[0]}
    try:
        work = res.folder("work", args.tmp_dir)
        src = os.path.join(work, "src")
        os.makedirs(src)
        t0 = time.perf_counter()
        files, total = generate_tree(src, args.size_mb)
        t_gen = time.perf_counter() - t0
        volume = res.volume("source")
        t0 = time.perf_counter()
        fill_volume(res, volume, src)
        t_fill = time.perf_counter() - t0
        shutil.rmtree(src)
        expected = snapshot(res, volume)
        info |= {"files": files, "bytes": total, "generate_seconds": round(t_gen, 1),
                "fill_seconds": round(t_fill, 1)}
        print(f"volume {volume}: {files} files, {total / MB:.0f} MB "
              f"(generated in {t_gen:.1f}s, copied in {t_fill:.1f}s)", file=sys.stderr)

        store_volume = res.reserve_volume("store")
        store_folder = os.path.join(res.folder("store", args.tmp_dir), "backups")
        worker_store_volume = res.reserve_volume("worker-store")
        worker_store_folder = os.path.join(res.folder("worker-store", args.tmp_dir), "backups")
        vackup_folder = res.folder("vackup", args.tmp_dir)
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        import pythonimage  # the tests' image with this machine's Python (no package of ours in it)

        worker_image = pythonimage.build_image(client, f"{prefix}-python")
        res.images.append(worker_image)
        tar_image = build_tar_image(client, prefix)
        res.images.append(tar_image)

        # the server's kept workers (made here, before the rounds: a server keeps them for its lifetime)
        servers = {"volume": server_manager(volume, worker_store_volume, worker_image),
                   "folder": server_manager(volume, worker_store_folder, worker_image),
                   "restore": server_manager(res.volume("server-restore"), worker_store_volume, worker_image)}
        baseline = None
        if args.baseline_code:
            baseline = BaselineServer(args.baseline_code, res.volume("baseline-restore"), worker_store_volume,
                                      worker_image)
            check_baseline_cli(args.baseline_code, worker_image)
        for i in range(args.repeat):
            print(f"round {i + 1}/{args.repeat} ...", file=sys.stderr)
            op, seed_dir = seed_backup(res, volume, args.image, args.tmp_dir)
            ops.append(op)
            if not args.worker_only:
                ops.append(our_backup("our backup (volume store)", volume, store_volume, args.image))
                vol_id = ops[-1].backup_id
                ops.append(our_backup("our backup (folder store)", volume, store_folder, args.image))
                folder_id = ops[-1].backup_id
            ops.append(seed_restore(res, seed_dir, args.image, expected))
            if not args.worker_only:
                ops.append(our_restore(res, "our restore (volume store)", store_volume, vol_id, args.image, expected))
                ops.append(our_restore(res, "our restore (folder store)", store_folder, folder_id, args.image,
                                       expected))
            cli_tmp = res.folder("cli-tmp", args.tmp_dir)
            # ours and the old code's command line (--baseline-code) in turn, each first every other round
            clis = [("", None)] + ([("baseline ", args.baseline_code)] if args.baseline_code else [])
            for prefix_, code_dir in clis[::-1] if i % 2 else clis:
                ops.append(worker_backup(res, prefix_ + "worker backup (volume store)", volume, worker_store_volume,
                                         worker_image, cli_tmp, code_dir))
                worker_id = ops[-1].backup_id
                ops.append(worker_backup(res, prefix_ + "worker backup (folder store)", volume, worker_store_folder,
                                         worker_image, cli_tmp, code_dir))
                ops.append(worker_restore(res, prefix_ + "worker restore (replace)", worker_store_volume, worker_id,
                                          worker_image, expected, code_dir))
            # in turn, each first every other round, so neither always follows the other's 0.5 GB write
            for kind in ("volume", "folder")[::-1] if i % 2 else ("volume", "folder"):
                ops.append(server_backup(f"server worker backup ({kind})", servers[kind]))
                if kind == "volume":
                    server_id = ops[-1].backup_id
            # ours and the old code's (--baseline-code) in turn, each first every other round
            restorers = [("server worker", servers["restore"])] + ([("baseline server worker", baseline)]
                                                                   if baseline else [])
            for prefix_, server in restorers[::-1] if i % 2 else restorers:
                ops.extend(server_restores(res, prefix_, server, server_id, expected))
            file_name = f"vackup-{i}.tar.zst"
            ops.append(vackup_backup(res, volume, tar_image, vackup_folder, file_name))
            os.unlink(os.path.join(vackup_folder, file_name))
            ops.append(vackup_backup(res, volume, tar_image, vackup_folder, file_name, sync=True))
            ops.append(vackup_restore(res, vackup_folder, file_name, tar_image, expected))
            ops.append(vackup_restore(res, vackup_folder, file_name, tar_image, expected, sync=True))
            os.unlink(os.path.join(vackup_folder, file_name))
            if not args.worker_only:
                ops.append(api_only_backup(res, volume, args.image))
                seed_tar = os.path.join(seed_dir, "notebooks.tar")  # made outside the timing
                subprocess.run(["tar", "-C", seed_dir, "-cf", seed_tar, "notebooks"], check=True)
                ops.append(api_only_restore(res, seed_tar, args.image, expected))
            shutil.rmtree(seed_dir, ignore_errors=True)
        data_dir = os.path.join(worker_store_folder if args.worker_only else store_folder, "data")
        sizes = {n: os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)}
        info["store_folder_files"] = sizes
        archives = [size for name, size in sizes.items() if not name.startswith(".")]
        info["archive_mb"] = round(max(archives) / MB, 1) if archives else None
        def run_in(vol, script):
            res.client.containers.run(res.image, ["sh", "-c", script], remove=True, volumes={vol: {"bind": "/v"}},
                                      network_disabled=True, labels={res.LABEL: res.prefix})

        info["worker_phases"] = worker_phases(volume, worker_store_volume, worker_image, run_in)
        ours = max((n for n in sizes if not n.startswith(".")), key=sizes.get, default=None)
        if ours:
            info["limits"] = machine_limits(res, worker_image, os.path.join(data_dir, ours),
                                            [v[1] for v in expected.values() if v[0] == "file"])
        info["load_after"] = os.getloadavg()[0]
        finished = True
    finally:
        for manager in locals().get("servers", {}).values():
            manager.docker.close()  # as a stopping server: its kept workers go
        if locals().get("baseline"):
            baseline.close()
        Launcher.stop()
        res.cleanup(settle=not finished)
    return info, ops


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(ops):
    """One row per operation name (median seconds, max RSS over the rounds)."""
    rows = {}
    for op in ops:
        row = rows.setdefault(op.name, {"name": op.name, "kind": op.kind, "side": op.side, "ops": []})
        row["ops"].append(op)
    for row in rows.values():
        row["seconds"] = median([o.seconds for o in row["ops"]])
        measured = [o.rss_mb for o in row["ops"] if o.rss_mb is not None]
        row["rss_mb"] = max(measured) if measured else None
        row["cpu"] = median([o.cpu for o in row["ops"]])
        worker = [o.worker_cpu for o in row["ops"] if getattr(o, "worker_cpu", None) is not None]
        row["worker_cpu"] = median(worker) if worker else None
        d = [o.dockerd_cpu for o in row["ops"] if o.dockerd_cpu is not None]
        row["dockerd_cpu"] = median(d) if d else None
        row["verified"] = None if row["kind"] == "backup" else all(o.verified for o in row["ops"])
        row["note"] = "; ".join(sorted({o.note for o in row["ops"] if o.note}))
    seed = {r["kind"]: r for r in rows.values() if r["side"] == "seed"}
    vackup = {r["kind"]: r for r in rows.values() if r["side"] == "vackup"}
    vackup_sync = {r["kind"]: r for r in rows.values() if r["side"] == "vackup+sync"}
    for row in rows.values():
        base = seed.get(row["kind"])
        compared = base and row["side"] != "seed"
        row["ratio"] = row["seconds"] / base["seconds"] if compared else None
        row["rss_ratio"] = row["rss_mb"] / base["rss_mb"] if compared and row["rss_mb"] is not None else None
        for key, peer in (("vackup_ratio", vackup), ("vackup_sync_ratio", vackup_sync)):
            other = peer.get(row["kind"])
            row[key] = row["seconds"] / other["seconds"] if other and row["side"] in ("ours", "baseline") else None
    return list(rows.values())


def print_table(info, rows, args):
    print()
    print(f"ailab-backup benchmark: {info['files']} files, {info['bytes'] / MB:.0f} MB "
          f"(archive {info.get('archive_mb')} MB), {args.repeat} round(s), median seconds; "
          f"RSS measurement floor {info['rss_floor_mb']:.0f} MB; load average {info['load_before']:.1f} before, "
          f"{info['load_after']:.1f} after, on {os.cpu_count()} CPUs")
    header = f"{'operation':<42} {'seconds':>8} {'peak RSS MB':>11} {'ratio ours/seed':>15} {'/DD ext.':>8} " \
             f"{'/DD+sync':>8} " \
             f"{'RSS ratio':>9} {'child CPU s':>11} {'engine CPU s':>13}  restored ok"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        rss_ratio = f"{r['rss_ratio']:.2f}" if r["rss_ratio"] is not None else "-"
        dcpu = f"{r['dockerd_cpu']:.1f}" if r["dockerd_cpu"] is not None else "?"
        ok = "-" if r["verified"] is None else ("yes" if r["verified"] else "NO")
        vratio = f"{r['vackup_ratio']:.2f}" if r["vackup_ratio"] is not None else "-"
        sratio = f"{r['vackup_sync_ratio']:.2f}" if r["vackup_sync_ratio"] is not None else "-"
        rss = f"{r['rss_mb']:.1f}" if r["rss_mb"] is not None else "-"
        print(f"{r['name']:<42} {r['seconds']:>8.2f} {rss:>11} {ratio:>15} {vratio:>8} {sratio:>8} {rss_ratio:>9} "
              f"{r['cpu']:>11.1f} {dcpu:>13}  {ok}{'  (' + r['note'] + ')' if r['note'] else ''}")
    print()
    for what, figures in info.get("worker_phases", {}).items():
        print(f"worker {what}, phases (one instrumented run in this process): {json.dumps(figures)}")
    print()
    by_name = {r["name"]: r for r in rows}
    for r in rows:  # before/after, from the same run (--baseline-code)
        old = by_name.get("baseline " + r["name"])
        if old:
            cpu = ""
            if r.get("worker_cpu") and old.get("worker_cpu"):
                cpu = (f"; kept worker's CPU {r['worker_cpu']:.2f} s now, {old['worker_cpu']:.2f} s with the baseline "
                       f"(now/baseline {r['worker_cpu'] / old['worker_cpu']:.2f})")
            print(f"{r['name']}: {r['seconds']:.2f} s now, {old['seconds']:.2f} s with the baseline code "
                  f"(now/baseline {r['seconds'] / old['seconds']:.2f}){cpu}")
    print()
    checks = []
    for r in rows:
        if r["side"] != "ours":
            continue
        checks.append((f"{r['name']}: time ratio {r['ratio']:.2f} <= {TARGET_RATIO}", r["ratio"] <= TARGET_RATIO))
        if r["vackup_ratio"] is not None and "worker" in r["name"]:
            checks.append((f"{r['name']}: time ratio to Docker Desktop's method {r['vackup_ratio']:.2f} <= "
                           f"{TARGET_RATIO}", r["vackup_ratio"] <= TARGET_RATIO))
        if r["vackup_sync_ratio"] is not None and "worker" in r["name"]:
            checks.append((f"{r['name']}: time ratio to Docker Desktop's method + sync "
                           f"{r['vackup_sync_ratio']:.2f} <= {TARGET_RATIO}", r["vackup_sync_ratio"] <= TARGET_RATIO))
        if r["rss_mb"] is not None:  # a call made in this process has no peak RSS of its own
            checks.append((f"{r['name']}: peak RSS {r['rss_mb']:.0f} MB < {TARGET_RSS_MB:.0f} MB",
                           r["rss_mb"] < TARGET_RSS_MB))
        if r["verified"] is not None:
            checks.append((f"{r['name']}: restored volume equals the original", r["verified"]))
    for r in rows:
        if r["side"] != "ours" and r["verified"] is not None:
            checks.append((f"{r['name']}: restored volume equals the original", r["verified"]))
    print("targets:")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return checks


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=BASE_SIZE_MB,
                        help=f"approximate volume size (default {BASE_SIZE_MB}: 2,000 notebooks + 4 x 100 MB)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows the median (default 1)")
    parser.add_argument("--image", default=os.environ.get("AILAB_BACKUP_HELPER_IMAGE") or DEFAULT_IMAGE,
                        help="image for the seed recipe's containers and our helpers "
                             "(default: $AILAB_BACKUP_HELPER_IMAGE, else %(default)s)")
    parser.add_argument("--worker-only", action="store_true",
                        help="only the seed recipe, Docker Desktop's method and the worker rows (no streaming "
                             "or archive-API rows): for quick iterations")
    parser.add_argument("--baseline-code", metavar="DIR", default=None,
                        help="a folder holding an older ailab_backup_ext package (e.g. made by `git archive main "
                             "ailab_backup_ext | tar -x -C DIR`): its server worker's restores and its command "
                             "line's worker rows are measured in the same run, in turn with ours, for a "
                             "before/after comparison")
    parser.add_argument("--tmp-dir", default=None, help="where the temporary folders go (default: $TMPDIR)")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "latest.json"),
                        help="JSON results file (default %(default)s; a copy goes to run-<size>mb.json beside it)")
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM both unwind through the finally blocks, so nothing is left behind
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        info, ops = run_benchmark(args)
    except KeyboardInterrupt:
        print("interrupted; everything this run made was removed", file=sys.stderr)
        return 130
    rows = summarize(ops)
    checks = print_table(info, rows, args)
    print_phases(ops, info.get("limits"))

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size_mb_requested": args.size_mb,
        "repeat": args.repeat,
        "volume": info,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "docker": docker.from_env().version().get("Version")},
        "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "ops"} for r in rows],
        "operations": [op.to_json() for op in ops],
        "targets": [{"check": text, "ok": ok} for text, ok in checks],
    }
    by_size = os.path.join(os.path.dirname(os.path.abspath(args.output)), f"run-{args.size_mb}mb.json")
    for path in (args.output, by_size):
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    print(f"\nresults written to {os.path.relpath(args.output)} and {os.path.relpath(by_size)}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
