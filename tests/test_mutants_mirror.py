"""A store with a second copy (``AILabBackup.copy_to``) as a user meets it, with two folder stores:
fast and Docker-free, so the mutation run (tests/MUTANTS.md) checks stores/mirror.py with them.
The S3 second store is tested for real in test_s3.py."""

import json
import os

import pytest

from ailab_backup_ext.config import AILabBackup
from ailab_backup_ext.core import BackupManager
from ailab_backup_ext.errors import BackupError, NotFound
from ailab_backup_ext.stores.folder import FolderStore
from ailab_backup_ext.stores.mirror import MirroredStore
from treeutil import folder_snapshot


class DownFolderStore(FolderStore):
    """A second store that can be made unreachable, failing as the S3 store does (BackupError)."""

    down = False

    def _fail(self):
        if self.down:
            raise BackupError("The second store is unreachable (test).")

    def read_all_meta(self):
        self._fail()
        return super().read_all_meta()

    def spool(self, name):
        self._fail()
        return super().spool(name)

    def remove_stale_spools(self):
        self._fail()
        return super().remove_stale_spools()


def _source(tmp_path):
    nb = tmp_path / "nb"
    (nb / "sub").mkdir(parents=True)
    (nb / "a.ipynb").write_text('{"cells": []}')
    (nb / "sub" / "b.txt").write_text("b\n")
    return nb


def _manager(tmp_path, **settings):
    return BackupManager(AILabBackup(docker_url="none", source_dir=str(tmp_path / "nb"), store=str(tmp_path / "here"),
                                     copy_to=str(tmp_path / "there"), **settings))


def _held(folder):
    """The backup ids a store folder holds: (ids with metadata, archive names)."""
    meta = sorted(n[:-5] for n in os.listdir(folder / "meta")) if (folder / "meta").is_dir() else []
    data = sorted(n for n in os.listdir(folder / "data") if not n.startswith(".")) if (folder / "data").is_dir() else []
    return meta, data


def test_a_backup_lives_in_both_folders_and_each_copy_can_be_deleted_and_restored(tmp_path):
    nb = _source(tmp_path)
    before = folder_snapshot(nb)
    manager = _manager(tmp_path, safety_backup=False)
    meta = manager.create_backup(label="twice")
    here, there = tmp_path / "here", tmp_path / "there"
    assert _held(here) == _held(there) == ([meta["id"]], [meta["archive"]])
    assert (here / "data" / meta["archive"]).read_bytes() == (there / "data" / meta["archive"]).read_bytes()
    # the copy's metadata is the backup's own, without what a listing adds
    copied = json.loads((there / "meta" / (meta["id"] + ".json")).read_text())
    assert copied["id"] == meta["id"] and copied["label"] == "twice" and copied["sha256"] == meta["sha256"]
    assert not {"locations", "where", "copy"} & set(copied)
    listed = manager.get_backup(meta["id"])
    assert listed["where"] == "both" and listed["locations"] == [str(here), str(there)] and "copy" not in listed
    assert manager.status()["store"]["copy_to"] == {"type": "folder", "name": str(there)}

    manager.delete_backup(meta["id"], "here")  # only the copy there is left, and it restores
    assert _held(here) == ([], []) and _held(there) == ([meta["id"]], [meta["archive"]])
    assert manager.get_backup(meta["id"])["where"] == str(there)
    (nb / "a.ipynb").write_text("changed")
    (nb / "new.txt").write_text("new")
    manager.restore_backup(meta["id"], "replace")
    assert folder_snapshot(nb) == before

    manager.copy_backups()  # nothing here to copy: the one backup is there only
    assert _held(here) == ([], [])
    manager.delete_backup(meta["id"], "off")
    assert _held(there) == ([], []) and manager.list_backups() == []


def test_delete_removes_both_copies_and_off_keeps_the_one_here(tmp_path):
    _source(tmp_path)
    manager = _manager(tmp_path, safety_backup=False)
    first, second = manager.create_backup(), manager.create_backup(skip_unchanged=False)
    manager.delete_backup(first["id"])
    manager.delete_backup(second["id"], "off")
    assert _held(tmp_path / "here") == ([second["id"]], [second["archive"]])
    assert _held(tmp_path / "there") == ([], [])
    assert manager.get_backup(second["id"])["where"] == str(tmp_path / "here")
    with pytest.raises(BackupError, match="Unknown place"):
        manager.delete_backup(second["id"], "elsewhere")


