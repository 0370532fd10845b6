"""Sign-in limits: per client address (X-Forwarded-For believed from trusted proxies only) and per
account, without letting anyone lock an admin out of a browser that signed in before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from admin_support import Admin, enrol, password_step
from flask.testing import FlaskClient

from admin.app import create_app
from admin.security.proxies import TrustedProxies
from heartline.settings import Settings

NGINX = "127.0.0.1"   # in admin_settings' trusted proxies (the default)


def _client(settings: Settings, peer: str, forwarded_for: str | None = None, **config: Any) -> FlaskClient:
    app = create_app(settings, view_modules=[], update_permissions=False, config=config)
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    if forwarded_for:
        client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client


def _as(client: FlaskClient, peer: str, forwarded_for: str | None) -> FlaskClient:
    twin = client.application.test_client()
    twin.environ_base["REMOTE_ADDR"] = peer
    if forwarded_for:
        twin.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return twin


def test_the_client_address_comes_from_trusted_proxies_only() -> None:
    proxies = TrustedProxies(None, ("127.0.0.1/32", "10.0.0.0/8"))
    assert proxies.client("127.0.0.1", "203.0.113.5") == "203.0.113.5"
    # a client's own claim in front of what the proxies appended is skipped
    assert proxies.client("127.0.0.1", "192.0.2.1, 203.0.113.5, 10.1.2.3") == "203.0.113.5"
    # from anyone else the header is a claim, not believed
    assert proxies.client("198.51.100.9", "203.0.113.5") == "198.51.100.9"
    assert proxies.client("127.0.0.1", "not-an-address") == "127.0.0.1"


def test_password_guessing_behind_a_proxy_limits_the_guesser_not_everyone(
        admin_settings: Settings, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    guesser = _client(admin_settings, NGINX, "203.0.113.5", AUTH_RATE_LIMIT="3 per minute")
    wrong = Admin(username=admin.username, password="not the password", id=admin.id)
    assert [password_step(guesser, wrong).status_code for _ in range(4)] == [302, 302, 302, 429]
    # another client behind the same nginx signs in
    other = _as(guesser, NGINX, "198.51.100.20")
    assert password_step(other, admin).location.endswith("/totp/enroll")
    # not behind a trusted proxy, a forged header buys no fresh limit
    direct = _as(guesser, "192.0.2.77", "198.51.100.21")
    assert [password_step(direct, wrong).status_code for _ in range(4)] == [302, 302, 302, 429]
    assert password_step(_as(guesser, "192.0.2.77", "198.51.100.22"), admin).status_code == 429


def test_wrong_passwords_pause_an_account_for_new_browsers_only(
        admin_settings: Settings, make_admin: Callable[..., Admin]) -> None:
    settings = admin_settings.replace(admin_login_account_max_failures=3)
    admin = make_admin()
    known = _client(settings, NGINX, "198.51.100.30")
    enrol(known, admin)                    # this browser completed a sign-in: it carries a device cookie
    known.get("/logout/")
    wrong = Admin(username=admin.username, password="not the password", id=admin.id)
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):      # spread over addresses
        password_step(_as(known, NGINX, address), wrong)
    fresh = _as(known, NGINX, "203.0.113.4")
    response = password_step(fresh, admin)
    assert "/login/" in response.location
    assert "sign-ins from new browsers are paused" in fresh.get(response.location).get_data(as_text=True)
    # the admin's own browser is not locked out
    assert password_step(known, admin).location.endswith("/totp/verify")
