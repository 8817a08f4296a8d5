"""Backups in an S3 bucket (AWS S3, or an S3-compatible service: MinIO, Ceph RGW, SeaweedFS).

``s3://BUCKET/PREFIX`` holds ``PREFIX/data/<archive>`` (``<archive>.age`` when encrypted),
``PREFIX/meta/<id>.json`` and the state documents ``PREFIX/<name>.json``. A new archive is streamed
into a multipart upload (bounded memory: a few parts in flight, no local copy); the metadata object
is written only after the upload completed and the archive was verified as it was written, so only
whole backups are listed. A failed or interrupted upload is aborted; one left by a killed server is
aborted at the next start (:meth:`S3Store.remove_stale_spools`).

Credentials come only from boto3's standard chain (environment, ``~/.aws`` profile, instance role)
and are never written, shown or put into a message: errors are our own sentences, and the text of
the server's answer is scrubbed of the key values before it is quoted.
"""

import datetime
import functools
import json
import logging
import os
import re
import tempfile
from contextlib import contextmanager

from ..archive import Worker
from ..errors import BackupError, NotFound, Unavailable
from .age import DecryptingReader, EncryptingWriter
from .base import ArchiveWriter
from .records import meta_bytes
from .spool import remove_stale_spools_in, spool_file

PART_BYTES = 8 * 1024 * 1024  # S3 wants >= 5 MiB but the last; grows so 10 000 parts always do
PARTS_IN_FLIGHT = 2
# reading: ranged GETs in parallel (as rclone's multi-thread downloads), handed out in order; at
# most RANGES_HELD ranges in memory, so a restore's memory stays bounded whatever the size
RANGE_BYTES = 4 * 1024 * 1024
RANGE_THREADS = 4
RANGES_HELD = 5
STALE_UPLOAD_HOURS = 24  # an unfinished multipart upload of ours older than this is aborted
AGE_SUFFIX = ".age"
_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


def is_s3_url(spec):
    return isinstance(spec, str) and spec.startswith("s3://")


def user_name():
    """The user this server runs for: JupyterHub's user, else the OS user; safe in an S3 key."""
    import getpass

    name = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name).strip(".") or "user"


def parse_url(spec):
    """``(bucket, prefix)`` of ``s3://BUCKET/PREFIX``, ``{username}`` filled in; prefix ends in /."""
    spec = spec.replace("{username}", user_name())
    match = _URL.match(spec)  # a trailing "/" is the prefix's, stripped below
    if not match:
        raise BackupError(f"{spec!r} is not an S3 store: write s3://BUCKET or s3://BUCKET/PREFIX "
                          "(a bucket name of 3-63 lower-case letters, digits, dots and dashes).")
    bucket, prefix = match.group(1), (match.group(2) or "").strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise BackupError(f"The prefix of {spec!r} has an empty, '.' or '..' part; write s3://BUCKET/a/b.")
    return bucket, (prefix + "/" if prefix else "")


