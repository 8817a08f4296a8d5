"""``ailab-backup`` (also ``jupyter ailab-backup``): the command line on top of the core.

Expected errors print one line saying what went wrong and what to do, and exit with status 1.
"""

import argparse
import json
import os
import sys

from . import __version__
from .config import AILabBackup
from .core import BackupManager
from .errors import BackupError
from .progress import Progress
from .usage import toggled_excludes

# option -> AILabBackup trait; each may stand before or after the subcommand
OPTIONS = {
    "--volume": ("volume", "Docker volume to back up (default: $AILAB_BACKUP_VOLUME, then $VOLUME)"),
    "--source-dir": ("source_dir", "folder to back up instead of a volume"),
    "--store": ("store", "where backups are kept: a volume name, a folder path, or s3://BUCKET/PREFIX"),
    "--helper-image": ("helper_image", "image for the helper containers"),
    "--docker-url": ("docker_url", "Docker engine URL, or 'none' for no Docker"),
    "--compression": ("compression", "zstd or gzip, for new backups"),
    "--copy-to": ("copy_to", "a second store for a copy of each backup, e.g. s3://BUCKET/PREFIX"),
    "--s3-endpoint-url": ("s3_endpoint_url", "endpoint of an S3-compatible service (default: AWS S3)"),
    "--s3-region": ("s3_region", "region of the S3 bucket"),
}


def _common_options(parser, suppress):
    default = argparse.SUPPRESS if suppress else None
    for flag, (_, text) in OPTIONS.items():
        parser.add_argument(flag, default=default, help=text)
    parser.add_argument("--exclude", action="append", default=default,
                        help="glob pattern to leave out of new backups (repeatable)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ailab-backup",
        description="Back up and restore the AI-Lab notebooks and the Secure Configuration Storage.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    _common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, text):
        p = sub.add_parser(name, help=text, description=text)
        _common_options(p, suppress=True)
        return p

    create = command("create", "back up now; prints the new backup's id last")
    create.add_argument("--label", default="")
    create.add_argument("--before-upgrade", action="store_true",
                        help="label it 'Before upgrading (AI-Lab RELEASE)': the backup to make before moving to "
                             "a new release")
    command("list", "list the backups, newest first").add_argument("--json", action="store_true")
    command("show", "show a backup's metadata").add_argument("id")
    command("verify", "re-read a backup and check every file against its manifest").add_argument("id")
    restore = command("restore", "restore a backup")
    restore.add_argument("id")
    restore.add_argument("--mode", choices=["merge", "replace"], default="merge",
                         help="merge (default): overwrite files from the backup, keep others; "
                              "replace: make the folder exactly as in the backup")
    restore.add_argument("--path", action="append", dest="paths",
                         help="restore only this file or folder of the backup (repeatable)")
    restore.add_argument("--dry-run", action="store_true",
                         help="show what the restore would add, overwrite and remove; change nothing")
    restore.add_argument("--into-release", action="store_true",
                         help="bring my work into this release: restore what you made or changed and the SCS, "
                              "leave the notebooks you did not change as the running release ships them")
    command("undo", "undo the last restore (restore the safety backup taken before it)")
    command("prune", "delete old backups, keeping the newest N (the newest safety backup stays)"
            ).add_argument("--keep", type=int, help="how many to keep (default: AILabBackup.keep_last)")
    delete = command("delete", "delete a backup")
    delete.add_argument("id")
    delete.add_argument("--only", choices=["here", "off"],
                        help="with --copy-to: delete only the copy here, or only the one off the machine")
    copy = command("copy", "copy backups to the second store (--copy-to) and read them back there")
    copy.add_argument("id", nargs="?", help="the backup to copy")
    copy.add_argument("--all", action="store_true", help="every backup not there yet")
    command("keygen", "make the age key that encrypts backups kept in S3 (printed once: save it)")
    for name, text in (("export", "copy the source to DIR/notebooks, as the seed recipe's docker cp"),
                       ("import", "copy DIR/notebooks into the source, as the seed recipe's docker cp")):
        p = command(name, text)
        p.add_argument("--dir", default=os.environ.get("DIR"), help="folder (default: $DIR)")
        if name == "import":
            p.add_argument("--mode", choices=["merge", "replace"], default="merge")
            p.add_argument("--into-release", action="store_true",
                           help="bring the folder in as a backup of another release (compared with the "
                                "running release's default notebooks)")
            p.add_argument("--dry-run", action="store_true", help="with --into-release: show the plan only")
            p.add_argument("--file", help="instead of --dir: add a backup archive file (.tar.zst, "
                                          ".tar.gz) to the store, checked completely first")
    command("status", "show what is backed up, where backups are kept, and whether Docker is reachable")
    settings = command("settings", "show or change the settings kept beside the store (as the UIs do): "
                       "helper_image, excludes, keep_last, schedule")
    settings.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="changes",
                          help="keep a setting, e.g. keep_last=10, excludes=models_cache,*.tmp, "
                               "'schedule=daily 02:30', helper_image=ubuntu (repeatable)")
    settings.add_argument("--reset", action="append", default=[], metavar="KEY",
                          help="go back to the configuration's value of KEY (repeatable)")
    usage = command("usage", "show the size of each top-level folder, which are left out, and an estimate "
                    "of the next backup's size")
    usage.add_argument("--json", action="store_true")
    exclude = command("exclude", "leave top-level folders out of backups (kept beside the store, as the "
                      "UIs keep them); with --include, back them up again")
    exclude.add_argument("folders", nargs="+", metavar="FOLDER", help="a top-level folder, e.g. models_cache")
    exclude.add_argument("--include", action="store_true", help="back these folders up again")
    return parser


