"""Fixtures of the admin tests: one admin app per run on the suite's real PostgreSQL and Redis, admin
users, a sync PostgreSQL connection for assertions, and a helper that signs in with password + TOTP."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from admin_support import PASSWORD, Admin, enrol
from flask import Flask
from flask.testing import FlaskClient

from admin.app import create_app
from admin.security.keys import new_key
from admin.users import create_admin
from heartline.settings import Settings

_counter = itertools.count(1)

# WTForms 3.3 deprecations triggered inside Flask-AppBuilder 5.3's own form fields (its DateTimeField
# search filters and QuerySelectField); nothing the admin's code can change.  Applied to tests/admin only.
FAB_WTFORMS_DEPRECATIONS = (
    "ignore:'DateTimeField' renders:DeprecationWarning",
    "ignore:Yielding raw tuples from iter_choices:DeprecationWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            for rule in FAB_WTFORMS_DEPRECATIONS:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(scope="session")
def admin_settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root: Path = tmp_path_factory.mktemp("admin")
    return Settings(database_url=database_url, redis_url=redis_url, data_dir=root / "data",
                    backup_dir=root / "backups", heartbeat_min_gap_ms=0, stream_shards=4,
                    admin_secret_key="test-admin-secret-key", admin_totp_keys=new_key(),
                    totp_max_failures=5, totp_lockout_s=300,
                    # the suite's (tests/conftest.py): the worker processes some tests start open what this seals
                    webhook_secret_key=os.environ["HEARTLINE_WEBHOOK_SECRET_KEY"])


@pytest.fixture(scope="session")
def admin_app(admin_settings: Settings) -> Flask:
    # Many sign-ins from one address: the password limiter is raised here and tested on its own.
    app = create_app(admin_settings, config={"AUTH_RATE_LIMIT": "10000 per minute"})
    app.config["TESTING"] = True
    # Tests submit forms like a browser does, CSRF token included (see csrf_token below).
    return app


@pytest.fixture
def pg(database_url: str, db: Any, redis: Any) -> Iterator[psycopg.Connection[Any]]:
    """Sync connection for assertions, on tables the `db` fixture emptied (and a Redis `redis` flushed:
    ids restart with the tables, so plane keys of an earlier test would be this test's)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


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
