"""The S3 store's errors and secrets, seen from what a user gets: each failure's own sentence
(what failed, what to do), compared whole, and the credentials never in any of them. In-process,
so that the mutation run (tests/MUTANTS.md, "stores/s3.py") sees them: the command-line checks of
tests/test_s3.py run in a child process it cannot follow. The faults are real where the real S3
server can make them (wrong keys, a missing bucket, no credentials); the rarer ones are botocore's
own exception objects."""

import datetime
import logging
import os
import tempfile
import time
from contextlib import contextmanager

import pytest
from botocore import exceptions as bx

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, NotFound, Unavailable
from ailab_backup_ext.stores import s3
from ailab_backup_ext.stores.age import Encryption
from ailab_backup_ext.stores.s3 import S3Store
from s3util import ACCESS_KEY, SECRET_KEY, s3_env

AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
              "AuthorizationHeaderMalformed", "403", "Forbidden")


def store_at(server, bucket, **kwargs):
    return S3Store(f"s3://{bucket}/backups", endpoint_url=server.url, region="us-east-1", timeout=3, **kwargs)


def where(server, bucket):
    return f"s3://{bucket}/backups at {server.url}"


def client_error(code, message=""):
    return bx.ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")


@pytest.fixture
def offline_store():
    """A store whose errors are mapped without any server (the mapping is all that runs)."""
    return S3Store("s3://bucket-x/users/ann", endpoint_url="http://127.0.0.1:9", timeout=7)


OFFLINE_WHERE = "s3://bucket-x/users/ann at http://127.0.0.1:9"


# real faults of the real server --------------------------------------------------------------

@pytest.mark.parametrize("wrong", ["secret", "key id"])
def test_wrong_keys_are_refused_with_a_sentence_that_says_what_to_check(s3_server, s3_bucket, monkeypatch, wrong):
    keys = (ACCESS_KEY, SECRET_KEY[::-1]) if wrong == "secret" else ("AKIAWRONGWRONGWRONG1", SECRET_KEY)
    s3_env(monkeypatch, s3_server, keys)
    with pytest.raises(Unavailable) as refused:
        store_at(s3_server, s3_bucket).read_all_meta()
    message = str(refused.value)
    code = message.split("(")[1].split(")")[0]
    assert code in AUTH_CODES
    assert message == (f"{where(s3_server, s3_bucket)} refused the credentials while listing the backups "
                       f"({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, and that they "
                       f"may read and write s3://{s3_bucket}/backups/*.")
    for secret in (*keys, ACCESS_KEY, SECRET_KEY):
        assert secret not in message


def test_a_missing_bucket_says_which_and_what_to_correct(s3_server, s3_bucket):
    with pytest.raises(Unavailable) as missing:
        store_at(s3_server, "no-such-bucket-here").write_state("settings", {"a": 1})
    assert str(missing.value) == (f"The bucket 'no-such-bucket-here' does not exist at {s3_server.url} (while "
                                  "writing settings.json). Create it, or correct AILabBackup.store / copy_to "
                                  "(and s3_endpoint_url).")


def test_no_credentials_at_all_says_where_they_come_from(s3_server, s3_bucket, monkeypatch):
    s3_env(monkeypatch, s3_server)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(Unavailable) as none:
        store_at(s3_server, s3_bucket).read_state("settings")
    assert str(none.value) == (
        f"No S3 credentials were found for {where(s3_server, s3_bucket)} while reading settings.json: set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment, or AWS_PROFILE for a profile "
        "in ~/.aws, or run on a machine with an instance role.")


def test_a_missing_archive_is_not_found_and_names_it(s3_server, s3_bucket):
    with pytest.raises(NotFound) as missing:
        with store_at(s3_server, s3_bucket).open_archive("nb-1.tar.zst"):
            pass
    assert str(missing.value) == f"The archive nb-1.tar.zst is missing from {where(s3_server, s3_bucket)}."


def test_the_keys_and_a_session_token_are_what_is_scrubbed(s3_server, s3_bucket, monkeypatch):
    s3_env(monkeypatch, s3_server)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOKEN-DISTINCTIVE-4242")
    store = store_at(s3_server, s3_bucket)
    store.client
    assert store._secrets == (ACCESS_KEY, SECRET_KEY, "TOKEN-DISTINCTIVE-4242")
    quoted = f"key {ACCESS_KEY}, secret {SECRET_KEY}, token TOKEN-DISTINCTIVE-4242 and again {SECRET_KEY}"
    mapped = store._error(client_error("SlowDown", quoted), "writing settings.json")
    assert str(mapped) == (f"{where(s3_server, s3_bucket)} answered SlowDown while writing settings.json: "
                           "key ***, secret ***, token *** and again ***")


