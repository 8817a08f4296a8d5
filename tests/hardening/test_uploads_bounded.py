"""Uploads, bounded (issue 18, items 3, 5, 6 and 12), against the real Jupyter server: so many at
once, a body that trickles in is cut off, one that cannot fit is refused before it is received,
what an upload carries into the store's metadata is capped, a check whose client went away stops
and leaves nothing behind, and checks never hold the threads that status and listings use."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ailab_backup_ext.handlers import SETTINGS_KEY, UPLOADS_KEY
from ailab_backup_ext.archive import reader as archive_reader
from hardutil import check_processes, our_spools, wait_until
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

        async def open_upload(self, length=None):
            """An upload whose headers are sent, its body not yet: (reader, writer). Without a
            ``length``, the body is to be sent in chunks (Transfer-Encoding: chunked)."""
            reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
            framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
            writer.write((
                f"POST {jp_base_url}ailab/backup/upload HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                f"Authorization: token {jp_serverapp.identity_provider.token}\r\n"
                f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n").encode())
            await writer.drain()
            return reader, writer

        def spools(self):
            return our_spools(str(self.data_dir))

        def backups(self):
            return sorted(os.listdir(self.meta_dir)) if self.meta_dir.exists() else []

    os.makedirs(Server.data_dir, exist_ok=True)
    return Server()


async def reply_of(reader, timeout=30):
    """(status, JSON body) of the one reply on a raw connection (kept open or not)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), None)
    body = await asyncio.wait_for(reader.read() if length is None else reader.readexactly(length), timeout)
    return int(lines[0].split()[1]), json.loads(body) if body else None


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


async def test_a_chunked_upload_that_fills_the_disk_gets_507_and_leaves_nothing(small_tmpfs, server, caplog):
    """No Content-Length to check beforehand: the disk the spool is on (a real 20 MB tmpfs) fills
    up while the body comes in."""
    assert str(server.data_dir).startswith(str(small_tmpfs))
    reader, writer = await server.open_upload()
    try:
        for _ in range(40):  # 40 MiB, twice what fits
            chunk = os.urandom(1 << 20)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed the connection before the end of the body
    try:
        code, body = await reply_of(reader)
    finally:
        writer.close()
    assert code == 507, body
    assert "full" in body["message"] and "nothing was kept" in body["message"] and "Free space" in body["message"]
    assert await wait_until_async(lambda: not server.spools() and not server.settings.get(UPLOADS_KEY))
    assert server.backups() == []
    stats = os.statvfs(small_tmpfs)
    assert stats.f_bfree == stats.f_blocks  # not a byte of the partial body is left
    assert not [r for r in caplog.records if r.exc_info or " 500 " in r.getMessage()]


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


class CheckFreezer(list):
    """Once started, freezes (SIGSTOP) the test server's check processes as soon as they appear:
    a check that takes as long as the test needs. It lists them; ``thaw()`` lets them go on."""

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._freeze, daemon=True)

    def start(self):
        self._watcher.start()
        return self

    def _freeze(self):
        while not self._stop.is_set():
            for pid in check_processes():
                if pid not in self:
                    os.kill(pid, signal.SIGSTOP)
                    self.append(pid)
            time.sleep(0.005)

    def thaw(self):
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        for pid in self:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def frozen_checks():
    freezer = CheckFreezer()
    yield freezer
    freezer.thaw()


async def test_a_check_whose_client_went_away_stops_and_leaves_nothing(server, jp_fetch, frozen_checks, caplog):
    frozen_checks.start()
    data = valid_upload(files=200, noise=16 << 20)
    reader, writer = await server.open_upload(len(data))
    writer.write(data)
    await writer.drain()
    assert await wait_until_async(lambda: frozen_checks)  # the whole body is in, its check runs
    [check] = frozen_checks
    writer.close()  # the client gives up
    # the check is stopped though it is frozen (it is killed, not asked), and nothing is kept
    assert await wait_until_async(lambda: not os.path.exists(f"/proc/{check}"))
    assert await wait_until_async(lambda: not server.spools() and not server.settings.get(UPLOADS_KEY))
    await asyncio.sleep(0.5)
    assert server.backups() == []
    assert not [r for r in caplog.records if r.levelname == "ERROR" or " 500 " in r.getMessage()]
    frozen_checks.thaw()
    # its place in the pool was given back: the next upload is checked and stored
    await call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=201, request_timeout=60)
    assert len(server.backups()) == 1


