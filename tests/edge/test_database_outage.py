"""An edge (re)started while PostgreSQL is unreachable: it starts all the same, answers 503
DATABASE_UNAVAILABLE for what needs the database, and serves once PostgreSQL is back, without a restart.
(The chaos soak found an edge restarted during a PostgreSQL outage exiting at start, again and again.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from worker_support import TcpProxy

from edge.app import create_app
from heartline.settings import Settings


async def test_edge_started_while_postgres_is_unreachable_serves_once_it_is_back(
        edge_settings: Settings, api_key: str, make_license: Callable[..., Any], redis: Any) -> None:
    # `redis` flushes the plane: license ids restart at 1 per test, and an earlier test's live sessions of
    # license 1 would otherwise fill this one's seats.
    lic = await make_license()
    url = urlsplit(edge_settings.database_url or "")
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    await proxy.cut()   # the port is kept: PostgreSQL is "down" until the proxy starts again
    user = f"{url.username}@" if url.username else ""
    app = create_app(edge_settings.replace(
        database_url=url._replace(netloc=f"{user}127.0.0.1:{proxy.port}").geturl()))
    body = {"license_key": lic["license_key"], "hardware_fingerprint": "box"}
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://edge",
                headers={"X-API-Key": api_key}) as edge:
            down = await edge.post("/v1/sessions", json=body)
            assert (down.status_code, down.json()["error"]["code"]) == (503, "DATABASE_UNAVAILABLE"), down.text
            await proxy.start()
            up = await edge.post("/v1/sessions", json=body)
            assert up.status_code == 201, up.text
    finally:
        await proxy.cut()
