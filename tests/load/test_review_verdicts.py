"""Adversarial review of the scenario verdicts: every way a verdict could say PASS on
nothing measured, on money it did not audit, or on availability it did not count.

Crafted inputs straight into the verdict functions (no processes): ``_verdicts`` with
hand-made traces and summaries, ``traces``/``audit_journal`` on journals written here,
and the k6-style thresholds on empty summaries. Each test names the lie it guards.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from channels.faults import Fault, convert_faults
from loadtests.harness.audit import audit_journal
from loadtests.harness.loadgen import Acknowledged
from loadtests.harness.scenario import (
    Assertions,
    LoadSection,
    PaymentTrace,
    Scenario,
    Watch,
    _verdicts,
    failover_s,
    traces,
)
from loadtests.harness.thresholds import evaluate, parse_threshold
from loadtests.harness.timeseries import SecondRow
from switch.journal import FINAL, UNKNOWN, JournalRecord, open_database
from switch.journal.records import RecordKind, to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status

START = 1_800_000_000.0  # the load's start, wall seconds


def _scenario(duration_s: float = 20.0, **assertions: Any) -> Scenario:
    return Scenario(name="t", description="t", duration_s=duration_s,
                    load=LoadSection(rate=100.0), assertions=Assertions(**assertions))


def _fault(endpoint: str, kind: str = "down", start_s: float = 5.0,
           duration_s: float = 5.0) -> Fault:
    return convert_faults([{"kind": kind, "endpoint": endpoint, "start_s": start_s,
                            "duration_s": duration_s}], root="faults")[0]


def _summary(statuses: dict[str, int] | None = None, errors: dict[str, int] | None = None,
             latency: dict[str, float] | None = None) -> dict[str, Any]:
    return {"totals": {"statuses": statuses or {}, "errors": errors or {}},
            "latency_ms": latency if latency is not None
            else {"p99": 10.0, "p99.9": 20.0, "count": 1000}}


def _audit(lost: int = 0, duplicates: int = 0, acknowledged: int | None = None) -> Any:
    ns = SimpleNamespace(lost=lost, duplicates=duplicates)
    if acknowledged is not None:
        ns.acknowledged = acknowledged
    return ns


def _trace(at_s: float, status: str = "approved", route: str = "card-primary",
           channel: str = "card", answered: str = "", stood_in: bool = False) -> PaymentTrace:
    # Set apart from the constructor, so that these tests run (and fail for the right
    # reason) against the verdict code from before the review, whose trace had 4 fields.
    t = PaymentTrace(START + at_s, status, route, channel)
    t.answered, t.stood_in = answered or status, stood_in
    return t


def _steady(n_per_s: int = 10, seconds: float = 20.0) -> list[PaymentTrace]:
    """A healthy run: card on card-primary, swift and qr on theirs, all approved."""
    out = []
    for i in range(int(seconds * n_per_s)):
        at = i / n_per_s
        channel, route = [("card", "card-primary"), ("swift", "swift"), ("qr", "qr")][i % 3]
        out.append(_trace(at, "approved", route, channel))
    return out


def _row(verdicts: list[Any], prefix: str) -> Any:
    [row] = [v for v in verdicts if v.assertion.startswith(prefix)]
    return row


def _run(sc: Scenario, faults: list[Fault], trs: list[PaymentTrace],
         summary: dict[str, Any] | None = None, audit: Any = None,
         watch: Watch | None = None, rows: Any = None) -> list[Any]:
    extra = {"rows": rows} if rows is not None else {}
    return _verdicts(sc, faults, trs, START, summary if summary is not None else _summary(),
                     audit if audit is not None else _audit(), True, watch, 0, **extra)


# --- healthy runs pass (the second-worst lie: FAIL on a healthy run) -----------------------


def test_a_healthy_run_passes_every_row() -> None:
    sc = _scenario(availability_min=0.99, availability_in_faults_min=0.97, failover_s_max=2.0,
                   p99_ms_max=250, p999_ms_max=2500)
    trs = _steady()
    # card-primary down from 5 s: card payments go to card-secondary, approved at once.
    trs = [(_trace(t.at - START, "approved", "card-secondary", "card")
            if t.channel == "card" and 5 <= t.at - START < 10 else t) for t in trs]
    watch = Watch("http://switch/metrics", "http://channels/faults")
    watch.last_metrics = ("# TYPE payswitch_retries_total counter\n"
                          'payswitch_retries_total{channel="card",reason="timeout"} 3.0\n')
    verdicts = _run(sc, [_fault("card-primary")], trs,
                    _summary(statuses={"approved": len(trs)}), _audit(acknowledged=len(trs)),
                    watch)
    assert all(v.passed for v in verdicts), [v for v in verdicts if not v.passed]
    assert _row(verdicts, "failover time").measured == "0.000 s"


def test_a_fault_on_an_idle_standby_affects_nothing_and_passes() -> None:
    sc = _scenario(failover_s_max=2.0)
    verdicts = _run(sc, [_fault("card-secondary")], _steady())
    row = _row(verdicts, "failover time")
    assert row.passed, row
    # Old code: every card payment on card-primary counted as "affected": "0.000 s".
    assert row.measured.startswith("no payment affected")


# --- failover time --------------------------------------------------------------------------


def test_failover_of_a_network_with_no_alternative_is_not_zero() -> None:
    """Old code: card payments counted as "affected" by a SWIFT blackhole, and the next
    card approval as the failover: 0.000 s, PASS, while every SWIFT payment of the window
    was answered unknown and nothing failed over."""
    sc = _scenario(failover_s_max=2.0)
    trs = [(_trace(t.at - START, "unknown", "swift", "swift")
            if t.channel == "swift" and 5 <= t.at - START < 10 else t) for t in _steady()]
    fault = _fault("swift", "blackhole")
    assert failover_s(trs, fault, START) == float("inf")
    row = _row(_run(sc, [fault], trs), "failover time")
    assert not row.passed and row.measured == "inf s"


def test_failover_measures_only_the_faulted_endpoints_channel_without_a_config() -> None:
    trs = [(_trace(t.at - START, "failed", "qr", "qr")
            if t.channel == "qr" and 5 <= t.at - START < 10 else t) for t in _steady()]
    # No channels given: the channels of the payments routed to the endpoint (qr).
    assert failover_s(trs, _fault("qr"), START) == float("inf")


def test_a_stand_in_approval_is_not_a_failover() -> None:
    """Both card endpoints down: the switch approves on the issuer's behalf. That is
    stand-in, not an approval elsewhere."""
    sc = _scenario(failover_s_max=2.0)
    trs = [(_trace(t.at - START, "approved", "paynet", "card", stood_in=True)
            if t.channel == "card" and 5 <= t.at - START < 10 else t) for t in _steady()]
    row = _row(_run(sc, [_fault("card-primary")], trs), "failover time")
    assert not row.passed, row


def test_failover_with_no_payment_of_the_channel_in_the_window_is_not_a_pass() -> None:
    """Old code: "no payment affected" PASS although no payment at all was measured."""
    sc = _scenario(failover_s_max=2.0)
    trs = [t for t in _steady() if not 5 <= t.at - START < 10]
    row = _row(_run(sc, [_fault("card-primary")], trs), "failover time")
    assert not row.passed and row.measured.startswith("nothing measured")


# --- availability ---------------------------------------------------------------------------


def test_availability_in_a_fault_window_with_no_payments_fails() -> None:
    """Old code: a window with no payment scored 1.0 (PASS): a switch that stopped
    answering (nothing journaled) for the whole outage passed the outage."""
    sc = _scenario(availability_in_faults_min=0.97)
    trs = [t for t in _steady() if not 5 <= t.at - START < 10]
    row = _row(_run(sc, [_fault("card-primary")], trs), "availability during faults[0]")
    assert not row.passed, row


def test_refusals_count_against_availability() -> None:
    """docs/metrics.md: ``overloaded`` and ``unavailable`` refusals are bad events. They
    are never journaled; old code counted the journal alone: 1.0 with half shed."""
    sc = _scenario(availability_min=0.95)
    trs = _steady()
    summary = _summary(statuses={"approved": len(trs)},
                       errors={"overloaded": len(trs), "invalid": 5})
    row = _row(_run(sc, [], trs, summary), "availability over the run")
    assert not row.passed
    assert row.measured.startswith("0.5000") and "refused" in row.measured


def test_refusals_inside_a_fault_window_count_against_it() -> None:
    sc = _scenario(availability_in_faults_min=0.9)
    trs = _steady()
    rows = [SecondRow(second=s + 1, start_s=float(s), end_s=float(s + 1), offered=20.0,
                      sent=20, achieved=10,
                      errors={"unavailable": 10} if 5 <= s < 10 else {})
            for s in range(20)]
    summary = _summary(statuses={"approved": len(trs)}, errors={"unavailable": 50})
    row = _row(_run(sc, [_fault("card-primary")], trs, summary, rows=rows),
               "availability during faults[0]")
    assert not row.passed and "50 refused" in row.measured, row


def test_availability_counts_what_the_client_was_answered() -> None:
    """A payment answered ``unknown`` and settled ``approved`` later by a status inquiry
    was not available when asked (the SLI counts it bad at reply). Old code read the
    journal's latest state: every payment of an outage resolved afterwards was "good"."""
    sc = _scenario(availability_min=0.9)
    trs = [_trace(t.at - START, "approved", t.route, t.channel, answered="unknown")
           if i % 2 else t for i, t in enumerate(_steady())]
    row = _row(_run(sc, [], trs), "availability over the run")
    assert not row.passed and row.measured.startswith("0.5000")


