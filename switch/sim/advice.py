"""The stand-in advice sender (StandIn.run) on the event queue.

The real store-and-forward queue (:class:`~switch.payment.standin.StandIn`'s, filled by
the core's ``queue_advice`` and by start-up recovery) is delivered as the anyio task does
it: the oldest advice first, through an endpoint whose breaker admits it, journaled once
the issuer took it; otherwise rotate and back off (0.05 s doubling to 2 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from switch.journal.records import to_row
from switch.payment.standin import NOT_TAKEN
from switch.sim.networks import World
from switch.sim.ports import Boot

#: The advice sender's event kind (the simulation dispatches it here).
ADVICE: Final = 200


class Host(Protocol):
    """What the advice sender needs of the simulation (switch/sim/simulation.py)."""

    now: float
    world: World
    counters: dict[str, int]

    def push(self, at: float, kind: int, a: Any = None, b: Any = None) -> None: ...
    def note(self, about: str | tuple[str, ...] | None, *fields: object) -> None: ...
    def wall_us(self) -> int: ...
    def journal_then(self, boot: Boot, row: Any, then: Callable[[], None]) -> None: ...


def arm_advice(host: Host, boot: Boot, delay: float) -> None:
    if not boot.advice_armed:
        boot.advice_armed = True
        host.push(host.now + delay, ADVICE, boot)


def send_advice(host: Host, boot: Boot) -> None:
    """Deliver the oldest advice, or rotate and back off."""
    boot.advice_armed = False
    queue = boot.standin._queue  # the real store-and-forward queue (no sans-IO seam)
    if not queue or boot.failed:
        arm_advice(host, boot, 0.5)
        return
    advice = queue[0]
    for endpoint in advice.endpoints:
        if not boot.router.health.breakers[endpoint].available(host.now):
            continue
        plan = host.world.plan(endpoint, host.now, advice.payment)
        if plan.action != "respond" or plan.technical_error or plan.malformed:
            continue
        code = host.world.advise(advice.payment, advice.result.channel_ref)
        if code in NOT_TAKEN:
            continue  # the issuer did not take it: it waits, as StandIn._deliver has it
        queue.popleft()
        pid = advice.payment.payment_id
        host.counters["advices"] += 1
        host.note(pid, "advice", pid, "via", endpoint, code)
        # The real StandIn decides what the answer means (exposure released, a refusal
        # kept as the record's reason): only the write is the simulator's.
        host.journal_then(boot, to_row(boot.standin.answered(advice, code)), lambda: None)
        boot.advice_delay = 0.05
        arm_advice(host, boot, 0.0)
        return
    queue.rotate(-1)
    arm_advice(host, boot, boot.advice_delay)
    boot.advice_delay = min(boot.advice_delay * 2, 2.0)
