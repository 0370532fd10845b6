"""The Redis key layout of the session plane.  No other file formats a key.

Every key that a decision about license L touches carries the hash tag of L's *shard* `{s<N>}`
(N = L mod stream_shards), and so do that shard's deadline index and streams.  One Lua script can then
check a session, extend it, index its deadline and append the heartbeat event atomically on one cluster
slot: an accepted heartbeat is always recorded, a refused one never is, in one round trip.
(The first design tagged keys per license, `{L<id>}`, which puts the streams on other slots than the
license and forces the stream write out of the script into a separate, non-atomic command; see
docs/architecture.md.)

The shard count is fixed for a deployment: changing it moves licenses to other keys, so drain the
streams and restart everything together when changing HEARTLINE_STREAM_SHARDS.
"""

from __future__ import annotations

PREFIX = "hl"

# A license's session keys (live, ss) live for timeout + SESSION_GRACE_MS after their last write: the
# reaper, not key expiry, ends sessions (so each gets its `ended(timeout)` event); the grace only bounds
# memory if no reaper runs at all.
SESSION_GRACE_MS = 300_000
# The cached license hash expires on its own so a license nobody uses leaves Redis; the edge refreshes
# it from PostgreSQL when the version in PostgreSQL moved (see edge license cache).
LICENSE_CACHE_TTL_S = 3600

# Stream consumer groups (created by the worker with MKSTREAM).
HEARTBEAT_GROUP = "flush"
EVENT_GROUP = "history"
# The worker's webhook sender reads the same session events in a group of its own (docs/webhooks.md).
WEBHOOK_GROUP = "webhooks"


def shard_of(license_id: int, shards: int) -> int:
    return license_id % shards


def _tag(license_id: int, shards: int) -> str:
    return f"{PREFIX}:{{s{shard_of(license_id, shards)}}}"


# A license's keys are its base `hl:{sN}:L<id>:` and one of these suffixes.
LICENSE_SUFFIX = "lic"
DEVICES_SUFFIX = "dev"
LIVE_SUFFIX = "live"
SESSIONS_SUFFIX = "ss"
QUEUE_SUFFIX = "q"
QUEUE_EXPIRY_SUFFIX = "qx"

# Most tickets one license's seat queue holds; a refused start beyond it gets no ticket.
QUEUE_MAX_TICKETS = 1000


def license_base(license_id: int, shards: int) -> str:
    """`hl:{sN}:L<id>:`, the start of every key of one license."""
    return f"{_tag(license_id, shards)}:L{license_id}:"


def license_hash(license_id: int, shards: int) -> str:
    """Cached license: status, valid_until_ms, limits, heartbeat interval/timeout, version."""
    return license_base(license_id, shards) + LICENSE_SUFFIX


def devices(license_id: int, shards: int) -> str:
    """Hash: activated fingerprint -> device id."""
    return license_base(license_id, shards) + DEVICES_SUFFIX


def live_sessions(license_id: int, shards: int) -> str:
    """Zset: session token -> deadline in ms (Redis server clock)."""
    return license_base(license_id, shards) + LIVE_SUFFIX


def sessions(license_id: int, shards: int) -> str:
    """Hash: session token -> packed record 'device id|started|last heartbeat|count|ip|client version'.

    started (ms since the epoch), last heartbeat (ms after started, '' before the first) and count are in
    base 36; records written before that are decimal with the last heartbeat in ms since the epoch (a
    started of 12 characters or more; SessionPlane.seat_holders and the Lua prelude read both).  A record
    longer than 64 bytes (Redis's default hash-max-listpack-value, beyond which the whole hash becomes a
    hashtable) keeps 'device id|started|last heartbeat|count' under the token and 'ip|client version' in
    field 'x:<token>'.

    One field per session in a small per-license hash (listpack-encoded) rather than a key per session:
    a key, its hash and its expiry entry cost ~240 bytes of Redis memory, a field ~90.  The same device
    resumes its session by its device id, found by scanning these records (a license holds at most 10
    concurrent sessions); there is no fingerprint -> token map (until 2026-11 `hl:{sN}:L<id>:fp`, ~67
    bytes per session; the devices hash maps fingerprint -> device id).

    Besides the records: '!g' (the license's resume grace in ms), 'l:<token>' (a revived session's
    lapses), 'b:<token>' (a borrowed session's end in ms) and 'x:<token>' (a split record's tail)."""
    return license_base(license_id, shards) + SESSIONS_SUFFIX


def queue(license_id: int, shards: int) -> str:
    """Zset: '<ticket>|<fingerprint>' -> arrival order, the license's seat queue (FIFO)."""
    return license_base(license_id, shards) + QUEUE_SUFFIX


def queue_expiry(license_id: int, shards: int) -> str:
    """Zset: '<ticket>|<fingerprint>' -> ms the ticket expires unless renewed."""
    return license_base(license_id, shards) + QUEUE_EXPIRY_SUFFIX


def queue_keys(license_id: int, shards: int) -> list[str]:
    """The seat queue's two keys in the order start.lua declares them (queue_keys() in the prelude)."""
    base = license_base(license_id, shards)
    return [base + QUEUE_SUFFIX, base + QUEUE_EXPIRY_SUFFIX]


def deadlines(shard: int) -> str:
    """Zset: license id -> its earliest session deadline ms, the reaper's index for one shard.

    One entry per license with live sessions (not per session): the index stays small, and the reaper
    ends all of a license's expired sessions in one visit."""
    return f"{PREFIX}:{{s{shard}}}:deadlines"


def live_count(shard: int) -> str:
    """String: number of live sessions in the shard (INCR at start, DECR at end), for metrics."""
    return f"{PREFIX}:{{s{shard}}}:count"


def heartbeat_stream(shard: int) -> str:
    """Stream of accepted heartbeats (fields: see events.HeartbeatEvent), group `flush`."""
    return f"{PREFIX}:{{s{shard}}}:hb"


def event_stream(shard: int) -> str:
    """Stream of session started/ended events (fields: see events.SessionEvent), group `history`."""
    return f"{PREFIX}:{{s{shard}}}:ev"


def license_keys(license_id: int, shards: int) -> list[str]:
    """The four keys of a license in the order the scripts declare them (license_keys() in the Lua
    prelude): license hash, devices, live sessions, session records."""
    base = license_base(license_id, shards)
    return [base + LICENSE_SUFFIX, base + DEVICES_SUFFIX, base + LIVE_SUFFIX, base + SESSIONS_SUFFIX]


def shard_keys(shard: int) -> list[str]:
    """The shard keys every session-ending script declares (shard_keys() in the Lua prelude): deadline
    index, event stream, live count."""
    return [deadlines(shard), event_stream(shard), live_count(shard)]


def all_shards(shards: int) -> range:
    return range(shards)


def workers() -> str:
    """Hash: worker consumer name -> JSON {seen, loops: {loop: last success}} (see plane/presence.py).

    Not tagged: one small key, read by `heartline status`, on whatever node holds its slot."""
    return f"{PREFIX}:workers"
