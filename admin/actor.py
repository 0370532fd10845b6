"""The audit actor of the admin: every transaction says which admin made the change (sql/0001 trigger).

`heartline.actor` is transaction-local, so it is set at the start of every transaction of the admin's
SQLAlchemy session (after_begin) and set again once the request knows its user — the transaction that
loaded the user from ab_user began before anyone knew who it was.
"""

from __future__ import annotations

from typing import Any

from flask import g, has_app_context
from sqlalchemy import event, text
from sqlalchemy.orm import Session, scoped_session

SET_ACTOR = text("SELECT set_config('heartline.actor', :actor, true)")
# Changes made outside a request (CLI) or before login.
SYSTEM_ACTOR = "admin:system"


def actor_for(username: str) -> str:
    return f"admin:{username}"


def current_actor(session: Session) -> str:
    # g holds a plain string: reading a user attribute here could lazy-load and begin a transaction
    # inside after_begin.
    if has_app_context():
        actor = g.get("heartline_actor")
        if actor:
            return str(actor)
    return str(session.info.get("heartline_actor", SYSTEM_ACTOR))


def install(session: scoped_session[Session]) -> None:
    """Set the actor at the start of every transaction of `session`."""

    @event.listens_for(session, "after_begin")
    def _set_actor(sess: Session, _transaction: Any, connection: Any) -> None:
        connection.execute(SET_ACTOR, {"actor": current_actor(sess)})


def bind_request_user(session: scoped_session[Session], username: str | None) -> None:
    """Record the request's admin as actor, also in the transaction that is already open."""
    if not username:
        return
    g.heartline_actor = actor_for(username)
    session.execute(SET_ACTOR, {"actor": g.heartline_actor})
