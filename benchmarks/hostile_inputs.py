"""Benchmark of hostile uploads (run on demand, not a test; issue 18, items 1, 2, 4 and 6).

1. Each generated hostile archive of tests/hardening/hostile.py, growing its dimension (what
   follows the end of the tar, the manifest, pax global headers, chains of extended headers, a
   pax record, the number of long-named entries, nesting), checked as an upload is (ratio limit
   1000, max_entries 1,000,000) in a child process: its wall time and peak RSS (``os.wait4``), and
   what it answered. Target: time and memory stay flat (or grow with the upload's own size), every
   case is refused.
2. The restore preview of a backup holding a 1 GiB notebook (a 1 MB upload): peak RSS of the
   preview. Target: far below the notebook's size (the cell diff reads 16 MiB at most).
3. GET /ailab/backup/status latency in a real server while ``--uploads`` sane but slow-to-check
   uploads (``--entries`` entries each) are checked at once. Target: p99 under 100 ms.

    python benchmarks/hostile_inputs.py [--quick] [--uploads 6] [--entries 30000]
"""

import argparse
import hashlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import requests
import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests", "hardening"), os.path.join(HERE, "..", "tests"), HERE]

import hostile  # noqa: E402
from rest_server import TOKEN, start_server  # noqa: E402

GROWTH = {  # case -> the sizes of its dimension
    "trailing-zstd-zero-frame": [1 << 30, 8 << 30, 32 << 30],
    "trailing-zeros-in-tar": [1 << 20, 64 << 20, 256 << 20],
    "huge-manifest": [1_000_000, 10_000_000, 30_000_000],
    "nested-manifest": [1_000, 100_000, 1_000_000],
    "pax-global-headers": [10, 1_000, 10_000],
    "gnu-long-name-chain": [10, 3_000, 100_000],
    "pax-header-chain": [10, 3_000, 100_000],
    "huge-pax-record": [1 << 16, 1 << 20, 16 << 20],
    "many-long-named-entries": [10_000, 50_000, 100_000],
}


def report(start, answer):
    """The child's last line: seconds of the work, its peak RSS (VmHWM: unlike the rusage of a
    child, not inherited from the forked parent), what it answered."""
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(f"{time.perf_counter() - start:.3f} {peak_kb} {answer}")


def child_check(path):
    """In the child: check ``path`` as an upload is checked; print what it answered."""
    from ailab_backup_ext.archive import read_archive
    from ailab_backup_ext.errors import BackupError

    start = time.perf_counter()
    try:
        with open(path, "rb") as f:
            read_archive(f, max_ratio=1000, max_entries=1_000_000)
        answer = "accepted"
    except BackupError as exc:
        answer = f"{exc.http_status} {exc}"
    report(start, answer)


def child_preview(path, root):
    """In the child: add ``path`` to a folder store as an upload, preview restoring it into root."""
    from ailab_backup_ext.config import AILabBackup
    from ailab_backup_ext.core import BackupManager

    # spaces compress 30,000 times: as an upload this is a bomb; as a backup of one's own huge
    # notebook it is not (a store's archives meet no ratio limit), so no ratio limit here
    manager = BackupManager(AILabBackup(source_dir=root, store=os.path.join(root, "..", "store"), docker_url="none",
                                        max_compression_ratio=0))
    start = time.perf_counter()
    meta = manager.add_archive_file(path)
    plan = manager.plan_restore(meta["id"])
    [item] = [i for i in plan["overwritten"] if i["path"] == "a.ipynb"]
    report(start, item.get("notebook_note") or item.get("notebook"))


def run_child(*args):
    """(seconds, peak RSS in MB, answer) of the work of this script run with ``args`` (the
    interpreter's start and imports left out)."""
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return 0.0, 0.0, f"exit {proc.returncode}"
    seconds, peak_kb, answer = lines[-1].split(" ", 2)
    return float(seconds), int(peak_kb) / 1024, answer


def streamed_notebook_archive(path, size):
    """A backup holding a notebook a.ipynb of ``size`` bytes, written in bounded memory."""
    members = hostile.good_members()
    head, tail = b'{"cells": [{"cell_type": "code", "source": "', b'"}]}'

    class Spaces(io.RawIOBase):
        def __init__(self):
            self.left = size - len(head) - len(tail)
            self.parts = [head]

        def readable(self):
            return True

        def readinto(self, buffer):
            if self.parts:
                data = self.parts.pop(0)
            elif self.left > 0:
                data = b" " * min(len(buffer), self.left, 1 << 20)
                self.left -= len(data)
                if not self.left:
                    self.parts.append(tail)
            else:
                return 0
            buffer[: len(data)] = data
            return len(data)

    digest = hashlib.sha256()
    reader = Spaces()
    while chunk := reader.read(1 << 20):
        digest.update(chunk)
    members[1] = hostile.M("notebooks/a.ipynb", data=b"")  # its manifest entry is fixed below
    doc = hostile.manifest_doc(members)
    entry = next(e for e in doc["entries"] if e["path"] == "a.ipynb")
    entry.update(size=size, sha256=digest.hexdigest())
    doc["total_bytes"] = sum(e["size"] for e in doc["entries"] if e["type"] == "file")
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if m.name == "notebooks/a.ipynb":
                info = tarfile.TarInfo(m.name)
                info.size, info.mode, info.mtime, info.uid, info.gid = size, m.mode, m.mtime, m.uid, m.gid
                info.uname = info.gname = ""
                tar.addfile(info, io.BufferedReader(Spaces(), 1 << 20))
            else:
                m.add_to(tar)
        hostile.M(hostile.MANIFEST, data=json.dumps(doc).encode()).add_to(tar)