def print_usage(usage, out):
    print(f"{'FOLDER':<32} {'SIZE':>9} {'FILES':>7}  BACKED UP", file=out)
    for row in usage["folders"]:
        name = "(files at the top)" if row["type"] == "files" else row["name"] + "/"
        if row["excluded"]:
            state = "no (excluded" + (f" by {row['excluded_by']!r})" if row["excluded_by"] != row["name"] else ")")
        elif row["left_out_files"]:
            state = f"yes, but {row['left_out_files']} files ({_size(row['left_out_bytes'])}) excluded"
        else:
            state = "yes"
        print(f"{name:<32} {_size(row['bytes']):>9} {row['files']:>7}  {state}", file=out)
    total, estimate = usage["total"], usage["estimate"]
    print(f"In all {_size(total['bytes'])} in {total['files']} files. The next backup would hold "
          f"{_size(estimate['bytes'])} in {estimate['files']} files"
          + (f", about {_size(estimate['compressed_bytes'])} stored." if estimate["compressed_bytes"] is not None
             else ".") + f" {estimate['note']}", file=out)


def make_config(args):
    settings = {}
    for _, (trait, _) in OPTIONS.items():
        value = getattr(args, trait, None)
        if value is not None:
            settings[trait] = value
    if getattr(args, "exclude", None):
        settings["excludes"] = args.exclude
    if "volume" not in settings and not os.environ.get("AILAB_BACKUP_VOLUME") and os.environ.get("VOLUME"):
        if "source_dir" not in settings:
            settings["volume"] = os.environ["VOLUME"]  # the seed page's variable
    return AILabBackup(**settings)


class _Bar:
    """A progress bar on a terminal; silent otherwise."""

    def __init__(self):
        self.bar = None
        self.phase = None
        self.enabled = sys.stderr.isatty()

    def __call__(self, progress):
        if not self.enabled:
            return
        from tqdm import tqdm

        snap = progress.snapshot()
        if snap["phase"] != self.phase:
            self.close()
            self.phase = snap["phase"]
            self.bar = tqdm(total=snap["total_bytes"] or None, unit="B", unit_scale=True,
                            desc=self.phase, file=sys.stderr, leave=False)
        self.bar.total = snap["total_bytes"] or None
        self.bar.n = snap["done_bytes"]
        self.bar.set_postfix_str(f"{snap['done_files']} files", refresh=False)
        self.bar.refresh() if self.bar.n == self.bar.total else self.bar.update(0)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def print_plan(plan, out):
    for kind, sign in (("added", "+"), ("overwritten", "~"), ("removed", "-")):
        for item in plan[kind]:
            extra = ""
            if item.get("notebook"):
                nb = item["notebook"]
                extra = f"  (cells: +{nb['cells_added']} -{nb['cells_removed']} ~{nb['cells_changed']})"
            print(f"{sign} {item['path']}  {_size(item['size'])}{extra}", file=out)
    unchanged = plan["unchanged"]
    print(f"{len(plan['added'])} added, {len(plan['overwritten'])} overwritten, {len(plan['removed'])} "
          f"removed, {unchanged['count']} unchanged ({plan['mode']}). Nothing was changed.", file=out)


def _print_json(value, out):
    json.dump(value, out, indent=1)
    out.write("\n")


