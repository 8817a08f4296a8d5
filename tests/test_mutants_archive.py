"""The archive reader's rules at their edges (what is just allowed, what is just refused, and the
message that says so) and the writer's output as any tar/zstd/gzip reads it. Fast and Docker-free,
so the mutation run (tests/MUTANTS.md) checks ailab_backup_ext/archive/ with them."""

import io

import pytest

from ailab_backup_ext.archive import (
    DIR,
    FILE,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    ROOT,
    SYMLINK,
    Entry,
    EntryChecker,
    check_path,
    data_path,
    read_archive,
    symlink_escapes,
)
from ailab_backup_ext.errors import InvalidArchive, TooLarge
from test_bad_input import M, archive, good_members


def _read(data, **limits):
    return read_archive(io.BytesIO(data), **limits)


def test_the_entry_limit_allows_exactly_that_many_entries():
    data = archive(good_members())  # 4 entries
    assert len(_read(data, max_entries=4).entries) == 4
    assert len(_read(data, max_entries=0).entries) == 4  # 0: no limit
    with pytest.raises(TooLarge) as refused:
        _read(data, max_entries=3)
    assert str(refused.value) == ("The archive has more than 3 entries (AILabBackup.max_entries): refused. Raise "
                                  "the limit if the archive is trusted.")


def test_the_size_limit_allows_exactly_that_many_bytes():
    members = [M("notebooks", "dir"), M("notebooks/a", data=b"x" * 600), M("notebooks/b", data=b"y" * 400)]
    data = archive(members)
    assert _read(data, max_total_bytes=1000).total_bytes == 1000
    with pytest.raises(TooLarge) as refused:
        _read(data, max_total_bytes=999)
    assert str(refused.value) == ("The archive unpacks to more than the limit of 999 bytes "
                                  "(AILabBackup.max_archive_bytes). Raise the limit if the archive is trusted.")


def test_owner_and_time_limits():
    ok = [M("notebooks", "dir"), M("notebooks/a", data=b"a", uid=2**32 - 1, gid=2**32 - 1, mtime=0)]
    assert [(e.uid, e.gid) for e in _read(archive(ok)).entries][-1] == (2**32 - 1, 2**32 - 1)
    for changes in ({"uid": 2**32}, {"gid": 2**32}):
        bad = [M("notebooks", "dir"), M("notebooks/a", data=b"a", **changes)]
        with pytest.raises(InvalidArchive, match="impossible owner or time"):
            _read(archive(bad))


def _check(*entries, **limits):
    checker = EntryChecker(**limits)
    for entry in entries:
        checker.check(entry)
    return checker


def test_entry_rules_in_order():
    root = Entry(ROOT, DIR)
    assert _check(root, Entry("a", FILE, size=3), Entry("l", SYMLINK, target="a")).total == 3
    cases = [
        ((Entry(ROOT, FILE),), "the notebooks folder itself: it is a file, not a folder"),
        ((root, Entry("a", FILE), Entry("a", DIR)), "'a': it appears twice"),
        ((root, Entry("a", "fifo")), "a fifo is not allowed (only files, folders, symlinks)"),
        ((root, Entry("a", FILE, mode=0o4755)), "setuid/setgid bits are not allowed"),
        ((root, Entry("a", FILE, mode=0o2755)), "setuid/setgid bits are not allowed"),
        ((root, Entry("l", SYMLINK, target="sub"), Entry("l/x/y", FILE)), "'l/x/y': it lies behind the symlink 'l'"),
        ((root, Entry("l", SYMLINK, target="../up")), "points outside notebooks/ ('../up')"),
        ((root, Entry("a", FILE, size=-1)), "impossible size -1"),
        ((root, Entry("d", DIR, size=5)), "impossible size 5"),
        ((root, Entry("a", FILE, uid=-1)), "impossible owner or time (-1:0, 0)"),
        ((root, Entry("a", FILE, gid=-1)), "impossible owner or time (0:-1, 0)"),
        ((root, Entry("a", FILE, mtime=2**63)), "impossible owner or time"),
        ((root, Entry("a", FILE, mtime=-(2**63) - 1)), "impossible owner or time"),
    ]
    for entries, fragment in cases:
        with pytest.raises(InvalidArchive) as refused:
            _check(*entries)
        assert fragment in str(refused.value), (entries, str(refused.value))
    assert _check(root, Entry("a", FILE, mtime=2**63 - 1), Entry("b", FILE, mtime=-(2**63)), Entry("c", FILE, mode=0o1777))
    assert _check(root, Entry("l", SYMLINK, target="sub"), Entry("lx", FILE), Entry("sub", DIR))  # 'lx' is not behind 'l'


