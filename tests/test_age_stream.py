"""Our own streaming age decryption and encryption (stores/age_stream.py, used by restores and
backups of encrypted backups, issue 16): it opens what pyrage (bindings of rage, age's Rust
implementation) and the reference `age` (Go; Debian's package, which scripts/test.sh installs)
encrypt, for one recipient or several, and refuses, with our clear errors, a wrong key and every
kind of damage (header, MAC, payload, cuts, trailing data) before handing out anything
unauthenticated. Read in any sizes, and its read-ahead stays a few MiB ahead of the reader. What
it encrypts, pyrage and the reference age open."""

import base64
import hashlib
import hmac
import io
import os
import shutil
import subprocess
import threading
import time

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyrage import x25519

from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.stores import age_stream
from ailab_backup_ext.stores.age import DecryptingReader, EncryptingWriter
from ailab_backup_ext.stores.age_stream import Damaged, WrongKey, X25519Identity, decrypt, recipient_key

KIB, MIB = 1024, 1024 * 1024
CHUNK = 64 * KIB
SEALED = CHUNK + 16
WHAT = "the backup archive 20261202-x.tar.zst"
KEY_FILE = "/home/jovyan/.local/share/jupyter/ailab-backup-age.key"


@pytest.fixture(scope="module")
def identity():
    return x25519.Identity.generate()


def ours(identity):
    return [X25519Identity.from_str(str(identity))]


def encrypt(data, *identities):
    return pyrage.encrypt(data, [i.to_public() for i in identities])


def read_all(reader, size=-1):
    parts = []
    while data := reader.read(size):
        parts.append(data)
    return b"".join(parts)


def restore_read(data, identities, size=MIB, depth=4):
    """What a restore reads: the plaintext through DecryptingReader, ``size`` bytes a read."""
    reader = DecryptingReader(io.BytesIO(data), identities, WHAT, KEY_FILE, depth=depth)
    try:
        return read_all(reader, size)
    finally:
        reader.close()


# interoperability ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * MIB + 7])
def test_what_pyrage_encrypts_we_decrypt(identity, size):
    plain = os.urandom(size)
    assert decrypt(encrypt(plain, identity), ours(identity)) == plain
    assert restore_read(encrypt(plain, identity), [identity]) == plain


def test_each_of_several_recipients_opens_it_and_others_do_not():
    recipients = [x25519.Identity.generate() for _ in range(3)]
    plain = os.urandom(2 * MIB + 5)
    sealed = encrypt(plain, *recipients)
    for identity in recipients:
        assert decrypt(sealed, ours(identity)) == plain
    stranger = x25519.Identity.generate()
    with pytest.raises(WrongKey, match="^no identity opens the file$"):
        decrypt(sealed, ours(stranger))
    assert decrypt(sealed, ours(stranger) + ours(recipients[2])) == plain  # any identity of the list


