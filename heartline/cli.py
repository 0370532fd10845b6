"""The `heartline` console script.

Subcommands of the kernel (migrate, dev, api-key) live here; those of the processes are found by import
string, so the kernel never imports edge, worker or admin.  Each delegated entry point is
`main(settings, argv) -> int`, and each names the extra it needs: started without it, the command says
which extra to install in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from heartline import migrations, services
from heartline.devstack import DevStackError
from heartline.extras import MissingExtra, require_extra
from heartline.sealing import SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY, dev_sealing_secret, variable
from heartline.settings import Settings, SettingsError

log = logging.getLogger("heartline.cli")

# command -> (entry point, the extra it needs or None for the kernel alone, help)
DELEGATED: dict[str, tuple[str, str | None, str]] = {
    "edge": ("edge.server:main", "edge", "run the HTTP edge (uvicorn)"),
    "worker": ("worker.main:main", "worker", "run the arq worker (flush, history, reaper, partitions, backups)"),
    "admin": ("admin.app:main", "admin", "run the admin web interface"),
    "create-admin": ("admin.users:create_admin_main", "admin", "create an admin user"),
    "backup": ("heartline.backup:main", None, "create, list and restore backups"),
    "status": ("heartline.status:main", None, "everything at a glance; exits 1 when something needs attention"),
    "signing-key": ("heartline.signing.cli:main", None, "manage the keys that sign the edge's answers"),
    "totp-keys": ("admin.security.keys:totp_keys_main", "admin",
                  "generate a key for HEARTLINE_ADMIN_TOTP_KEYS, or re-encrypt TOTP secrets with the first"),
}

# Processes `heartline dev` runs side by side, in this order.
DEV_PARTS = ("edge", "worker", "admin")


def _entry(name: str) -> Callable[[Settings, list[str]], int]:
    """The entry point of a delegated command; MissingExtra when its extra is not installed."""
    target, extra, _help = DELEGATED[name]
    if extra is not None:
        require_extra(name, extra)
    module_name, func = target.split(":")
    return getattr(importlib.import_module(module_name), func)  # type: ignore[no-any-return]


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        # Flask-AppBuilder logs a line per permission it syncs (~300 at a first start): not news
        logging.getLogger("flask_appbuilder").setLevel(logging.WARNING)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Back up a database that holds data when migrations are pending, then migrate (heartline/upgrade.py)."""
    from heartline import upgrade

    settings = services.resolve(settings, need_redis=False)
    try:
        result = upgrade.upgrade(settings, skip_backup=args.no_backup, say=lambda line: print(line, flush=True))
    except upgrade.BackupBeforeMigrateFailed as exc:
        print(f"heartline migrate: {exc} [{exc.code}]", file=sys.stderr)
        return 1
    applied = result.applied
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_api_key(settings: Settings, args: argparse.Namespace) -> int:
    from heartline import apikeys, db

    settings = services.resolve(settings, need_redis=False)
    assert settings.database_url

    async def run() -> int:
        conn = await db.connect(settings.database_url or "", actor="cli")
        try:
            if args.action == "create":
                new = await apikeys.create_api_key(conn, args.name, created_by="cli")
                print(f"API key {new.id} ({new.name}) created. It is shown once; store it now:\n{new.key}")
                return 0
            if args.action == "revoke":
                if await apikeys.revoke_api_key(conn, args.id):
                    print(f"API key {args.id} revoked; edges stop accepting it within "
                          f"{settings.api_key_cache_s:.0f}s")
                    return 0
                print(f"no active API key with id {args.id}", file=sys.stderr)
                return 1
            rows = await conn.fetch("SELECT id, name, display_prefix, created_at, revoked_at, last_used_at "
                                    "FROM api_keys ORDER BY id")
            for r in rows:
                state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
                print(f"{r['id']:>5}  {r['display_prefix']:<16} {r['name']:<24} {state}")
            return 0
        finally:
            await conn.close()

    return asyncio.run(run())


