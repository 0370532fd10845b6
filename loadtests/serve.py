"""Serve the floor or the edge on exactly the same uvicorn settings, so their figures compare.

    python -m loadtests.serve floor --port 8101
    python -m loadtests.serve edge --port 8102      # settings from HEARTLINE_* like `heartline edge`

uvloop, httptools, one worker process, no access log: the settings DESIGN §6 measured with.  The bench
starts both through this module rather than through `heartline edge`, so that a server option added to
one of them cannot make the ratio lie.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_app(which: str) -> Any:
    """The ASGI app to serve: `floor`, or `edge` built from HEARTLINE_* settings."""
    if which == "floor":
        from loadtests.floor import create_app
        return create_app()
    from heartline.settings import Settings
    edge_app = importlib.import_module("edge.app")
    return edge_app.create_app(Settings.from_env())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.serve")
    parser.add_argument("which", choices=("floor", "edge"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(args.which), host=args.host, port=args.port, **SERVER_OPTIONS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