def test_older_backups_are_copied_on_request_and_unknown_ids_are_refused(tmp_path):
    nb = _source(tmp_path)
    alone = BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=str(tmp_path / "here")))
    old = []
    for n in range(2):
        (nb / "a.ipynb").write_text(str(n))
        old.append(alone.create_backup()["id"])
    manager = _manager(tmp_path)
    assert {m["where"] for m in manager.list_backups()} == {str(tmp_path / "here")}
    result = manager.copy_backups([old[0]])
    assert result["copied"] == [old[0]] and result["pending"] == [] and result["already"] == []
    assert _held(tmp_path / "there")[0] == [old[0]]
    result = manager.copy_backups()
    assert result["copied"] == [old[1]] and result["already"] == [old[0]]
    assert manager.copy_backups([old[1]]) == {"copied": [], "pending": [], "error": None, "already": [old[1]]}
    assert {m["where"] for m in manager.list_backups()} == {"both"}
    with pytest.raises(NotFound) as refused:
        manager.copy_backups([old[0], "nosuch-20260101T000000Z", "gone-20260101T000000Z"])
    assert str(refused.value) == (f"nosuch-20260101T000000Z, gone-20260101T000000Z: not a backup in {tmp_path / 'here'} "
                                  "(only backups held here can be copied). List the backups to see their ids.")


def test_deleting_a_backup_made_before_copy_to_was_set(tmp_path):
    nb = _source(tmp_path)
    made = BackupManager(AILabBackup(docker_url="none", source_dir=str(nb), store=str(tmp_path / "here"))).create_backup()
    manager = _manager(tmp_path)  # no copy made yet: no record of copies in the store
    manager.delete_backup(made["id"], "here")
    assert manager.list_backups() == [] and _held(tmp_path / "here") == ([], [])


def test_metadata_that_is_not_ours_is_left_out_of_the_listing_and_the_copies(tmp_path):
    store = _mirror(tmp_path)
    for n in range(3):
        _commit(store, f"nb-{n}")
    for folder in ("here", "there"):  # written by something else: no id, or not an object at all
        for name, text in (("a-no-id", '{"archive": "x.tar"}'), ("b-list", '["nb-1"]'), ("c-id-number", '{"id": 7}'),
                           ("z-text", '"nb-2"')):
            (tmp_path / folder / "meta" / f"{name}.json").write_text(text)
    assert sorted(m["id"] for m in store.read_all_meta()) == ["nb-0", "nb-1", "nb-2"]
    assert {m["where"] for m in store.read_all_meta()} == {"both"}
    result = store.copy_missing()
    assert (result["copied"], result["pending"], sorted(result["already"])) == ([], [], ["nb-0", "nb-1", "nb-2"])
    (tmp_path / "there" / "meta" / "nb-1.json").unlink()
    assert store.copy_missing()["copied"] == ["nb-1"]


def test_a_tampered_metadata_file_never_makes_a_copy_read_or_write_outside_data(tmp_path):
    store = _mirror(tmp_path)
    store.second.down = True
    _commit(store, "nb-1")  # pending
    (tmp_path / "here" / "secret.tar.zst").write_bytes(b"not a backup")
    (tmp_path / "here" / "meta" / "nb-1.json").write_text('{"id": "nb-1", "archive": "../secret.tar.zst"}')
    (tmp_path / "here" / "meta" / "nb-2.json").write_text('{"id": "nb-2", "archive": "../secret.tar.zst"}')
    store.second.down = False
    assert store.copy_missing()["copied"] == []
    assert store.copy_pending()["copied"] == []
    assert not (tmp_path / "there" / "secret.tar.zst").exists()
    assert _held(tmp_path / "there") == ([], [])
    assert store.describe()["copies_pending"] == []  # not a backup: nothing to wait for


def test_labels_say_here_and_off_the_machine_for_s3_and_name_two_folders():
    from ailab_backup_ext.stores.base import HERE, OFF, location_of
    from ailab_backup_ext.stores.s3 import S3Store

    s3 = S3Store("s3://bucket/backups")  # no connection made until it is used
    folder = FolderStore("/srv/here")
    from ailab_backup_ext.stores.volume import VolumeStore

    volume = VolumeStore(None, "ailab-backups")  # no engine asked until it is used
    assert (location_of(folder), location_of(s3), location_of(volume)) == (HERE, OFF, HERE)
    assert (HERE, OFF) == ("here", "off the machine")
    assert MirroredStore(folder, s3).labels() == ("here", "off the machine")
    assert MirroredStore(s3, folder).labels() == ("off the machine", "here")
    assert MirroredStore(folder, FolderStore("/srv/there")).labels() == ("/srv/here", "/srv/there")
    assert MirroredStore(folder, s3).held_by_primary({"locations": ["here", "off the machine"]})
    assert not MirroredStore(folder, s3).held_by_primary({"locations": ["off the machine"]})


def _mirror(tmp_path):
    return MirroredStore(FolderStore(tmp_path / "here"), DownFolderStore(tmp_path / "there"))


