"""Flask configuration built from `Settings`: secret key, cookies, CSRF, database, FAB security options."""

from __future__ import annotations

from typing import Any

from flask_appbuilder.const import AUTH_DB

from admin.security.keys import KEYS_VAR, parse_keys
from heartline.settings import PREFIX, Settings, SettingsError

APP_NAME = "Heartline Admin"


def sqlalchemy_url(database_url: str) -> str:
    """The libpq URL of the settings, told to use psycopg 3 (SQLAlchemy would pick psycopg2 otherwise)."""
    scheme, rest = database_url.split("://", 1)
    if "+" in scheme:
        return database_url
    return f"postgresql+psycopg://{rest}"


def flask_config(settings: Settings) -> dict[str, Any]:
    assert settings.database_url, "the admin needs HEARTLINE_DATABASE_URL (services.resolve fills it)"
    return {
        "APP_NAME": APP_NAME,
        # Both required to serve (require_keys); `heartline dev` generates them, nothing else does.
        "SECRET_KEY": settings.admin_secret_key,
        "HEARTLINE_TOTP_KEYS": parse_keys(settings.admin_totp_keys),
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
        # Sign-in POSTs per client address (FAB's limiter; the address comes from trusted proxies only,
        # admin/security/proxies.py); wrong passwords per account and wrong codes per account and address
        # are counted on the same storage (admin/security/lockout.py).
        "AUTH_RATE_LIMITED": True,
        "AUTH_RATE_LIMIT": settings.admin_login_rate_limit,
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


def require_keys(config: dict[str, Any]) -> None:
    """Refuse to serve without a secret key and TOTP keys: a generated one would silently change (and
    log everyone out, or lock every admin out of their second factor) at the next start."""
    missing = [name for name, value in ((f"{PREFIX}ADMIN_SECRET_KEY", config.get("SECRET_KEY")),
                                        (KEYS_VAR, config.get("HEARTLINE_TOTP_KEYS"))) if not value]
    if missing:
        raise SettingsError(f"{' and '.join(missing)} not set: the admin does not start without "
                            "(only `heartline dev` generates them); `heartline totp-keys generate` prints a "
                            "TOTP key, any long random string serves as secret key")
