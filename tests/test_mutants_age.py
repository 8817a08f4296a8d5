"""The keys of encryption at rest and the encrypting stream's failures, seen from what a user gets:
where the key is kept and how, the messages that say what to do, an aborted upload that never
decrypts as a whole backup. Fast, Docker-free and without the S3 server, so the mutation run
(tests/MUTANTS.md) checks ``ailab_backup_ext/stores/age.py`` with them."""

import io
import os
import stat
import threading
import time

import pyrage
import pytest
from pyrage import x25519

from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.stores import age
from ailab_backup_ext.stores.age import DecryptingReader, EncryptingWriter, Encryption


def test_the_key_is_kept_in_jupyters_data_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    assert Encryption().key_file == str(tmp_path / "jupyter-data" / "ailab-backup-age.key")
    assert Encryption(key_file="~/k.key").key_file == os.path.expanduser("~/k.key")


def test_a_new_key_is_private_opens_what_is_encrypted_for_it_and_is_shown_once(tmp_path):
    key_file = tmp_path / "keys" / "age.key"
    made = Encryption(key_file=str(key_file)).generate()
    assert made["key_file"] == str(key_file) and made["message"] == age.SAVE_KEY_MESSAGE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    identity = x25519.Identity.from_str(made["private_key"])
    assert made["public_key"] == str(identity.to_public())
    assert key_file.read_text() == f"# ailab-backup age key; public key: {made['public_key']}\n{made['private_key']}\n"
    # what a later configuration reads from the file: the same key, both ways
    encryption = Encryption(key_file=str(key_file))
    assert [str(r) for r in encryption.recipients()] == [made["public_key"]]
    sealed = pyrage.encrypt(b"notebooks", [identity.to_public()])
    assert pyrage.decrypt(sealed, encryption.identities("The backup")) == b"notebooks"
    assert encryption.describe() == {"mode": "auto", "key_file": str(key_file),
                                     "public_key": made["public_key"], "recipients": 0}


