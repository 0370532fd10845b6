"""`heartline create-admin`: flags, refusals, and the demo admin whose password is printed once."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from admin_support import Admin, password_step
from flask import Flask
from shared_support import one

from admin.users import DEMO_USERNAME, create_admin_main
from heartline.settings import Settings


def test_create_admin_with_flags_makes_an_admin_who_can_sign_in(
        admin_settings: Settings, admin_app: Flask, pg: psycopg.Connection[Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--username", "carol_cli", "--email", "carol_cli@example.com", "--password", "s3cret-enough"]
    if pg.execute("SELECT 1 FROM ab_user WHERE username = 'carol_cli'").fetchone():
        pg.execute("DELETE FROM ab_user_role WHERE user_id = "
                   "(SELECT id FROM ab_user WHERE username = 'carol_cli')")
        pg.execute("DELETE FROM ab_user WHERE username = 'carol_cli'")
    assert create_admin_main(admin_settings, argv) == 0
    assert "Admin 'carol_cli' created" in capsys.readouterr().out
    role = pg.execute("SELECT r.name FROM ab_user u JOIN ab_user_role ur ON ur.user_id = u.id "
                      "JOIN ab_role r ON r.id = ur.role_id WHERE u.username = 'carol_cli'").fetchone()
    assert role == ("Admin",)
    user_id = one(pg.execute("SELECT id FROM ab_user WHERE username = 'carol_cli'"))[0]
    response = password_step(admin_app.test_client(), Admin("carol_cli", "s3cret-enough", user_id))
    assert response.location.endswith("/totp/enroll")
    assert create_admin_main(admin_settings, argv) == 1
    assert "exists already" in capsys.readouterr().err


def test_create_admin_refuses_a_short_password(admin_settings: Settings,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--username", "dave_cli", "--email", "dave@example.com", "--password", "short"]
    assert create_admin_main(admin_settings, argv) == 1
    assert "at least 8 characters" in capsys.readouterr().err


def test_the_demo_admin_is_created_once_and_its_password_printed_once(
        admin_settings: Settings, admin_app: Flask, pg: psycopg.Connection[Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    pg.execute("DELETE FROM ab_user_role WHERE user_id IN (SELECT id FROM ab_user WHERE username = %s)",
               (DEMO_USERNAME,))
    pg.execute("DELETE FROM ab_user WHERE username = %s", (DEMO_USERNAME,))
    assert create_admin_main(admin_settings, ["--demo"]) == 0
    first = capsys.readouterr().out
    password = re.search(r"password '([^']+)'", first)
    assert password, first
    assert create_admin_main(admin_settings, ["--demo"]) == 0
    second = capsys.readouterr().out
    assert "exists" in second and password.group(1) not in second
    user_id = one(pg.execute("SELECT id FROM ab_user WHERE username = %s", (DEMO_USERNAME,)))[0]
    response = password_step(admin_app.test_client(), Admin(DEMO_USERNAME, password.group(1), user_id))
    assert response.location.endswith("/totp/enroll")
