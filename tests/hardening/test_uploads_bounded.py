"""Uploads, bounded (issue 18, items 3, 5, 6 and 12), against the real Jupyter server: so many at
once, a body that trickles in is cut off, one that cannot fit is refused before it is received,
what an upload carries into the store's metadata is capped, a check whose client went away stops
and leaves nothing behind, and checks never hold the threads that status and listings use."""

import asyncio
import json
import os
import threading

import pytest

from ailab_backup_ext.archive import reader as archive_reader
from ailab_backup_ext.handlers import SETTINGS_KEY, UPLOADS_KEY
from hardutil import our_spools
from hostile import manifest_member, tar_body
from restutil import call
from test_bad_input import M, compress, good_members


def valid_upload(files=0, tweak=None, noise=0):
    members = good_members() + [M(f"notebooks/f{i}.txt", data=b"%d" % i) for i in range(files)]
    if noise:
        members.append(M("notebooks/noise.bin", data=os.urandom(noise)))
    return compress(tar_body(members + [manifest_member(members, tweak)]) + b"\0" * 1024, "zstd")


@pytest.fixture
def server(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, tmp_path):
    """The test server: its manager's settings (to change), where uploads spool, and raw uploads."""

    class Server:
        config = jp_serverapp.web_app.settings[SETTINGS_KEY].config
        settings = jp_serverapp.web_app.settings
        data_dir = tmp_path / "store" / "data"
        meta_dir = tmp_path / "store" / "meta"

        async def open_upload(self, length):
            """An upload whose headers are sent, its body not yet: (reader, writer)."""
            reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
            writer.write((
                f"POST {jp_base_url}ailab/backup/upload HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                f"Authorization: token {jp_serverapp.identity_provider.token}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode())
            await writer.drain()
            return reader, writer

        def spools(self):
            return our_spools(str(self.data_dir))

        def backups(self):
            return sorted(os.listdir(self.meta_dir)) if self.meta_dir.exists() else []

    os.makedirs(Server.data_dir, exist_ok=True)
    return Server()


async def reply_of(reader, timeout=30):
    """(status, JSON body) of the one reply on a raw connection."""
    raw = await asyncio.wait_for(reader.read(), timeout)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


async def test_uploads_past_the_cap_are_refused_with_429(server, jp_fetch):
    server.config.max_concurrent_uploads = 1
    _, held = await server.open_upload(1 << 20)
    held.write(b"\x28\xb5")  # a body under way
    await held.drain()
    assert await wait_until_async(lambda: server.settings.get(UPLOADS_KEY))
    code, body, _ = await call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=None)
    assert code == 429, body
    assert "max_concurrent_uploads" in body["message"] and "Try again" in body["message"]
    held.close()  # the first client goes away: its slot is given back
    assert await wait_until_async(lambda: not server.settings.get(UPLOADS_KEY))
    await call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=201)
    assert not server.spools()


async def test_a_body_that_trickles_in_is_cut_off_and_leaves_nothing(server):
    server.config.upload_stall_seconds = 1
    reader, writer = await server.open_upload(1 << 20)

    async def trickle():
        for _ in range(100):
            writer.write(b"\0")
            await writer.drain()
            await asyncio.sleep(0.2)

    trickling = asyncio.ensure_future(trickle())
    try:
        code, body = await reply_of(reader, timeout=20)
    finally:
        trickling.cancel()
        writer.close()
    assert code == 408, body
    assert "upload_stall_seconds" in body["message"] and "nothing was kept" in body["message"]
    assert await wait_until_async(lambda: not server.spools() and not server.settings.get(UPLOADS_KEY))
    assert server.backups() == []


async def test_an_upload_that_cannot_fit_is_refused_before_it_is_received(server):
    server.config.max_upload_bytes = 0  # no size limit: only the free space stops it
    free = os.statvfs(server.data_dir).f_bavail * os.statvfs(server.data_dir).f_frsize
    reader, writer = await server.open_upload(free + (1 << 30))
    try:
        code, body = await reply_of(reader)
    finally:
        writer.close()
    assert code == 507, body
    assert "MB are free" in body["message"] and "Free space" in body["message"]
    assert not server.spools() and server.backups() == []
    assert await wait_until_async(lambda: not server.settings.get(UPLOADS_KEY))


