"""Denial analytics: the plane's `refused` events rolled up per license, UTC day and refusal code.

The events travel in the session event streams (hl:{sN}:ev) beside started/ended; the history loop reads
them in its consumer group and stores them with the session events of the same batch, in the same
transaction, acknowledged after the commit.  Exactly once under redelivery: each event id is noted in
`license_refusal_events` by the statement that counts it, and only ids noted for the first time are
counted.  The webhook loop sends session.refused from the same events (worker/webhooks.py).
"""

from __future__ import annotations

import logging
from typing import Any

from heartline.db import Conn
from heartline.plane.events import RefusalEvent, event_kind, refusal_event_from_fields
from worker.flush import MAX_BIGINT, received_at
from worker.streams import Entry

log = logging.getLogger("worker.refusals")

REFUSED = "refused"

# Counts the events whose ids are noted here for the first time; returns how many.  Events of licenses
# deleted meanwhile are noted but not counted.
ROLL_UP = """
WITH e AS (
    SELECT DISTINCT ON (event_id) *
      FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[]) AS e(event_id, license_id, code, at)
     ORDER BY event_id
), new AS (
    INSERT INTO license_refusal_events (event_id) SELECT event_id FROM e
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), counted AS (
    INSERT INTO license_refusals_daily AS d (license_id, day, code, refusals, last_at)
    SELECT e.license_id, (e.at AT TIME ZONE 'UTC')::date, e.code, count(*), max(e.at)
      FROM e JOIN new USING (event_id)
     WHERE EXISTS (SELECT 1 FROM licenses l WHERE l.id = e.license_id)
     GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3
    ON CONFLICT (license_id, day, code) DO UPDATE
       SET refusals = d.refusals + EXCLUDED.refusals, last_at = greatest(d.last_at, EXCLUDED.last_at)
    RETURNING refusals
)
-- (a data-modifying WITH runs whether or not the query reads it)
SELECT count(*) FROM e JOIN new USING (event_id)
 WHERE EXISTS (SELECT 1 FROM licenses l WHERE l.id = e.license_id)
"""

# The ids are only needed until their entries are acknowledged (moments after the commit).
PRUNE = "DELETE FROM license_refusal_events WHERE recorded_at < now() - interval '1 day'"


def is_refusal(entry: Entry) -> bool:
    return event_kind(entry.fields) == REFUSED


def refusal_events(entries: list[Entry]) -> tuple[list[RefusalEvent], int]:
    """The `refused` events among `entries` (others are skipped), and how many were malformed."""
    events: list[RefusalEvent] = []
    malformed = 0
    for entry in entries:
        if not is_refusal(entry):
            continue
        try:
            event = refusal_event_from_fields(entry.shard, entry.entry_id, entry.fields)
            if not 0 < event.license_id <= MAX_BIGINT or not 0 < (event.device_id or 1) <= MAX_BIGINT:
                raise ValueError("license or device id out of range")
            received_at(event.at_ms)  # raises OverflowError for a time PostgreSQL cannot hold
        except (ValueError, TypeError, OverflowError) as exc:
            malformed += 1
            log.warning("worker.refusals.malformed shard=%s entry=%s error=%s", entry.shard, entry.entry_id, exc)
            continue
        events.append(event)
    return events, malformed


async def roll_up(conn: Conn, events: list[RefusalEvent]) -> int:
    """Count the events not counted before into license_refusals_daily (inside the caller's
    transaction); returns how many were counted now (0 for a batch read again)."""
    if not events:
        return 0
    columns: list[list[Any]] = [[e.event_id for e in events], [e.license_id for e in events],
                                [e.code for e in events], [received_at(e.at_ms) for e in events]]
    return int(await conn.fetchval(ROLL_UP, *columns))


async def prune_refusal_ids(ctx: dict[str, Any]) -> int:
    status = await ctx["pool"].execute(PRUNE)
    return int(status.rsplit(" ", 1)[-1])
