"""Flask configuration from Settings: the secret key, cookies, CSRF and the database URL."""

from __future__ import annotations

import stat
from pathlib import Path

from admin.config import SECRET_KEY_FILE, flask_config, secret_key, sqlalchemy_url
from heartline.settings import Settings


def test_without_a_configured_key_one_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    key = secret_key(settings)
    path = tmp_path / "data" / SECRET_KEY_FILE
    assert len(key) >= 64 and path.read_text() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key(settings) == key  # restarts keep sessions and TOTP secrets readable
    assert secret_key(settings.replace(admin_secret_key="from-the-environment")) == "from-the-environment"


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
