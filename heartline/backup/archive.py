"""The archive format: a tar of manifest.json and database.dump, its name and verification."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.settings import Settings

NAME_PREFIX = "server_backup_"
NAME_FORMAT = NAME_PREFIX + "%Y%m%d_%H%M%S"
NAME_PATTERN = re.compile(r"^server_backup_\d{8}_\d{6}$")
SUFFIX = ".tar"
MANIFEST = "manifest.json"
DUMP = "database.dump"
MANIFEST_FORMAT = 1
CHUNK = 1 << 20


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
                        while chunk := source.read(CHUNK):
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
                   if NAME_PATTERN.match(p.name.removesuffix(SUFFIX))), key=lambda a: a.name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_rename(tmp: Path, final: Path) -> None:
    """Make `final` appear whole or not at all, even across a power cut."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
