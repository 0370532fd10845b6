"""Flask configuration built from `Settings`: secret key, cookies, CSRF, database, FAB security options."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask_appbuilder.const import AUTH_DB

from heartline.settings import Settings

APP_NAME = "Heartline Admin"
SECRET_KEY_FILE = "admin_secret_key"


def sqlalchemy_url(database_url: str) -> str:
    """The libpq URL of the settings, told to use psycopg 3 (SQLAlchemy would pick psycopg2 otherwise)."""
    scheme, rest = database_url.split("://", 1)
    if "+" in scheme:
        return database_url
    return f"postgresql+psycopg://{rest}"


def secret_key(settings: Settings) -> str:
    """HEARTLINE_ADMIN_SECRET_KEY, or in development a random key kept in the data folder (mode 0600).

    Persisting it keeps sessions and the TOTP secrets (encrypted with a key derived from it) valid across
    restarts of `heartline dev`.
    """
    if settings.admin_secret_key:
        return settings.admin_secret_key
    path = Path(settings.data_dir) / SECRET_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def flask_config(settings: Settings) -> dict[str, Any]:
    assert settings.database_url, "the admin needs HEARTLINE_DATABASE_URL (services.resolve fills it)"
    return {
        "APP_NAME": APP_NAME,
        "SECRET_KEY": secret_key(settings),
        "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(settings.database_url),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "pool_size": 5,
                                      "connect_args": {"options": "-c timezone=UTC"}},
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        # Cookies: HttpOnly always; Secure behind TLS (HEARTLINE_ADMIN_SECURE_COOKIES); Lax keeps the
        # cookie off cross-site POSTs, CSRF tokens (Flask-WTF) cover the rest.
        "SESSION_COOKIE_NAME": "heartline_admin",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SECURE": settings.admin_secure_cookies,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": settings.admin_secure_cookies,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "PERMANENT_SESSION_LIFETIME": 8 * 3600,
        "WTF_CSRF_ENABLED": True,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "AUTH_TYPE": AUTH_DB,
        "AUTH_ROLE_ADMIN": "Admin",
        "AUTH_USER_REGISTRATION": False,
        # Password guessing is slowed by FAB's limiter; TOTP failures lock the account (admin_totp).
        "AUTH_RATE_LIMITED": True,
        "AUTH_RATE_LIMIT": "20 per minute",
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": "memory://",
        "FAB_ADD_SECURITY_API": False,
        "FAB_API_SWAGGER_UI": False,
        "FAB_BASE_TEMPLATE": "heartline/base.html",
        "FAB_INDEX_VIEW": "admin.views.dashboard.DashboardIndexView",
        "FAB_PASSWORD_COMPLEXITY_ENABLED": False,
        "BABEL_DEFAULT_LOCALE": "en",
        "LANGUAGES": {"en": {"flag": "gb", "name": "English"}},
        "HEARTLINE_SETTINGS": settings,
    }
