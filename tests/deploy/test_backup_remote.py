"""Backup remotes (a folder, a git repository) and pruning: never the last good backup, never anything remote."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from git_http import git_http_server

from heartline import backup
from heartline.backup import BackupError, BackupErrorCode, FolderRemote, GitRemote, create
from heartline.settings import Settings
from worker.backups import backup_cron, create_scheduled_backup

T0 = datetime(2026, 3, 1, 3, 0, 0, tzinfo=UTC)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _bare_repo(path: Path, *, allow_filter: bool = False) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    if allow_filter:
        # as on hosted git servers: clones may leave out blobs, fetched only when read
        subprocess.run(["git", "--git-dir", str(path), "config", "uploadpack.allowFilter", "true"], check=True)
    return path


def _git_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "--name-only", "main"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _make(settings: Settings, count: int) -> list[backup.Archive]:
    return [backup.create_backup(settings, now=T0 + timedelta(days=i)) for i in range(count)]


def test_prune_deletes_only_uploaded_backups_beyond_keep_local(backup_settings: Settings, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    settings = backup_settings.replace(backup_remote=str(remote_dir), backup_keep_local=2)
    archives = _make(settings, 5)
    for archive in archives[1:]:          # the oldest one never reached the remote
        backup.push_backup(settings, archive)
    remote_before = _digests(remote_dir)

    result = backup.prune_backups(settings)

    assert result.deleted == [archives[1].name, archives[2].name]
    assert result.kept_not_uploaded == [archives[0].name]
    assert [a.name for a in backup.local_archives(settings)] == [archives[0].name, archives[3].name,
                                                                 archives[4].name]
    assert _digests(remote_dir) == remote_before


def test_prune_never_deletes_the_last_good_backup(backup_settings: Settings, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    settings = backup_settings.replace(backup_remote=str(remote_dir), backup_keep_local=0)
    archives = _make(settings, 3)
    for archive in archives:
        backup.push_backup(settings, archive)
    # the newest local copy is damaged after upload: the one before it is now the last good backup
    data = archives[2].path.read_bytes()
    archives[2].path.write_bytes(data[: len(data) // 2])

    result = backup.prune_backups(settings)

    assert result.last_good == archives[1].name
    assert archives[1].path.exists()
    assert archives[0].name in result.deleted and not archives[0].path.exists()
    # a damaged copy does not match the remote's, so it is not "uploaded" either: kept for inspection
    assert archives[2].path.exists() and archives[2].name in result.kept_not_uploaded
    assert sorted(_digests(remote_dir)) == [a.path.name for a in archives]


def test_prune_keeps_backups_whose_remote_copy_differs(backup_settings: Settings, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    settings = backup_settings.replace(backup_remote=str(remote_dir), backup_keep_local=0)
    archives = _make(settings, 2)
    remote_dir.mkdir()
    (remote_dir / archives[0].path.name).write_bytes(b"partial upload")
    result = backup.prune_backups(settings)
    assert result.deleted == [] and archives[0].path.exists()


def test_prune_without_remote_deletes_nothing(backup_settings: Settings,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = backup_settings.replace(backup_keep_local=1)
    archives = _make(settings, 3)
    assert backup.main(settings, ["prune"]) == 0
    assert "none deleted" in capsys.readouterr().out
    assert all(a.path.exists() for a in archives)
    assert backup.prune_backups(settings).deleted == []


def test_folder_remote_never_replaces_a_backup(backup_settings: Settings, tmp_path: Path) -> None:
    remote = FolderRemote(tmp_path / "remote")
    archive = backup.create_backup(backup_settings, now=T0)
    remote.upload(archive)
    remote.upload(archive)                # same content: nothing to do
    archive.path.write_bytes(archive.path.read_bytes() + b"\0" * 512)
    with pytest.raises(BackupError) as err:
        remote.upload(archive)
    assert err.value.code is BackupErrorCode.REMOTE_FAILED


def test_damaged_archive_is_never_pushed(backup_settings: Settings, tmp_path: Path) -> None:
    settings = backup_settings.replace(backup_remote=str(tmp_path / "remote"))
    archive = backup.create_backup(settings)
    archive.path.write_bytes(archive.path.read_bytes()[:2000])
    with pytest.raises(BackupError) as err:
        backup.push_backup(settings, archive)
    assert err.value.code is BackupErrorCode.CORRUPT
    assert not (tmp_path / "remote").exists()


@pytest.mark.parametrize("allow_filter", [False, True], ids=["full-clone", "blobless-clone"])
def test_git_remote_push_list_prune_and_restore_from_remote(backup_settings: Settings, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           allow_filter: bool) -> None:
    repo = _bare_repo(tmp_path / "backups.git", allow_filter=allow_filter)
    settings = backup_settings.replace(backup_remote=str(repo), backup_keep_local=1)
    assert isinstance(backup.remote_of(settings), GitRemote)
    first = backup.create_backup(settings, now=T0)
    assert backup.main(settings, ["push"]) == 0
    second = backup.create_backup(settings, now=T0 + timedelta(days=1))
    backup.push_backup(settings, second)
    backup.push_backup(settings, second)   # idempotent: no second commit
    assert _git_files(repo) == [first.path.name, second.path.name]
    commits = subprocess.run(["git", "--git-dir", str(repo), "rev-list", "--count", "main"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert commits == "2"

    result = backup.prune_backups(settings)
    assert result.deleted == [first.name] and not first.path.exists()
    assert _git_files(repo) == [first.path.name, second.path.name]

    capsys.readouterr()
    assert backup.main(settings, ["list"]) == 0
    out = capsys.readouterr().out
    assert f"{first.name:<30} remote" in out and f"{second.name:<30} local+remote" in out

    # restoring a backup that only the remote holds fetches it, verifies it and restores it
    url = settings.database_url
    assert url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (name) VALUES ('after the backup')")
    assert backup.main(settings, ["restore", first.name, "--yes"]) == 0
    assert first.path.exists()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)


def test_git_remote_url_forms_are_recognised(tmp_path: Path) -> None:
    def kind(value: str) -> str:
        remote = backup.remote_of(Settings(backup_remote=value, backup_dir=tmp_path))
        return type(remote).__name__

    assert kind("git@github.com:acme/backups.git") == "GitRemote"
    assert kind("https://git.example.com/ops/backups") == "GitRemote"
    assert kind("ssh://backup@host/srv/backups.git") == "GitRemote"
    assert kind(str(tmp_path / "plain-folder")) == "FolderRemote"
    assert kind(str(_bare_repo(tmp_path / "repo-without-suffix"))) == "GitRemote"


async def test_scheduled_backup_creates_pushes_and_prunes(backup_settings: Settings, tmp_path: Path) -> None:
    remote_dir = tmp_path / "remote"
    settings = backup_settings.replace(backup_remote=str(remote_dir), backup_keep_local=1)
    old = backup.create_backup(settings, now=T0)
    backup.push_backup(settings, old)
    name = await create_scheduled_backup({"settings": settings})
    assert name is not None
    assert (remote_dir / f"{name}.tar").is_file()
    assert [a.name for a in backup.local_archives(settings)] == [name]
    assert sorted(_digests(remote_dir)) == [f"{old.name}.tar", f"{name}.tar"]


async def test_scheduled_backup_without_remote_keeps_everything(backup_settings: Settings) -> None:
    settings = backup_settings.replace(backup_keep_local=0)
    old = backup.create_backup(settings, now=T0)
    name = await create_scheduled_backup({"settings": settings})
    assert name is not None and old.path.exists()
    assert len(backup.local_archives(settings)) == 2


def test_backup_cron_runs_daily_at_the_configured_hour() -> None:
    job = backup_cron(Settings(backup_cron_hour=4))
    assert job.coroutine is create_scheduled_backup
    assert job.hour == {4} and job.minute == {0} and job.unique


async def test_scheduled_backup_skips_while_another_backup_runs(backup_settings: Settings) -> None:
    with psycopg.connect(backup_settings.database_url or "", autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (create._LOCK_ID,))
        with pytest.raises(BackupError) as err:
            backup.create_backup(backup_settings)
        assert err.value.code is BackupErrorCode.BUSY
        assert await create_scheduled_backup({"settings": backup_settings}) is None
    assert backup.local_archives(backup_settings) == []


def test_list_shows_local_backups_when_the_remote_is_unreachable(backup_settings: Settings, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = backup_settings.replace(backup_remote=f"file://{tmp_path}/missing.git")
    archive = backup.create_backup(settings, now=T0)
    assert backup.main(settings, ["list"]) == 0
    captured = capsys.readouterr()
    assert archive.name in captured.out and "remote not listed" in captured.err
    # pruning cannot confirm any upload, so it deletes nothing and says why
    newer = backup.create_backup(settings, now=T0 + timedelta(days=1))
    assert backup.main(settings.replace(backup_keep_local=0), ["prune"]) == 1
    assert "REMOTE_FAILED" in capsys.readouterr().err
    assert archive.path.exists() and newer.path.exists()


def test_mask_remote_hides_passwords_and_tokens() -> None:
    assert backup.mask_remote("https://ops:tok%40en@git.example.com/b.git") == "https://ops:***@git.example.com/b.git"
    assert backup.mask_remote("https://ghp_token@github.com/acme/b.git") == "https://***@github.com/acme/b.git"
    assert backup.mask_remote("ssh://git@host:2222/srv/b.git") == "ssh://git@host:2222/srv/b.git"
    assert backup.mask_remote("ssh://git:pw@host/srv/b.git") == "ssh://git:***@host/srv/b.git"
    assert backup.mask_remote("git@github.com:acme/b.git") == "git@github.com:acme/b.git"
    assert backup.mask_remote("/mnt/share/backups") == "/mnt/share/backups"
    remote = backup.remote_of(Settings(backup_remote="https://ops:tok@git.example.com/b.git"))
    assert isinstance(remote, GitRemote)
    assert remote.url == "https://git.example.com/b.git" and "tok" not in repr(remote)


def test_git_remote_credentials_never_shown_logged_or_on_gits_command_line(
        backup_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    token, wrong = "s3cret-Tok3n-Zq9", "wr0ng-Tok3n-Xy7"
    root = tmp_path / "srv"
    _bare_repo(root / "backups.git", allow_filter=True)
    # every git command line is recorded by a shim in front of the real git
    bin_dir, argv_log = tmp_path / "bin", tmp_path / "git-argv.log"
    bin_dir.mkdir()
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                              check=True).stdout.strip()
    (bin_dir / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_git} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # a user whose git stores every credential it is given: ours must never end up there
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    caplog.set_level("INFO")

    with git_http_server(root, "backup", token) as server:
        settings = backup_settings.replace(backup_remote=server.url("backups.git", credentials=f"backup:{token}"),
                                           backup_keep_local=0)
        assert backup.main(settings, ["create", "--push"]) == 0
        assert backup.main(settings, ["list"]) == 0
        name = backup.remote_of(settings).names()[0]  # type: ignore[union-attr]
        backup.local_archives(settings)[0].path.unlink()  # only the remote holds it now
        fetched = backup.find_archive(settings, name)  # a blob-less clone fetches the blob with credentials
        assert fetched.verify().name == name
        fetched.path.unlink()
        refused = settings.replace(backup_remote=server.url("backups.git", credentials=f"backup:{wrong}"))
        assert backup.main(refused, ["list"]) == 0
        assert backup.main(refused, ["push"]) == 1
        assert server.authorizations                  # the credentials did reach the server

    captured = capsys.readouterr()
    assert "backup:***@127.0.0.1" in captured.out
    assert "REMOTE_FAILED" in captured.err and "backup:***@127.0.0.1" in captured.err
    shown = captured.out + captured.err + caplog.text + argv_log.read_text()
    assert token not in shown and wrong not in shown
    assert "backups.git" in argv_log.read_text()
    assert not (home / ".git-credentials").exists()
