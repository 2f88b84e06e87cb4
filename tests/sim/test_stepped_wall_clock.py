"""A wall clock stepped forward at a restart asks no QR scheme before its 90 s.

The switch's wall clock is anchored once per start; a restart's new anchor may have
jumped. Recovery aged an unfinished payment on the wall clock alone, so a forward step
made it look older and the first check-status went out seconds after the payment in true
time (seeds 140 and 150 of a 10 s, intensity-40 campaign: +484 s). The switch now records
each start's anchor and subtracts the steps (switch/payment/restarts.py); the simulator's
invariant counts an inquiry early in true time alone.

The ages here are also measured by the test itself, at the network, in true time: the
check holds without trusting the invariant it tightens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from channels.faults import Fault
from switch.payment import resolver
from switch.sim.networks import World
from switch.sim.schedule import DiskFault, Schedule
from switch.sim.simulation import SimOptions, simulate

QR_FLOOR_S = 90.0


def qr_blackhole(seed: int, crashes: tuple[tuple[float, float, float], ...],
                 disk: tuple[DiskFault, ...] = ()) -> SimOptions:
    """The QR network swallows requests from 1 s to 4 s: every QR payment sent then is
    unknown and must wait 90 s (true time) for its check-status. ``crashes``: (at, down,
    wall-clock step at the restart)."""
    faults = (Fault(kind="blackhole", endpoint="qr", start_s=1.0, duration_s=3.0),)
    return SimOptions(seed=seed, duration_s=10.0, rate=100.0, intensity=0.0,
                      schedule=Schedule(10.0, faults, crashes, disk))


@contextmanager
def qr_inquiry_ages() -> Iterator[list[float]]:
    """Every QR check-status's age at the network: true time since the network first
    saw the payment (the same reading the network's floor is about)."""
    ages: list[float] = []
    original = World.resolve

    def resolve(self: World, endpoint: str, payment: Any, wall: Any, stan: Any,
                now: float) -> Any:
        sent = self._first_sent.get(payment.payment_id)
        if self.endpoints[endpoint].channel == "qr" and sent is not None:
            ages.append(now - sent)
        return original(self, endpoint, payment, wall, stan, now=now)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(World, "resolve", resolve)
        yield ages


def run(options: SimOptions) -> tuple[Any, list[float]]:
    with qr_inquiry_ages() as ages:
        result = simulate(options)
    return result, ages


@pytest.mark.parametrize("crashes", [
    ((6.0, 1.0, 484.0),),  # seed 140's step, at a restart 2-5 s after the payments
    ((5.0, 1.0, 300.0), (8.0, 0.5, 200.0)),  # two forward steps, both before the 90 s
    ((5.0, 1.0, 300.0), (8.0, 0.5, -120.0)),  # forward, then back
], ids=["one-forward-step", "two-forward-steps", "forward-then-back"])
def test_a_wall_clock_stepped_forward_at_a_restart_asks_no_qr_scheme_early(
        crashes: tuple[tuple[float, float, float], ...]) -> None:
    result, ages = run(qr_blackhole(4, crashes))
    assert result.counters["crashes"] == len(crashes)
    assert len(ages) > 20, "the blackhole's QR payments were never checked"
    assert min(ages) >= QR_FLOOR_S - 1e-6, (
        f"a QR check-status {min(ages):.3f} s after its payment in true time")
    assert result.violations == [], [str(v) for v in result.violations[:3]]


@contextmanager
def recovery_ages_on_the_wall_clock() -> Iterator[None]:
    """Planted: recovery and refills age unfinished payments on the wall clock alone,
    ignoring the recorded steps (the code before restarts.py)."""
    original = resolver._candidate

    def candidate(unfinished: Any, router: Any, resolve_endpoint: Any, wall_us: int,
                  ages: Any, sent_within_s: float) -> Any:
        return original(unfinished, router, resolve_endpoint, wall_us, None, sent_within_s)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver, "_candidate", candidate)
        yield


def test_the_invariant_finds_ages_read_on_a_stepped_wall_clock() -> None:
    """The tightened invariant fails when the steps are ignored: early in true time is
    early, whatever the switch's wall clock said."""
    with recovery_ages_on_the_wall_clock():
        result, ages = run(qr_blackhole(4, ((6.0, 1.0, 484.0),)))
    assert min(ages) < QR_FLOOR_S
    assert "inquiry-too-early" in {v.invariant for v in result.violations}


def test_a_payment_sent_late_by_a_disk_stall_is_asked_90_s_after_the_send() -> None:
    """The network counts from when it first saw the payment: a journal stall holds the
    intent's commit, so the send, seconds after the switch received it. Recovery counted
    the first delay from the receipt: 87.1 s after the send (seed 140 of the 10 s,
    intensity-40 campaign, a 2.9 s stall; the old invariant passed it, the switch's own
    clock saying 90). It counts from the latest the core may send: the payment deadline."""
    stall = (DiskFault("stall", 1.5, 2.0),)
    result, ages = run(qr_blackhole(5, ((6.0, 1.0, 0.0),), stall))
    assert result.counters["crashes"] == 1 and len(ages) > 20
    assert min(ages) >= QR_FLOOR_S - 1e-6, (
        f"a QR check-status {min(ages):.3f} s after its payment in true time")
    assert result.violations == [], [str(v) for v in result.violations[:3]]