def _commit(store, backup_id, data=b"archive bytes", **meta):
    import hashlib

    archive = backup_id + ".tar.zst"
    with store.spool(archive) as path:
        with open(path, "wb") as f:
            f.write(data)
        store.commit(path, archive, {"id": backup_id, "archive": archive,
                                     "sha256": hashlib.sha256(data).hexdigest(), **meta})
    return archive


def test_a_second_store_down_leaves_the_copy_pending_until_a_retry(tmp_path):
    store = _mirror(tmp_path)
    store.second.down = True
    _commit(store, "nb-1")
    _commit(store, "nb-2")
    assert store.describe()["copies_pending"] == ["nb-1", "nb-2"]
    assert "unreachable" in store.describe()["copy_error"] and "unreachable" in store.last_error
    listed = {m["id"]: m for m in store.read_all_meta()}
    assert listed["nb-1"]["copy"] == "pending" and listed["nb-1"]["where"] == str(tmp_path / "here")
    assert not store.retry_due()  # failed just now: the retry waits a pause
    store.retry_pause = 0
    assert store.retry_due()
    # the state is kept in the primary store: a new object (a restarted server) knows it
    again = MirroredStore(FolderStore(tmp_path / "here"), DownFolderStore(tmp_path / "there"))
    assert again.describe()["copies_pending"] == ["nb-1", "nb-2"]

    store.remove("nb-2", "nb-2.tar.zst", "here")  # deleted meanwhile: no longer pending
    assert store.describe()["copies_pending"] == ["nb-1"]
    assert "unreachable" in store.describe()["copy_error"]  # the other still waits, for that reason
    store.second.down = False
    assert store.copy_pending() == {"copied": ["nb-1"], "pending": [], "error": None}
    assert store.describe()["copies_pending"] == [] and store.describe()["copy_error"] is None
    assert not store.retry_due()
    assert _held(tmp_path / "there") == (["nb-1"], ["nb-1.tar.zst"])
    assert store.read_all_meta()[0]["where"] == "both"


def test_the_listing_of_a_failing_second_store_pauses_and_resumes_after_a_copy(tmp_path):
    store = _mirror(tmp_path)
    _commit(store, "nb-1")
    store.second.down = True
    assert [m["where"] for m in store.read_all_meta()] == [str(tmp_path / "here")]
    store.second.down = False
    # paused: the second store is not asked again at once (each try may wait for a timeout)
    assert [m["where"] for m in store.read_all_meta()] == [str(tmp_path / "here")]
    _commit(store, "nb-2")  # a copy that works ends the pause
    assert sorted(m["where"] for m in store.read_all_meta()) == ["both", "both"]


def test_a_safety_backup_is_not_copied(tmp_path):
    store = _mirror(tmp_path)
    _commit(store, "nb-safety", kind="safety")
    assert _held(tmp_path / "there") == ([], [])
    assert store.describe()["copies_pending"] == []


def test_an_archive_that_no_longer_matches_its_checksum_is_not_copied(tmp_path):
    store = _mirror(tmp_path)
    store.second.down = True
    archive = _commit(store, "nb-1")
    (tmp_path / "here" / "data" / archive).write_bytes(b"archive bytez")
    store.second.down = False
    result = store.copy_pending()
    assert result["copied"] == [] and result["pending"] == ["nb-1"] and "does not match its checksum" in result["error"]
    assert _held(tmp_path / "there") == ([], [])


class AlteringFolderStore(DownFolderStore):
    """A second store whose copies read back other bytes than were written."""

    def open_archive(self, archive_name):
        import contextlib
        import io

        return contextlib.nullcontext(io.BytesIO(b"other bytes"))


def test_a_copy_that_reads_back_differently_is_removed_there_and_stays_pending(tmp_path):
    store = MirroredStore(FolderStore(tmp_path / "here"), AlteringFolderStore(tmp_path / "there"))
    _commit(store, "nb-1")
    assert "reads back differently" in store.describe()["copy_error"]
    assert store.describe()["copies_pending"] == ["nb-1"]
    assert _held(tmp_path / "there") == ([], [])


def test_reading_takes_the_copy_here_else_the_one_there(tmp_path):
    store = _mirror(tmp_path)
    archive = _commit(store, "nb-1", data=b"the bytes")
    (tmp_path / "there" / "data" / archive).write_bytes(b"the copy there")
    with store.open_archive(archive) as f:
        assert f.read() == b"the bytes"
    assert store.local_path(archive) == str(tmp_path / "here" / "data" / archive)
    store.remove("nb-1", archive, "here")
    with store.open_archive(archive) as f:
        assert f.read() == b"the copy there"
    assert store.local_path(archive) is None
    with pytest.raises(NotFound):
        with store.open_archive("nb-2.tar.zst"):
            pass


