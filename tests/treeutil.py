"""Snapshots of folders and volumes, so tests compare what a user would: content, mode, owner,
time and links of every entry."""

import hashlib
import io
import os
import stat
import tarfile

from ailab_backup_ext.docker_helper import owner_host

HELPER_IMAGE = os.environ.get("AILAB_BACKUP_TEST_IMAGE", "ailab-backup-helper:test")


def our_helpers(client, pid=None, host=None):
    """Helper containers made by ``pid`` (default: this process) on ``host`` (default: this one),
    not by a parallel run sharing the engine. Sparse: a full listing inspects each container,
    which blocks while Docker copies out of one."""
    owner = f"ailab-backup.owner={host or owner_host()}:{pid or os.getpid()}"
    return client.containers.list(all=True, sparse=True, filters={"label": ["ailab-backup.helper=1", owner]})


def folder_snapshot(root, with_owner=True, skip=()):
    """{relative path: (type, mode, uid, gid, mtime, sha256 or link target)} of a folder."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.relpath(os.path.join(dirpath, d), root) not in skip]
        for name in [None] + dirnames + filenames:
            full = dirpath if name is None else os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if name is None and rel != ".":
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                kind, extra = "symlink", os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, extra = "dir", None
            else:
                kind = "file"
                with open(full, "rb") as f:
                    extra = hashlib.file_digest(f, "sha256").hexdigest()
            owner = (st.st_uid, st.st_gid) if with_owner else ()
            # folder times change when entries are added; compare them for folders too
            result[rel] = (kind, stat.S_IMODE(st.st_mode), *owner, int(st.st_mtime), extra)
    return result


def volume_snapshot(client, volume, with_owner=True):
    """The same snapshot of a Docker volume, read through a created helper container."""
    helper = client.containers.create(HELPER_IMAGE, ["true"], volumes={volume: {"bind": "/v", "mode": "ro"}})
    try:
        chunks, _ = helper.get_archive("/v")
        data = io.BytesIO(b"".join(chunks))
    finally:
        helper.remove(force=True)
    result = {}
    links = {}
    with tarfile.open(fileobj=data) as tar:
        for info in tar:
            rel = info.name.partition("/")[2] or "."
            if info.issym():
                kind, extra = "symlink", info.linkname
            elif info.isdir():
                kind, extra = "dir", None
            elif info.islnk():
                kind, extra = "file", links[info.linkname]
            else:
                kind = "file"
                extra = hashlib.sha256(tar.extractfile(info).read()).hexdigest()
                links[info.name] = extra
            owner = (info.uid, info.gid) if with_owner else ()
            result[rel] = (kind, info.mode & 0o7777, *owner, int(info.mtime), extra)
    return result


def run_in_volume(client, volume, script):
    """Run a shell script in a helper container with the volume at /v (to make or change data)."""
    out = client.containers.run(HELPER_IMAGE, ["sh", "-c", script], volumes={volume: {"bind": "/v", "mode": "rw"}},
                                remove=True, network_disabled=True)
    return out.decode()


def fill_with_random_files(client, volume, count, mib=2):
    """``count`` files of ``mib`` MiB of random bytes (big1.bin, ...) and a.txt in the volume: many
    files, so that a worker's progress moves file by file and a stop lands midway."""
    run_in_volume(client, volume, f"cd /v && for i in $(seq {count}); do dd if=/dev/urandom of=big$i.bin bs=1M "
                                  f"count={mib} 2>/dev/null; done && echo a > a.txt")


def deep_path(root, total_bytes):
    """Folders below ``root`` (made relative to it, as the kernel allows) until the path from
    root exceeds ``total_bytes``; returns the relative path."""
    fd = os.open(root, os.O_RDONLY)
    parts = []
    try:
        while len("/".join(parts).encode()) <= total_bytes:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            parts.append(name)
        with open(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("deep")
    finally:
        os.close(fd)
    return "/".join(parts + ["deep.txt"])
