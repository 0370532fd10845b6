"""The chaos soak: `python -m loadtests.chaos --minutes N`.

A stack of its own (PostgreSQL, a Redis it may kill, edges and workers through the CLI), a steady
population of licensed programs and an admin, faults injected at random, and at the end a verdict: every
heartbeat answered 200 stored once (or counted in a Redis crash's loss window), every ended session in
history once with a true reason, no license over its limits, no 500, the backlog drained.

One module per concern: `stack` (processes), `proxy` (the TCP proxy faults cut and slow), `faults`,
`population` (programs and admin), `ledger` (what they saw), `sampler` (limits and backlog, sampled
continuously), `checks` (the verdict), `soak` (phases and report).  docs/operations/durability.md gives
the figures of a 30-minute run.
"""
