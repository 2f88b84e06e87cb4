"""The simulated acquirer's reversals (switch/sim/acquirer.py): clean seeds, determinism,
and the stand-in advice a reversal must withdraw, planted back and found."""

from __future__ import annotations

import pytest

from switch.sim.simulation import simulate
from tests.sim import plants
from tests.sim.test_plants_more import card_outage
from tests.sim.test_simulation import short

REVERSAL_INVARIANTS = {"reversal-undone", "reversed-standin-advised"}


@pytest.mark.parametrize("crashes", [False, True])
def test_seeds_with_reversals_are_clean(crashes: bool) -> None:
    accepted = 0
    for seed in range(1, 9):
        result = simulate(short(seed, crashes=crashes))
        assert result.violations == [], (seed, [str(v) for v in result.violations[:3]])
        accepted += result.counters.get("reversals_accepted", 0)
    assert accepted > 30  # reversals were made, and undone at the issuer


def test_a_card_outage_with_reversals_of_stand_in_approvals_is_clean() -> None:
    result = simulate(card_outage(1, 100.0))
    assert result.violations == [], [str(v) for v in result.violations[:3]]
    assert result.counters["stand_in"] > 100 and result.counters["reversals_accepted"] > 50


def test_reversals_keep_the_trace_deterministic() -> None:
    first = simulate(short(11, crashes=True))
    second = simulate(short(11, crashes=True))
    assert first.trace_hash == second.trace_hash and first.counters == second.counters
    assert first.counters.get("reversals_accepted", 0) > 0
    without = simulate(short(11, crashes=True, reversal_share=0.0))
    assert without.trace_hash != first.trace_hash
    assert not any(k.startswith("reversals_") for k in without.counters)


def test_finds_a_reversal_that_keeps_the_stand_in_advice() -> None:
    """Both card issuers down for 8 s: every card payment stands in, a share of them is
    reversed while its advice waits. Without StandIn.withdraw the advice reaches the
    issuer after the accepted reversal, on the first seed; with it, never."""
    with plants.reversal_keeps_standin_advice():
        found = {seed: {v.invariant for v in simulate(card_outage(seed, 100.0)).violations}
                 for seed in range(1, 3)}
    assert all("reversed-standin-advised" in got for got in found.values()), found
    assert all(got <= REVERSAL_INVARIANTS for got in found.values()), found
    assert not {v.invariant for v in simulate(card_outage(1, 100.0)).violations}


def test_random_seeds_find_it_too() -> None:
    """The random short seeds with crashes rarely queue an advice a reversal meets (a
    stand-in needs both issuers out): one of the first 40 does."""
    with plants.reversal_keeps_standin_advice():
        seed = next((s for s in range(1, 41)
                     if "reversed-standin-advised" in {
                         v.invariant for v in simulate(short(s, crashes=True)).violations}),
                    None)
    assert seed is not None
    assert simulate(short(seed, crashes=True)).violations == []


def test_a_reversal_past_the_resolver_bound_is_taken_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A blackholed card primary and a crash fill a resolver bounded at 50 (as
    tests/sim/test_failover_sim.py's refill test): an acquirer reversal accepted then
    waits in the journal (reopened). The refill read it back as unfinished but skipped it,
    as "resolved since the journal was read", because the index holds its approval: it
    stayed approved until the next restart (reversal-undone, seed 5). Now it is taken
    back (resolver.refill knows a reopened payment)."""
    from channels.faults import Fault
    from switch.sim.schedule import Schedule
    from switch.sim.simulation import SimOptions

    monkeypatch.setattr("switch.sim.resolution.MAX_QUEUE", 50)
    faults = (Fault(kind="blackhole", endpoint="card-primary", start_s=2.0, duration_s=4.0),)
    result = simulate(SimOptions(seed=5, duration_s=20.0, rate=200.0,
                                 schedule=Schedule(20.0, faults, ((6.5, 1.0, 0.0),))))
    assert "reversal-undone" not in {v.invariant for v in result.violations}


def test_finds_start_up_queueing_the_advice_of_a_reversed_stand_in_approval() -> None:
    """Both card endpoints down 1-9 s, the switch killed at 6 s: stand-in approvals
    reversed before the crash must not have their advice queued again at start-up
    (reader.recovered_from skips a reopened one). Planted back, the issuer hears of them
    once it is up."""
    from channels.faults import Fault
    from switch.sim.schedule import Schedule
    from switch.sim.simulation import SimOptions

    faults = tuple(Fault(kind="down", endpoint=endpoint, start_s=1.0, duration_s=8.0)
                   for endpoint in ("card-primary", "card-secondary"))
    options = SimOptions(seed=1, duration_s=10.0, rate=100.0, intensity=0.0,
                         schedule=Schedule(10.0, faults, ((6.0, 0.5, 0.0),)))
    with plants.recovery_requeues_reversed_standin_advice():
        found = {v.invariant for v in simulate(options).violations}
    assert "reversed-standin-advised" in found
    assert simulate(options).violations == []


def test_finds_a_repeat_after_a_restart_racing_the_resolver() -> None:
    """Both card issuers down 1-7 s, so the reversals accepted meanwhile wait with the
    resolver (reopened in the journal); the switch killed at 5 s; after the restart,
    recovery hands them to the resolver, and a 3 s disk stall from 6.9 s holds each of
    its ``reversed`` finals uncommitted (the index still answers the approval). The
    acquirer's own repeats (0401) in that window were claimed as new reversals: their
    intents journaled after those finals, and handed over again once the resolver was
    done, each was reversed a second time (two finals: terminal-once, booked-twice).
    Now a repeat of an approval the resolver holds is the one under way: 00, nothing
    journaled or handed over again."""
    from channels.faults import Fault
    from switch.sim.schedule import DiskFault, Schedule
    from switch.sim.simulation import SimOptions

    faults = tuple(Fault(kind="down", endpoint=endpoint, start_s=1.0, duration_s=6.0)
                   for endpoint in ("card-primary", "card-secondary"))
    options = SimOptions(seed=1, duration_s=12.0, rate=100.0, intensity=0.0,
                         reversal_share=0.05,
                         schedule=Schedule(12.0, faults, ((5.0, 0.5, 0.0),),
                                           (DiskFault("stall", 6.9, 3.0),)))
    result = simulate(options)
    assert result.violations == [], [str(v) for v in result.violations[:3]]
    assert result.counters["reversals_accepted"] > 100