async def test_status_and_listing_answer_while_checks_fill_more_threads_than_asyncio_has(server, jp_fetch, frozen_checks):
    """More uploads being checked than asyncio's default pool has threads (what status and
    listings run in): they wait for the checks' own processes, at most check_processes at a
    time, and status still answers."""
    frozen_checks.start()
    server.config.check_processes = 2
    count = min(32, (os.cpu_count() or 1) + 4) + 1
    server.config.max_concurrent_uploads = count
    uploads = [asyncio.ensure_future(call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=None,
                                          request_timeout=120)) for _ in range(count)]
    assert await wait_until_async(lambda: len(frozen_checks) == 2)
    await asyncio.sleep(1)  # every upload has its body in and waits for its check
    assert len(frozen_checks) == 2, "more checks ran at once than AILabBackup.check_processes"
    _, status, _ = await asyncio.wait_for(call(jp_fetch, "status"), 10)
    assert status["mode"] == "local"
    _, listing, _ = await asyncio.wait_for(call(jp_fetch), 10)
    assert listing["backups"] == []
    frozen_checks.thaw()
    codes = [code for code, _, _ in await asyncio.gather(*uploads)]
    assert codes == [201] * count
    assert len(server.backups()) == count


async def test_long_checks_run_in_child_processes_not_in_the_server(server, jp_fetch, jp_root_dir, monkeypatch):
    """Item 6: an upload's check and a restore preview read the archive in a check process; the
    server itself (whose interpreter its event loop needs) reads none of it."""
    reads_here = []
    read = archive_reader._CountingReader.read
    monkeypatch.setattr(archive_reader._CountingReader, "read", lambda self, *a: reads_here.append(1) or read(self, *a))
    (jp_root_dir / "a.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    _, meta, _ = await call(jp_fetch, "upload", method="POST", body=valid_upload(files=3), expect=201)
    assert meta["file_count"] == 5
    _, plan, _ = await call(jp_fetch, meta["id"], "restore", method="POST", body={"mode": "merge", "dry_run": True})
    assert [i["path"] for i in plan["overwritten"]] == ["a.ipynb"] and plan["overwritten"][0]["notebook"]
    assert {i["path"] for i in plan["added"]} >= {"f0.txt", "sub/new.txt"}
    assert reads_here == [], "the server process read the archive itself"
    assert check_processes() == []  # none left once done


async def test_a_preview_whose_client_went_away_stops(server, jp_fetch, jp_root_dir, jp_http_port, jp_base_url,
                                                      jp_serverapp, frozen_checks):
    _, meta, _ = await call(jp_fetch, "upload", method="POST", body=valid_upload(), expect=201)
    frozen_checks.start()
    body = json.dumps({"mode": "replace", "dry_run": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    writer.write((
        f"POST {jp_base_url}ailab/backup/{meta['id']}/restore HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
        f"Authorization: token {jp_serverapp.identity_provider.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    assert await wait_until_async(lambda: frozen_checks)
    [preview] = frozen_checks
    writer.close()
    assert await wait_until_async(lambda: not os.path.exists(f"/proc/{preview}"))
    frozen_checks.thaw()
    # the preview's place and the manager's one-operation lock were given back
    _, plan, _ = await call(jp_fetch, meta["id"], "restore", method="POST", body={"mode": "merge", "dry_run": True},
                            request_timeout=60)
    assert "a.ipynb" in {i["path"] for i in plan["added"]}


def test_a_check_stops_when_its_server_dies(tmp_path):
    """A check process whose server was killed (nobody to read its answer) ends by itself."""
    fifo = tmp_path / "upload"
    os.mkfifo(fifo)  # its check blocks on reading it for ever
    server = subprocess.Popen([sys.executable, "-c", (
        "import sys; from ailab_backup_ext.checker import config_values, run_in_child; "
        "from ailab_backup_ext.config import AILabBackup; "
        "run_in_child('check_upload', {'path': sys.argv[1]}, config_values(AILabBackup()), '/')"), str(fifo)])
    try:
        assert wait_until(lambda: check_processes(server.pid), 30, 0.05)
        [check] = check_processes(server.pid)
    finally:
        server.kill()
        server.wait()
    assert wait_until(lambda: not os.path.exists(f"/proc/{check}") or _state(check) == "Z", 10, 0.1), \
        "the check of a dead server still runs"


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


async def wait_until_async(condition, timeout=20, step=0.05):
    """wait_until for the test's event loop, which the in-process server shares."""
    for _ in range(int(timeout / step)):
        if condition():
            return True
        await asyncio.sleep(step)
    return bool(condition())