def test_without_credentials_nothing_is_scrubbed_and_nothing_fails(s3_server, s3_bucket, monkeypatch):
    s3_env(monkeypatch, s3_server)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    store = store_at(s3_server, s3_bucket)
    store.client
    assert store._secrets == ()
    assert store._scrub("nothing secret here") == "nothing secret here"


# the mapping of every other kind of failure ---------------------------------------------------

def test_a_store_never_asked_to_make_its_client_scrubs_nothing(offline_store):
    assert offline_store._scrub("plain text") == "plain text"


@pytest.mark.parametrize("code", AUTH_CODES)
def test_every_refusal_code_is_a_credentials_error(offline_store, code):
    mapped = offline_store._error(client_error(code), "reading x")
    assert type(mapped) is Unavailable
    assert str(mapped) == (f"{OFFLINE_WHERE} refused the credentials while reading x ({code}): check "
                           "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile, and that they may read "
                           "and write s3://bucket-x/users/ann/*.")


@pytest.mark.parametrize("code", ["PreconditionFailed", "412"])
def test_an_object_rewritten_meanwhile_says_nothing_changed(offline_store, code):
    mapped = offline_store._error(client_error(code), "reading nb.tar.zst")
    assert type(mapped) is Unavailable
    assert str(mapped) == (f"The object changed in {OFFLINE_WHERE} while reading nb.tar.zst: it was rewritten "
                           "meanwhile. Nothing was changed; try again.")


@pytest.mark.parametrize("code", ["NoSuchKey", "404", "NotFound", "NoSuchUpload"])
def test_a_missing_object_is_not_found(offline_store, code):
    mapped = offline_store._error(client_error(code), "deleting nb-1")
    assert type(mapped) is NotFound
    assert str(mapped) == f"Deleting nb-1: it is not in {OFFLINE_WHERE}."


def test_another_answer_is_quoted_cut_at_200_characters(offline_store):
    mapped = offline_store._error(client_error("InternalError", "x" * 150 + "y" * 100), "writing a.json")
    assert type(mapped) is Unavailable
    assert str(mapped) == f"{OFFLINE_WHERE} answered InternalError while writing a.json: " + "x" * 150 + "y" * 50
    no_code = bx.ClientError({"Error": {"Message": "odd"}}, "GetObject")
    assert str(offline_store._error(no_code, "x")) == f"{OFFLINE_WHERE} answered an error while x: odd"


@pytest.mark.parametrize("timeout", [bx.ReadTimeoutError(endpoint_url="http://h"),
                                     bx.ConnectTimeoutError(endpoint_url="http://h"),
                                     TimeoutError("the read timed out")])
def test_a_timeout_names_the_wait_and_its_setting(offline_store, timeout):
    mapped = offline_store._error(timeout, "listing the backups")
    assert type(mapped) is Unavailable
    assert str(mapped) == (f"{OFFLINE_WHERE} did not answer within 7 s while listing the backups. Nothing "
                           "incomplete was kept; try again when the S3 server is reachable "
                           "(AILabBackup.s3_timeout sets the wait).")


@pytest.mark.parametrize("broken", [
    bx.EndpointConnectionError(endpoint_url="http://h"), bx.ConnectionClosedError(endpoint_url="http://h"),
    bx.ConnectionError(error="reset"), bx.HTTPClientError(error="reset"),
    bx.IncompleteReadError(actual_bytes=1, expected_bytes=2), bx.ResponseStreamingError(error="cut"),
    ConnectionResetError("reset"), OSError("network is unreachable")], ids=lambda error: type(error).__name__)
def test_a_lost_connection_says_nothing_was_kept_or_changed(offline_store, broken):
    mapped = offline_store._error(broken, "uploading nb.tar.zst")
    assert type(mapped) is Unavailable
    assert str(mapped) == (f"{OFFLINE_WHERE} cannot be reached or broke off while uploading nb.tar.zst "
                           f"({type(broken).__name__}). Nothing incomplete was kept and nothing was changed; "
                           "check the network and AILabBackup.s3_endpoint_url, then try again.")


def test_another_sdk_failure_is_quoted_scrubbed(offline_store):
    offline_store._secrets = ("SeCrEt",)
    mapped = offline_store._error(bx.ParamValidationError(report="bad SeCrEt " + "z" * 300), "writing a.json")
    assert type(mapped) is Unavailable
    text = str(bx.ParamValidationError(report="bad *** " + "z" * 300))
    assert str(mapped) == f"S3 ({OFFLINE_WHERE}) failed while writing a.json: {text[:200]}"


