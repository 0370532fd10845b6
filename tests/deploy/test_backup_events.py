"""Every path that backs up records what happened in backup_events; freshness is read back from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from heartline import backup, backup_events
from heartline.backup_events import Freshness
from heartline.settings import Settings
from worker.backups import create_scheduled_backup

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def events(url: str) -> list[tuple[str, str, str | None, str | None]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT kind, trigger, name, detail FROM backup_events ORDER BY id").fetchall()]


async def test_scheduled_backup_records_creation_and_upload(backup_settings: Settings, tmp_path: Path) -> None:
    settings = backup_settings.replace(backup_remote=str(tmp_path / "remote"))
    name = await create_scheduled_backup({"settings": settings})
    assert events(settings.database_url or "") == [("created", "scheduled", name, None),
                                                    ("uploaded", "scheduled", name, None)]
    fresh = backup_events.read(settings.database_url or "")
    assert fresh.last_created is not None and fresh.last_uploaded is not None and fresh.last_failed is None
    assert fresh.problems(backup_events.utcnow(), remote_configured=True) == []


async def test_failed_scheduled_backup_is_recorded_and_reported(backup_settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = backup_settings.replace(backup_dir=tmp_path / "a-file" / "backups")
    with pytest.raises(OSError):
        await create_scheduled_backup({"settings": settings})
    [(kind, trigger, name, detail)] = events(settings.database_url or "")
    assert (kind, trigger, name) == ("failed", "scheduled", None)
    assert detail is not None and detail.startswith("create: NotADirectoryError")
    problems = backup_events.read(settings.database_url or "").problems(backup_events.utcnow(),
                                                                       remote_configured=False)
    assert problems[0] == "no backup was ever taken"
    assert problems[1].startswith("the last backup attempt failed 0 min ago: create: NotADirectoryError")


def test_backup_command_records_manual_backups(backup_settings: Settings, tmp_path: Path) -> None:
    settings = backup_settings.replace(backup_remote=str(tmp_path / "remote"))
    assert backup.main(settings, ["create", "--push"]) == 0
    kinds = [(k, t) for k, t, _name, _detail in events(settings.database_url or "")]
    assert kinds == [("created", "manual"), ("uploaded", "manual")]


def test_freshness_problems_follow_the_26_hour_rule() -> None:
    fresh = Freshness(NOW - timedelta(hours=25), NOW - timedelta(hours=25), None, None)
    assert fresh.problems(NOW, remote_configured=True) == []
    stale = Freshness(NOW - timedelta(hours=27), NOW - timedelta(hours=27), None, None)
    assert stale.problems(NOW, remote_configured=True) == [
        "the newest backup is 27 h 0 min old", "the newest upload to the remote is 27 h 0 min old"]
    never_uploaded = Freshness(NOW - timedelta(hours=1), None, None, None)
    assert never_uploaded.problems(NOW, remote_configured=False) == []
    assert never_uploaded.problems(NOW, remote_configured=True) == ["no backup was ever uploaded to the remote"]
    # a failure older than the newest success is history, a newer one is news
    healed = Freshness(NOW - timedelta(hours=1), None, NOW - timedelta(hours=2), "push: refused")
    assert healed.problems(NOW, remote_configured=False) == []
    broken = Freshness(NOW - timedelta(hours=3), None, NOW - timedelta(hours=2), "push: refused")
    assert broken.problems(NOW, remote_configured=False) == ["the last backup attempt failed 2 h 0 min ago: push: refused"]
