"""Lead CRM: institutions moving through the sales pipeline, their contacts and activities.

Called by the admin with a psycopg connection.  Every writing function is one transaction (a savepoint
inside the caller's) that sets `heartline.actor` first, so the audit trigger records who changed what;
a stage change additionally leaves a note on the institution's timeline.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from heartline.errors import HeartlineError

log = logging.getLogger("heartline.crm")


class Stage(StrEnum):
    LEAD = "lead"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    PROPOSAL = "proposal"
    WON = "won"
    LOST = "lost"


class ActivityKind(StrEnum):
    CALL = "call"
    EMAIL = "email"
    MEETING = "meeting"
    NOTE = "note"
    TASK = "task"


class CrmError(HeartlineError):
    """Base of CRM refusals."""

    code = "CRM_ERROR"
    status = 400


class InstitutionNotFound(CrmError):
    code = "INSTITUTION_NOT_FOUND"
    status = 404


class NotWon(CrmError):
    code = "INSTITUTION_NOT_WON"
    status = 409


class InvalidStage(CrmError):
    code = "INVALID_STAGE"
    status = 422


class ActivityNotFound(CrmError):
    code = "ACTIVITY_NOT_FOUND"
    status = 404


def _set_actor(conn: psycopg.Connection[Any], actor: str) -> None:
    conn.execute("SELECT set_config('heartline.actor', %s, true)", (actor,))


def _parse_stage(stage: str) -> Stage:
    try:
        return Stage(stage)
    except ValueError:
        raise InvalidStage(f"unknown stage {stage!r}; one of {', '.join(Stage)}") from None


# --- writing --------------------------------------------------------------------------------------------

def change_stage(conn: psycopg.Connection[Any], institution_id: int, stage: Stage | str, *,
                 actor: str) -> Stage:
    """Move an institution to another pipeline stage; returns the previous stage.

    Any move is allowed (pipelines go backwards too); the audit log keeps the old and new row and the
    timeline gets a note "Stage: lead → contacted".
    """
    new = _parse_stage(stage)
    with conn.transaction():
        _set_actor(conn, actor)
        row = conn.execute("SELECT stage FROM crm_institutions WHERE id = %s FOR UPDATE",
                           (institution_id,)).fetchone()
        if row is None:
            raise InstitutionNotFound(f"institution {institution_id} does not exist")
        old = Stage(row[0])
        if old is new:
            return old
        conn.execute("UPDATE crm_institutions SET stage = %s WHERE id = %s", (new.value, institution_id))
        conn.execute(
            "INSERT INTO crm_activities (institution_id, kind, subject, owner) VALUES (%s, 'note', %s, %s)",
            (institution_id, f"Stage: {old} → {new}", _owner_of(actor)))
    log.info("crm.stage.changed institution_id=%d from=%s to=%s actor=%s", institution_id, old, new, actor)
    return old


@dataclass(frozen=True)
class Conversion:
    institution_id: int
    customer_id: int
    created: bool   # False when the institution had been converted before


def convert_to_customer(conn: psycopg.Connection[Any], institution_id: int, *, actor: str) -> Conversion:
    """Turn a won institution into a customer, once: the institution row is locked, and a second call
    (a double click, another admin) finds the link and returns the same customer."""
    with conn.transaction():
        _set_actor(conn, actor)
        with conn.cursor(row_factory=dict_row) as cur:
            inst = cur.execute(
                "SELECT id, name, stage, city, country, website, customer_id FROM crm_institutions"
                " WHERE id = %s FOR UPDATE", (institution_id,)).fetchone()
            if inst is None:
                raise InstitutionNotFound(f"institution {institution_id} does not exist")
            if inst["customer_id"] is not None:
                return Conversion(institution_id, inst["customer_id"], created=False)
            if inst["stage"] != Stage.WON:
                raise NotWon(f"only a won institution becomes a customer; {inst['name']!r} is at "
                             f"stage {inst['stage']}")
            contact = cur.execute(
                "SELECT name, email, phone FROM crm_contacts WHERE institution_id = %s"
                " ORDER BY (email IS NULL), id LIMIT 1", (institution_id,)).fetchone() or {}
        where = ", ".join(part for part in (inst["city"], inst["country"]) if part)
        notes = "\n".join(part for part in (
            f"From CRM institution #{institution_id}",
            f"Contact: {contact['name']}" if contact else "",
            where, inst["website"] or "") if part)
        row = conn.execute(
            "INSERT INTO customers (name, company, email, phone, notes) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id",
            (inst["name"], inst["name"], contact.get("email"), contact.get("phone"), notes)).fetchone()
        assert row is not None
        customer_id = int(row[0])
        conn.execute("UPDATE crm_institutions SET customer_id = %s WHERE id = %s", (customer_id, institution_id))
        conn.execute(
            "INSERT INTO crm_activities (institution_id, kind, subject, owner) VALUES (%s, 'note', %s, %s)",
            (institution_id, f"Converted to customer #{customer_id}", _owner_of(actor)))
    log.info("crm.institution.converted institution_id=%d customer_id=%d actor=%s",
             institution_id, customer_id, actor)
    return Conversion(institution_id, customer_id, created=True)


def add_activity(conn: psycopg.Connection[Any], institution_id: int, kind: ActivityKind | str, subject: str, *,
                 actor: str, body: str | None = None, contact_id: int | None = None,
                 due_at: dt.datetime | None = None, owner: str | None = None,
                 occurred_at: dt.datetime | None = None) -> int:
    """Log a call / e-mail / meeting / note, or create a task (only tasks have a due date)."""
    activity = ActivityKind(kind)
    if not subject.strip():
        raise CrmError("an activity needs a subject")
    if "\x00" in subject or (body and "\x00" in body):
        raise CrmError("text must not contain NUL characters")
    if due_at is not None and activity is not ActivityKind.TASK:
        raise CrmError("only tasks have a due date")
    with conn.transaction():
        _set_actor(conn, actor)
        row = conn.execute(
            "INSERT INTO crm_activities (institution_id, contact_id, kind, subject, body, due_at, owner,"
            " occurred_at) VALUES (%s, %s, %s, %s, %s, %s, %s, coalesce(%s, now())) RETURNING id",
            (institution_id, contact_id, activity.value, subject.strip(), body, due_at,
             owner or _owner_of(actor), occurred_at)).fetchone()
    assert row is not None
    return int(row[0])


def complete_task(conn: psycopg.Connection[Any], activity_id: int, *, actor: str, done: bool = True) -> None:
    """Mark a task done (or open again)."""
    with conn.transaction():
        _set_actor(conn, actor)
        cur = conn.execute("UPDATE crm_activities SET done = %s WHERE id = %s AND kind = 'task'",
                           (done, activity_id))
        if cur.rowcount == 0:
            raise ActivityNotFound(f"task {activity_id} does not exist")


def _owner_of(actor: str) -> str:
    """'admin:alice' → 'alice': owners are admin user names, actors carry the component prefix."""
    return actor.split(":", 1)[1] if ":" in actor else actor


# --- reading --------------------------------------------------------------------------------------------

def pipeline(conn: psycopg.Connection[Any]) -> dict[Stage, list[dict[str, Any]]]:
    """Institutions grouped by stage (every stage present), most recently changed first."""
    board: dict[Stage, list[dict[str, Any]]] = {stage: [] for stage in Stage}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(
                "SELECT i.id, i.name, i.kind, i.city, i.country, i.owner, i.stage, i.customer_id, i.updated_at,"
                " (SELECT count(*) FROM crm_activities a WHERE a.institution_id = i.id"
                "  AND a.kind = 'task' AND NOT a.done) AS open_tasks"
                " FROM crm_institutions i ORDER BY i.updated_at DESC, i.id DESC").fetchall():
            board[Stage(row["stage"])].append(row)
    return board


def timeline(conn: psycopg.Connection[Any], institution_id: int) -> list[dict[str, Any]]:
    """The institution's activities, newest first, with the contact's name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT a.id, a.kind, a.subject, a.body, a.occurred_at, a.due_at, a.done, a.owner,"
            " c.name AS contact_name FROM crm_activities a LEFT JOIN crm_contacts c ON c.id = a.contact_id"
            " WHERE a.institution_id = %s ORDER BY a.occurred_at DESC, a.id DESC", (institution_id,)).fetchall()


