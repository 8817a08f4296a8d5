"""A local restore, backup, import or export run as root never follows a folder that another
user swaps for a symlink midway (issue 18, item 8).

A second process, as the uid that owns the notebooks folder, swaps a folder in it for a symlink
to a folder outside (root's, holding a root-owned 0600 file) and back, in a loop, while root
restores, backs up, imports and exports. Operations may fail ("replaced while it was written"),
but nothing outside the folder changes and no backup holds what lies outside."""

import os
import subprocess
import sys
import time

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError
from test_restore_safety import backed_up_paths
from treeutil import folder_snapshot

USER = 1000
SECRET = "root-only-secret"
ROUNDS_SECONDS = 6

SWAPPER = r"""
import os, sys, time
folder, target, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(folder)  # held from here: the folder's parents need not be open to this user
os.setgroups([]); os.setgid(uid); os.setuid(uid)
swaps = 0
deadline = time.monotonic() + 120
print("ready", flush=True)
while time.monotonic() < deadline:
    for name in ("sub", "sub/deeper"):
        aside = f"{name}.{swaps}"
        try:
            os.rename(name, aside)
            os.symlink(target, name)
            swaps += 1
            time.sleep(0.0005)
            if os.path.islink(name):
                os.unlink(name)
            os.rename(aside, name)
        except OSError:
            pass  # the restore wrote there meanwhile: leave it, swap again
        if os.path.exists("stop-swapping"):
            print(swaps, flush=True)
            sys.exit(0)
"""


def make_tree(folder):
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "top.txt").write_text("top")
    (folder / "sub" / "file.txt").write_text("in sub")
    (folder / "sub" / "deeper" / "y.txt").write_text("deeper")
    os.chmod(folder / "sub", 0o755)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.chown(name, USER, USER)


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir(mode=0o700)
    (folder / SECRET).write_text("only root may read this")
    os.chmod(folder / SECRET, 0o600)
    (folder / "deeper").mkdir(mode=0o700)
    return folder


class Swapper:
    """The other user's process, swapping folders of ``folder`` for links to ``target``."""

    def __init__(self, folder, target):
        self.folder = folder
        self.process = subprocess.Popen([sys.executable, "-c", SWAPPER, str(folder), str(target), str(USER)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self):
        (self.folder / "stop-swapping").touch()
        out, _ = self.process.communicate(timeout=30)
        os.unlink(self.folder / "stop-swapping")
        for name in ("sub/deeper", "sub"):  # a swap left midway: the link goes
            if (self.folder / name).is_symlink():
                os.unlink(self.folder / name)
        return int(out.strip() or 0)


def repeat(seconds, action):
    """Run ``action`` again and again for ``seconds``; return (successes, failures)."""
    ok = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            action()
            ok += 1
        except (BackupError, OSError):
            failed += 1
    return ok, failed


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("the race is run as root, as 'sudo ailab-backup restore' would")


def test_restore_and_backup_never_follow_a_folder_swapped_for_a_link(as_root, tmp_path, outside):
    folder = tmp_path / "nb"
    folder.mkdir()
    make_tree(folder)
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(tmp_path / "store"),
                                        docker_url="none", safety_backup=False))
    backup = manager.create_backup()
    kept = folder_snapshot(outside)
    swapper = Swapper(folder, outside)
    backups = []
    try:
        restored = repeat(ROUNDS_SECONDS, lambda: (manager.restore_backup(backup["id"], "merge"),
                                                   manager.restore_backup(backup["id"], "replace")))
        backed_up = repeat(ROUNDS_SECONDS / 2, lambda: backups.append(manager.create_backup()["id"]))
    finally:
        swaps = swapper.stop()
    assert swaps > 100, swaps
    assert sum(restored) > 20 and sum(backed_up) > 5, (restored, backed_up)
    assert folder_snapshot(outside) == kept  # no mode, owner, time or content changed outside
    for backup_id in backups:
        assert not [p for p in backed_up_paths(manager, backup_id) if SECRET in p or p.endswith("deeper/deeper")]
    # and once nobody swaps, the restore is whole again
    manager.restore_backup(backup["id"], "replace")
    assert (folder / "sub" / "deeper" / "y.txt").read_text() == "deeper"
    assert sorted(os.listdir(folder)) == ["sub", "top.txt"]


def test_import_and_export_never_follow_a_folder_swapped_for_a_link(as_root, tmp_path, outside):
    folder, exported, imported = tmp_path / "nb", tmp_path / "export", tmp_path / "import"
    for path in (folder, exported / "notebooks", imported / "notebooks"):
        path.mkdir(parents=True)
    make_tree(folder)
    make_tree(exported / "notebooks")
    make_tree(imported / "notebooks")
    manager = BackupManager(AILabBackup(source_dir=str(folder), store=str(tmp_path / "store"), docker_url="none"))
    kept = folder_snapshot(outside)

    swapper = Swapper(exported / "notebooks", outside)
    try:
        exports = repeat(ROUNDS_SECONDS, lambda: manager.export_dir(str(exported)))
    finally:
        swapper.stop()
    swapper = Swapper(imported / "notebooks", outside)
    try:
        # merge: whatever a walk followed would stay in the folder
        imports = repeat(ROUNDS_SECONDS, lambda: manager.import_dir(str(imported), "merge"))
    finally:
        swapper.stop()
    assert sum(exports) > 5 and sum(imports) > 5, (exports, imports)
    assert folder_snapshot(outside) == kept
    # what was imported never came from outside
    assert not [p for p in folder_snapshot(folder) if SECRET in p]