@pytest.mark.skipif(not shutil.which("age"), reason="the reference age (Debian package age) is not installed")
def test_what_the_reference_age_encrypts_we_decrypt(tmp_path):
    keys = [subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    identities = [X25519Identity.from_str(next(k for k in key.splitlines() if k.startswith("AGE-SECRET-KEY-1")))
                  for key in keys]
    recipients = [next(k for k in key.splitlines() if k.startswith("# public key: ")).split()[-1] for key in keys]
    for size in (0, 1, CHUNK, CHUNK + 1, 2 * MIB + 3):
        plain = os.urandom(size)
        (tmp_path / "plain").write_bytes(plain)
        subprocess.run(["age", "-r", recipients[0], "-r", recipients[1], "-o", str(tmp_path / "sealed"),
                        str(tmp_path / "plain")], check=True)
        for identity in identities:
            assert decrypt((tmp_path / "sealed").read_bytes(), [identity]) == plain, size


def our_encryption(plain, *identities):
    return age_stream.encrypt(plain, [recipient_key(str(i.to_public())) for i in identities])


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * MIB + 7])
def test_what_we_encrypt_pyrage_decrypts_for_each_recipient(size):
    recipients = [x25519.Identity.generate() for _ in range(2)]
    plain = os.urandom(size)
    sealed = our_encryption(plain, *recipients)
    for identity in recipients:
        assert pyrage.decrypt(sealed, [identity]) == plain
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(sealed, [x25519.Identity.generate()])
    chunks = max(1, -(-size // CHUNK))  # a multiple of 64 KiB ends with a full final chunk, never an empty one
    assert len(sealed.split(b"\n---", 1)[1].split(b"\n", 1)[1]) == 16 + size + 16 * chunks


def test_a_cryptography_older_than_47_seals_and_opens_the_same(monkeypatch):
    """Without encrypt_into/decrypt_into (cryptography < 47, which AI-Lab's environment may pin),
    the same age files are written and read, through copies."""
    identity = x25519.Identity.generate()
    plain = os.urandom(3 * CHUNK + 5)
    monkeypatch.setattr(age_stream, "_INTO", False)
    sealed = our_encryption(plain, identity)
    assert pyrage.decrypt(sealed, [identity]) == plain
    assert decrypt(sealed, ours(identity)) == plain
    assert restore_read(encrypt(plain, identity), [identity]) == plain
    with pytest.raises(Damaged, match="does not authenticate"):
        flipped = bytearray(sealed)
        flipped[-100] ^= 1
        decrypt(bytes(flipped), ours(identity))


@pytest.mark.skipif(not shutil.which("age"), reason="the reference age (Debian package age) is not installed")
def test_what_we_encrypt_the_reference_age_decrypts(tmp_path):
    keys = [subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    recipients = [recipient_key(next(k for k in key.splitlines() if k.startswith("# public key: ")).split()[-1])
                  for key in keys]
    for n, key in enumerate(keys):
        (tmp_path / f"key{n}").write_text(key)
    for size in (0, 1, CHUNK, CHUNK + 1, 2 * MIB + 3):
        plain = os.urandom(size)
        (tmp_path / "sealed").write_bytes(age_stream.encrypt(plain, recipients))
        for n in range(2):
            opened = subprocess.run(["age", "-d", "-i", str(tmp_path / f"key{n}"), str(tmp_path / "sealed")],
                                    capture_output=True, check=True).stdout
            assert opened == plain, size


def test_each_file_gets_its_own_file_key_and_nonce(identity):
    plain = os.urandom(CHUNK + 1)
    first, second = our_encryption(plain, identity), our_encryption(plain, identity)
    assert first.split(b"\n-> ")[0] == second.split(b"\n-> ")[0]  # the version line
    assert first[-(CHUNK + 64):] != second[-(CHUNK + 64):]
    assert first.split(b"\n---")[0] != second.split(b"\n---")[0]  # another ephemeral share


def test_a_recipient_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match=r"^not an age X25519 recipient \(age1\.\.\.\)$"):
        recipient_key(str(x25519.Identity.generate()))  # a secret key, not a recipient
    with pytest.raises(ValueError, match="^no recipient$"):
        age_stream.encrypt(b"x", [])


class Collected:
    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)


@pytest.mark.parametrize("piece", [1, 1000, CHUNK, MIB + 3])
def test_the_encrypting_writer_streams_what_is_written_in_any_pieces(identity, piece):
    plain = os.urandom(3 * MIB + 12345)
    out = Collected()
    writer = EncryptingWriter(out, [identity.to_public()])
    view = memoryview(plain)
    for offset in range(0, len(plain), piece):
        writer.write(view[offset:offset + piece])
    writer.close()
    assert pyrage.decrypt(b"".join(out.parts), [identity]) == plain
    assert max(len(p) for p in out.parts) <= 2 * MIB  # streamed: never the whole file at once


def test_a_failing_store_stops_the_encrypting_writer_with_its_own_error(identity):
    class Failing:
        error = None

        def write(self, data):
            self.error = BackupError("the store is gone")
            raise self.error

    writer = EncryptingWriter(Failing(), [identity.to_public()])
    with pytest.raises(BackupError, match="the store is gone"):
        for _ in range(64):
            writer.write(os.urandom(MIB))
        writer.close()


@pytest.mark.parametrize("size", [1, 7, 4096, CHUNK + 3, MIB + 1, -1])
def test_reads_of_any_size_give_the_plaintext(identity, size):
    plain = os.urandom(3 * MIB + 12345)
    assert restore_read(encrypt(plain, identity), [identity], size=size) == plain


def test_readinto_gives_the_plaintext(identity):
    plain = os.urandom(MIB + 99)
    reader = DecryptingReader(io.BytesIO(encrypt(plain, identity)), [identity], WHAT, KEY_FILE)
    got, buffer = bytearray(), bytearray(100_000)
    while n := reader.readinto(buffer):
        got += buffer[:n]
    reader.close()
    assert got == plain


# refusals ---------------------------------------------------------------------------------

def refused(data, identity):
    """The error a restore gets, and what it was handed before it."""
    reader = DecryptingReader(io.BytesIO(data), [identity], WHAT, KEY_FILE)
    got = []
    try:
        with pytest.raises(BackupError) as failure:
            while chunk := reader.read(CHUNK):
                got.append(chunk)
        with pytest.raises(BackupError):  # and so does every later read
            reader.read(1)
    finally:
        reader.close()
    return str(failure.value), b"".join(got)


def assert_damaged(data, identity, reason):
    """Refused as damaged, for ``reason`` (what the user reads: the whole message is checked)."""
    message, got = refused(data, identity)
    assert message == f"{WHAT} could not be decrypted: it is damaged or incomplete in the store ({reason}). " \
                      "Nothing was changed."
    return got


def test_a_wrong_key_is_refused_clearly(identity):
    message, got = refused(encrypt(b"notebooks" * 1000, x25519.Identity.generate()), identity)
    assert message == (f"The key in {KEY_FILE} does not open {WHAT}: it was encrypted for another key. Put the "
                       "key saved when encryption was set up there (or set AILabBackup.age_identity_file); "
                       "nothing was changed.")
    assert got == b"" and str(identity) not in message


def test_a_file_encrypted_with_a_passphrase_is_not_opened_by_a_key(identity):
    message, _ = refused(pyrage.passphrase.encrypt(b"notebooks", "a passphrase"), identity)
    assert "does not open" in message


def header_end(data):
    return data.index(b"\n---") + 1


def test_a_changed_header_mac_is_refused(identity):
    sealed = encrypt(os.urandom(1000), identity)
    mac_at = header_end(sealed) + 4
    flipped = sealed[:mac_at] + (b"B" if sealed[mac_at:mac_at + 1] == b"A" else b"A") + sealed[mac_at + 1:]
    assert assert_damaged(flipped, identity, "the header's MAC does not match") == b""


def test_a_changed_stanza_is_refused(identity):
    sealed = encrypt(os.urandom(1000), identity)
    at = sealed.index(b"-> X25519 ") + 12  # inside the ephemeral share: the file key no longer unwraps
    changed = sealed[:at] + (b"B" if sealed[at:at + 1] == b"A" else b"A") + sealed[at + 1:]
    message, _ = refused(changed, identity)
    assert "does not open" in message or "damaged" in message


@pytest.mark.parametrize("where", ["first chunk", "middle chunk", "last chunk", "payload nonce"])
def test_a_flipped_payload_byte_is_refused_and_nothing_after_the_last_good_chunk_is_handed_out(identity, where):
    plain = os.urandom(40 * CHUNK + 100)
    sealed = encrypt(plain, identity)
    payload = sealed.index(b"\n", header_end(sealed)) + 1
    chunk_index = {"first chunk": 0, "middle chunk": 20, "last chunk": 40, "payload nonce": None}[where]
    at = payload + 3 if chunk_index is None else payload + 16 + chunk_index * SEALED + 5
    flipped = sealed[:at] + bytes([sealed[at] ^ 0x01]) + sealed[at + 1:]
    reason = f"chunk {chunk_index or 0} of its payload does not authenticate"
    got = assert_damaged(flipped, identity, reason)
    assert plain.startswith(got) and len(got) <= (chunk_index or 0) * CHUNK


@pytest.mark.parametrize("chunks", [1, 17, 33])
def test_a_payload_cut_at_a_chunk_boundary_is_refused(identity, chunks):
    plain = os.urandom(40 * CHUNK + 100)
    sealed = encrypt(plain, identity)
    payload = sealed.index(b"\n", header_end(sealed)) + 1 + 16
    got = assert_damaged(sealed[:payload + chunks * SEALED], identity, "it is cut short at a chunk boundary")
    assert plain.startswith(got) and len(got) < chunks * CHUNK


@pytest.mark.parametrize("cut, reason", [
    (1, "it is cut short inside a chunk"), (15, "it is cut short inside a chunk"),
    (16, "it ends with an empty chunk after others"),  # a tag alone: an empty final chunk
    (17, "chunk 4 of its payload does not authenticate"),  # a short chunk, not the final one
    (SEALED // 2, "chunk 4 of its payload does not authenticate"),
    (SEALED - 1, "chunk 4 of its payload does not authenticate"),
])
def test_a_payload_cut_inside_a_chunk_is_refused(identity, cut, reason):
    plain = os.urandom(5 * CHUNK)
    sealed = encrypt(plain, identity)
    got = assert_damaged(sealed[:len(sealed) - SEALED + cut], identity, reason)
    assert plain.startswith(got) and len(got) <= 4 * CHUNK


@pytest.mark.parametrize("cut, reason", [("in the header", "the header is cut short"),
                                         ("after the header", "it is cut short after its header"),
                                         ("in the nonce", "it is cut short after its header"),
                                         ("after the nonce", "it is cut short after its header")])
def test_a_file_cut_before_its_payload_is_refused(identity, cut, reason):
    sealed = encrypt(os.urandom(100), identity)
    end = sealed.index(b"\n", header_end(sealed)) + 1
    at = {"in the header": end - 10, "after the header": end, "in the nonce": end + 9, "after the nonce": end + 16}[cut]
    assert_damaged(sealed[:at], identity, reason)


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(16), os.urandom(SEALED), os.urandom(SEALED + 3)])
@pytest.mark.parametrize("size", [100, CHUNK, 3 * CHUNK + 5])
def test_trailing_bytes_are_refused(identity, extra, size):
    plain = os.urandom(size)
    # after a whole final chunk, the bytes that follow; else the short final chunk is no longer last
    reason = "it has data after its final chunk" if size == CHUNK else \
        f"chunk {size // CHUNK} of its payload does not authenticate"
    got = assert_damaged(encrypt(plain, identity) + extra, identity, reason)
    assert plain.startswith(got)