def test_member_names_inside_notebooks():
    assert data_path("notebooks") == ROOT
    assert data_path("notebooks/") == ROOT
    assert data_path("./notebooks/") == ROOT
    assert data_path("./notebooks/a/b") == "a/b"
    assert data_path("notebooks/a/") == "a"
    for outside in ("notebooksx", "notebooksx/a", "other/a", "ailab-backup-manifest.json", "/", "./", "/notebooks/a"):
        assert data_path(outside) is None, outside


def test_path_rules():
    longest = "/".join(["y" * 199] * 19) + "z"
    assert len(longest) == MAX_PATH_BYTES
    for good in (ROOT, "a", "a/b.c", ".hidden/x", "x" * MAX_NAME_BYTES, longest, "ä" * 127):
        check_path(good)
    refused = {
        "": "not a relative path", "/a": "not a relative path", "a/": "not a relative path",
        "a\0b": "not a relative path", "a//b": "'..', '.' or empty parts", "./a": "'..', '.' or empty parts",
        "a/..": "'..', '.' or empty parts", "\udcff": "not valid UTF-8",
        "x" * (MAX_NAME_BYTES + 1): "cannot be written on Linux",
        longest + "z": "cannot be written on Linux",
        "ä" * 128: "cannot be written on Linux",  # 256 bytes, 128 characters
    }
    for path, fragment in refused.items():
        with pytest.raises(InvalidArchive, match=fragment.replace(".", r"\.").replace("(", r"\(")):
            check_path(path)


def test_symlinks_that_stay_inside_and_those_that_escape():
    inside = [("a", "b"), ("d/a", "../b"), ("d/e/a", "../../b"), ("a", "./b"), ("a", "b/"), ("d/a", ".."),
              ("d/a", "../d/e"), ("d/e/a", "..//../x"), ("d/a", "./../x")]
    escaping = [("a", ""), ("a", "/etc"), ("a", ".."), ("a", "../b"), ("d/a", "../../b"), ("a", "b/../../c"),
                ("a", "b/../c"), ("a", "b\0c"), (ROOT, "..")]
    for path, target in inside:
        assert not symlink_escapes(path, target), (path, target)
    for path, target in escaping:
        assert symlink_escapes(path, target), (path, target)


def test_a_set_cancel_event_stops_the_check_with_our_error():
    import threading

    from ailab_backup_ext.errors import Cancelled

    data = archive(good_members())
    cancel = threading.Event()
    assert len(_read(data, cancel=cancel).entries) == 4  # not set: read whole
    cancel.set()
    with pytest.raises(Cancelled) as stopped:
        _read(data, cancel=cancel)
    assert str(stopped.value) == "The check was stopped: its client went away. Nothing was kept."


def test_a_decompression_bomb_is_refused_by_the_sizes_its_headers_declare():
    zeros = [M("notebooks", "dir"), M("notebooks/big", data=bytes(3 * 2**20))]  # 3 MiB, a few KB compressed
    data = archive(zeros)
    assert len(data) < 2**20
    assert _read(data, max_ratio=0).total_bytes == 3 * 2**20  # 0: no limit (the server's own backups)
    assert _read(data, max_ratio=4).total_bytes == 3 * 2**20  # 4 times the floor of 1 MiB: 4 MiB
    with pytest.raises(TooLarge) as refused:
        _read(data, max_ratio=2)
    assert str(refused.value) == ("The archive would unpack to more than 2 times its size (at 'big'): refused as a "
                                  "decompression bomb. If it is yours, raise AILabBackup.max_compression_ratio.")