def test_our_own_error_passes_as_it_is_and_anything_else_is_not_ours(offline_store):
    ours = BackupError("the store's own")
    assert offline_store._error(ours, "x") is ours
    assert offline_store._error(ValueError("a bug"), "x") is None


def test_an_unmapped_failure_is_raised_as_it_is(offline_store):
    class Client:
        def head_object(self, **kwargs):
            raise ValueError("a bug of ours")

    offline_store._client = Client()
    with pytest.raises(ValueError, match="a bug of ours"):
        offline_store._call("looking", "head_object", Key="k")


def test_an_endpoint_is_only_named_when_one_is_set():
    assert S3Store("s3://bucket-x/p")._where() == "s3://bucket-x/p"
    assert S3Store("s3://bucket-x")._error(client_error("NoSuchBucket"), "x").args[0].startswith(
        "The bucket 'bucket-x' does not exist at AWS S3 (while x).")


# the SDK's own logs ---------------------------------------------------------------------------

def test_the_sdk_never_logs_below_info(monkeypatch):
    loggers = {name: logging.getLogger(name) for name in ("boto3", "botocore", "s3transfer", "urllib3")}
    for logger in loggers.values():
        monkeypatch.setattr(logger, "level", logging.NOTSET)
    loggers["botocore"].setLevel(logging.DEBUG)
    loggers["urllib3"].setLevel(logging.WARNING)  # quieter already: left so
    s3._quiet_sdk_logs()
    assert {name: logger.level for name, logger in loggers.items()} == {
        "boto3": logging.INFO, "botocore": logging.INFO, "s3transfer": logging.INFO, "urllib3": logging.WARNING}


# what a user sees of the store --------------------------------------------------------------

def test_the_status_names_the_endpoint_and_the_encryption(tmp_path):
    assert S3Store("s3://bucket-x/p").describe() == {"type": "s3", "name": "s3://bucket-x/p", "endpoint": "AWS S3",
                                                     "encryption": None}
    encryption = Encryption(key_file=str(tmp_path / "none.key"))
    assert S3Store("s3://bucket-x/p", endpoint_url="http://minio:9000", encryption=encryption).describe() == {
        "type": "s3", "name": "s3://bucket-x/p", "endpoint": "http://minio:9000",
        "encryption": {"mode": "auto", "key_file": str(tmp_path / "none.key"), "public_key": None, "recipients": 0}}


def test_what_we_write_is_json_to_whoever_browses_the_bucket(tmp_path, s3_server, s3_bucket):
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "a.ipynb").write_text("{}")
    manager = BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=f"s3://{s3_bucket}/backups",
                                        s3_endpoint_url=s3_server.url, s3_region="us-east-1",
                                        age_identity_file=str(tmp_path / "keys" / "age.key")))
    meta = manager.create_backup()
    manager.store.write_state("settings", {"excludes": []})
    client = s3_server.client()
    for key in (f"backups/meta/{meta['id']}.json", "backups/settings.json"):
        assert client.head_object(Bucket=s3_bucket, Key=key)["ContentType"] == "application/json"


# faults at each step of an upload: nothing listed, nothing left --------------------------------

class RefusingClient:
    """The real client, but S3 refuses one operation (each time, or only for keys under a part)."""

    def __init__(self, real, method, code="InternalError", under=""):
        self.real, self.method, self.code, self.under = real, method, code, under

    def __getattr__(self, name):
        call = getattr(self.real, name)
        if name != self.method:
            return call

        def refused(**kwargs):
            if self.under not in kwargs.get("Key", ""):
                return call(**kwargs)
            raise bx.ClientError({"Error": {"Code": self.code, "Message": "refused by the test"}}, name)
        return refused


def s3_only_manager(tmp_path, server, bucket):
    nb = tmp_path / "nb"
    nb.mkdir(exist_ok=True)
    (nb / "a.ipynb").write_bytes(os.urandom(12 * 1024 * 1024))  # two parts
    (nb / "b.ipynb").write_text("{}")
    return BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=f"s3://{bucket}/backups",
                                     s3_endpoint_url=server.url, s3_region="us-east-1", s3_timeout=5,
                                     age_identity_file=str(tmp_path / "keys" / "age.key")))


def left_in(server, bucket):
    """(objects, unfinished multipart uploads) under the store's prefix."""
    client = server.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="backups/").get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix="backups/").get("Uploads", [])]
    return objects, uploads