# --- journals written here: traces and the audit -------------------------------------------


def _payment(pid: str, channel: str = "swift", at_s: float = 1.0) -> Payment:
    return Payment(pid, "k" + pid, channel, 100, "EUR", Party("a"), Party("b"),  # type: ignore[arg-type]
                   dt.datetime.fromtimestamp(START + at_s, tz=dt.UTC))


def _journal(path: Path, payments: dict[str, list[tuple[RecordKind, Status]]]) -> Path:
    """``payments``: pid -> its outcome records in order ((kind, status), after an intent)."""
    db = open_database(path, "group")
    at_us = int(START * 1e6)
    rows: list[Any] = []
    for pid, outcomes in payments.items():
        payment = _payment(pid)
        rows.append(to_row(JournalRecord.intent(payment, b"h", at_us)))
        for kind, status in outcomes:
            at_us += 1000
            result = Result(pid, status, "00", route="swift")
            rows.append(to_row(JournalRecord.outcome(kind, payment, result, b"h", at_us)))
    db.executemany(INSERT, rows)
    db.close()
    return path


def test_traces_keep_the_first_answer_and_intents_alone(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {
        "P-ok": [(FINAL, Status.APPROVED)],
        "P-late": [(UNKNOWN, Status.UNKNOWN), (FINAL, Status.APPROVED)],
        "P-open": [],
    })
    by_status = {(t.status, t.answered) for t in traces(journal)}
    assert by_status == {("approved", "approved"), ("approved", "unknown"), ("sent", "")}
    sc = _scenario(availability_min=0.5)
    row = _row(_verdicts(sc, [], traces(journal), START, _summary(), _audit(), True, None, 0),
               "availability over the run")
    # Old code: 2/2 (the intent alone left out, the unknown counted by its resolution).
    assert row.measured.startswith("0.3333 (1/3")
    assert not row.passed


