"""Rate shapes are pure functions of time; schedules and generators follow them."""

from __future__ import annotations

import itertools
import math
from typing import Any

import anyio
import anyio.abc
import pytest

from loadtests.harness.loadgen import Interval, OpenLoopGenerator
from loadtests.harness.shapes import (
    DiurnalRate,
    FixedRate,
    RampRate,
    Schedule,
    ShapeError,
    SpikeRate,
    StepsRate,
    parse_inline_shape,
    shape_from_dict,
)
from loadtests.harness.workload import SharesSpec, SpecWorkload, WorkloadSpec

SHAPES = [
    FixedRate(250),
    StepsRate([100, 300, 0, 50], 2.5),
    RampRate(100, 1100, 8),
    SpikeRate(200, 600, 3, 2),
    DiurnalRate(400, 12),
    DiurnalRate(400, 12, peak_ratio=1.8, peak_at_s=2),
]


def test_rate_curves_at_known_times() -> None:
    assert FixedRate(250).rate_at(17.3) == 250
    steps = StepsRate([100, 300, 0, 50], 2.5)
    assert [steps.rate_at(t) for t in (0, 2.49, 2.5, 5.1, 7.6, 100)] == [
        100, 100, 300, 0, 50, 50
    ]
    ramp = RampRate(100, 1100, 8)
    assert [ramp.rate_at(t) for t in (0, 4, 8, 20)] == [100, 600, 1100, 1100]
    spike = SpikeRate(200, 600, 3, 2)
    assert [spike.rate_at(t) for t in (2.99, 3, 4.99, 5)] == [200, 600, 600, 200]
    for shape in SHAPES:
        assert shape.rate_at(-1) == 0.0 and shape.cumulative(-1) == 0.0


def test_diurnal_peaks_at_two_and_a_half_times_the_average() -> None:
    day = DiurnalRate(1000, 86400)
    rates = [day.rate_at(t) for t in range(0, 86400, 60)]
    assert max(rates) == pytest.approx(2500, rel=1e-3)
    assert min(rates) == pytest.approx(100, rel=1e-2)  # night at a tenth of the average
    assert day.rate_at(43200) == pytest.approx(2500)  # peak mid-period by default
    assert day.cumulative(86400) / 86400 == pytest.approx(1000, rel=1e-9)
    assert sum(rates) / len(rates) == pytest.approx(1000, rel=1e-3)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: type(s).__name__)
def test_cumulative_is_the_integral_of_the_rate(shape: Any) -> None:
    horizon, n = 14.0, 28_000
    dt = horizon / n
    total = 0.0
    for i in range(n):
        total += shape.rate_at((i + 0.5) * dt) * dt
        if i % 2000 == 1999:
            assert shape.cumulative((i + 1) * dt) == pytest.approx(total, rel=2e-3, abs=0.5)


def test_schedule_times_follow_the_shape() -> None:
    fixed = Schedule(FixedRate(100), 1.0)
    times = []
    while (t := fixed.take()) is not None:
        times.append(t)
    assert len(times) == 100 == fixed.count
    assert times[:3] == pytest.approx([0.0, 0.01, 0.02])
    steps = Schedule(StepsRate([10, 40], 1.0), 2.0)
    times = []
    while (t := steps.take()) is not None:
        times.append(t)
    assert len(times) == 50
    assert sum(1 for t in times if t < 1.0) == 10
    gaps = [b - a for a, b in itertools.pairwise(times[10:])]
    assert all(g == pytest.approx(0.025, abs=1e-6) for g in gaps)


