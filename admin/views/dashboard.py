"""The dashboard: live sessions now, heartbeats per minute, expiring licenses, devices near their limit
and the edge's top refusal codes, drawn as server-side SVG charts."""

from __future__ import annotations

import datetime as dt
import logging
import re
import urllib.request
from collections import Counter
from typing import Any

from flask import g, redirect, url_for
from flask_appbuilder import AppBuilder, BaseView, IndexView, expose, has_access
from sqlalchemy import text
from sqlalchemy.orm import Session

from admin import charts, permissions
from admin.plane import PlaneError
from admin.views.base import plane, settings

log = logging.getLogger("admin.dashboard")

EXPIRY_HORIZON_DAYS = 30
NEAR_LIMIT_RATIO = 0.8
# Prometheus samples carrying a refusal code, e.g.
# heartline_edge_refusals_total{code="SESSION_LIMIT_REACHED"} 3
REFUSAL_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][\w:]*refus\w*)\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)')
CODE_LABEL = re.compile(r'code="(?P<code>[^"]+)"')

HEARTBEATS_PER_MINUTE = text("""
    SELECT date_trunc('minute', received_at) AS minute, count(*) AS n
    FROM license_heartbeats
    WHERE received_at >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY 1
""")
# Webhook endpoints the worker disabled (or that are failing now): the admin must hear of them.
WEBHOOK_TROUBLE = text("""
SELECT id, url, enabled, disabled_reason, failing_since FROM webhook_endpoints
 WHERE NOT enabled OR failing_since IS NOT NULL ORDER BY enabled, failing_since LIMIT 20
""")
EXPIRING = text("""
    SELECT l.id, l.license_key, c.name AS customer, l.valid_until,
           ceil(extract(epoch FROM l.valid_until - now()) / 86400)::int AS days_left
    FROM licenses l JOIN customers c ON c.id = l.customer_id
    WHERE l.status = 'active' AND l.valid_until > now()
      AND l.valid_until <= now() + make_interval(days => :days)
    ORDER BY l.valid_until
    LIMIT 15
""")
NEAR_LIMIT = text("""
    SELECT l.id, l.license_key, l.device_limit, d.active
    FROM (SELECT license_id, count(*) AS active FROM device_registrations WHERE is_active
          GROUP BY license_id) d
    JOIN licenses l ON l.id = d.license_id
    WHERE d.active >= l.device_limit * :ratio
    ORDER BY d.active::float / l.device_limit DESC, d.active DESC
    LIMIT 15
""")
MIRROR_COUNT = text("SELECT count(*) FROM license_sessions")


def heartbeats_per_minute(session: Session, now: dt.datetime) -> list[tuple[str, int]]:
    counts = {row.minute.replace(second=0, microsecond=0): row.n
              for row in session.execute(HEARTBEATS_PER_MINUTE)}
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=59)
    minutes = [start + dt.timedelta(minutes=i) for i in range(60)]
    return [(m.strftime("%H:%M"), int(counts.get(m, 0))) for m in minutes]


def parse_refusals(metrics_text: str) -> Counter[str]:
    """Sum the samples of refusal counters by their `code` label."""
    totals: Counter[str] = Counter()
    for line in metrics_text.splitlines():
        sample = REFUSAL_SAMPLE.match(line)
        if not sample or sample["name"].endswith(("_created", "_bucket")):
            continue
        code = CODE_LABEL.search(sample["labels"])
        if code:
            totals[code["code"]] += int(float(sample["value"]))
    return totals


def edge_refusals(urls: list[str]) -> tuple[Counter[str], list[str]]:
    """Refusal counts from the edges' /metrics (counted since each edge started); unreachable edges listed."""
    totals: Counter[str] = Counter()
    unreachable = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                totals.update(parse_refusals(response.read().decode()))
        except (OSError, ValueError):
            unreachable.append(url)
    return totals, unreachable


def edge_metrics_urls() -> list[str]:
    s = settings()
    configured = s.admin_edge_metrics_urls
    if configured:
        return [u.strip() for u in str(configured).split(",") if u.strip()]
    return [f"http://{s.edge_host}:{s.edge_port}/metrics"]


class DashboardView(BaseView):
    route_base = "/dashboard"
    default_view = "index"
    class_permission_name = permissions.DASHBOARD

    @expose("/")
    @has_access
    def index(self) -> Any:
        session = self.appbuilder.session
        now = session.execute(text("SELECT now()")).scalar_one()
        try:
            live_now: int | None = plane().live_count()
        except PlaneError as exc:
            log.warning("dashboard.plane.unreachable error=%s", exc)
            live_now = None
        mirrored = int(session.execute(MIRROR_COUNT).scalar_one())
        per_minute = heartbeats_per_minute(session, now)
        expiring = session.execute(EXPIRING, {"days": EXPIRY_HORIZON_DAYS}).all()
        near = session.execute(NEAR_LIMIT, {"ratio": NEAR_LIMIT_RATIO}).all()
        refusals, unreachable = edge_refusals(edge_metrics_urls())
        webhook_trouble = session.execute(WEBHOOK_TROUBLE).all()
        session.commit()
        return self.render_template(
            "heartline/dashboard.html",
            live_now=live_now, mirrored=mirrored,
            heartbeats_last_hour=sum(v for _, v in per_minute),
            heartbeat_chart=charts.column_chart(per_minute, title="Heartbeats per minute, last hour"),
            expiring=expiring,
            expiring_chart=charts.bar_list(
                [(f"{r.license_key} · {r.customer}", EXPIRY_HORIZON_DAYS - r.days_left + 1,
                  f"{r.days_left} d") for r in expiring],
                title="Licenses expiring within 30 days", maximum=EXPIRY_HORIZON_DAYS),
            near_chart=charts.bar_list(
                [(r.license_key, r.active / r.device_limit, f"{r.active}/{r.device_limit}") for r in near],
                title="Devices per license near the limit", maximum=1, color_by_ratio=True),
            refusal_chart=charts.bar_list([(code, n, str(n)) for code, n in refusals.most_common(8)],
                                          title="Top refusal codes"),
            unreachable=unreachable, webhook_trouble=webhook_trouble, user=g.user)


class DashboardIndexView(IndexView):
    """`/`: the dashboard for a signed-in admin, the login page otherwise."""

    @expose("/")
    def index(self) -> Any:
        if g.user is not None and g.user.is_authenticated:
            return redirect(url_for("DashboardView.index"))
        return redirect(self.appbuilder.get_url_for_login)


def register(appbuilder: AppBuilder) -> None:
    appbuilder.add_view(DashboardView, "Dashboard", icon="fa-dashboard")