def test_a_flood_of_crafted_members_is_refused_by_its_headers_alone():
    flood = [M("notebooks", "dir")] + [M(f"notebooks/{n:04d}", data=b"") for n in range(200)]  # 100 KB of headers
    data = archive(flood)
    assert len(data) < 64 * 1024
    assert len(_read(data, max_ratio=200).entries) == 201  # the default ratio: 40 times at least 64 KiB
    assert _refusal(data, max_ratio=5) == (
        "The archive's headers and names alone unpack to more than 1 times its size: a flood of crafted members, "
        "refused. If it is yours, raise AILabBackup.max_compression_ratio.")


def _plain_tar_ending_after(zeros):
    """A plain (uncompressed) archive: its members, one end-of-archive block, then ``zeros`` zero
    bytes (a tar writer pads with zeros up to its record size)."""
    import tarfile

    whole = archive(good_members(), compression="none")
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    assert whole[end:].count(0) == len(whole) - end
    return whole[: end + 512] + bytes(zeros)


def test_zeros_after_the_end_are_allowed_up_to_64_kib_and_nothing_else():
    from ailab_backup_ext.archive.reader import MAX_TRAILING_ZEROS

    assert MAX_TRAILING_ZEROS == 64 * 1024
    for zeros in (0, 512, MAX_TRAILING_ZEROS):
        assert len(_read(_plain_tar_ending_after(zeros)).entries) == 4, zeros
    for data in (_plain_tar_ending_after(MAX_TRAILING_ZEROS + 1), _plain_tar_ending_after(1024) + b"\x01"):
        with pytest.raises(InvalidArchive) as refused:
            _read(data)
        assert str(refused.value) == ("The archive has data after its end (more than a tar writer's padding): it "
                                      "was altered or damaged.")



