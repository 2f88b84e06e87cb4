"""The resolution-schedule check (verify.check_schedule) against start-up recovery's rule.

Recovery counts the first delay of a payment it takes over from as late as the network
could first have seen it: its receipt plus the payment deadline (resolver.py's
``_candidate``), and from the restart at the latest. The check counted from the payment's
unknown: with a deadline past a channel's slack, a QR payment recovered by the rule
was reported ``unknown-past-schedule`` (seed 25, 60 simulated s at intensity 20, a 60 s
deadline: asked at its restart + 90 s, by the rule; reported 43.7 s after its first
delay, of 38 s allowed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import msgspec
import pytest

from channels.faults import Fault
from switch.payment import resolver as resolver_module
from switch.serve.config import SwitchConfig
from switch.sim.options import SimResult, Violation, sim_config
from switch.sim.schedule import Schedule
from switch.sim.simulation import SimOptions, simulate
from switch.sim.verify import check_schedule

replace = msgspec.structs.replace
QR = sim_config().resolution.qr  # first delay 90 s, max delay 30 s


def config(deadline_s: float, qr_max_delay_s: float | None = None) -> SwitchConfig:
    """The simulator's configuration with an operator's payment deadline (and QR delay)."""
    cfg = sim_config()
    resolution = cfg.resolution
    if qr_max_delay_s is not None:
        resolution = replace(resolution, qr=replace(resolution.qr, max_delay_s=qr_max_delay_s))
    return replace(cfg, resolution=resolution,
                   resilience=replace(cfg.resilience, payment_deadline_s=deadline_s))


def run(options: SimOptions, cfg: SwitchConfig) -> SimResult:
    options.config = cfg
    return simulate(options)


def late(result: SimResult) -> list[Violation]:
    return [v for v in result.violations if v.invariant == "unknown-past-schedule"]


#: QR blackholed for 6 s (its payments go unknown, first inquiry due 90 s on), then a
#: crash 45 s in, the wall clock 300 s ahead at the restart: each unknown is recovered
#: younger than a long deadline, so recovery waits the whole first delay from the restart.
QR_OUTAGE_THEN_CRASH = Schedule(
    10.0, (Fault(kind="blackhole", endpoint="qr", start_s=2.0, duration_s=6.0),),
    ((45.0, 2.0, 300.0),))


@pytest.mark.parametrize(("deadline_s", "qr_max_delay_s"), [(60.0, None), (30.0, 10.0)])
def test_a_payment_recovered_by_the_rule_is_on_schedule(
        deadline_s: float, qr_max_delay_s: float | None) -> None:
    """Before the check knew the rule, 75 QR payments each time "late": 41.6 s of 38 s
    allowed with a 60 s deadline; 27.0 s of 18 s with a 30 s deadline where QR's max
    delay is 10 s (an operator's setting: at 20 s, none)."""
    result = run(SimOptions(seed=5, duration_s=10.0, rate=100.0, schedule=QR_OUTAGE_THEN_CRASH),
                 config(deadline_s, qr_max_delay_s))
    assert result.counters["crashes"] == 1 and result.counters["resolved"] > 50
    assert not result.violations, result.violations[:3]


def test_the_seed_that_showed_it_holds_every_invariant() -> None:
    result = run(SimOptions(seed=25, duration_s=60.0, rate=100.0, intensity=20.0),
                 config(60.0))
    assert result.counters["crashes"] >= 2
    assert not result.violations, result.violations[:3]


@contextmanager
def recovery_forgets_ages() -> Iterator[None]:
    """Recovery hands every payment over as if just made: each restart waits its whole
    first delay again (what ``elapsed_s`` is for), however long ago it was sent."""
    original = resolver_module._candidate

    def candidate(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        return None if found is None else (*found[:4], 0.0, found[5])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "_candidate", candidate)
        yield


def test_a_recovered_payment_truly_late_is_still_found() -> None:
    """QR blackholed until 170 s, a crash at 160 s: the unknowns are recovered 150 s and
    more after their receipt, past deadline + first delay, so the rule asks at once (and
    on schedule after the outage). Planted, they wait 90 s more: late even by the rule's
    allowance, with the same 60 s deadline that allowance is made of."""
    schedule = Schedule(
        10.0, (Fault(kind="blackhole", endpoint="qr", start_s=2.0, duration_s=168.0),),
        ((160.0, 2.0, 300.0),))
    options = SimOptions(seed=5, duration_s=10.0, rate=100.0, schedule=schedule)
    result = run(options, config(60.0))
    assert result.counters["resolved"] > 50 and not result.violations, result.violations[:3]
    with recovery_forgets_ages():
        planted = run(options, config(60.0))
    assert len(late(planted)) > 50, planted.violations[:3]


# ------------------------------------------------------- the check alone, on seed 25's numbers


def found(now: float, since: float, restarts: list[float], sent_within_s: float) -> bool:
    violations: list[str] = []
    check_schedule("P1-304", now, since, QR, None, cast(Any, None), restarts,
                   lambda invariant, _s, _d: violations.append(invariant), -float("inf"),
                   sent_within_s)
    return violations == ["unknown-past-schedule"]


def test_the_allowance_is_the_recovery_rule_and_no_more() -> None:
    """P1-304 of seed 25: unknown at 7.03 s, recovered at 50.78 s, so asked at 140.78 s
    (restart + 90 s). The schedule here: max delay 30 s + a 5 s timeout + 5 s slack."""
    restarts = [24.46, 50.78]
    assert not found(140.78, 7.03, restarts, 60.0)
    assert found(140.78, 7.03, restarts, 3.0)  # a 3 s deadline asks at 7.03 + 90 s
    assert not found(140.78 + 39.9, 7.03, restarts, 60.0)
    assert found(140.78 + 40.1, 7.03, restarts, 60.0)
    # Recovered older than deadline + first delay: asked at 7.03 + 60 + 90 s, not later.
    assert not found(157.03 + 39.9, 7.03, [100.0], 60.0)
    assert found(157.03 + 40.1, 7.03, [100.0], 60.0)
    # Made since the latest restart: no restart's allowance, whatever the deadline.
    assert not found(60.0 + 90.0 + 39.9, 60.0, restarts, 60.0)
    assert found(60.0 + 90.0 + 40.1, 60.0, restarts, 60.0)
