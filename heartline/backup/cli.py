"""`heartline backup create|list|push|prune|restore`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import psycopg

from heartline import backup_events, services
from heartline.backup.archive import Archive, Manifest, local_archives
from heartline.backup.create import create_backup
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.backup.pgtools import database_url, display_target
from heartline.backup.prune import PruneResult, prune_backups
from heartline.backup.remotes import mask_remote, push_backup, remote_of, require_remote
from heartline.backup.restore import find_archive, restore_backup
from heartline.backup_events import BackupEventKind, BackupTrigger
from heartline.settings import PREFIX, Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heartline backup", description="Database backups")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="dump the database into a new server_backup_* archive")
    create.add_argument("--push", action="store_true",
                        help="upload it to HEARTLINE_BACKUP_REMOTE, then prune local copies")
    listing = sub.add_parser("list", help="list local and remote backups")
    listing.add_argument("--verify", action="store_true", help="check every local archive's checksums")
    restore = sub.add_parser("restore", help="replace the database's contents with a backup")
    restore.add_argument("name", help="server_backup_YYYYMMDD_HHMMSS (local, or fetched from the remote)")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    sub.add_parser("push", help="upload every local backup the remote does not hold yet")
    sub.add_parser("prune", help="delete local backups beyond HEARTLINE_BACKUP_KEEP_LOCAL that the remote holds")
    return parser


def _print_prune(result: PruneResult) -> None:
    for name in result.deleted:
        print(f"pruned   {name} (the remote holds it)")
    for name in result.kept_not_uploaded:
        print(f"kept     {name} (not on the remote)")


def _cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    if args.push:
        require_remote(settings)
    archive = create_backup(settings)
    backup_events.record(database_url(settings), BackupEventKind.CREATED, BackupTrigger.MANUAL, name=archive.name)
    manifest = archive.manifest()
    print(f"created  {archive.path}  ({archive.path.stat().st_size} bytes, schema {manifest.schema_version}, "
          f"PostgreSQL {manifest.server_version}, {sum(manifest.tables.values())} rows in "
          f"{len(manifest.tables)} tables)")
    if args.push:
        push_backup(settings, archive)
        backup_events.record(database_url(settings), BackupEventKind.UPLOADED, BackupTrigger.MANUAL,
                             name=archive.name)
        print(f"pushed   {archive.name} to {mask_remote(settings.backup_remote)}")
        _print_prune(prune_backups(settings))
    return 0


def _cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    remote = remote_of(settings)
    remote_names: set[str] = set()
    if remote is not None:
        try:
            remote_names = set(remote.names())
        except BackupError as exc:
            # the local archives are still worth listing when the remote is unreachable
            print(f"remote not listed: {exc}", file=sys.stderr)
    local = {a.name: a for a in local_archives(settings)}
    if not local and not remote_names:
        print(f"no backups in {settings.backup_dir}" + (f" or {mask_remote(settings.backup_remote)}" if remote else ""))
        return 0
    print(f"{'NAME':<30} {'WHERE':<13} {'BYTES':>12}  {'SCHEMA':<28} STATE")
    for name in sorted(set(local) | remote_names):
        where = "+".join(w for w, present in (("local", name in local), ("remote", name in remote_names))
                         if present)
        size, schema, state = "", "", ""
        if name in local:
            archive = local[name]
            size = str(archive.path.stat().st_size)
            try:
                manifest = archive.verify() if args.verify else archive.manifest()
                schema = manifest.schema_version or "-"
                state = "ok" if args.verify else ""
            except BackupError as exc:
                state = f"CORRUPT: {exc}"
        print(f"{name:<30} {where:<13} {size:>12}  {schema:<28} {state}".rstrip())
    return 0


def _confirm(settings: Settings, archive: Archive, manifest: Manifest) -> bool:
    target = display_target(database_url(settings))
    print(f"Backup {archive.name}: created {manifest.created_at}, schema {manifest.schema_version}, "
          f"{sum(manifest.tables.values())} rows in {len(manifest.tables)} tables.")
    print(f"Restoring REPLACES everything in the database {target}.")
    if not sys.stdin.isatty():
        return False
    database = urlsplit(database_url(settings)).path.lstrip("/")
    answer = input(f"Type the database name ({database}) to continue: ")
    return answer.strip() == database


def _cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    settings = services.resolve(settings, need_redis=False)
    archive = find_archive(settings, args.name)
    manifest = archive.verify()
    if not args.yes and not _confirm(settings, archive, manifest):
        raise BackupError(BackupErrorCode.NOT_CONFIRMED,
                          "restore not confirmed; nothing was changed (pass --yes to run without a prompt)")
    restore_backup(settings, archive)
    print(f"restored {archive.name} into {display_target(database_url(settings))}: "
          f"{len(manifest.tables)} tables, row counts match the backup")
    if settings.redis_url:
        print("Cached licenses dropped from the session plane; edges reload them from PostgreSQL.")
    else:
        print(f"{PREFIX}REDIS_URL is not set: the session plane's cached licenses were NOT dropped.")
    print("Restart edge, worker and admin so that no in-process state outlives the restore.")
    return 0


def _cmd_push(settings: Settings, _args: argparse.Namespace) -> int:
    remote = require_remote(settings)
    on_remote = set(remote.names())
    for archive in local_archives(settings):
        if archive.name not in on_remote:
            push_backup(settings, archive)
            backup_events.record(database_url(settings), BackupEventKind.UPLOADED, BackupTrigger.MANUAL,
                                 name=archive.name)
            print(f"pushed   {archive.name}")
    _print_prune(prune_backups(settings))
    return 0


def _cmd_prune(settings: Settings, _args: argparse.Namespace) -> int:
    if remote_of(settings) is None:
        print(f"{PREFIX}BACKUP_REMOTE is not set: local backups are pruned only once uploaded; none deleted")
        return 0
    _print_prune(prune_backups(settings))
    return 0


def main(settings: Settings, argv: Sequence[str]) -> int:
    """`heartline backup create [--push] | list [--verify] | restore NAME [--yes] | push | prune`."""
    args = _parser().parse_args(list(argv))
    handlers = {"create": _cmd_create, "list": _cmd_list, "restore": _cmd_restore, "push": _cmd_push,
                "prune": _cmd_prune}
    try:
        return handlers[args.action](settings, args)
    except BackupError as exc:
        print(f"heartline backup {args.action}: {exc} [{exc.code}]", file=sys.stderr)
        if args.action in ("create", "push") and exc.code is not BackupErrorCode.BUSY:
            with contextlib.suppress(SettingsError):
                backup_events.record(database_url(settings), BackupEventKind.FAILED, BackupTrigger.MANUAL,
                                     detail=f"{args.action}: {exc} [{exc.code}]")
        return 1
    except psycopg.OperationalError as exc:
        print(f"heartline backup {args.action}: cannot reach the database: {exc}", file=sys.stderr)
        return 1


__all__ = ["Archive", "BackupError", "BackupErrorCode", "Manifest", "PruneResult", "create_backup",
           "find_archive", "local_archives", "main", "mask_remote", "prune_backups", "push_backup", "remote_of",
           "restore_backup"]
