"""A window of ``max_keys`` keys forgets the oldest answered key at its bound: a retry of
it after that is a new payment, as idempotency.py's contract says. The simulator tells
such a key from a lost one by the index's ``on_forget`` report, and checks each report
against the configured bound and retention, so a window that forgets early still fails.

Found by a swarm campaign at 1,000 payments/s (seeds 6001..6150, 20 s at intensity 30,
``--vary-config``): with a 5,000-key window, the clients' retries after a crash or a full
disk outran it, and 24 seeds in 150 were reported ``idempotency`` and ``booked-twice``
for keys the switch had forgotten by its own rule. With a 2M-key window, none were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import pytest

from switch.payment.idempotency import IdempotencyIndex
from switch.serve.config import SwitchConfig
from switch.sim.options import sim_config
from switch.sim.schedule import Schedule
from switch.sim.simulation import SimOptions, simulate


def small_window(max_keys: int) -> SwitchConfig:
    cfg = sim_config()
    return msgspec.structs.replace(
        cfg, idempotency=msgspec.structs.replace(cfg.idempotency, max_keys=max_keys))


def retry_storm(seed: int, max_keys: int) -> SimOptions:
    """1,000 payments/s for 8 s, the switch down from 2 s to 5 s: every client whose
    payment met the outage retries at once after the restart, past a 1,500-key window."""
    return SimOptions(seed=seed, duration_s=8.0, rate=1000.0, intensity=0.0,
                      schedule=Schedule(8.0, (), ((2.0, 3.0, 0.0),)),
                      config=small_window(max_keys))


def test_keys_the_window_forgot_by_its_rule_are_not_reported() -> None:
    result = simulate(retry_storm(3, 1_500))
    assert result.counters.get("payments_forgotten_by_window", 0) > 1_000, result.counters
    assert not result.violations, result.violations[:3]


def test_a_retry_of_a_forgotten_key_is_a_new_payment_and_counted() -> None:
    # The same run with a window that holds every key: nothing forgotten, nothing reused.
    result = simulate(retry_storm(3, 200_000))
    assert "payments_forgotten_by_window" not in result.counters
    assert not result.violations, result.violations[:3]


@contextmanager
def window_forgets_at_half_its_bound() -> Iterator[None]:
    """The index evicts once half its ``max_keys`` are held (an off-by-a-factor bound)."""
    evict = IdempotencyIndex._evict

    def early(self: IdempotencyIndex, now: float) -> None:
        bound = self.max_keys
        self.max_keys = bound // 2
        try:
            evict(self, now)
        finally:
            self.max_keys = bound

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IdempotencyIndex, "_evict", early)
        yield


def test_finds_a_window_that_forgets_before_its_bound() -> None:
    with window_forgets_at_half_its_bound():
        result = simulate(retry_storm(3, 1_500))
    found = [v for v in result.violations if v.invariant == "idempotency"]
    assert found and "within retention" in found[0].detail, result.violations[:3]
