"""Fixtures of the hardening tests (helpers in hardutil.py)."""

import os
import subprocess

import pytest

from hardutil import DockerProxy, our_helpers, remove_our_helpers, wait_until


@pytest.fixture
def docker_proxy(tmp_path):
    """A Docker 'daemon' at ``proxy.url`` that the test can stop and start again."""
    proxy = DockerProxy(tmp_path / "docker.sock")
    proxy.start()
    yield proxy
    proxy.kill()


@pytest.fixture
def make_volume(make_volume, docker_client):
    """tests/conftest.py's, but the volumes go only once no helper of ours holds them: a helper
    still being removed (a killed one) would keep its volume, and that removal fails silently.
    Helpers still there after 15 s are removed, and the test errors."""
    yield make_volume
    if not wait_until(lambda: not our_helpers(docker_client), 15, 0.2):
        left = [c.id[:12] for c in our_helpers(docker_client)]
        remove_our_helpers(docker_client)
        pytest.fail(f"helper containers left behind: {left}")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 20 MB tmpfs at tmp_path/store (we are root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "store"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