def noncanonical(last):
    """The last character of a 32-byte value's base64 with one of its 2 unused bits set: it
    decodes to the same bytes, but age accepts only the canonical text."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return alphabet[alphabet.index(last) | 1:][:1]


HEADER_FAULTS = {
    "not age": (lambda h: b"PK\x03\x04" + h, "it is not an age file"),
    "binary without a line end": (lambda h: b"\x28\xb5\x2f\xfd" + b"\x00" * 2 * MIB, "it is not an age file"),
    "other version": (lambda h: h.replace(b"age-encryption.org/v1\n", b"age-encryption.org/v2\n"),
                      "it is in an age version other than v1"),
    "armored": (lambda h: b"-----BEGIN AGE ENCRYPTED FILE-----\n" + base64.b64encode(h) + b"\n",
                "it is ASCII-armored, not a binary age file"),
    "CRLF line ends": (lambda h: h.replace(b"\n---", b"\r\n---"), "the header has invalid base64"),
    "no recipient": (lambda h: b"age-encryption.org/v1\n" + h[h.index(b"---"):], "the header has no recipient"),
    "unknown line": (lambda h: h.replace(b"-> X25519", b"=> X25519"), "the header has a line it should not have"),
    "empty argument": (lambda h: h.replace(b"-> X25519 ", b"-> X25519  "), "the header has an invalid stanza"),
    "padded base64": (lambda h: h.replace(b"\n---", b"=\n---", 1), "the header has invalid base64"),
    "X25519 without share": (lambda h: h.replace(h[h.index(b"-> X25519"):h.index(b"\n", h.index(b"-> X25519"))],
                                                 b"-> X25519"), "the header has an invalid X25519 stanza"),
    "short MAC": (lambda h: h[:-3] + b"\n", "the header has invalid base64"),
    "a MAC of the wrong length": (lambda h: h[:-1] + b"AAAA\n", "a header field has the wrong length"),
    "a body line of 65 columns": (lambda h: h.replace(b"\n---", b"\n-> x\n" + b"A" * 65 + b"\n\n---"),
                                  "the header has an invalid stanza body"),
    "a share of 31 bytes": (lambda h: h.replace(h[h.index(b"-> X25519 "):h.index(b"\n", h.index(b"-> X25519 "))],
                                                b"-> X25519 " + b64(bytes(31))), "a header field has the wrong length"),
    "non-canonical base64": (lambda h: h[:-2] + noncanonical(h[-2:-1]) + b"\n",
                             "the header has non-canonical base64"),
    "a header without end": (lambda h: h[:h.index(b"---")] + b"-> x\n" + b"A" * 64 * 20000 + b"\n",
                             "the header is too long"),
}


@pytest.mark.parametrize("fault", list(HEADER_FAULTS))
def test_a_bad_header_is_refused(identity, fault):
    sealed = encrypt(os.urandom(1000), identity)
    end = sealed.index(b"\n", header_end(sealed)) + 1
    change, reason = HEADER_FAULTS[fault]
    assert_damaged(change(sealed[:end]) + sealed[end:], identity, reason)


# files made by hand: what pyrage never writes -----------------------------------------------

def hkdf(ikm, salt, info):
    return HKDF(algorithm=SHA256(), length=32, salt=salt, info=info).derive(ikm)


def b64(data):
    return base64.b64encode(data).rstrip(b"=")


def x25519_stanza(file_key, identity, share_key=None):
    """The stanza wrapping ``file_key`` for ``identity``'s recipient, as the spec computes it."""
    recipient = X25519Identity.from_str(str(identity)).public
    ephemeral = share_key or X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    body = ChaCha20Poly1305(hkdf(shared, share + recipient, b"age-encryption.org/v1/X25519")).encrypt(
        bytes(12), file_key, None)
    return b"-> X25519 " + b64(share) + b"\n" + b64(body) + b"\n"


