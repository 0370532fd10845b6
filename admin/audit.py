"""Audit rows for admin actions the audit trigger cannot see.

The trigger (sql/0001) records every change to an audited table, with the admin as actor. Some actions
change state elsewhere — terminating a live session only touches Redis — or touch tables left out of the
trigger (the 2FA tables hold secrets); `record_event` writes their row, naming the acting admin.
"""

from __future__ import annotations

import json
from typing import Any

from flask import g
from sqlalchemy import text
from sqlalchemy.orm import Session

from admin import actor

_INSERT = text("INSERT INTO audit_log (actor, table_name, operation, row_id, new_values) "
               "VALUES (:actor, :table, :op, :row, CAST(:values AS jsonb))")


def current_admin() -> str:
    """The signed-in admin's user name, for log lines (`by=`)."""
    user = g.get("user")
    return str(getattr(user, "username", None) or "-")


def record_event(session: Session, *, table: str, operation: str, row_id: str | None, event: str,
                 by: str | None = None, **values: Any) -> None:
    """One audit row for `event`; the caller commits.

    table / operation / row_id: what the event changed, as the trigger would name it (operation is one of
    INSERT, UPDATE, DELETE); by: the acting admin's user name (default: the signed-in admin);
    values: more facts for the row's new_values (e.g. license_id).
    """
    who = actor.actor_for(by) if by else (g.get("heartline_actor") or actor.actor_for(current_admin()))
    session.execute(_INSERT, {"actor": who, "table": table, "op": operation, "row": row_id,
                              "values": json.dumps({"event": event, **values}, default=str)})
