"""Prometheus metrics of one edge process: requests and latency by route and status, refusals by
code, live sessions (read from the plane at scrape time).

Each app gets its own registry (several apps may live in one test process).  With several uvicorn
workers each serves its own counters; scrape them through the load balancer's per-instance targets or
run one worker per container.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.state import edge_state

# Heartbeats take about a millisecond; starts with an activation tens of milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Tally:
    """Answers of one (route, method, status) counted in plain integers, for the heartbeat's hot path:
    prometheus_client's inc() and observe() take a lock each and cost ~2 µs a request together.  The
    counts are added to the Prometheus counter and histogram whenever the registry is collected (a
    scrape), so /metrics shows exactly what observe() would have given."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds  # the histogram's upper bounds, +Inf last
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(bounds)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        # prometheus_client's Histogram.observe counts into the first bucket whose bound is >= seconds
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1

    def take(self) -> tuple[int, float, list[int]]:
        taken = (self.count, self.total, self.buckets)
        self.count, self.total, self.buckets = 0, 0.0, [0] * len(self.bounds)
        return taken


class _FlushTallies:
    """Registered first in the registry: moves the tallies into the Prometheus metrics before the
    counter and histogram are collected.  It exposes nothing itself."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        self.metrics.flush()
        return iter(())


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tallies: dict[tuple[str, str, str], Tally] = {}
        self.registry.register(_FlushTallies(self))  # type: ignore[arg-type]
        self.requests = Counter("heartline_edge_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("heartline_edge_request_duration_seconds",
                                 "Time to answer, by route, method and status", ["route", "method", "status"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.refusals = Counter("heartline_edge_refusals_total", "Error answers by code", ["code"],
                                registry=self.registry)
        self.live_sessions = Gauge("heartline_live_sessions", "Sessions live in the plane (all shards)",
                                   registry=self.registry)
        # (route, method, status) -> its counter and histogram children: labels() per request costs
        # a lock and a tuple build on the hot path; there are only a few dozen combinations.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency under its route template."""
        labels = (route, method, str(status))
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def tally(self, route: str, method: str, status: int) -> Tally:
        """The plain counter of one (route, method, status) for a hot path: `tally(...).add(seconds)`
        counts like observe() does, into the same metrics, from the next scrape on (see Tally)."""
        labels = (route, method, str(status))
        found = self._tallies.get(labels)
        if found is None:  # its series appear with the first count, as with observe()
            found = self._tallies[labels] = Tally([*LATENCY_BUCKETS, float("inf")])
        return found

    def flush(self) -> None:
        """Add the tallies counted since the last flush to the Prometheus counter and histogram."""
        for labels, tally in self._tallies.items():
            if not tally.count:
                continue
            count, total, buckets = tally.take()
            counter, histogram = self._children.get(labels) or (self.requests.labels(*labels),
                                                                self.latency.labels(*labels))
            counter.inc(count)
            # prometheus_client keeps a histogram child as per-bucket counts (not cumulative) and a sum;
            # tests/edge/test_fastpath.py checks that this gives the exposition observe() gives
            histogram._sum.inc(total)
            for value, added in zip(histogram._buckets, buckets, strict=True):
                if added:
                    value.inc(added)


class ResponseStatus:
    """A `send` that passes every message on and remembers the response's status (500 until one starts,
    so a request that dies before answering counts as the 500 Starlette then sends)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (e.g. /v1/sessions/{token}/end)."""

    def __init__(self, app: ASGIApp, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = ResponseStatus(send)
        try:
            await self.app(scope, receive, answered)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(path, scope["method"], answered.status, time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    collected: EdgeMetrics = request.app.state.metrics
    collected.live_sessions.set(await edge_state(request).plane.live_count())
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
