"""REST handlers under /ailab/backup. Thin: each one delegates to the BackupManager kept in
``web_app.settings`` and runs blocking work in a thread, so JupyterLab stays responsive.

Auth: Jupyter's own (token or cookie, XSRF for unsafe methods), or the kernel credential: a random
secret made when the server starts, handed to kernels in their environment
(``AILAB_BACKUP_TOKEN``), accepted by these handlers only, and gone when the server stops.
"""

import asyncio
import errno
import functools
import hmac
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from .archive import CHUNK
from .errors import BackupError, InsufficientStorage, TooLarge, TooManyRequests

SETTINGS_KEY = "ailab_backup"
CHECK_POOL_KEY = "ailab_backup_check_pool"
UPLOADS_KEY = "ailab_backup_uploads"  # the uploads being received or checked now
STALL_MIN_BYTES = 64 * 1024  # what an upload must bring in each upload_stall_seconds
SECRET_KEY = "ailab_backup_kernel_secret"
AUTH_RESOURCE = "ailab_backup"
KERNEL_AUTH_SCHEME = "AILabBackup"
OPENAPI_PATH = os.path.join(os.path.dirname(__file__), "openapi.json")


@functools.cache
def _openapi_document():
    """Read once, not on the event loop at every request."""
    with open(OPENAPI_PATH, encoding="utf-8") as f:
        return f.read()


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE
    kernel_authenticated = False

    @property
    def manager(self):
        return self.settings[SETTINGS_KEY]

    async def prepare(self):
        scheme, _, secret = self.request.headers.get("Authorization", "").partition(" ")
        expected = self.settings.get(SECRET_KEY)
        if scheme == KERNEL_AUTH_SCHEME and expected and hmac.compare_digest(secret.encode(), expected.encode()):
            if not self.check_host():
                raise web.HTTPError(403)
            from jupyter_server.auth import User

            self.kernel_authenticated = True
            self.current_user = self._jupyter_current_user = User(username="ailab-backup-kernel")
            return
        await super().prepare()

    def check_xsrf_cookie(self):
        if self.kernel_authenticated:
            return None  # a secret header cannot be sent by another site
        return super().check_xsrf_cookie()

    async def call(self, fn, *args, **kwargs):
        """Run blocking core work in a thread; expected errors become JSON replies."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except BackupError as exc:
            raise _Reply(exc) from None

    async def call_long(self, fn, *args):
        """As :meth:`call`, for long checks (uploads, previews): in a bounded pool of their own,
        so that they never hold the threads that status and listings answer from. Each of its
        threads waits for a child process that does the check (see checker.py)."""
        pool = self.settings.get(CHECK_POOL_KEY)
        if pool is None:
            pool = self.settings.setdefault(CHECK_POOL_KEY, ThreadPoolExecutor(
                max(1, self.manager.config.check_processes), thread_name_prefix="ailab-backup-check"))
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))
        except BackupError as exc:
            raise _Reply(exc) from None

    def write_error(self, status_code, **kwargs):
        if status_code == 405:  # RFC 9110: say which methods the resource has
            self.set_header("Allow", ", ".join(m for m in ("GET", "POST", "PUT", "DELETE") if m.lower() in vars(type(self))))
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, _Reply):
            self.set_status(exc.error.http_status)
            body = {"message": str(exc.error)}
            if getattr(exc.error, "job_id", None):
                body["job_id"] = exc.error.job_id
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(body))
            return
        super().write_error(status_code, **kwargs)

    def body_json(self):
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object.")
        return body

    def accepted(self, job):
        self.set_status(202)
        self.set_header("Location", url_path_join(self.base_url, "ailab/backup/jobs", job.id))
        self.finish({"job": job.to_json()})


class _Reply(web.HTTPError):
    """An expected error on its way to ``write_error`` (logged as a warning, not a crash)."""

    def __init__(self, error):
        super().__init__(error.http_status, "%s", str(error))
        self.error = error


def _backup_json(meta):
    keys = ("id", "created", "label", "kind", "source", "size_bytes", "file_count", "total_bytes", "compression",
            "release", "excludes")  # excludes: what it left out on purpose (None: not recorded, e.g. an upload)
    found = {k: meta.get(k) for k in keys}
    for key in ("where", "copy"):  # s3: where it is kept (see stores/mirror.py)
        if key in meta:
            found[key] = meta[key]
    if "encrypted" in meta or "encrypted_copy" in meta:
        found["encrypted"] = bool(meta.get("encrypted") or meta.get("encrypted_copy"))
    return found


class BackupsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        backups = await self.call(self.manager.list_backups)
        self.finish({"backups": [_backup_json(m) for m in backups]})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.body_json()
        label = body.get("label", "")
        if not isinstance(label, str) or len(label) > 200:
            raise web.HTTPError(400, "The label must be a text of at most 200 characters.")
        before_upgrade = body.get("before_upgrade", False)
        if not isinstance(before_upgrade, bool):
            raise web.HTTPError(400, "before_upgrade must be true or false.")
        if before_upgrade:  # labelled so, with the release it came from
            label = await self.call(self.manager.before_upgrade_label)
        job = await self.call(self.manager.start_backup, label)
        self.accepted(job)


class StatusHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.finish(await self.call(self.manager.status))


class JobsHandler(BaseHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.finish({"jobs": [job.to_json() for job in self.manager.jobs.recent()]})


class JobHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id):
        job = await self.call(self.manager.jobs.get, job_id)
        self.finish(job.to_json())


class BackupHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, backup_id):
        meta = await self.call(self.manager.get_backup, backup_id)
        self.finish({**_backup_json(meta), "manifest": {
            "archive": meta.get("archive"),
            "sha256": meta.get("sha256"),
            "format_version": meta.get("format_version"),
            "skipped": meta.get("skipped", []),
        }})

    @web.authenticated
    @authorized
    async def delete(self, backup_id):
        await self.call(self.manager.delete_backup, backup_id, self.get_query_argument("where", None))
        self.set_status(204)
        self.finish()


class RestoreHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, backup_id):
        body = self.body_json()
        mode, paths = body.get("mode", "merge"), body.get("paths")
        if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
            raise web.HTTPError(400, "'paths' must be a list of paths inside the backup.")
        if body.get("dry_run"):
            self.cancel = threading.Event()  # set when the client goes away: the preview stops
            self.finish(await self.call_long(self.manager.plan_restore, backup_id, mode, paths, None, self.cancel))
            return
        job = await self.call(self.manager.start_restore, backup_id, mode, paths)
        self.accepted(job)

    def on_connection_close(self):
        if hasattr(self, "cancel"):
            self.cancel.set()
        super().on_connection_close()


class ScheduleHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.finish(await self.call(self.manager.scheduler.describe))

    @web.authenticated
    @authorized
    async def put(self):
        spec = self.body_json().get("spec")
        if not isinstance(spec, str):
            raise web.HTTPError(400, "Send {\"spec\": \"every 6h\" | \"daily 02:30\" | \"off\"}.")
        self.finish(await self.call(self.manager.scheduler.set, spec))


class SettingsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.finish(await self.call(self.manager.settings.describe))

    @web.authenticated
    @authorized
    async def put(self):
        self.finish(await self.call(self.manager.settings.set, self.body_json()))


class UsageHandler(BaseHandler):
    """What each top-level folder holds and the next backup's estimate (cached); PUT leaves a
    folder out of backups, or takes it in again."""

    @web.authenticated
    @authorized
    async def get(self):
        refresh = self.get_arguments("refresh")
        if len(refresh) > 1 or not set(refresh) <= {"0", "1", "true", "false"}:
            raise web.HTTPError(400, "'refresh' is 1 (measure again now) or 0.")
        self.finish(await self.call_long(self.manager.usage, bool(refresh) and refresh[0] in ("1", "true")))

    @web.authenticated
    @authorized
    async def put(self):
        body = self.body_json()
        if set(body) != {"folder", "excluded"}:
            raise web.HTTPError(400, 'Send {"folder": "models_cache", "excluded": true} (or false to back it up).')
        self.finish(await self.call_long(self.manager.set_folder_excluded, body["folder"], body["excluded"]))


class ChangesHandler(BaseHandler):
    """Polled by the sidebar: no helper container, so it is cheap to ask often."""

    @web.authenticated
    @authorized
    async def get(self):
        self.finish(await self.call(self.manager.changes.token))


class CopyHandler(BaseHandler):
    """s3: copy a backup (or, at /copies, every one not there yet) to AILabBackup.copy_to."""

    @web.authenticated
    @authorized
    async def post(self, backup_id=None):
        job = await self.call(self.manager.start_copy, None if backup_id is None else [backup_id])
        self.accepted(job)


class KeyHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        key = await self.call(self.manager.generate_key)
        self.set_status(201)
        self.set_header("Cache-Control", "no-store")  # the private key is shown this once
        self.finish(key)


class UndoHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self):
        job = await self.call(self.manager.start_undo)
        self.accepted(job)


class DownloadHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, backup_id):
        # a download link is a GET with side effects for privacy: check XSRF (or a same-site
        # Referer, as jupyter_server allows for GET) as jupyter-archive does
        self.check_xsrf_cookie()
        meta = await self.call(self.manager.get_backup, backup_id)
        with ExitStack() as stack:
            stream = await self.call(stack.enter_context, self.manager.open_archive(backup_id))
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="{meta["archive"]}"')
            self.set_header("Content-Length", str(meta["size_bytes"]))
            try:
                while True:
                    chunk = await asyncio.to_thread(stream.read, CHUNK)
                    if not chunk:
                        break
                    self.write(chunk if isinstance(chunk, bytes) else bytes(chunk))  # (a decrypted block is a bytearray)
                    await self.flush()  # waits for a slow client: memory stays bounded
            except StreamClosedError:
                return
            finally:
                await asyncio.to_thread(stack.close)
        self.finish()


@web.stream_request_body
class UploadHandler(BaseHandler):
    """The raw archive as the body, streamed to disk, checked completely, then stored. Bounded:
    so many at once (max_concurrent_uploads), a body that stalls is cut off
    (upload_stall_seconds), and one that cannot fit is refused before it is received."""

    slot = None
    stall_timer = None
    checking = False  # the spool is being read: only the check's own end may remove it
    disk_full = None  # the error to answer with once the body has come in

    async def prepare(self):
        await super().prepare()
        if self.current_user is None or self.request.method != "POST":
            return  # the method's decorators answer 403 / 405
        config = self.manager.config
        limit = config.max_upload_bytes
        try:
            length = int(self.request.headers.get("Content-Length", "0") or 0)
        except ValueError:
            raise web.HTTPError(400, "The Content-Length header is not a number.") from None
        if limit and length > limit:
            raise _Reply(TooLarge(f"The upload is larger than the limit of {limit} bytes "
                                  "(AILabBackup.max_upload_bytes)."))
        uploads = self.settings.setdefault(UPLOADS_KEY, set())
        if config.max_concurrent_uploads and len(uploads) >= config.max_concurrent_uploads:
            raise _Reply(TooManyRequests(
                f"{len(uploads)} uploads are being received or checked already, the most at once "
                "(AILabBackup.max_concurrent_uploads). Try again when one has finished."))
        self.slot = object()
        uploads.add(self.slot)
        if length:
            await self.call(self.manager.check_upload_space, length)
        self.request.connection.set_max_body_size(limit or 1 << 62)
        self.received = 0
        self.cancel = threading.Event()  # set when the client goes away: the check stops
        self.spool = ExitStack()
        path = self.spool.enter_context(self.manager.upload_spool())
        self.spool_file = self.spool.enter_context(open(path, "wb"))
        self.spool_path = path
        self._watch_progress()

    def _watch_progress(self):
        """Every upload_stall_seconds, see that the body brought STALL_MIN_BYTES at least."""
        seconds = self.manager.config.upload_stall_seconds
        if seconds > 0:
            self.stall_timer = asyncio.get_running_loop().call_later(seconds, self._progress_seen, self.received)

    def _progress_seen(self, received_before):
        if self.received - received_before >= STALL_MIN_BYTES:
            self._watch_progress()
            return
        self.stall_timer = None
        seconds = self.manager.config.upload_stall_seconds
        self.log.warning("ailab-backup: an upload stalled at %d bytes for %d s; cut off", self.received, seconds)
        self._release()
        self.set_status(408)
        self.set_header("Content-Type", "application/json")
        # the body is not read to its end: tornado closes the connection after this reply
        self.finish(json.dumps({"message": (
            f"The upload brought less than {STALL_MIN_BYTES // 1024} KiB in {seconds} s and was cut off "
            "(AILabBackup.upload_stall_seconds); nothing was kept. Upload again over a faster connection.")}))

    def _disk_full(self, exc):
        """The spool's disk filled up as the body came in (one sent without Content-Length, or
        the disk filled meanwhile): the partial spool goes at once, and the answer is a 507."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        where = os.path.dirname(self.spool_path)
        self.log.warning("ailab-backup: the disk at %s filled up after %d bytes of an upload", where, self.received)
        self._remove_spool()
        self.disk_full = InsufficientStorage(
            f"The disk where uploads are received ({where}) is full: it filled up after "
            f"{self.received // 2**20} MB of the upload, and nothing was kept. Free space or delete "
            "old backups, then upload again.")

    async def data_received(self, chunk):
        if not hasattr(self, "spool_file"):
            return
        self.received += len(chunk)
        if self.disk_full is not None:
            return  # the rest of the body is read and dropped, so that the client gets the answer
        try:
            await asyncio.to_thread(self.spool_file.write, chunk)
        except OSError as exc:
            self._disk_full(exc)

    @web.authenticated
    @authorized
    async def post(self):
        self._stop_watch()  # the whole body is here
        try:
            if self.disk_full is None:
                try:
                    self.spool_file.close()  # writes what is buffered: the disk may fill up here too
                except OSError as exc:
                    self._disk_full(exc)
            if self.disk_full is not None:
                raise _Reply(self.disk_full)
            if not self.received:
                raise web.HTTPError(400, "The upload is empty: send the archive as the request body.")
            self.checking = True
            try:
                meta = await self.call_long(self.manager.add_uploaded, self.spool_path, self.cancel)
            finally:
                self.checking = False
        finally:
            self._release()
        self.set_status(201)
        self.finish(_backup_json(meta))

    def _stop_watch(self):
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _release(self):
        """Give back the upload's slot and spool (idempotent); a check still running stops."""
        self._stop_watch()
        if hasattr(self, "cancel"):
            self.cancel.set()
        if self.checking:
            return  # its check process is killed; post() then removes the spool
        self._remove_spool()  # an aborted upload leaves nothing behind
        if self.slot is not None:
            self.settings.get(UPLOADS_KEY, set()).discard(self.slot)
            self.slot = None

    def _remove_spool(self):
        if hasattr(self, "spool"):
            try:
                self.spool.close()  # the file is closed and removed even if its last write fails
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise

    def on_finish(self):
        self._release()

    def on_connection_close(self):
        self._release()
        super().on_connection_close()