def print_move_plan(plan, out):
    release = (plan.get("to_release") or {}).get("name") or "this release"
    for item in plan["scs"]:
        print(f"SCS  {item['path']}  {_size(item['size'])} ({item['action']})", file=out)
    for item in plan["brought_back"]:
        print(f"new  {item['path']}  ({item['why']})", file=out)
    for item in plan["overwritten"]:
        cells = item.get("notebook")
        extra = (f" (cells: +{cells['cells_added']} -{cells['cells_removed']} ~{cells['cells_changed']})"
                 if cells else "")
        print(f"mine {item['path']}  ({item['why']}; replaces the file here){extra}", file=out)
    for item in plan["kept_both"]:
        print(f"both  {item['path']}  (AI-Lab {release}'s version kept as {item['beside']})", file=out)
    for item in plan["left_to_release"]:
        print(f"release {item['path']}  (an unchanged default: left as AI-Lab {release} ships it; "
              f"{item['release_change']} there)", file=out)
    for item in plan["added_by_release"]:
        print(f"added {item['path']}  (new in AI-Lab {release}, stays)", file=out)
    counts = plan["counts"]
    print(f"{counts['scs']} SCS, {counts['brought_back']} new, {counts['overwritten']} replaced by yours, "
          f"{counts['kept_both']} kept both, {counts['left_to_release']} left to the release, "
          f"{counts['unchanged']} unchanged (into AI-Lab {release}).", file=out)


def _move_offer(manager):
    """The line offering a release move, when the newest backup came from another release."""
    move = manager.release_status()["move"]
    if move:
        return f"note: {move['message']} Preview: ailab-backup restore {move['backup_id']} --into-release --dry-run"
    return None


def _setting_changes(pairs, resets):
    changes = {key: None for key in resets}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise BackupError(f"Write --set {key}=VALUE (e.g. --set keep_last=10).")
        if key == "excludes":
            changes[key] = [p for p in value.split(",") if p.strip()]
        elif key == "keep_last":
            try:
                changes[key] = int(value)
            except ValueError:
                raise BackupError(f"keep_last must be a whole number, not {value!r}.") from None
        else:
            changes[key] = value
    return changes


