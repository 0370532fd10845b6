"""The soak's checks catch what they claim to catch: ledgers with one broken promise each, judged against
the rows PostgreSQL would hold (a soak whose checks never fail would prove nothing)."""

from __future__ import annotations

from typing import Any

from loadtests.chaos.checks import Judge
from loadtests.chaos.ledger import AdminAction, Attempt, BacklogSample, Fault, Ledger, Route

T0 = 1_000_000.0
TOKEN = "5b2c1f0e-0000-4000-8000-000000000001"


def ledger_with_beats(*beats: tuple[float, float, int]) -> Ledger:
    """One session started at T0 whose heartbeats were (sent, answered, status)."""
    ledger = Ledger()
    session = ledger.session(TOKEN, 7, "fp", T0, T0 + 0.01)
    session.starts.append(Attempt(Route.START, T0, T0 + 0.01, 201))
    session.heartbeats += [Attempt(Route.HEARTBEAT, T0 + s, T0 + a, status) for s, a, status in beats]
    return ledger


def judge(ledger: Ledger, stored: list[float]) -> Judge:
    j = Judge(ledger, timeout_s=15, license_cache_s=3, t0=T0)
    j.heartbeats([{"token": TOKEN, "at": T0 + t} for t in stored], duplicate_events=0)
    return j


def test_every_200_matched_to_its_own_row_passes() -> None:
    j = judge(ledger_with_beats((2.0, 2.1, 200), (4.0, 4.2, 200)), stored=[2.05, 4.1])
    assert j.verdict.ok, j.verdict.violations
    assert j.verdict.figures["heartbeats"]["stored_once"] == 2


def test_a_200_without_its_row_and_no_redis_crash_is_a_violation() -> None:
    j = judge(ledger_with_beats((2.0, 2.1, 200), (4.0, 4.2, 200)), stored=[2.05])
    assert any("not stored, and no Redis crash came after it" in v for v in j.verdict.violations)


def test_a_200_lost_when_redis_came_back_empty_is_counted_in_its_window() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200), (4.0, 4.2, 200))
    ledger.faults.append(Fault("redis_wipe", "redis", T0 + 4.3, T0 + 5.0))
    j = judge(ledger, stored=[2.05])
    assert j.verdict.ok, j.verdict.violations
    assert j.verdict.figures["heartbeats"]["lost_in_windows"] == 1
    assert j.windows_figures()[0]["heartbeats_lost"] == 1


def test_a_200_lost_although_the_backlog_drained_before_the_crash_is_a_violation() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200), (4.0, 4.2, 200))
    ledger.backlog.append(BacklogSample(T0 + 4.25, heartbeats_drained=True, events_drained=True))
    ledger.faults.append(Fault("redis_wipe", "redis", T0 + 4.3, T0 + 5.0))
    j = judge(ledger, stored=[2.05])
    assert any("the backlog was seen drained" in v for v in j.verdict.violations)


def test_a_row_no_request_explains_is_a_duplicate_but_one_after_a_503_is_not() -> None:
    duplicate = judge(ledger_with_beats((2.0, 2.1, 200)), stored=[2.05, 3.0])
    assert any("no request explains" in v for v in duplicate.verdict.violations)
    after_503 = judge(ledger_with_beats((2.0, 7.0, 503), (8.0, 8.1, 200)), stored=[7.5, 8.05])
    assert after_503.verdict.ok, after_503.verdict.violations
    assert after_503.verdict.figures["heartbeats"]["stored_without_200"] == 1


def history(reason: str, ended_at: float, count: int) -> list[dict[str, Any]]:
    return [{"token": TOKEN, "end_reason": reason, "ended_at": T0 + ended_at, "heartbeat_count": count}]


