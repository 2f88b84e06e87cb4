"""Rate shapes and schedules: when each request of an open-loop run is due.

A rate shape (:data:`RateShape`) is a pure function of time: ``rate_at(t)`` and its
integral ``cumulative(t)``; request *g* of a run is due when ``cumulative(t)`` reaches *g*.
Several generator processes split one shape exactly: process *p* of *P* sends the global
requests *p, p+P, p+2P, ...* (see :class:`Schedule`). The generator that sends on these
schedules is loadtests/harness/loadgen.py.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

# --- rate shapes --------------------------------------------------------------------------

Rate = Annotated[float, msgspec.Meta(ge=0, le=10_000_000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
Offset = Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)]


class _ShapeBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    def rate_at(self, t: float) -> float:
        raise NotImplementedError

    def cumulative(self, t: float) -> float:
        """Requests due in [0, t]: the integral of :meth:`rate_at`."""
        raise NotImplementedError

    def natural_duration(self) -> float | None:
        """How long the shape lasts when no duration is given (None: open-ended)."""
        return None


class FixedRate(_ShapeBase, frozen=True, tag="fixed"):
    rate: Rate

    def rate_at(self, t: float) -> float:
        return self.rate if t >= 0 else 0.0

    def cumulative(self, t: float) -> float:
        return self.rate * max(t, 0.0)


class StepsRate(_ShapeBase, frozen=True, tag="steps"):
    """``rates[0]`` for ``step_s``, then ``rates[1]``, ...; the last rate holds after."""

    rates: Annotated[list[Rate], msgspec.Meta(min_length=1, max_length=10_000)]
    step_s: Seconds

    def rate_at(self, t: float) -> float:
        if t < 0:
            return 0.0
        return self.rates[min(int(t // self.step_s), len(self.rates) - 1)]

    def cumulative(self, t: float) -> float:
        if t <= 0:
            return 0.0
        full = min(int(t // self.step_s), len(self.rates) - 1)
        done = sum(self.rates[:full]) * self.step_s
        return done + self.rates[full] * (t - full * self.step_s)

    def natural_duration(self) -> float:
        return len(self.rates) * self.step_s


class RampRate(_ShapeBase, frozen=True, tag="ramp"):
    """Linear from ``from_rate`` to ``to_rate`` over ``ramp_s``, then ``to_rate``."""

    from_rate: Rate
    to_rate: Rate
    ramp_s: Seconds

    def rate_at(self, t: float) -> float:
        if t < 0:
            return 0.0
        if t >= self.ramp_s:
            return self.to_rate
        return self.from_rate + (self.to_rate - self.from_rate) * t / self.ramp_s

    def cumulative(self, t: float) -> float:
        if t <= 0:
            return 0.0
        a, b, r = self.from_rate, self.to_rate, self.ramp_s
        if t <= r:
            return a * t + (b - a) * t * t / (2 * r)
        return (a + b) * r / 2 + b * (t - r)

    def natural_duration(self) -> float:
        return self.ramp_s


class SpikeRate(_ShapeBase, frozen=True, tag="spike"):
    """``base_rate``, except ``spike_rate`` during [``at_s``, ``at_s + spike_s``)."""

    base_rate: Rate
    spike_rate: Rate
    at_s: Offset
    spike_s: Seconds

    def rate_at(self, t: float) -> float:
        if t < 0:
            return 0.0
        return self.spike_rate if self.at_s <= t < self.at_s + self.spike_s else self.base_rate

    def cumulative(self, t: float) -> float:
        if t <= 0:
            return 0.0
        inside = min(max(t - self.at_s, 0.0), self.spike_s)
        return self.base_rate * t + (self.spike_rate - self.base_rate) * inside

    def natural_duration(self) -> float:
        return 2 * self.at_s + self.spike_s


class DiurnalRate(_ShapeBase, frozen=True, tag="diurnal"):
    """A day compressed into ``period_s``: mean ``average_rate``, peak ``peak_ratio`` × it.

    rate(t) = average · (trough + (peak − trough) · ((1 + cos θ) / 2)²), θ = 2π(t − peak_at)/P.
    ((1 + cos θ)/2)² averages 3/8 over a period, so trough = (1 − 3·peak/8) / (5/8) keeps
    the mean at ``average_rate``: with the default peak 2.5×, night runs at 0.1×. The
    integral is closed-form, so the schedule is exact.
    """

    average_rate: Rate
    period_s: Seconds
    peak_ratio: Annotated[float, msgspec.Meta(ge=1, le=2.6)] = 2.5
    #: When the peak falls; default mid-period (the run starts at night).
    peak_at_s: Offset | None = None

    @property
    def trough_ratio(self) -> float:
        return (1 - 3 * self.peak_ratio / 8) / (5 / 8)

    def _theta(self, t: float) -> float:
        peak_at = self.period_s / 2 if self.peak_at_s is None else self.peak_at_s
        return 2 * math.pi * (t - peak_at) / self.period_s

    def rate_at(self, t: float) -> float:
        if t < 0:
            return 0.0
        g = ((1 + math.cos(self._theta(t))) / 2) ** 2
        trough = self.trough_ratio
        return self.average_rate * (trough + (self.peak_ratio - trough) * g)

    def cumulative(self, t: float) -> float:
        if t <= 0:
            return 0.0
        # ((1 + cos θ)/2)² = 3/8 + cos θ / 2 + cos 2θ / 8; integrate over t (dθ/dt = 2π/P).
        k = self.period_s / (2 * math.pi)
        th1, th0 = self._theta(t), self._theta(0.0)
        g_int = 3 * t / 8 + k * (math.sin(th1) - math.sin(th0)) / 2
        g_int += k * (math.sin(2 * th1) - math.sin(2 * th0)) / 16
        trough = self.trough_ratio
        return self.average_rate * (trough * t + (self.peak_ratio - trough) * g_int)

    def natural_duration(self) -> float:
        return self.period_s


RateShape = FixedRate | StepsRate | RampRate | SpikeRate | DiurnalRate
SHAPE_KINDS = ("fixed", "steps", "ramp", "spike", "diurnal")


class ShapeError(ValueError):
    """A rate shape that cannot be used; the message names the key."""


def shape_from_dict(raw: object, source: str = "<shape>") -> RateShape:
    from switch.fielderrors import describe_validation_error

    try:
        shape: RateShape = msgspec.convert(raw, RateShape)
        return shape
    except msgspec.ValidationError as exc:
        raise ShapeError(f"{source}: {describe_validation_error(exc)}") from exc


def parse_inline_shape(text: str) -> RateShape:
    """``kind=spike,base_rate=500,spike_rate=1500,at_s=10,spike_s=5``; lists as ``a/b/c``."""
    raw: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ShapeError(f"--shape: expected key=value, got {part!r}")
        key = key.strip()
        value = value.strip()
        if key == "kind":
            raw[key] = value
        elif "/" in value or key == "rates":
            try:
                raw[key] = [float(v) for v in value.split("/")]
            except ValueError:
                raise ShapeError(f"--shape: {key}: not a list of numbers: {value!r}") from None
        else:
            try:
                raw[key] = float(value)
            except ValueError:
                raise ShapeError(f"--shape: {key}: not a number: {value!r}") from None
    if "kind" not in raw:
        raise ShapeError(f"--shape: kind: required, one of {', '.join(SHAPE_KINDS)}")
    return shape_from_dict(raw, "--shape")


class Schedule:
    """Intended send times of one generator's share of a shape.

    Global request *g* is due when ``cumulative(t) == g``. This generator sends
    ``g = offset, offset + stride, ...`` while ``g < total``. The inverse of the cumulative
    is found on a 1 ms grid (the cell whose end first passes ``g``, searched forward) and
    by interpolating linearly inside the cell: exact for piecewise-constant and linear
    rates, within 1 ms at a step's edge.
    """

    __slots__ = (
        "_c0", "_c1", "_cell", "_cum", "_grid", "_t0", "_t1", "count", "end_s", "next_g",
        "stride", "total",
    )

    def __init__(
        self,
        shape: RateShape,
        duration_s: float,
        stride: int = 1,
        offset: int = 0,
        grid_s: float = 0.001,
    ) -> None:
        assert duration_s > 0 and stride >= 1 and 0 <= offset < stride
        self._cum = shape.cumulative
        self.end_s = duration_s
        self.total = int(shape.cumulative(duration_s) + 1e-6)
        self.stride = stride
        self.next_g = offset
        #: Requests this generator sends in all (its share of ``total``).
        self.count = max(0, (self.total - offset + stride - 1) // stride)
        self._grid = grid_s
        self._cell = 0  # the grid cell [cell·grid, (cell+1)·grid) being walked
        self._t0 = 0.0
        self._c0 = 0.0
        self._t1 = grid_s
        self._c1 = shape.cumulative(grid_s)

    def time_of(self, g: float) -> float:
        """When the cumulative count reaches ``g`` (g must not decrease between calls)."""
        if self._c1 <= g:
            t1 = (self._cell + 2) * self._grid  # no accumulated rounding
            c1 = self._cum(t1)
            if c1 > g and self._t1 <= self.end_s + self._grid:  # the usual: the next cell
                self._cell += 1
                self._t0, self._c0, self._t1, self._c1 = self._t1, self._c1, t1, c1
            else:
                self._move_to(g)
                if self._t0 > self.end_s + self._grid:
                    return math.inf
        span = self._c1 - self._c0
        return self._t0 + (g - self._c0) / span * self._grid

    def _move_to(self, g: float) -> None:
        """Move to the first cell past the current one whose end passes ``g``.

        Galloping, then bisecting: a pause in the shape (a zero-rate step) costs a few
        dozen evaluations, not one per millisecond. Walked cell by cell, a 600 s pause
        blocked the event loop for 0.47 s after a request was queued, and that showed as
        latency, not lag. The cell found, and so every time, is the walk's.
        """
        grid, cum = self._grid, self._cum
        last = int((self.end_s + grid) / grid) + 1  # past it, no time is ever due

        def ends_by(cell: int) -> bool:  # the cumulative at the cell's end is <= g
            return cum((cell + 1) * grid) <= g

        lo = hi = self._cell + 1
        step = 1
        while hi <= last and ends_by(hi):
            lo = hi + 1
            hi = lo + step
            step *= 2
        hi = min(hi, last + 1)
        while lo < hi:
            mid = (lo + hi) // 2
            if ends_by(mid):
                lo = mid + 1
            else:
                hi = mid
        assert lo > self._cell
        self._cell = lo
        self._t0 = lo * grid  # no accumulated rounding
        self._c0 = cum(self._t0)
        self._t1 = (lo + 1) * grid
        self._c1 = cum(self._t1)

    def take(self) -> float | None:
        """The next intended time (seconds from start), or None when the share is done."""
        g = self.next_g
        if g >= self.total:
            return None
        self.next_g = g + self.stride
        t = self.time_of(g)
        return None if t == math.inf else t
