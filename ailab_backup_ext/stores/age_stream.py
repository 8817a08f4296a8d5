"""Streaming encryption and decryption of age v1 files (https://c2sp.org/age) for X25519 keys.

Our own, on ``cryptography``, because pyrage holds the GIL while it encrypts or decrypts
(160-600 MB/s here, and it stalled every other thread of a backup or restore); cryptography's
ChaCha20-Poly1305 releases it. pyrage still makes and parses the keys (:mod:`.age`).

Nothing unauthenticated is handed out: the header's MAC is checked before the first chunk, each
chunk before its plaintext, and the stream ends only with a valid final chunk. Every refusal is
:class:`WrongKey` (no stanza opens with the identities) or :class:`Damaged`.
"""

import base64
import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION_PREFIX = b"age-encryption.org/"
VERSION = VERSION_PREFIX + b"v1"
ARMOR_LINE = b"-----BEGIN AGE ENCRYPTED FILE-----"
CHUNK_BYTES = 64 * 1024  # of plaintext in each chunk but the last
TAG_BYTES = 16
SEALED_BYTES = CHUNK_BYTES + TAG_BYTES
NONCE_BYTES = 16
MAX_HEADER_BYTES = 1024 * 1024  # a header is a few hundred bytes: past this it is not one
HEADER_READ_BYTES = 64 * 1024
PAYLOAD_READ_BYTES = 4 * 1024 * 1024  # an S3 range: handed over whole, not copied
BLOCK_CHUNKS = 16  # plaintext handed out in 1 MiB blocks, what a restore reads at a time
_ZERO_NONCE = bytes(12)
# cryptography 47 seals and opens into a given buffer; an older one (pinned by something else in
# AI-Lab's environment) gives new bytes, copied into place
_INTO = hasattr(ChaCha20Poly1305, "decrypt_into") and hasattr(ChaCha20Poly1305, "encrypt_into")
_VCHARS = re.compile(rb"[\x21-\x7e]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*")


class AgeError(Exception):
    pass


class WrongKey(AgeError):
    """None of the identities opens any stanza of the header."""


class Damaged(AgeError):
    """Not an age v1 file, or altered, cut short or followed by other data. ``reason`` says which,
    in a few words that hold nothing secret."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# identities -------------------------------------------------------------------------------

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
IDENTITY_HRP = "age-secret-key-"
NOT_AN_IDENTITY = "not an age X25519 identity (AGE-SECRET-KEY-1...)"  # never the text itself


def _bech32_polymod(values):
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_BECH32_GENERATOR):
            if (top >> i) & 1:
                check ^= generator
    return check


def bech32_decode(text):
    """(hrp, data bytes) of a Bech32 string (BIP 173, without its 90-character limit, as age
    uses it); ValueError when it is not one."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    hrp, sep, rest = text.rpartition("1")
    if not sep or not hrp or len(rest) < 6 or any(c not in _BECH32 for c in rest):
        raise ValueError("not Bech32")
    values = [_BECH32.index(c) for c in rest]
    if _bech32_polymod([ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values) != 1:
        raise ValueError("bad checksum")
    acc, bits, out = 0, 0, bytearray()
    for value in values[:-6]:
        acc, bits = acc << 5 | value, bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise ValueError("bad padding")
    return hrp, bytes(out)


def _hkdf(ikm, salt, info):
    return HKDF(algorithm=SHA256(), length=32, salt=salt, info=info).derive(ikm)


class X25519Identity:
    """An ``AGE-SECRET-KEY-1...`` identity: opens the X25519 stanzas addressed to it."""

    def __init__(self, secret):
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self.public = self._key.public_key().public_bytes_raw()

    @classmethod
    def from_str(cls, text):
        try:
            hrp, secret = bech32_decode(text.strip())
        except ValueError:
            raise ValueError(NOT_AN_IDENTITY) from None
        if hrp != IDENTITY_HRP or len(secret) != 32:
            raise ValueError(NOT_AN_IDENTITY)
        return cls(secret)

    def unwrap(self, share, body):
        """The file key in the stanza body ``body`` for the ephemeral ``share``, or None when the
        stanza is for another recipient."""
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # a share of low order: the shared secret would be all zeros
            raise Damaged("a recipient stanza with an invalid share") from None
        wrap_key = _hkdf(shared, share + self.public, b"age-encryption.org/v1/X25519")
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, body, None)
        except InvalidTag:
            return None


# the header -------------------------------------------------------------------------------

def _base64(text, size=None):
    """Canonical unpadded base64, as age requires, of ``size`` bytes when given."""
    if not _BASE64.fullmatch(text) or len(text) % 4 == 1:
        raise Damaged("the header has invalid base64")
    data = base64.b64decode(text + b"==")  # padding past what is needed is ignored
    if base64.b64encode(data).rstrip(b"=") != text:
        raise Damaged("the header has non-canonical base64")
    if size is not None and len(data) != size:
        raise Damaged("a header field has the wrong length")
    return data


