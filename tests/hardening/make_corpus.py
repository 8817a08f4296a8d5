"""Writes tests/hardening/corpus/: hostile and broken archives as files, with index.json naming
what each refusal must say. They come from the cases of tests/test_bad_input.py plus some that
only a file shows well. Run again after changing those cases:

    python tests/hardening/make_corpus.py
"""

import io
import json
import os
import shutil
import sys
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ailab_backup_ext.archive import Entry, Manifest, write_archive  # noqa: E402
from test_bad_input import CASES, M, archive, good_members  # noqa: E402

sys.path.insert(0, HERE)
import hostile  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


class Zeros:
    def __init__(self, n):
        self.n = n

    def read(self, k=-1):
        k = self.n if k < 0 else min(k, self.n)
        self.n -= k
        return b"\0" * k


def bomb():
    out = io.BytesIO()
    write_archive(out, [(Entry(".", "dir", mode=0o755), None),
                        (Entry("zeros.bin", "file", size=2 * 2**30), Zeros(2 * 2**30))],
                  Manifest(created="2026-01-01T00:00:00Z", source={"name": "bomb"}), "zstd")
    return out.getvalue()


def zip_named_tar_gz():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("notebooks/a.ipynb", "{}")
    return out.getvalue()


def non_utf8_name():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for m in good_members():
            m.add_to(tar)
        info = tarfile.TarInfo("notebooks/caf\udce9.txt")  # Latin-1 bytes, not UTF-8
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


EXTRA = {
    "very-long-name.tar.zst": (lambda: archive(good_members() + [M("notebooks/" + "n" * 300, data=b"x")]),
                               "longer than 255"),
    "very-long-path.tar.zst": (lambda: archive(good_members() + [M("notebooks/" + "/".join(["d" * 200] * 20), data=b"x")]),
                               "longer than"),
    "non-utf8-name.tar": (non_utf8_name, "not valid UTF-8"),
    "decompression-bomb.tar.zst": (bomb, "decompression bomb"),
    "zip-named.tar.gz": (zip_named_tar_gz, "zip file"),
    # unbounded reading (issue 18): refused from the store too, where no ratio limit applies
    **{f"{name}.tar.zst": (lambda build=build, n=n: build(n), fragment)
       for name, (build, n, fragment) in hostile.CASES.items() if name != "many-long-named-entries"},
}


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    os.makedirs(CORPUS)
    index = {}
    cases = {f"{case.id}.bin": case.values for case in CASES}
    for name, (build, fragment) in {**cases, **EXTRA}.items():
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(build())
        index[name] = fragment
    with open(os.path.join(CORPUS, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    print(f"{len(index)} archives in {CORPUS}")


if __name__ == "__main__":
    main()
