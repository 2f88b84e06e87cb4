"""Failover, timeouts, blackholes and stand-in as simulations: virtual time, exact answers.

The same situations tests/routing/test_failover_e2e.py drives over TCP on the wall clock
(with sleeps that race a loaded machine), here with the real core, breakers and retry
budget in virtual time: the assertions can be exact, and every run is the same run.
"""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import pytest

from channels.faults import Fault
from switch.model import Payment, Result, Status
from switch.sim.campaign import run_scenario_file
from switch.sim.schedule import Schedule
from switch.sim.simulation import ROOT, SimOptions, Simulation, simulate
from tests.sim import plants


def run(faults: list[Fault], duration_s: float = 20.0, rate: float = 200.0
        ) -> tuple[Simulation, list[tuple[float, Payment, Result]]]:
    # No acquirer reversals: the exact counts below are the network's and the resolver's
    # (tests/sim/test_reversals_sim.py runs these situations with them).
    sim = Simulation(SimOptions(seed=11, duration_s=duration_s, rate=rate,
                                schedule=Schedule(duration_s, tuple(faults), ()),
                                reversal_share=0.0))
    sim.run()
    assert not sim.violations, sim.violations[:5]
    payments: dict[str, Payment] = {}
    out: list[tuple[float, Payment, Result]] = []
    for pid, kind, record in sim.db.execute(
            "SELECT payment_id, kind, record FROM journal ORDER BY seq"):
        if kind == "intent":
            payments[pid] = msgspec.msgpack.decode(record, type=Payment)
        elif kind == "final" and pid in payments:
            p = payments[pid]
            at = p.received_at.timestamp() - 1_768_435_200.0
            out.append((at, p, msgspec.msgpack.decode(record, type=Result)))
    sim.db.close()
    return sim, sorted(out, key=lambda r: r[0])


def cards(rows: list[tuple[float, Payment, Result]], begin: float, end: float
          ) -> list[Result]:
    return [r for at, p, r in rows if p.channel == "card" and begin <= at < end]


def test_primary_down_fails_over_at_once_then_recovers() -> None:
    _, rows = run([Fault(kind="down", endpoint="card-primary", start_s=5.0, duration_s=5.0)])
    during = cards(rows, 5.0, 10.0)
    assert len(during) > 400
    # Connections refused: nothing left, so each payment fails over within its attempt.
    assert all(r.route == "card-secondary" for r in during if r.status is Status.APPROVED)
    assert sum(r.status is Status.APPROVED for r in during) / len(during) > 0.95
    assert not any(r.status is Status.UNKNOWN for r in during)
    # Stand-in only where card-secondary's own 0.5% technical errors met a primary down.
    assert sum(r.stood_in for r in during) <= 0.01 * len(during)
    after = cards(rows, 17.0, 20.0)  # breaker closed again (open_s 5 s, probes every 2 s)
    assert sum(r.route == "card-primary" for r in after) / len(after) > 0.9


def test_blackhole_timeouts_are_reversed_and_the_books_agree() -> None:
    sim, rows = run([Fault(kind="blackhole", endpoint="card-primary", start_s=5.0,
                           duration_s=5.0)])
    during = cards(rows, 5.0, 10.0)
    reversed_at = [at for at, p, r in rows if r.status is Status.REVERSED]
    # Sent, then silence: unknown after the 2 s attempt timeout and reversed. Only payments
    # sent before the first timeouts opened the breaker (5 in a row) can meet the
    # blackhole; after that, card-secondary takes them.
    assert len(reversed_at) > 50
    assert all(5.0 <= at < 5.0 + 2.0 + 0.1 for at in reversed_at), reversed_at[-5:]
    assert all(r.route == "card-secondary" for r in cards(rows, 7.5, 10.0)
               if r.status is Status.APPROVED)
    assert not any(r.status is Status.UNKNOWN for r in during)
    assert sim.counters["resolved"] == len([r for _, _, r in rows
                                            if r.status is Status.REVERSED])


def test_both_card_endpoints_down_stand_in_within_limits_then_advices() -> None:
    sim, rows = run([Fault(kind="down", endpoint="card-primary", start_s=5.0, duration_s=4.0),
                     Fault(kind="down", endpoint="card-secondary", start_s=5.0,
                           duration_s=4.0)])
    stood = [r for r in cards(rows, 5.0, 9.0) if r.stood_in]
    assert stood, "stand-in approvals while no issuer endpoint is reachable"
    assert all(r.status is Status.APPROVED for r in stood)
    assert sim.counters["advices"] == len([r for _, _, r in rows if r.stood_in])
    assert not cards(rows, 12.0, 20.0) or not any(r.stood_in for r in cards(rows, 12.0, 20.0))


def test_scenario_file_in_virtual_time_prints_the_verdict_table() -> None:
    out = io.StringIO()
    code = run_scenario_file(Path(ROOT) / "loadtests" / "scenarios" / "card-primary-outage.toml",
                             out)
    text = out.getvalue()
    assert code == 0, text
    assert "failover time for faults[0]" in text and "PASS" in text


def test_swift_is_resolved_on_time_while_card_reversals_hang() -> None:
    """Both card endpoints answer every reversal too late for a minute, SWIFT drops its
    answers for 2 s: SWIFT's unknowns are resolved on their own schedule, not behind
    hundreds of card reversals each holding a worker to its timeout (seed 1 of the hour)."""
    late = [Fault(kind="late", endpoint=e, start_s=1.0, duration_s=60.0, rate=1.0, delay_s=5.0)
            for e in ("card-primary", "card-secondary")]
    faults = (*late, Fault(kind="reset", endpoint="swift", start_s=1.0, duration_s=2.0,
                           rate=1.0))

    def options() -> SimOptions:
        return SimOptions(seed=5, duration_s=10.0, rate=200.0,
                          schedule=Schedule(10.0, faults, ()))

    result = simulate(options())
    assert not result.violations, result.violations[:3]
    assert result.counters["resolved"] > 500
    with plants.shared_resolver_workers():
        planted = simulate(options())
    assert "unknown-past-schedule" in {v.invariant for v in planted.violations}


def test_unknowns_past_the_resolver_bound_are_resolved_without_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A blackholed card primary, then a crash: ~230 payments to resolve against a
    resolver bound of 50. Those past it wait in the journal and are taken back as the
    queue drains, each within its schedule; planted, without the refill, they stay
    unknown and the simulator names it (seed 1, 10 simulated min at intensity 40)."""
    monkeypatch.setattr("switch.sim.resolution.MAX_QUEUE", 50)
    faults = (Fault(kind="blackhole", endpoint="card-primary", start_s=2.0, duration_s=4.0),)

    def options() -> SimOptions:
        # No acquirer reversals: one past the bound is never taken back (a known bug,
        # tests/sim/test_reversals_sim.py).
        return SimOptions(seed=5, duration_s=20.0, rate=200.0,
                          schedule=Schedule(20.0, faults, ((6.5, 1.0, 0.0),)),
                          reversal_share=0.0)

    result = simulate(options())
    assert not result.violations, result.violations[:3]
    assert result.counters["resolved"] > 200
    with plants.no_resolver_refill():
        planted = simulate(options())
    # The ~120 payments past the bound stay unknown after the drain. (Which further
    # invariants one of them trips depends on the seed's path: this seed's once also gave
    # terminal-once and ack-lost, before the clients sent duplicates in flight.)
    stuck = [v for v in planted.violations if v.invariant == "unknown-past-schedule"]
    assert len(stuck) >= 100, {v.invariant for v in planted.violations}
