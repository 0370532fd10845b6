"""Locust entry point: simulated licensed programs against a running edge.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --seed-file seed.json --time-scale 30

Usually started by `python -m loadtests.run`, which seeds the licenses and the API key, writes the seed
file and checks PostgreSQL afterwards.  The scenario's options, all in one place:

  --seed-file PATH      the licenses and API key to use (JSON written by loadtests/run.py); required
  --time-scale X        divide every heartbeat interval by X (30: a 30 s interval runs at 1 s); default 1
  --validate-share P    chance per heartbeat that a program also validates its license; default 0.05
  --restart-share P     chance per heartbeat that a program ends its session and starts anew; default 0.01
  --accepted-file PATH  where to write the number of accepted heartbeats when locust quits

User count (-u) and spawn rate (-r) set the number of simulated clients; 1 in 21 is a misbehaving one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from locust import events

from loadtests.scenarios.context import ScenarioOptions, context_of, install
from loadtests.scenarios.licensed_client import LicensedProgram, MisbehavingClient

__all__ = ["LicensedProgram", "MisbehavingClient"]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Heartline scenario")
    group.add_argument("--seed-file", type=str, default="", help="seed JSON written by loadtests/run.py")
    group.add_argument("--time-scale", type=float, default=1.0, help="divide heartbeat intervals by this")
    group.add_argument("--validate-share", type=float, default=0.05, help="validations per heartbeat")
    group.add_argument("--restart-share", type=float, default=0.01, help="restarts per heartbeat")
    group.add_argument("--accepted-file", type=str, default="", help="write accepted heartbeats here")


@events.init.add_listener
def _setup(environment: Any, **_kwargs: Any) -> None:
    opts = environment.parsed_options
    if opts is None or not opts.seed_file:
        raise SystemExit("loadtests/locustfile.py needs --seed-file (python -m loadtests.run writes one)")
    if opts.time_scale <= 0:
        raise SystemExit("--time-scale must be positive")
    install(environment, Path(opts.seed_file), ScenarioOptions(
        time_scale=opts.time_scale, validate_share=opts.validate_share, restart_share=opts.restart_share,
        accepted_file=Path(opts.accepted_file) if opts.accepted_file else None))


@events.quitting.add_listener
def _write_accepted(environment: Any, **_kwargs: Any) -> None:
    context_of(environment).write_accepted()