class _Input:
    """The age stream read line by line for its header, then the bytes that follow."""

    def __init__(self, read):
        self.read = read
        self.buffer = bytearray()
        self.pos = 0
        self.ended = False

    def _more(self):
        if self.ended or len(self.buffer) > MAX_HEADER_BYTES:
            return False
        data = self.read(HEADER_READ_BYTES)
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    def peek(self, n):
        """The next ``n`` bytes (fewer at the end), left to be read."""
        while len(self.buffer) - self.pos < n and self._more():
            pass
        return bytes(self.buffer[self.pos:self.pos + n])

    def line(self):
        while (end := self.buffer.find(b"\n", self.pos)) < 0:
            if not self._more():
                raise Damaged("the header is cut short" if self.ended else "the header is too long")
        line = bytes(self.buffer[self.pos:end])
        self.pos = end + 1
        return line

    def take(self, n):
        """``n`` bytes after the header (fewer only at the end)."""
        while len(self.buffer) - self.pos < n and not self.ended:
            data = self.read(n)
            if not data:
                self.ended = True
            self.buffer += data
        data = bytes(self.buffer[self.pos:self.pos + n])
        self.pos += len(data)
        return data

    def rest(self):
        """What was read past the header and taken bytes; the stream goes on with ``read``."""
        return bytes(self.buffer[self.pos:])


def read_header(source):
    """The stanzas ([(arguments, body)]), the MAC and the bytes the MAC is over."""
    if source.peek(len(ARMOR_LINE)) == ARMOR_LINE:
        raise Damaged("it is ASCII-armored, not a binary age file")
    if source.peek(len(VERSION_PREFIX)) != VERSION_PREFIX:  # said at once, not after a long search for a line end
        raise Damaged("it is not an age file")
    if source.line() != VERSION:
        raise Damaged("it is in an age version other than v1")
    stanzas = []
    while True:
        start = source.pos
        line = source.line()
        if line.startswith(b"--- "):
            if not stanzas:
                raise Damaged("the header has no recipient")
            return stanzas, _base64(line[4:], 32), bytes(source.buffer[:start + 3])
        if not line.startswith(b"-> "):
            raise Damaged("the header has a line it should not have")
        arguments = line[3:].split(b" ")
        if not all(_VCHARS.fullmatch(a) for a in arguments):
            raise Damaged("the header has an invalid stanza")
        body_lines = []
        while True:  # wrapped at 64 columns; the last line is shorter (maybe empty)
            body_line = source.line()
            if len(body_line) > 64:
                raise Damaged("the header has an invalid stanza body")
            body_lines.append(body_line)
            if len(body_line) < 64:
                break
        stanzas.append((arguments, _base64(b"".join(body_lines))))


