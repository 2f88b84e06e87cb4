"""More planted bugs, found by the simulator: its blind spots, searched for.

Each plant (tests/sim/plants.py) is a regression a developer could plausibly make in the
real code. Those the checker missed were found once it learned an invariant it did not
check (switch/sim/verify.py): the idempotency index against the journal at the end of a
run, admission slots held only by payments in flight, stand-in exposure within its
per-payment and per-card limits, and a final record that must be terminal. The last
plant is a blind spot the checker cannot close alone (see its test).
"""

from __future__ import annotations

import dataclasses
from typing import Final

import pytest

from channels.faults import Fault
from switch.sim.schedule import Schedule
from switch.sim.simulation import SimOptions, simulate
from tests.sim import plants
from tests.sim.test_simulation import assert_plant_is_the_cause, first_failure


def invariants(options: SimOptions) -> set[str]:
    return {v.invariant for v in simulate(options).violations}


def card_outage(seed: int, rate: float) -> SimOptions:
    """Both card endpoints down from 1 s to 9 s of a 10 s seed: every card payment then
    goes to stand-in. The random short seeds almost never take both down at once (a
    stand-in or two per seed, rarely two on one card), so the stand-in limits are
    exercised here on purpose."""
    faults = tuple(Fault(kind="down", endpoint=endpoint, start_s=1.0, duration_s=8.0)
                   for endpoint in ("card-primary", "card-secondary"))
    return SimOptions(seed=seed, duration_s=10.0, rate=rate, intensity=0.0,
                      schedule=Schedule(10.0, faults, ()))


# --------------------------------------------------------------- found by the old checker

#: (plant, the invariant it breaks, the seeds it is found within, with crashes)
FOUND_BEFORE: Final = [
    ("approved_card_payments_reversed_too", "ack-lost", range(1, 6), False),
    ("recovery_forgets_unknown_payments", "unknown-past-schedule", range(1, 11), True),
    ("unknown_journaled_as_final", "terminal-once", range(1, 6), False),
    ("completed_key_replays_whatever_the_body", "idempotency", range(1, 6), False),
    ("stand_in_tells_the_client_the_network_answer", "ack-lost", range(1, 6), False),
    ("keys_restored_by_payment_id", "idempotency", range(1, 11), True),
]


@pytest.mark.parametrize(("plant", "invariant", "seeds", "crashes"), FOUND_BEFORE,
                         ids=[row[0] for row in FOUND_BEFORE])
def test_finds_the_plant(plant: str, invariant: str, seeds: range, crashes: bool) -> None:
    seed = first_failure(getattr(plants, plant), invariant, seeds, crashes=crashes)
    assert_plant_is_the_cause(seed, invariant, crashes=crashes)














# --------------------------------------------------------------- missed by the old checker


def test_finds_a_resolved_unknown_still_unknown_to_a_retry() -> None:
    """The clients never ask about a key again once answered, so what a retry would hear
    is checked at the end: the live index against the journal."""
    seed = first_failure(plants.resolved_unknown_stays_unknown_in_the_index, "idempotency",
                         range(1, 6))
    assert_plant_is_the_cause(seed, "idempotency")


def test_finds_an_admission_slot_kept_after_a_decline() -> None:
    """512 slots per endpoint: a short seed's declines never exhaust them, so nothing was
    ever shed; the slots taken must equal the payments in flight holding one."""
    seed = first_failure(plants.admission_slot_kept_after_a_decline, "bound", range(1, 6))
    assert_plant_is_the_cause(seed, "bound")


def test_finds_stand_in_past_the_per_payment_limit() -> None:
    with plants.stand_in_past_the_per_payment_limit():
        assert "bound" in invariants(card_outage(1, 100.0))
    assert "bound" not in invariants(card_outage(1, 100.0))


def test_finds_stand_in_past_the_per_card_limit() -> None:
    """Without acquirer reversals: each one withdraws a queued advice and releases its
    exposure, so a card's total reaches the limit later (seed 1 then stays under it)."""
    options = dataclasses.replace(card_outage(1, 200.0), reversal_share=0.0)
    with plants.stand_in_past_the_per_card_limit():
        assert "bound" in invariants(options)
    assert "bound" not in invariants(options)


# --------------------------------------------------------------- duplicates in flight


def test_finds_a_duplicate_in_flight_answered_94() -> None:
    # Found since the simulated clients send some requests again while the first is in
    # flight (simulation.py DUPLICATE_IN_FLIGHT); before, the duplicate waiters were
    # never exercised and this plant passed every seed.
    seed = first_failure(plants.duplicate_in_flight_answered_94, "idempotency", range(1, 4))
    assert_plant_is_the_cause(seed, "idempotency")