def test_zeros_after_the_end_count_together_when_they_come_in_two_reads():
    """The allowance is for all the zeros after the end, not for each read of them: here the end
    block closes 40 KiB before the first MiB the reader reads, and the zeros go on into the next."""
    import tarfile

    from ailab_backup_ext.archive.format import CHUNK
    from ailab_backup_ext.archive.reader import MAX_TRAILING_ZEROS

    def ending_at(offset):
        pad = 0
        for _ in range(4):
            whole = archive(good_members() + [M("notebooks/pad", data=b"p" * pad)], compression="none")
            with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
                last = tar.getmembers()[-1]
            end = last.offset_data + -(-last.size // 512) * 512 + 512  # and the end-of-archive block
            if end == offset:
                return whole[:end]
            pad += offset - end
        raise AssertionError("no archive ends there")

    head = ending_at(CHUNK - 40 * 1024)
    assert len(_read(head + bytes(MAX_TRAILING_ZEROS)).entries) == 5
    assert _refusal(head + bytes(MAX_TRAILING_ZEROS + 1)) == (
        "The archive has data after its end (more than a tar writer's padding): it was altered or damaged.")

# --- the reader against its manifest (tests/MUTANTS.md, "archive/reader.py") -----------------


def _refusal(data, **limits):
    with pytest.raises((InvalidArchive, TooLarge)) as refused:
        _read(data, **limits)
    return str(refused.value)


def test_data_that_differs_from_its_manifest_is_named_in_the_refusal():
    def set_mode(doc):
        next(e for e in doc["entries"] if e["path"] == "a.ipynb")["mode"] = 0o600

    assert _refusal(archive(good_members(), tweak=set_mode)) == (
        "'a.ipynb' does not match the manifest (content, size, mode, owner or time differs): the archive is "
        "damaged or was altered.")

    def two_more(doc):
        doc["entries"] += [{**doc["entries"][-1], "path": "zz"}, {**doc["entries"][-1], "path": "yy"}]

    assert _refusal(archive(good_members(), tweak=two_more)) == (
        "2 entries of the manifest are missing from the archive, e.g. 'yy'.")



def test_a_manifest_that_is_a_folder_or_a_link_is_refused():
    from test_bad_input import MANIFEST

    for kind in ("dir", "symlink"):
        data = archive(good_members(), manifest=False, after=[M(MANIFEST, kind, target="notebooks/a.ipynb")])
        assert _refusal(data) == "The archive's manifest is not a plain file.", kind


def test_a_manifest_may_take_exactly_what_its_entries_allow():
    """4 MiB, and 512 bytes and 12 a character of its path and link target for each entry found
    (a sane manifest is far below; an inflated one is refused before it is parsed)."""
    import json

    from test_bad_input import MANIFEST, manifest_doc

    members = good_members()
    limit = 4 * 1024 * 1024 + sum(512 + 12 * len(path) for path in (".", "a.ipynb", "sub", "sub/new.txt"))

    def with_manifest_of(size):
        text = json.dumps(manifest_doc(members)).encode()
        return archive(members, manifest=False, after=[M(MANIFEST, data=text + b" " * (size - len(text)))])

    assert len(_read(with_manifest_of(limit)).entries) == 4
    assert _refusal(with_manifest_of(limit + 1)) == (
        f"The archive's manifest is {limit + 1} bytes, more than its 4 entries can need ({limit} bytes at most): "
        "it was altered or crafted, and is refused.")


def test_a_manifest_may_hold_exactly_as_many_json_objects_as_its_entries_allow():
    """100 000 JSON objects, and one for each entry found and each unchanged file its record
    names (a partial safety backup's): a manifest inflated with more is refused while it is parsed."""
    import json

    from test_bad_input import MANIFEST, manifest_doc

    members = good_members()  # 4 entries; their manifest: itself, its source and the 4 entries

    def with_objects(count):
        doc = manifest_doc(members)
        doc["padding"] = [{}] * (count - 6)
        return archive(members, manifest=False, after=[M(MANIFEST, data=json.dumps(doc).encode())])

    for unchanged in (0, 3):
        allowed = 100_000 + 4 + unchanged
        assert len(_read(with_objects(allowed), unchanged_files=unchanged).entries) == 4
        assert _refusal(with_objects(allowed + 1), unchanged_files=unchanged) == (
            f"The archive's manifest holds more than {allowed} JSON objects for 4 entries: it was altered or "
            "crafted, and is refused.")


def test_a_manifest_that_is_not_json_is_refused_as_such():
    from test_bad_input import MANIFEST

    for text in (b"{", b"\xff\xfe", b"[" * 100_000):
        data = archive(good_members(), manifest=False, after=[M(MANIFEST, data=text)])
        assert _refusal(data) == "The archive's manifest is not valid JSON.", text[:10]


def test_every_archive_of_the_corpus_is_refused_with_its_whole_message():
    """What a user reads for each hostile or broken archive of tests/hardening/corpus, uploaded
    (the ratio limit of an upload): the whole message, not only the fragment the CLI and REST
    tests look for (tests/hardening/corpus/index.json)."""
    import json
    import os

    corpus = os.path.join(os.path.dirname(__file__), "hardening", "corpus")
    with open(os.path.join(corpus, "index.json")) as f:
        fragments = json.load(f)
    with open(os.path.join(os.path.dirname(__file__), "hardening", "corpus_messages.json")) as f:
        messages = json.load(f)
    assert set(messages) == set(fragments)
    for name, message in sorted(messages.items()):
        assert fragments[name] in message, name
        with open(os.path.join(corpus, name), "rb") as f:
            assert _refusal(f.read(), max_ratio=200) == message, name


def test_checking_an_archive_counts_its_files_and_their_bytes_for_the_progress_bar():
    from ailab_backup_ext.progress import Progress

    progress = Progress()
    manifest = _read(archive(good_members()), progress=progress)
    assert (progress.done_files, progress.done_bytes) == (2, manifest.total_bytes) and manifest.total_bytes > 0


def test_a_files_reader_gives_no_more_than_asked_and_the_whole_file_in_the_end():
    """A restore reads each file in bounded pieces (memory), whatever its size."""
    from ailab_backup_ext.archive import iter_archive

    content = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: more than one read of the input
    members = [M("notebooks", "dir"), M("notebooks/big.bin", data=content), M("notebooks/small", data=b"abc")]
    for compression in ("zstd", "none"):
        got = {}
        for entry, reader in iter_archive(io.BytesIO(archive(members, compression=compression))):
            if reader is None:
                continue
            parts = [reader.read(1), reader.read(1000)]
            assert [len(p) for p in parts] == [1, min(1000, entry.size - 1)]
            while True:
                part = reader.read(100_000)
                assert len(part) <= 100_000
                if not part:
                    break
                parts.append(part)
            assert reader.read() == b"" and reader.read(-1) == b""
            got[entry.path] = b"".join(parts)
        assert got == {"big.bin": content, "small": b"abc"}, compression

def test_a_second_read_without_hashing_gives_each_file_the_hash_its_manifest_names():
    """A restore reads an archive it has checked completely once more, without hashing it again:
    each file then carries its manifest's SHA-256 (what a restore compares files in place by)."""
    import hashlib

    from ailab_backup_ext.archive import Manifest, iter_archive

    members = good_members()
    items = [(item, reader.read() if reader else None)
             for item, reader in iter_archive(io.BytesIO(archive(members)), check_content=False)]
    entries, (manifest, _) = [e for e, _ in items[:-1]], items[-1]
    assert isinstance(manifest, Manifest)
    assert [(e.path, e.type, e.sha256) for e in entries] == [
        (ROOT, DIR, None), ("a.ipynb", FILE, hashlib.sha256(members[1].data).hexdigest()), ("sub", DIR, None),
        ("sub/new.txt", FILE, hashlib.sha256(members[3].data).hexdigest())]
    assert [content for _, content in items[:-1]] == [None, members[1].data, None, members[3].data]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_the_manifest_names_the_compression_it_was_written_with(compression):
    from ailab_backup_ext.archive import Manifest, write_archive

    out = io.BytesIO()
    manifest = Manifest("2026-01-01T00:00:00Z", {"type": "folder"}, compression="none given")
    write_archive(out, [(Entry(ROOT, DIR, mode=0o755), None), (Entry("a", FILE, size=2), io.BytesIO(b"ab"))],
                  manifest, compression)
    out.seek(0)
    read = read_archive(out)
    assert read.compression == compression and manifest.compression == compression
    assert [(e.path, e.size) for e in read.entries] == [(ROOT, 0), ("a", 2)]


def test_the_manifest_member_is_a_plain_readable_file_of_now():
    """What ``tar -x`` gives a user who unpacks a backup by hand."""
    import tarfile
    import time

    from ailab_backup_ext.archive import MANIFEST_NAME, Manifest, write_archive

    out = io.BytesIO()
    write_archive(out, [(Entry(ROOT, DIR, mode=0o755), None)], Manifest("now", {}), "gzip")
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as tar:
        member = tar.getmember(MANIFEST_NAME)
    assert member.isreg() and member.mode == 0o644
    assert abs(member.mtime - time.time()) < 300


def _manifest_document(**extra):
    from ailab_backup_ext.archive import FORMAT, FORMAT_VERSION
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "entries": [], **extra}