def test_audit_counts_an_intent_alone_as_unresolved(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {"P-ok": [(FINAL, Status.APPROVED)], "P-open": [],
                                           "P-unk": [(UNKNOWN, Status.UNKNOWN)]})
    assert audit_journal(journal, {}).unresolved == 2  # old code: 1


def test_audit_checks_the_acknowledged_payment_not_just_its_key(tmp_path: Path) -> None:
    """The client was told P-1 approved; the journal holds no P-1, only another payment
    of the same key. Old code looked the key up only: not lost."""
    db = open_database(tmp_path / "j.db", "group")
    p2 = Payment("P-2", "kP-1", "swift", 100, "EUR", Party("a"), Party("b"),
                 dt.datetime.fromtimestamp(START, tz=dt.UTC))
    db.executemany(INSERT, [
        to_row(JournalRecord.intent(p2, b"h", 1)),
        to_row(JournalRecord.outcome(FINAL, p2, Result("P-2", Status.APPROVED, "00"), b"h", 2)),
    ])
    db.close()
    report = audit_journal(tmp_path / "j.db", {"kP-1": Acknowledged("approved", "P-1")})
    assert report.lost == 1
    # The right payment id passes.
    assert audit_journal(tmp_path / "j.db", {"kP-1": Acknowledged("approved", "P-2")}).lost == 0


