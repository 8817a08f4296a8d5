"""Expected failures. Each message says what went wrong and what to do about it."""


class BackupError(Exception):
    """An expected failure; ``http_status`` is what a REST handler answers with."""

    http_status = 400


class NotFound(BackupError):
    http_status = 404


class InvalidArchive(BackupError):
    """The archive is broken or hostile; nothing was written."""

    http_status = 400


class TooLarge(BackupError):
    http_status = 413


class Busy(BackupError):
    """Another backup or restore of the same source is running."""

    http_status = 409

    def __init__(self, message, job_id=None):
        super().__init__(message)
        self.job_id = job_id


class Unavailable(BackupError):
    """Docker, the volume or the helper image cannot be reached or found."""

    http_status = 503


class Cancelled(BackupError):
    """The work was stopped before it ended (its client went away, or the server shuts down); it
    left nothing partial behind."""

    http_status = 499  # nginx's "client closed request": nobody is there to read it


class TooManyRequests(BackupError):
    http_status = 429


class InsufficientStorage(BackupError):
    http_status = 507