def test_the_manifest_as_written_names_counts_skipped_and_release():
    """What a user reading ``ailab-backup-manifest.json`` (or an older reader) finds, key by key."""
    from ailab_backup_ext.archive import FORMAT, FORMAT_VERSION, Manifest
    entries = [Entry(ROOT, DIR, mode=0o755), Entry("b.ipynb", FILE, size=3, sha256="bb"),
               Entry("a.ipynb", FILE, size=5, sha256="aa"), Entry("c.txt", FILE, size=7, sha256="cc"),
               Entry("d", DIR), Entry("z", FILE, size=0, sha256=None), Entry("l", SYMLINK, target="a.ipynb")]
    release = {"image": "exasol/ai-lab:1.0", "defaults": {"a.ipynb": "aa", "b.ipynb": "bb", "c.txt": "other",
                                                          "d": "aa", "z": None}}
    skipped = [{"path": "sock", "reason": "a socket"}]
    manifest = Manifest(created="2026-12-02T00:00:00Z", source={"type": "folder"}, label="L",
                        compression="zstd", entries=entries, skipped=skipped, release=release)
    document = manifest.to_json()
    assert document == {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": "2026-12-02T00:00:00Z",
        "source": {"type": "folder"}, "label": "L", "compression": "zstd",
        "file_count": 4, "total_bytes": 15, "entries": [e.to_json() for e in entries], "skipped": skipped,
        # unchanged defaults: files whose SHA-256 is the release's, sorted; not a changed file, a
        # folder named like a default, nor a file without a hash
        "release": {**release, "unchanged_defaults": ["a.ipynb", "b.ipynb"]},
    }
    assert Manifest(created="", source={}, release={"image": "x"}).release_record() == \
        {"image": "x", "unchanged_defaults": []}  # a record without an index of defaults
    assert "release" not in Manifest(created="", source={}).to_json()  # older backups have none
    assert Manifest(created="", source={}).release_record() is None
    again = Manifest.from_json(document)
    assert (again.created, again.source, again.label, again.compression, again.skipped) == \
        ("2026-12-02T00:00:00Z", {"type": "folder"}, "L", "zstd", skipped)
    assert again.release == {**release, "unchanged_defaults": ["a.ipynb", "b.ipynb"]}
    assert [e.to_json() for e in again.entries] == [e.to_json() for e in entries]


