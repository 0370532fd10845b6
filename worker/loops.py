"""The worker's long-running loops: one asyncio task per concern, with backoff through outages.

Why loops and not arq cron: arq cron fires at most once a second and each run is a job enqueued through
Redis; the flush wants to run again at once while a stream has a backlog and every `flush_interval_s`
(sub-second) otherwise.  arq cron is kept for the daily jobs (partitions, backups).

While PostgreSQL or Redis is unreachable a loop retries with exponential backoff and logs once per change
of state (`worker.flush.db_unavailable` ... `worker.flush.db_recovered`), not once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

import asyncpg
from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


class LoopState(StrEnum):
    OK = "ok"
    DB_UNAVAILABLE = "db_unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"
    FAILING = "failing"


def classify(exc: BaseException) -> LoopState:
    """Which outage an exception means; anything unexpected is FAILING (and logged with a traceback)."""
    # a cluster failing over or migrating a slot is Redis being unavailable for a moment, too
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
                        RedisClusterException)):
        return LoopState.REDIS_UNAVAILABLE
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                        asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
        return LoopState.DB_UNAVAILABLE
    return LoopState.FAILING


class Backoff:
    """Delay before the next attempt of a failing loop, and the state it logs on each change.

    name: the loop's name in log events (`worker.<name>.<state>`); first_s / max_s: the first delay and
    the cap it doubles up to.
    """

    def __init__(self, name: str, *, first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> None:
        self.name = name
        self.log = logging.getLogger(f"worker.{name}")
        self.first_s = first_s
        self.max_s = max_s
        self.state = LoopState.OK
        self.failures = 0
        self._since = time.monotonic()

    def failed(self, exc: BaseException) -> float:
        state = classify(exc)
        if state != self.state:
            if state is LoopState.FAILING:
                self.log.error("worker.%s.failing error=%s: %s", self.name, type(exc).__name__, exc,
                               exc_info=exc)
            else:
                self.log.warning("worker.%s.%s error=%s: %s", self.name, state, type(exc).__name__, exc)
            self.state = state
            self._since = time.monotonic()
            self.failures = 0
        self.failures += 1
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        if self.state is not LoopState.OK:
            recovered = str(self.state).replace("unavailable", "recovered").replace("failing", "recovered")
            self.log.warning("worker.%s.%s after_s=%.1f attempts=%s", self.name, recovered,
                        time.monotonic() - self._since, self.failures)
            self.state = LoopState.OK
            self.failures = 0


async def run_loop(name: str, step: Callable[[], Awaitable[bool]], interval_s: float,
                   stop: asyncio.Event, *, on_state: Callable[[str, LoopState], None] | None = None,
                   on_success: Callable[[str], None] | None = None) -> None:
    """Call `step` until `stop` is set; `step` returns True when more work is waiting (no pause then).

    name: loop name for logs and metrics; interval_s: pause after a step that found nothing to do;
    stop: set to finish after the current step (a batch in flight is completed, not cut);
    on_state: told of each state change (metrics); on_success: told of each step that succeeded (the
    time of the last reap, flush, ... in metrics and `heartline status`).
    """
    backoff = Backoff(name)
    while not stop.is_set():
        try:
            busy = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is retried; Backoff logs it once
            before = backoff.state
            delay = backoff.failed(exc)
            if on_state and backoff.state != before:
                on_state(name, backoff.state)
            await _sleep_or_stop(stop, delay)
            continue
        if on_success:
            on_success(name)
        if backoff.state is not LoopState.OK:
            backoff.succeeded()
            if on_state:
                on_state(name, LoopState.OK)
        if not busy:
            await _sleep_or_stop(stop, interval_s)


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass
