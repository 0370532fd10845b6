"""A licensed session as a context manager: activate, start or resume, heartbeat in the background, end.

While the block runs, `session.valid` says whether the program may go on: true while the server's last
verified answer holds (its `expires_at`, plus the offline grace the server signed into it), false once the
seat is lost, the license refused, or the grace ran out offline.  The heartbeat loop

- beats at the interval the server returns, a little early (jitter), never late;
- honours `Retry-After` on 429 and 503;
- retries an unreachable or untrusted server with capped exponential backoff (with jitter);
- starts a new session after SESSION_NOT_FOUND (the server lost or reaped it) as soon as a seat is free;
- reports changes through callbacks (they run on the client's event loop: keep them short);

and the session is ended on leaving the block and on SIGTERM (see docs/client.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from heartline_client.client import Answer, AsyncClient, Client, parse_time
from heartline_client.errors import LICENSE_REFUSALS, HeartlineError, Refused, Unreachable
from heartline_client.lease import Lease

log = logging.getLogger("heartline_client")

# Backoff after failures: 1 s, 2 s, 4 s … capped, each with ±25 % jitter.
BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0
# Beats leave at 80-95 % of the interval the server asked for: early enough to arrive in time, spread so
# that clients started together do not beat together.
JITTER = (0.80, 0.95)


class SessionState(enum.StrEnum):
    STARTING = "starting"
    ACTIVE = "active"          # the last contact succeeded
    OFFLINE = "offline"        # the server is unreachable or untrusted; valid until the grace runs out
    SEAT_LOST = "seat_lost"    # the session ended server-side and no seat is free; retrying
    REFUSED = "refused"        # the license is suspended, revoked, expired, or gone
    EXPIRED = "expired"        # offline past the grace
    ENDED = "ended"


@dataclass
class Callbacks:
    """What the program wants to hear about; each is optional.

    on_seat_lost(code): the session is gone and no seat is free (the program should stop licensed work).
    on_suspended(code): the license refuses service (LICENSE_SUSPENDED, _REVOKED, _EXPIRED, …).
    on_offline(seconds_left): a contact failed; the session stays valid this much longer without one.
    on_grace_expired(): offline for longer than the server's grace: the session is no longer valid.
    on_restored(): contact is back after any of the above.
    """
    on_seat_lost: Callable[[str], Any] | None = None
    on_suspended: Callable[[str], Any] | None = None
    on_offline: Callable[[float], Any] | None = None
    on_grace_expired: Callable[[], Any] | None = None
    on_restored: Callable[[], Any] | None = None


@dataclass
class SessionStats:
    heartbeats: int = 0
    too_frequent: int = 0
    unavailable: int = 0
    unreachable: int = 0
    untrusted: int = 0
    restarts: int = 0
    reasons: list[str] = field(default_factory=list)


class AsyncSession:
    """`async with AsyncSession(client, fingerprint) as session:` — see the module's docstring."""

    def __init__(self, client: AsyncClient, fingerprint: str, *, device_name: str | None = None,
                 device_type: str | None = None, client_version: str | None = None,
                 callbacks: Callbacks | None = None, handle_sigterm: bool = True,
                 backoff_cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.device = {"device_name": device_name, "device_type": device_type}
        self.client_version = client_version
        self.callbacks = callbacks or Callbacks()
        self.handle_sigterm = handle_sigterm
        self.backoff_cap_s = backoff_cap_s
        self.rng = rng or random.Random()
        self.state = SessionState.STARTING
        self.token: str | None = None
        self.resumed = False
        self.interval_s = 30.0
        self.offline_grace_s = 0.0
        self.stats = SessionStats()
        self._valid_until = 0.0           # time.monotonic() deadline
        self._task: asyncio.Task[None] | None = None
        self._sigterm_installed = False
        self._grace_reported = False
        self.lease: Lease | None = None

    # -- the block ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Activate the device (idempotent), start or resume the session, start beating.
        Raises Refused (SESSION_LIMIT_REACHED, DEVICE_LIMIT_REACHED, LICENSE_*) or Unreachable."""
        await self.client.activate(self.fingerprint, **self.device)
        await self._start()
        self._task = asyncio.create_task(self._beat_forever(), name="heartline-heartbeats")
        if self.handle_sigterm:
            self._install_sigterm()

    async def close(self) -> None:
        """Stop beating and end the session on the server (best effort: the server reaps it otherwise).
        A session whose seat is borrowed is left to its borrow: it ends at the lease's end or return."""
        self._uninstall_sigterm()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        token, self.token = self.token, None
        if self.lease is not None and self.lease.until > dt.datetime.now(dt.UTC):
            token = None
        if token is not None and self.state is not SessionState.ENDED:
            try:
                await self.client.end_session(token)
            except HeartlineError as exc:
                log.info("heartline.session.end_failed error=%s", exc)
        self.state = SessionState.ENDED

    async def borrow(self, until: dt.datetime) -> Lease:
        """Borrow this session's seat until `until` (at most the license's max_borrow_s from now): it stays
        taken, online or not, until then or `return_borrow()`.  Keep the lease (`to_json`) to check it
        offline.  Raises Refused (BORROW_NOT_ALLOWED, BORROW_TOO_LONG, …) or Unreachable."""
        if self.token is None:
            raise Refused(404, "SESSION_NOT_FOUND", "no live session to borrow")
        sent = time.monotonic()
        answer = await self.client.borrow(self.token, until)
        self.lease = Lease.from_answer(answer)
        remaining = self.lease.until.timestamp() - answer.created
        self._valid_until = max(self._valid_until, sent + max(0.0, remaining))
        return self.lease

    async def return_borrow(self) -> None:
        """Give the borrowed seat back now; the session ends with it."""
        if self.lease is None:
            return
        lease, self.lease = self.lease, None
        await self.client.return_borrow(lease.borrow_id)
        self.token = None
        self.state = SessionState.ENDED

    @property
    def valid(self) -> bool:
        """May the program keep doing licensed work now?"""
        if self.state in (SessionState.ACTIVE, SessionState.OFFLINE):
            return time.monotonic() < self._valid_until
        return False

    @property
    def seconds_left(self) -> float:
        """How long the session stays valid without another successful contact."""
        return max(0.0, self._valid_until - time.monotonic()) if self.valid else 0.0

    # -- the loop -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        sent = time.monotonic()
        answer = await self.client.start_session(self.fingerprint, self.device.get("device_name"),
                                                 self.device.get("device_type"), self.client_version)
        self.token = answer.data["session_token"]
        self.resumed = bool(answer.data.get("resumed"))
        self.interval_s = float(answer.data["heartbeat_interval_s"])
        self._accept(answer, sent)

    def _accept(self, answer: Answer, sent: float) -> None:
        """Extend validity from a verified answer, measured on the server's clock (expires_at - created),
        so a wrong client clock changes nothing."""
        self.offline_grace_s = float(answer.data.get("offline_grace_s", 0) or 0)
        remaining = parse_time(answer.data["expires_at"]).timestamp() - answer.created
        self._valid_until = sent + max(0.0, remaining) + self.offline_grace_s
        restored = self.state not in (SessionState.ACTIVE, SessionState.STARTING)
        self.state = SessionState.ACTIVE
        self._grace_reported = False
        if restored:
            self._notify(self.callbacks.on_restored)

    def _jittered(self, seconds: float) -> float:
        return seconds * self.rng.uniform(*JITTER)

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_cap_s, BACKOFF_START_S * 2 ** max(0, failures - 1))
        return base * self.rng.uniform(0.75, 1.25)

    async def _beat_forever(self) -> None:
        delay = self._jittered(self.interval_s)
        failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                if self.token is None:
                    await self._restart()
                else:
                    sent = time.monotonic()
                    answer = await self.client.heartbeat(self.token)
                    self.stats.heartbeats += 1
                    self.interval_s = float(answer.data.get("next_heartbeat_in_s", self.interval_s))
                    self._accept(answer, sent)
                failures = 0
                delay = self._jittered(self.interval_s)
            except Refused as refused:
                self.stats.reasons.append(refused.code)
                if refused.status == 429:
                    self.stats.too_frequent += 1
                    delay = refused.retry_after_s if refused.retry_after_s is not None else self.interval_s
                elif refused.status == 503:
                    self.stats.unavailable += 1
                    failures += 1
                    delay = min(refused.retry_after_s or self._backoff(failures), self.backoff_cap_s)
                    self._went_offline()
                elif refused.code == "SESSION_NOT_FOUND":
                    # The server ended or lost it (reaped, Redis restarted): start again at once.
                    self.token = None
                    delay = 0.0
                elif refused.code == "SESSION_LIMIT_REACHED":
                    failures += 1
                    delay = self._backoff(failures)
                    if self.state is not SessionState.SEAT_LOST:
                        self.state = SessionState.SEAT_LOST
                        self._notify(self.callbacks.on_seat_lost, refused.code)
                elif refused.code in LICENSE_REFUSALS:
                    self.token = None
                    self.state = SessionState.REFUSED
                    self._notify(self.callbacks.on_suspended, refused.code)
                    return
                else:
                    failures += 1
                    delay = self._backoff(failures)
            except Unreachable as exc:
                if exc.untrusted:
                    self.stats.untrusted += 1
                    log.warning("heartline.answer.untrusted %s", exc)
                else:
                    self.stats.unreachable += 1
                failures += 1
                delay = self._backoff(failures)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), self.backoff_cap_s)
                self._went_offline()
            if self.valid:
                # Never let a backoff sleep through the last moment a contact could keep the session.
                delay = min(delay, max(0.5, self.seconds_left * 0.5))

    async def _restart(self) -> None:
        self.stats.restarts += 1
        await self._start()

    def _went_offline(self) -> None:
        if self.state in (SessionState.SEAT_LOST, SessionState.REFUSED):
            return
        if time.monotonic() < self._valid_until:
            self.state = SessionState.OFFLINE
            self._notify(self.callbacks.on_offline, self._valid_until - time.monotonic())
        elif not self._grace_reported:
            self.state = SessionState.EXPIRED
            self._grace_reported = True
            self._notify(self.callbacks.on_grace_expired)

    def _notify(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a program's callback must not stop the heartbeats
            log.exception("heartline.callback.failed")

    # -- SIGTERM ------------------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # the sync Session installs its own in the main thread
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (NotImplementedError, RuntimeError):
            return
        self._sigterm_installed = True

    def _uninstall_sigterm(self) -> None:
        if self._sigterm_installed:
            self._sigterm_installed = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    def _on_sigterm(self) -> None:
        async def end_then_terminate() -> None:
            await self.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        asyncio.get_running_loop().create_task(end_then_terminate())


class Session:
    """`with Session(client, fingerprint) as session:` for synchronous programs; as AsyncSession, with the
    heartbeats on the Client's background thread.  SIGTERM ends the session, then terminates the program
    as it would have (the previous handler runs)."""

    def __init__(self, client: Client, fingerprint: str, **options: Any) -> None:
        self.client = client
        self.handle_sigterm = options.pop("handle_sigterm", True)
        self.aio = AsyncSession(client.aio, fingerprint, handle_sigterm=False, **options)
        self._previous: Any = None

    def __enter__(self) -> Self:
        self.client.portal.call(self.aio.open())
        if self.handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        self.client.portal.call(self.aio.close())

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._previous
        self.close()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            os.kill(os.getpid(), signal.SIGTERM)

    def borrow(self, until: dt.datetime) -> Lease:
        return self.client.portal.call(self.aio.borrow(until))

    def return_borrow(self) -> None:
        self.client.portal.call(self.aio.return_borrow())

    @property
    def lease(self) -> Lease | None:
        return self.aio.lease

    @property
    def valid(self) -> bool:
        return self.aio.valid

    @property
    def state(self) -> SessionState:
        return self.aio.state

    @property
    def token(self) -> str | None:
        return self.aio.token

    @property
    def stats(self) -> SessionStats:
        return self.aio.stats

    @property
    def seconds_left(self) -> float:
        return self.aio.seconds_left
