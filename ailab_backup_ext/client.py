"""The Python client of the REST API under ``/ailab/backup`` (see ``openapi.json``).

In a kernel of a Jupyter server that runs this extension, ``BackupClient()`` needs no arguments: the
server gives each kernel it starts ``AILAB_BACKUP_URL`` and ``AILAB_BACKUP_TOKEN`` (the kernel
credential, which opens /ailab/backup only; terminals do not get it). From a script, pass the server's URL and its Jupyter
token: ``BackupClient("http://localhost:8888/", token="...")``.

Every failure raises :class:`BackupClientError` with the server's message.
"""

import os
import time
import urllib.parse

import requests

ENV_URL, ENV_TOKEN = "AILAB_BACKUP_URL", "AILAB_BACKUP_TOKEN"  # as set by extension.py
KERNEL_AUTH_SCHEME = "AILabBackup"
CHUNK = 1024 * 1024
FINISHED = ("succeeded", "failed")


class BackupClientError(Exception):
    """A request failed. ``message`` is the server's explanation, ``status`` the HTTP status
    (None when the server was not reached), ``job_id`` the running job on a 409 conflict or the
    failed job, ``job`` the failed job itself."""

    def __init__(self, message, status=None, job_id=None, job=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.job_id = job_id
        self.job = job

    def __str__(self):
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


class BackupClient:
    """One method per endpoint; dicts as the OpenAPI document describes them."""

    def __init__(self, url=None, token=None, timeout=60, verify=True):
        if url is None:
            url = os.environ.get(ENV_URL)
            kernel_token = os.environ.get(ENV_TOKEN)
            if not url or not kernel_token:
                raise BackupClientError(
                    "No AI-Lab backup server found: this is not a kernel of a Jupyter server with "
                    f"the ailab_backup_ext extension ({ENV_URL} and {ENV_TOKEN} are not set). Pass "
                    "the server's URL and token: BackupClient('http://localhost:49494/', token='...')."
                )
            auth = f"{KERNEL_AUTH_SCHEME} {kernel_token}"
        else:
            auth = f"token {token}" if token else None
        self.session = requests.Session()
        # the kernel's own server is local: no proxy from the environment may see its secret
        self.session.trust_env = not auth or not auth.startswith(KERNEL_AUTH_SCHEME)
        self.url = url if url.endswith("/") else url + "/"
        self.api = self.url + "ailab/backup"
        self.timeout = timeout
        self.session.verify = verify
        if auth:
            self.session.headers["Authorization"] = auth

    def __repr__(self):
        return f"BackupClient({self.url!r})"

    @property
    def base_path(self):
        """The server's base URL path ('/' or e.g. '/user/x/'), for links in the browser."""
        return urllib.parse.urlsplit(self.url).path or "/"

    def download_href(self, backup_id):
        """A link the browser can follow (it sends its cookie) to download a backup."""
        return f"{self.base_path}ailab/backup/{_quote(backup_id)}/download"

    # the endpoints ---------------------------------------------------------------------------

    def status(self):
        """What is backed up and where, whether Docker is reachable, the running job, a hint."""
        return self._json("GET", "/status")

    def list(self):
        """The backups, newest first."""
        return self._json("GET", "")["backups"]

    def show(self, backup_id):
        """A backup with a summary of its manifest."""
        return self._json("GET", "/" + _quote(backup_id))

    def delete(self, backup_id, where=None):
        """Delete a backup; with a second store (``copy_to``), ``where="here"`` or ``"off"``
        deletes only that copy."""
        params = {"where": where} if where else None
        self._request("DELETE", "/" + _quote(backup_id), params=params).close()

    def job(self, job_id):
        return self._json("GET", "/jobs/" + _quote(job_id))

    def jobs(self):
        """Recent jobs, newest first."""
        return self._json("GET", "/jobs")["jobs"]

    def create(self, label="", wait=False, on_progress=None, poll=0.5, before_upgrade=False):
        """Start a backup. Returns the job; with ``wait=True`` the finished job (its
        ``backup_id`` names the new backup), calling ``on_progress(job)`` on each poll. With
        ``before_upgrade`` it is labelled 'Before upgrading (AI-Lab RELEASE)'."""
        body = {"label": label, "before_upgrade": True} if before_upgrade else {"label": label}
        job = self._json("POST", "", json=body)["job"]
        return self.wait(job, on_progress, poll) if wait else job

    def restore(self, backup_id, mode="merge", paths=None, wait=False, on_progress=None, poll=0.5):
        """Start a restore ('merge', 'replace' or 'release-move': bring my work into this
        release; ``paths``: only these files or folders of the backup). The server first keeps the current state as a safety backup (see :meth:`undo`).
        The finished job's ``result["hint"]`` says whether kernels using the Secure Configuration
        Storage should be restarted."""
        job = self._json("POST", f"/{_quote(backup_id)}/restore", json=_restore_body(mode, paths))["job"]
        return self.wait(job, on_progress, poll) if wait else job

    def plan_restore(self, backup_id, mode="merge", paths=None):
        """A dry run of :meth:`restore`: what it would add, overwrite, remove, leave unchanged."""
        body = {**_restore_body(mode, paths), "dry_run": True}
        return self._json("POST", f"/{_quote(backup_id)}/restore", json=body, timeout=(self.timeout, None))

    def undo(self, wait=False, on_progress=None, poll=0.5):
        """Undo the last restore: restore (replace) the safety backup taken before it."""
        job = self._json("POST", "/undo")["job"]
        return self.wait(job, on_progress, poll) if wait else job

    def schedule(self):
        """The schedule of automatic backups: ``spec`` ('every 6h', 'every 30m', 'daily 02:30' in
        UTC, or 'off'), ``enabled``, the ``last`` scheduled run (``time``, ``outcome``: succeeded,
        skipped or failed), the ``next`` one, and a ``warning`` when the last run failed."""
        return self._json("GET", "/schedule")

    def set_schedule(self, spec):
        """Set the schedule ('every 6h', 'every 30m', 'daily 02:30' in UTC, or 'off'); the server
        checks it (a bad one raises with status 400) and keeps it across restarts. Returns the
        schedule as :meth:`schedule` does."""
        return self._json("PUT", "/schedule", json={"spec": spec})

    def settings(self):
        """The settings kept beside the store (``helper_image``, ``excludes``, ``keep_last``,
        ``schedule``), which of them are ``kept`` there (the others come from the configuration,
        shown under ``configured``), and the ``helper_images`` the server offers."""
        return self._json("GET", "/settings")

    def set_settings(self, **changes):
        """Change settings, e.g. ``set_settings(keep_last=10, excludes=["models_cache"])``; a value
        of None goes back to the configuration's. The server checks everything first (a bad
        value raises with status 400 and changes nothing). Returns :meth:`settings`' answer."""
        return self._json("PUT", "/settings", json=changes)

    def usage(self, refresh=False):
        """What each top-level folder holds (``folders``: name, bytes, files, excluded), the
        ``total`` and the next backup's ``estimate``; cached by the server (``refresh``: measure
        again)."""
        return self._json("GET", "/usage", params={"refresh": "1"} if refresh else None)

    def set_folder_excluded(self, folder, excluded):
        """Leave the top-level ``folder`` out of backups (``excluded=True``) or back it up again;
        kept beside the store as the excludes setting. Returns :meth:`usage`'s answer."""
        return self._json("PUT", "/usage", json={"folder": folder, "excluded": excluded})

    def changes(self):
        """``{"token", "job"}``: the token changes when backups, the running job, the schedule or
        the settings may have changed. Cheap (no helper container): made for polling."""
        return self._json("GET", "/changes")

    def copy(self, backup_id=None, wait=False, on_progress=None, poll=0.5):
        """Copy a backup held here to the second store (``AILabBackup.copy_to``, e.g. S3); with no
        id, every backup not there yet, pending ones too (a retry). Returns the job; its result
        lists ``copied``, ``already`` and ``pending``."""
        path = "/copies" if backup_id is None else f"/{_quote(backup_id)}/copy"
        job = self._json("POST", path)["job"]
        return self.wait(job, on_progress, poll) if wait else job

    def make_key(self):
        """Make the age key that encrypts the backups kept off the machine. The answer holds
        ``private_key`` this once (the server keeps it only in its key file, ``key_file``), its
        ``public_key`` and the ``message`` to save it: without it nothing encrypted can be
        restored. A key that exists already is kept (status 400)."""
        return self._json("POST", "/key")

    def openapi(self):
        """The OpenAPI document of this API."""
        return self._json("GET", "/openapi.json")

    def wait(self, job, on_progress=None, poll=0.5, timeout=None):
        """Poll a job (a job dict or its id) until it ends; return it, or raise when it failed."""
        job = self.job(job) if isinstance(job, str) else job
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_progress is not None:
                on_progress(job)
            if job["state"] in FINISHED:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise BackupClientError(f"The {job['kind']} job {job['id']} did not end in {timeout} s.",
                                        job_id=job["id"], job=job)
            time.sleep(poll)
            job = self.job(job["id"])
        if job["state"] == "failed":
            raise BackupClientError(job.get("error") or f"The {job['kind']} failed.", job_id=job["id"], job=job)
        return job

    def download(self, backup_id, path):
        """Save a backup's archive to ``path`` (a file, or a folder to put it in under its own
        name), streamed: memory stays small whatever the size. Returns the file's path."""
        with self._request("GET", f"/{_quote(backup_id)}/download", stream=True) as response:
            if os.path.isdir(path):
                path = os.path.join(path, _filename(response) or f"{backup_id}.tar.zst")
            part = f"{path}.part"
            written = 0
            try:
                with open(part, "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                expected = response.headers.get("Content-Length")
                if expected is not None and int(expected) != written:
                    raise BackupClientError(f"The download of {backup_id} broke off after {written} of "
                                            f"{expected} bytes; try again.")
                os.replace(part, path)
            except requests.RequestException as exc:
                raise BackupClientError(f"The download of {backup_id} broke off: {exc}") from None
            finally:
                if os.path.exists(part):
                    os.remove(part)
        return path

    def upload(self, path):
        """Add a backup archive (a .tar.zst/.tar.gz made by this tool), streamed from the file.
        Returns the stored backup."""
        with open(path, "rb") as f:
            # the server checks the whole archive before it answers: no read timeout
            response = self._request("POST", "/upload", data=f, timeout=(self.timeout, None),
                                     headers={"Content-Type": "application/octet-stream"})
        return _body(response)

    # plumbing --------------------------------------------------------------------------------

    def _json(self, method, path, **kwargs):
        return _body(self._request(method, path, **kwargs))

    def _request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.api + path, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise BackupClientError(f"Cannot reach the AI-Lab backup server at {self.url}: {exc}") from None
        if response.status_code < 300:
            return response
        try:
            if 300 <= response.status_code < 400:
                raise BackupClientError(
                    "Not logged in: the server sent the request to its login page. Pass the "
                    "server's token (BackupClient(url, token=...)).", status=response.status_code)
            message, job_id = _error(response)
            raise BackupClientError(message, status=response.status_code, job_id=job_id)
        finally:
            response.close()


def _quote(part):
    return urllib.parse.quote(str(part), safe="")


def _restore_body(mode, paths):
    return {"mode": mode} if paths is None else {"mode": mode, "paths": list(paths)}


def _body(response):
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise BackupClientError(f"The server's answer is not JSON: {response.text[:200]!r}",
                                status=response.status_code) from None


def _error(response):
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if response.status_code == 403 and (not message or message == "Forbidden"):
        return "Forbidden: not authenticated for the AI-Lab backup API (wrong or missing token).", None
    if message:
        return str(message), body.get("job_id")
    reason = response.reason or "error"
    return f"The server answered {response.status_code} {reason} for {response.request.method} {response.url}.", None


def _filename(response):
    disposition = response.headers.get("Content-Disposition", "")
    _, _, rest = disposition.partition("filename=")
    name = os.path.basename(rest.strip().strip('"'))
    return name or None