def file_key(stanzas, mac, mac_input, identities):
    """The file key the identities unwrap from the stanzas, its header MAC checked."""
    if len(stanzas) > 1 and any(arguments[0] == b"scrypt" for arguments, _ in stanzas):
        raise Damaged("a passphrase (scrypt) stanza is mixed with others, which age forbids")
    x25519 = []
    for arguments, body in stanzas:
        if arguments[0] != b"X25519":
            continue  # another recipient type: not ours to open
        if len(arguments) != 2 or len(body) != 32:
            raise Damaged("the header has an invalid X25519 stanza")
        x25519.append((_base64(arguments[1], 32), body))
    key = next((k for share, body in x25519 for identity in identities
                if (k := identity.unwrap(share, body)) is not None), None)
    if key is None:
        raise WrongKey("no identity opens the file")
    expected = hmac.new(_hkdf(key, None, b"header"), mac_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise Damaged("the header's MAC does not match")
    return key


# the payload ------------------------------------------------------------------------------

def _sealed_pieces(first, read):
    """The payload after its nonce as pieces of a sealed chunk's size (the last one shorter):
    slices of what ``read`` gives, copied only where a chunk spans two reads."""
    carry = b""
    view = memoryview(first)
    while True:
        if carry:
            need = SEALED_BYTES - len(carry)
            carry += view[:need]
            view = view[need:]
            if len(carry) == SEALED_BYTES:
                yield carry
                carry = b""
        if not carry:
            whole = len(view) - len(view) % SEALED_BYTES
            for offset in range(0, whole, SEALED_BYTES):
                yield view[offset:offset + SEALED_BYTES]
            carry = bytes(view[whole:])
        data = read(PAYLOAD_READ_BYTES)
        if not data:
            break
        view = memoryview(data)
    if carry:
        yield carry


def _open_chunk(aead, counter, sealed, last, into):
    """Decrypt the sealed chunk into ``into`` (a view of its plaintext's length), authenticated."""
    nonce = counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
    try:
        if _INTO:
            aead.decrypt_into(nonce, sealed, None, into)
        else:
            into[:] = aead.decrypt(nonce, sealed, None)
        return
    except InvalidTag:
        pass
    try:  # only to say which damage it is: the chunk is whole, but where it should not be
        aead.decrypt(nonce[:11] + (b"\x00" if last else b"\x01"), sealed, None)
    except InvalidTag:
        raise Damaged(f"chunk {counter} of its payload does not authenticate") from None
    raise Damaged("it is cut short at a chunk boundary" if last else "it has data after its final chunk")


def decrypt_blocks(read, identities):
    """The plaintext of the age stream that ``read(size)`` gives, in blocks (each a new bytearray,
    never touched again once yielded) of up to ``BLOCK_CHUNKS`` chunks, each chunk authenticated
    before its block is yielded; :class:`WrongKey` or :class:`Damaged` as soon as a fault is found.
    Each chunk is decrypted into its place in the block: no chunk is copied once more to join them."""
    source = _Input(read)
    key = file_key(*read_header(source), identities)
    nonce = source.take(NONCE_BYTES)
    if len(nonce) < NONCE_BYTES:
        raise Damaged("it is cut short after its header")
    aead = ChaCha20Poly1305(_hkdf(key, nonce, b"payload"))
    counter, previous = 0, None
    block, filled = bytearray(BLOCK_CHUNKS * CHUNK_BYTES), 0
    # a piece is opened once the next one has begun: only the last one is the final chunk
    for piece in _sealed_pieces(source.rest(), read):
        if previous is not None:
            _open_chunk(aead, counter, previous, False, memoryview(block)[filled:filled + CHUNK_BYTES])
            counter, filled = counter + 1, filled + CHUNK_BYTES
            if filled == len(block):
                yield block
                block, filled = bytearray(BLOCK_CHUNKS * CHUNK_BYTES), 0
        previous = piece
    if previous is None:
        raise Damaged("it is cut short after its header")
    if len(previous) == TAG_BYTES and counter:
        raise Damaged("it ends with an empty chunk after others")
    if len(previous) < TAG_BYTES:  # (every other piece is a whole sealed chunk)
        raise Damaged("it is cut short inside a chunk")
    size = len(previous) - TAG_BYTES
    _open_chunk(aead, counter, previous, True, memoryview(block)[filled:filled + size])
    del block[filled + size:]
    if block:
        yield block


# encrypting -----------------------------------------------------------------------------

AGE_RECIPIENT_HRP = "age"
ENCRYPT_READ_BYTES = 1024 * 1024


def recipient_key(text):
    """The 32-byte X25519 public key of an ``age1...`` recipient."""
    hrp, key = bech32_decode(text.strip())
    if hrp != AGE_RECIPIENT_HRP or len(key) != 32:
        raise ValueError("not an age X25519 recipient (age1...)")
    return key


def _b64(data):
    return base64.b64encode(data).rstrip(b"=")


def header_for(file_key, recipients):
    """The age header (version, one X25519 stanza per recipient key, MAC) wrapping ``file_key``."""
    header = bytearray(VERSION + b"\n")
    for public in recipients:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        wrap_key = _hkdf(ephemeral.exchange(X25519PublicKey.from_public_bytes(public)), share + public,
                         b"age-encryption.org/v1/X25519")
        # a 32-byte body, 43 columns: one line, under the 64 at which age wraps a body
        body = _b64(ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None))
        header += b"-> X25519 " + _b64(share) + b"\n" + body + b"\n"
    header += b"---"
    mac = hmac.new(_hkdf(file_key, None, b"header"), header, hashlib.sha256).digest()
    return bytes(header + b" " + _b64(mac) + b"\n")


def encrypt_stream(read, write, recipients):
    """Write (``write(bytes-like)``) the age file of what ``read(size)`` gives until it gives
    nothing, for ``recipients`` (32-byte X25519 public keys): the header and the payload nonce,
    then sealed chunks, as many at a time as one read allows. A chunk is sealed only once more
    plaintext follows it, or at the end as the final one."""
    if not recipients:
        raise ValueError("no recipient")
    file_key = os.urandom(16)
    nonce = os.urandom(NONCE_BYTES)
    write(header_for(file_key, recipients) + nonce)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    counter, held = 0, bytearray()  # plaintext not yet sealed: at most one chunk after each read
    while data := read(ENCRYPT_READ_BYTES):
        held += data
        whole = (len(held) - 1) // CHUNK_BYTES  # the chunks that are surely not the last
        if whole:
            sealed = bytearray(whole * SEALED_BYTES)
            plain, out = memoryview(held), memoryview(sealed)
            for i in range(whole):
                _seal_into(aead, counter.to_bytes(11, "big") + b"\x00", plain[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES],
                           out[i * SEALED_BYTES:(i + 1) * SEALED_BYTES])
                counter += 1
            plain.release()
            out.release()
            del held[:whole * CHUNK_BYTES]
            write(sealed)
    write(aead.encrypt(counter.to_bytes(11, "big") + b"\x01", bytes(held), None))


def _seal_into(aead, nonce, chunk, into):
    if _INTO:
        aead.encrypt_into(nonce, chunk, None, into)
    else:
        into[:] = aead.encrypt(nonce, chunk, None)


def encrypt(data, recipients):
    """The age file of ``data`` (in memory: for tests and small files)."""
    import io

    parts = []
    encrypt_stream(io.BytesIO(data).read, parts.append, recipients)
    return b"".join(parts)


def decrypt(data, identities):
    """The plaintext of the age file ``data`` (in memory: for tests and small files)."""
    import io

    return b"".join(decrypt_blocks(io.BytesIO(data).read, identities))
