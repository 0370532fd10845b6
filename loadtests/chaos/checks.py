"""The verdict of a soak: the ledger held against what PostgreSQL stored.

1. **Every heartbeat answered 200 is stored exactly once.**  A heartbeat row's `received_at` is the Redis
   clock when it was accepted, so it lies between the request's send and answer times; one token's
   requests never overlap, so each 200 is matched to its own row.  A row no 200 matches must be explained
   by a request that got no answer or a 503 (the server may have done it anyway), one row each; any other
   row is a duplicate.  A 200 without its row is *lost*: allowed only in the loss window of a Redis crash
   — accepted after the last sample that saw the backlog drained before Redis was killed — and counted
   per crash.  After a crash that kept its append-only file, only what `appendfsync everysec` may drop
   (the last 2 s) is allowed.
2. **Every session that ended is in history once, with a true reason**, judged from what its client, the
   admin and the faults did: `client_end` only if its client ended it (and then nothing else, unless the
   end was lost in a loss window), `timeout` only if nothing renewed it for the timeout before `ended_at`,
   `license_suspended` / `device_deactivated` / `admin_terminated` only around such an action,
   `plane_lost` only across a Redis crash that came back empty.  A session with no history row is lost
   only if its start was in a loss window.  Nothing stays open in `license_sessions` after the drain.
3. **No license over its limits**: the sampler's findings (sampler.py).
4. **A suspended license is refused** (starts and heartbeats) from `license_cache_s` + SLACK_S after the
   suspension committed until a reactivation was sent (the admin's plane script does it at once; when Redis
   was unreachable for it, the edges' poll of PostgreSQL must).  A reactivation counts from when it was
   sent, whatever the harness heard back: its UPDATE may commit before the answer arrives, or commit
   although the harness gave up waiting (a timeout through the black-holed PostgreSQL proxy is in doubt,
   not a failure), and from its commit on the edges rightly serve the license.
5. **No 500**, and no answer a well-behaved client should never get.
6. **No process exited by itself**, and **the backlog drained** at the end.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from loadtests.chaos.ledger import Attempt, Fault, Ledger, Session

# received_at is stored in ms (floored) and read back as float seconds: a little slack each side
EPS = 0.005
# appendfsync everysec: Redis may lose up to about two seconds of writes when the machine (or, with a
# slow disk, the process) dies
AOF_EVERYSEC_WINDOW_S = 2.0
# Processes on a loaded machine run late: a license change must reach the plane within license_cache_s
# plus this (a cache stale for longer, e.g. an edit never picked up, is a violation).
SLACK_S = 10.0

HEARTBEAT_ROWS = """
SELECT session_token::text AS token, extract(epoch FROM received_at)::float8 AS at
  FROM license_heartbeats WHERE license_id = ANY($1::bigint[])
"""
DUPLICATE_EVENTS = """
SELECT count(*) - count(DISTINCT event_id) FROM license_heartbeats WHERE license_id = ANY($1::bigint[])
"""
HISTORY_ROWS = """
SELECT session_token::text AS token, end_reason, extract(epoch FROM ended_at)::float8 AS ended_at,
       heartbeat_count
  FROM session_history WHERE license_id = ANY($1::bigint[])