def test_stale_spools_are_removed_in_both_stores_even_when_the_second_is_down(tmp_path):
    store = _mirror(tmp_path)
    dead_pid = 2**22 + 12345  # above the kernel's pid_max: no process has it
    for folder in ("here", "there"):
        (tmp_path / folder / "data").mkdir(parents=True)
        (tmp_path / folder / "data" / f".nb-1.tar.zst.{dead_pid}.ailab-partial").write_bytes(b"x")
    assert store.remove_stale_spools() == 2
    assert os.listdir(tmp_path / "here" / "data") == os.listdir(tmp_path / "there" / "data") == []
    (tmp_path / "here" / "data" / f".nb-2.tar.zst.{dead_pid}.ailab-partial").write_bytes(b"x")
    store.second.down = True
    assert store.remove_stale_spools() == 1


def test_state_documents_are_kept_in_the_primary_store(tmp_path):
    store = _mirror(tmp_path)
    with store.spool("nb-1.tar.zst") as first, store.spool("nb-2.tar.zst") as second:
        assert first != second and os.path.dirname(first) == str(tmp_path / "here" / "data")
    store.write_state("schedule", {"every": "1d"})
    assert store.read_state("schedule") == {"every": "1d"}
    assert json.loads((tmp_path / "here" / "schedule.json").read_text()) == {"every": "1d"}
    assert not (tmp_path / "there" / "schedule.json").exists()
    assert store.name == str(tmp_path / "here") and store.stores == [store.primary, store.second]


def test_the_copy_keeps_the_backups_own_metadata_not_what_a_listing_or_the_source_store_added(tmp_path):
    store = _mirror(tmp_path)
    added = {"locations": ["here"], "where": "here", "copy": "pending", "encrypted_copy": False,
             "encrypted": True, "stored_bytes": 99}
    _commit(store, "nb-1", label="mine", **added)
    copied = json.loads((tmp_path / "there" / "meta" / "nb-1.json").read_text())
    assert copied["label"] == "mine" and not set(added) & set(copied)
    assert set(added) <= set(json.loads((tmp_path / "here" / "meta" / "nb-1.json").read_text()))


def test_while_the_second_store_is_down_every_copy_waits_and_the_last_drop_clears_the_error(tmp_path):
    store = _mirror(tmp_path)
    store.second.down = True
    for n in range(3):
        _commit(store, f"nb-{n}")
    result = store.copy_pending()
    assert result["copied"] == [] and sorted(result["pending"]) == ["nb-0", "nb-1", "nb-2"]
    assert result["error"] == "The second store is unreachable (test)."
    for n in range(3):
        store.remove(f"nb-{n}", f"nb-{n}.tar.zst", "here")
    assert store.describe()["copies_pending"] == [] and store.describe()["copy_error"] is None
    assert not store.retry_due()


def test_the_copy_error_messages_say_what_happened_and_what_is_done(tmp_path):
    store = _mirror(tmp_path)
    store.second.down = True
    archive = _commit(store, "nb-1")
    (tmp_path / "here" / "data" / archive).write_bytes(b"altered")
    store.second.down = False
    assert store.copy_pending()["error"] == "The archive of nb-1 here does not match its checksum; it was not copied. Verify it."
    altering = MirroredStore(FolderStore(tmp_path / "here2"), AlteringFolderStore(tmp_path / "there2"))
    _commit(altering, "nb-2")
    assert altering.describe()["copy_error"] == (f"The copy of nb-2 in {tmp_path / 'there2'} reads back differently; "
                                                 "it was removed there and will be copied again.")


class UnreadableFolderStore(DownFolderStore):
    """A second store that takes a copy but fails when it is read back."""

    def open_archive(self, archive_name):
        raise BackupError("The second store timed out (test).")


def test_a_copy_that_cannot_be_read_back_is_removed_there_and_stays_pending(tmp_path):
    store = MirroredStore(FolderStore(tmp_path / "here"), UnreadableFolderStore(tmp_path / "there"))
    _commit(store, "nb-1")
    assert store.describe()["copy_error"] == "The second store timed out (test)."
    assert store.describe()["copies_pending"] == ["nb-1"]
    assert _held(tmp_path / "there") == ([], [])


def test_the_listing_says_whether_the_copy_there_is_encrypted(tmp_path):
    store = _mirror(tmp_path)
    _commit(store, "nb-1")
    _commit(store, "nb-2")
    assert [m["encrypted_copy"] for m in store.read_all_meta()] == [False, False]
    there = tmp_path / "there" / "meta" / "nb-2.json"
    there.write_text(json.dumps({**json.loads(there.read_text()), "encrypted": True}))
    assert {m["id"]: m["encrypted_copy"] for m in store.read_all_meta()} == {"nb-1": False, "nb-2": True}
