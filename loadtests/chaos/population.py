"""The soak's steady population: licensed programs talking to the edges over HTTP, and an admin.

Each license has `device_limit` programs competing for `sessions_limit` sessions, so the limit is always
contested.  A program starts a session (its device is activated on the fly), heartbeats at the license's
interval and now and then ends its session, walks away from it without a word (it times out), or moves to
a new device (deactivating the old one, which ends its session).  Every request and its answer go into
the ledger.  The admin suspends and reactivates licenses and terminates single sessions through the
same kernel and plane calls the admin web interface makes (`admin/views/license_screens.py`, `admin/plane.py`).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from admin.plane import AdminPlane, PlaneError
from heartline import db
from heartline.settings import Settings
from loadtests.chaos.ledger import NO_ANSWER, AdminAction, Attempt, Ledger, Route, Session
from loadtests.seed import SeededLicense

# Answers a well-behaved client may get besides 200/201 (and 503 or no answer during faults).
EXPECTED_REFUSALS: dict[Route, set[tuple[int, str]]] = {
    Route.START: {(409, "SESSION_LIMIT_REACHED"), (409, "DEVICE_LIMIT_REACHED"), (403, "LICENSE_SUSPENDED")},
    Route.HEARTBEAT: {(404, "SESSION_NOT_FOUND"), (403, "LICENSE_SUSPENDED"),
                      (429, "HEARTBEAT_TOO_FREQUENT")},
    Route.END: {(404, "SESSION_NOT_FOUND")},
    Route.DEACTIVATE: {(404, "DEVICE_NOT_FOUND"), (403, "LICENSE_SUSPENDED")},
}
UNAVAILABLE = {"PLANE_UNAVAILABLE", "DATABASE_UNAVAILABLE"}


@dataclass
class Behaviour:
    """How the programs behave; shares are chances per heartbeat."""

    end_share: float = 0.02          # end the session (client_end) and start again a little later
    abandon_share: float = 0.004     # stop beating without a word: the session times out
    move_share: float = 0.004        # deactivate this device and continue on a new one
    request_timeout_s: float = 20.0  # above the edge's own Redis (5 s) and PostgreSQL (10 s) timeouts
    suspend_every_s: tuple[float, float] = (6.0, 14.0)
    suspended_for_s: tuple[float, float] = (2.0, 6.0)
    terminate_every_s: tuple[float, float] = (4.0, 10.0)


class Population:
    """`clients` programs spread over `licenses`, against the edge URLs in `edges`."""

    def __init__(self, ledger: Ledger, edges: list[str], api_key: str, licenses: list[SeededLicense],
                 run_id: str, rng: random.Random, behaviour: Behaviour, timeout_s: float) -> None:
        """timeout_s: the licenses' heartbeat timeout (a program that walks away stays away longer)."""
        self.ledger = ledger
        self.timeout_s = timeout_s
        self.edges = edges
        self.licenses = licenses
        self.run_id = run_id
        self.rng = rng
        self.behaviour = behaviour
        self.http = httpx.AsyncClient(
            headers={"X-API-Key": api_key}, timeout=behaviour.request_timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=400))

    async def run(self, stop: asyncio.Event) -> None:
        """Run every program until `stop`; then each ends the session it holds."""
        tasks = [asyncio.create_task(Program(self, lic, n).run(stop), name=f"program-{lic.id}-{n}")
                 for lic in self.licenses for n in range(lic.device_limit)]
        try:
            await asyncio.gather(*tasks)
        finally:
            await self.http.aclose()

    async def post(self, route: Route, path: str, body: dict[str, Any]) -> tuple[Attempt, Any]:
        """POST to an edge; a refused connection (nothing was sent) goes on to the next edge, as a load
        balancer in front of them would."""
        edges = self.rng.sample(self.edges, len(self.edges))
        sent = time.time()
        data: Any = None
        text = ""
        for n, edge in enumerate(edges):
            try:
                response = await self.http.post(edge + path, json=body)
            except httpx.ConnectError as exc:
                if n + 1 < len(edges):
                    self.ledger.answers[(str(route), NO_ANSWER, "refused, tried the next edge")] += 1
                    continue
                status, code = NO_ANSWER, type(exc).__name__
            except httpx.HTTPError as exc:
                status, code = NO_ANSWER, type(exc).__name__
            else:
                status, text = response.status_code, response.text
                try:
                    data = response.json()
                except ValueError:
                    data = None
                code = ""
                if status >= 400:
                    code = (data.get("error", {}).get("code", "?") if isinstance(data, dict)
                            else "(not JSON)")
            break
        attempt = Attempt(route, sent, time.time(), status, code)
        self.ledger.answered(attempt)
        if not self._expected(route, status, code):
            self.ledger.unexpected.setdefault((str(route), status, code), text[:300])
        return attempt, data

    @staticmethod
    def _expected(route: Route, status: int, code: str) -> bool:
        if status in (200, 201) or status == NO_ANSWER:
            return True
        if status == 503 and code in UNAVAILABLE:
            return True
        return (status, code) in EXPECTED_REFUSALS[route]