def test_lost_fails_when_acknowledgements_are_missing() -> None:
    """Old code: no ack file read -> nothing audited -> "lost 0" PASS."""
    sc = _scenario()
    summary = _summary(statuses={"approved": 900, "unknown": 100})
    row = _row(_run(sc, [], _steady(), summary, _audit(acknowledged=0)), "lost")
    assert not row.passed and "not audited" in row.measured
    ok = _row(_run(sc, [], _steady(), summary, _audit(acknowledged=1000)), "lost")
    assert ok.passed and ok.measured == "0"


# --- latency and retries: nothing measured is not a pass ------------------------------------


@pytest.mark.parametrize("latency", [
    {"p99": 0.0, "p99.9": 0.0, "count": 0},  # an empty histogram reads 0
    {},  # not in the summary at all
])
def test_latency_with_nothing_measured_fails(latency: dict[str, float]) -> None:
    sc = _scenario(p99_ms_max=250, p999_ms_max=2500)
    verdicts = _run(sc, [], _steady(), _summary(latency=latency))
    for name in ("p99 latency", "p99.9 latency"):
        row = _row(verdicts, name)
        assert not row.passed and row.measured.startswith("nothing measured"), row


def test_retries_with_no_metrics_scraped_fail() -> None:
    """Old code: a switch whose /metrics never answered read 0 retries: PASS."""
    sc = _scenario()
    watch = Watch("http://switch/metrics", "http://channels/faults")
    row = _row(_run(sc, [], _steady(), watch=watch), "retries within budget")
    assert not row.passed and row.measured.startswith("nothing measured")
    watch.last_metrics = ("# TYPE payswitch_retries_total counter\n"
                          'payswitch_retries_total{channel="card",reason="timeout"} 1000.0\n')
    row = _row(_run(sc, [], _steady(), watch=watch), "retries within budget")
    assert not row.passed and row.measured == "1000"  # 200 payments: at most 40


# --- k6-style thresholds -------------------------------------------------------------------


def _empty_summary() -> dict[str, Any]:
    zero = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99.9": 0.0, "p99.99": 0.0, "max": 0.0,
            "mean": 0.0, "count": 0}
    return {"totals": {"offered": 0, "offered_rate": 0.0, "sent": 0, "replies": 0,
                       "achieved_rate": 0.0, "dropped_overrun": 0, "statuses": {},
                       "errors": {}, "planted_errors": {}},
            "latency_ms": zero, "latency_by_channel_ms": {"card": zero},
            "generator": {"max_lag_ms": 0.0}}


@pytest.mark.parametrize("text", ["p99<50ms", "card:p99<50ms", "mean<5ms", "errors<0.1%",
                                  "errors<=3", "failed<1%", "shed<1%", "rps>=0%"])
def test_thresholds_on_a_run_with_no_requests_fail(text: str) -> None:
    """Old code: the empty histogram's 0 ms and 0 errors of max(0, 1) requests passed."""
    [result] = evaluate([parse_threshold(text)], _empty_summary())
    assert not result.passed, result.line()
    assert "nothing" in result.measured_text


def test_a_run_that_journaled_nothing_does_not_conserve_money() -> None:
    """Every request refused (or the journal on another path): nothing audited, yet the old
    verdict said lost 0, duplicates 0, reconciliation clean (both sides empty): PASS."""
    sc = _scenario()
    summary = _summary(statuses={}, errors={"unavailable": 3000})
    verdicts = _run(sc, [], [], summary, _audit(acknowledged=0))
    assert not _row(verdicts, "lost").passed
    assert not all(v.passed for v in verdicts)


def test_requests_never_answered_nor_journaled_count_against_availability() -> None:
    """A switch that stopped reading one connection: the generator gave up on its requests
    (no_reply), the switch never journaled them. Old code counted the journal alone."""
    sc = _scenario(availability_min=0.95)
    trs = _steady()
    summary = _summary(statuses={"approved": len(trs)})
    summary["totals"].update(unanswered=len(trs), connection_lost=0)
    row = _row(_run(sc, [], trs, summary), "availability over the run")
    assert not row.passed and "never answered" in row.measured, row
    # Unanswered requests the switch did journal are counted once, not twice.
    journaled = trs + [_trace(30.0, "unknown", "swift", "swift") for _ in range(5)]
    summary = _summary(statuses={"approved": len(trs)})
    summary["totals"].update(unanswered=5, connection_lost=0)
    row = _row(_run(_scenario(availability_min=0.5), [], journaled, summary),
               "availability over the run")
    assert row.measured == f"{len(trs) / len(journaled):.4f} ({len(trs)}/{len(journaled)})"


