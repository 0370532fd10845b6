"""Settings: read once from HEARTLINE_* variables, refusing malformed values with the variable's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from heartline.settings import Settings, SettingsError


def test_defaults_match_the_domain() -> None:
    s = Settings.from_env({})
    assert (s.heartbeat_interval_s, s.heartbeat_timeout_s) == (30, 60)
    assert s.database_url is None and s.redis_url is None
    assert s.admin_2fa_required is True


def test_values_are_read_and_converted() -> None:
    s = Settings.from_env({
        "HEARTLINE_DATABASE_URL": "postgresql://u@db:5432/hl",
        "HEARTLINE_HEARTBEAT_INTERVAL_S": "10",
        "HEARTLINE_HEARTBEAT_TIMEOUT_S": "25",
        "HEARTLINE_FLUSH_INTERVAL_S": "0.25",
        "HEARTLINE_ADMIN_2FA_REQUIRED": "off",
        "HEARTLINE_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
        "HEARTLINE_DATA_DIR": "/var/lib/heartline",
    })
    assert s.database_url == "postgresql://u@db:5432/hl"
    assert (s.heartbeat_interval_s, s.heartbeat_timeout_s, s.flush_interval_s) == (10, 25, 0.25)
    assert s.admin_2fa_required is False
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert s.data_dir == Path("/var/lib/heartline")


@pytest.mark.parametrize(("var", "value", "message"), [
    ("HEARTLINE_EDGE_PORT", "eighty", "HEARTLINE_EDGE_PORT='eighty' is malformed"),
    ("HEARTLINE_ADMIN_2FA_REQUIRED", "maybe", "HEARTLINE_ADMIN_2FA_REQUIRED='maybe' is malformed"),
    ("HEARTLINE_TRUSTED_PROXIES", "10.0.0.300", "HEARTLINE_TRUSTED_PROXIES='10.0.0.300' is malformed"),
    ("HEARTLINE_DATABASE_URL", "localhost", "HEARTLINE_DATABASE_URL is not a URL"),
    ("HEARTLINE_HEARTBEAT_TIMEOUT_S", "20", "HEARTLINE_HEARTBEAT_TIMEOUT_S (20) must be greater than"),
    ("HEARTLINE_REDIS_WRITE_BATCH", "-1", "HEARTLINE_REDIS_WRITE_BATCH must be between 0 and 10000"),
])
def test_malformed_setting_names_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({var: value})

