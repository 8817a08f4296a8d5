"""Back up and restore Exasol AI-Lab notebooks and the Secure Configuration Storage."""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    from .extension import BackupExtension

    return [{"module": "ailab_backup_ext", "app": BackupExtension}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "ailab-backup-ext"}]


def __getattr__(name):
    """BackupPanel and BackupClient on first use: the server extension never imports ipywidgets."""
    if name == "BackupPanel":
        from .panel import BackupPanel

        return BackupPanel
    if name in ("BackupClient", "BackupClientError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
