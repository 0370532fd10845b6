"""Fixtures of the admin tests: one admin app per run on the suite's real PostgreSQL and Redis, admin
users, a sync PostgreSQL connection for assertions, and a helper that signs in with password + TOTP."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin.app import VIEW_MODULES, create_app
from admin.security.totp import code_for, current_step
from admin.users import create_admin
from heartline.settings import Settings

PASSWORD = "correct horse battery"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def admin_settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root: Path = tmp_path_factory.mktemp("admin")
    return Settings(database_url=database_url, redis_url=redis_url, data_dir=root / "data",
                    backup_dir=root / "backups", heartbeat_min_gap_ms=0, stream_shards=4,
                    admin_secret_key="test-admin-secret-key", totp_max_failures=5, totp_lockout_s=300)


@pytest.fixture(scope="session")
def admin_app(admin_settings: Settings) -> Flask:
    app = create_app(admin_settings, [m for m in VIEW_MODULES if m not in ("admin.views.resources", "admin.views.crm")])
    app.config["TESTING"] = True
    # Tests submit forms like a browser does, CSRF token included (see csrf_token below).
    return app


@pytest.fixture
def pg(database_url: str, db: Any) -> Iterator[psycopg.Connection[Any]]:
    """Sync connection for assertions, on tables the `db` fixture emptied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@dataclass
class Admin:
    username: str
    password: str
    id: int
    secret: str | None = None

    def code(self, step_offset: int = 0) -> str:
        assert self.secret
        return code_for(self.secret, current_step() + step_offset)


@pytest.fixture
def make_admin(admin_settings: Settings, pg: psycopg.Connection[Any]) -> Callable[..., Admin]:
    def make(prefix: str = "alice") -> Admin:
        username = f"{prefix}{next(_counter)}_{int(time.time() * 1000) % 100000}"
        assert create_admin(admin_settings, username=username, email=f"{username}@example.com",
                            password=PASSWORD)
        row = pg.execute("SELECT id FROM ab_user WHERE username = %s", (username,)).fetchone()
        assert row
        return Admin(username=username, password=PASSWORD, id=row[0])
    return make


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
    done = client.post("/totp/enroll", data={"code": admin.code(), "csrf_token": csrf_token(page)})
    assert done.status_code == 200, done.get_data(as_text=True)
    codes = re.findall(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>", done.get_data(as_text=True))
    assert len(codes) == 10
    return codes


def wait_next_step() -> None:
    """Sleep into the next 30 s TOTP step (a code of the current step was used already)."""
    time.sleep(30 - time.time() % 30 + 0.05)


@pytest.fixture
def client(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


@pytest.fixture
def signed_in(client: FlaskClient, make_admin: Callable[..., Admin]) -> tuple[FlaskClient, Admin]:
    """A client signed in as a new admin who enrolled TOTP just now."""
    admin = make_admin()
    enrol(client, admin)
    assert client.get("/dashboard/").status_code == 200
    return client, admin