class OpenAPIHandler(BaseHandler):
    @web.authenticated
    @authorized
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(_openapi_document())


_ID = r"(?P<backup_id>[^/]+)"
# The route table (as jupyterlab-git keeps one): fixed names before the backup id pattern.
ROUTES = [
    (r"", BackupsHandler),
    (r"/status", StatusHandler),
    (r"/openapi\.json", OpenAPIHandler),
    (r"/jobs", JobsHandler),
    (r"/jobs/(?P<job_id>[^/]+)", JobHandler),
    (r"/upload", UploadHandler),
    (r"/undo", UndoHandler),
    (r"/schedule", ScheduleHandler),
    (r"/settings", SettingsHandler),
    (r"/changes", ChangesHandler),
    (r"/usage", UsageHandler),
    (r"/copies", CopyHandler),
    (r"/key", KeyHandler),
    (rf"/{_ID}/copy", CopyHandler),
    (rf"/{_ID}/download", DownloadHandler),
    (rf"/{_ID}/restore", RestoreHandler),
    (rf"/{_ID}", BackupHandler),
]


def setup_handlers(web_app):
    base = url_path_join(web_app.settings["base_url"], "ailab/backup")
    web_app.add_handlers(".*$", [(base + pattern + "/?$", handler) for pattern, handler in ROUTES])