class S3Store:
    """Backups under one prefix of an S3 bucket."""

    kind = "s3"

    def __init__(self, url, endpoint_url="", region="", timeout=60, encryption=None):
        self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.timeout = timeout
        self.encryption = encryption
        self._client = None

    @property
    def name(self):
        return self.url

    def describe(self):
        return {"type": self.kind, "name": self.url, "endpoint": self.endpoint_url or "AWS S3",
                "encryption": self.encryption.describe() if self.encryption else None}

    # the client and its errors -----------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            import botocore.session  # not boto3: its import (s3transfer, resources) costs a restore ~0.1 s
            from botocore.config import Config

            config = Config(
                connect_timeout=self.timeout, read_timeout=self.timeout,
                retries={"mode": "standard", "max_attempts": 3},
                s3={"addressing_style": "path"} if self.endpoint_url else {},
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
            )  # checksums: the archive carries its own (zstd frames, SHA-256); not all S3 servers know these
            _quiet_sdk_logs()
            session = botocore.session.get_session()  # boto3's own chain of credentials: it is botocore's
            self._client = session.create_client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                                 config=config)
            self._secrets = _secrets_of(session)
        return self._client

    def _where(self):
        return f"{self.url}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _error(self, exc, doing):
        """Our own sentence for a boto3/botocore error: what failed, what to do; no secrets."""
        from botocore import exceptions as bx

        where = self._where()
        if isinstance(exc, BackupError):
            return exc
        if isinstance(exc, bx.NoCredentialsError):
            return Unavailable(f"No S3 credentials were found for {where} while {doing}: set AWS_ACCESS_KEY_ID "
                               "and AWS_SECRET_ACCESS_KEY in the server's environment, or AWS_PROFILE for a "
                               "profile in ~/.aws, or run on a machine with an instance role.")
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchBucket",):
                return Unavailable(f"The bucket {self.bucket!r} does not exist at "
                                   f"{self.endpoint_url or 'AWS S3'} (while {doing}). Create it, or correct "
                                   "AILabBackup.store / copy_to (and s3_endpoint_url).")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                        "ExpiredToken", "AuthorizationHeaderMalformed", "403", "Forbidden"):
                return Unavailable(f"{where} refused the credentials while {doing} ({code}): check "
                                   "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, and that they "
                                   f"may read and write {self.url}/*.")
            if code in ("PreconditionFailed", "412"):  # its ETag changed between two ranged reads
                return Unavailable(f"The object changed in {where} while {doing}: it was rewritten meanwhile. "
                                   "Nothing was changed; try again.")
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload"):
                return NotFound(f"{doing.capitalize()}: it is not in {where}.")
            message = self._scrub(str(exc.response.get("Error", {}).get("Message", "")))[:200]
            return Unavailable(f"{where} answered {code or 'an error'} while {doing}: {message}")
        if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError)) or "timed out" in str(exc).lower():
            return Unavailable(f"{where} did not answer within {self.timeout} s while {doing}. Nothing "
                               "incomplete was kept; try again when the S3 server is reachable "
                               "(AILabBackup.s3_timeout sets the wait).")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectionError,
                            bx.HTTPClientError, bx.IncompleteReadError, bx.ResponseStreamingError,
                            ConnectionError, OSError)):
            return Unavailable(f"{where} cannot be reached or broke off while {doing} "
                               f"({type(exc).__name__}). Nothing incomplete was kept and nothing was changed; "
                               "check the network and AILabBackup.s3_endpoint_url, then try again.")
        if isinstance(exc, bx.BotoCoreError):
            return Unavailable(f"S3 ({where}) failed while {doing}: {self._scrub(str(exc))[:200]}")
        return None

    def _scrub(self, text):
        for secret in getattr(self, "_secrets", ()):
            text = text.replace(secret, "***")
        return text

    def _call(self, doing, method, **kwargs):
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped to our own error, or raised as it is
            mapped = self._error(exc, doing)
            if mapped is None:
                raise
            raise mapped from None

    # reading ----------------------------------------------------------------------------------

    def _keys(self, sub, doing):
        token = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(doing, "list_objects_v2", Prefix=self.prefix + sub, **extra)
            for item in page.get("Contents", []):
                yield item["Key"]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _get_json(self, key, doing):
        try:
            body = self._call(doing, "get_object", Key=key)["Body"]
            with body:
                return json.loads(body.read(4 * 1024 * 1024))
        except NotFound:
            return None
        except ValueError:
            return None

    def read_all_meta(self):
        from concurrent.futures import ThreadPoolExecutor

        keys = [k for k in self._keys("meta/", "listing the backups") if k.endswith(".json")]
        self.client  # made once, before the threads share it (boto3 clients are thread-safe)
        with ThreadPoolExecutor(8) as pool:  # one GET per backup: a few at a time
            found = pool.map(functools.partial(self._get_json, doing="reading a backup's metadata"), keys)
            return [meta for meta in found if meta is not None]

    def read_state(self, name):
        return self._get_json(f"{self.prefix}{name}.json", f"reading {name}.json")

    def write_state(self, name, data):
        self._call(f"writing {name}.json", "put_object", Key=f"{self.prefix}{name}.json",
                   Body=meta_bytes(data), ContentType="application/json")

    def _archive_key(self, archive_name):
        """The key holding the archive, whether it is encrypted, and its head (size, ETag);
        NotFound when neither is there. The likelier key is asked for first (encrypted when
        encryption is not off): a HEAD answered 404 is a round trip before the first range."""
        candidates = ((self.prefix + "data/" + archive_name, False),
                      (self.prefix + "data/" + archive_name + AGE_SUFFIX, True))
        if self.encryption is not None and self.encryption.mode != "off":
            candidates = candidates[::-1]
        for key, encrypted in candidates:
            try:
                head = self._call(f"looking for {archive_name}", "head_object", Key=key)
                return key, encrypted, head
            except NotFound:
                continue
        raise NotFound(f"The archive {archive_name} is missing from {self._where()}.")

    @contextmanager
    def open_archive(self, archive_name):
        key, encrypted, head = self._archive_key(archive_name)
        identities = self.encryption.identities(f"The backup archive {archive_name}") if encrypted else None
        raw = _RangedReader(self, key, head.get("ContentLength") or 0, head.get("ETag"), f"reading {archive_name}")
        reader = DecryptingReader(raw, identities, f"the backup archive {archive_name}",
                                  self.encryption.key_file) if encrypted else raw
        try:
            yield reader
        finally:
            if encrypted:
                reader.close()
            raw.close()

    def local_path(self, archive_name):
        return None

    # writing ----------------------------------------------------------------------------------

    @contextmanager
    def open_writer(self, archive_name):
        """An :class:`ArchiveWriter` streaming into a multipart upload, encrypted when a key is
        set; aborted unless committed."""
        recipients = self.encryption.recipients() if self.encryption else []
        key = self.prefix + "data/" + archive_name + (AGE_SUFFIX if recipients else "")
        writer = _MultipartWriter(self, key, archive_name, recipients)
        try:
            yield writer
        finally:
            if not writer.committed:
                writer.abort()

    def spool(self, name):
        """A temporary file of this machine (an upload arrives in one before it is checked)."""
        return spool_file(tempfile.gettempdir(), name)

    def commit(self, spool_path, archive_name, meta):
        with self.open_writer(archive_name) as writer, open(spool_path, "rb") as f:
            while chunk := f.read(PART_BYTES):
                writer.write(chunk)
            writer.commit(meta)

    def remove(self, backup_id, archive_name):
        for key in (f"{self.prefix}meta/{backup_id}.json", f"{self.prefix}data/{archive_name}",
                    f"{self.prefix}data/{archive_name}{AGE_SUFFIX}"):
            self._call(f"deleting {backup_id}", "delete_object", Key=key)

    def remove_stale_spools(self, now=None):
        removed = remove_stale_spools_in(tempfile.gettempdir())
        now = now or datetime.datetime.now(datetime.timezone.utc)
        page = self._call("looking for unfinished uploads", "list_multipart_uploads", Prefix=self.prefix + "data/")
        for upload in page.get("Uploads", []) or []:
            if now - upload["Initiated"] > datetime.timedelta(hours=STALE_UPLOAD_HOURS):
                self._call("aborting an unfinished upload", "abort_multipart_upload",
                           Key=upload["Key"], UploadId=upload["UploadId"])
                removed += 1
        return removed


