"""Fixtures of the hardening tests (helpers in hardutil.py)."""

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