@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: type(s).__name__)
def test_processes_split_one_schedule_exactly(shape: Any) -> None:
    def times(stride: int, offset: int) -> list[float]:
        schedule = Schedule(shape, 10.0, stride, offset)
        out = []
        while (t := schedule.take()) is not None:
            out.append(round(t, 9))
        assert len(out) == schedule.count
        return out

    whole = times(1, 0)
    parts = [times(3, p) for p in range(3)]
    assert sorted(t for part in parts for t in part) == whole
    assert len(whole) == int(shape.cumulative(10.0) + 1e-6)
    # each request's intended time is where the cumulative count reaches its index
    for g in range(0, len(whole), max(1, len(whole) // 50)):
        assert shape.cumulative(whole[g]) == pytest.approx(g, abs=0.05 + 0.002 * g**0.5)


def test_shapes_from_toml_tables_and_inline_specs() -> None:
    assert shape_from_dict({"kind": "spike", "base_rate": 1, "spike_rate": 3, "at_s": 1,
                            "spike_s": 2}) == SpikeRate(1, 3, 1, 2)
    assert parse_inline_shape("kind=steps,rates=100/200,step_s=5") == StepsRate([100, 200], 5)
    assert parse_inline_shape("kind=diurnal,average_rate=50,period_s=60").peak_ratio == 2.5
    with pytest.raises(ShapeError, match="spike_s: Expected `float` > 0"):
        shape_from_dict({"kind": "spike", "base_rate": 1, "spike_rate": 3, "at_s": 1,
                         "spike_s": -2}, "s.toml")
    with pytest.raises(ShapeError, match="Invalid value 'square'"):
        parse_inline_shape("kind=square,rate=5")
    with pytest.raises(ShapeError, match="ramp_s: unknown key"):
        shape_from_dict({"kind": "fixed", "rate": 5, "ramp_s": 3})
    with pytest.raises(ShapeError, match=r"peak_ratio: Expected `float` <= 2\.6"):
        parse_inline_shape("kind=diurnal,average_rate=50,period_s=60,peak_ratio=4")
    with pytest.raises(ShapeError, match="kind: required"):
        parse_inline_shape("rate=5")


@pytest.fixture
async def echo_port() -> Any:
    from bench.echo_server import handle

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_generator_sends_on_the_shape_second_by_second(echo_port: int) -> None:
    intervals: list[Interval] = []
    spec = WorkloadSpec(shares=SharesSpec(malformed=0.0))  # the echo has no error path
    workload = SpecWorkload(spec, 1, key_prefix="g-")
    generator = OpenLoopGenerator(
        workload.next_item,
        duration_s=2.0,
        shape=StepsRate([150, 450], 1.0),
        connections=2,
        on_interval=intervals.append,
        track_acknowledged=False,
    )
    stats = await generator.run("127.0.0.1", echo_port)
    assert stats.sent == 600 and stats.replies == 600
    # Intervals close on a timer: a loaded machine may move a few requests across a boundary.
    assert [i.sent for i in intervals[:2]] == [pytest.approx(150, abs=30),
                                               pytest.approx(450, abs=30)]
    assert sum(i.sent for i in intervals) == 600
    assert sum(i.replies for i in intervals) == 600
    assert stats.histogram.get_total_count() == 600
    # per channel, the same samples: the channel histograms add up exactly to the total
    assert sum(h.get_total_count() for h in stats.channel_histograms.values()) == 600
    assert sum(i.histogram().get_total_count() for i in intervals) == 600
    assert not math.isnan(stats.percentile_ms(99))


def _walked(shape: Any, duration_s: float, stride: int, offset: int) -> list[float]:
    """The schedule as the cell-by-cell walk gave it: the reference for the search."""
    grid, cum = 0.001, shape.cumulative
    total = int(cum(duration_s) + 1e-6)
    cell, t0, c0, t1, c1 = 0, 0.0, 0.0, grid, cum(grid)
    out: list[float] = []
    for g in range(offset, total, stride):
        while c1 <= g:
            t0, c0 = t1, c1
            cell += 1
            t1 = (cell + 1) * grid
            if t0 > duration_s + grid:
                return out
            c1 = cum(t1)
        out.append(t0 + (g - c0) / (c1 - c0) * grid)
    return out


@pytest.mark.parametrize("shape", [
    StepsRate(rates=[300.0, 0.0, 0.0, 50.0, 0.0, 700.0], step_s=7.3),
    SpikeRate(base_rate=0.5, spike_rate=400.0, at_s=11.0, spike_s=3.0),
    RampRate(from_rate=0.0, to_rate=500.0, ramp_s=20.0),
    DiurnalRate(average_rate=200.0, period_s=30.0),
])
@pytest.mark.parametrize(("stride", "offset"), [(1, 0), (3, 2)])
def test_the_schedule_finds_the_times_the_cell_walk_found(shape: Any, stride: int,
                                                          offset: int) -> None:
    schedule = Schedule(shape, 45.0, stride=stride, offset=offset)
    got = list(iter(schedule.take, None))
    assert got == _walked(shape, 45.0, stride, offset)
    assert len(got) == schedule.count


def test_a_long_pause_costs_a_few_evaluations_not_one_a_millisecond() -> None:
    # Walked cell by cell, a 600 s pause blocked the loop for 0.47 s with a request queued.
    shape = StepsRate(rates=[1000.0, 0.0, 1000.0], step_s=600.0)
    calls = 0

    def counted(t: float) -> float:
        nonlocal calls
        calls += 1
        return shape.cumulative(t)

    schedule = Schedule(shape, 1300.0)
    schedule._cum = counted
    schedule.next_g = 600_000 - 1  # the last request before the pause
    assert schedule.take() == pytest.approx(599.999, abs=1e-6)
    calls = 0
    assert schedule.take() == pytest.approx(1200.0, abs=1e-6)
    assert calls < 100, calls  # the walk: 600,000
