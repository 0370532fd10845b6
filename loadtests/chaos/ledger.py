"""What happened during a soak, as the clients, the admin and the faults saw it: the evidence the checks
hold PostgreSQL to.

Times are wall-clock seconds (`time.time()`), the clock Redis stamps heartbeats and session ends with on
this same machine.  A request's `sent` is taken before it is written and `answered` after its answer was
read, so whatever the server did for it happened between the two.  A client has at most one request in
flight for its session, so the windows of one token's requests never overlap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

# status of a request that got no HTTP answer: connection refused or reset, or the client's timeout
NO_ANSWER = 0


class Route(StrEnum):
    START = "start"
    HEARTBEAT = "heartbeat"
    END = "end"
    DEACTIVATE = "deactivate"


@dataclass(slots=True)
class Attempt:
    route: Route
    sent: float
    answered: float
    status: int          # HTTP status, NO_ANSWER when none came
    code: str = ""       # error code of the answer, or the exception's name when none came

    @property
    def uncertain(self) -> bool:
        """No answer, or 503/504: the server may or may not have done it."""
        return self.status == NO_ANSWER or self.status >= 503


@dataclass
class Session:
    """One session token as its client knew it."""

    token: str
    license_id: int
    fingerprint: str
    earliest_start: float          # the send time of the start request that may have created it
    known_at: float                # when the client learned the token
    starts: list[Attempt] = field(default_factory=list)      # starts answered with this token
    heartbeats: list[Attempt] = field(default_factory=list)
    ends: list[Attempt] = field(default_factory=list)
    # first answer proving the session was no longer live (404/403 on it, or a new token for its device)
    gone_at: float | None = None
    abandoned_at: float | None = None


@dataclass(slots=True)
class AdminAction:
    kind: str                       # suspend, reactivate, terminate, deactivate
    license_id: int
    sent: float
    done: float
    ok: bool
    token: str = ""
    fingerprint: str = ""
    detail: str = ""


@dataclass(slots=True)
class Fault:
    kind: str
    target: str
    started: float
    ended: float = 0.0
    detail: str = ""


@dataclass(slots=True)
class SelfExit:
    part: str
    code: int
    at: float
    log_tail: str


@dataclass(slots=True)
class BacklogSample:
    taken: float                     # time the sample started: entries added before it are covered
    heartbeats_drained: bool
    events_drained: bool


@dataclass
class Ledger:
    sessions: dict[str, Session] = field(default_factory=dict)
    admin: list[AdminAction] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    self_exits: list[SelfExit] = field(default_factory=list)
    backlog: list[BacklogSample] = field(default_factory=list)
    # limit violations seen by the sampler, as printable lines; and how many samples were taken
    over_limit: list[str] = field(default_factory=list)
    samples: Counter[str] = field(default_factory=Counter)
    # every answer by route, status and code (the no-500 check and the figures)
    answers: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    # answers no client should ever get, with an example body each
    unexpected: dict[tuple[str, int, str], str] = field(default_factory=dict)
    # (sent, route, status, seconds to the answer) of every request: answers during faults, latencies
    timeline: list[tuple[float, str, int, float]] = field(default_factory=list)
    # the soak's own event loop: the longest it was late waking up (a starved harness would blur times)
    loop_lag_max_s: float = 0.0
    # starts that got no answer: a session may exist that no client knows (it times out)
    unanswered_starts: int = 0

    def session(self, token: str, license_id: int, fingerprint: str, earliest_start: float,
                known_at: float) -> Session:
        found = self.sessions.get(token)
        if found is None:
            found = self.sessions[token] = Session(token, license_id, fingerprint, earliest_start, known_at)
        return found

    def answered(self, attempt: Attempt) -> None:
        self.answers[(str(attempt.route), attempt.status, attempt.code)] += 1
        self.timeline.append((attempt.sent, str(attempt.route), attempt.status,
                              attempt.answered - attempt.sent))

    def redis_kills(self) -> list[Fault]:
        return [f for f in self.faults if f.kind in ("redis_crash", "redis_wipe")]
