"""Property-based round trips over generated trees, in local mode."""

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from treeutil import folder_snapshot

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
                min_size=1, max_size=12).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)
contents = st.binary(max_size=3000)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o640, 0o444])
mtimes = st.integers(min_value=0, max_value=2_000_000_000)


@st.composite
def trees(draw, depth=0):
    """{name: bytes | (mode, mtime, bytes) | dict (a folder) | ('link', target)}"""
    children = draw(st.dictionaries(names, st.one_of(
        st.tuples(modes, mtimes, contents),
        st.just("link"),
        trees(depth=depth + 1) if depth < 2 else st.tuples(modes, mtimes, contents),
    ), max_size=5))
    return children


def build(root, tree):
    os.makedirs(root, exist_ok=True)
    files = []
    for name, node in tree.items():
        path = os.path.join(root, name)
        if isinstance(node, dict):
            build(path, node)
        elif node == "link":
            continue
        else:
            mode, mtime, data = node
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
            files.append(name)
    for name, node in tree.items():
        if node == "link":  # a link to a sibling file (or a dangling one when there is none)
            os.symlink(files[0] if files else "missing", os.path.join(root, name))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), compression=st.sampled_from(["zstd", "gzip"]))
def test_backup_then_replace_into_an_empty_folder_gives_the_same_tree(tree, compression):
    with tempfile.TemporaryDirectory() as tmp:
        source, store, target = (os.path.join(tmp, n) for n in ("nb", "store", "target"))
        build(source, tree)
        config = AILabBackup(source_dir=source, store=store, compression=compression, docker_url="none")
        before = folder_snapshot(source)
        meta = BackupManager(config).create_backup()
        os.makedirs(target)
        into_target = BackupManager(AILabBackup(source_dir=target, store=store, docker_url="none"))
        into_target.restore_backup(meta["id"], "replace")
        assert folder_snapshot(target) == before
        assert folder_snapshot(source) == before  # backing up changed nothing
