"""Encryption at rest in the age format (https://age-encryption.org): encrypted and decrypted with
our own :mod:`.age_stream` (pyrage, which holds the GIL while it does either, makes the keys).

Streams both ways in bounded memory. Encrypting: in a thread of its own, fed through a
:class:`Pipe`. Decrypting: in a read-ahead thread. What a store holds is an ordinary age file:
``age -d -i KEY FILE | tar --zstd -x`` opens it without this extension.

The private key (an X25519 identity, ``AGE-SECRET-KEY-1...``) is kept in one file of this machine,
mode 0600, by default in Jupyter's data directory: never in the notebooks folder (it would be in
the backups it protects) and never in a store.
"""

import os
import queue
import threading

from ..errors import BackupError

KEY_FILE_NAME = "ailab-backup-age.key"
SAVE_KEY_MESSAGE = (
    "Save this key somewhere safe, away from this machine (a password manager): without it, "
    "nothing encrypted with it can be restored, by anyone."
)
_EOF = object()


def default_key_file():
    from jupyter_core.paths import jupyter_data_dir

    return os.path.join(jupyter_data_dir(), KEY_FILE_NAME)


class Pipe:
    """A bounded queue of byte chunks between one writing and one reading thread. Either side
    can fail or give up; the other then sees the error instead of waiting for ever."""

    BATCH = 256 * 1024  # small pieces are handed over in batches, a queue call each

    def __init__(self, depth=8):
        self.chunks = queue.Queue(depth)
        self.batch, self.batch_bytes = [], 0
        self.pending = memoryview(b"")
        self.whole = None  # the chunk just taken, handed out as it is when it is read whole
        self.error = None  # raised to the reader after the chunks before it
        self.abandoned = False  # the reader is gone: the writer stops

    # writing side
    def write(self, data):
        if not data:
            return 0
        self.batch.append(bytes(data))
        self.batch_bytes += len(data)
        if self.batch_bytes >= self.BATCH:
            self._put_batch()
        return len(data)

    def hand_over(self, data):
        """Queue ``data`` as it is (no copy): its writer never touches it again."""
        if self.batch:
            self._put_batch()
        self._put(data)

    def _put_batch(self):
        data = b"".join(self.batch)
        self.batch, self.batch_bytes = [], 0
        self._put(data)

    def flush(self):
        pass

    def close_write(self, error=None):
        if self.batch and error is None:
            self._put_batch()
        self.error = error
        self._put(_EOF)

    def _put(self, item):
        while True:
            if self.abandoned:
                raise BrokenPipeError("the reader of the stream is gone")
            try:
                self.chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    # reading side
    def read(self, size=-1):
        if not self.pending:
            item = self.chunks.get()
            if item is _EOF:
                self.chunks.put(_EOF)  # every later read sees the end too
                if self.error is not None:
                    raise self.error
                return b""
            self.pending, self.whole = memoryview(item), item
        if size is None or size < 0:
            size = len(self.pending)
        whole, self.whole = self.whole, None
        data, self.pending = self.pending[:size], self.pending[size:]
        return whole if whole is not None and not self.pending else bytes(data)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def abandon(self):
        self.abandoned = True
        try:
            while True:
                self.chunks.get_nowait()
        except queue.Empty:
            pass


class _Aborted(BackupError):
    """What the encrypting thread reads when its upload was given up."""


class EncryptingWriter:
    """A writer that encrypts what is written to ``out`` (a writer) for ``recipients``;
    :meth:`close` ends the age stream (its last chunk is only known then)."""

    def __init__(self, out, recipients):
        from .age_stream import encrypt_stream, recipient_key

        keys = [recipient_key(str(recipient)) for recipient in recipients]
        self.pipe = Pipe()
        self.error = None

        def run():
            try:
                encrypt_stream(self.pipe.read, out.write, keys)
            except BaseException as exc:  # noqa: BLE001 - raised in the writing thread
                self.error = exc
                self.pipe.abandon()

        self.thread = threading.Thread(target=run, name="ailab-backup-encrypt", daemon=True)
        self.thread.start()

    def write(self, data):
        try:
            return self.pipe.write(data)
        except BrokenPipeError:
            raise self._failure() from None

    def flush(self):
        pass

    def close(self):
        try:
            self.pipe.close_write()
        except BrokenPipeError:
            pass
        self.thread.join()
        if self.error is not None:
            raise self._failure()

    def abort(self):
        self.pipe.abandon()
        self.pipe.error = _Aborted()  # so the stream is never ended: nothing can pass for a whole backup
        try:
            self.pipe.chunks.put_nowait(_EOF)
        except queue.Full:
            pass
        self.thread.join(30)

    def _failure(self):
        if isinstance(self.error, BackupError):  # the store's own (S3 down), as it raised it
            return self.error
        return BackupError(f"Encrypting the backup failed ({type(self.error).__name__}: {self.error}); it was not kept.")


