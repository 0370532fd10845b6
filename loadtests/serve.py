"""Serve the floor or the edge on exactly the same uvicorn settings, so their figures compare.

    python -m loadtests.serve floor --port 8101
    python -m loadtests.serve edge --port 8102      # settings from HEARTLINE_* like `heartline edge`
    python -m loadtests.serve edge-multiplexed --port 8103

`edge-unsigned` is the edge as shipped with HEARTLINE_SIGN_ANSWERS=false: beside `edge` in one run it
gives what signing every answer (RFC 9421, one Ed25519 signature per heartbeat) costs.

`edge-session-mac` is the edge as shipped, loaded with heartbeats that carry `Heartline-Answer-Key: <the
signing key's kid>` (the bench adds the header): every answer MACed with the session's answer key
(RFC 9421 hmac-sha256, docs/client.md) instead of Ed25519-signed.  The server is the same as `edge`.

`edge-redispy` runs the plane's scripts on the edge's redis-py client whatever the edge itself does
(the baseline of the comparison once the edge uses the multiplexed client itself).

`edge-multiplexed-direct` adds, for measurement only, a heartbeat path around Starlette's middleware
stack, router and metrics middleware: what that stack costs per heartbeat.

`edge-multiplexed` is the edge with the one change proposed for its hot path, measured before it lands:
the plane's Lua scripts (heartbeat, start, end, ...) go through `heartline.plane.redis.single`'s
MultiplexedRedis — one socket write per event-loop tick (or per 8 commands) for all requests in flight — instead of a pooled
redis-py connection per call.  Everything else (auth, license cache, other Redis calls) is unchanged.

uvloop, httptools, one worker process, no access log: the settings the architecture's performance notes
(docs/architecture.md) measured with.  The bench starts both through this module rather than through
`heartline edge`, so that a server option added to one of them cannot make the ratio lie.

`floor-granian` and `edge-granian` serve the floor and the edge as shipped on granian instead (its ASGI
interface with lifespan, one worker process like the uvicorn variants, uvloop, HTTP/1 only, no access
log): the server choice measured, each against the floor on the same server.  granian runs the app in a
worker process it spawns; the bench counts the CPU time of the whole process tree.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

SERVER_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "workers": 1,
    "access_log": False,
    "log_level": "warning",
    "lifespan": "on",
}


# granian's settings matched to SERVER_OPTIONS: one worker, uvloop, HTTP/1.1 only (httptools), no access log
GRANIAN_OPTIONS: dict[str, Any] = {
    "interface": "asgi",  # with lifespan (the edge opens its Redis and PostgreSQL clients there)
    "workers": 1,
    "loop": "uvloop",
    "http": "1",
    "websockets": False,
    "log_access": False,
    "log_level": "warning",
}

VARIANTS = ("floor", "edge", "edge-unsigned", "edge-session-mac", "edge-redispy", "edge-multiplexed", "edge-multiplexed-direct",
            "floor-granian", "edge-granian")
GRANIAN_SUFFIX = "-granian"


def server_of(which: str) -> str:
    """`granian` for the variants served by granian, else `uvicorn`."""
    return "granian" if which.endswith(GRANIAN_SUFFIX) else "uvicorn"


def floor_of(which: str) -> str:
    """The floor a variant is compared with: the floor on the same server."""
    return "floor-granian" if server_of(which) == "granian" else "floor"


def build_app(which: str) -> Any:
    """The ASGI app to serve: `floor`, or an edge variant built from HEARTLINE_* settings."""
    which = which.removesuffix(GRANIAN_SUFFIX)
    if which == "floor":
        from loadtests.floor import create_app
        return create_app()
    from heartline.settings import Settings
    settings = Settings.from_env()
    if which == "edge-unsigned":
        settings = settings.replace(sign_answers=False)
    app = importlib.import_module("edge.app").create_app(settings)
    if which.startswith("edge-multiplexed"):
        _multiplex_plane_scripts(app, settings.redis_url or "")
    if which == "edge-redispy":
        _redispy_plane_scripts(app)
    if which == "edge-multiplexed-direct":
        return _direct_heartbeat(app)
    return app


def _direct_heartbeat(app: Any) -> Any:
    """Measurement only: heartbeats reach the edge's own endpoint without Starlette's middleware stack,
    router and the metrics middleware; refusals are rendered by the edge's own renderer.  It shows what
    that stack costs per heartbeat; other failures (Redis down) would not get their 503 here."""
    import re

    from starlette.requests import Request

    from edge.errors import EdgeError, render
    from edge.heartbeats import heartbeat

    path = re.compile(r"/v1/sessions/([^/]+)/heartbeat")

    async def direct(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            matched = path.fullmatch(scope["path"])
            if matched:
                scope["app"] = app
                scope["path_params"] = {"token": matched.group(1)}
                try:
                    await heartbeat(scope, receive, send)
                except EdgeError as exc:
                    await render(Request(scope), exc)(scope, receive, send)
                return
        await app(scope, receive, send)

    return direct


def _redispy_plane_scripts(app: Any) -> None:
    """Once the edge's lifespan has built its plane, run the plane's scripts on the edge's redis-py client
    (the edge before the multiplexed client, for comparison)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(started: Any) -> AsyncIterator[None]:
        async with inner(started):
            started.state.edge.plane.scripts.redis = started.state.edge.redis
            yield

    app.router.lifespan_context = lifespan


def _multiplex_plane_scripts(app: Any, redis_url: str) -> None:
    """Once the edge's lifespan has built its plane, run the plane's scripts on a MultiplexedRedis."""
    from heartline.plane.redis.single import MultiplexedRedis

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(started: Any) -> AsyncIterator[None]:
        async with inner(started):
            client = MultiplexedRedis.from_url(redis_url)
            started.state.edge.plane.scripts.redis = client
            try:
                yield
            finally:
                # in the server's log: how many heartbeats shared a socket write on average
                print(f"multiplex.stats commands={client.commands} writes={client.writes} "
                      f"per_write={client.commands / max(1, client.writes):.1f}", flush=True)
                await client.aclose()

    app.router.lifespan_context = lifespan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.serve")
    parser.add_argument("which", choices=VARIANTS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if server_of(args.which) == "granian":
        serve_granian(args.which, args.host, args.port)
    else:
        uvicorn.run(build_app(args.which), host=args.host, port=args.port, **SERVER_OPTIONS)
    return 0


def serve_granian(which: str, host: str, port: int) -> None:
    """Serve `which` on granian: its worker process builds the app by calling build_app(which)."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    options = {**GRANIAN_OPTIONS, "interface": Interfaces(GRANIAN_OPTIONS["interface"]),
               "loop": Loops(GRANIAN_OPTIONS["loop"]), "http": HTTPModes(GRANIAN_OPTIONS["http"]),
               "log_level": LogLevels(GRANIAN_OPTIONS["log_level"])}
    Server(which, address=host, port=port, **options).serve(target_loader=build_app)


if __name__ == "__main__":
    raise SystemExit(main())