def status_latency(tmp, uploads, entries):
    root, store = os.path.join(tmp, "root"), os.path.join(tmp, "store")
    os.makedirs(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"token {TOKEN}"}
    members = hostile.good_members() + [hostile.M(f"notebooks/d{i:07d}/f.txt", data=b"%d" % i) for i in range(entries)]
    dirs = [hostile.M(f"notebooks/d{i:07d}", "dir") for i in range(entries)]
    members = members[:4] + [m for pair in zip(dirs, members[4:]) for m in pair]
    body = hostile.compress(hostile.valid_tar(members), "zstd")
    os.environ["AILAB_BACKUP_MAX_CONCURRENT_UPLOADS"] = str(uploads + 1)  # the server inherits it
    server = start_server(root, store, port)
    try:
        for _ in range(300):
            try:
                requests.get(base + "/api/status", headers=auth, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        session = requests.Session()
        idle = []  # the same requests with nothing to check: what the machine itself costs
        for _ in range(60):
            start = time.perf_counter()
            session.get(base + "/ailab/backup/status", headers=auth).raise_for_status()
            idle.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)
        idle.sort()
        alone = time.perf_counter()
        first = requests.post(base + "/ailab/backup/upload", data=body, headers=auth)
        alone = time.perf_counter() - alone
        codes, latencies = [first.status_code], []
        threads = [threading.Thread(target=lambda: codes.append(
            requests.post(base + "/ailab/backup/upload", data=body, headers=auth).status_code)) for _ in range(uploads)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            start = time.perf_counter()
            session.get(base + "/ailab/backup/status", headers=auth).raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)
        for t in threads:
            t.join()
        latencies.sort()
        return {"uploads": uploads, "entries_each": entries, "upload_mb": round(len(body) / 1e6, 2),
                "one_check_s": round(alone, 1), "codes": sorted(codes), "samples": len(latencies),
                "p50_ms": round(statistics.median(latencies), 1),
                "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
                "max_ms": round(latencies[-1], 1), "idle_p50_ms": round(statistics.median(idle), 1),
                "idle_p99_ms": round(idle[int(len(idle) * 0.99)], 1),
                "check_processes": os.environ.get("AILAB_BACKUP_CHECK_PROCESSES", "default")}
    finally:
        server.terminate()
        server.wait(30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the two smaller sizes of each case only")
    parser.add_argument("--uploads", type=int, default=6)
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--only", choices=["cases", "preview", "status"], help="one part only")
    args = parser.parse_args()
    results = {"cases": [], "baseline": None}
    with tempfile.TemporaryDirectory(prefix="ailab-hostile-") as tmp:
        sane = os.path.join(tmp, "sane.tar.zst")
        with open(sane, "wb") as f:
            f.write(hostile.compress(hostile.valid_tar(), "zstd"))
        seconds, peak, said = run_child("--check", sane)
        results["baseline"] = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak)}
        print(f"baseline (a small valid archive): {seconds:.2f} s, peak RSS {peak:.0f} MB: {said}")
        for name, sizes in GROWTH.items() if args.only in (None, "cases") else ():
            build = hostile.CASES[name][0]
            for n in sizes[:2] if args.quick else sizes:
                path = os.path.join(tmp, "case")
                with open(path, "wb") as f:
                    f.write(build(n))
                size = os.path.getsize(path)
                seconds, peak, said = run_child("--check", path)
                results["cases"].append({"case": name, "n": n, "upload_bytes": size, "seconds": round(seconds, 2),
                                         "peak_rss_mb": round(peak), "answer": said[:100]})
                print(f"{name:26} n={n:<12} upload {size:>10} B  {seconds:6.2f} s  peak RSS {peak:5.0f} MB  {said[:90]}")
        if args.only in (None, "preview"):
            preview(tmp, results)
        if args.only in (None, "status"):
            latency = status_latency(tmp, args.uploads, args.entries)
            results["status_during_uploads"] = latency
            print(f"GET /ailab/backup/status while {latency['uploads']} uploads of {latency['entries_each']} entries "
                  f"({latency['upload_mb']} MB, {latency['one_check_s']} s to check one alone) are checked: "
                  f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms "
                  f"({latency['samples']} requests; target p99 < 100 ms) -> {'MET' if latency['p99_ms'] < 100 else 'MISSED'}; "
                  f"uploads answered {latency['codes']}; with nothing to check: p50 {latency['idle_p50_ms']} ms, "
                  f"p99 {latency['idle_p99_ms']} ms; check_processes {latency['check_processes']}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "hostile_inputs.json"), "w") as f:
        json.dump(results, f, indent=1)


def preview(tmp, results):
    """The preview of restoring a backup with a 1 GiB notebook over a small one."""
    notebook = os.path.join(tmp, "notebook.tar.zst")
    streamed_notebook_archive(notebook, 1 << 30)
    root = os.path.join(tmp, "preview", "nb")
    os.makedirs(root)
    with open(os.path.join(root, "a.ipynb"), "wb") as f:
        f.write(hostile.notebook_of_size(1000))
    seconds, peak, said = run_child("--preview", notebook, root)
    results["preview_1gib_notebook"] = {"upload_bytes": os.path.getsize(notebook), "seconds": round(seconds, 1),
                                        "peak_rss_mb": round(peak), "answer": said}
    print(f"preview of a 1 GiB notebook ({os.path.getsize(notebook)} B archive): {seconds:.1f} s, "
          f"peak RSS {peak:.0f} MB: {said}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        child_check(sys.argv[2])
    elif sys.argv[1:2] == ["--preview"]:
        child_preview(sys.argv[2], sys.argv[3])
    else:
        main()
