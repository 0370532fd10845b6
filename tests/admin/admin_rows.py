"""Rows for the admin tests, written straight into PostgreSQL (sync): what the edge or worker would write."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from shared_support import one

from heartline.license_keys import new_license_key


def customer(pg: psycopg.Connection[Any], name: str = "ACME") -> int:
    return int(one(pg.execute("INSERT INTO customers (name) VALUES (%s) RETURNING id", (name,)))[0])


def license_row(pg: psycopg.Connection[Any], **fields: Any) -> dict[str, Any]:
    fields.setdefault("customer_id", customer(pg))
    fields.setdefault("license_key", new_license_key())
    fields.setdefault("device_limit", 3)
    fields.setdefault("concurrent_sessions_limit", 2)
    cols = ", ".join(fields)
    marks = ", ".join(["%s"] * len(fields))
    cur = pg.execute(f"INSERT INTO licenses ({cols}) VALUES ({marks}) RETURNING *", tuple(fields.values()))
    names = [d.name for d in cur.description or []]
    return dict(zip(names, cur.fetchone() or (), strict=True))


def device(pg: psycopg.Connection[Any], license_id: int, fingerprint: str, **fields: Any) -> int:
    fields = {"license_id": license_id, "hardware_fingerprint": fingerprint, **fields}
    cols = ", ".join(fields)
    marks = ", ".join(["%s"] * len(fields))
    return int(one(pg.execute(f"INSERT INTO device_registrations ({cols}) VALUES ({marks}) RETURNING id",
                          tuple(fields.values())))[0])


def mirror_session(pg: psycopg.Connection[Any], license_id: int, token: str, fingerprint: str,
                   device_id: int | None = None) -> None:
    """The worker's mirror row of a live session."""
    pg.execute("INSERT INTO license_sessions (session_token, license_id, device_id, hardware_fingerprint, "
               "started_at, last_heartbeat_at, heartbeat_count, client_version, client_ip) "
               "VALUES (%s, %s, %s, %s, now(), now(), 1, '1.0', '10.0.0.7')",
               (token, license_id, device_id, fingerprint))


def history(pg: psycopg.Connection[Any], license_id: int, reason: str, *, ended: dt.datetime,
            fingerprint: str = "fp", device_id: int | None = None) -> str:
    token = str(uuid.uuid4())
    pg.execute("INSERT INTO session_history (session_token, license_id, device_id, hardware_fingerprint, "
               "started_at, ended_at, end_reason, heartbeat_count) VALUES (%s, %s, %s, %s, %s, %s, %s, 3)",
               (token, license_id, device_id, fingerprint, ended - dt.timedelta(minutes=5), ended, reason))
    return token
