#!/usr/bin/env python3
"""Benchmark: age decryption throughput, ours (stores/age_stream.py, on cryptography) against
pyrage, in one run on the same data.

Run on demand (not a test)::

    python benchmarks/age_decrypt.py [--size-mb 256] [--repeat 5]

Encrypts ``--size-mb`` MB of random bytes with pyrage (what a backup stores: random bytes are
what a zstd archive looks like to the cipher), then, ``--repeat`` rounds, alternating, decrypts it
in memory (an ``io.BytesIO``), the plaintext discarded but checked by SHA-256 once:

* pyrage:          ``pyrage.decrypt_io`` (what restores used, in a child process), 1 MiB writes
* ours:            ``age_stream.decrypt_blocks`` in this thread
* ours read-ahead: ``DecryptingReader`` (what a restore reads: decrypted in its read-ahead
  thread), read 1 MiB at a time

Prints medians of wall seconds, MB/s and CPU seconds (user + system of this process: a read-ahead
thread's too) per operation.
"""

import argparse
import hashlib
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import pyrage  # noqa: E402
from pyrage import x25519  # noqa: E402

from ailab_backup_ext.stores.age import DecryptingReader  # noqa: E402
from ailab_backup_ext.stores.age_stream import X25519Identity, decrypt_blocks  # noqa: E402

MIB = 1024 * 1024


class Discard(io.RawIOBase):
    """A writer that keeps nothing (pyrage's output), hashing it when asked."""

    def __init__(self, digest=None):
        super().__init__()
        self.digest = digest

    def writable(self):
        return True

    def write(self, data):
        if self.digest is not None:
            self.digest.update(data)
        return len(data)


def run_pyrage(sealed, identity, digest=None):
    pyrage.decrypt_io(io.BufferedReader(io.BytesIO(sealed), MIB), io.BufferedWriter(Discard(digest), MIB),
                      [identity])


def run_ours(sealed, identity, digest=None):
    for block in decrypt_blocks(io.BytesIO(sealed).read, [X25519Identity.from_str(str(identity))]):
        if digest is not None:
            digest.update(block)


def run_read_ahead(sealed, identity, digest=None):
    reader = DecryptingReader(io.BytesIO(sealed), [identity], "the benchmark's data", "(no key file)")
    try:
        while data := reader.read(MIB):
            if digest is not None:
                digest.update(data)
    finally:
        reader.close()


OPERATIONS = {"pyrage": run_pyrage, "ours": run_ours, "ours read-ahead": run_read_ahead}


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    identity = x25519.Identity.generate()
    plain = os.urandom(args.size_mb * MIB)
    expected = hashlib.sha256(plain).hexdigest()
    sealed = pyrage.encrypt(plain, [identity.to_public()])
    del plain
    for name, run in OPERATIONS.items():  # each checked once, outside the timing
        digest = hashlib.sha256()
        run(sealed, identity, digest)
        assert digest.hexdigest() == expected, f"{name} decrypted something else"
    timings = {name: [] for name in OPERATIONS}
    for _ in range(args.repeat):
        for name, run in OPERATIONS.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(sealed, identity)
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))

    mb = len(sealed) / MIB
    print(f"\n{mb:.0f} MiB of age ciphertext, decrypted in memory; medians of {args.repeat} rounds; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(f"{'decryption':<18} {'seconds':>8} {'MB/s':>8} {'CPU s':>7}")
    for name, runs in timings.items():
        seconds, cpu = median([s for s, _ in runs]), median([c for _, c in runs])
        print(f"{name:<18} {seconds:>8.3f} {mb / seconds:>8.0f} {cpu:>7.3f}")


if __name__ == "__main__":
    main()
