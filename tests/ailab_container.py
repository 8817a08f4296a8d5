"""An image built like AI-Lab's Docker Edition, from nothing, and the server container started from it.

What AI-Lab's image does and this one copies (exasol/ai-lab: create_image.py, entrypoint.py):
- user ``jupyter`` (here with a uid that is not 1000), a ``docker`` group, ``VOLUME
  /home/jupyter/notebooks``, the release's default notebooks in ``/home/jupyter/notebook-defaults``
  (``ENV NOTEBOOK_DEFAULTS``), the Jupyter venv ``/home/jupyter/jupyterenv`` holding our package;
- an entrypoint that runs as root through ``sudo --preserve-env=JUPYTER_PASSWORD`` (so only
  JUPYTER_PASSWORD and what sudo sets itself survive), ``chown -R``\\ s the notebooks folder, moves the
  ``docker`` group to the socket's gid, copies missing default notebooks and runs ``jupyter-lab
  --notebook-dir=/home/jupyter/notebooks`` as ``jupyter``, with a password and no token.

It is made of this machine's Python (the interpreter the test venv is based on), only the
distributions the server needs (and their dependencies) from the test venv, our package from this
worktree, the shared libraries all of that links to (ldd) and busybox for ``sh``. vfs copies the
whole image for every container, and helpers use the server's image, so it is kept small.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid

import requests
import docker.errors
from importlib import metadata
from packaging.requirements import Requirement

from ailab_backup_ext.client import BackupClient
from restutil import browser_login, free_port, wait_for_server

NOTEBOOKS = "/home/jupyter/notebooks"
DEFAULTS = "/home/jupyter/notebook-defaults"
VENV = "/home/jupyter/jupyterenv"
ANONYMOUS_VOLUME = re.compile(r"[0-9a-f]{64}")  # the name Docker gives a volume made from an image's VOLUME
JUPYTER_UID = 1917  # AI-Lab's is whatever useradd gave; never assume 1000
DOCKER_GID_IN_IMAGE = 998  # the entrypoint moves it to the socket's gid
PASSWORD = "ailab"
DEFAULT_NOTEBOOKS = {  # a couple of release notebooks, as the entrypoint copies them
    "start.ipynb": {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Welcome"]}]},
    "data/data_flights.ipynb": {"cells": [{"cell_type": "code", "metadata": {}, "source": ["1 + 1"],
                                           "outputs": [], "execution_count": None}]},
}
SERVER_DISTRIBUTIONS = ["jupyterlab", "jupyter_server", "ipywidgets", "ipykernel", "docker", "zstandard",
                        "requests", "tqdm", "traitlets", "tornado"]
# dependencies that are imported only when present, and would cost the image 35 MB
LEFT_OUT_DISTRIBUTIONS = {"debugpy", "jedi", "parso"}
LEFT_OUT_STDLIB = {"test", "site-packages", "ensurepip", "idlelib", "tkinter", "turtledemo", "lib2to3",
                   "pydoc_data", "__phello__", "distutils"}
# (only the interpreter's own _test* modules: anyio._core._testing is needed to open a notebook)
_LEFT_OUT_FILE = re.compile(
    r"(/tests?/|\.map$|\.pyi$|\.opt-[12]\.pyc$|/__pycache__/.*\.cpython-(?!311)|"
    r"/babel/locale-data/(?!(en|root)[._])|/nbextensions/|_tkinter|/lib-dynload/_(ctypes_)?test|xxlimited|"
    r"/zstandard/_cffi\.|/site-packages/jupyterlab/(static|galata)/|/lib-dynload/nis\.)")
SUDO_KEEPS = ("COLORS", "DISPLAY", "HOSTNAME", "KRB5CCNAME", "LS_COLORS", "PS1", "PS2", "TZ", "XAUTHORITY",
              "XAUTHORIZATION", "XDG_CURRENT_DESKTOP", "TERM")  # sudo's own env_keep list (sudo -V)

ENTRYPOINT = r'''"""Entrypoint of the AI-Lab-like test image, modelled on exasol/ai-lab's entrypoint.py, after
sudo --preserve-env=JUPYTER_PASSWORD (this image has no sudo, so it drops the environment itself)."""
import argparse, os, shutil, signal, subprocess, sys

SUDO_KEEPS = %(keeps)r
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_after_sudo(environ):
    env = {name: environ[name] for name in SUDO_KEEPS + ("JUPYTER_PASSWORD",) if name in environ}
    env.update(PATH=SECURE_PATH, HOME="/root", LOGNAME="root", USER="root", USERNAME="root", SHELL="/bin/sh",
               MAIL="/var/mail/root", SUDO_USER="root", SUDO_UID="0", SUDO_GID="0",
               SUDO_COMMAND=" ".join(sys.argv))
    return env


def read_table(path):
    with open(path) as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip()]


def write_table(path, rows):
    with open(path, "w") as f:
        f.writelines(":".join(row) + "\n" for row in rows)


def docker_group_to_socket(user, docker_group, socket="/var/run/docker.sock"):
    """As AI-Lab's GroupAccess: a group that has the socket's gid already gets the user as a
    member, else the docker group takes that gid. Returns the gid to add to the user's groups."""
    if not os.path.exists(socket):
        return None
    gid = os.stat(socket).st_gid
    groups = read_table("/etc/group")
    existing = next((g for g in groups if int(g[2]) == gid), None)
    if existing:
        existing[3] = ",".join(filter(None, existing[3].split(",") + [user]))
    else:
        next(g for g in groups if g[0] == docker_group)[2] = str(gid)
    write_table("/etc/group", groups)
    return gid