def _masked(url: str) -> str:
    """A server URL as printed: the password replaced (it is in dev-secrets.json)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from heartline.devstack import dev_secrets

    if args.show_credentials:
        return cmd_show_credentials(settings)
    require_extra("dev", "dev")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # the embedded servers' data and the generated secrets: for this user only (as root the PostgreSQL
    # system user must still pass through to its own folder)
    settings.data_dir.chmod(0o711 if os.geteuid() == 0 else 0o700)
    generated = dev_secrets(settings.data_dir)
    # the admin refuses to start without these; only here are they generated (and kept, 0600)
    settings = settings.replace(admin_secret_key=settings.admin_secret_key or generated["admin_secret_key"],
                                admin_totp_keys=settings.admin_totp_keys or generated["admin_totp_keys"])
    settings = _dev_sealing_secrets(settings)
    want_pg = settings.database_url is None
    want_redis = settings.redis_url is None
    with contextlib.ExitStack() as stack:
        if args.cluster and want_redis:
            from heartline.devcluster import embedded_cluster

            # a fresh cluster each time: its nodes.conf would name ports that are not free any more
            shutil.rmtree(settings.data_dir / "services" / "cluster", ignore_errors=True)
            cluster = stack.enter_context(embedded_cluster(settings.data_dir / "services" / "cluster"))
            settings = settings.replace(redis_url=cluster.url())
            print(f"Cluster:    {len(cluster.nodes)} nodes, masters {cluster.url().split('//', 1)[1]}")
        return _dev_with(settings, args, want_pg, want_redis and not args.cluster, generated)


def _dev_with_secret(settings: Settings, name: str) -> Settings:
    if getattr(settings, name):
        return settings
    value, made = dev_sealing_secret(settings.data_dir, name)
    print(f"Secret:     {variable(name)} unset: {'made' if made else 'using'} the development one in "
          f"{settings.data_dir / name} (set it outside `heartline dev`)")
    return settings.replace(**{name: value})


def _dev_sealing_secrets(settings: Settings) -> Settings:
    """The sealing secrets (heartline/sealing.py): unset, `heartline dev` makes them up into its data folder
    (kept, 0600) and says so; no other command does."""
    for name in (SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY):
        settings = _dev_with_secret(settings, name)
    return settings


def _dev_with(settings: Settings, args: argparse.Namespace, want_pg: bool,
              want_redis: bool, generated: dict[str, str]) -> int:
    from heartline.devstack import DEV_SECRETS_FILE, EmbeddedServices

    embedded = EmbeddedServices(settings.data_dir / "services", postgres=want_pg, redis=want_redis,
                                postgres_password=generated["postgres_password"],
                                redis_password=generated["redis_password"])
    try:
        pg, rd = embedded.start()
        settings = settings.replace(database_url=settings.database_url or pg, redis_url=settings.redis_url or rd)
        assert settings.database_url and settings.redis_url
        where = f"  (embedded; password in {settings.data_dir / DEV_SECRETS_FILE})"
        print(f"PostgreSQL: {_masked(settings.database_url)}{where if want_pg else ''}")
        print(f"Redis:      {_masked(settings.redis_url)}{where if want_redis else ''}")
        applied = asyncio.run(migrations.migrate(settings.database_url))
        print(f"Migrations: {len(applied)} applied" if applied else "Migrations: schema is up to date")
        services.write_dev_state(settings, settings.database_url, settings.redis_url)
        try:
            banner = _demo_credentials(settings)
            return _run_parts(settings, [p for p in DEV_PARTS if p not in args.without], embedded.revive,
                              banner)
        finally:
            services.clear_dev_state(settings)
    finally:
        embedded.stop()


def _demo_credentials(settings: Settings) -> list[str]:
    """Seed the demo data and admin; the banner lines naming them (new secrets are kept in
    dev-secrets.json, 0600, so `heartline dev --show-credentials` shows them again)."""
    from heartline import db
    from heartline.demo import ensure_demo_data
    from heartline.devstack import remember_dev_secrets

    async def seed() -> tuple[str, str | None]:
        conn = await db.connect(settings.database_url or "", actor="heartline-dev")
        try:
            demo = await ensure_demo_data(conn)
        finally:
            await conn.close()
        return demo.license_key, demo.api_key

    license_key, new_api_key = asyncio.run(seed())
    new_password = importlib.import_module("admin.users").ensure_demo_admin(settings)
    fresh = {name: value for name, value in (("demo_license_key", license_key), ("demo_api_key", new_api_key),
                                             ("demo_admin_password", new_password)) if value}
    stored = remember_dev_secrets(settings.data_dir, **fresh)
    return _credential_lines(license_key, stored)


def _credential_lines(license_key: str | None, stored: dict[str, str]) -> list[str]:
    lines = [f"Demo license key: {license_key}"] if license_key else []
    if stored.get("demo_api_key"):
        lines.append(f"Demo API key:     {stored['demo_api_key']}")
    else:
        lines.append("Demo API key:     made by an earlier version and not kept; `heartline api-key create NAME` "
                     "makes a new one")
    if stored.get("demo_admin_password"):
        lines.append(f"Demo admin:       user 'admin', password '{stored['demo_admin_password']}' (two-factor "
                     "login is set up at the first sign-in)")
    else:
        lines.append("Demo admin:       user 'admin' (made by an earlier version; `heartline create-admin` "
                     "makes another)")
    return lines


def cmd_show_credentials(settings: Settings) -> int:
    """`heartline dev --show-credentials`: the demo credentials of this data folder, without starting anything."""
    import json

    from heartline.devstack import DEV_SECRETS_FILE

    path = settings.data_dir / DEV_SECRETS_FILE
    if not path.exists():
        print(f"no credentials in {path}: `heartline dev` makes them at its first start", file=sys.stderr)
        return 1
    stored = json.loads(path.read_text())
    license_key = stored.get("demo_license_key")
    for line in _credential_lines(license_key, stored):
        print(line)
    print(f"(kept in {path}, readable by you only)")
    return 0


def _run_parts(settings: Settings, parts: list[str], revive: Callable[[], list[str]] | None = None,
               banner: list[str] | None = None) -> int:
    """Run the parts side by side until Ctrl-C or one exits.

    revive: called every half second; restarts embedded servers that died and returns what it said, so
    a crashed Redis or PostgreSQL comes back without tearing the parts down.
    banner: lines printed last, once every part listens (the credentials must not scroll away).
    """
    env = dict(os.environ)
    env["HEARTLINE_DATABASE_URL"] = settings.database_url or ""
    env["HEARTLINE_REDIS_URL"] = settings.redis_url or ""
    env["HEARTLINE_ADMIN_SECRET_KEY"] = settings.admin_secret_key or ""
    env["HEARTLINE_ADMIN_TOTP_KEYS"] = settings.admin_totp_keys
    for name in (SIGNING_KEY_SECRET, WEBHOOK_SECRET_KEY):
        secret = getattr(settings, name)
        if secret:
            env[variable(name)] = secret
    procs: dict[str, subprocess.Popen[str]] = {}
    for part in parts:
        procs[part] = subprocess.Popen([sys.executable, "-m", "heartline", part], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True)
        threading.Thread(target=_pump, args=(part, procs[part]), daemon=True).start()
    ports = {"edge": (settings.edge_host, settings.edge_port),
             "admin": (settings.admin_host, settings.admin_port),
             "worker": (settings.worker_metrics_host, settings.worker_metrics_port)}
    waiting = {part: ports[part] for part in procs if ports[part][1]}
    urls = []
    if "edge" in procs:
        urls.append(f"API  http://{settings.edge_host}:{settings.edge_port}  (EDGE=http://{settings.edge_host}:"
                    f"{settings.edge_port}; calls go to $EDGE/v1/…)")
    if "admin" in procs:
        urls.append(f"Admin  http://{settings.admin_host}:{settings.admin_port}/")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    while not stop.wait(0.5):
        if waiting:
            waiting = {part: where for part, where in waiting.items() if not _listening(*where)}
            if not waiting:
                # last, once everything answers: the secrets are the last thing on the screen
                print("", *(banner or []), "All up: " + "; ".join(urls or ["no parts started"]),
                      "Press Ctrl-C to stop everything.", sep="\n", flush=True)
        for message in revive() if revive else []:
            print(message, flush=True)
        for part, proc in procs.items():
            if proc.poll() is not None:
                print(f"{part} exited with code {proc.returncode}; stopping the others")
                code = proc.returncode or 1
                stop.set()
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for part, proc in procs.items():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            print(f"{part} did not stop in 15s; killing it")
            proc.kill()
    print("stopped")
    return code


def _listening(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pump(name: str, proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"{name:<7}| {line}")
        sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heartline", description="Heartline license server")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything locally: databases, migrations, demo data, edge, "
                                     "worker and admin")
    dev.add_argument("--cluster", action="store_true",
                     help="run Redis as a local cluster (3 masters + 3 replicas, the same redis-server) "
                          "instead of one server (see docs/operations/cluster.md)")
    dev.add_argument("--without", action="append", default=[], choices=DEV_PARTS,
                     help="do not start this part (repeatable)")
    migrate = sub.add_parser("migrate", help="back up the database when migrations are pending, then apply them")
    migrate.add_argument("--no-backup", action="store_true",
                         help="apply pending migrations without taking a backup first")
    dev.add_argument("--show-credentials", action="store_true",
                     help="print the demo credentials kept in the data folder, start nothing")
    key = sub.add_parser("api-key", help="manage system API keys")
    key_sub = key.add_subparsers(dest="action", required=True)
    create = key_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("name")
    revoke = key_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)
    key_sub.add_parser("list", help="list keys (prefixes only)")
    for name, (_target, _extra, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = bool(argv) and argv[0] in DELEGATED
    # delegated parts parse their own arguments; the kernel's commands are parsed here
    args = None if delegated else build_parser().parse_args(argv)
    command = argv[0] if delegated else args.command  # type: ignore[union-attr]
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"heartline: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    try:
        if delegated:
            return _entry(command)(settings, argv[1:])
        handlers = {"migrate": cmd_migrate, "api-key": cmd_api_key, "dev": cmd_dev}
        return handlers[command](settings, args)  # type: ignore[arg-type]
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"heartline {command}: {exc}", file=sys.stderr)
        return 2
    except (DevStackError, migrations.MigrationError) as exc:
        print(f"heartline {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
