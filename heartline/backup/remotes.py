"""Remotes backups are pushed to: a folder, or a git repository (credentials masked, never on a
command line)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from heartline.backup.archive import NAME_PATTERN, NAME_PREFIX, SUFFIX, Archive, fsync_rename, sha256_of
from heartline.backup.errors import BackupError, BackupErrorCode
from heartline.settings import PREFIX, Settings

log = logging.getLogger("heartline.backup")

GIT_BRANCH = "main"


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
            if sha256_of(final) == sha256_of(archive.path):
                return
            raise BackupError(BackupErrorCode.REMOTE_FAILED,
                              f"{final} exists with other content; remote backups are never replaced")
        tmp = self.root / f".partial-{archive.path.name}"
        shutil.copyfile(archive.path, tmp)
        fsync_rename(tmp, final)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.root.glob(f"{NAME_PREFIX}*{SUFFIX}")
                      if NAME_PATTERN.match(p.name.removesuffix(SUFFIX)))

    def holds(self, archive: Archive) -> bool:
        copy = self.root / archive.path.name
        return copy.is_file() and sha256_of(copy) == sha256_of(archive.path)

    def fetch(self, name: str, dest: Path) -> Path:
        source = self.root / f"{name}{SUFFIX}"
        if not source.is_file():
            raise BackupError(BackupErrorCode.NOT_FOUND, f"{name} is not in the remote folder {self.root}")
        target = dest / source.name
        tmp = dest / f".partial-{source.name}"
        shutil.copyfile(source, tmp)
        fsync_rename(tmp, target)
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
                          if NAME_PATTERN.match(n.removesuffix(SUFFIX)))

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
            fsync_rename(tmp, target)
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


def require_remote(settings: Settings) -> Remote:
    remote = remote_of(settings)
    if remote is None:
        raise BackupError(BackupErrorCode.NO_REMOTE,
                          f"{PREFIX}BACKUP_REMOTE is not set: set it to a folder or a git URL to push backups")
    return remote


def push_backup(settings: Settings, archive: Archive) -> None:
    """Upload a verified archive to the remote; a damaged archive is never uploaded."""
    archive.verify()
    require_remote(settings).upload(archive)
    log.info("backup.pushed name=%s remote=%s", archive.name, mask_remote(settings.backup_remote))
