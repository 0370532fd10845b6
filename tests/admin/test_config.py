"""Flask configuration from Settings: the keys it refuses to start without, cookies, CSRF, the database URL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from admin.app import create_app
from admin.config import flask_config, sqlalchemy_url
from admin.security.keys import parse_keys
from heartline.devstack import DEV_SECRETS_FILE, LEGACY_SECRET_KEY_FILE, dev_secrets
from heartline.settings import Settings, SettingsError


def test_the_admin_refuses_to_start_without_its_keys(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://u@127.0.0.1:1/none", data_dir=tmp_path / "data")
    with pytest.raises(SettingsError) as err:
        create_app(settings)
    assert "HEARTLINE_ADMIN_SECRET_KEY and HEARTLINE_ADMIN_TOTP_KEYS not set" in str(err.value)
    with pytest.raises(SettingsError) as err:
        create_app(settings.replace(admin_secret_key="k"))
    assert "HEARTLINE_ADMIN_TOTP_KEYS not set" in str(err.value)
    with pytest.raises(SettingsError) as err:
        create_app(settings.replace(admin_secret_key="k", admin_totp_keys="not-a-fernet-key"))
    assert "HEARTLINE_ADMIN_TOTP_KEYS: key 1 is not a Fernet key" in str(err.value)
    # nothing was generated behind the admin's back
    assert not (tmp_path / "data").exists()


def test_dev_secrets_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / LEGACY_SECRET_KEY_FILE).write_text("key-of-an-earlier-dev-run\n")
    first = dev_secrets(data)
    path = data / DEV_SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first["admin_secret_key"] == "key-of-an-earlier-dev-run"   # earlier sessions stay valid
    assert parse_keys(first["admin_totp_keys"]) == [first["admin_totp_keys"]]
    assert len(first["postgres_password"]) >= 24 and len(first["redis_password"]) >= 24
    path.chmod(0o644)
    assert dev_secrets(data) == first                                  # restarts keep them
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cookies_are_httponly_lax_and_secure_when_asked(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://u@db:5432/heartline", data_dir=tmp_path,
                        admin_secret_key="k")
    config = flask_config(settings)
    assert (config["SESSION_COOKIE_HTTPONLY"], config["SESSION_COOKIE_SAMESITE"]) == (True, "Lax")
    assert config["SESSION_COOKIE_SECURE"] is False and config["WTF_CSRF_ENABLED"] is True
    assert flask_config(settings.replace(admin_secure_cookies=True))["SESSION_COOKIE_SECURE"] is True
    assert config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db:5432/heartline"


def test_database_urls_keep_their_query_and_an_explicit_driver() -> None:
    assert sqlalchemy_url("postgres://u@h/db?sslmode=require") == \
        "postgresql+psycopg://u@h/db?sslmode=require"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
