import os
import subprocess
import sys
import types
import uuid
import warnings

from jupyter_server.auth import passwd

import pytest

import ailab_backup_ext
from ailab_backup_ext.client import BackupClient
from ailab_container import AILabContainer, build_image
from restutil import free_port, server_config, wait_for_server
from treeutil import HELPER_IMAGE, our_helpers

pytest_plugins = ["pytest_jupyter.jupyter_server"]


def _docker():
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.version()
        return client, None
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        return None, exc


_CLIENT, _WHY = _docker()


@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine (CI starts it). Skips, loudly, only when no engine can run."""
    if _CLIENT is None:
        pytest.skip(f"NO DOCKER ENGINE: Docker tests skipped ({_WHY}). Run scripts/test.sh as root.")
    try:
        _CLIENT.images.get(HELPER_IMAGE)
    except Exception:
        pytest.fail(f"The helper image {HELPER_IMAGE} is missing: scripts/test.sh builds it.")
    return _CLIENT


@pytest.fixture(scope="session")
def python_image(docker_client):
    """A helper image with this machine's Python (stdlib only: no package of ours, no zstandard),
    built from nothing for this session under a unique name, removed at its end."""
    import pythonimage

    name = pythonimage.build_image(docker_client)
    yield name
    pythonimage.remove_image(docker_client, name)


@pytest.fixture(scope="session")
def ailab_like_image(docker_client):
    """Built like AI-Lab's image: the Python at the server's own interpreter path, an entrypoint
    that starts a server, user 1000 by default, our package not in it."""
    import pythonimage

    name = pythonimage.build_image(
        docker_client, "ailab-backup-ailablike", python_at=sys.executable,
        changes=[f'ENTRYPOINT ["{sys.executable}", "-m", "http.server", "8888"]', "USER 1000"])
    yield name
    pythonimage.remove_image(docker_client, name)


@pytest.fixture
def make_volume(docker_client):
    """Creates Docker volumes with unique names and removes them after the test."""
    created = []

    def make(prefix="ailabtest"):
        volume = docker_client.volumes.create(f"{prefix}-{uuid.uuid4().hex[:10]}")
        created.append(volume)
        return volume.name

    yield make
    for volume in created:
        # a helper that still holds it (kept by a server a test killed, removed only when a server
        # of this host starts again) would keep the volume: those go first
        for holder in docker_client.containers.list(
                all=True, sparse=True, filters={"volume": volume.name, "label": "ailab-backup.helper=1"}):
            try:
                docker_client.api.remove_container(holder.id, force=True, v=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        try:
            volume.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


@pytest.fixture(autouse=True)
def _no_helper_left(request):
    """Every test that touched Docker must leave no helper container behind."""
    yield
    if _CLIENT is not None and "docker_client" in request.fixturenames:
        if "jp_serverapp" in request.fixturenames:
            # the in-process server keeps a listing helper until it stops, and pytest-jupyter
            # stops it only after this check: remove it as the server's stop does
            from jupyter_server.serverapp import ServerApp

            from ailab_backup_ext.handlers import SETTINGS_KEY

            web_app = getattr(ServerApp.instance(), "web_app", None)
            manager = web_app.settings.get(SETTINGS_KEY) if web_app is not None else None
            if manager is not None and manager.docker is not None:
                manager.docker.close()
        left = our_helpers(_CLIENT)
        assert not left, f"helper containers left behind: {[c.id[:12] for c in left]}"


def _default_store_exists():
    return bool(_CLIENT.volumes.list(filters={"name": "^ailab-backups$"}))


@pytest.fixture(autouse=True)
def _default_store_untouched():
    """No test makes the default store volume, ailab-backups: on a developer's machine it may be
    a user's real store (tests use stores of their own)."""
    if _CLIENT is None or _default_store_exists():
        yield
        return
    yield
    if _default_store_exists():
        _CLIENT.volumes.get("ailab-backups").remove(force=True)
        warnings.warn("the test created the default store volume ailab-backups (removed)")


@pytest.fixture(autouse=True)
def _helper_image_env(monkeypatch):
    monkeypatch.setenv("AILAB_BACKUP_HELPER_IMAGE", HELPER_IMAGE)
    for name in ("VOLUME", "DIR", "AILAB_BACKUP_VOLUME", "AILAB_BACKUP_STORE", "AILAB_BACKUP_SOURCE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def jp_server_config(tmp_path):
    """The in-process test server: the extension in local mode (its root folder), a store in
    tmp_path, Jupyter's auth required everywhere. Tests that need more override this."""
    return server_config(store=str(tmp_path / "store"), docker_url="none")


@pytest.fixture
def volumes(make_volume):
    """A notebooks volume and a store volume, removed after the test."""
    return make_volume(), make_volume("ailabstore")


@pytest.fixture
def password_only_server(tmp_path):
    """A real `jupyter server` as AI-Lab runs it: a password ('ailab'), no token."""
    (tmp_path / "nb").mkdir()
    runtime = tmp_path / "runtime"
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("AILAB_BACKUP_TOKEN", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--ServerApp.token=", f"--PasswordIdentityProvider.hashed_password={passwd('ailab')}",
         f"--ServerApp.root_dir={tmp_path / 'nb'}", "--ServerApp.allow_unauthenticated_access=False",
         f"--AILabBackup.store={tmp_path / 'store'}", "--AILabBackup.docker_url=none", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(server, base + "api/status", 20)
        yield base, runtime
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def client(jp_serverapp, jp_fetch, jp_http_port, jp_base_url):
    """A BackupClient of the test server (jp_fetch: its http_server_client is what makes the
    server listen on jp_http_port)."""
    return BackupClient(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", token=jp_serverapp.identity_provider.token)


@pytest.fixture(scope="session")
def ailab_image(docker_client, tmp_path_factory):
    """An image like AI-Lab's Docker Edition with the package under test in its venv (see
    tests/ailab_container.py), built once per session under a run-unique name, removed at the end.
    ``.name``, ``.seconds`` (build time) and ``.bytes`` (size)."""
    name = f"ailabtest-image-{uuid.uuid4().hex[:10]}:latest"
    worktree = os.path.dirname(os.path.dirname(os.path.abspath(ailab_backup_ext.__file__)))
    built = build_image(docker_client, name, worktree, str(tmp_path_factory.mktemp("ailab-image")))
    print(f"\n{name}: {built['bytes'] / 1e6:.0f} MB, built in {built['seconds']:.0f} s")
    yield types.SimpleNamespace(name=name, **built)
    try:
        docker_client.images.remove(name, force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


@pytest.fixture
def ailab_server(docker_client, ailab_image, make_volume):
    """Starts AI-Lab-like server containers, ``ailab_server(notebooks=None or a volume name or a
    host folder, socket=True, env={...})``, and removes them (with their anonymous volumes) after
    the test. (It asks for make_volume so that the containers are removed first: a volume still
    mounted by one cannot be removed, and was left behind.)"""
    started = []

    def start(image=None, **kwargs):
        server = AILabContainer(docker_client, image or ailab_image.name, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.remove()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (rclone serve s3) for the whole run; tests take a bucket each."""
    from s3util import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3") / "root")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A new, empty bucket of the session's S3 server, with its keys in the environment."""
    from s3util import s3_env

    s3_env(monkeypatch, s3_server)
    return s3_server.bucket()
