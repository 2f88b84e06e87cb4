"""Open-loop load: requests leave on a schedule, whether or not replies have come back.

A closed-loop client (Locust's users) waits for each reply before sending the next, so
when the server slows down it sends less, and its latency numbers hide the queue it never
saw: coordinated omission. Here request *i* is due at the instant the rate shape's
cumulative count reaches *i* (``start + i / rate`` for a fixed rate) and its latency is
measured from that intended time, not from when it actually left. If the generator itself
falls behind its schedule, that lag is counted and reported, loudly, instead of silently
lowering the offered rate.

Requests due in the same tick are written in one batch per connection; latency still
counts from each one's intended time, so batching cannot flatter the numbers.

Rate shapes (:data:`RateShape`) are pure functions of time: ``rate_at(t)`` and its
integral ``cumulative(t)``. Several generator processes split one shape exactly: process
*p* of *P* sends the global requests *p, p+P, p+2P, ...* (see :class:`Schedule`).

Every second the generator closes an *interval* (counts, errors by code, an interval
HdrHistogram) and hands it to ``on_interval``: that is what live progress, the CSV time
series and the HdrHistogram log are built from (``loadtests/harness/loadrun.py``).

The generator is a measuring instrument, so it schedules and measures with the precise
process clock (``time.perf_counter``): uvloop's loop clock ticks in whole milliseconds.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
from hdrh.histogram import HdrHistogram

from loadtests.harness.wires import UNMATCHED, Wire
from switch.model import PaymentRequest
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    Pay,
    Reply,
    decode_response,
    encode_request,
    frame,
)

#: Generator lag beyond this (seconds behind schedule) is reported as falling behind.
LAG_WARN_S = 0.010
HIST_MAX_US = 120_000_000
#: Requests generated in one go before the sender yields to the receivers, so a generator
#: far behind schedule still reads replies (and its latency numbers stay honest).
MAX_BATCH = 2048
#: Shortest sleep between ticks. uvloop rounds timers to whole milliseconds, so a shorter
#: sleep returns at once and the sender would spin a core; a request due inside this
#: window waits for the next tick, and its latency (from the intended time) includes that.
MIN_SLEEP_S = 0.001


def new_histogram() -> HdrHistogram:
    """Latency in microseconds, 1 µs .. 120 s, 3 significant digits."""
    return HdrHistogram(1, HIST_MAX_US, 3)


# --- rate shapes ---------------------------------------------------------------------------

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
    is found by walking a 1 ms grid forward and interpolating linearly inside a cell:
    exact for piecewise-constant and linear rates, within 1 ms at a step's edge.
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
        while self._c1 <= g:
            self._t0, self._c0 = self._t1, self._c1
            self._cell += 1
            self._t1 = (self._cell + 1) * self._grid  # no accumulated rounding
            if self._t0 > self.end_s + self._grid:
                return math.inf
            self._c1 = self._cum(self._t1)
        span = self._c1 - self._c0
        return self._t0 + (g - self._c0) / span * self._grid

    def take(self) -> float | None:
        """The next intended time (seconds from start), or None when the share is done."""
        g = self.next_g
        if g >= self.total:
            return None
        self.next_g = g + self.stride
        t = self.time_of(g)
        return None if t == math.inf else t


# --- stats ---------------------------------------------------------------------------------


@dataclass
class Acknowledged:
    """What the client was told about one idempotency key (for the lost/duplicate audit)."""

    status: str
    payment_id: str


@dataclass
class LoadStats:
    sent: int = 0
    replies: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[tuple[str, str]] = field(default_factory=Counter)
    replays: int = 0
    max_lag_s: float = 0.0
    lagged: int = 0
    dropped_overrun: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)
    #: Raw garbage frames sent (their ``malformed`` error replies carry no request id).
    malformed_sent: int = 0
    #: Requests still unanswered when the drain timed out.
    unanswered: int = 0
    #: Requests outstanding on a connection the server closed.
    connection_lost: int = 0

    def percentile_ms(self, p: float) -> float:
        if self.histogram.get_total_count() == 0:
            return 0.0
        return float(self.histogram.get_value_at_percentile(p)) / 1000.0

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_at - self.started_at, 1e-9)


class Interval(msgspec.Struct, frozen=True):
    """One closed second of one generator: what changed in [start_s, end_s)."""

    index: int  # 1-based: interval k covers [k-1, k) seconds after start (ends are exact)
    start_s: float
    end_s: float
    sent: int
    malformed_sent: int
    replies: int
    replays: int
    statuses: dict[str, int]
    errors: dict[str, int]
    dropped: int
    lagged: int
    max_lag_s: float
    histogram: bytes  # hdrh-encoded interval histogram (latency in µs)


Item = PaymentRequest | bytes
Source = Callable[[], tuple[PaymentRequest, str]]
ItemSource = Callable[[], tuple[Item, str]]
_now = time.perf_counter  # bench: the generator's measurement clock (see docstring)


class _Outstanding(msgspec.Struct, array_like=True):
    intended: float
    key: str
    channel: str
    conn: int


class _Snapshot:
    """Counters at the last interval boundary, to hand out differences."""

    __slots__ = ("dropped", "errors", "lagged", "malformed", "replays", "replies", "sent",
                 "statuses")

    def __init__(self, stats: LoadStats) -> None:
        self.sent = stats.sent
        self.malformed = stats.malformed_sent
        self.replies = stats.replies
        self.replays = stats.replays
        self.statuses = Counter(stats.by_status)
        self.errors = Counter(stats.errors)
        self.dropped = stats.dropped_overrun
        self.lagged = stats.lagged


class OpenLoopGenerator:
    """Drive a rate (or a :data:`RateShape`) for ``duration_s`` over ``connections``.

    ``stride``/``offset`` give this generator its share of the shape when several
    processes split one run. At most ``max_outstanding_per_connection`` requests wait for
    replies on each connection (and ``max_outstanding`` in all); a request due past that
    bound is not sent and counted in ``dropped_overrun``. ``track_acknowledged`` keeps
    every key's answer for the journal audit (the demo): off for long runs, since that
    map grows with the run.
    """

    def __init__(
        self,
        source: ItemSource,
        *,
        rate: float = 0.0,
        duration_s: float,
        connections: int = 8,
        max_outstanding: int = 200_000,
        max_outstanding_per_connection: int = 65_536,
        drain_timeout_s: float = 10.0,
        shape: RateShape | None = None,
        stride: int = 1,
        offset: int = 0,
        on_interval: Callable[[Interval], None] | None = None,
        track_acknowledged: bool = True,
        should_stop: Callable[[], bool] | None = None,
        wire: Wire | None = None,
    ) -> None:
        assert duration_s > 0 and connections >= 1
        assert shape is not None or rate > 0
        self.source = source
        self.shape: RateShape = shape if shape is not None else FixedRate(rate)
        self.rate = rate if shape is None else self.shape.cumulative(duration_s) / duration_s
        self.duration_s = duration_s
        self.connections = connections
        self.max_outstanding = max_outstanding
        self.max_per_connection = max_outstanding_per_connection
        self.drain_timeout_s = drain_timeout_s
        self.schedule = Schedule(self.shape, duration_s, stride, offset)
        self.on_interval = on_interval
        self.track_acknowledged = track_acknowledged
        #: Polled once per tick; True ends sending early (then the usual drain).
        self.should_stop = should_stop
        self.stopped_early = False
        #: Another protocol's bytes (ISO 8583, HTTP); None: the switch's msgpack frames.
        self.wire = wire
        self.stats = LoadStats()
        self._outstanding: dict[int, _Outstanding] = {}
        self._per_conn = [0] * connections
        self._alive = [True] * connections
        self._ids = itertools.count(1)
        self._interval_hist = new_histogram()
        self._interval_max_lag = 0.0
        self._snapshot = _Snapshot(self.stats)
        self._interval_index = 0
        self._start = 0.0
        self.done_sending = False

    async def run(
        self,
        host: str,
        port: int,
        *,
        wait_for_start: Callable[[], float] | None = None,
    ) -> LoadStats:
        """Connect, then send on schedule, drain, and return the stats.

        ``wait_for_start`` (blocking, run in a thread) is called once connected and returns
        the wall-clock time at which to start: how several processes start together.
        """
        streams = [await anyio.connect_tcp(host, port) for _ in range(self.connections)]
        try:
            if wait_for_start is not None:
                start_wall = await anyio.to_thread.run_sync(wait_for_start)
                await anyio.sleep(max(0.0, start_wall - time.time()))  # wall: shared start
            async with anyio.create_task_group() as tg:
                receive = self._receive if self.wire is None else self._receive_wire
                for index, stream in enumerate(streams):
                    tg.start_soon(receive, stream, index)
                self._start = _now()
                self.stats.started_at = self._start
                tg.start_soon(self._tick)
                await self._send_on_schedule(streams)
                with anyio.move_on_after(self.drain_timeout_s):
                    while self._outstanding:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        finally:
            for stream in streams:
                await stream.aclose()
        self.stats.finished_at = _now()
        self.stats.unanswered += len(self._outstanding)
        self._outstanding.clear()
        self._close_interval(final=True)
        return self.stats

    # -- intervals ---------------------------------------------------------------------------

    @property
    def intervals_closed(self) -> int:
        return self._interval_index

    async def _tick(self) -> None:
        while True:
            boundary = self._start + self._interval_index + 1
            await anyio.sleep(max(0.0, boundary - _now()))
            self._close_interval(final=False)

    def _close_interval(self, *, final: bool) -> None:
        stats = self.stats
        hist = self._interval_hist
        stats.histogram.add(hist)
        start_s = float(self._interval_index)
        self._interval_index += 1
        end_s = (
            min(stats.finished_at - self._start, float(self._interval_index))
            if final
            else float(self._interval_index)
        )
        before = self._snapshot
        after = _Snapshot(stats)
        self._snapshot = after
        if self.on_interval is not None:
            interval = Interval(
                index=self._interval_index,
                start_s=start_s,
                end_s=max(end_s, start_s),
                sent=after.sent - before.sent,
                malformed_sent=after.malformed - before.malformed,
                replies=after.replies - before.replies,
                replays=after.replays - before.replays,
                statuses=dict(after.statuses - before.statuses),
                errors=dict(after.errors - before.errors),
                dropped=after.dropped - before.dropped,
                lagged=after.lagged - before.lagged,
                max_lag_s=self._interval_max_lag,
                histogram=hist.encode() if hist.get_total_count() else b"",
            )
            self.on_interval(interval)
        hist.reset()
        self._interval_max_lag = 0.0

    # -- sending -----------------------------------------------------------------------------

    async def _send_on_schedule(self, streams: list[anyio.abc.SocketStream]) -> None:
        stats = self.stats
        schedule = self.schedule
        start = self._start
        buffers = [bytearray() for _ in streams]
        outstanding = self._outstanding
        per_conn = self._per_conn
        alive = self._alive
        n_conn = len(streams)
        source = self.source
        ids = self._ids
        max_total = self.max_outstanding
        max_conn = self.max_per_connection
        warn = LAG_WARN_S
        next_at = schedule.take()
        should_stop = self.should_stop
        wire = self.wire
        while next_at is not None:
            if should_stop is not None and should_stop():
                self.stopped_early = True
                break
            now = _now() - start
            if next_at <= now:
                lag = now - next_at
                if lag > stats.max_lag_s:
                    stats.max_lag_s = lag
                if lag > self._interval_max_lag:
                    self._interval_max_lag = lag
                batch = 0
                while next_at is not None and next_at <= now and batch < MAX_BATCH:
                    batch += 1
                    if now - next_at > warn:
                        stats.lagged += 1
                    item, _kind = source()
                    rid = next(ids)
                    conn = rid % n_conn
                    if not alive[conn]:
                        conn = next((c for c in range(n_conn) if alive[c]), -1)
                        if conn < 0:
                            stats.connection_lost += 1
                            next_at = schedule.take()
                            continue
                    if isinstance(item, bytes):
                        buffers[conn] += (frame(item) if wire is None
                                          else wire.encode_malformed(item, conn))
                        stats.malformed_sent += 1
                    elif len(outstanding) >= max_total or per_conn[conn] >= max_conn:
                        stats.dropped_overrun += 1
                    else:
                        outstanding[rid] = _Outstanding(
                            start + next_at, item.idempotency_key, item.channel, conn
                        )
                        per_conn[conn] += 1
                        buffers[conn] += (encode_request(Pay(rid, item)) if wire is None
                                          else wire.encode(rid, item, conn))
                        stats.sent += 1
                    next_at = schedule.take()
                for index, buf in enumerate(buffers):
                    if buf:
                        data = bytes(buf)
                        buf.clear()
                        if alive[index]:
                            try:
                                await streams[index].send(data)
                            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                                self._lose_connection(index)
                if batch >= MAX_BATCH:
                    await anyio.sleep(0)
                    continue
            if next_at is not None:
                await anyio.sleep(max(MIN_SLEEP_S, next_at - (_now() - start)))
        self.done_sending = True

    def _lose_connection(self, index: int) -> None:
        """The server closed a connection: its outstanding requests will not be answered."""
        if not self._alive[index]:
            return
        self._alive[index] = False
        lost = [rid for rid, o in self._outstanding.items() if o.conn == index]
        for rid in lost:
            del self._outstanding[rid]
        self._per_conn[index] = 0
        self.stats.connection_lost += len(lost)
        if self.wire is not None:
            self.wire.forget(index)

    # -- receiving ---------------------------------------------------------------------------

    async def _receive(self, stream: anyio.abc.SocketStream, index: int) -> None:
        decoder = FrameDecoder(16 * 1024 * 1024)
        stats = self.stats
        outstanding = self._outstanding
        per_conn = self._per_conn
        track = self.track_acknowledged
        record = self._interval_hist.record_value  # reset, never replaced, per interval
        try:
            while True:
                data = await stream.receive(65536)
                now = _now()
                for payload in decoder.feed(data):
                    response = decode_response(payload)
                    rid = response.id
                    sent = outstanding.pop(rid, None) if rid is not None else None
                    if sent is None:
                        if isinstance(response, ErrorReply) and rid is None:
                            stats.errors[response.code] += 1  # e.g. our malformed frames
                        continue
                    per_conn[sent.conn] -= 1
                    stats.replies += 1
                    latency_us = int((now - sent.intended) * 1e6)
                    record(min(max(latency_us, 1), HIST_MAX_US))
                    if isinstance(response, Reply):
                        status = response.result.status.value
                        if response.replay:
                            # Counted once, as a replay: the payment itself was already
                            # counted when it was first answered.
                            stats.replays += 1
                        else:
                            stats.by_status[status] += 1
                            stats.by_channel[(sent.channel, status)] += 1
                        if track:
                            stats.acknowledged[sent.key] = Acknowledged(
                                status, response.result.payment_id
                            )
                    elif isinstance(response, ErrorReply):
                        stats.errors[response.code] += 1
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        self._lose_connection(index)

    async def _receive_wire(self, stream: anyio.abc.SocketStream, index: int) -> None:
        """:meth:`_receive` for a plugged-in wire: it matches replies, this measures them.

        A reply that matches no request is counted under ``unmatched_reply``: never dropped.
        """
        assert self.wire is not None
        feed = self.wire.feed
        stats = self.stats
        outstanding = self._outstanding
        per_conn = self._per_conn
        track = self.track_acknowledged
        record = self._interval_hist.record_value
        try:
            while True:
                data = await stream.receive(65536)
                now = _now()
                for answer in feed(index, data):
                    rid = answer.rid
                    sent = outstanding.pop(rid, None) if rid is not None else None
                    if sent is None:
                        stats.errors[answer.error or UNMATCHED] += 1
                        continue
                    per_conn[sent.conn] -= 1
                    stats.replies += 1
                    latency_us = int((now - sent.intended) * 1e6)
                    record(min(max(latency_us, 1), HIST_MAX_US))
                    status = answer.status
                    if status is None:
                        stats.errors[answer.error or "error"] += 1
                        continue
                    if answer.replay:
                        stats.replays += 1
                    else:
                        stats.by_status[status] += 1
                        stats.by_channel[(sent.channel, status)] += 1
                    if track:
                        stats.acknowledged[sent.key] = Acknowledged(status, answer.payment_id)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionError):
            pass
        self._lose_connection(index)