@pytest.mark.parametrize("step, doing, left", [
    ("upload_part", "uploading {archive}", ([], [])),
    ("complete_multipart_upload", "finishing the upload of {archive}", ([], [])),
    # the object is whole but unchecked: not listed (no metadata), and kept for no one
    ("head_object", "checking {archive}", (["backups/data/{archive}"], [])),
    ("put_object", "writing the metadata of {id}", ([], [])),
])
def test_a_refused_step_of_an_upload_is_named_and_leaves_nothing_listed(tmp_path, s3_server, s3_bucket, step,
                                                                        doing, left):
    manager = s3_only_manager(tmp_path, s3_server, s3_bucket)
    store = manager.store
    store._client = RefusingClient(store.client, step, under="backups/")
    with pytest.raises(Unavailable) as refused:
        manager.create_backup()
    store._client = store._client.real
    message = str(refused.value)
    archive = message.split(" while ")[1].split(": refused")[0].split()[-1]
    backup_id = archive.split(".tar")[0]
    assert message == (f"{where(s3_server, s3_bucket)} answered InternalError while "
                       f"{doing.format(archive=archive, id=backup_id)}: refused by the test")
    assert manager.list_backups() == []
    objects, uploads = left
    assert left_in(s3_server, s3_bucket) == ([o.format(archive=archive) for o in objects], uploads)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_backup_failing_midway_aborts_its_upload(tmp_path, s3_server, s3_bucket, monkeypatch, encrypted):
    manager = s3_only_manager(tmp_path, s3_server, s3_bucket)
    if encrypted:
        manager.generate_key()
    written = []
    source = manager.resolve()[0]
    real_read = source.read_entries

    @contextmanager
    def failing_read():  # the source breaks after its big file went into the upload
        def entries(real):
            for entry in real:
                written.append(entry)
                yield entry
            raise BackupError("the notebooks folder went away")
        with real_read() as real:
            yield entries(real)

    monkeypatch.setattr(source, "read_entries", failing_read)
    with pytest.raises(BackupError, match="the notebooks folder went away"):
        manager.create_backup()
    assert written  # it had begun
    assert manager.list_backups() == []
    assert left_in(s3_server, s3_bucket) == ([], [])


def test_a_refused_delete_says_which_backup(tmp_path, s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    store._client = RefusingClient(store.client, "delete_object")
    with pytest.raises(Unavailable) as refused:
        store.remove("nb-1", "nb-1.tar.zst")
    assert str(refused.value) == (f"{where(s3_server, s3_bucket)} answered InternalError while deleting nb-1: "
                                  "refused by the test")


@pytest.mark.parametrize("step, doing", [("list_multipart_uploads", "looking for unfinished uploads"),
                                         ("abort_multipart_upload", "aborting an unfinished upload")])
def test_a_refused_cleanup_says_what_it_was_doing(tmp_path, s3_server, s3_bucket, step, doing):
    store = store_at(s3_server, s3_bucket)
    store.client.create_multipart_upload(Bucket=s3_bucket, Key="backups/data/killed.tar.zst")
    store._client = RefusingClient(store.client, step)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=25)
    with pytest.raises(Unavailable) as refused:
        store.remove_stale_spools(now=later)
    assert str(refused.value) == (f"{where(s3_server, s3_bucket)} answered InternalError while {doing}: "
                                  "refused by the test")


# cleaning up after a killed server ------------------------------------------------------------