def chown_recursive(path, uid, gid):
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def copy_missing(src, dst):
    """Copy what is missing, never overwrite (AI-Lab's copy_rec: dirs 777, files 666)."""
    for root, dirs, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(root, src))
        for name in dirs:
            if not os.path.exists(os.path.join(target, name)):
                os.mkdir(os.path.join(target, name))
                os.chmod(os.path.join(target, name), 0o777)
        for name in files:
            if not os.path.exists(os.path.join(target, name)):
                shutil.copyfile(os.path.join(root, name), os.path.join(target, name))
                os.chmod(os.path.join(target, name), 0o666)


def main():
    parser = argparse.ArgumentParser()
    for option in ("--notebook-defaults", "--notebooks", "--venv", "--jupyter-server", "--user",
                   "--group", "--docker-group", "--home", "--port"):
        parser.add_argument(option)
    args = parser.parse_args()
    env = as_after_sudo(os.environ)
    users = {row[0]: row for row in read_table("/etc/passwd")}
    groups = {row[0]: row for row in read_table("/etc/group")}
    uid, gid = int(users[args.user][2]), int(groups[args.group][2])
    chown_recursive(args.notebooks, uid, gid)
    extra = docker_group_to_socket(args.user, args.docker_group)
    os.setgroups([extra] if extra is not None else [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    copy_missing(args.notebook_defaults, args.notebooks)
    env["HOME"] = args.home
    env["PATH"] = os.path.join(args.venv, "bin") + ":" + env["PATH"]
    server = subprocess.Popen([args.jupyter_server, "--notebook-dir=" + args.notebooks, "--no-browser",
                               "--allow-root", "--port=" + args.port], env=env)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    sys.exit(server.wait())


main()
''' % {"keeps": SUDO_KEEPS}


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def needed_distributions(roots=SERVER_DISTRIBUTIONS, left_out=LEFT_OUT_DISTRIBUTIONS):
    """The installed distributions ``roots`` need, minus ``left_out``: with the extras a
    requirement names (nbconvert needs ``bleach[css]``: without tinycss2 it cannot be imported),
    not the roots' own optional extras."""
    found, todo, seen = {}, [(name, ()) for name in roots], set()
    while todo:
        name, extras = todo.pop()
        if _norm(name) in left_out or (_norm(name), extras) in seen:
            continue
        seen.add((_norm(name), extras))
        dist = found.setdefault(_norm(name), metadata.distribution(name))
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in ("", *extras)):
                todo.append((requirement.name, tuple(sorted(requirement.extras))))
    return found


class Staging:
    """A root folder made file by file, then imported into Docker."""

    def __init__(self, root):
        self.root = root

    def path(self, inside):
        return os.path.join(self.root, inside.lstrip("/"))

    def copy(self, source, inside):
        target = self.path(inside)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(source) and not os.path.isabs(os.readlink(source)):
            if not os.path.lexists(target):
                os.symlink(os.readlink(source), target)
            return
        shutil.copy2(source, target)

    def write(self, inside, data, mode=0o644):
        target = self.path(inside)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
        os.chmod(target, mode)

    def mkdir(self, inside, mode=0o755, owner=None):
        target = self.path(inside)
        os.makedirs(target, exist_ok=True)
        os.chmod(target, mode)
        if owner:
            os.chown(target, *owner)

    def copy_tree(self, source, inside, skip=lambda path: False):
        for root, dirs, files in os.walk(source):
            dirs[:] = [d for d in dirs if not skip(os.path.join(root, d) + "/")]
            for name in files:
                full = os.path.join(root, name)
                if not skip(full):
                    self.copy(full, os.path.join(inside, os.path.relpath(full, source)))


def _python(staging):
    """This machine's Python as /usr/bin/python3.11 with its standard library in /usr/lib (the
    default search path of the loader, so libpython is found without its pyenv RUNPATH)."""
    prefix = sys.base_prefix
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    staging.copy(os.path.realpath(os.path.join(prefix, "bin", version)), f"/usr/bin/{version}")
    os.symlink(version, staging.path("/usr/bin/python3"))
    for lib in os.listdir(os.path.join(prefix, "lib")):
        if lib.startswith("libpython") and ".so" in lib:
            staging.copy(os.path.realpath(os.path.join(prefix, "lib", lib)), f"/usr/lib/{lib}")
    stdlib = os.path.join(prefix, "lib", version)
    staging.copy_tree(stdlib, f"/usr/lib/{version}", skip=lambda p: (
        os.path.relpath(p, stdlib).split("/")[0] in LEFT_OUT_STDLIB
        or os.path.relpath(p, stdlib).startswith("config-") or bool(_LEFT_OUT_FILE.search(p))))
    return version


def _venv(staging, version, worktree):
    """The Jupyter venv: the needed distributions' files (site-packages, share, etc, bin), the
    scripts pointed at the venv's python, and our package copied from the worktree."""
    staging.write(f"{VENV}/pyvenv.cfg", f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
    os.makedirs(staging.path(f"{VENV}/bin"))
    os.symlink(f"/usr/bin/{version}", staging.path(f"{VENV}/bin/python"))
    os.symlink("python", staging.path(f"{VENV}/bin/python3"))
    site = f"{VENV}/lib/{version}/site-packages"
    here_prefix = sys.prefix
    for name, dist in needed_distributions().items():
        for file in dist.files or []:
            full = os.path.normpath(file.locate())
            if not os.path.isfile(full) or _LEFT_OUT_FILE.search(full):
                continue
            inside = os.path.join(VENV, os.path.relpath(full, here_prefix))
            if inside.startswith(f"{VENV}/bin/"):
                with open(full, "rb") as f:
                    data = f.read()
                if data.startswith(b"#!"):
                    data = re.sub(rb"^#!\S+", f"#!{VENV}/bin/python".encode(), data, count=1)
                staging.write(inside, data, 0o755)
            else:
                staging.copy(full, inside)
    package = os.path.join(worktree, "ailab_backup_ext")
    staging.copy_tree(package, f"{site}/ailab_backup_ext", skip=lambda p: "__pycache__" in p)
    staging.copy_tree(os.path.join(worktree, "jupyter-config"), f"{VENV}/etc/jupyter")
    # the built sidebar: this worktree's when it was built here, else the one installed in the venv
    built = os.path.join(package, "labextension")
    if not os.path.isdir(built):
        built = os.path.realpath(os.path.join(here_prefix, "share/jupyter/labextensions/ailab-backup-ext"))
    staging.copy_tree(built, f"{VENV}/share/jupyter/labextensions/ailab-backup-ext")
    staging.write(f"{VENV}/bin/ailab-backup",
                  f"#!{VENV}/bin/python\nimport sys\nfrom ailab_backup_ext.cli import main\nsys.exit(main())\n", 0o755)


def _shared_libraries(staging):
    """Every library that the copied programs and extension modules load, at the same path."""
    objects = [os.path.join(root, name) for root, _, files in os.walk(staging.root) for name in files
               if ".so" in name or root.endswith("/usr/bin")]
    objects = [o for o in objects if not os.path.islink(o)]
    needed = set()
    for start in range(0, len(objects), 200):
        out = subprocess.run(["ldd", *objects[start:start + 200]], capture_output=True, text=True).stdout
        needed.update(re.findall(r"(?:=>\s*)?(/\S+) \(0x", out))
    for lib in sorted(needed):
        if lib.startswith((sys.prefix + "/", sys.base_prefix + "/")):
            continue  # staged already (libpython, wheels' own libraries beside them)
        if not os.path.exists(staging.path(lib)) and os.path.exists(lib):
            staging.copy(os.path.realpath(lib), lib)


def _system(staging):
    staging.copy(shutil.which("busybox") or "/bin/busybox", "/bin/busybox")
    applets = subprocess.run([staging.path("/bin/busybox"), "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        if applet != "busybox" and not os.path.lexists(staging.path(f"/bin/{applet}")):
            os.symlink("busybox", staging.path(f"/bin/{applet}"))
    staging.write("/etc/passwd", f"root:x:0:0:root:/root:/bin/sh\n"
                                 f"jupyter:x:{JUPYTER_UID}:{JUPYTER_UID}::/home/jupyter:/bin/sh\n")
    staging.write("/etc/group", f"root:x:0:\njupyter:x:{JUPYTER_UID}:\n"
                                f"docker:x:{DOCKER_GID_IN_IMAGE}:jupyter\n")
    staging.mkdir("/tmp", 0o1777)
    staging.mkdir("/root", 0o700)
    staging.mkdir("/var/run")
    owner = (JUPYTER_UID, JUPYTER_UID)
    staging.mkdir("/home/jupyter", 0o755, owner)
    staging.mkdir(NOTEBOOKS, 0o755, owner)
    from jupyter_server.auth import passwd
    staging.write("/home/jupyter/.jupyter/jupyter_server_config.json", json.dumps({
        "ServerApp": {"ip": "127.0.0.1", "allow_unauthenticated_access": False},
        "IdentityProvider": {"token": ""},
        "PasswordIdentityProvider": {"hashed_password": passwd(PASSWORD)},
    }))
    for folder in ("/home/jupyter/.jupyter",):
        os.chown(staging.path(folder), *owner)
        for name in os.listdir(staging.path(folder)):
            os.chown(os.path.join(staging.path(folder), name), *owner)
    for path, notebook in DEFAULT_NOTEBOOKS.items():
        staging.write(f"{DEFAULTS}/{path}", json.dumps({**notebook, "metadata": {}, "nbformat": 4,
                                                        "nbformat_minor": 5}))
    staging.write("/usr/local/bin/entrypoint.py", ENTRYPOINT)


def build_image(client, name, worktree, workdir):
    """Build the image ``name`` in ``workdir``; returns ``{"seconds": build time, "bytes": size}``."""
    started = time.monotonic()
    staging = Staging(os.path.join(workdir, "root"))
    os.makedirs(staging.root)
    version = _python(staging)
    _venv(staging, version, worktree)
    _system(staging)
    _shared_libraries(staging)
    entrypoint = ["/usr/bin/python3", "/usr/local/bin/entrypoint.py", "--notebook-defaults", DEFAULTS,
                  "--notebooks", NOTEBOOKS, "--venv", VENV, "--jupyter-server", f"{VENV}/bin/jupyter-lab",
                  "--user", "jupyter", "--group", "jupyter", "--docker-group", "docker",
                  "--home", "/home/jupyter"]
    changes = [f"VOLUME {NOTEBOOKS}", "ENTRYPOINT " + json.dumps(entrypoint), "USER root",
               f"ENV NOTEBOOK_DEFAULTS={DEFAULTS}", f"ENV NOTEBOOKS={NOTEBOOKS}", f"ENV JUPYTER_VENV={VENV}",
               "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    archive = os.path.join(workdir, "image.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(staging.root, arcname=".")
    shutil.rmtree(staging.root)
    repository, _, tag = name.partition(":")
    with open(archive, "rb") as f:
        client.api.import_image_from_data(f, repository=repository, tag=tag or "latest", changes=changes)
    os.unlink(archive)
    return {"seconds": time.monotonic() - started, "bytes": client.images.get(name).attrs["Size"]}


class AILabContainer:
    """One AI-Lab-like server container on the host network (the test engine has no bridge)."""

    def __init__(self, client, image, notebooks=None, socket=True, env=None, binds=None, args=()):
        """``notebooks``: None (Docker makes an anonymous volume, from the image's VOLUME), a
        volume name, or a host folder (a bind mount); ``binds``: {host folder: path} mounted
        read-only; ``args``: more entrypoint arguments (a later one wins)."""
        self.docker, self.image = client, image
        self.name = f"ailabtest-server-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        volumes = {}
        if notebooks:
            volumes[notebooks] = {"bind": NOTEBOOKS, "mode": "rw"}
        for folder, path in (binds or {}).items():
            volumes[folder] = {"bind": path, "mode": "ro"}
        if socket:
            volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}
        # its own hostname: on the host network it would otherwise be the host's, shared with
        # every other process on this machine
        self.container = client.containers.create(
            image, ["--port", str(self.port), *args], name=self.name, hostname=self.name,
            network_mode="host", volumes=volumes, environment=env or {})

    def start(self):
        self.container.start()
        self.wait()
        return self

    def wait(self, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            self.container.reload()
            assert self.container.status == "running", self.logs()
            try:
                requests.get(self.base + "api/status", timeout=5)
                return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"the server did not answer in {timeout} s\n{self.logs()}"
            time.sleep(0.3)

    def logs(self):
        return self.container.logs().decode(errors="replace")[-4000:]

    def errors(self):
        """The server's log lines of errors and warnings, with their tracebacks."""
        lines = self.container.logs().decode(errors="replace").splitlines()
        return "\n".join(line for line in lines if not line.startswith("[I "))[-6000:]

    @property
    def id(self):
        return self.container.id

    def exec(self, *command, user="jupyter"):
        """Run a command in the container as ``user``; returns its output (fails on an error)."""
        code, out = self.container.exec_run(list(command), user=user)
        assert code == 0, out.decode(errors="replace")
        return out.decode()

    def python(self, code):
        """Run Python in the container as the server's user, with the server's venv."""
        return self.exec(f"{VENV}/bin/python", "-c", code)

    def server_environment(self):
        """The environment of the Jupyter server process (not of ``docker exec``)."""
        return json.loads(self.exec(f"{VENV}/bin/python", "-c", (
            "import json, os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
            "    except OSError:\n"
            "        continue\n"
            "    if len(argv) > 1 and argv[1].endswith(b'/jupyter-lab'):\n"
            "        env = open(f'/proc/{pid}/environ', 'rb').read().decode().split('\\0')\n"
            "        print(json.dumps(dict(e.partition('=')[::2] for e in env if e)))\n")))

    def restart(self):
        self.container.restart(timeout=20)
        self.wait()

    def kill(self):
        self.container.kill()
        self.container.wait()

    def backup_client(self, timeout=120):
        """A BackupClient logged in with the password, as a browser is (cookie plus XSRF)."""
        backup_client = BackupClient(self.base, timeout=timeout)
        backup_client.session = browser_login(self.base, PASSWORD)
        return backup_client

    def notebooks_mount(self):
        self.container.reload()
        return next(m for m in self.container.attrs["Mounts"] if m["Destination"] == NOTEBOOKS)

    def remove(self):
        """Remove the container with its anonymous volume (named volumes stay), also when a kept
        worker still mounted it: Docker then keeps the volume, so it goes once the worker is gone."""
        try:
            self.container.reload()
            anonymous = [m["Name"] for m in self.container.attrs["Mounts"]
                         if m.get("Type") == "volume" and ANONYMOUS_VOLUME.fullmatch(m.get("Name") or "")]
        except Exception:  # noqa: BLE001 - already gone
            anonymous = []
        try:
            self.container.remove(force=True, v=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        for helper in self.docker.api.containers(all=True, filters={"label": "ailab-backup.helper=1"}):
            owner = (helper.get("Labels") or {}).get("ailab-backup.owner", "").rpartition(":")[0]
            if owner in (self.container.id, self.name):  # a job cut short by the removal
                try:
                    self.docker.api.remove_container(helper["Id"], v=True, force=True)
                except (docker.errors.NotFound, docker.errors.APIError):
                    pass  # a kept worker goes by itself once its server is gone (auto_remove; 409 meanwhile)
        deadline = time.monotonic() + 60
        for name in anonymous:
            while True:
                try:
                    self.docker.api.remove_volume(name)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:  # still in use by a worker on its way out
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
