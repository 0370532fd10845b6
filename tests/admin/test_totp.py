"""Two-factor login: enrolment, codes, replay, lockout, recovery codes, and what a password alone gets."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from admin_support import Admin, csrf_token, enrol, password_step, post_form
from flask import Flask
from flask.testing import FlaskClient
from shared_support import one

from admin.app import create_app
from admin.security.totp import STEP_S, code_for, current_step
from heartline.settings import Settings


def sign_in_with_code(client: FlaskClient, admin: Admin, code: str) -> Any:
    assert password_step(client, admin).location.endswith("/totp/verify")
    return post_form(client, "/totp/verify", {"code": code})


def is_signed_in(client: FlaskClient) -> bool:
    return client.get("/dashboard/").status_code == 200


def test_enrolment_shows_qr_code_and_secret_and_a_first_code_signs_in(
        client: FlaskClient, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any]) -> None:
    admin = make_admin()
    password_step(client, admin)
    page = client.get("/totp/enroll").get_data(as_text=True)
    assert "<svg" in page and 'id="totp-qr"' in page
    assert re.search(r'id="totp-secret">[A-Z2-7]{32}<', page)
    codes = enrol(client, admin)
    assert is_signed_in(client)
    assert len(set(codes)) == 10
    secret_stored, confirmed = one(pg.execute("SELECT secret_encrypted, confirmed_at FROM admin_totp "
                                          "WHERE user_id = %s", (admin.id,)))
    assert confirmed is not None and admin.secret not in secret_stored
    hashes = [r[0] for r in pg.execute("SELECT code_hash FROM admin_recovery_codes WHERE user_id = %s",
                                       (admin.id,))]
    assert len(hashes) == 10 and not set(hashes) & {c.replace("-", "") for c in codes}
    actor, event = one(pg.execute("SELECT actor, new_values->>'event' FROM audit_log "
                              "WHERE table_name = 'admin_totp' AND row_id = %s", (str(admin.id),)))
    assert (actor, event) == (f"admin:{admin.username}", "totp.enrolled")


def test_enrolment_refuses_a_wrong_first_code(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    password_step(client, admin)
    response = post_form(client, "/totp/enroll", {"code": "000000"})
    assert "That code is not valid" in response.get_data(as_text=True)
    assert not is_signed_in(client)


def test_a_password_alone_gives_no_access(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    enrol(client, admin)
    client.get("/logout/")
    assert password_step(client, admin).location.endswith("/totp/verify")
    response = client.get("/dashboard/")
    assert response.status_code == 302 and "/login/" in response.location
    assert client.get("/licenseview/list/").status_code == 302


def test_a_second_login_needs_a_current_code(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    enrol(client, admin)
    client.get("/logout/")
    assert not is_signed_in(client)
    response = sign_in_with_code(client, admin, admin.code(step_offset=1))  # next step: in the window
    assert response.status_code == 302
    assert is_signed_in(client)


def test_a_wrong_code_is_refused(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    enrol(client, admin)
    client.get("/logout/")
    wrong = f"{(int(admin.code()) + 1) % 1_000_000:06d}"
    response = sign_in_with_code(client, admin, wrong)
    assert response.status_code == 200 and "That code is not valid" in response.get_data(as_text=True)
    assert not is_signed_in(client)
    too_old = code_for(admin.secret or "", current_step() - 3)  # outside the ±1 step window
    response = post_form(client, "/totp/verify", {"code": too_old})
    assert "That code is not valid" in response.get_data(as_text=True)
    assert not is_signed_in(client)


def test_a_used_code_cannot_be_replayed(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    enrol(client, admin)
    client.get("/logout/")
    # the enrolment's code again: still inside the window, even if its step has just passed
    response = sign_in_with_code(client, admin, admin.used_code or "")
    assert "already used" in response.get_data(as_text=True)
    assert not is_signed_in(client)
    # an older step's code is refused too, even inside the window
    response = post_form(client, "/totp/verify", {"code": admin.code(step_offset=-1)})
    assert "already used" in response.get_data(as_text=True)
    assert not is_signed_in(client)


def test_wrong_codes_lock_out_that_address_only_and_the_admin_is_told(
        admin_app: Flask, make_admin: Callable[..., Admin], admin_settings: Settings,
        pg: psycopg.Connection[Any]) -> None:
    admin = make_admin()
    codes = enrol(admin_app.test_client(), admin)
    # someone who knows the password, from another address, enters wrong codes until locked out
    intruder = admin_app.test_client()
    intruder.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    password_step(intruder, admin)
    page = intruder.get("/totp/verify").get_data(as_text=True)
    for _ in range(admin_settings.totp_max_failures):
        page = intruder.post("/totp/verify", data={"code": "000001", "csrf_token": csrf_token(page)}
                             ).get_data(as_text=True)
    assert "Too many failed attempts" in page
    # while locked even the right code is refused from there
    page = intruder.post("/totp/verify", data={"code": admin.code(step_offset=1),
                                               "csrf_token": csrf_token(page)}).get_data(as_text=True)
    assert "Too many failed attempts" in page and not is_signed_in(intruder)
    locked = pg.execute("SELECT actor, new_values->>'client' FROM audit_log WHERE new_values->>'event' = "
                        "'totp.locked' AND row_id = %s", (str(admin.id),)).fetchall()
    assert locked == [(f"admin:{admin.username}", "203.0.113.66")]

    # the admin, from their own address, is not locked out, and is told what happened
    own = admin_app.test_client()
    own.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    response = sign_in_with_code(own, admin, admin.code(step_offset=1))
    assert response.status_code == 302
    told = own.get("/dashboard/")
    assert told.status_code == 200
    assert f"{admin_settings.totp_max_failures} wrong two-factor code(s)" in told.get_data(as_text=True)
    assert pg.execute("SELECT failed_attempts FROM admin_totp WHERE user_id = %s", (admin.id,)).fetchone() == (0,)

    # a valid recovery code gets through even from the locked-out address
    answer = intruder.post("/totp/verify", data={"code": codes[0], "csrf_token": csrf_token(page)})
    assert answer.status_code == 302 and is_signed_in(intruder)


def test_a_recovery_code_signs_in_once(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    codes = enrol(client, admin)
    client.get("/logout/")
    response = sign_in_with_code(client, admin, codes[3].lower())  # case and dash do not matter
    assert response.status_code == 302 and is_signed_in(client)
    client.get("/logout/")
    response = sign_in_with_code(client, admin, codes[3])
    assert "That code is not valid" in response.get_data(as_text=True)
    assert not is_signed_in(client)
    response = post_form(client, "/totp/verify", {"code": codes[4]})
    assert response.status_code == 302 and is_signed_in(client)


def test_new_recovery_codes_replace_the_old_ones(signed_in: tuple[FlaskClient, Admin]) -> None:
    client, admin = signed_in
    old_page = client.get("/totp/recovery-codes").get_data(as_text=True)
    assert "<strong>10</strong> unused" in old_page
    page = client.post("/totp/recovery-codes",
                       data={"csrf_token": csrf_token(old_page)}).get_data(as_text=True)
    new_codes = re.findall(r"<li>([A-Z2-9]{5}-[A-Z2-9]{5})</li>", page)
    assert len(new_codes) == 10
    client.get("/logout/")
    assert sign_in_with_code(client, admin, new_codes[0]).status_code == 302


def test_forms_without_csrf_token_are_refused(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    response = client.post("/login/", data={"username": admin.username, "password": admin.password})
    assert response.status_code == 400
    assert not is_signed_in(client)


def test_password_only_api_login_is_refused(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    response = client.post("/api/v1/security/login", json={"username": admin.username,
                                                            "password": admin.password, "provider": "db"})
    assert response.status_code in (400, 403)
    assert "access_token" not in response.get_data(as_text=True)


def test_session_cookie_is_httponly_and_lax(client: FlaskClient, make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    response = password_step(client, admin)
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_optional_two_factor_lets_unenrolled_admins_in_with_a_password(
        admin_settings: Settings, make_admin: Callable[..., Admin]) -> None:
    app: Flask = create_app(admin_settings.replace(admin_2fa_required=False, admin_secure_cookies=True),
                            view_modules=["admin.views.dashboard"])
    client = app.test_client()
    admin = make_admin()
    response = password_step(client, admin)
    assert response.status_code == 302 and "/totp/" not in response.location
    assert "Secure" in response.headers.get("Set-Cookie", "")
    assert client.get("/dashboard/").status_code == 200


def test_code_window_is_one_step_either_side() -> None:
    from admin.security.totp import matching_step

    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    now = 1_800_000_000.0
    step = int(now // STEP_S)
    for offset in (-1, 0, 1):
        assert matching_step(secret, code_for(secret, step + offset), now) == step + offset
    for offset in (-2, 2):
        assert matching_step(secret, code_for(secret, step + offset), now) is None
    assert matching_step(secret, "12345", now) is None and matching_step(secret, "abcdef", now) is None


def test_password_guessing_is_rate_limited(admin_settings: Settings,
                                           make_admin: Callable[..., Admin]) -> None:
    app = create_app(admin_settings, view_modules=[], update_permissions=False,
                     config={"AUTH_RATE_LIMIT": "3 per minute"})
    client = app.test_client()
    admin = make_admin()
    wrong = Admin(username=admin.username, password="not the password", id=admin.id)
    statuses = [password_step(client, wrong).status_code for _ in range(4)]
    assert statuses[:3] == [302, 302, 302] and statuses[3] == 429
    assert password_step(client, admin).status_code == 429  # even the right password waits


def test_an_admin_can_reset_another_admins_two_factor_login(
        signed_in: tuple[FlaskClient, Admin], make_admin: Callable[..., Admin], admin_app: Flask,
        pg: psycopg.Connection[Any]) -> None:
    from admin_support import action

    client, boss = signed_in
    lost = make_admin("lost")
    other = admin_app.test_client()
    enrol(other, lost)
    page = action(client, "users", "reset_2fa", [lost.id]).get_data(as_text=True)
    assert f"Two-factor login of {lost.username} reset" in page
    assert one(pg.execute("SELECT count(*) FROM admin_totp WHERE user_id = %s", (lost.id,)))[0] == 0
    assert one(pg.execute("SELECT count(*) FROM admin_recovery_codes WHERE user_id = %s",
                      (lost.id,)))[0] == 0
    assert pg.execute("SELECT actor, operation FROM audit_log WHERE table_name = 'admin_totp' AND "
                      "new_values->>'event' = 'totp.reset'").fetchone() == \
        (f"admin:{boss.username}", "DELETE")
    fresh = admin_app.test_client()
    assert password_step(fresh, lost).location.endswith("/totp/enroll")


def _sealed_secret(pg: psycopg.Connection[Any], admin: Admin) -> str:
    return str(one(pg.execute("SELECT secret_encrypted FROM admin_totp WHERE user_id = %s", (admin.id,)))[0])


def test_rotating_the_secret_key_or_the_totp_keys_locks_no_one_out(
        admin_settings: Settings, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any]) -> None:
    from cryptography.fernet import Fernet

    from admin.security.keys import new_key

    def app_with(**changes: Any) -> FlaskClient:
        return create_app(admin_settings.replace(**changes), view_modules=["admin.views.dashboard"],
                          update_permissions=False).test_client()

    def current_code() -> str:
        # each sign-in below uses the current code: forget the step the previous one claimed
        pg.execute("UPDATE admin_totp SET last_used_step = 0 WHERE user_id = %s", (admin.id,))
        return admin.code()

    old_key, new = admin_settings.admin_totp_keys, new_key()
    admin = make_admin()
    enrol(app_with(), admin)
    assert Fernet(old_key.encode()).decrypt(_sealed_secret(pg, admin).encode()).decode() == admin.secret

    # a leaked Flask secret is replaced: the second factor still works
    client = app_with(admin_secret_key="a-brand-new-secret-key")
    assert sign_in_with_code(client, admin, current_code()).status_code == 302
    assert is_signed_in(client)

    # a new TOTP key goes first: the old one still decrypts, and the sign-in re-seals with the new one
    client = app_with(admin_totp_keys=f"{new},{old_key}")
    assert sign_in_with_code(client, admin, current_code()).status_code == 302
    assert Fernet(new.encode()).decrypt(_sealed_secret(pg, admin).encode()).decode() == admin.secret
    # ... so the old key can go
    client = app_with(admin_totp_keys=new)
    assert sign_in_with_code(client, admin, current_code()).status_code == 302
    assert is_signed_in(client)


def test_rotate_command_reseals_every_secret_including_those_of_the_old_derived_key(
        admin_settings: Settings, make_admin: Callable[..., Admin], pg: psycopg.Connection[Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.fernet import Fernet

    from admin.security.keys import _legacy_key, new_key, totp_keys_main

    old_style, current = make_admin(), make_admin()
    # as stored before HEARTLINE_ADMIN_TOTP_KEYS existed: sealed with the key derived from the secret key
    legacy_sealed = Fernet(_legacy_key(admin_settings.admin_secret_key or "")).encrypt(b"JBSWY3DPEHPK3PXP").decode()
    pg.execute("INSERT INTO admin_totp (user_id, secret_encrypted, last_used_step, failed_attempts, "
               "confirmed_at) VALUES (%s, %s, 0, 0, now())", (old_style.id, legacy_sealed))
    enrol(create_app(admin_settings, view_modules=[], update_permissions=False).test_client(), current)

    new = new_key()
    settings = admin_settings.replace(admin_totp_keys=f"{new},{admin_settings.admin_totp_keys}")
    assert totp_keys_main(settings, ["rotate"]) == 0
    assert "2 TOTP secret(s) re-encrypted" in capsys.readouterr().out
    fernet = Fernet(new.encode())
    assert fernet.decrypt(_sealed_secret(pg, old_style).encode()) == b"JBSWY3DPEHPK3PXP"
    assert fernet.decrypt(_sealed_secret(pg, current).encode()).decode() == current.secret
    assert totp_keys_main(settings, ["rotate"]) == 0
    assert "0 TOTP secret(s) re-encrypted" in capsys.readouterr().out
    assert pg.execute("SELECT count(*) FROM audit_log WHERE new_values->>'event' = 'totp.keys_rotated'"
                      ).fetchone() == (2,)
