"""Time for the switch's logic, taken from anyio so a mock clock can drive it.

``now()`` is anyio's monotonic clock: under trio's MockClock it jumps, and a simulated
hour passes in milliseconds. ``wall()`` derives the record timestamp from the same clock,
anchored once at start-up to the real wall clock, so timestamps stay consistent with
elapsed time in simulation too.

``measure()`` is for latency metrics only. On asyncio with uvloop, the loop's clock is
libuv's cached millisecond counter, so every duration read from it is rounded to 1 ms
and sub-millisecond latency buckets would be fiction. There, ``measure()`` reads the
precise process clock; on trio (real or mock) it is anyio's clock, which is precise and
keeps simulated runs self-consistent. Deadlines and windows always use ``now()``.

``anchor()`` is what start-up records so the next start can tell how far the wall clock
stepped across the restart (switch/payment/restarts.py): the wall anchor, and what the
machine's reference clock read at the same moment, with ``boot_id()`` naming the machine
boot that reference belongs to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Final

import anyio
import sniffio


def backend_clock() -> Callable[[], float]:
    """The running backend's own clock function: what ``anyio.current_time()`` returns.

    Bound once, because ``anyio.current_time()`` looks the backend up on every call
    (sniffio and a registry lookup: measured ~1-2 us, five times per payment).
    """
    library = sniffio.current_async_library()
    if library == "asyncio":
        return asyncio.get_running_loop().time
    if library == "trio":
        import trio

        return trio.current_time  # honours trio's MockClock
    return anyio.current_time


def timer_deadline(deadline: float) -> float:
    """``deadline`` rounded up to a whole millisecond, for a cancel scope that will expire.

    Why: uvloop's timers and clock have whole-millisecond resolution. A timer due at
    5.0013 fires at 5.001; anyio sees its deadline not yet passed and re-arms it for the
    0.3 ms left, which uvloop rounds to 0 and fires again at once, and again, until the
    cached clock ticks: about 200 wake-ups per expired timeout, measured at 340 us of CPU
    per timeout instead of 100 (tests/test_clock.py). A deadline on a whole millisecond
    fires once. Costs at most 1 ms of lateness, never earliness.
    """
    if math.isinf(deadline):
        return deadline
    # In milliseconds, divided back the way uvloop computes loop.time() (ms / 1000), so
    # the two floats compare equal; the 1e-6 keeps an already whole millisecond as it is.
    return math.ceil(deadline * 1000.0 - 1e-6) / 1000.0


#: The reference clock across restarts: CLOCK_MONOTONIC, not CLOCK_BOOTTIME. Both survive
#: a process restart within one machine boot; MONOTONIC is the clock the event loop's own
#: runs on (asyncio's time.monotonic, libuv's uv_hrtime, trio's perf_counter), so a run's
#: wall stamps and the reference advance together. A suspend (which MONOTONIC skips and
#: BOOTTIME counts) then makes a payment look younger than it is -- the first inquiry
#: comes later, by at most the channel's first delay -- never older: with BOOTTIME a
#: suspend during a run made every later stamp look older by its length (asked early).
REFERENCE_CLOCK: Final = time.CLOCK_MONOTONIC
#: The machine boot's id (Linux); another id means the reference clock started afresh.
BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID_PATH) -> str:
    """This machine boot's id ("" where there is none to read: no step is then known
    across a restart, and ages fall back to the wall clock)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _real_time_loop() -> bool:
    """The loop's clock runs at the real monotonic clock's rate (not trio's MockClock,
    whose jumps the reference clock would never see)."""
    if sniffio.current_async_library() != "trio":
        return True
    import trio
    import trio.testing

    return not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


class Clock:
    __slots__ = ("_anchor_monotonic", "_anchor_reference", "_anchor_wall", "measure", "now")

    def __init__(self, wall_epoch: float | None = None) -> None:
        # Must be created inside a running event loop: it binds the loop's clock.
        self.now: Callable[[], float] = backend_clock()
        self._anchor_monotonic = self.now()
        self._anchor_wall = time.time() if wall_epoch is None else wall_epoch  # wall anchor
        # Read with the wall anchor, so the pair describes one moment (None: this clock's
        # wall is not the machine's, a given epoch or a mock clock: no reference to it).
        self._anchor_reference = (time.clock_gettime(REFERENCE_CLOCK)
                                  if wall_epoch is None and _real_time_loop() else None)
        precise = sniffio.current_async_library() == "asyncio"
        # bench-grade clock for latency metrics only; see the module docstring
        self.measure: Callable[[], float] = time.perf_counter if precise else self.now

    def anchor(self) -> tuple[float | None, float]:
        """(reference clock, wall clock) at this run's start: seconds, read together. The
        reference is None when this clock's wall is not the machine's (a mock clock)."""
        return self._anchor_reference, self._anchor_wall

    def wall_seconds(self) -> float:
        return self._anchor_wall + (self.now() - self._anchor_monotonic)

    def wall(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall_seconds(), tz=dt.UTC)

    def wall_us(self) -> int:
        return int(self.wall_seconds() * 1_000_000)