class DecryptingReader:
    """A reader of the plaintext of the age stream ``raw``, decrypted with ``identities``. A wrong
    key or a damaged or cut stream raises :class:`BackupError` from ``read`` (damage is found
    chunk by chunk: nothing unauthenticated is ever handed out; a cut at the end is raised at the
    end, before the end is reported). Decrypted by our own :mod:`.age_stream` in a read-ahead
    thread: its ChaCha20-Poly1305 releases the GIL (pyrage's does not, and stalled the reading,
    decompressing and writing of a restore), at most ``depth`` MiB ahead of the reader."""

    def __init__(self, raw, identities, what, key_file, depth=2):
        from .age_stream import X25519Identity

        keys = [X25519Identity.from_str(str(identity)) for identity in identities]
        self.pipe = Pipe(depth)
        self.what, self.key_file = what, key_file
        self.thread = threading.Thread(target=self._run, args=(raw, keys), name="ailab-backup-decrypt",
                                       daemon=True)
        self.thread.start()

    def _run(self, raw, keys):
        from .age_stream import Damaged, WrongKey, decrypt_blocks

        error = None
        try:
            for block in decrypt_blocks(raw.read, keys):  # each a new bytearray: handed over, not copied
                self.pipe.hand_over(block)
        except BrokenPipeError:
            return  # the reader gave up
        except WrongKey:
            error = _wrong_key(self.what, self.key_file)
        except Damaged as exc:
            error = _damaged(self.what, exc.reason)
        except BackupError as exc:  # the store's own read error (server gone, timeout)
            error = exc
        except BaseException as exc:  # noqa: BLE001 - raised in the reading thread
            error = _damaged(self.what, type(exc).__name__)
        try:
            self.pipe.close_write(error)
        except BrokenPipeError:
            pass

    def read(self, size=-1):
        return self.pipe.read(size)

    def readinto(self, buffer):
        return self.pipe.readinto(buffer)

    def close(self):
        self.pipe.abandon()
        self.thread.join(30)


def _wrong_key(what, key_file):
    return BackupError(
        f"The key in {key_file} does not open {what}: it was encrypted for "
        "another key. Put the key saved when encryption was set up there (or set "
        "AILabBackup.age_identity_file); nothing was changed.")


def _damaged(what, name):
    return BackupError(
        f"{what} could not be decrypted: it is damaged or incomplete in the store "
        f"({name}). Nothing was changed.")


class Encryption:
    """The keys of one configuration, read when needed (so a key made meanwhile is used at once).

    ``mode``: ``auto`` encrypts when a key exists (the key file, or ``recipients``), ``on`` refuses
    to store anything unencrypted, ``off`` never encrypts. Reading an encrypted backup needs the
    key file whatever the mode."""

    def __init__(self, mode="auto", key_file="", recipients=(), forbidden_dir=None):
        self.mode = mode
        self.key_file = os.path.abspath(os.path.expanduser(key_file or default_key_file()))
        self.recipient_texts = list(recipients)
        self.forbidden_dir = forbidden_dir

    def _identity(self):
        from pyrage import x25519

        try:
            with open(self.key_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
            return x25519.Identity.from_str(lines[0])
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - the key's own text never goes into the message
            raise BackupError(f"The key file {self.key_file} does not hold an age key (AGE-SECRET-KEY-1...). "
                              "Put the key you saved there.") from None

    def recipients(self):
        """The public keys to encrypt a new backup for, or [] when it is not to be encrypted."""
        from pyrage import x25519

        if self.mode == "off":
            return []
        found = []
        for text in self.recipient_texts:
            try:
                found.append(x25519.Recipient.from_str(text.strip()))
            except Exception:  # noqa: BLE001
                raise BackupError(f"AILabBackup.age_recipients has {text!r}, which is not an age public key "
                                  "(age1...).") from None
        identity = self._identity()
        if identity is not None:
            found.append(identity.to_public())
        if not found and self.mode == "on":
            raise BackupError("Encryption is on (AILabBackup.encryption), but there is no key: make one "
                              "with 'ailab-backup keygen' (or in the UI), or set AILabBackup.age_recipients.")
        return found

    def identities(self, what):
        identity = self._identity()
        if identity is None:
            raise BackupError(
                f"{what} is encrypted, and the key to open it is missing: put the key saved when "
                f"encryption was set up into {self.key_file} (mode 0600), or set "
                "AILabBackup.age_identity_file. Nothing was changed.")
        return [identity]

    def generate(self):
        """Make a new key in the key file (never overwriting one); return what the user must see
        once: the private key to save, its public key, the message."""
        from pyrage import x25519

        if self.forbidden_dir:
            rel = os.path.relpath(self.key_file, self.forbidden_dir)
            if rel != os.pardir and not rel.startswith(os.pardir + os.sep):  # inside ("..key" too)
                raise BackupError(f"The key file {self.key_file} is inside the notebooks folder, so it would "
                                  "be in every backup. Set AILabBackup.age_identity_file elsewhere.")
        if os.path.exists(self.key_file):
            raise BackupError(f"A key already exists in {self.key_file}; it was kept. Backups made with it "
                              "need it: move it away yourself only if you saved it.")
        identity = x25519.Identity.generate()
        os.makedirs(os.path.dirname(self.key_file), mode=0o700, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# ailab-backup age key; public key: {identity.to_public()}\n{identity}\n")
        return {"private_key": str(identity), "public_key": str(identity.to_public()),
                "key_file": self.key_file, "message": SAVE_KEY_MESSAGE}

    def describe(self):
        try:
            identity = self._identity()
        except BackupError as exc:
            return {"mode": self.mode, "key_file": self.key_file, "key": None, "error": str(exc)}
        return {"mode": self.mode, "key_file": self.key_file,
                "public_key": str(identity.to_public()) if identity else None,
                "recipients": len(self.recipient_texts)}
