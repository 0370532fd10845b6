"""The admin's door to the session plane: end sessions and drop cached licenses from Flask (sync) code.

The plane API is async (redis.asyncio); each call here opens a short-lived client, runs one operation
and closes it.  Admin actions are rare, so a connection per action costs nothing worth a shared loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

from heartline.plane import redis as plane_redis
from heartline.plane.events import EndReason
from heartline.settings import Settings

T = TypeVar("T")


class PlaneError(RuntimeError):
    """The session plane (Redis) could not be reached; the message is shown to the admin."""


class AdminPlane:
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise PlaneError("HEARTLINE_REDIS_URL is not set: the admin cannot reach the session plane")
        self.settings = settings

    def _run(self, operation: Callable[..., Awaitable[T]]) -> T:
        from heartline.plane.sessions import SessionPlane

        async def go() -> T:
            client = plane_redis.connect(self.settings.redis_url or "", socket_timeout=5,
                                         socket_connect_timeout=5)
            try:
                plane = SessionPlane(client, self.settings)
                await plane.load_scripts()
                return await operation(plane)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.RedisClusterException, redis.exceptions.ClusterDownError) as exc:
                raise PlaneError(f"the session plane (Redis) is unreachable: {exc}") from None
            finally:
                await client.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(go())
        # Called from inside an event loop (a test, an async server): run on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def terminate_session(self, license_id: int, token: str) -> bool:
        return self._run(lambda p: p.end_session(license_id, token, EndReason.ADMIN_TERMINATED))

    def end_license_sessions(self, license_id: int, reason: EndReason) -> int:
        return self._run(lambda p: p.end_license_sessions(license_id, reason))

    def suspend_license(self, license_id: int, status: str, version: int) -> int:
        """Switch the cached license to `status` and end its live sessions, atomically (see
        SessionPlane.suspend_license); -1 when a newer version is already cached."""
        return self._run(lambda p: p.suspend_license(license_id, status, version))

    def end_device_sessions(self, license_id: int, fingerprint: str, reason: EndReason,
                            device_id: int | None = None) -> int:
        return self._run(lambda p: p.end_device_sessions(license_id, fingerprint, reason, device_id))

    def invalidate_license(self, license_id: int) -> None:
        self._run(lambda p: p.invalidate_license(license_id))

    def live_count(self) -> int:
        return self._run(lambda p: p.live_count())