def _read_body(body, to_error):
    """All of a response body; its read errors (server gone, timeout) become our own BackupError."""
    try:
        return body.read()
    except Exception as exc:  # noqa: BLE001
        mapped = to_error(exc)
        if mapped is None:
            raise
        raise mapped from None


class _RangedReader:
    """An object read as ranged GETs in parallel threads, handed out in order. A single GET
    stream puts every socket read in the reading thread, between its decompressing and checking;
    here the network runs beside them, and several connections fill the next ranges. Errors
    (server gone, timeout, the object changed: its ETag) are raised by :meth:`read`."""

    def __init__(self, store, key, size, etag, doing):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.store, self.key, self.size, self.etag, self.doing = store, key, size, etag, doing
        self.to_error = functools.partial(store._error, doing=doing)
        self.offset = 0  # of the next range to ask for
        self.ranges = deque()  # futures of the ranges asked for, in order
        self.chunk, self.pos = b"", 0  # the range being handed out
        self.closed = False
        store.client  # made once, before the threads share it (boto3 clients are thread-safe)
        self.pool = ThreadPoolExecutor(RANGE_THREADS, thread_name_prefix="ailab-backup-s3-get")
        self._ask()

    def _ask(self):
        while len(self.ranges) < RANGES_HELD and self.offset < self.size:
            end = min(self.offset + RANGE_BYTES, self.size)
            self.ranges.append(self.pool.submit(self._get, self.offset, end))
            self.offset = end

    def _get(self, start, end):
        if self.closed:
            return b""
        extra = {"IfMatch": self.etag} if self.etag else {}  # AWS refuses a range of another object
        answer = self.store._call(self.doing, "get_object", Key=self.key, Range=f"bytes={start}-{end - 1}", **extra)
        body = answer["Body"]  # (not "with": its __enter__ gives the raw urllib3 stream, unwrapped errors)
        try:
            if self.etag and answer.get("ETag") not in (None, self.etag):  # servers that ignore If-Match
                raise self.to_error(_precondition_failed())
            data = _read_body(body, self.to_error)
        finally:
            body.close()
        if len(data) != end - start:
            raise Unavailable(f"{self.store._where()} sent {len(data)} bytes of {end - start} while {self.doing}. "
                              "Nothing was changed; try again.")
        return data

    def _next_chunk(self):
        if self.pos >= len(self.chunk):
            if not self.ranges:
                return False
            self.chunk, self.pos = self.ranges.popleft().result(), 0
            self._ask()
        return True

    def read(self, size=-1):
        if not self._next_chunk():
            return b""
        if self.pos == 0 and (size is None or size < 0 or size >= len(self.chunk)):
            self.pos = len(self.chunk)
            return self.chunk  # the whole range: no copy
        end = len(self.chunk) if size is None or size < 0 else min(self.pos + size, len(self.chunk))
        data = self.chunk[self.pos:end]
        self.pos = end
        return data

    def readinto(self, buffer):
        if not self._next_chunk():
            return 0
        n = min(len(buffer), len(self.chunk) - self.pos)
        buffer[:n] = memoryview(self.chunk)[self.pos:self.pos + n]
        self.pos += n
        return n

    def close(self):
        self.closed = True
        for future in self.ranges:
            future.cancel()
        self.ranges.clear()
        self.chunk, self.pos = b"", 0
        self.pool.shutdown(wait=False)  # a range still being read ends with its timeout at most


