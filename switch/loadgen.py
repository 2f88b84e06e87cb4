"""Open-loop load: requests leave on a schedule, whether or not replies have come back.

A closed-loop client (Locust's users) waits for each reply before sending the next, so
when the server slows down it sends less, and its latency numbers hide the queue it never
saw: coordinated omission. Here request *i* is due at ``start + i / rate`` and its latency
is measured from that intended time, not from when it actually left. If the generator
itself falls behind its schedule, that lag is counted and reported, loudly, instead of
silently lowering the offered rate.

Requests due in the same tick are written in one batch per connection; latency still
counts from each one's intended time, so batching cannot flatter the numbers.

The generator is a measuring instrument, so it schedules and measures with the precise
process clock (``time.perf_counter``): uvloop's loop clock ticks in whole milliseconds.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import msgspec
from hdrh.histogram import HdrHistogram

from switch.model import PaymentRequest
from switch.wire import ErrorReply, FrameDecoder, Pay, Reply, decode_response, encode_request

#: Generator lag beyond this (seconds behind schedule) is reported as falling behind.
LAG_WARN_S = 0.010
HIST_MAX_US = 120_000_000


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
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HIST_MAX_US, 3))
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)

    def percentile_ms(self, p: float) -> float:
        if self.histogram.get_total_count() == 0:
            return 0.0
        return float(self.histogram.get_value_at_percentile(p)) / 1000.0

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_at - self.started_at, 1e-9)


Source = Callable[[], tuple[PaymentRequest, str]]
_now = time.perf_counter  # bench: the generator's measurement clock (see docstring)


class _Outstanding(msgspec.Struct, array_like=True):
    intended: float
    key: str
    channel: str


class OpenLoopGenerator:
    """Drive ``rate`` payments/s for ``duration_s`` over ``connections`` connections."""

    def __init__(
        self,
        source: Source,
        *,
        rate: float,
        duration_s: float,
        connections: int = 8,
        max_outstanding: int = 200_000,
        drain_timeout_s: float = 10.0,
    ) -> None:
        assert rate > 0 and duration_s > 0 and connections >= 1
        self.source = source
        self.rate = rate
        self.duration_s = duration_s
        self.connections = connections
        self.max_outstanding = max_outstanding
        self.drain_timeout_s = drain_timeout_s
        self.stats = LoadStats()
        self._outstanding: dict[int, _Outstanding] = {}
        self._ids = itertools.count(1)
        self.done_sending = False

    async def run(self, host: str, port: int) -> LoadStats:
        streams = [await anyio.connect_tcp(host, port) for _ in range(self.connections)]
        try:
            async with anyio.create_task_group() as tg:
                for stream in streams:
                    tg.start_soon(self._receive, stream)
                await self._send_on_schedule(streams)
                with anyio.move_on_after(self.drain_timeout_s):
                    while self._outstanding:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        finally:
            for stream in streams:
                await stream.aclose()
        self.stats.finished_at = _now()
        return self.stats

    async def _send_on_schedule(self, streams: list[anyio.abc.SocketStream]) -> None:
        stats = self.stats
        start = _now()
        stats.started_at = start
        total = int(self.rate * self.duration_s)
        interval = 1.0 / self.rate
        buffers = [bytearray() for _ in streams]
        n = 0
        while n < total:
            now = _now()
            due = min(total, int((now - start) * self.rate) + 1)
            if due > n:
                lag = now - (start + n * interval)
                if lag > LAG_WARN_S:
                    stats.lagged += due - n
                stats.max_lag_s = max(stats.max_lag_s, lag)
            while n < due:
                intended = start + n * interval
                n += 1
                if len(self._outstanding) >= self.max_outstanding:
                    stats.dropped_overrun += 1
                    continue
                request, _kind = self.source()
                rid = next(self._ids)
                self._outstanding[rid] = _Outstanding(
                    intended, request.idempotency_key, request.channel
                )
                buffers[rid % len(buffers)] += encode_request(Pay(rid, request))
                stats.sent += 1
            for stream, buf in zip(streams, buffers, strict=True):
                if buf:
                    await stream.send(bytes(buf))
                    buf.clear()
            next_due = start + n * interval
            await anyio.sleep(max(0.0, next_due - _now()))
        self.done_sending = True

    async def _receive(self, stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder(16 * 1024 * 1024)
        stats = self.stats
        record = stats.histogram.record_value
        outstanding = self._outstanding
        try:
            while True:
                data = await stream.receive(65536)
                now = _now()
                for payload in decoder.feed(data):
                    response = decode_response(payload)
                    rid = response.id
                    sent = outstanding.pop(rid, None) if rid is not None else None
                    if sent is None:
                        continue
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
                        stats.acknowledged[sent.key] = Acknowledged(
                            status, response.result.payment_id
                        )
                    elif isinstance(response, ErrorReply):
                        stats.errors[response.code] += 1
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
