"""The notebook panel's "Off the machine" group against a live server with a second copy in a real
S3 server (rclone serve s3): where each backup lives, the encryption key made once and shown once,
deleting the local copy, a restore from the copy off the machine, a wrong and a missing key, and a
pending copy retried with one click."""

import os
import stat

import pytest

from restutil import run, server_config
from test_panel import click, make_panel, notebooks, shown  # noqa: F401 - notebooks is a fixture
from test_s3 import own_s3  # noqa: F401 - a fixture: an S3 server of the test alone, stopped and started
from test_s3_rest import copy_to_s3
from treeutil import folder_snapshot


def where_cells(panel):
    """{backup id: the text of its Where cell}."""
    return {row.children[0].tooltip: row.children[5].value for row in panel.rows.children}


def files_holding(root, text):
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                if text.encode() in f.read():
                    found.append(name)
    return found


class TestCopyAndKey:
    @pytest.fixture
    def jp_server_config(self, tmp_path, s3_server, s3_bucket):
        return server_config(store=str(tmp_path / "store"), docker_url="none", safety_backup=False,
                             **copy_to_s3(s3_server, s3_bucket, tmp_path))

    async def test_key_where_delete_here_restore_from_the_copy_and_key_errors(self, client, notebooks, tmp_path):
        key_file = tmp_path / "keys" / "age.key"
        panel = await make_panel(client)
        assert shown(panel.offsite_group) and "Not encrypted" in panel.offsite.text.value
        assert not panel.offsite.key_button.disabled and panel.offsite.copy_all_button.disabled

        # the key: asked first, then shown once with the warning; the box is emptied when saved
        await click(panel, panel.offsite.key_button)
        assert shown(panel.confirm) and "without it, nothing encrypted with it can be restored" in panel.question.value
        assert not key_file.exists()
        await click(panel, panel.yes_button)
        private = panel.offsite.key_text.value
        assert private.startswith("AGE-SECRET-KEY-1") and shown(panel.offsite.key_box)
        assert "without it nothing can be restored" in panel.offsite.key_note.value
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and private in key_file.read_text()
        assert "Encrypted" in panel.offsite.text.value and panel.offsite.key_button.disabled
        assert private not in str(await run(client.status))
        await click(panel, panel.offsite.key_saved_button)
        assert panel.offsite.key_text.value == "" and not shown(panel.offsite.key_box)

        # a backup is kept here and (encrypted) off the machine
        before = folder_snapshot(str(notebooks))
        await click(panel, panel.backup_button)
        [backup] = await run(client.list)
        assert backup["where"] == "both" and backup["encrypted"]
        assert ">both<" in where_cells(panel)[backup["id"]]
        assert files_holding(notebooks, private) == []  # never in the notebooks folder (nor its backup)

        # delete the local copy: the backup is then only off the machine, and restores from there
        assert panel.offsite.copy_button.disabled and not panel.offsite.delete_here_button.disabled
        await click(panel, panel.offsite.delete_here_button)
        assert "The copy off the machine stays" in panel.question.value
        await click(panel, panel.yes_button)
        assert (await run(client.list))[0]["where"] == "off the machine"
        assert ">off the machine<" in where_cells(panel)[backup["id"]] and panel.offsite.delete_here_button.disabled
        (notebooks / "intro.ipynb").write_text("changed")
        (notebooks / "new.txt").write_text("new")
        panel.mode.value = "replace"
        await click(panel, panel.restore_button)
        await click(panel, panel.yes_button)
        assert panel.error.value == "" and folder_snapshot(str(notebooks)) == before

        # another key in the key file: a clear red error, nothing changed
        from pyrage import x25519

        key_file.write_text(f"{x25519.Identity.generate()}\n")
        (notebooks / "new.txt").write_text("new")
        changed = folder_snapshot(str(notebooks))
        await click(panel, panel.restore_button)
        await click(panel, panel.yes_button)
        assert "color: red" in panel.error.value and "does not open" in panel.error.value, panel.error.value
        assert folder_snapshot(str(notebooks)) == changed
        # no key at all: the group says so in red before anyone tries, and a restore says which file
        key_file.unlink()
        await click(panel, panel.refresh_button)
        assert shown(panel.offsite.problem) and "the key is missing" in panel.offsite.problem.value
        assert str(key_file) in panel.offsite.problem.value and not panel.offsite.key_button.disabled
        await click(panel, panel.restore_button)
        await click(panel, panel.yes_button)
        assert "key to open it is missing" in panel.error.value and str(key_file) in panel.error.value
        assert folder_snapshot(str(notebooks)) == changed


class TestPendingCopy:
    @pytest.fixture
    def jp_server_config(self, tmp_path, own_s3):
        server, bucket = own_s3
        return server_config(store=str(tmp_path / "store"), docker_url="none", safety_backup=False,
                             **copy_to_s3(server, bucket, tmp_path))

    async def test_a_copy_pending_while_the_second_store_is_down_is_retried_with_one_click(
            self, client, notebooks, own_s3):
        server, _ = own_s3
        server.kill()
        panel = await make_panel(client)
        await click(panel, panel.backup_button)
        [backup] = await run(client.list)
        assert backup["where"] == "here" and backup["copy"] == "pending"  # the backup itself succeeded
        cell = where_cells(panel)[backup["id"]]
        assert ">here<" in cell and "copy pending" in cell
        assert "1 copy pending" in panel.offsite.text.value and "The last copy failed" in panel.offsite.problem.value
        assert not panel.offsite.copy_all_button.disabled and not panel.offsite.copy_button.disabled

        server.start()
        await click(panel, panel.offsite.copy_all_button)
        assert panel.error.value == "" and "Copied 1 backup off the machine" in panel.message.value
        [backup] = await run(client.list)
        assert backup["where"] == "both" and "copy" not in backup
        assert ">both<" in where_cells(panel)[backup["id"]] and "pending" not in panel.offsite.text.value
        assert not shown(panel.offsite.problem) and panel.offsite.copy_all_button.disabled
