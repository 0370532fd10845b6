"""Denials: the licenses and customers that hit their limits most over the last 7, 30 or 90 days (an
upsell signal), each linked to its license, customer and CRM institution, with a CSV export.

Read from license_refusals_daily, which the worker fills from the plane's `refused` events
(worker/refusals.py).  "Limit hits" are SESSION_LIMIT_REACHED, DEVICE_LIMIT_REACHED and
DEVICE_CHANGE_LIMIT_REACHED; refusals for the license's status (expired, suspended, revoked, not yet
valid) are counted beside them, a renewal rather than an upsell signal.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from flask import Response, request
from flask.typing import ResponseReturnValue
from flask_appbuilder import AppBuilder, BaseView, expose, has_access
from sqlalchemy import text
from sqlalchemy.orm import Session

from admin import permissions
from heartline.crm import csv_cell

PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30
TOP = 50

# Days counted: the last `days` UTC days, today included.
_PER_LICENSE = """
SELECT license_id,
       coalesce(sum(refusals) FILTER (WHERE code IN ('SESSION_LIMIT_REACHED', 'DEVICE_LIMIT_REACHED',
                                                     'DEVICE_CHANGE_LIMIT_REACHED')), 0) AS limit_hits,
       coalesce(sum(refusals) FILTER (WHERE code = 'SESSION_LIMIT_REACHED'), 0) AS session_limit,
       coalesce(sum(refusals) FILTER (WHERE code = 'DEVICE_LIMIT_REACHED'), 0) AS device_limit,
       coalesce(sum(refusals) FILTER (WHERE code = 'DEVICE_CHANGE_LIMIT_REACHED'), 0) AS device_changes,
       coalesce(sum(refusals) FILTER (WHERE code LIKE 'LICENSE\\_%'), 0) AS license_status,
       count(DISTINCT day) FILTER (WHERE code IN ('SESSION_LIMIT_REACHED', 'DEVICE_LIMIT_REACHED',
                                                  'DEVICE_CHANGE_LIMIT_REACHED')) AS days_at_limit,
       max(last_at) AS last_at
  FROM license_refusals_daily
 WHERE day > (now() AT TIME ZONE 'UTC')::date - :days
 GROUP BY license_id
"""

LICENSES = text(f"""
SELECT l.id AS license_id, l.license_key, l.product, l.status, l.concurrent_sessions_limit AS sessions_allowed,
       l.device_limit AS devices_allowed, c.id AS customer_id, c.name AS customer,
       i.id AS institution_id, i.name AS institution, i.stage,
       r.limit_hits, r.session_limit, r.device_limit, r.device_changes, r.license_status, r.days_at_limit,
       r.last_at
  FROM ({_PER_LICENSE}) r
  JOIN licenses l ON l.id = r.license_id
  JOIN customers c ON c.id = l.customer_id
  LEFT JOIN crm_institutions i ON i.customer_id = c.id
 ORDER BY r.limit_hits DESC, r.days_at_limit DESC, r.license_status DESC, l.id
 LIMIT :top
""")

CUSTOMERS = text(f"""
SELECT c.id AS customer_id, c.name AS customer, i.id AS institution_id, i.name AS institution, i.stage,
       (SELECT count(*) FROM crm_contacts ct WHERE ct.institution_id = i.id) AS contacts,
       count(*) AS licenses, sum(r.limit_hits) AS limit_hits, sum(r.session_limit) AS session_limit,
       sum(r.device_limit + r.device_changes) AS device_limit, sum(r.license_status) AS license_status,
       max(r.last_at) AS last_at
  FROM ({_PER_LICENSE}) r
  JOIN licenses l ON l.id = r.license_id
  JOIN customers c ON c.id = l.customer_id
  LEFT JOIN crm_institutions i ON i.customer_id = c.id
 GROUP BY c.id, c.name, i.id, i.name, i.stage
 ORDER BY sum(r.limit_hits) DESC, sum(r.license_status) DESC, c.id
 LIMIT :top
""")

CSV_COLUMNS = ("license_id", "license_key", "product", "status", "customer_id", "customer", "institution_id",
               "institution", "stage", "limit_hits", "session_limit", "device_limit", "device_changes",
               "license_status", "days_at_limit", "sessions_allowed", "devices_allowed", "last_at")


def period_from(raw: str | None) -> int | None:
    """The period asked for (days), the default when none is; None when it is not one of PERIODS."""
    if raw is None or raw == "":
        return DEFAULT_PERIOD
    return int(raw) if raw.isdigit() and int(raw) in PERIODS else None


def top_licenses(session: Session, days: int, top: int = TOP) -> list[Any]:
    return list(session.execute(LICENSES, {"days": days, "top": top}))


def top_customers(session: Session, days: int, top: int = TOP) -> list[Any]:
    return list(session.execute(CUSTOMERS, {"days": days, "top": top}))


def licenses_csv(rows: list[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = row._mapping
        writer.writerow([csv_cell(values[name]) for name in CSV_COLUMNS])
    return out.getvalue()


def _bad_period() -> Response:
    return Response(f"INVALID_PERIOD: the period is one of {', '.join(map(str, PERIODS))} days.\n", status=400,
                    mimetype="text/plain")


class DenialsView(BaseView):
    route_base = "/denials"
    default_view = "index"
    class_permission_name = permissions.DENIALS

    def _db(self) -> Session:
        return self.appbuilder.session  # type: ignore[no-any-return]

    @expose("/")
    @has_access
    def index(self) -> ResponseReturnValue:
        days = period_from(request.args.get("days"))
        if days is None:
            return _bad_period()
        session = self._db()
        licenses = top_licenses(session, days)
        customers = top_customers(session, days)
        session.commit()
        return self.render_template("denials/index.html", days=days, periods=PERIODS, licenses=licenses,
                                    customers=customers, top=TOP)

    @expose("/export.csv")
    @has_access
    def export(self) -> ResponseReturnValue:
        """The licenses of the dashboard (all of them, not only the top) as CSV."""
        days = period_from(request.args.get("days"))
        if days is None:
            return _bad_period()
        session = self._db()
        rows = top_licenses(session, days, top=100_000)
        session.commit()
        name = f"denials-{days}d-{dt.datetime.now(dt.UTC).date().isoformat()}.csv"
        return Response(licenses_csv(rows), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(DenialsView, "Denials", icon="fa-ban", category="Licensing")