async def test_what_an_upload_carries_into_the_store_is_capped(server, jp_fetch):
    def bloat(doc):
        doc["label"] = "L" * 1_500_000
        doc["source"] = {"type": "folder", "name": "/n/" + "x" * 500_000, "extra": ["y"] * 10_000}
        doc["skipped"] = [{"path": f"p{i}", "reason": "fifo"} for i in range(20_000)]
        doc["created"] = "2026-01-01T00:00:00Z" + " " * 100_000

    _, meta, _ = await call(jp_fetch, "upload", method="POST", body=valid_upload(tweak=bloat), expect=201)
    [name] = server.backups()
    assert os.path.getsize(server.meta_dir / name) < 300_000  # was 3 MB, read by every listing
    assert len(meta["label"]) <= 200 and len(meta["source"]["name"]) <= 1024 and "extra" not in meta["source"]
    assert meta["created"] == "2026-01-01T00:00:00Z"
    _, shown, _ = await call(jp_fetch, meta["id"])
    skipped = shown["manifest"]["skipped"]
    assert len(skipped) == 101 and "19900 more" in skipped[-1]["reason"]


@pytest.fixture
def gated_check(monkeypatch):
    """Upload checks that wait, at their first read of the archive, until ``gate`` is set (a
    slow disk); ``started`` counts the checks that got there, ``reads`` the reads after the gate."""
    gate, started, reads, lock = threading.Event(), [0], [0], threading.Lock()
    read = archive_reader._CountingReader.read

    def gated_read(self, size=-1):
        if not getattr(self, "gated", False):
            self.gated = True
            with lock:
                started[0] += 1
            gate.wait(60)
        with lock:
            reads[0] += 1
        return read(self, size)

    monkeypatch.setattr(archive_reader._CountingReader, "read", gated_read)
    yield gate, started, reads
    gate.set()


async def test_a_check_whose_client_went_away_stops_and_leaves_nothing(server, gated_check, caplog):
    gate, started, reads = gated_check
    data = valid_upload(files=200, noise=16 << 20)  # 16 reads of 1 MiB to check it all
    reader, writer = await server.open_upload(len(data))
    writer.write(data)
    await writer.drain()
    assert await wait_until_async(lambda: started[0] == 1)  # the whole body is in, the check runs
    writer.close()  # the client gives up
    await asyncio.sleep(0.5)  # the server sees the connection close
    gate.set()
    # the check stops: its thread is released, no hashing thread is left, nothing is kept
    assert await wait_until_async(lambda: not any(t.name.startswith("ailab-backup-hash") for t in threading.enumerate()))
    assert await wait_until_async(lambda: not server.spools() and not server.settings.get(UPLOADS_KEY))
    await asyncio.sleep(0.5)
    assert server.backups() == []
    assert reads[0] <= 2, f"the check read on: {reads[0]} reads after its client went away"
    assert not [r for r in caplog.records if r.levelname == "ERROR" or " 500 " in r.getMessage()]


async def test_status_and_listing_answer_while_checks_fill_more_threads_than_asyncio_has(server, jp_fetch, gated_check):
    """More uploads being checked than asyncio's default pool has threads (what status and
    listings run in): they wait in the checks' own pool, and status still answers."""
    gate, started, _ = gated_check
    count = min(32, (os.cpu_count() or 1) + 4) + 1
    server.config.max_concurrent_uploads = count
    uploads = [asyncio.ensure_future(call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=None,
                                          request_timeout=120)) for _ in range(count)]
    assert await wait_until_async(lambda: started[0] >= min(count, server.config.check_threads))
    await asyncio.sleep(0.5)  # every upload has its body in and waits for its check
    _, status, _ = await asyncio.wait_for(call(jp_fetch, "status"), 10)
    assert status["mode"] == "local"
    _, listing, _ = await asyncio.wait_for(call(jp_fetch), 10)
    assert listing["backups"] == []
    gate.set()
    codes = [code for code, _, _ in await asyncio.gather(*uploads)]
    assert codes == [201] * count
    assert len(server.backups()) == count


async def wait_until_async(condition, timeout=20, step=0.05):
    """wait_until for the test's event loop, which the in-process server shares."""
    for _ in range(int(timeout / step)):
        if condition():
            return True
        await asyncio.sleep(step)
    return bool(condition())