def test_a_timeout_sooner_than_the_timeout_after_a_renewal_is_a_violation() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200))
    j = judge(ledger, stored=[2.05])
    j.sessions(history("timeout", 10.0, 1), [], {TOKEN: 1})
    assert any("ended as timeout" in v and "renewed" in v for v in j.verdict.violations)
    fair = judge(ledger_with_beats((2.0, 2.1, 200)), stored=[2.05])
    fair.sessions(history("timeout", 17.5, 1), [], {TOKEN: 1})
    assert fair.verdict.ok, fair.verdict.violations


def test_an_end_answered_200_must_be_recorded_as_client_end() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200))
    ledger.sessions[TOKEN].ends.append(Attempt(Route.END, T0 + 3.0, T0 + 3.1, 200))
    j = judge(ledger, stored=[2.05])
    j.sessions(history("admin_terminated", 3.05, 1), [], {TOKEN: 1})
    assert any("its client's end was answered 200" in v for v in j.verdict.violations)


def test_admin_terminated_needs_the_admin_to_have_terminated_it_then() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200))
    j = judge(ledger, stored=[2.05])
    j.sessions(history("admin_terminated", 3.05, 1), [], {TOKEN: 1})
    assert any("the admin did not terminate it" in v for v in j.verdict.violations)
    ledger.admin.append(AdminAction("terminate", 7, T0 + 3.0, T0 + 3.2, True, token=TOKEN))
    ok = judge(ledger, stored=[2.05])
    ok.sessions(history("admin_terminated", 3.05, 1), [], {TOKEN: 1})
    assert ok.verdict.ok, ok.verdict.violations


def test_a_session_without_history_is_lost_only_in_a_loss_window() -> None:
    ledger = ledger_with_beats()
    j = judge(ledger, stored=[])
    j.sessions([], [], {})
    assert any("has no history row" in v for v in j.verdict.violations)
    ledger.faults.append(Fault("redis_wipe", "redis", T0 + 0.5, T0 + 1.0))
    lost = judge(ledger, stored=[])
    lost.sessions([], [], {})
    assert lost.verdict.ok, lost.verdict.violations


def test_a_loss_is_put_on_the_wipe_rather_than_on_an_earlier_restart_that_kept_its_file() -> None:
    ledger = ledger_with_beats((2.0, 2.1, 200))
    ledger.faults += [Fault("redis_crash", "redis", T0 + 3.0, T0 + 4.0),
                      Fault("redis_wipe", "redis", T0 + 9.0, T0 + 10.0)]
    j = judge(ledger, stored=[])
    assert j.verdict.ok, j.verdict.violations
    assert [w["heartbeats_lost"] for w in j.windows_figures()] == [0, 1]


def test_a_suspended_license_served_before_any_reactivation_is_a_violation_but_not_after_one_in_doubt() -> None:
    """Suspended at +1 s (refused from +14 s: license cache 3 s + the checks' 10 s slack); a reactivation sent
    at +30 s timed out at +40 s (in doubt: its UPDATE may have committed) and one sent at +41 s succeeded."""
    def ledger(start_sent: float) -> Ledger:
        led = ledger_with_beats()
        led.admin += [AdminAction("suspend", 7, T0 + 1.0, T0 + 1.01, True, detail="sessions ended: 1"),
                      AdminAction("reactivate", 7, T0 + 30.0, T0 + 40.0, False, detail="database: TimeoutError"),
                      AdminAction("reactivate", 7, T0 + 41.0, T0 + 41.01, True)]
        led.sessions[TOKEN].starts.append(Attempt(Route.START, T0 + start_sent, T0 + start_sent + 0.1, 200))
        return led
    served_while_suspended = judge(ledger(20.0), stored=[])
    served_while_suspended.suspensions_enforced()
    assert any("suspended at" in v and "still answered 1 start(s) 200" in v
               for v in served_while_suspended.verdict.violations)
    served_after_the_reactivation_in_doubt = judge(ledger(35.0), stored=[])
    served_after_the_reactivation_in_doubt.suspensions_enforced()
    assert served_after_the_reactivation_in_doubt.verdict.ok, served_after_the_reactivation_in_doubt.verdict.violations
