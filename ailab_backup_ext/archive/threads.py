"""Thread plumbing of reading and writing archives: workers that take hashing, compressing and
writing to another core, and the small stream adapters that feed them."""

import functools
import queue
import threading
import time

class Worker:
    """A thread that runs calls in the order given, at most ``depth`` behind the caller (bounded
    memory). Hashing, compressing, decoding and writing release the GIL, so handing one of them
    to a worker puts it on another core."""

    def __init__(self, name, depth=8):
        self._queue = queue.Queue(depth)
        self._error = None
        self._closed = False
        self.cpu = 0.0  # the thread's CPU seconds, once closed
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            call = self._queue.get()
            if call is None:
                self.cpu = time.thread_time()
                return
            if self._error is None:  # after a failure, calls are dropped (the caller is told)
                try:
                    call[0](*call[1:])
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    self._error = exc

    def submit(self, fn, *args):
        if self._error is not None:
            raise self._error
        if self._closed:  # its thread has ended: the call would never run
            raise RuntimeError(f"{fn!r} was handed to the closed worker {self._thread.name}")
        self._queue.put((fn, *args))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        try:
            self.close()  # the thread ends; its own error would only hide the one on its way
        except BaseException:  # noqa: BLE001
            pass

    def close(self):
        """Wait until every call has run; raise the first error one raised. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def hashing_worker(*depth):
    """A worker for SHA-256 updates; ``depth`` as :class:`Worker`'s (its default when not given)."""
    return Worker("ailab-backup-hash", *depth)


PARALLEL_MIN_BYTES = 256 * 1024


def hash_feeder(hasher, digest, size):
    """What hands the pieces of a ``size``-byte file to ``digest``: the hashing worker for large
    files; for small ones this thread, since a hand-over costs more than it saves there, and
    thousands of them keep the GIL passing between our threads instead of to the server's."""
    if size >= PARALLEL_MIN_BYTES:  # pragma: no mutate (speed only, same digest)
        return functools.partial(hasher.submit, digest.update)
    return digest.update


class FeedingReader:
    """Reads from ``raw``, handing every piece read to ``feed`` (e.g. a hash in a worker) and
    counting it for ``progress``."""

    def __init__(self, raw, feed=None, progress=None):
        self.raw = raw
        self.feed = feed
        self.progress = progress

    def read(self, size=-1):
        data = self.raw.read(size)
        if data:
            if self.feed is not None:
                self.feed(data)
            if self.progress is not None:
                self.progress.add_bytes(len(data))
        return data


class IterStream:
    """A readable stream over an iterator of byte chunks (Docker's archive responses)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.pending = b""

    def read(self, size=-1):
        if not self.pending:
            self.pending = next(self.chunks, b"")
        if size is None or size < 0:
            data = self.pending + b"".join(self.chunks)
            self.pending = b""
            return data
        if len(self.pending) <= size:
            data, self.pending = self.pending, b""
            return data
        data, self.pending = self.pending[:size], self.pending[size:]
        return data
