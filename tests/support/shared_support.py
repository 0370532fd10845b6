"""Helpers every test folder shares (tests/support is on pytest's pythonpath and mypy's path)."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterable, Mapping
from typing import TypeVar

import psycopg

Row = TypeVar("Row")


def one(cursor: psycopg.Cursor[Row]) -> Row:
    """The row the query returned; fails the test when it returned none."""
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row


# The suite's sealing secrets (tests/conftest.py): the keys and secrets one process seals, the next opens.
SEALING_SECRETS = ("HEARTLINE_SIGNING_KEY_SECRET", "HEARTLINE_WEBHOOK_SECRET_KEY")


def process_env(settings: Mapping[str, object] | None = None, *, sealing_secrets: bool = True) -> dict[str, str]:
    """The environment for an edge, worker, admin or CLI process a test starts: this one's without any
    HEARTLINE_* variable (a developer's or the suite's settings must not leak in), except the sealing
    secrets unless `sealing_secrets` is false, plus `settings` (names as given, values as strings)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HEARTLINE_") or (sealing_secrets and k in SEALING_SECRETS)}
    env.update({name: str(value) for name, value in (settings or {}).items()})
    return env


def found(row: Row | None) -> Row:
    """A row a query returned (asyncpg's fetchrow); fails the test when it returned none."""
    assert row is not None, "the query returned no row"
    return row


def pump(lines: Iterable[str], into: queue.Queue[str]) -> None:
    """Put every line into the queue: the target of a thread reading a child process's output."""
    for line in lines:
        into.put(line)
