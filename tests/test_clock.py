"""The event loop's timers: a deadline on a whole millisecond expires once on uvloop."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import pytest
from anyio._backends import _asyncio as anyio_asyncio

from switch.clock import timer_deadline


def test_deadlines_round_up_to_a_whole_millisecond() -> None:
    assert timer_deadline(5.0013) == 5002 / 1000
    assert timer_deadline(5002 / 1000) == 5002 / 1000  # already whole: unchanged
    assert timer_deadline(0.0) == 0.0
    assert timer_deadline(math.inf) == math.inf
    for deadline in (0.1234567, 17.0001, 123456.7891):
        rounded = timer_deadline(deadline)
        assert deadline <= rounded < deadline + 0.001


def _expiries(monkeypatch: pytest.MonkeyPatch, deadline_of: Callable[[float], float]) -> int:
    """How often anyio's timeout callback runs for 20 expiring cancel scopes on uvloop."""
    calls = 0
    original = anyio_asyncio.CancelScope._timeout

    def counting(self: anyio_asyncio.CancelScope) -> None:
        nonlocal calls
        calls += 1
        original(self)

    monkeypatch.setattr(anyio_asyncio.CancelScope, "_timeout", counting)

    async def main() -> None:
        never = anyio.Event()
        for i in range(20):
            with anyio.CancelScope(deadline=deadline_of(anyio.current_time() + 0.0013 + i * 1e-4)):
                await never.wait()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return calls


def test_a_sub_millisecond_deadline_spins_uvloop_and_a_whole_one_does_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The control shows the bug timer_deadline() exists for: if uvloop ever stops
    # spinning on sub-millisecond remainders, this fails and the rounding can go. How
    # often a remainder spins depends on how much CPU the loop gets (a quiet machine:
    # over 10 per scope; 3 pytest workers on 2 cores: 7.6), so the bar sits at twice the
    # rounded deadlines' bound, well clear of both.
    assert _expiries(monkeypatch, lambda deadline: deadline) > 20 * 4
    assert _expiries(monkeypatch, timer_deadline) <= 20 * 2
