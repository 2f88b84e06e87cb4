"""Time for the switch's logic, taken from anyio so a mock clock can drive it.

``now()`` is anyio's monotonic clock: under trio's MockClock it jumps, and a simulated
hour passes in milliseconds. ``wall()`` derives the record timestamp from the same clock,
anchored once at start-up to the real wall clock, so timestamps stay consistent with
elapsed time in simulation too.
"""

from __future__ import annotations

import datetime as dt
import time

import anyio


class Clock:
    __slots__ = ("_anchor_monotonic", "_anchor_wall")

    def __init__(self, wall_epoch: float | None = None) -> None:
        # Must be created inside a running event loop: it reads anyio's clock.
        self._anchor_monotonic = anyio.current_time()
        self._anchor_wall = time.time() if wall_epoch is None else wall_epoch  # wall anchor

    def now(self) -> float:
        return anyio.current_time()

    def wall_seconds(self) -> float:
        return self._anchor_wall + (anyio.current_time() - self._anchor_monotonic)

    def wall(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall_seconds(), tz=dt.UTC)

    def wall_us(self) -> int:
        return int(self.wall_seconds() * 1_000_000)
