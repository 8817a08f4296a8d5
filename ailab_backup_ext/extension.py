"""The Jupyter server extension: one BackupManager in ``web_app.settings``, REST routes on top."""

from .config import AILabBackup
from .core import BackupManager

SETTINGS_KEY = "ailab_backup"


def _jupyter_server_extension_points():
    return [{"module": "ailab_backup_ext.extension"}]


def _load_jupyter_server_extension(server_app):
    config = AILabBackup(parent=server_app)
    manager = BackupManager(config, root_dir=server_app.root_dir)
    server_app.web_app.settings[SETTINGS_KEY] = manager
    server_app.log.info("ailab_backup_ext: backups of %s", server_app.root_dir)
