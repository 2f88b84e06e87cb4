"""Open-loop load: requests leave on a schedule, whether or not replies have come back.

A closed-loop client (Locust's users) waits for each reply before sending the next, so
when the server slows down it sends less, and its latency numbers hide the queue it never
saw: coordinated omission. Here request *i* is due at the instant the rate shape's
cumulative count reaches *i* (``start + i / rate`` for a fixed rate) and its latency is
measured from that intended time, not from when it actually left. If the generator itself
falls behind its schedule, that lag is counted and reported, loudly, instead of silently
lowering the offered rate.

A cluster (switch/cluster/): before sending, the generator asks its target for the shard
map (``shards``); a sharded target makes it open ``connections`` to every shard's owner and
send each payment on a connection to the shard that owns its key (crc32 mod N,
switch/protocols/shardmap.py), the same map HAProxy routes HTTP by. The map is taken once
and cached; a ``moved`` reply (the cache was stale) is followed: the same request (same
id, same intended time, so the detour is in its latency) is re-sent to the owner it names,
once, and counted in ``redirects``; a second ``moved``, or an owner the generator has no
connection to, is counted as error ``moved``.

A shard whose worker is down (docs/cluster.md, "Failure of a worker") does not stop the
run: its connections that cannot be opened at the start, or that close during the run,
are retried every ``RECONNECT_S`` while the others keep loading. A payment due for a
shard with no open connection is issued (counted in ``sent``) and counted at once as error
``unavailable``; nothing went on the wire, so it is in no latency histogram. Requests
outstanding on a connection that closes are ``connection_lost`` (below), as ever.

Requests due in the same tick are written in one batch per connection; latency still
counts from each one's intended time, so batching cannot flatter the numbers.

The rate shapes and the schedule of intended send times are loadtests/harness/shapes.py
(re-exported here).

Every second the generator closes an *interval* (counts, errors by code, one interval
HdrHistogram per channel) and hands it to ``on_interval``: that is what live progress,
the CSV time series and the HdrHistogram log are built from (``loadtests/harness/loadrun.py``).
A request the generator gives up on is an error of the second it gives up in: ``no_reply``
(still unanswered when the drain ends) or ``connection_lost`` (its connection closed), and
it is in the latency histograms at the time it was given up on, a lower bound of a wait
that never ended: percentiles of the answered requests alone would hide exactly the worst
ones.

A target that stops reading blocks the sender in ``send()``; the lag the sender cannot
measure then (it measures when a batch starts) is taken every second from the oldest
request due but not yet sent, and the whole run ends by ``duration + drain timeout``
(a stop request ends the sending at once, then drains).
Error replies to requests the workload planted on purpose (invalid payments, malformed
frames) are counted apart as well, so reports and thresholds can tell them from real errors.

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
import anyio.to_thread
import msgspec
from hdrh.histogram import HdrHistogram

from loadtests.harness.hlog import HIST_MAX_US as HIST_MAX_US
from loadtests.harness.hlog import new_histogram as new_histogram
from loadtests.harness.shapes import SHAPE_KINDS as SHAPE_KINDS
from loadtests.harness.shapes import DiurnalRate as DiurnalRate
from loadtests.harness.shapes import FixedRate as FixedRate
from loadtests.harness.shapes import RampRate as RampRate
from loadtests.harness.shapes import RateShape as RateShape
from loadtests.harness.shapes import Schedule as Schedule
from loadtests.harness.shapes import ShapeError as ShapeError
from loadtests.harness.shapes import SpikeRate as SpikeRate
from loadtests.harness.shapes import StepsRate as StepsRate
from loadtests.harness.shapes import parse_inline_shape as parse_inline_shape
from loadtests.harness.shapes import shape_from_dict as shape_from_dict
from loadtests.harness.wires import UNMATCHED, Wire
from switch.model import PaymentRequest
from switch.protocols.shardmap import ShardMap, join_address, shard_of, split_address
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    Moved,
    Pay,
    Reply,
    ShardMapReply,
    Shards,
    decode_response,
    encode_request,
    frame,
)

#: Generator lag beyond this (seconds behind schedule) is reported as falling behind.
LAG_WARN_S = 0.010
#: Requests generated in one go before the sender yields to the receivers, so a generator
#: far behind schedule still reads replies (and its latency numbers stay honest).
MAX_BATCH = 2048
#: Shortest sleep between ticks. uvloop rounds timers to whole milliseconds, so a shorter
#: sleep returns at once and the sender would spin a core; a request due inside this
#: window waits for the next tick, and its latency (from the intended time) includes that.
MIN_SLEEP_S = 0.001
#: How often a blocked sender looks at ``should_stop`` (Ctrl-C).
STOP_POLL_S = 0.05
#: Workload kinds planted on purpose, and the error code the switch must answer them with.
#: A wire (ISO 8583) may add its own: ``Wire.planted_errors``, read when it has one.
PLANTED_ERRORS = {"invalid": "invalid", "malformed": "malformed"}
#: A cluster shard's connection that could not be opened, or closed, is tried again this
#: often (its worker restarts after the supervisor's ``--restart-delay``).
RECONNECT_S = 1.0
#: Bound on one attempt to open a connection to a shard (an unreachable host).
CONNECT_TIMEOUT_S = 5.0
#: The error code of a payment whose shard has no open connection (the worker is down).
UNAVAILABLE = "unavailable"


# --- stats ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Acknowledged:
    """What the client was told about one idempotency key, and the amount and currency it
    sent for it (for the money audit: lost, duplicated, booked for another amount).

    ``amount`` None: not known (an acknowledgement recorded without it); the audit counts
    such a payment as not compared, never as matching.
    """

    status: str
    payment_id: str
    amount: int | None = None
    currency: str = ""


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
    #: Latency of answered payments only (results, not refusals): "admitted" latency.
    admitted: HdrHistogram = field(default_factory=new_histogram)
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)
    #: Raw garbage frames sent (their ``malformed`` error replies carry no request id).
    malformed_sent: int = 0
    #: Requests still unanswered when the drain timed out.
    unanswered: int = 0
    #: Requests outstanding on a connection the server closed.
    connection_lost: int = 0
    #: Error replies (by code) that answered requests planted on purpose (a subset of
    #: ``errors``): invalid payments answered ``invalid``, garbage frames ``malformed``.
    planted_errors: Counter[str] = field(default_factory=Counter)
    #: Planted requests sent, by workload kind (``invalid``, ``malformed``).
    planted_sent: Counter[str] = field(default_factory=Counter)
    #: Latency per channel over the whole run (``histogram`` is their exact sum).
    channel_histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    #: ``moved`` replies followed to the owner they named (a cluster; see module doc).
    redirects: int = 0
    #: When the last reply came (the achieved rate's denominator ends there, not at the
    #: end of a drain spent waiting for replies that never came).
    last_reply_at: float = 0.0

    def percentile_ms(self, p: float) -> float:
        if self.histogram.get_total_count() == 0:
            return 0.0
        return float(self.histogram.get_value_at_percentile(p)) / 1000.0

    @property
    def elapsed_s(self) -> float:
        return max(self.finished_at - self.started_at, 1e-9)

    @property
    def last_reply_s(self) -> float:
        """Seconds from the start to the last reply (0 without replies)."""
        return max(self.last_reply_at - self.started_at, 0.0) if self.last_reply_at else 0.0


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
    #: hdrh-encoded interval histogram per channel (latency in µs); only channels with replies.
    histograms: dict[str, bytes]
    planted_errors: dict[str, int] = {}
    planted_sent: dict[str, int] = {}

    def histogram(self) -> HdrHistogram:
        """All channels together (the exact sum of the per-channel histograms)."""
        total = new_histogram()
        for encoded in self.histograms.values():
            total.decode_and_add(encoded)
        return total


Item = PaymentRequest | bytes
Source = Callable[[], tuple[PaymentRequest, str]]
ItemSource = Callable[[], tuple[Item, str]]
_now = time.perf_counter  # bench: the generator's measurement clock (see docstring)


class _Outstanding(msgspec.Struct, array_like=True):
    intended: float
    key: str
    channel: str
    conn: int
    #: The error code this request was planted to get ("" for an ordinary request).
    planted: str = ""
    #: The payment itself, kept only against a cluster: to re-send it after ``moved``.
    item: PaymentRequest | None = None
    #: Already re-sent once after ``moved``.
    followed: bool = False
    #: What the payment asked for, for the money audit's acknowledgement (minor units).
    amount: int = 0
    currency: str = ""


class _Snapshot:
    """Counters at the last interval boundary, to hand out differences."""

    __slots__ = ("dropped", "errors", "lagged", "lost", "malformed", "planted", "planted_sent",
                 "replays", "replies", "sent", "statuses", "unanswered")

    def __init__(self, stats: LoadStats) -> None:
        self.sent = stats.sent
        self.malformed = stats.malformed_sent
        self.replies = stats.replies
        self.replays = stats.replays
        self.statuses = Counter(stats.by_status)
        self.errors = Counter(stats.errors)
        self.dropped = stats.dropped_overrun
        self.lagged = stats.lagged
        self.planted = Counter(stats.planted_errors)
        self.planted_sent = Counter(stats.planted_sent)
        self.unanswered = stats.unanswered
        self.lost = stats.connection_lost


def _interval_errors(before: _Snapshot, after: _Snapshot) -> dict[str, int]:
    """Error replies of the interval, and the requests given up on in it (module doc)."""
    errors = after.errors - before.errors
    for code, n in (("no_reply", after.unanswered - before.unanswered),
                    ("connection_lost", after.lost - before.lost)):
        if n:
            errors[code] += n
    return dict(errors)


async def discover_shards(host: str, port: int, timeout_s: float = 10.0) -> ShardMap:
    """Ask the target for the cluster's shard map; an empty map for a standalone switch
    (or anything that does not answer ``shards``: everything then goes to the target)."""
    with anyio.move_on_after(timeout_s):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(encode_request(Shards(0)))
            decoder = FrameDecoder(1 << 20)
            while True:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                for payload in decoder.feed(data):
                    try:
                        reply = decode_response(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        return ShardMap()
                    if isinstance(reply, ShardMapReply):
                        return ShardMap(reply.addresses)
                    return ShardMap()
    return ShardMap()


class OpenLoopGenerator:
    """Drive a rate (or a :data:`RateShape`) for ``duration_s`` over ``connections``.

    ``stride``/``offset`` give this generator its share of the shape when several
    processes split one run. At most ``max_outstanding_per_connection`` requests wait for
    replies on each connection (and ``max_outstanding`` in all); a request due past that
    bound is not sent and counted in ``dropped_overrun``. ``track_acknowledged`` keeps
    every key's answer, with the amount and currency it sent, for the journal audit (the
    demo, scenarios): off for long runs, since that map grows with the run.
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
        #: Polled once per tick and every STOP_POLL_S while the sender is blocked; True
        #: ends sending early (then the usual drain).
        self.should_stop = should_stop
        self.stopped_early = False
        #: Another protocol's bytes (ISO 8583, HTTP); None: the switch's msgpack frames.
        self.wire = wire
        self.stats = LoadStats()
        self._outstanding: dict[int, _Outstanding] = {}
        self._per_conn = [0] * connections
        self._alive = [True] * connections
        self._ids = itertools.count(1)
        #: Latency per channel in the open interval (reset, never replaced).
        self._interval_hists: dict[str, HdrHistogram] = {}
        self._interval_max_lag = 0.0
        self._snapshot = _Snapshot(self.stats)
        self._interval_index = 0
        self._start = 0.0
        self.done_sending = False
        #: Intended time (from start) of the next request not yet sent while the sender
        #: waits; None when it is not sending. Read by _close_interval: see module doc.
        self._next_due: float | None = None
        #: The cluster's map when the target is sharded (one group of connections per shard).
        self.shard_map = ShardMap()
        self._targets: dict[str, int] = {}
        self._buffers: list[bytearray] = []
        #: The open stream of each connection (None: not open); every stream ever opened
        #: is closed at the end.
        self._streams: list[anyio.abc.SocketStream | None] = []
        self._opened: list[anyio.abc.SocketStream] = []
        #: Each connection's (host, port).
        self._addresses: list[tuple[str, int]] = []
        #: Error codes by workload kind: the built-in ones and the wire's own.
        self._planted = {**PLANTED_ERRORS, **getattr(wire, "planted_errors", {})}

    def _use_targets(self, targets: int) -> None:
        n = self.connections * targets
        self._per_conn = [0] * n
        self._alive = [True] * n
        self._buffers = [bytearray() for _ in range(n)]

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
        targets = [(host, port)]
        if self.wire is None:
            found = await discover_shards(host, port)
            if len(found.addresses) > 1:
                targets = [split_address(a) for a in found.addresses]
                self.shard_map = found
        self._use_targets(len(targets))
        # Keyed as the map (and so a ``moved``) names them: an IPv6 host in brackets.
        self._targets = {join_address(h, p): i for i, (h, p) in enumerate(targets)}
        self._addresses = [target for target in targets for _ in range(self.connections)]
        sharded = len(targets) > 1
        streams = self._streams = []
        down: set[tuple[str, int]] = set()
        try:
            for h, p in self._addresses:
                if not sharded:
                    opened = await anyio.connect_tcp(h, p)
                    self._opened.append(opened)
                    streams.append(opened)
                    continue
                # A shard's worker may be down: its payments are `unavailable` (and its
                # connections retried), the other shards are loaded all the same.
                stream = None if (h, p) in down else await self._open(h, p)
                streams.append(stream)
                if stream is None:
                    down.add((h, p))
                    self._alive[len(streams) - 1] = False
        except BaseException:
            with anyio.CancelScope(shield=True):
                for stream in self._opened:
                    await stream.aclose()
            raise
        try:
            if wait_for_start is not None:
                start_wall = await anyio.to_thread.run_sync(wait_for_start)
                await anyio.sleep(max(0.0, start_wall - time.time()))  # wall: shared start
            async with anyio.create_task_group() as tg:
                receive = self._receive if self.wire is None else self._receive_wire
                for index, stream in enumerate(streams):
                    if stream is not None:
                        tg.start_soon(receive, stream, index)
                if sharded:
                    tg.start_soon(self._reconnect, tg)
                self._start = _now()
                self.stats.started_at = self._start
                # The drain timeout bounds the run, not only the drain: a target that
                # stops reading blocks send(), which no other timeout covers.
                end = self._start + self.duration_s + self.drain_timeout_s
                tg.start_soon(self._tick)
                with anyio.move_on_after(end - _now()) as sending:
                    if self.should_stop is not None:
                        tg.start_soon(self._watch_stop, sending)
                    await self._send_on_schedule(streams)
                if self.stopped_early:
                    end = _now() + self.drain_timeout_s  # a stop still drains in full
                with anyio.move_on_after(max(end - _now(), 0.0)):
                    while self._outstanding:
                        await self._flush(streams)  # redirected requests, if any
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for opened in self._opened:
                    await opened.aclose()
        finished = self.stats.finished_at = _now()
        for sent in self._outstanding.values():
            self._gave_up(sent.channel, finished - sent.intended)
        self.stats.unanswered += len(self._outstanding)
        self._outstanding.clear()
        self._close_interval(final=True)
        return self.stats

    async def _open(self, host: str, port: int) -> anyio.abc.SocketStream | None:
        """A connection to a shard's worker, or None when it cannot be opened now."""
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                stream = await anyio.connect_tcp(host, port)
        except (OSError, TimeoutError):
            return None
        self._opened.append(stream)
        return stream

    async def _reconnect(self, tg: anyio.abc.TaskGroup) -> None:
        """Open again, every RECONNECT_S, the connections of shards whose worker was down
        (a restarted worker is loaded again); runs until the run's task group ends."""
        receive = self._receive if self.wire is None else self._receive_wire
        while True:
            await anyio.sleep(RECONNECT_S)
            down: set[tuple[str, int]] = set()
            for index, alive in enumerate(self._alive):
                if alive or self.done_sending:
                    continue
                address = self._addresses[index]
                if address in down:
                    continue  # refused a moment ago: the worker is still down
                stream = await self._open(*address)
                if stream is None:
                    down.add(address)
                    continue
                old = self._streams[index]
                self._streams[index] = stream
                self._per_conn[index] = 0
                self._buffers[index].clear()
                self._alive[index] = True
                if old is not None:
                    await old.aclose()  # ends its reader, if it still runs
                    self._opened.remove(old)  # a flapping worker: no growth per reconnect
                tg.start_soon(receive, stream, index)

    async def _watch_stop(self, sending: anyio.CancelScope) -> None:
        """End the sending when asked to, even while the sender is blocked in send()."""
        should_stop = self.should_stop
        assert should_stop is not None
        while not self.done_sending:
            if should_stop():
                self.stopped_early = True
                sending.cancel()
                return
            await anyio.sleep(STOP_POLL_S)

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
        # The sender measures lag only when it starts a batch; blocked (a target that
        # stops reading), it would report none at all for every second it is stuck.
        self._take_unsent_lag()
        for channel, hist in self._interval_hists.items():
            stats.histogram.add(hist)
            run_hist = stats.channel_histograms.get(channel)
            if run_hist is None:
                run_hist = stats.channel_histograms[channel] = new_histogram()
            run_hist.add(hist)
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
                errors=_interval_errors(before, after),
                dropped=after.dropped - before.dropped,
                lagged=after.lagged - before.lagged,
                max_lag_s=self._interval_max_lag,
                histograms={
                    channel: hist.encode()
                    for channel, hist in sorted(self._interval_hists.items())
                    if hist.get_total_count()
                },
                planted_errors=dict(after.planted - before.planted),
                planted_sent=dict(after.planted_sent - before.planted_sent),
            )
            self.on_interval(interval)
        for hist in self._interval_hists.values():
            hist.reset()
        self._interval_max_lag = 0.0

    # -- sending -----------------------------------------------------------------------------

    async def _send_on_schedule(self, streams: list[anyio.abc.SocketStream | None]) -> None:
        try:
            await self._send_loop(streams, self.schedule.take())
        finally:
            # Cancelled while blocked (stopped, or past the run's end): the wait so far is
            # lag of the open interval; after it nothing is due, so no more lag is taken.
            self._take_unsent_lag()
            self._next_due = None
            self.done_sending = True

    def _take_unsent_lag(self) -> None:
        """Lag of the oldest request due but not sent yet, as of now (see module doc)."""
        due = self._next_due
        if due is None:
            return
        lag = _now() - self._start - due
        if lag > self._interval_max_lag:
            self._interval_max_lag = lag
        if lag > self.stats.max_lag_s:
            self.stats.max_lag_s = lag

    async def _send_loop(self, streams: list[anyio.abc.SocketStream | None],
                         next_at: float | None) -> None:
        stats = self.stats
        schedule = self.schedule
        start = self._start
        buffers = self._buffers
        outstanding = self._outstanding
        per_conn = self._per_conn
        alive = self._alive
        n_conn = len(streams)
        per_shard = self.connections
        shards = len(self.shard_map.addresses)
        source = self.source
        ids = self._ids
        max_total = self.max_outstanding
        max_conn = self.max_per_connection
        warn = LAG_WARN_S
        should_stop = self.should_stop
        wire = self.wire
        planted_codes = self._planted
        self._next_due = next_at
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
                    item, kind = source()
                    rid = next(ids)
                    if shards > 1 and not isinstance(item, bytes):
                        # The owner's connections only: another shard would answer `moved`.
                        first = shard_of(item.idempotency_key, shards) * per_shard
                        conn = first + rid % per_shard
                        group = range(first, first + per_shard)
                    else:
                        conn = rid % n_conn
                        group = range(n_conn)
                    if not alive[conn]:
                        conn = next((c for c in group if alive[c]), -1)
                        if conn < 0 and shards > 1 and not isinstance(item, bytes):
                            # The owner's worker is down: its shard is unavailable, the
                            # others are not (module doc).
                            stats.sent += 1
                            stats.errors[UNAVAILABLE] += 1
                            planted = planted_codes.get(kind, "")
                            if planted:
                                stats.planted_sent[kind] += 1
                            next_at = schedule.take()
                            continue
                        if conn < 0:
                            stats.connection_lost += 1
                            if not isinstance(item, bytes):
                                self._gave_up(item.channel, now - next_at)
                            next_at = schedule.take()
                            continue
                    if isinstance(item, bytes):
                        buffers[conn] += (frame(item) if wire is None
                                          else wire.encode_malformed(item, conn))
                        stats.malformed_sent += 1
                        stats.planted_sent["malformed"] += 1
                    elif len(outstanding) >= max_total or per_conn[conn] >= max_conn:
                        stats.dropped_overrun += 1
                    else:
                        planted = planted_codes.get(kind, "")
                        if planted:
                            stats.planted_sent[kind] += 1
                        outstanding[rid] = _Outstanding(
                            start + next_at, item.idempotency_key, item.channel, conn, planted,
                            item if shards > 1 else None, False, item.amount, item.currency)
                        per_conn[conn] += 1
                        buffers[conn] += (encode_request(Pay(rid, item)) if wire is None
                                          else wire.encode(rid, item, conn))
                        stats.sent += 1
                    next_at = schedule.take()
                self._next_due = next_at  # the sends below may block: see _close_interval
                for index, buf in enumerate(buffers):
                    if buf:
                        data = bytes(buf)
                        buf.clear()
                        stream = streams[index]
                        if alive[index] and stream is not None:
                            try:
                                await stream.send(data)
                            except (anyio.BrokenResourceError, anyio.ClosedResourceError,
                                    OSError):
                                self._lose_connection(index, stream)
                if batch >= MAX_BATCH:
                    await anyio.sleep(0)
                    continue
            if next_at is not None:
                await anyio.sleep(max(MIN_SLEEP_S, next_at - (_now() - start)))

    async def _flush(self, streams: list[anyio.abc.SocketStream | None]) -> None:
        for index, buf in enumerate(self._buffers):
            stream = streams[index]
            if buf and self._alive[index] and stream is not None:
                data = bytes(buf)
                buf.clear()
                try:
                    await stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self._lose_connection(index, stream)

    def _follow(self, rid: int, sent: _Outstanding, moved: Moved) -> bool:
        """Re-send a payment a worker said it does not own to the owner it named, once
        (the sender's next write, or the drain, flushes it); True if it was. The redirect
        is not the payment's answer: nothing is counted or measured for it."""
        target = self._targets.get(moved.address)
        if sent.item is None or sent.followed or target is None:
            return False
        conn = target * self.connections + rid % self.connections
        if not self._alive[conn]:
            return False
        self._per_conn[sent.conn] -= 1
        self._per_conn[conn] += 1
        self.stats.redirects += 1
        self._outstanding[rid] = _Outstanding(sent.intended, sent.key, sent.channel, conn,
                                              sent.planted, sent.item, True, sent.amount,
                                              sent.currency)
        self._buffers[conn] += encode_request(Pay(rid, sent.item))
        return True

    def _lose_connection(self, index: int,
                         stream: anyio.abc.SocketStream | None = None) -> None:
        """The server closed a connection: its outstanding requests will not be answered.
        ``stream``: the one that closed (a reader of a connection since re-opened is late)."""
        if not self._alive[index]:
            return
        if stream is not None and index < len(self._streams) and (
                self._streams[index] is not stream):
            return
        self._alive[index] = False
        lost = [rid for rid, o in self._outstanding.items() if o.conn == index]
        now = _now()
        for rid in lost:
            sent = self._outstanding.pop(rid)
            self._gave_up(sent.channel, now - sent.intended)
        self._per_conn[index] = 0
        self.stats.connection_lost += len(lost)
        if self.wire is not None:
            self.wire.forget(index)

    # -- receiving ---------------------------------------------------------------------------

    def _gave_up(self, channel: str, waited_s: float) -> None:
        """Record a request that will never be answered at what it waited so far: a lower
        bound, but in the tail where it belongs (the caller counts it)."""
        hist = self._interval_hists.get(channel)
        if hist is None:
            hist = self._interval_hists[channel] = new_histogram()
        hist.record_value(min(max(int(waited_s * 1e6), 1), HIST_MAX_US))

    def _answered(self, sent: _Outstanding, now: float) -> int:
        """Count one answered request and record its latency, from the intended send time,
        in its channel's histogram; returns that latency in µs (clipped to the histogram)."""
        self._per_conn[sent.conn] -= 1
        stats = self.stats
        stats.replies += 1
        stats.last_reply_at = now
        latency_us = min(max(int((now - sent.intended) * 1e6), 1), HIST_MAX_US)
        hist = self._interval_hists.get(sent.channel)
        if hist is None:
            hist = self._interval_hists[sent.channel] = new_histogram()
        hist.record_value(latency_us)
        return latency_us

    async def _receive(self, stream: anyio.abc.SocketStream, index: int) -> None:
        decoder = FrameDecoder(16 * 1024 * 1024)
        stats = self.stats
        outstanding = self._outstanding
        track = self.track_acknowledged
        admitted = stats.admitted.record_value
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
                            if response.code == "malformed" and stats.malformed_sent:
                                stats.planted_errors["malformed"] += 1
                        continue
                    if (isinstance(response, Moved) and rid is not None
                            and self._follow(rid, sent, response)):
                        continue
                    latency_us = self._answered(sent, now)
                    if isinstance(response, Reply):
                        admitted(latency_us)
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
                                status, response.result.payment_id, sent.amount, sent.currency
                            )
                    elif isinstance(response, ErrorReply):
                        stats.errors[response.code] += 1
                        if response.code == sent.planted:
                            stats.planted_errors[response.code] += 1
                    elif isinstance(response, Moved):
                        stats.errors["moved"] += 1  # not followed (see _follow)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            pass
        self._lose_connection(index, stream)

    async def _receive_wire(self, stream: anyio.abc.SocketStream, index: int) -> None:
        """:meth:`_receive` for a plugged-in wire: it matches replies, this measures them.

        A reply that matches no request is counted under ``unmatched_reply``: never dropped.
        """
        assert self.wire is not None
        feed = self.wire.feed
        stats = self.stats
        outstanding = self._outstanding
        track = self.track_acknowledged
        try:
            while True:
                data = await stream.receive(65536)
                now = _now()
                for answer in feed(index, data):
                    rid = answer.rid
                    sent = outstanding.pop(rid, None) if rid is not None else None
                    if sent is None:
                        stats.errors[answer.error or UNMATCHED] += 1
                        if answer.error == "malformed" and stats.malformed_sent:
                            stats.planted_errors["malformed"] += 1
                        continue
                    latency_us = self._answered(sent, now)
                    status = answer.status
                    if status is None:
                        stats.errors[answer.error or "error"] += 1
                        if answer.error and answer.error == sent.planted:
                            stats.planted_errors[answer.error] += 1
                        continue
                    stats.admitted.record_value(latency_us)  # a result, as over msgpack
                    if answer.replay:
                        stats.replays += 1
                    else:
                        stats.by_status[status] += 1
                        stats.by_channel[(sent.channel, status)] += 1
                    if track:
                        stats.acknowledged[sent.key] = Acknowledged(
                            status, answer.payment_id, sent.amount, sent.currency)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionError):
            pass
        self._lose_connection(index, stream)