def test_a_key_is_never_overwritten_nor_made_inside_the_notebooks_folder(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for inside in (notebooks / "age.key", notebooks / "sub" / "age.key", notebooks, notebooks / "..age.key"):
        with pytest.raises(BackupError) as refused:
            Encryption(key_file=str(inside), forbidden_dir=str(notebooks)).generate()
        assert str(refused.value) == (f"The key file {inside} is inside the notebooks folder, so it would be in "
                                      "every backup. Set AILabBackup.age_identity_file elsewhere.")
    assert list(notebooks.iterdir()) == []
    beside = tmp_path / "notebooks-keys" / "age.key"  # a name that only starts like the folder's
    Encryption(key_file=str(beside), forbidden_dir=str(notebooks)).generate()
    in_parent = tmp_path / "age.key"  # in a folder that exists already (Jupyter's data folder)
    Encryption(key_file=str(in_parent), forbidden_dir=str(notebooks)).generate()
    assert in_parent.read_text().startswith("# ailab-backup age key")
    kept = beside.read_text()
    with pytest.raises(BackupError) as refused:
        Encryption(key_file=str(beside)).generate()
    assert str(refused.value) == (f"A key already exists in {beside}; it was kept. Backups made with it need it: "
                                  "move it away yourself only if you saved it.")
    assert beside.read_text() == kept


def test_the_key_file_may_hold_comments_and_blank_lines_but_nothing_else(tmp_path):
    identity = x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(f"\n# made by hand\n   \n{identity}  \n")
    assert [str(i) for i in Encryption(key_file=str(key_file)).identities("x")] == [str(identity)]
    key_file.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    message = (f"The key file {key_file} does not hold an age key (AGE-SECRET-KEY-1...). "
               "Put the key you saved there.")
    for call in (lambda e: e.identities("x"), lambda e: e.recipients()):
        with pytest.raises(BackupError) as refused:
            call(Encryption(key_file=str(key_file)))
        assert str(refused.value) == message
        assert "NOTAKEY" not in str(refused.value)
    assert Encryption(key_file=str(key_file)).describe() == {"mode": "auto", "key_file": str(key_file),
                                                            "key": None, "error": message}


def test_without_a_key_what_each_mode_does(tmp_path):
    key_file = tmp_path / "none.key"
    assert Encryption("auto", str(key_file)).recipients() == []
    assert Encryption("off", str(key_file), [str(x25519.Identity.generate().to_public())]).recipients() == []
    with pytest.raises(BackupError) as refused:
        Encryption("on", str(key_file)).recipients()
    assert str(refused.value) == ("Encryption is on (AILabBackup.encryption), but there is no key: make one with "
                                  "'ailab-backup keygen' (or in the UI), or set AILabBackup.age_recipients.")
    with pytest.raises(BackupError) as refused:
        Encryption("auto", str(key_file)).identities("The backup 20261204T000000Z")
    assert str(refused.value) == (
        "The backup 20261204T000000Z is encrypted, and the key to open it is missing: put the key saved when "
        f"encryption was set up into {key_file} (mode 0600), or set AILabBackup.age_identity_file. "
        "Nothing was changed.")
    public = x25519.Identity.generate().to_public()
    assert [str(r) for r in Encryption("on", str(key_file), [f" {public} "]).recipients()] == [str(public)]
    with pytest.raises(BackupError) as refused:
        Encryption("on", str(key_file), ["age1nope"]).recipients()
    assert str(refused.value) == "AILabBackup.age_recipients has 'age1nope', which is not an age public key (age1...)."
    assert Encryption("on", str(key_file), ["a", "b"]).describe() == {
        "mode": "on", "key_file": str(key_file), "public_key": None, "recipients": 2}


def _encrypt_threads():
    return [t for t in threading.enumerate() if t.name == "ailab-backup-encrypt"]


def test_an_aborted_encrypted_upload_never_decrypts_as_a_whole_backup():
    """An upload stopped midway (S3 gone, the user's cancel): the age stream is not ended, so what
    reached the store can never pass for a complete, shorter backup; the thread is gone."""
    identity = x25519.Identity.generate()
    out = io.BytesIO()
    writer = EncryptingWriter(out, [identity.to_public()])
    writer.write(os.urandom(200_000))
    try:
        (thread,) = _encrypt_threads()  # what a thread dump of a stuck upload shows
        assert thread.daemon  # a backup that dies here does not keep the server's process alive
    finally:
        writer.abort()
    assert _encrypt_threads() == []
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(out.getvalue(), [identity])
    # the same stream, closed instead, is a whole age file
    out = io.BytesIO()
    writer = EncryptingWriter(out, [identity.to_public()])
    writer.write(b"x" * 200_000)
    writer.close()
    assert pyrage.decrypt(out.getvalue(), [identity]) == b"x" * 200_000


class _FailingStore:
    """Where the encrypted bytes go, failing after ``good`` bytes as a store does: with its own
    error kept (``error``, as the S3 store's sink) or only raised."""

    def __init__(self, good, error, keep):
        self.good, self.raised, self.keep = good, error, keep
        self.error = None
        self.written = 0

    def write(self, data):
        if self.written + len(data) > self.good:
            if self.keep:
                self.error = self.raised
            raise self.raised
        self.written += len(data)
        return len(data)


@pytest.mark.parametrize("keep", [True, False])
def test_a_store_failing_under_an_encrypted_upload_is_the_error_the_user_sees(keep):
    store_down = BackupError("The S3 server did not answer; nothing was kept.")
    writer = EncryptingWriter(_FailingStore(100_000, store_down if keep else OSError(28, "No space left"), keep),
                              [x25519.Identity.generate().to_public()])
    with pytest.raises(BackupError) as failed:
        for _ in range(400):  # the pipe's queue fills, then the writer sees the thread's end
            writer.write(os.urandom(64 * 1024))
        writer.close()
    if keep:
        assert failed.value is store_down
    else:
        assert str(failed.value) == ("Encrypting the backup failed (OSError: [Errno 28] No space left); "
                                     "it was not kept.")
    for _ in range(100):  # the thread ends right after it gave up the pipe
        if not _encrypt_threads():
            break
        time.sleep(0.05)
    assert _encrypt_threads() == []


def test_an_encrypted_upload_streams_as_it_is_written_in_small_pieces():
    """Bounded memory: the many small writes of a backup (tar headers, small notebooks) reach the
    store while the backup goes on, not all at its end; ``write`` answers as a file does."""
    identity = x25519.Identity.generate()
    out = io.BytesIO()
    writer = EncryptingWriter(out, [identity.to_public()])
    assert writer.write(b"") == 0
    pieces = [os.urandom(1000) for _ in range(3000)]
    assert sum(writer.write(piece) for piece in pieces) == 3_000_000
    for _ in range(100):
        if out.tell() >= 2_000_000:
            break
        time.sleep(0.05)
    assert out.tell() >= 2_000_000  # sealed and written before the close
    writer.close()
    assert pyrage.decrypt(out.getvalue(), [identity]) == b"".join(pieces)


def test_a_decrypted_backup_read_into_small_buffers_gives_its_bytes_in_order():
    """A restore reads into buffers of its own size (``readinto``), smaller than a chunk."""
    identity = x25519.Identity.generate()
    plain = os.urandom(300_000)
    reader = DecryptingReader(io.BytesIO(pyrage.encrypt(plain, [identity.to_public()])), [identity],
                              "The backup", "/k")
    got, buffer = bytearray(), bytearray(4096)
    assert reader.read(0) == b""
    while n := reader.readinto(memoryview(buffer)):
        assert n <= len(buffer)
        got += buffer[:n]
        piece = reader.read(1000)  # and reads of a size, in between
        assert len(piece) <= 1000
        got += piece
    reader.close()
    assert bytes(got) == plain


def test_a_restore_decrypts_in_a_named_daemon_thread_that_ends_with_the_reading():
    identity = x25519.Identity.generate()
    plain = os.urandom(8 * 1024 * 1024)  # more than the read-ahead holds: the thread waits for us
    reader = DecryptingReader(io.BytesIO(pyrage.encrypt(plain, [identity.to_public()])), [identity],
                              "The backup", "/k")
    try:
        (thread,) = [t for t in threading.enumerate() if t.name == "ailab-backup-decrypt"]
        assert thread.daemon
    finally:
        reader.close()
    assert not thread.is_alive()


class _StoreFailingAfter(io.BytesIO):
    """A store's stream that fails midway with an error of no kind we expect (not our own)."""

    def read(self, size=-1):
        if self.tell() > 100_000:
            raise OSError(5, "Input/output error")
        return super().read(min(size, 4096) if size and size > 0 else 4096)


def test_a_store_failing_midway_under_a_decryption_is_never_a_clean_end():
    """At most what was decrypted so far is handed out, then the failure: never an end that would
    make a cut backup look whole."""
    identity = x25519.Identity.generate()
    plain = os.urandom(400_000)
    reader = DecryptingReader(_StoreFailingAfter(pyrage.encrypt(plain, [identity.to_public()])), [identity],
                              "The backup 20261204T000000Z", "/k")
    got = bytearray()
    with pytest.raises(BackupError) as failed:
        while piece := reader.read(65536):
            got += piece
    reader.close()
    assert str(failed.value) == ("The backup 20261204T000000Z could not be decrypted: it is damaged or incomplete "
                                 "in the store (OSError). Nothing was changed.")
    assert len(got) < len(plain) and plain.startswith(bytes(got))
