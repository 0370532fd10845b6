"""What the simulated clients of one locust process share: the seed, the options and the counters.

Kept apart from the locust users (licensed_client.py) so that loadtests/run.py and the tests can use it
without importing locust, whose import monkey-patches the whole process for gevent.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.seed import Seed, SeededLicense, load


@dataclass
class ScenarioOptions:
    """The scenario's settings (locust options of the same names, see locustfile.py)."""

    time_scale: float = 1.0        # 30 runs a 30 s heartbeat interval at 1 s
    validate_share: float = 0.05   # chance per heartbeat that the program also validates its license
    restart_share: float = 0.01    # chance per heartbeat that the program quits and starts again
    accepted_file: Path | None = None


@dataclass
class ScenarioContext:
    """Shared by all users of one locust process: the seed, the options, and the counters."""

    seed: Seed
    options: ScenarioOptions
    programs: list[SeededLicense]
    refusals: list[SeededLicense]
    suspended: list[SeededLicense]
    accepted_heartbeats: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    _next_program: itertools.count[int] = field(default_factory=itertools.count)
    _next_refusal: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_seed(cls, seed: Seed, options: ScenarioOptions) -> ScenarioContext:
        programs = [lic for lic in seed.licenses if lic.status == "active" and lic.sessions_limit > 1]
        refusals = [lic for lic in seed.licenses if lic.status == "active" and lic.sessions_limit == 1]
        suspended = [lic for lic in seed.licenses if lic.status == "suspended"]
        if not programs:
            raise ValueError("the seed has no active licenses with room for two sessions")
        return cls(seed=seed, options=options, programs=programs, refusals=refusals or programs,
                   suspended=suspended)

    def program_license(self) -> SeededLicense:
        # Two programs per license: each license's sessions limit is 2, so none is refused for room.
        return self.programs[(next(self._next_program) // 2) % len(self.programs)]

    def refusal_license(self) -> SeededLicense:
        return self.refusals[next(self._next_refusal) % len(self.refusals)]

    def count(self, outcome: str, accepted: bool = False) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if accepted:
                self.accepted_heartbeats += 1

    def write_accepted(self) -> None:
        if self.options.accepted_file is not None:
            self.options.accepted_file.write_text(json.dumps({
                "run_id": self.seed.run_id, "accepted_heartbeats": self.accepted_heartbeats,
                "outcomes": dict(self.outcomes)}))


def context_of(environment: Any) -> ScenarioContext:
    ctx: ScenarioContext | None = getattr(environment, "heartline", None)
    if ctx is None:
        raise RuntimeError("the scenario was not set up: run it through loadtests/locustfile.py with --seed-file")
    return ctx


def install(environment: Any, seed_file: Path, options: ScenarioOptions) -> ScenarioContext:
    ctx = ScenarioContext.from_seed(load(seed_file.read_bytes()), options)
    environment.heartline = ctx  # type: ignore[attr-defined]
    return ctx
