"""arq's Worker, made to ride out a Redis outage like the worker's own loops (worker/loops.py).

arq's poll loop (pick jobs, record health, enqueue cron jobs) raises the first ConnectionError it meets,
and the process exits: one Redis restart used to take the worker down for good.  Here a poll that finds
Redis unreachable (or still loading its data) backs off and tries again with the same `Backoff` as the
loops, logging once per change of state (`worker.poll.redis_unavailable` ... `worker.poll.recovered`);
and shutting down while Redis is away still lets the loops finish and close their resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from arq import worker as arq_worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.loops import Backoff, LoopState

log = logging.getLogger("worker.poll")

# BusyLoadingError (a restarted Redis reading its data) is a ConnectionError.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


class Worker(arq_worker.Worker):
    """arq's Worker whose poll loop and shutdown survive Redis being unreachable."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.poll_backoff = Backoff("poll")

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            await asyncio.sleep(self.poll_backoff.failed(exc))
            return
        if self.poll_backoff.state is not LoopState.OK:
            self.poll_backoff.succeeded()

    async def close(self) -> None:
        """arq's close, except that Redis being unreachable skips arq's own cleanup (its health key)
        instead of skipping ours (on_shutdown: the loops finish their batches, resources close)."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.pool.delete(self.health_check_key)
        except REDIS_DOWN as exc:
            log.warning("worker.poll.close_without_redis error=%s", type(exc).__name__)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(*REDIS_DOWN):
            await self.pool.close(close_connection_pool=True)
        self._pool = None
