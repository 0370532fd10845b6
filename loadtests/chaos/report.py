"""The soak's figures (what was injected, how requests were answered, how long they took) and the printed
report: the figures, then the verdict with every violation."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import Any

from loadtests.chaos.checks import Verdict
from loadtests.chaos.ledger import NO_ANSWER, Ledger


def figures(ledger: Ledger, t0: float) -> dict[str, Any]:
    faults = [{"kind": f.kind, "target": f.target, "at_s": round(f.started - t0, 1),
               "lasted_s": round(f.ended - f.started, 1), "detail": f.detail} for f in ledger.faults]
    return {"faults": faults,
            "answers": answers(ledger), "answers_during_faults": answers_during_faults(ledger),
            "latency_s": latencies(ledger), "harness_loop_lag_max_s": round(ledger.loop_lag_max_s, 3)}


def answers(ledger: Ledger) -> dict[str, dict[str, int]]:
    """Per route: answers by status and code ('no answer (<exception>)' when none came)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for (route, status, code), count in ledger.answers.items():
        label = f"no answer ({code})" if status == NO_ANSWER else f"{status} {code}".strip()
        out[route][label] += count
    return {route: dict(sorted(c.items())) for route, c in sorted(out.items())}


def answers_during_faults(ledger: Ledger) -> dict[str, dict[str, int]]:
    """Per fault kind: how the requests sent while it lasted were answered."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    timeline = sorted(ledger.timeline)
    for fault in ledger.faults:
        lo = bisect.bisect_left(timeline, (fault.started,))
        hi = bisect.bisect_right(timeline, (fault.ended, "\uffff"))
        for _, _route, status, _took in timeline[lo:hi]:
            out[fault.kind]["no answer" if status == NO_ANSWER else str(status)] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(out.items())}


def latencies(ledger: Ledger) -> dict[str, dict[str, float]]:
    """Seconds from send to answer per route (answered requests only): p50, p95, p99, max."""
    by_route: dict[str, list[float]] = defaultdict(list)
    for _, route, status, took in ledger.timeline:
        if status != NO_ANSWER:
            by_route[route].append(took)
    out = {}
    for route, times in sorted(by_route.items()):
        times.sort()
        out[route] = {f"p{q}": round(times[min(len(times) - 1, len(times) * q // 100)], 3)
                      for q in (50, 95, 99)}
        out[route]["max"] = round(times[-1], 3)
    return out


def render(verdict: Verdict, meta: dict[str, Any]) -> str:
    f = verdict.figures
    lines = [(f"chaos soak: {meta['minutes']:g} min, {meta['programs']} programs on {meta['licenses']} "
              f"licenses, {meta['edges']} edges, {meta['workers']} workers; Redis {meta['redis']}; "
              f"PostgreSQL {meta['postgres']}; seed {meta['seed']}; started {meta['started']}")]
    kinds = Counter(x["kind"] for x in meta["faults"])
    lines.append(f"faults injected: {len(meta['faults'])} ("
                 + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ")")
    for x in meta["faults"]:
        lines.append(f"  +{x['at_s']:>7.1f} s  {x['kind']:<12} {x['target']:<15} {x['lasted_s']:>5.1f} s  "
                     f"{x['detail']}")
    lines.append("answers:")
    for route, counts in meta["answers"].items():
        lines.append(f"  {route:<10} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    lines.append("latency (s, answered requests): " + "; ".join(
        f"{route} " + " ".join(f"{k} {v}" for k, v in q.items()) for route, q in meta["latency_s"].items()))
    lines.append(f"the soak's own event loop was at most {meta['harness_loop_lag_max_s']} s late")
    lines.append("answers to requests sent during each kind of fault:")
    for kind, counts in meta["answers_during_faults"].items():
        lines.append(f"  {kind:<12} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    hb = f.get("heartbeats", {})
    lines.append(f"heartbeats answered 200: {hb.get('answered_200', 0)}; stored exactly once: "
                 f"{hb.get('stored_once', 0)}; lost in Redis crash windows: {hb.get('lost_in_windows', 0)}; "
                 f"lost otherwise: {hb.get('lost_outside_windows', 0)}; "
                 f"duplicates: {hb.get('duplicates', 0)}; stored without a 200 (answer lost or 503): "
                 f"{hb.get('stored_without_200', 0)}")
    for w in f.get("loss_windows", []):
        oldest = ("" if w["oldest_lost_s"] is None
                  else f" (the oldest sent {w['oldest_lost_s']:.3f} s before the kill)")
        lines.append(f"  {w['kind']} at +{w['at_s']} s: {w['heartbeats_lost']} heartbeats lost{oldest}, "
                     f"{w['sessions_lost']} sessions without history")
    s = f.get("sessions", {})
    lines.append(f"sessions: {s.get('known', 0)} known to clients, {s.get('in_history', 0)} in history; "
                 f"reasons {s.get('reasons', {})}; "
                 f"lost in windows: {s.get('lost_in_windows_without_history', 0)}; "
                 f"unknown to clients: {s.get('unknown_to_clients', {})}")
    lines.append(f"suspensions: {f.get('suspensions', 0)}; samples: {f.get('samples', {})}")
    lines.append(f"backlog {'drained' if meta['drained'] else 'NOT drained'} {meta['drain_s']} s after the "
                 "wind-down")
    lines.extend(verdict.lines)
    if verdict.ok:
        lines.append("VERDICT: PASS - no violation")
    else:
        lines.append(f"VERDICT: FAIL - {len(verdict.violations)} violation(s):")
        lines.extend(f"  - {v}" for v in verdict.violations)
    return "\n".join(lines)
