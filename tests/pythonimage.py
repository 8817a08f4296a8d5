"""A local helper image with a Python in it, built from this machine's own interpreter (the one
the test venv is based on), stdlib only: no registry is needed, and neither our package nor
zstandard is in it, so the server must bring them (as it must when the extension was installed
with pip into a running AI-Lab container only). Kept small: the engine's vfs driver copies the
whole image for every container.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import zipfile

# left out of the stdlib: tests, GUI, installers and what only a developer needs
# compiled modules (opt-0) go in, as in any distribution's Python: without them every worker
# container compiles the stdlib it imports again (4.3 s against 0.9 s on the test machine)
SKIPPED_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                "site-packages", "dist-packages", "pydoc_data", "unittest", "distutils", "venv"}
SKIPPED_PREFIXES = ("config-",)
SKIPPED_MODULES = re.compile(r"^(_test|_tkinter|_ctypes_test|xxlimited|_xxtestfuzz|_xxsubinterpreters|"
                             r"_curses|readline|nis|ossaudiodev|spwd|audioop)")


def _shared_libs(paths):
    """The shared libraries (ldd) the given binaries need, with the loader."""
    found = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                found.add(os.path.realpath(match.group(1)) + "|" + match.group(1))
    return found


def _zip_stdlib(src, dest, zip_path):
    """The stdlib into one zip at ``zip_path`` (Python's own ``lib/pythonXY.zip``, first on its
    path, as in Python's embeddable distribution), compiled modules only; left as files under
    ``dest``: the extension modules (lib-dynload, which cannot be imported from a zip) and
    ``os.py``, the landmark by which Python finds its prefix. The test engine's vfs driver copies
    every file of the image for each container: 2.9 s for the 1,082 files of the stdlib laid out
    as files on the test machine, 0.2-0.3 s for the 87 left beside the zip."""
    tag = sys.implementation.cache_tag
    os.makedirs(os.path.dirname(zip_path), exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith(SKIPPED_PREFIXES)
                           and d not in ("lib-dynload", "__pycache__")]
            rel = os.path.relpath(dirpath, src)
            for name in filenames:
                if name.endswith((".a", ".exe", ".pyc")) or SKIPPED_MODULES.match(name):
                    continue
                full = os.path.join(dirpath, name)
                compiled = os.path.join(dirpath, "__pycache__", f"{name[:-3]}.{tag}.pyc")
                if name.endswith(".py") and os.path.exists(compiled):  # no compiling per container
                    archive.write(compiled, os.path.normpath(os.path.join(rel, name[:-3] + ".pyc")))
                else:
                    archive.write(full, os.path.normpath(os.path.join(rel, name)))
    os.makedirs(dest, exist_ok=True)
    shutil.copy2(os.path.join(src, "os.py"), os.path.join(dest, "os.py"))
    dynload = os.path.join(src, "lib-dynload")
    os.makedirs(os.path.join(dest, "lib-dynload"))
    for name in os.listdir(dynload):
        if name.endswith(".so") and not SKIPPED_MODULES.match(name):
            shutil.copy2(os.path.join(dynload, name), os.path.join(dest, "lib-dynload", name))


def build_root(root, python_at="/usr/local/bin/python3"):
    """Lay out busybox (sh) and this machine's Python at ``python_at`` (its prefix two folders up)
    under ``root``; returns the binaries' list of needed libraries."""
    base = sys.base_prefix
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    binary = os.path.realpath(os.path.join(base, "bin", version))
    prefix = os.path.dirname(os.path.dirname(python_at))
    os.makedirs(root + os.path.dirname(python_at), exist_ok=True)
    shutil.copy2(binary, root + python_at)
    stdlib = sysconfig.get_paths(vars={"installed_base": base, "base": base})["stdlib"]
    lib = os.path.join(root + prefix, "lib")
    _zip_stdlib(stdlib, os.path.join(lib, version), os.path.join(lib, version.replace(".", "") + ".zip"))
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "ls", "cat", "rm", "mv", "xargs", "sleep", "true", "dd", "mkdir", "echo", "chown"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    dynload = os.path.join(stdlib, "lib-dynload")
    binaries = [binary] + [os.path.join(dynload, n) for n in os.listdir(dynload)
                           if n.endswith(".so") and not SKIPPED_MODULES.match(n)]
    # the system libraries (not the module) of what the server brings: any distribution has them
    import zstandard

    binaries += glob.glob(os.path.join(os.path.dirname(zstandard.__file__), "backend_c.*.so"))
    for pair in _shared_libs(binaries):
        real, named = pair.split("|")
        target = root + ("/lib/x86_64-linux-gnu/" + os.path.basename(named) if named.startswith("/root")
                         else named)  # libpython of pyenv: into the loader's default path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            shutil.copy2(real, target)
    if shutil.which("strip"):  # debug symbols are most of libpython's size
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if ".so" in name and not os.path.islink(full):
                    subprocess.run(["strip", "--strip-unneeded", full], capture_output=True)


def build_image(client, repository="ailab-backup-python", python_at="/usr/local/bin/python3", changes=()):
    """Build the image (named uniquely for this run) and return its name; remove it with
    :func:`remove_image`."""
    tag = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="ailab-pyimage-") as root:
        build_root(root, python_at)
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True).stdout
    client.api.import_image_from_data(tar, repository=repository, tag=tag, changes=list(changes))
    return f"{repository}:{tag}"


def remove_image(client, name):
    try:
        client.images.remove(name, force=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
