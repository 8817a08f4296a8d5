"""Reading from S3 in parallel ranged GETs (stores/s3.py ``_RangedReader``), on the real S3 server:
the bytes come out whole and in order whatever the size, and an object rewritten while it is read
is an error, never a mix of two objects."""

import hashlib
import os

import pytest

from ailab_backup_ext.errors import BackupError
from ailab_backup_ext.stores import s3 as s3_module
from ailab_backup_ext.stores.s3 import S3Store


@pytest.fixture
def store(s3_server, s3_bucket):
    return S3Store(f"s3://{s3_bucket}/p", s3_server.url, "us-east-1", timeout=5)


def put(store, name, data):
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}data/{name}", Body=data)


@pytest.mark.parametrize("size", [0, 1, s3_module.RANGE_BYTES, 3 * s3_module.RANGE_BYTES + 12345])
def test_ranges_read_back_every_byte_in_order(store, size):
    data = os.urandom(size)
    put(store, "x.tar.zst", data)
    with store.open_archive("x.tar.zst") as reader:
        got, buffer = [], bytearray(100_003)  # reads that do not line up with the ranges
        while n := reader.readinto(buffer):
            got.append(bytes(buffer[:n]))
            if chunk := reader.read(77_777):
                got.append(chunk)
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(data).digest()


def test_an_object_rewritten_while_it_is_read_is_an_error(store, monkeypatch):
    monkeypatch.setattr(s3_module, "RANGE_BYTES", 1024 * 1024)
    size = (s3_module.RANGES_HELD + 3) * s3_module.RANGE_BYTES  # more ranges than are asked for at once
    put(store, "y.tar.zst", os.urandom(size))
    with pytest.raises(BackupError, match="changed .* while reading y.tar.zst"):
        with store.open_archive("y.tar.zst") as reader:
            reader.read(1)
            put(store, "y.tar.zst", os.urandom(size))  # the later ranges would be of another object
            while reader.read(1024 * 1024):
                pass