def test_a_manifest_with_missing_or_wrongly_typed_fields_reads_as_empty_ones():
    from ailab_backup_ext.archive import Manifest
    bare = Manifest.from_json(_manifest_document())
    assert (bare.created, bare.source, bare.label, bare.compression, bare.skipped, bare.release) == \
        ("", {}, "", "", [], None)
    odd = Manifest.from_json(_manifest_document(created=5, source=["x"], label=7, compression=1,
                                                skipped={"a": 1}, release=["r"]))
    assert (odd.created, odd.source, odd.label, odd.compression, odd.skipped, odd.release) == \
        ("5", {}, "7", "1", [], None)


def test_a_manifest_that_is_not_ours_is_refused_with_a_message_that_says_so():
    from ailab_backup_ext.archive import Manifest
    for document in ([], {"format": "other"}, {}):
        with pytest.raises(InvalidArchive) as refused:
            Manifest.from_json(document)
        assert str(refused.value) == "The archive's manifest is not an ailab-backup manifest."
    for entries in (None, {"a": 1}, [{"path": "a", "type": "file"}, 1]):
        with pytest.raises(InvalidArchive) as refused:
            Manifest.from_json(_manifest_document(entries=entries))
        assert str(refused.value) == "The archive's manifest has no valid list of entries."


def test_backup_times_have_no_fraction_of_a_second():
    from ailab_backup_ext.archive import utc_now
    now = utc_now()
    assert now.microsecond == 0 and "." not in now.isoformat()


def test_a_too_long_path_is_named_by_its_first_60_characters():
    path = "a" * 100 + "/" + "b" * (MAX_NAME_BYTES + 1)
    with pytest.raises(InvalidArchive) as refused:
        check_path(path)
    assert str(refused.value) == (f"Refused {'a' * 60!r}...: a name longer than {MAX_NAME_BYTES} bytes or a path "
                                  f"longer than {MAX_PATH_BYTES} bytes cannot be written on Linux.")


def test_a_link_with_dot_dot_after_a_name_could_escape_even_when_its_text_stays_inside():
    # 'sub/l -> ../a/..' reads as 'sub/..' = inside, but if 'a' is itself a link (a -> x/y) the
    # kernel climbs from where 'a' points; only leading '..' are allowed
    assert symlink_escapes("sub/l", "../a/..")
    assert symlink_escapes("sub/l", "../a/../b")
    assert not symlink_escapes("sub/l", "../a/b")


def test_headers_streamed_into_a_folder_name_it_or_stand_alone():
    """Restores streamed through Docker name each member under the target folder's own name."""
    import tarfile

    from ailab_backup_ext.archive.writer import tar_header

    def name(entry, root_name):
        return tarfile.TarInfo.frombuf(tar_header(entry, root_name)[:512], "utf-8", "surrogateescape").name

    assert name(Entry("a/b.ipynb", FILE, size=0), "target") == "target/a/b.ipynb"
    assert name(Entry(ROOT, DIR), "target") == "target"
    assert name(Entry("a/b.ipynb", FILE, size=0), None) == "a/b.ipynb"
    assert name(Entry("a/b.ipynb", FILE, size=0), "notebooks") == "notebooks/a/b.ipynb"