def open_tasks(conn: psycopg.Connection[Any], owner: str) -> list[dict[str, Any]]:
    """Tasks not done that belong to `owner` (an admin user name), due soonest first, undated last."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT a.id, a.subject, a.body, a.due_at, a.institution_id, i.name AS institution_name,"
            " a.due_at IS NOT NULL AND a.due_at < now() AS overdue"
            " FROM crm_activities a JOIN crm_institutions i ON i.id = a.institution_id"
            " WHERE a.owner = %s AND a.kind = 'task' AND NOT a.done"
            " ORDER BY a.due_at NULLS LAST, a.id", (owner,)).fetchall()


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(conn: psycopg.Connection[Any], query: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """Institutions whose name, city, country, website or any contact (name, e-mail, phone, role)
    contains `query` (case-insensitive); each hit names the matching contact, if that is what matched."""
    # PostgreSQL text cannot hold NUL: such a query could match nothing anyway.
    term = query.replace("\x00", "").strip()
    if not term:
        return []
    pattern = _like(term)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT i.id, i.name, i.stage, i.city, i.country, i.owner, NULL::text AS contact_name,"
            " NULL::text AS contact_email FROM crm_institutions i"
            " WHERE i.name ILIKE %(p)s OR i.city ILIKE %(p)s OR i.country ILIKE %(p)s OR i.website ILIKE %(p)s"
            " UNION ALL "
            "SELECT i.id, i.name, i.stage, i.city, i.country, i.owner, c.name, c.email"
            " FROM crm_contacts c JOIN crm_institutions i ON i.id = c.institution_id"
            " WHERE c.name ILIKE %(p)s OR c.email ILIKE %(p)s OR c.phone ILIKE %(p)s OR c.role ILIKE %(p)s"
            " ORDER BY 2, 1, 7 NULLS FIRST LIMIT %(limit)s", {"p": pattern, "limit": limit}).fetchall()


EXPORT_COLUMNS = ("id", "name", "kind", "city", "country", "website", "stage", "owner", "customer_id",
                  "contacts", "open_tasks", "created_at", "updated_at")


def csv_cell(value: Any) -> str:
    """One CSV cell: empty for None, ISO time, and a formula-looking text quoted (CSV injection)."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    # A cell starting with = + - @ is a formula to spreadsheet programs: quote it so an institution
    # named "=HYPERLINK(...)" stays text (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(conn: psycopg.Connection[Any], *, stage: Stage | str | None = None) -> str:
    """Institutions as CSV (optionally one stage), contacts joined as 'name <e-mail>; ...'."""
    wanted = _parse_stage(stage).value if stage else None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(
                "SELECT i.id, i.name, i.kind, i.city, i.country, i.website, i.stage, i.owner, i.customer_id,"
                " (SELECT string_agg(c.name || coalesce(' <' || c.email || '>', ''), '; ' ORDER BY c.id)"
                "  FROM crm_contacts c WHERE c.institution_id = i.id) AS contacts,"
                " (SELECT count(*) FROM crm_activities a WHERE a.institution_id = i.id"
                "  AND a.kind = 'task' AND NOT a.done) AS open_tasks, i.created_at, i.updated_at"
                " FROM crm_institutions i WHERE %s::text IS NULL OR i.stage = %s ORDER BY i.id",
                (wanted, wanted)).fetchall():
            writer.writerow([csv_cell(row[col]) for col in EXPORT_COLUMNS])
    return out.getvalue()