class _MultipartWriter(ArchiveWriter):
    """Bytes written are cut into parts uploaded by a worker thread, at most
    ``PARTS_IN_FLIGHT`` waiting: memory stays at a few parts whatever the archive's size."""

    def __init__(self, store, key, archive_name, recipients):
        self.store, self.key, self.archive_name = store, key, archive_name
        self.encrypted = bool(recipients)
        self.committed = False
        self.parts, self.part_bytes, self.stored_bytes = [], PART_BYTES, 0
        self.pending, self.pending_bytes = [], 0  # the next part's pieces (joined once: one copy)
        self.upload_id = store._call(f"starting the upload of {archive_name}", "create_multipart_upload",
                                     Key=key)["UploadId"]
        self.uploader = Worker("ailab-backup-s3-upload", depth=PARTS_IN_FLIGHT)
        self.sink = EncryptingWriter(_RawSink(self), recipients) if recipients else _RawSink(self)

    def write(self, data):
        return self.sink.write(data)

    def _take(self, data):  # the stored (maybe encrypted) bytes, in the order written
        self.pending.append(bytes(data))  # (data may be a view of a buffer its writer reuses)
        self.pending_bytes += len(data)
        if self.pending_bytes >= self.part_bytes:
            self._flush_part()

    def _flush_part(self):
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        self._send(data)

    def _send(self, data):
        number = len(self.parts) + 1
        self.parts.append(None)
        if number % 1000 == 0:
            self.part_bytes *= 2
        self.stored_bytes += len(data)
        self.uploader.submit(self._upload, number, data)

    def _upload(self, number, data):
        answer = self.store._call(f"uploading {self.archive_name}", "upload_part", Key=self.key,
                                  UploadId=self.upload_id, PartNumber=number, Body=data)
        self.parts[number - 1] = {"PartNumber": number, "ETag": answer["ETag"]}

    def commit(self, meta):
        if self.encrypted:
            self.sink.close()
        if self.pending or not self.parts:
            self._flush_part()
        self.uploader.close()
        self.store._call(f"finishing the upload of {self.archive_name}", "complete_multipart_upload",
                         Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.committed = True  # the upload is done: from here a failure leaves an unlisted object
        head = self.store._call(f"checking {self.archive_name}", "head_object", Key=self.key)
        if head.get("ContentLength") != self.stored_bytes:
            self.store._call(f"deleting {self.archive_name}", "delete_object", Key=self.key)
            raise BackupError(f"{self.store._where()} holds {head.get('ContentLength')} bytes of "
                              f"{self.archive_name} instead of {self.stored_bytes}; it was not kept.")
        meta = dict(meta, encrypted=self.encrypted, stored_bytes=self.stored_bytes)
        if self.encrypted:  # readable for listing: ids, times, sizes; not which paths were left out
            meta["skipped_count"], meta["skipped"] = len(meta.get("skipped") or []), []
            if meta.get("excludes"):  # the patterns name folders: only how many
                meta["excludes_count"], meta["excludes"] = len(meta["excludes"]), None
        try:
            self.store._call(f"writing the metadata of {meta['id']}", "put_object",
                             Key=f"{self.store.prefix}meta/{meta['id']}.json", Body=meta_bytes(meta),
                             ContentType="application/json")
        except BackupError:
            self._delete_quietly()
            raise

    def _delete_quietly(self):
        try:
            self.store._call(f"deleting {self.archive_name}", "delete_object", Key=self.key)
        except BackupError:
            pass

    def abort(self):
        """Drop the upload (and the encryption thread); a failure here leaves a stale upload,
        aborted at a later start."""
        if self.encrypted:
            self.sink.abort()
        try:
            self.uploader.close()
        except BaseException:  # noqa: BLE001 - the first error is already on its way
            pass
        try:
            self.store._call(f"aborting the upload of {self.archive_name}", "abort_multipart_upload",
                             Key=self.key, UploadId=self.upload_id)
        except BackupError:
            pass


class _RawSink:
    """Where the (encrypted) bytes go: the writer's parts."""

    def __init__(self, writer):
        self.writer = writer

    def write(self, data):
        self.writer._take(data)
        return len(data)

    def flush(self):
        pass


def _precondition_failed():
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "PreconditionFailed"}}, "GetObject")


def _quiet_sdk_logs():
    """boto3's debug log holds the access key id (in the signed headers): never below INFO, so a
    server run with debug logging cannot write it."""
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET too: a root logger set to DEBUG later must not reach it
            logger.setLevel(logging.INFO)


def _secrets_of(session):
    """The credential values (to scrub from any quoted server text)."""
    try:
        creds = session.get_credentials()
        if creds is None:
            return ()
        frozen = creds.get_frozen_credentials()
        return tuple(v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v)
    except Exception:  # noqa: BLE001
        return ()