def test_audit_counts_an_approval_the_journal_holds_reversed_as_lost(tmp_path: Path) -> None:
    """No load generator sends a reversal: a payment its client was told was approved and
    that the journal holds reversed was undone behind the client's back. Old code: not lost."""
    journal = _journal(tmp_path / "j.db", {"P-1": [(FINAL, Status.APPROVED),
                                                   (FINAL, Status.REVERSED)]})
    report = audit_journal(journal, {"kP-1": Acknowledged("approved", "P-1")})
    assert report.lost == 1 and report.duplicates == 0


def test_a_payment_left_unknown_at_the_end_fails_the_run() -> None:
    # Every accepted payment ends in exactly one terminal state: one still unknown (or an
    # intent alone) after the resolution wait is a failed row, not a yellow warning.
    trs = _steady()
    trs[5].status = "unknown"
    row = _row(_run(_scenario(), [], trs), "unresolved at the end")
    assert (row.measured, row.passed) == ("1", False)
    row = _row(_run(_scenario(), [], _steady()), "unresolved at the end")
    assert (row.measured, row.passed) == ("0", True)


def test_the_audits_unresolved_count_is_the_one_judged() -> None:
    audit = _audit()
    audit.unresolved = 2  # e.g. a reversal under way, which the latest state alone hides
    row = _row(_verdicts(_scenario(), [], _steady(), START, _summary(), audit, True, None, 0),
               "unresolved at the end")
    assert (row.measured, row.passed) == ("2", False)
    allowed = _row(_verdicts(_scenario(unresolved_max=2), [], _steady(), START, _summary(),
                             audit, True, None, 0), "unresolved at the end")
    assert allowed.passed


def test_latency_rows_judge_what_was_answered_with_a_result() -> None:
    # Under shedding, instant 'overloaded' refusals pulled the overall p99 down: 10 ms
    # overall while the payments answered with a result waited 900 ms at p99.
    summary = _summary(latency={"p99": 10.0, "p99.9": 20.0, "count": 1000})
    summary["latency_admitted_ms"] = {"p99": 900.0, "p99.9": 950.0, "count": 400}
    row = _row(_run(_scenario(p99_ms_max=500.0), [], _steady(), summary=summary),
               "p99 latency")
    assert (row.measured, row.passed) == ("900.0 ms", False)
    # A summary merged from files has only the overall figures: those are judged.
    del summary["latency_admitted_ms"]
    assert _row(_run(_scenario(p99_ms_max=500.0), [], _steady(), summary=summary),
                "p99 latency").passed


def test_the_load_summary_keeps_the_admitted_latency_apart() -> None:
    from collections import Counter

    from loadtests.harness.hlog import new_histogram
    from loadtests.harness.runoutputs import RunTotals, build_summary

    everything, admitted = new_histogram(), new_histogram()
    for _ in range(600):
        everything.record_value(50)  # refused at once: 50 us
    for _ in range(400):
        everything.record_value(900_000)
        admitted.record_value(900_000)
    totals = RunTotals(
        histogram=everything, channel_histograms={}, sent=1000, malformed_sent=0,
        replies=1000, replays=0, statuses=Counter({"approved": 400}),
        errors=Counter({"overloaded": 600}), planted_errors=Counter(), planted_sent=Counter(),
        by_channel=Counter(), unanswered=0, connection_lost=0, dropped=0, lagged=0,
        max_lag_ms=0.0, elapsed_s=1.0, cpu_s=0.1, processes=[], admitted=admitted)
    summary = build_summary({"interrupted_at_s": None}, totals, 1000, 1.0, 0, {}, [])
    assert summary["latency_ms"]["p50"] < 1.0
    assert summary["latency_admitted_ms"]["count"] == 400
    assert summary["latency_admitted_ms"]["p50"] > 800.0