class Program:
    """One licensed program on one device (its fingerprint changes when it moves to a new device)."""

    def __init__(self, population: Population, lic: SeededLicense, index: int) -> None:
        self.p = population
        self.lic = lic
        self.index = index
        self.generation = 0
        self.session: Session | None = None
        self.previous: Session | None = None

    @property
    def fingerprint(self) -> str:
        return f"ch-{self.p.run_id}-{self.lic.id}-{self.index}-{self.generation}"

    async def run(self, stop: asyncio.Event) -> None:
        rng = self.p.rng
        interval = self.lic.interval_s
        await _pause(stop, rng.uniform(0, interval))
        start_since: float | None = None
        while not stop.is_set():
            if self.session is None:
                attempt, data = await self.p.post(Route.START, "/v1/sessions", {
                    "license_key": self.lic.key, "hardware_fingerprint": self.fingerprint,
                    "device_name": f"chaos {self.index}", "device_type": "chaos", "client_version": "chaos"})
                start_since = start_since or attempt.sent
                if attempt.status in (200, 201):
                    self._got_session(data["session_token"], start_since, attempt)
                    start_since = None
                elif attempt.uncertain:
                    self.p.ledger.unanswered_starts += 1
                    await _pause(stop, rng.uniform(0.3, 1.0))
                else:
                    start_since = None   # a definite refusal created nothing
                    await _pause(stop, interval * rng.uniform(0.8, 1.2))
                continue
            await _pause(stop, interval * rng.uniform(0.8, 1.0))
            if stop.is_set():
                break
            roll = rng.random()
            b = self.p.behaviour
            if roll < b.end_share:
                await self._end(stop_after=5)
                await _pause(stop, rng.uniform(0, interval * 2))
            elif roll < b.end_share + b.abandon_share:
                self.session.abandoned_at = time.time()
                self._drop()
                await _pause(stop, self.p.timeout_s * 1.5)
            elif roll < b.end_share + b.abandon_share + b.move_share:
                await self._move(stop)
            else:
                await self._heartbeat(stop)
        if self.session is not None:
            await self._end(stop_after=10)

    def _got_session(self, token: str, earliest_start: float, attempt: Attempt) -> None:
        previous = self.previous
        if previous is not None and previous.token != token and previous.gone_at is None:
            # a device has one live session: a new token for it means the old one is gone
            previous.gone_at = attempt.answered
        self.session = self.p.ledger.session(token, self.lic.id, self.fingerprint, earliest_start,
                                             attempt.answered)
        self.session.starts.append(attempt)

    def _drop(self) -> None:
        self.previous, self.session = self.session, None

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        assert self.session is not None
        attempt, _ = await self.p.post(Route.HEARTBEAT, f"/v1/sessions/{self.session.token}/heartbeat",
                                       {"license_key": self.lic.key})
        self.session.heartbeats.append(attempt)
        if attempt.status in (403, 404):
            self.session.gone_at = self.session.gone_at or attempt.answered
            self._drop()
            if attempt.status == 403:
                await _pause(stop, self.lic.interval_s)
        elif attempt.uncertain:
            await _pause(stop, self.p.rng.uniform(0.2, 0.5))

    async def _end(self, *, stop_after: int) -> None:
        """End the session; retried while the answer is uncertain."""
        session = self.session
        assert session is not None
        for _ in range(stop_after):
            attempt, _ = await self.p.post(Route.END, f"/v1/sessions/{session.token}/end",
                                           {"license_key": self.lic.key})
            session.ends.append(attempt)
            if attempt.status == 404:
                session.gone_at = session.gone_at or attempt.answered
            if not attempt.uncertain:
                break
            await asyncio.sleep(self.p.rng.uniform(0.5, 1.5))
        self._drop()

    async def _move(self, stop: asyncio.Event) -> None:
        """Deactivate this device (its session ends as device_deactivated) and continue on a new one."""
        fingerprint = self.fingerprint
        first: Attempt | None = None
        last: Attempt | None = None
        for _ in range(20):
            last, _ = await self.p.post(Route.DEACTIVATE, "/v1/devices/deactivate",
                                        {"license_key": self.lic.key, "hardware_fingerprint": fingerprint})
            first = first or last
            if not last.uncertain:
                break
            await _pause(stop, self.p.rng.uniform(0.5, 1.5))
        assert first is not None and last is not None
        self.p.ledger.admin.append(AdminAction(
            "deactivate", self.lic.id, first.sent, last.answered, not last.uncertain and last.status != 403,
            token=self.session.token if self.session else "", fingerprint=fingerprint,
            detail=f"{last.status} {last.code}".strip()))
        if last.status in (200, 404):
            self._drop()
            self.generation += 1


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass


