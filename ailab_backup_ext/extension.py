"""The Jupyter server extension: one BackupManager in ``web_app.settings``, REST routes on top."""

import os
import secrets
import threading

from .config import AILabBackup
from .core import BackupManager
from .handlers import SECRET_KEY, SETTINGS_KEY, setup_handlers

# what a kernel started by this server finds in its environment (see README, "Kernel access")
ENV_TOKEN, ENV_URL = "AILAB_BACKUP_TOKEN", "AILAB_BACKUP_URL"


def _load_jupyter_server_extension(server_app):
    config = AILabBackup(parent=server_app)
    manager = BackupManager(config, root_dir=server_app.root_dir)
    secret = secrets.token_urlsafe(32)
    server_app.web_app.settings[SETTINGS_KEY] = manager
    server_app.web_app.settings[SECRET_KEY] = secret
    # kernels are children of this process and inherit its environment; the secret is never
    # written anywhere and opens /ailab/backup only
    os.environ[ENV_TOKEN] = secret
    os.environ[ENV_URL] = server_app.connection_url
    setup_handlers(server_app.web_app)
    threading.Thread(target=_clean_up_after_crash, args=(manager, server_app.log), daemon=True).start()
    server_app.log.info("ailab_backup_ext: REST API at %sailab/backup", server_app.base_url)


def _clean_up_after_crash(manager, log):
    """Helper containers of a killed earlier server of this host are removed at start."""
    if manager.docker_version():
        try:
            removed = manager.docker.remove_stale_helpers()
            if removed:
                log.info("ailab_backup_ext: removed %d helper containers left by a killed server", removed)
        except Exception as exc:  # noqa: BLE001 - never stop the server from starting
            log.warning("ailab_backup_ext: could not look for stale helper containers: %s", exc)


def _unload_jupyter_server_extension(server_app):
    manager = server_app.web_app.settings.get(SETTINGS_KEY)
    if manager is not None:
        manager.jobs.shutdown()