def run(args, out=None):
    out = out or sys.stdout
    manager = BackupManager(make_config(args))
    # an option given for this run wins over the settings kept beside the store
    manager.settings.pinned = {key for key, given in (("helper_image", getattr(args, "helper_image", None)),
                                                      ("excludes", getattr(args, "exclude", None))) if given}
    bar = _Bar()
    progress = Progress(bar)
    try:
        if args.command == "create":
            label = manager.before_upgrade_label() if args.before_upgrade else args.label
            meta = manager.create_backup(label=label, progress=progress)
            bar.close()
            for item in meta["skipped"]:
                print(f"note: left out {item['path']}: {item['reason']}", file=sys.stderr)
            print(f"Backed up {meta['file_count']} files ({_size(meta['total_bytes'])}) from "
                  f"{meta['source']['name']} to {manager.store.name}.", file=sys.stderr)
            print(meta["id"], file=out)
        elif args.command == "list":
            backups = manager.list_backups()
            if args.json:
                _print_json(backups, out)
            else:
                where = any("where" in b for b in backups)
                print(f"{'ID':<44} {'CREATED':<21} {'SIZE':>9} {'FILES':>6}  " + ("WHERE            " if where else "")
                      + "LABEL", file=out)
                for b in backups:
                    place = (b.get("where", "") + (" (copy pending)" if b.get("copy") else "")).ljust(17) if where else ""
                    left_out = f" (left out: {', '.join(b['excludes'])})" if b.get("excludes") else ""
                    print(f"{b['id']:<44} {b['created']:<21} {_size(b['size_bytes']):>9} "
                          f"{b['file_count']:>6}  {place}{b.get('label', '')}{left_out}", file=out)
            offer = _move_offer(manager)
            if offer:
                print(offer, file=sys.stderr)
        elif args.command == "show":
            _print_json(manager.get_backup(args.id), out)
        elif args.command == "verify":
            result = manager.verify_backup(args.id, progress)
            bar.close()
            print(f"{args.id}: OK, {result['files']} files ({_size(result['bytes'])}) match the manifest.", file=out)
        elif args.command == "restore" and args.into_release:
            if args.paths:
                raise BackupError("--into-release takes no --path: it sorts every file of the backup itself. "
                                  "Leave out --path, or restore chosen paths without --into-release.")
            if args.dry_run:
                print_move_plan(manager.plan_release_move(args.id, progress), out)
                print("Nothing was changed.", file=out)
            else:
                result = manager.release_move(args.id, progress)
                bar.close()
                print_move_plan(result, out)
                print(f"Brought {args.id} into this release ({result['file_count']} files written).", file=out)
                if result["safety_backup_id"]:
                    print(f"The state before is kept as {result['safety_backup_id']}: 'ailab-backup undo' "
                          "brings it back.", file=out)
                if result["hint"]:
                    print(result["hint"], file=out)
        elif args.command == "restore" and args.dry_run:
            print_plan(manager.plan_restore(args.id, args.mode, args.paths, progress), out)
        elif args.command in ("restore", "undo"):
            if args.command == "undo":
                result = manager.undo_last_restore(progress)
                print(f"Undone: the state before the last restore ({result['undone']}) is back.", file=out)
            else:
                result = manager.restore_backup(args.id, args.mode, progress, args.paths)
                print(f"Restored {result['file_count']} files from {args.id} ({args.mode}).", file=out)
            bar.close()
            if result["safety_backup_id"]:
                print(f"The state before is kept as {result['safety_backup_id']}: 'ailab-backup undo' "
                      "brings it back.", file=out)
            if result["hint"]:
                print(result["hint"], file=out)
        elif args.command == "prune":
            deleted = manager.prune(args.keep)
            print(f"Deleted {len(deleted)} backups" + (": " + ", ".join(deleted) if deleted else "."), file=out)
        elif args.command == "delete":
            manager.delete_backup(args.id, args.only)
            print(f"Deleted {args.id}" + (f" ({args.only})." if args.only else "."), file=out)
        elif args.command == "copy":
            if bool(args.id) == bool(args.all):
                raise BackupError("Say which: 'ailab-backup copy ID' or 'ailab-backup copy --all'.")
            result = manager.copy_backups(None if args.all else [args.id])
            print(f"Copied {len(result['copied'])} backups to {manager.config.copy_to}"
                  + (f"; {len(result['already'])} were there already." if result["already"] else "."), file=out)
        elif args.command == "keygen":
            key = manager.generate_key()
            print(f"{key['message']}\n\n    {key['private_key']}\n\nIt is kept in {key['key_file']} (mode 0600); "
                  f"its public key is {key['public_key']}. From now on backups kept in S3 are encrypted.", file=out)
        elif args.command == "import" and args.file:
            meta = manager.add_archive_file(args.file)
            print(f"Added {meta['id']} ({meta['file_count']} files) to {manager.store.name}.", file=out)
        elif args.command in ("export", "import"):
            if not args.dir:
                raise BackupError("Say where: --dir DIR (or set DIR, as on the seed page).")
            if args.command == "export":
                result = manager.export_dir(args.dir, progress)
                print(f"Exported to {result['directory']}.", file=out)
            elif args.into_release:
                result = manager.import_dir_into_release(args.dir, not args.dry_run, progress)
                bar.close()
                print_move_plan(result, out)
                if args.dry_run:
                    print("Nothing was changed.", file=out)
                else:
                    print(f"Brought {result['backup_id']} into this release ({result['file_count']} files written).",
                          file=out)
                    if result["safety_backup_id"]:
                        print(f"The state before is kept as {result['safety_backup_id']}: 'ailab-backup undo' "
                              "brings it back.", file=out)
            else:
                result = manager.import_dir(args.dir, args.mode, progress)
                print(f"Imported {result['entries']} entries from {result['directory']} ({args.mode}).", file=out)
        elif args.command == "settings":
            changes = _setting_changes(args.changes, args.reset)
            manager.settings.pinned = set()  # the settings command shows and changes what is kept
            result = manager.settings.set(changes) if changes else manager.settings.describe()
            _print_json(result, out)
        elif args.command == "usage":
            usage = manager.usage()
            if args.json:
                _print_json(usage, out)
            else:
                print_usage(usage, out)
        elif args.command == "exclude":
            manager.settings.pinned = set()  # it changes what is kept, as the settings command does
            excludes = manager.settings.excludes
            for name in args.folders:  # all checked before anything is kept
                excludes = toggled_excludes(excludes, name.strip().rstrip("/"), not args.include)
            manager.settings.set({"excludes": excludes})
            usage = manager.usage()
            print(f"Excludes now: {', '.join(usage['excludes']) or 'none'} (kept beside the store).", file=out)
            print_usage(usage, out)
        elif args.command == "status":
            status = manager.status()
            _print_json(status, out)
            move = (status.get("release") or {}).get("move")
            if move:
                print(f"note: {move['message']} Preview: ailab-backup restore {move['backup_id']} "
                      "--into-release --dry-run", file=sys.stderr)
    finally:
        bar.close()


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except BackupError as exc:
        print(f"ailab-backup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ailab-backup: interrupted; no partial backup was kept.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