class Admin:
    """Suspensions, reactivations and terminations, as the admin web interface makes them."""

    def __init__(self, ledger: Ledger, settings: Settings, licenses: list[SeededLicense], rng: random.Random,
                 behaviour: Behaviour) -> None:
        self.ledger = ledger
        self.settings = settings          # database and Redis through the proxies, like every other part
        self.plane = AdminPlane(settings)
        self.licenses = licenses
        self.rng = rng
        self.behaviour = behaviour

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self._suspensions(stop), self._terminations(stop))

    async def _suspensions(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pause(stop, self.rng.uniform(*self.behaviour.suspend_every_s))
            if stop.is_set():
                break
            lic = self.rng.choice(self.licenses)
            if not await self.suspend(lic.id):
                continue
            await _pause(stop, self.rng.uniform(*self.behaviour.suspended_for_s))
            # reactivated whatever happens (also after stop): a license must not stay suspended
            for _ in range(60):
                if await self.reactivate(lic.id):
                    break
                await asyncio.sleep(1.0)

    async def _set_status(self, license_id: int, status: str) -> int:
        """admin/views/license_screens.py `_set_status`: the new status; returns the row's new version."""
        conn = await db.connect(self.settings.database_url or "", actor="admin:chaos", timeout=5,
                                command_timeout=10)
        try:
            return int(await conn.fetchval("UPDATE licenses SET status = $1 WHERE id = $2 RETURNING version",
                                           status, license_id))
        finally:
            await conn.close()

    async def suspend(self, license_id: int) -> bool:
        """admin/views/license_screens.py `_stop_licenses`: status in PostgreSQL, then one plane script switches
        the cached status and ends the live sessions, then the cached license is dropped."""
        sent = time.time()
        try:
            version = await self._set_status(license_id, "suspended")
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self.ledger.admin.append(AdminAction("suspend", license_id, sent, time.time(), False,
                                                 detail=f"database: {type(exc).__name__}"))
            return False
        committed = time.time()
        try:
            ended = await asyncio.to_thread(self.plane.suspend_license, license_id, "suspended", version)
            await asyncio.to_thread(self.plane.invalidate_license, license_id)
            detail = f"sessions ended: {max(0, ended)}"
        except PlaneError as exc:
            detail = f"plane: {exc}"
        self.ledger.admin.append(AdminAction("suspend", license_id, sent, committed, True, detail=detail))
        return True

    async def reactivate(self, license_id: int) -> bool:
        sent = time.time()
        try:
            await self._set_status(license_id, "active")
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self.ledger.admin.append(AdminAction("reactivate", license_id, sent, time.time(), False,
                                                 detail=f"database: {type(exc).__name__}"))
            return False
        committed = time.time()
        detail = ""
        try:
            await asyncio.to_thread(self.plane.invalidate_license, license_id)
        except PlaneError as exc:
            detail = f"plane: {exc}"
        self.ledger.admin.append(AdminAction("reactivate", license_id, sent, committed, True, detail=detail))
        return True

    async def _terminations(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _pause(stop, self.rng.uniform(*self.behaviour.terminate_every_s))
            live = [s for s in self.ledger.sessions.values() if s.gone_at is None and s.abandoned_at is None
                    and not s.ends]
            if stop.is_set() or not live:
                continue
            session = self.rng.choice(live)
            sent = time.time()
            try:
                ended = await asyncio.to_thread(self.plane.terminate_session, session.license_id,
                                                session.token)
                detail = "ended" if ended else "not live"
                ok = True
            except PlaneError as exc:
                ok, detail = False, str(exc)
            self.ledger.admin.append(AdminAction("terminate", session.license_id, sent, time.time(), ok,
                                                 token=session.token, detail=detail))