def seal(file_key, stanzas, chunks):
    """An age file of the stanzas (their text) and the chunks [(plaintext, final flag)]."""
    header = b"age-encryption.org/v1\n" + b"".join(stanzas) + b"---"
    mac = hmac.new(hkdf(file_key, None, b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    sealed = [aead.encrypt(n.to_bytes(11, "big") + bytes([final]), plain, None)
              for n, (plain, final) in enumerate(chunks)]
    return header + b" " + b64(mac) + b"\n" + nonce + b"".join(sealed)


def test_the_hand_made_files_are_valid_age(identity):
    """(so that what the tests below change is the one thing they change)"""
    key, plain = os.urandom(16), os.urandom(CHUNK + 10)
    made = seal(key, [x25519_stanza(key, identity)], [(plain[:CHUNK], 0), (plain[CHUNK:], 1)])
    assert pyrage.decrypt(made, [identity]) == plain == decrypt(made, ours(identity))


def test_stanzas_of_other_types_are_skipped(identity):
    key, plain = os.urandom(16), b"notebooks"
    # a body of two lines, the last ending in "X" (which no 32-byte value's base64 does)
    other = b"-> example.com/enigma arg1 arg2\n" + b64(os.urandom(48)) + b"\n" + b64(os.urandom(9)) + b"AAAX\n"
    made = seal(key, [other, x25519_stanza(key, identity)], [(plain, 1)])
    assert decrypt(made, ours(identity)) == plain


def test_a_passphrase_stanza_beside_another_is_refused(identity):
    key = os.urandom(16)
    scrypt = b"-> scrypt " + b64(os.urandom(16)) + b" 18\n" + b64(os.urandom(32)) + b"\n"
    made = seal(key, [x25519_stanza(key, identity), scrypt], [(b"notebooks", 1)])
    assert_damaged(made, identity, "a passphrase (scrypt) stanza is mixed with others, which age forbids")


def test_a_share_of_low_order_is_refused(identity):
    key = os.urandom(16)
    stanza = b"-> X25519 " + b64(bytes(32)) + b"\n" + b64(os.urandom(32)) + b"\n"
    assert_damaged(seal(key, [stanza], [(b"notebooks", 1)]), identity, "a recipient stanza with an invalid share")


def test_a_stream_whose_last_chunk_is_not_marked_final_is_refused(identity):
    key = os.urandom(16)
    made = seal(key, [x25519_stanza(key, identity)], [(os.urandom(CHUNK), 0), (b"the end", 0)])
    assert_damaged(made, identity, "it is cut short at a chunk boundary")


def test_a_chunk_marked_final_before_the_end_is_refused(identity):
    key = os.urandom(16)
    made = seal(key, [x25519_stanza(key, identity)], [(os.urandom(CHUNK), 1), (b"more", 1)])
    assert_damaged(made, identity, "it has data after its final chunk")


def test_an_empty_final_chunk_is_refused_unless_it_is_the_only_one(identity):
    key = os.urandom(16)
    stanza = x25519_stanza(key, identity)
    assert decrypt(seal(key, [stanza], [(b"", 1)]), ours(identity)) == b""
    made = seal(key, [stanza], [(os.urandom(CHUNK), 0), (b"", 1)])
    assert_damaged(made, identity, "it ends with an empty chunk after others")


def test_a_short_chunk_before_the_end_is_refused(identity):
    key = os.urandom(16)
    made = seal(key, [x25519_stanza(key, identity)], [(b"short", 0), (b"the end", 1)])
    assert_damaged(made, identity, "chunk 0 of its payload does not authenticate")


@pytest.mark.parametrize("text", ["", "AGE-SECRET-KEY-1", "public key", "not a key at all"])
def test_an_identity_that_is_not_one_is_refused_without_its_text(identity, text):
    if text == "public key":  # valid Bech32, but a recipient (age1...), not an identity
        text = str(identity.to_public())
    with pytest.raises(ValueError, match=r"^not an age X25519 identity \(AGE-SECRET-KEY-1\.\.\.\)$"):
        X25519Identity.from_str(text)


def test_an_identity_with_a_changed_character_is_refused(identity):
    text = str(identity)
    changed = text[:30] + ("Q" if text[30] != "Q" else "P") + text[31:]  # the checksum no longer matches
    with pytest.raises(ValueError, match="not an age X25519 identity"):
        X25519Identity.from_str(changed)
    assert X25519Identity.from_str(text.lower()).public == X25519Identity.from_str(text).public


# Bech32, as age's keys use it ------------------------------------------------------------

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def polymod(values):  # BIP 173's reference, written out here rather than taken from the module
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate([0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]):
            check ^= generator if (top >> i) & 1 else 0
    return check


def bech32_of_values(hrp, values):
    """A Bech32 string of 5-bit ``values`` as given (any padding), with a valid checksum."""
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    check = polymod(expanded + values + [0] * 6) ^ 1
    return hrp + "1" + "".join(CHARSET[v] for v in values + [(check >> 5 * (5 - i)) & 31 for i in range(6)])


def five_bit(data):
    """``data`` in 5-bit groups, its last zero-padded (BIP 173's convertbits)."""
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    return [int(bits[i:i + 5], 2) for i in range(0, len(bits), 5)]


# BIP 173's valid test vectors: each decodes (the checksum holds), to its own human-readable part
@pytest.mark.parametrize("text, hrp", [
    ("A12UEL5L", "a"),
    ("a12uel5l", "a"),
    ("an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
     "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio"),
    ("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw", "abcdef"),
    ("split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w", "split"),
    ("?1ezyfcl", "?"),
])
def test_the_bip173_valid_strings_decode(text, hrp):
    decoded_hrp, data = age_stream.bech32_decode(text)
    assert decoded_hrp == hrp
    assert age_stream.bech32_decode(text.swapcase()) == (decoded_hrp, data)


def test_bech32_data_comes_back_byte_for_byte_at_every_length():
    for size in range(0, 41):  # every padding there is: 0 to 4 bits, and none (5-byte multiples)
        data = os.urandom(size)
        assert age_stream.bech32_decode(bech32_of_values("age", five_bit(data))) == ("age", data), size
    assert age_stream.bech32_decode("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw")[1] == \
        bytes.fromhex("00443214c74254b635cf84653a56d7c675be77df")


# BIP 173's invalid test vectors, and what is wrong with each
@pytest.mark.parametrize("text, reason", [
    ("pzry9x0s0muk", "not Bech32"),  # no separator
    ("1pzry9x0s0muk", "not Bech32"),  # empty human-readable part
    ("10a06t8", "not Bech32"),
    ("1qzzfhee", "not Bech32"),
    ("x1b4n0q5v", "not Bech32"),  # 'b' is not a data character
    ("li1dgmt3", "not Bech32"),  # a checksum of 5 characters
    ("a1", "not Bech32"),
    ("A12uEL5L", "mixed case"),
    ("A1G7SGD8", "bad checksum"),  # checksummed as upper case
    ("a12uel5m", "bad checksum"),
])
def test_the_bip173_invalid_strings_are_refused_with_their_reason(text, reason):
    with pytest.raises(ValueError, match=f"^{reason}$"):
        age_stream.bech32_decode(text)


@pytest.mark.parametrize("values", [
    [0],  # five bits of padding: a whole extra group
    [0, 0, 0],  # one byte and seven bits
    [0, 1],  # one byte whose two padding bits are not zero: the lowest one set
    [0, 2],  # ... the higher one set
    five_bit(b"\0" * 4)[:-1] + [1],  # four bytes, four padding bits, the lowest set
])
def test_bad_padding_is_refused(values):
    with pytest.raises(ValueError, match="^bad padding$"):
        age_stream.bech32_decode(bech32_of_values("age", values))


def test_an_identity_decodes_to_the_secret_of_its_own_recipient():
    for _ in range(20):
        identity = x25519.Identity.generate()
        hrp, secret = age_stream.bech32_decode(str(identity))
        assert hrp == "age-secret-key-" and len(secret) == 32
        public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        assert age_stream.bech32_decode(str(identity.to_public())) == ("age", public)
        assert X25519Identity.from_str(str(identity)).public == public


# how the store is read --------------------------------------------------------------------

class StoreReader:
    """A store's answers: at most ``most`` bytes a read when given (a slow network answers with
    less than asked); the sizes asked and the bytes taken, for the tests of how it is read."""

    def __init__(self, data, most=None):
        self.stream, self.most, self.asked, self.taken = io.BytesIO(data), most, [], 0

    def read(self, size=-1):
        self.asked.append(size)
        data = self.stream.read(size if self.most is None else min(size, self.most))
        self.taken += len(data)
        return data


@pytest.mark.parametrize("size", [0, 100, CHUNK + 1])
def test_a_store_that_gives_a_byte_at_a_time_gives_the_same_plaintext(identity, size):
    plain = os.urandom(size)
    sealed = encrypt(plain, identity)
    assert b"".join(age_stream.decrypt_blocks(StoreReader(sealed, most=1).read, ours(identity))) == plain


def test_a_header_over_a_mib_read_in_pieces_is_refused_as_too_long(identity):
    sealed = encrypt(b"notebooks", identity)
    long_header = sealed[:header_end(sealed)] + b"-> x\n" + (b"A" * 64 + b"\n") * 17000 + b"\n" + \
        sealed[header_end(sealed):]
    with pytest.raises(age_stream.Damaged, match="^the header is too long$"):
        b"".join(age_stream.decrypt_blocks(StoreReader(long_header, most=60_000).read, ours(identity)))


@pytest.mark.parametrize("size", [0, 5 * MIB + 7, 12 * MIB])
def test_no_read_asks_for_more_than_a_bounded_size(identity, size):
    """Neither side ever asks for the whole rest: a 20 GB backup must not come into memory."""
    plain = os.urandom(size)
    source = StoreReader(plain)
    sealed = io.BytesIO()
    age_stream.encrypt_stream(source.read, sealed.write, [recipient_key(str(identity.to_public()))])
    assert source.asked and all(n is not None and 0 < n <= 1 * MIB for n in source.asked)
    store = StoreReader(sealed.getvalue())
    assert b"".join(age_stream.decrypt_blocks(store.read, ours(identity))) == plain
    assert store.asked and all(n is not None and 0 < n <= 4 * MIB for n in store.asked)


# the read-ahead ---------------------------------------------------------------------------

def settled(counting, seconds=10):
    """How much the read-ahead has taken once it stopped taking more."""
    deadline, last = time.monotonic() + seconds, -1
    while time.monotonic() < deadline and counting.taken != last:
        last = counting.taken
        time.sleep(0.3)
    return counting.taken


def test_the_read_ahead_stays_a_few_mib_ahead_of_a_slow_reader(identity):
    plain = os.urandom(64 * MIB)
    raw = StoreReader(encrypt(plain, identity))
    reader = DecryptingReader(raw, [identity], WHAT, KEY_FILE, depth=4)
    try:
        first = reader.read(1)
        ahead = settled(raw)
        # the queue's 4 MiB, a block being handed in and one being decrypted, and one 4 MiB read
        assert 4 * MIB < ahead <= 11 * MIB, ahead
        rest = read_all(reader, MIB)
        assert first + rest == plain
    finally:
        reader.close()


def test_closing_while_the_read_ahead_waits_ends_its_thread(identity):
    raw = StoreReader(encrypt(os.urandom(32 * MIB), identity))
    reader = DecryptingReader(raw, [identity], WHAT, KEY_FILE)
    reader.read(10)
    settled(raw)
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < 5
    assert not reader.thread.is_alive()
    assert "ailab-backup-decrypt" not in [t.name for t in threading.enumerate()]


def test_a_read_error_of_the_store_reaches_the_reader_as_it_is(identity):
    sealed = encrypt(os.urandom(3 * MIB), identity)

    class Failing(StoreReader):
        def read(self, size=-1):
            if self.taken > MIB:
                raise BackupError("The S3 store at http://127.0.0.1:1 cannot be reached. Nothing was changed.")
            return super().read(size)

    reader = DecryptingReader(Failing(sealed), [identity], WHAT, KEY_FILE)
    with pytest.raises(BackupError, match="cannot be reached"):
        read_all(reader, MIB)
    reader.close()
