"""Helpers of the admin tests (import as `from admin_support import ...`; tests/admin is on sys.path
when pytest collects it): admin users, CSRF-aware form posts, password + TOTP sign-in."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from admin.security.totp import code_for, current_step

PASSWORD = "correct horse battery"


@dataclass
class Admin:
    username: str
    password: str
    id: int
    secret: str | None = None
    used_code: str | None = None  # the last code this test had accepted

    def code(self, step_offset: int = 0) -> str:
        assert self.secret
        return code_for(self.secret, current_step() + step_offset)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def post_form(client: FlaskClient, url: str, data: dict[str, Any], *, page: str | None = None,
              follow: bool = False) -> Any:
    """POST like a browser: fetch the page for its CSRF token first (or use `page`)."""
    html = client.get(page or url).get_data(as_text=True)
    return client.post(url, data={**data, "csrf_token": csrf_token(html)}, follow_redirects=follow)


def password_step(client: FlaskClient, admin: Admin) -> Any:
    return post_form(client, "/login/", {"username": admin.username, "password": admin.password})


def enrol(client: FlaskClient, admin: Admin) -> list[str]:
    """Password, then enrolment with the secret shown on the page; returns the recovery codes."""
    response = password_step(client, admin)
    assert response.status_code == 302 and response.location.endswith("/totp/enroll")
    page = client.get("/totp/enroll").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page)
    assert secret
    admin.secret = secret.group(1)
    admin.used_code = admin.code()
    done = client.post("/totp/enroll", data={"code": admin.used_code, "csrf_token": csrf_token(page)})
    assert done.status_code == 200, done.get_data(as_text=True)
    codes = re.findall(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>", done.get_data(as_text=True))
    assert len(codes) == 10
    return codes


def wait_next_step() -> None:
    """Sleep into the next 30 s TOTP step (a code of the current step was used already)."""
    time.sleep(30 - time.time() % 30 + 0.05)


def action(client: FlaskClient, view: str, name: str, pks: list[Any]) -> Any:
    """Run a list action of a FAB ModelView on rows, as the list page's form does."""
    page = client.get(f"/{view}/list/").get_data(as_text=True)
    return client.post(f"/{view}/action_post", data={"action": name, "rowid": [str(pk) for pk in pks],
                                                    "csrf_token": csrf_token(page)}, follow_redirects=True)


def start_live_session(settings: Any, license_id: int, fingerprint: str) -> str:
    """Start a real session in the plane as the edge would: the device activated in PostgreSQL, license
    and devices read into the plane's cache, then the start script.  Returns the session token."""
    import asyncio

    import redis.asyncio as aioredis

    from heartline import db as hldb
    from heartline.license_cache import LicenseCache
    from heartline.plane.sessions import SessionPlane

    async def go() -> str:
        client = aioredis.Redis.from_url(settings.redis_url)
        pool = await hldb.create_pool(settings.database_url, actor="test", max_size=2)
        try:
            plane = SessionPlane(client, settings)
            await plane.load_scripts()
            await pool.execute("INSERT INTO device_registrations (license_id, hardware_fingerprint) "
                               "VALUES ($1, $2) ON CONFLICT DO NOTHING", license_id, fingerprint)
            await LicenseCache(pool, plane, settings).load(license_id)
            outcome = await plane.start_session(license_id, fingerprint, client_version="1.0")
            assert outcome.granted, outcome
            assert outcome.token
            return outcome.token
        finally:
            await pool.close()
            await client.aclose()

    return asyncio.run(go())


def plane_events(settings: Any, license_id: int) -> list[Any]:
    """Session events of the license's shard stream, oldest first."""
    import redis

    from heartline.plane import keys
    from heartline.plane.events import session_event_from_fields

    shard = keys.shard_of(license_id, settings.stream_shards)
    with redis.Redis.from_url(settings.redis_url) as client:
        entries = client.xrange(keys.event_stream(shard))
    events = [session_event_from_fields(shard, eid, fields) for eid, fields in entries]
    return [e for e in events if e.license_id == license_id]


def is_live(settings: Any, license_id: int, token: str) -> bool:
    import redis

    from heartline.plane import keys

    with redis.Redis.from_url(settings.redis_url) as client:
        return client.zscore(keys.live_sessions(license_id, settings.stream_shards), token) is not None
