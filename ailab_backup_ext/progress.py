"""Progress of a long operation, shared by the command line's bar and the REST jobs."""

import threading
import time


class Progress:
    """Counts bytes and files done; ``on_change`` is called (rate-limited by the caller)."""

    def __init__(self, on_change=None):
        self.on_change = on_change
        self.done_bytes = 0
        self.done_files = 0
        self.total_bytes = 0
        self.total_files = 0
        self.phase = ""
        self._lock = threading.Lock()
        # where the time went (see mark): (phase, wall seconds, process CPU seconds) since made
        self._t0, self._c0 = time.monotonic(), time.process_time()
        self.timeline = []
        self.thread_cpu = {}  # what a helper thread spent in all: its task -> CPU seconds

    def mark(self, phase):
        """Note that ``phase`` begins now (every start() marks too), for the per-phase timing."""
        self.timeline.append((phase, time.monotonic() - self._t0, time.process_time() - self._c0))

    def add_thread_cpu(self, task, seconds):
        with self._lock:
            self.thread_cpu[task] = self.thread_cpu.get(task, 0.0) + seconds

    def start(self, phase, total_bytes=0, total_files=0):
        """Begin a phase (e.g. 'reading', 'verifying'); counts restart from zero."""
        self.mark(phase)
        with self._lock:
            self.phase = phase
            self.done_bytes = self.done_files = 0
            self.total_bytes, self.total_files = total_bytes, total_files
        self._changed()

    def complete(self, total_bytes, total_files):
        """The end: everything counted as done, with the real totals."""
        self.mark("done")
        with self._lock:
            self.phase = "done"
            self.done_bytes = self.total_bytes = total_bytes
            self.done_files = self.total_files = total_files
        self._changed()

    def add_bytes(self, n):
        with self._lock:
            self.done_bytes += n
        self._changed()

    def add_file(self):
        with self._lock:
            self.done_files += 1
        self._changed()

    def counting(self, entries):
        """The (entry, content) pairs of ``entries``, each regular file counted as done once the
        consumer took it (a folder or a link is not a file of the totals)."""
        from .archive.format import FILE

        for entry, content in entries:
            yield entry, content
            if entry.type == FILE:
                self.add_bytes(entry.size)
                self.add_file()

    def snapshot(self):
        with self._lock:
            return {
                "phase": self.phase,
                "done_bytes": self.done_bytes,
                "total_bytes": max(self.total_bytes, self.done_bytes),
                "done_files": self.done_files,
                "total_files": max(self.total_files, self.done_files),
            }

    def _changed(self):
        if self.on_change:
            self.on_change(self)