def test_stale_uploads_older_than_a_day_and_stale_spools_are_all_counted(tmp_path, s3_server, s3_bucket,
                                                                           monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    stale_spool = os.path.join(tempfile.tempdir, ".upload-x.999999999.ailab-partial")  # a dead pid's
    open(stale_spool, "wb").close()
    store = store_at(s3_server, s3_bucket)
    client = store.client
    for name in ("a", "b"):
        client.create_multipart_upload(Bucket=s3_bucket, Key=f"backups/data/{name}.tar.zst")
    started = [u["Initiated"] for u in client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]]
    exactly_a_day = min(started) + datetime.timedelta(hours=s3.STALE_UPLOAD_HOURS)
    assert store.remove_stale_spools(now=exactly_a_day) == 1  # the spool; a day old is not older than a day
    assert not os.path.exists(stale_spool)
    assert len(client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 2
    assert store.remove_stale_spools(now=max(started) + datetime.timedelta(hours=25)) == 2
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.timeout(20)  # two uploads given one spool wait for each other's lock for ever
def test_two_uploads_at_once_have_spools_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = S3Store("s3://bucket-x/p")
    with store.spool("upload-a") as first, store.spool("upload-b") as second:
        assert first != second
        assert os.path.dirname(first) == str(tmp_path)


# reading and writing in bounded pieces ----------------------------------------------------------

def test_an_uploaded_file_goes_up_in_parts_not_read_whole(tmp_path, s3_server, s3_bucket, monkeypatch):
    spool = tmp_path / "spooled"
    spool.write_bytes(os.urandom(2 * s3.PART_BYTES + 5))
    sizes = []
    real_write = s3._MultipartWriter.write
    monkeypatch.setattr(s3._MultipartWriter, "write",
                        lambda self, data: sizes.append(len(data)) or real_write(self, data))
    store = store_at(s3_server, s3_bucket)
    store.commit(str(spool), "nb-1.tar.zst", {"id": "nb-1", "archive": "nb-1.tar.zst"})
    assert sizes == [s3.PART_BYTES, s3.PART_BYTES, 5]
    assert [m["id"] for m in store.read_all_meta()] == ["nb-1"]


def test_readinto_after_a_partial_read_gets_the_rest_of_the_range(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    data = os.urandom(s3.RANGE_BYTES + 10)
    store.client.put_object(Bucket=s3_bucket, Key="backups/data/x.tar.zst", Body=data)
    with store.open_archive("x.tar.zst") as reader:
        assert reader.read(0) == b""  # as any stream's: nothing, not the range
        assert reader.read(1000) == data[:1000]
        buffer = bytearray(2 * s3.RANGE_BYTES)
        n = reader.readinto(buffer)
        assert buffer[:n] == data[1000:s3.RANGE_BYTES]
        assert reader.readinto(buffer) == 10 and buffer[:10] == data[-10:]
        assert reader.readinto(buffer) == 0


class ShortHeadClient(RefusingClient):
    """The real client, but the archive's HEAD reports one byte less than was uploaded (a server
    that lost the end of it); the delete that follows may be refused too."""

    def __init__(self, real, refuse_delete=False):
        super().__init__(real, "delete_object" if refuse_delete else "")

    def head_object(self, **kwargs):
        head = self.real.head_object(**kwargs)
        return {**head, "ContentLength": head["ContentLength"] - 1} if "/data/" in kwargs["Key"] else head


@pytest.mark.parametrize("refuse_delete", [False, True], ids=["deleted", "delete refused"])
def test_an_archive_stored_short_is_deleted_and_never_listed(tmp_path, s3_server, s3_bucket, refuse_delete):
    manager = s3_only_manager(tmp_path, s3_server, s3_bucket)
    store = manager.store
    store._client = ShortHeadClient(store.client, refuse_delete)
    with pytest.raises(BackupError) as short:
        manager.create_backup()
    store._client = store._client.real
    message = str(short.value)
    objects, uploads = left_in(s3_server, s3_bucket)
    assert manager.list_backups() == [] and uploads == []
    if refuse_delete:  # the user learns what failed last, and the object stays unlisted
        archive = objects[0].rsplit("/", 1)[-1]
        assert message == (f"{where(s3_server, s3_bucket)} answered InternalError while deleting {archive}: "
                           "refused by the test")
        assert objects == [f"backups/data/{archive}"]
    else:
        archive = message.split(" bytes of ")[1].split(" instead of ")[0]
        size = int(message.split(" instead of ")[1].split(";")[0])  # what was uploaded (gone now)
        assert objects == []
        assert message == (f"{where(s3_server, s3_bucket)} holds {size - 1} bytes of {archive} instead of "
                           f"{size}; it was not kept.")
        assert size > 12 * 1024 * 1024  # the big incompressible file is in it


# faults while an archive is read ---------------------------------------------------------------

class BodyClient(RefusingClient):
    """The real client, but the body of each ranged GET after the first range is changed by
    ``change(body)``."""

    def __init__(self, real, change):
        super().__init__(real, "")
        self.change = change

    def get_object(self, **kwargs):
        answer = self.real.get_object(**kwargs)
        later = kwargs.get("Range", "bytes=0-").split("=")[1].split("-")[0] != "0"
        return {**answer, "Body": self.change(answer["Body"])} if later else answer


class BrokenBody:
    def __init__(self, body, data=None, error=None):
        self.body, self.data, self.error = body, data, error

    def read(self, *args):
        if self.error:
            raise self.error
        return self.data

    def close(self):
        self.body.close()


def put_archive_object(store, name, data):
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}data/{name}", Body=data)


@pytest.mark.parametrize("fault, message", [
    (lambda body: BrokenBody(body, data=b"x" * 4),  # of the second range's 10
     "{where} sent 4 bytes of 10 while reading x.tar.zst. Nothing was changed; try again."),
    (lambda body: BrokenBody(body, error=bx.ResponseStreamingError(error="cut")),
     "{where} cannot be reached or broke off while reading x.tar.zst (ResponseStreamingError). Nothing incomplete "
     "was kept and nothing was changed; check the network and AILabBackup.s3_endpoint_url, then try again."),
], ids=["short", "broken off"])
def test_a_range_sent_short_or_broken_off_is_an_error_that_says_so(s3_server, s3_bucket, fault, message):
    store = store_at(s3_server, s3_bucket)
    put_archive_object(store, "x.tar.zst", os.urandom(s3.RANGE_BYTES + 10))
    store._client = BodyClient(store.client, fault)
    with pytest.raises(Unavailable) as failed:
        with store.open_archive("x.tar.zst") as reader:
            while reader.read(1024 * 1024):
                pass
    assert str(failed.value) == message.format(where=where(s3_server, s3_bucket))


def test_an_unexpected_failure_of_a_body_is_raised_as_it_is(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    put_archive_object(store, "x.tar.zst", os.urandom(s3.RANGE_BYTES + 10))
    store._client = BodyClient(store.client, lambda body: BrokenBody(body, error=ValueError("a bug of ours")))
    with pytest.raises(ValueError, match="a bug of ours"):
        with store.open_archive("x.tar.zst") as reader:
            while reader.read():
                pass


def test_a_refused_range_says_which_archive(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    put_archive_object(store, "x.tar.zst", b"abc")
    store._client = RefusingClient(store.client, "get_object", under="/data/")
    with pytest.raises(Unavailable) as refused:
        with store.open_archive("x.tar.zst") as reader:
            reader.read()
    assert str(refused.value) == (f"{where(s3_server, s3_bucket)} answered InternalError while reading "
                                  "x.tar.zst: refused by the test")


def test_a_server_that_gives_no_etag_is_still_read(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    data = os.urandom(s3.RANGE_BYTES + 10)
    put_archive_object(store, "x.tar.zst", data)
    reader = s3._RangedReader(store, "backups/data/x.tar.zst", len(data), None, "reading x.tar.zst")
    try:
        assert reader.read() + reader.read() == data and reader.read() == b""
    finally:
        reader.close()


def test_reads_after_a_partial_read_give_the_rest_and_nothing_for_zero(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    data = os.urandom(s3.RANGE_BYTES + 10)
    put_archive_object(store, "x.tar.zst", data)
    with store.open_archive("x.tar.zst") as reader:
        assert reader.read(1000) == data[:1000]
        assert reader.read(0) == b""
        assert reader.read() == data[1000:s3.RANGE_BYTES]  # the rest of the range: never less
        assert reader.read(None) == data[s3.RANGE_BYTES:]
        assert reader.read() == b""


def test_a_read_holds_a_bounded_number_of_ranges_fetched_by_named_threads(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setattr(s3, "RANGE_BYTES", 1024 * 1024)
    store = store_at(s3_server, s3_bucket)
    data = os.urandom((s3.RANGES_HELD + 3) * s3.RANGE_BYTES)
    put_archive_object(store, "x.tar.zst", data)
    with store.open_archive("x.tar.zst") as reader:
        assert len(reader.ranges) == s3.RANGES_HELD  # memory: so many ranges, whatever the size
        got = [reader.read()]
        assert len(reader.ranges) == s3.RANGES_HELD
        assert {t.name.rsplit("_", 1)[0] for t in reader.pool._threads} == {"ailab-backup-s3-get"}
        while chunk := reader.read():
            got.append(chunk)
    assert b"".join(got) == data


# what the storage provider can read of an encrypted backup ------------------------------------

def test_the_metadata_of_an_encrypted_backup_counts_what_was_left_out_but_names_none_of_it(tmp_path, s3_server,
                                                                                          s3_bucket):
    import json
    import socket

    manager = s3_only_manager(tmp_path, s3_server, s3_bucket)
    nb = tmp_path / "nb"
    (nb / "private-plans").mkdir()
    (nb / "private-plans" / "x.ipynb").write_text("{}")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(nb / "kernel-secret.sock"))  # a socket: skipped, and listed so in the metadata
    try:
        manager = BackupManager(AILabBackup(**{**manager.config.trait_values(), "excludes": ["private-plans"]}))
        manager.generate_key()
        meta = manager.create_backup()
    finally:
        listener.close()
    stored = s3_server.client().get_object(Bucket=s3_bucket, Key=f"backups/meta/{meta['id']}.json")["Body"].read()
    readable = json.loads(stored)
    assert readable["encrypted"] is True
    assert (readable["skipped"], readable["skipped_count"]) == ([], 1)
    assert (readable["excludes"], readable["excludes_count"]) == (None, 1)
    assert readable["stored_bytes"] == s3_server.client().head_object(
        Bucket=s3_bucket, Key=f"backups/data/{meta['archive']}.age")["ContentLength"]
    for private in (b"kernel-secret", b"private-plans"):
        assert private not in stored


# listing --------------------------------------------------------------------------------------

class SmallPagesClient(RefusingClient):
    """The real client, but a listing answers two keys a page (S3 gives 1,000), so that a store
    of five backups is listed over three pages, as one of 2,500 would be."""

    def __init__(self, real):
        super().__init__(real, "")

    def list_objects_v2(self, **kwargs):
        return self.real.list_objects_v2(MaxKeys=2, **kwargs)


def test_a_listing_of_many_pages_finds_every_backup_and_only_those_of_its_prefix(s3_server, s3_bucket):
    ours, theirs = store_at(s3_server, s3_bucket), S3Store(f"s3://{s3_bucket}/users/bob", s3_server.url,
                                                           "us-east-1", timeout=3)
    for store, ids in ((ours, ["a", "b", "c", "d", "e"]), (theirs, ["bob-1"])):
        for backup_id in ids:
            store.client.put_object(Bucket=s3_bucket, Key=f"{store.prefix}meta/{backup_id}.json",
                                    Body=b'{"id": "%s"}' % backup_id.encode())
    ours.client.put_object(Bucket=s3_bucket, Key="backups/meta/notes.txt", Body=b"not a backup")
    ours._client = SmallPagesClient(ours.client)
    assert sorted(m["id"] for m in ours.read_all_meta()) == ["a", "b", "c", "d", "e"]
    assert [m["id"] for m in theirs.read_all_meta()] == ["bob-1"]


def test_small_writes_go_up_in_parts_of_the_part_size(s3_server, s3_bucket, monkeypatch):
    sent = []
    real_send = s3._MultipartWriter._send
    monkeypatch.setattr(s3._MultipartWriter, "_send",
                        lambda self, data: sent.append(len(data)) or real_send(self, data))
    store = store_at(s3_server, s3_bucket)
    piece = os.urandom(1024 * 1024)
    with store.open_writer("nb-1.tar.zst") as writer:
        for _ in range(20):
            writer.write(piece)
        writer.commit({"id": "nb-1", "archive": "nb-1.tar.zst"})
    assert sent == [s3.PART_BYTES, s3.PART_BYTES, 20 * len(piece) - 2 * s3.PART_BYTES]  # bounded memory
    body = store.client.get_object(Bucket=s3_bucket, Key="backups/data/nb-1.tar.zst")["Body"].read()
    assert body == piece * 20


def test_a_metadata_object_over_4_mib_is_not_read_as_a_backup(s3_server, s3_bucket):
    store = store_at(s3_server, s3_bucket)
    huge = b'{"id": "huge", "label": "' + b"x" * (4 * 1024 * 1024) + b'"}'  # JSON, but none of ours
    store.client.put_object(Bucket=s3_bucket, Key="backups/meta/huge.json", Body=huge)
    store.client.put_object(Bucket=s3_bucket, Key="backups/meta/ok.json", Body=b'{"id": "ok"}')
    assert [m["id"] for m in store.read_all_meta()] == ["ok"]


@pytest.mark.parametrize("step, under, call, doing", [
    ("get_object", "/meta/", lambda store: store.read_all_meta(), "reading a backup's metadata"),
    ("create_multipart_upload", "", lambda store: store.open_writer("nb-1.tar.zst").__enter__(),
     "starting the upload of nb-1.tar.zst"),
])
def test_a_refused_read_of_the_metadata_or_start_of_an_upload_says_so(s3_server, s3_bucket, step, under, call,
                                                                      doing):
    store = store_at(s3_server, s3_bucket)
    store.client.put_object(Bucket=s3_bucket, Key="backups/meta/a.json", Body=b'{"id": "a"}')
    store._client = RefusingClient(store.client, step, under=under)
    with pytest.raises(Unavailable) as refused:
        call(store)
    assert str(refused.value) == (f"{where(s3_server, s3_bucket)} answered InternalError while {doing}: "
                                  "refused by the test")


# the store's address and defaults ------------------------------------------------------------

@pytest.mark.parametrize("spec, bucket, prefix, url", [
    ("s3://bucket-x", "bucket-x", "", "s3://bucket-x"),
    ("s3://bucket-x/", "bucket-x", "", "s3://bucket-x"),
    ("s3://bucket-x/BOX/", "bucket-x", "BOX/", "s3://bucket-x/BOX"),
    ("s3://bucket-x//users/ann//", "bucket-x", "users/ann/", "s3://bucket-x/users/ann"),
])
def test_an_s3_address_gives_its_bucket_and_prefix(spec, bucket, prefix, url):
    assert s3.parse_url(spec) == (bucket, prefix)
    assert S3Store(spec).url == url


@pytest.mark.parametrize("spec", ["s3://Bucket/x", "s3://ab", "s3://bucket-x/a/../b", "s3://bucket-x/a/./b",
                                  "s3://bucket-x/a//b"])
def test_a_wrong_s3_address_says_how_to_write_one(spec):
    with pytest.raises(BackupError) as wrong:
        s3.parse_url(spec)
    if "/a/" in spec:
        assert str(wrong.value) == (f"The prefix of {spec!r} has an empty, '.' or '..' part; write "
                                    "s3://BUCKET/a/b.")
    else:
        assert str(wrong.value) == (f"{spec!r} is not an S3 store: write s3://BUCKET or s3://BUCKET/PREFIX (a bucket "
                                    "name of 3-63 lower-case letters, digits, dots and dashes).")


@pytest.mark.parametrize("user, prefix", [("Ann Smith", "Ann_Smith"), ("..x.y..", "x.y"), ("...", "user"),
                                          ("a@b.org", "a@b.org"), ("ä/ö", "___"), ("MAX", "MAX")])
def test_the_user_name_in_a_prefix_is_made_safe(monkeypatch, user, prefix):
    monkeypatch.setenv("JUPYTERHUB_USER", user)
    assert s3.user_name() == prefix
    assert s3.parse_url("s3://bucket-x/users/{username}") == ("bucket-x", f"users/{prefix}/")


def test_a_store_asks_its_region_and_waits_a_minute_by_default(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    assert S3Store("s3://bucket-x", region="eu-central-1").client.meta.region_name == "eu-central-1"
    plain = S3Store("s3://bucket-x")
    assert plain.region is None and plain.timeout == 60


def test_an_answer_without_its_error_part_is_still_a_sentence(offline_store):
    bare = bx.ClientError({}, "GetObject")
    assert str(offline_store._error(bare, "x")) == f"{OFFLINE_WHERE} answered an error while x: "
    no_message = bx.ClientError({"Error": {"Code": "SlowDown"}}, "GetObject")
    assert str(offline_store._error(no_message, "x")) == f"{OFFLINE_WHERE} answered SlowDown while x: "


def test_urllib3_is_quieted_too(monkeypatch):
    logger = logging.getLogger("urllib3")
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    s3._quiet_sdk_logs()
    assert logger.level == logging.INFO


# uploads: bounded memory, named threads, parts that grow ------------------------------------------

class _Parts:
    """A stand-in for the store (no server): every call answers; the parts are counted."""

    def __init__(self):
        self.calls = []

    def _call(self, doing, method, **kwargs):
        self.calls.append((method, kwargs.get("PartNumber"), len(kwargs.get("Body") or b"")))
        return {"UploadId": "u", "ETag": f"e{kwargs.get('PartNumber')}"}


def test_parts_double_every_thousand_so_ten_thousand_always_do(monkeypatch):
    monkeypatch.setattr(s3, "PART_BYTES", 4)
    store = _Parts()
    writer = s3._MultipartWriter(store, "k", "nb.tar.zst", [])
    for _ in range(1000 + 2000 + 2):  # four bytes at a time
        writer.write(b"abcd")
    writer.uploader.close()
    sizes = [size for method, _, size in store.calls if method == "upload_part"]
    assert sizes == [4] * 1000 + [8] * 1000
    assert (writer.part_bytes, writer.pending_bytes) == (16, 8)  # doubled again at the 2000th part


def test_an_upload_waits_for_its_parts_in_flight_in_a_named_thread(s3_server, s3_bucket, monkeypatch):
    import threading

    store = store_at(s3_server, s3_bucket)
    release, names, sent = threading.Event(), set(), []
    real_upload, real_send = s3._MultipartWriter._upload, s3._MultipartWriter._send

    def slow_upload(self, number, data):
        names.add(threading.current_thread().name)
        release.wait(10)
        return real_upload(self, number, data)

    monkeypatch.setattr(s3._MultipartWriter, "_upload", slow_upload)
    monkeypatch.setattr(s3._MultipartWriter, "_send", lambda self, data: sent.append(1) or real_send(self, data))
    piece = os.urandom(s3.PART_BYTES)
    with store.open_writer("nb-1.tar.zst") as writer:
        writing = threading.Thread(target=lambda: [writer.write(piece) for _ in range(8)])
        writing.start()
        deadline = time.monotonic() + 20
        while len(sent) < s3.PARTS_IN_FLIGHT + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # room for any more to be taken
        in_memory = len(sent)  # one uploading, the queue full, one waiting to be queued
        release.set()
        writing.join(30)
        writer.commit({"id": "nb-1", "archive": "nb-1.tar.zst"})
    assert in_memory == s3.PARTS_IN_FLIGHT + 2
    assert names == {"ailab-backup-s3-upload"}