"""
OPEN_ROWS = "SELECT session_token::text AS token FROM license_sessions WHERE license_id = ANY($1::bigint[])"


class Row(Protocol):
    """A row read by column name: asyncpg's Record, or a dict in the checks' unit tests."""

    def __getitem__(self, key: str) -> Any: ...


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    # what the client saw of each session named in a violation, for the post-mortem (stories.txt)
    stories: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.violations.append(line)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Window:
    """What one Redis crash lost (for the report and the docs)."""

    fault: Fault
    heartbeats: int = 0
    # at most how long before the kill the oldest lost heartbeat was accepted (from its send time)
    oldest_s: float | None = None
    sessions_without_history: int = 0
    ends_recorded_as_lost: int = 0

    def add(self, age_s: float) -> None:
        self.heartbeats += 1
        self.oldest_s = age_s if self.oldest_s is None else max(self.oldest_s, age_s)


class Judge:
    def __init__(self, ledger: Ledger, *, timeout_s: float, license_cache_s: float, t0: float) -> None:
        self.ledger = ledger
        self.timeout_s = timeout_s
        self.license_cache_s = license_cache_s
        self.t0 = t0
        self.kills = sorted(ledger.redis_kills(), key=lambda f: f.started)
        self.windows = {id(f): Window(f) for f in self.kills}
        drained = sorted(ledger.backlog, key=lambda s: s.taken)
        self.hb_drained = [s.taken for s in drained if s.heartbeats_drained]
        self.ev_drained = [s.taken for s in drained if s.events_drained]
        self.verdict = Verdict()

    def at(self, t: float) -> str:
        return f"+{t - self.t0:.1f}s"

    def story(self, session: Session, row: Any = None) -> None:
        """Everything the client did with a session, in order, for the post-mortem."""
        if len(self.verdict.stories) >= 50:
            return
        events = [(a.sent, (f"{a.route} sent {self.at(a.sent)} answered {self.at(a.answered)}: "
                           f"{a.status} {a.code}"))
                  for a in [*session.starts, *session.heartbeats, *session.ends]]
        events += [(a.sent, (f"admin {a.kind} sent {self.at(a.sent)} done {self.at(a.done)} ok={a.ok} "
                            f"{a.detail}"))
                   for a in self.ledger.admin if a.license_id == session.license_id]
        events += [(f.started, (f"fault {f.kind} {f.target} {self.at(f.started)}..{self.at(f.ended)} "
                               f"{f.detail}"))
                   for f in self.ledger.faults]
        lo = session.earliest_start - 15
        hi = (session.gone_at or max((a.answered for a in session.heartbeats), default=lo)) + 15
        gone = self.at(session.gone_at) if session.gone_at else "-"
        lines = [f"session {session.token} license {session.license_id} device {session.fingerprint}: "
                 f"earliest start {self.at(session.earliest_start)}, gone {gone}"
                 + (f", abandoned {self.at(session.abandoned_at)}" if session.abandoned_at else "")]
        if row is not None:
            lines.append(f"  history: {dict(row)}")
        lines += [f"  {text}" for t, text in sorted(events) if lo <= t <= hi]
        self.verdict.stories.append("\n".join(lines))

    # -- loss windows ---------------------------------------------------------------------------------

    @staticmethod
    def _drained_between(samples: list[float], start: float, end: float) -> float | None:
        i = bisect.bisect_left(samples, start)
        if i < len(samples) and samples[i] < end:
            return samples[i]
        return None

    def loss_window(self, accepted_from: float, answered: float,
                    drained: list[float]) -> tuple[Fault | None, str]:
        """The Redis crash whose loss window holds something accepted between `accepted_from` and
        `answered`, or None and why not: a crash that came back empty loses everything not yet stored
        (accepted after the last drained sample before it); one that kept its append-only file at most
        the last AOF_EVERYSEC_WINDOW_S (else what it kept may still be lost by a later crash)."""
        why = "no Redis crash came after it"
        candidate: Fault | None = None
        for crash in self.kills:
            if crash.started < accepted_from - EPS:
                continue
            seen = self._drained_between(drained, answered, crash.started)
            if seen is not None:
                if candidate is not None:
                    return candidate, ""
                return None, (f"the backlog was seen drained at {self.at(seen)}, after it and before the "
                              f"{crash.kind} at {self.at(crash.started)}")
            if crash.kind == "redis_wipe":
                return crash, ""   # certainly lost here (an earlier restart that kept its AOF may not have)
            age = crash.started - answered
            if age <= AOF_EVERYSEC_WINDOW_S:
                candidate = candidate or crash
            elif candidate is None:
                why = (f"it was answered {age:.1f} s before a Redis crash that kept its append-only file "
                       f"(everysec loses at most ~{AOF_EVERYSEC_WINDOW_S:.0f} s) and no later crash lost it")
        return (candidate, "") if candidate is not None else (None, why)

    # -- 1. heartbeats --------------------------------------------------------------------------------

    def heartbeats(self, rows: Sequence[Row], duplicate_events: int) -> dict[str, int]:
        v = self.verdict
        stored: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            stored[row["token"]].append(row["at"])
        answered_200 = matched = explained = lost_allowed = 0
        unknown = [t for t in stored if t not in self.ledger.sessions]
        if unknown:
            v.fail(f"{sum(len(stored[t]) for t in unknown)} heartbeat rows belong to {len(unknown)} sessions "
                   f"no client ever held (e.g. {unknown[0]})")
        if duplicate_events:
            v.fail(f"{duplicate_events} heartbeat rows share an event id with another row")
        bad_lost: list[str] = []
        duplicates: list[str] = []
        per_token_rows: dict[str, int] = {}
        for token, session in self.ledger.sessions.items():
            times = sorted(stored.get(token, []))
            per_token_rows[token] = len(times)
            used = [False] * len(times)
            attempts = sorted(session.heartbeats, key=lambda a: a.sent)
            for attempt in attempts:
                if attempt.status != 200:
                    continue
                answered_200 += 1
                i = bisect.bisect_left(times, attempt.sent - EPS)
                while i < len(times) and (used[i] or times[i] < attempt.sent - EPS):
                    i += 1
                if i < len(times) and times[i] <= attempt.answered + EPS:
                    used[i] = True
                    matched += 1
                    continue
                crash, why = self.loss_window(attempt.sent, attempt.answered, self.hb_drained)
                if crash is None:
                    bad_lost.append(f"session {token} heartbeat answered 200 at {self.at(attempt.answered)}: "
                                    f"not stored, and {why}")
                    self.story(session)
                else:
                    self.windows[id(crash)].add(crash.started - attempt.sent)
                    lost_allowed += 1
            # rows no 200 matched: each needs its own request that got no answer or a 503
            leftovers = [t for t, u in zip(times, used, strict=True) if not u]
            uncertain = sorted(a.sent for a in attempts if a.uncertain)
            for n, t in enumerate(leftovers):
                if bisect.bisect_right(uncertain, t + EPS) > n:
                    explained += 1
                else:
                    duplicates.append(f"session {token}: a heartbeat row at {self.at(t)} that no request "
                                      "explains")
                    self.story(session)
        for line in bad_lost[:20]:
            v.fail(line)
        if len(bad_lost) > 20:
            v.fail(f"... and {len(bad_lost) - 20} more heartbeats answered 200 and lost")
        for line in duplicates[:20]:
            v.fail(line)
        if len(duplicates) > 20:
            v.fail(f"... and {len(duplicates) - 20} more heartbeat rows no request explains")
        v.figures["heartbeats"] = {
            "answered_200": answered_200, "stored_once": matched, "lost_in_windows": lost_allowed,
            "lost_outside_windows": len(bad_lost), "duplicates": len(duplicates),
            "stored_without_200": explained, "rows": len(rows)}
        return per_token_rows

    # -- 2. sessions ----------------------------------------------------------------------------------

    def sessions(self, history: Sequence[Row], open_rows: Sequence[Row],
                 rows_per_token: dict[str, int]) -> None:
        v = self.verdict
        by_token = {r["token"]: r for r in history}
        still_open = {r["token"] for r in open_rows}
        if still_open:
            v.fail(f"{len(still_open)} sessions still open in license_sessions after the drain "
                   f"(e.g. {next(iter(still_open))})")
        reasons: Counter[str] = Counter()
        problems: list[str] = []
        lost = 0
        for token, session in self.ledger.sessions.items():
            row = by_token.get(token)
            if row is None:
                if token in still_open:
                    continue
                known = session.starts[0].answered if session.starts else session.known_at
                crash, why = self.loss_window(session.earliest_start, known, self.ev_drained)
                if crash is None:
                    problems.append(f"session {token} (license {session.license_id}) has no history row, "
                                    f"and {why}")
                    self.story(session)
                else:
                    self.windows[id(crash)].sessions_without_history += 1
                    lost += 1
                continue
            reasons[row["end_reason"]] += 1
            problem = self._judge_reason(session, row["end_reason"], row["ended_at"])
            if problem:
                problems.append(f"session {token} (license {session.license_id}) ended as "
                                f"{row['end_reason']} at {self.at(row['ended_at'])}, but {problem}")
                self.story(session, row)
            elif (row["heartbeat_count"] != rows_per_token.get(token, 0)
                  and not self._touched_by_crash(session)):
                problems.append(f"session {token}: history counts {row['heartbeat_count']} heartbeats, "
                                f"license_heartbeats holds {rows_per_token.get(token, 0)}")
                self.story(session, row)
        unknown = Counter(r["end_reason"] for t, r in by_token.items() if t not in self.ledger.sessions)
        if unknown.get("client_end"):
            problems.append(f"{unknown['client_end']} sessions no client knew ended as client_end")
        for line in problems[:30]:
            v.fail(line)
        if len(problems) > 30:
            v.fail(f"... and {len(problems) - 30} more session problems")
        v.figures["sessions"] = {"known": len(self.ledger.sessions), "in_history": sum(reasons.values()),
                                 "reasons": dict(sorted(reasons.items())),
                                 "lost_in_windows_without_history": lost,
                                 "unknown_to_clients": dict(sorted(unknown.items())),
                                 "starts_without_answer": self.ledger.unanswered_starts}

    def _touched_by_crash(self, session: Session) -> bool:
        end = session.gone_at or max((a.answered for a in session.ends), default=float("inf"))
        return any(session.earliest_start - EPS <= f.started <= end + EPS for f in self.kills)

    def _last_renewal(self, session: Session) -> float:
        renewals = [a.sent for a in session.heartbeats if a.status == 200]
        renewals += [a.sent for a in session.starts]
        return max(renewals, default=session.earliest_start)

    def _definite_end(self, session: Session) -> float | None:
        ends = [a.answered for a in session.ends if a.status == 200]
        candidates = [t for t in (session.gone_at, min(ends, default=None)) if t is not None]
        return min(candidates, default=None)

    def _judge_reason(self, session: Session, reason: str, ended_at: float) -> str:
        """'' when `reason` is true for this session, else what contradicts it."""
        ended_ok = [a for a in session.ends if a.status == 200]
        lost_end = self._end_lost_in_window(session)
        if reason == "plane_lost":
            return "" if lost_end else "no Redis crash that came back empty could have lost it"
        if ended_ok:
            if reason == "client_end":
                return ""
            return f"its client's end was answered 200 at {self.at(ended_ok[0].answered)}"
        if reason == "client_end":
            if any(a.uncertain for a in session.ends):
                return ""
            return "its client never sent an end that could have done it"
        if reason == "timeout":
            renewed = self._last_renewal(session)
            if ended_at + EPS >= renewed + self.timeout_s:
                return ""
            return (f"it was renewed at {self.at(renewed)}, less than the {self.timeout_s:.0f} s timeout "
                    "before")
        if reason == "license_suspended":
            if any(a.status == 403 for a in session.heartbeats):
                return ""
            grace = self.license_cache_s + SLACK_S
            for action, until in self._suspensions(session.license_id):
                if action.sent - EPS <= ended_at <= until + grace:
                    return ""
            return "its license was not suspended then"
        if reason == "device_deactivated":
            grace = self.license_cache_s + SLACK_S
            for action in self.ledger.admin:
                if (action.kind == "deactivate" and action.license_id == session.license_id
                        and action.fingerprint == session.fingerprint
                        and action.sent - EPS <= ended_at <= action.done + grace):
                    return ""
            return "its device was not deactivated then"
        if reason == "admin_terminated":
            for action in self.ledger.admin:
                if (action.kind == "terminate" and action.token == session.token
                        and action.sent - EPS <= ended_at <= action.done + EPS):
                    return ""
            return "the admin did not terminate it then"
        return "nothing in the soak could end a session so"

    def _end_lost_in_window(self, session: Session) -> bool:
        """A Redis crash that came back empty while the session was live, or before its end was stored."""
        end = self._definite_end(session)
        for fault in self.kills:
            if fault.started < session.earliest_start - EPS:
                continue
            if fault.kind == "redis_wipe":
                if end is None or fault.started <= end + EPS:
                    return True
                if self._drained_between(self.ev_drained, end, fault.started) is None:
                    return True
            elif end is not None and 0 <= fault.started - end <= AOF_EVERYSEC_WINDOW_S:
                return True
        return False

    def _suspensions(self, license_id: int) -> list[tuple[Any, float]]:
        """Successful suspensions of a license, each with the time the next reactivation was sent: any
        attempt, answered or not, since one the harness saw fail (a timeout) may still have committed."""
        actions = sorted((a for a in self.ledger.admin if a.license_id == license_id
                          and ((a.kind == "suspend" and a.ok) or a.kind == "reactivate")), key=lambda a: a.sent)
        out = []
        for n, action in enumerate(actions):
            if action.kind == "suspend":
                after = next((a.sent for a in actions[n + 1:] if a.kind == "reactivate"), float("inf"))
                out.append((action, after))
        return out

    # -- 4. suspensions enforced ----------------------------------------------------------------------

    def suspensions_enforced(self) -> None:
        grace = self.license_cache_s + SLACK_S
        served: list[str] = []
        by_license: dict[int, list[Attempt]] = defaultdict(list)
        for session in self.ledger.sessions.values():
            by_license[session.license_id] += [a for a in session.heartbeats if a.status == 200]
            by_license[session.license_id] += session.starts
        for license_id, attempts in by_license.items():
            for action, until in self._suspensions(license_id):
                start, end = action.done + grace, until
                late = [a for a in attempts if start <= a.sent and a.answered <= end]
                if late:
                    served.append(f"license {license_id} suspended at {self.at(action.done)} "
                                  f"({action.detail}) still answered {len(late)} {late[0].route}(s) 200 from "
                                  f"{self.at(late[0].sent)} until its reactivation at {self.at(until)}")
        for line in served[:20]:
            self.verdict.fail(line)
        self.verdict.figures["suspensions"] = sum(1 for a in self.ledger.admin
                                                  if a.kind == "suspend" and a.ok)

    # -- 5/6. answers, processes ----------------------------------------------------------------------

    def answers(self) -> None:
        for (route, status, code), count in sorted(self.ledger.answers.items()):
            if status >= 500 and status != 503:
                self.verdict.fail(f"{route}: {count} answers {status} {code}")
        for (route, status, code), body in sorted(self.ledger.unexpected.items()):
            count = self.ledger.answers[(route, status, code)]
            if status < 500 or status == 503:
                self.verdict.fail(f"{route}: {count} unexpected answers {status} {code}: {body[:200]}")
            else:
                self.verdict.lines.append(f"  example {status} body on {route}: {body[:200]}")

    def processes(self) -> None:
        for exit_ in self.ledger.self_exits:
            recent = [f for f in self.ledger.faults if f.started <= exit_.at and exit_.at - f.started < 30]
            context = ", ".join(f"{f.kind} {exit_.at - f.started:.1f} s before" for f in recent) or "no fault"
            tail = exit_.log_tail.strip().splitlines()
            self.verdict.fail(f"{exit_.part} exited by itself with code {exit_.code} at {self.at(exit_.at)} "
                              f"({context}); last log line: {tail[-1] if tail else '(none)'}")

    def limits(self) -> None:
        for line in self.ledger.over_limit[:20]:
            self.verdict.fail(line)
        if len(self.ledger.over_limit) > 20:
            self.verdict.fail(f"... and {len(self.ledger.over_limit) - 20} more limit violations")
        self.verdict.figures["samples"] = dict(self.ledger.samples)

    def windows_figures(self) -> list[dict[str, Any]]:
        return [{"kind": w.fault.kind, "at_s": round(w.fault.started - self.t0, 1),
                 "heartbeats_lost": w.heartbeats,
                 "oldest_lost_s": None if w.oldest_s is None else round(w.oldest_s, 3),
                 "sessions_lost": w.sessions_without_history} for w in self.windows.values()]


async def judge(conn: asyncpg.Connection, ledger: Ledger, license_ids: list[int], *, timeout_s: float,
                license_cache_s: float, t0: float) -> Verdict:
    j = Judge(ledger, timeout_s=timeout_s, license_cache_s=license_cache_s, t0=t0)
    rows = await conn.fetch(HEARTBEAT_ROWS, license_ids)
    duplicate_events = int(await conn.fetchval(DUPLICATE_EVENTS, license_ids))
    per_token = j.heartbeats(rows, duplicate_events)
    j.sessions(await conn.fetch(HISTORY_ROWS, license_ids), await conn.fetch(OPEN_ROWS, license_ids),
               per_token)
    j.suspensions_enforced()
    j.answers()
    j.processes()
    j.limits()
    j.verdict.figures["loss_windows"] = j.windows_figures()
    return j.verdict
