"""One settings object, read once from `HEARTLINE_*` environment variables and passed to every part.

Each field is documented in the README's settings table; `Settings.from_env()` stops with one clear line
naming the variable when a value is malformed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "HEARTLINE_"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _parse_networks(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in items:
        ipaddress.ip_network(item, strict=False)
    return items


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Connections: unset means "start real PostgreSQL / Redis from the pip wheels in data_dir".
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".heartline")

    # Session plane defaults; a license may override interval and timeout.
    heartbeat_interval_s: int = 30
    heartbeat_timeout_s: int = 60
    # A heartbeat closer than this to the previous one is refused with 429 (not stored).
    heartbeat_min_gap_ms: int = 1000
    stream_shards: int = 8
    # 0: the edge never trims the streams (the worker trims what it stored), so a PostgreSQL outage grows
    # them and loses nothing.  A positive value caps each stream approximately, dropping unstored entries
    # in a long outage: bounded Redis memory chosen over completeness.
    stream_max_len: int = 0

    # Edge caches: a revoked API key stops working within api_key_cache_s; license edits reach the
    # edge within license_cache_s.
    api_key_cache_s: float = 30.0
    license_cache_s: float = 3.0
    max_body_bytes: int = 4096
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    edge_host: str = "127.0.0.1"
    edge_port: int = 8000
    edge_workers: int = 1

    # Worker
    flush_batch_size: int = 5000
    flush_interval_s: float = 0.5
    reap_interval_s: float = 1.0
    pending_claim_idle_s: float = 30.0
    retention_months: int = 12
    partitions_ahead_months: int = 2
    worker_metrics_port: int = 9108
    # Address the worker's /metrics listener binds; 0.0.0.0 to let a scraper in another container in.
    # worker_metrics_port 0 turns the listener off.
    worker_metrics_host: str = "127.0.0.1"
    # How often the worker looks for license_sessions rows whose session Redis lost; such a row is
    # closed as plane_lost one to two intervals after the plane lost it.
    reconcile_interval_s: float = 15.0

    # Admin
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080
    admin_secret_key: str | None = None
    admin_2fa_required: bool = True
    admin_secure_cookies: bool = False
    totp_max_failures: int = 5
    totp_lockout_s: int = 300
    # Comma-separated /metrics URLs of the edges, read by the admin dashboard's "top refusal codes";
    # empty means http://<edge_host>:<edge_port>/metrics.
    admin_edge_metrics_urls: str = ""

    # Resources
    resource_quarantine_days: int = 30
    resource_allow_private_ipv4: bool = False
    resource_low_watermark: int = 10

    # Backups
    backup_dir: Path = Path(".heartline/backups")
    backup_remote: str | None = None
    backup_keep_local: int = 7
    backup_cron_hour: int = 3

    log_level: str = "INFO"

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s < 1:
            raise SettingsError(f"{PREFIX}HEARTBEAT_INTERVAL_S must be at least 1")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError(
                f"{PREFIX}HEARTBEAT_TIMEOUT_S ({self.heartbeat_timeout_s}) must be greater than "
                f"{PREFIX}HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s})"
            )
        if not 1 <= self.stream_shards <= 1024:
            raise SettingsError(f"{PREFIX}STREAM_SHARDS must be between 1 and 1024")
        if self.retention_months < 1:
            raise SettingsError(f"{PREFIX}RETENTION_MONTHS must be at least 1")
        for name in ("database_url", "redis_url"):
            value = getattr(self, name)
            if value is not None and "://" not in value:
                raise SettingsError(f"{PREFIX}{name.upper()} is not a URL: {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `HEARTLINE_*` variables; keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            var = PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r} is malformed: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    if kind == "bool":
        return _parse_bool(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    if kind.startswith("tuple"):
        return _parse_networks(raw)
    return raw.strip()
