"""The Jupyter server extension: one BackupManager in ``web_app.settings``, REST routes on top.

An ExtensionApp, because only those get a shutdown hook: a job running when the server stops is
cancelled there, removing its helper container and its partial archive.
"""

import asyncio
import functools
import inspect
import os
import secrets
import threading

from jupyter_server.extension.application import ExtensionApp

from .config import AILabBackup
from .core import BackupManager
from .handlers import SECRET_KEY, SETTINGS_KEY, setup_handlers

# what a kernel started by this server finds in its environment (see README, "Kernel access")
ENV_TOKEN, ENV_URL = "AILAB_BACKUP_TOKEN", "AILAB_BACKUP_URL"


def give_kernels(kernel_manager, variables):
    """Add ``variables`` to the environment of every kernel ``kernel_manager`` starts: jupyter_server
    passes a kernel's environment as ``env=`` to ``start_kernel`` (sessions do, with
    ``JPY_SESSION_NAME``), the provisioner uses os.environ when none is given, and a restart
    reuses the first launch's arguments, so the variables stay across restarts."""
    start_kernel = kernel_manager.start_kernel

    @functools.wraps(start_kernel)
    async def start_kernel_with_variables(*args, **kwargs):
        env = kwargs.get("env")
        kwargs["env"] = {**(os.environ if env is None else env), **variables}
        started = start_kernel(*args, **kwargs)
        return await started if inspect.isawaitable(started) else started

    kernel_manager.start_kernel = start_kernel_with_variables


def kernel_environment(serverapp):
    """What a kernel of ``serverapp`` finds in its environment (README, "Kernel access")."""
    return {ENV_TOKEN: serverapp.web_app.settings[SECRET_KEY], ENV_URL: serverapp.connection_url}


class BackupExtension(ExtensionApp):
    name = "ailab_backup_ext"
    load_other_extensions = True

    def initialize_settings(self):
        server = self.serverapp
        self.manager = BackupManager(AILabBackup(parent=server), root_dir=server.root_dir)
        self.manager.checks_in_child = True  # long checks never hold this server's interpreter
        if self.manager.docker is not None:
            self.manager.docker.keep_helpers = True  # listing a store volume reuses one helper
        secret = secrets.token_urlsafe(32)
        self.settings.update({SETTINGS_KEY: self.manager, SECRET_KEY: secret})
        # the secret opens /ailab/backup only and is never written anywhere; it goes into the
        # environment of the kernels this server starts, not into the server's own, which
        # terminals and language servers inherit (one left by a parent goes too)
        for name in (ENV_TOKEN, ENV_URL):
            os.environ.pop(name, None)
        give_kernels(server.kernel_manager, {ENV_TOKEN: secret, ENV_URL: server.connection_url})
        threading.Thread(target=self._clean_up_after_crash, daemon=True).start()
        self._stopping = threading.Event()
        threading.Thread(target=self._run_schedule, daemon=True, name="ailab-backup-schedule").start()

    def initialize_handlers(self):
        setup_handlers(self.serverapp.web_app)
        self.log.info("ailab_backup_ext: REST API at %sailab/backup", self.serverapp.base_url)

    def _clean_up_after_crash(self):
        """What a killed earlier server left (partial archives, helper containers) goes at start."""
        try:
            self.manager.store.remove_stale_spools()
        except Exception as exc:  # noqa: BLE001 - never stop the server from starting
            self.log.warning("ailab_backup_ext: could not look for partial archives: %s", exc)
        if self.manager.docker_version():
            try:
                removed = self.manager.docker.remove_stale_helpers()
                if removed:
                    self.log.info("ailab_backup_ext: removed %d helper containers of a killed server", removed)
            except Exception as exc:  # noqa: BLE001 - never stop the server from starting
                self.log.warning("ailab_backup_ext: could not look for stale helper containers: %s", exc)

    def _run_schedule(self):
        """Look now and then (AILabBackup.schedule_tick_seconds) whether a scheduled backup is due."""
        while not self._stopping.wait(self.manager.config.schedule_tick_seconds):
            try:
                self.manager.scheduler.tick()
            except Exception as exc:  # noqa: BLE001 - a bad tick must not end the schedule
                self.log.warning("ailab_backup_ext: scheduled backup not started: %s", exc)

    async def stop_extension(self):
        self._stopping.set()
        await asyncio.to_thread(self.manager.jobs.shutdown)
        if self.manager.docker is not None:
            await asyncio.to_thread(self.manager.usage_cache.close)  # a helper still measuring
            await asyncio.to_thread(self.manager.docker.close)
