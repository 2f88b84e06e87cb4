"""The TCP face of the switch: connections, framing, admission, batched replies.

Each connection has a reader (this task) and a writer. The reader pulls up to
``read_bytes`` at a time, parses every complete frame, sheds what is over a bound at once
(``overloaded``, a few microseconds), and hands every admitted payment of that read to
the payment core together (:meth:`Engine.requests`). No task, Event or cancel scope
exists per payment: the core answers through :meth:`_Connection.reply`, which only
appends to the connection's reply buffer; the writer sends everything buffered in one
write per wake-up, so replies come back out of order (pipelining), batched.

Bounds, each with its own refusal:
* connections (``max_connections``; at the limit, the longest-idle connection with
  nothing in flight and no reply owed is closed to make room, so idle sockets cannot
  lock clients out, and no reply already queued is dropped for a newcomer) and
  connections per source address (``max_connections_per_source``);
* frame size (``max_frame_bytes``: the connection is closed, the stream cannot re-sync);
* payments in flight per connection: frames already read past it are refused, and the
  reader stops reading until replies bring it back under the bound (backpressure into
  the client's socket);
* payments in flight in total (``max_in_flight_total``), and below it an adaptive limit
  (:class:`Admission`): the event loop's lag is sampled every 5 ms; while its average
  exceeds 3 ms the limit shrinks (to 3/4 of what is in flight, per sample), otherwise it
  grows back (+10%). So
  under overload the switch admits what it can finish promptly and refuses the rest at
  once, instead of letting every payment wait in socket buffers. While shedding, a
  frame is refused after decoding only its op and id (a microsecond or two);
* the reply buffer (``max_reply_buffer_bytes``): a client that does not read its replies
  is disconnected;
* ``handshake_timeout_s`` to the first complete frame and ``idle_timeout_s`` with
  nothing read, nothing in flight and no reply owed, checked by one sweeper task (a
  client that has taken none of its owed replies for ``idle_timeout_s`` is closed).

The connection bounds (count, per source, eviction, timeouts) live in
switch/serve/conntable.py, shared with the ISO 8583 door.

In a cluster (``shard_map`` with more than one address), a payment or query for a key
another worker owns is answered ``moved`` with the owner's address before admission:
nothing is journaled here (switch/protocols/shardmap.py). ``shards`` returns the map.

A bad frame only ever affects its own connection. The handler takes any anyio
``ByteStream``: TCP in production, in-memory streams in simulation tests.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Final

import anyio
import anyio.abc
import msgspec

from switch import reasons
from switch.clock import backend_clock
from switch.model import PaymentRequest
from switch.observability.metrics import SwitchMetrics
from switch.protocols.iso8583_acquirer import KEY_PREFIX as ISO_KEY_PREFIX
from switch.protocols.shardmap import ShardMap, shard_of
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    FrameTooLarge,
    Moved,
    Pay,
    Ping,
    Pong,
    Query,
    Reply,
    ReplyEncoder,
    Response,
    ShardMapReply,
    Shards,
    decode_request,
)
from switch.serve.config import ServerConfig
from switch.serve.conntable import ConnectionTable, peer_source
from switch.serve.engine import Engine

log = logging.getLogger(__name__)

_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
#: Event-loop lag sampling: period, and the smoothed lag above which admission shrinks.
#: Smoothed (EWMA, 0.3 per sample) so one scheduler hiccup or GC pause on a shared
#: machine does not shed; sustained lag, which is what overload looks like, does.
#: The target is small because a payment's life spans ~15 loop iterations (read, two
#: commits, the network, the reply): holding the lag at 10 ms let admitted payments take
#: ~200 ms at 3x overload, at 3 ms ~75 ms (p99, 18,000/s offered on 2 cores); it sheds
#: nothing more below ~6,000/s.
LAG_PERIOD_S: Final = 0.005
#: With nothing in flight there is nothing to steer. The 5 ms period's ~190 wake-ups a
#: second cost 190-260 us of CPU each on a 2-core VM: an idle switch used 4-5% of a core,
#: 0.7-0.8% with this period (bench/bench_idle.py, side by side).
LAG_IDLE_PERIOD_S: Final = 0.05
LAG_TARGET_S: Final = 0.003
LAG_ALPHA: Final = 0.3
#: The adaptive limit never goes below this (a quiet switch always admits a burst).
#: Under sustained overload the lag stays above target (reading and refusing is itself
#: work), so the limit sits here, and the floor is what admitted payments wait behind:
#: 256 gave 53-81 ms p99 per second at 3x overload (27,000/s offered, ~7,000/s
#: processed), 128 gave 40-73 ms with no more shed at 4,000-6,000/s; 64 and 96 began
#: shedding at 4,500/s without overload (2 rounds each, side by side, 2-core box).
ADMISSION_FLOOR: Final = 128


class _Head(msgspec.Struct):
    """Just enough of a request to refuse it: its op and id (other fields skipped)."""

    op: str = ""
    id: int | None = None


_decode_head = msgspec.msgpack.Decoder(_Head).decode


class Admission:
    """An adaptive in-flight limit, steered by event-loop lag (AIMD).

    Lag is what every admitted payment pays on top of its own work, so it is the signal
    that the switch has taken on more than it can finish promptly. Lag from slow
    networks does not show here (waiting costs no CPU), so slow networks never shrink it.
    """

    __slots__ = ("ceiling", "floor", "lag", "limit", "shrinks")

    def __init__(self, ceiling: int, floor: int = ADMISSION_FLOOR) -> None:
        assert ceiling >= 1
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.limit = ceiling
        self.shrinks = 0
        self.lag = 0.0

    def observe(self, lag_s: float, in_flight: int) -> None:
        """One lag sample, with the payments in flight at that moment."""
        assert in_flight >= 0
        self.lag += LAG_ALPHA * (max(lag_s, 0.0) - self.lag)
        if self.lag > LAG_TARGET_S:
            # From what is in flight, not from the limit: at the onset of overload the
            # limit is still the ceiling, far above what is in flight, and shrinking it
            # by a quarter a sample admitted a burst for ten samples more, the slowest
            # second of every overload (78 ms p99 against ~45 ms after it, 20,000/s).
            self.limit = max(self.floor, int(min(self.limit, in_flight) * 0.75))
            self.shrinks += 1
        elif self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit + max(4, self.limit // 10))
        assert self.floor <= self.limit <= self.ceiling


class _Connection:
    """Per-connection state: the reply buffer, its writer, and the in-flight count."""

    __slots__ = (
        "closing", "framed", "in_flight", "last_read", "opened", "out", "room", "scope",
        "sending", "server", "source", "stream", "wakeup", "write_began", "writer_failed",
    )

    def __init__(self, stream: anyio.abc.ByteStream, server: Server, source: str,
                 now: float) -> None:
        self.stream = stream
        self.server = server
        self.source = source
        self.out = ReplyEncoder()
        self.wakeup = anyio.Event()
        self.room: anyio.Event | None = None  # set when in_flight drops below the bound
        self.in_flight = 0
        self.closing = False
        self.writer_failed = False
        self.sending = False
        self.framed = False  # a complete frame arrived (the "handshake")
        self.opened = now
        self.last_read = now
        self.write_began = now
        self.scope: anyio.CancelScope | None = None

    @property
    def flushed(self) -> bool:
        return self.writer_failed or (not len(self.out) and not self.sending)

    @property
    def owed(self) -> bool:
        """Replies queued or being written: the connection table never evicts or sweeps
        such a connection as idle (switch/serve/conntable.py says why)."""
        return not self.flushed

    def reply(self, response: Response) -> None:
        """The core's answer to a payment this connection handed it (exactly one each)."""
        self.in_flight -= 1
        self.server._answered(self)
        self.send(response)

    def send(self, response: Response) -> None:
        if self.writer_failed:
            return
        self.out.add(response)
        if len(self.out) > self.server.config.max_reply_buffer_bytes:
            # The client does not read its replies: drop it rather than buffer without end.
            log.warning("closing connection from %s: reply buffer over %d bytes",
                        self.source, self.server.config.max_reply_buffer_bytes)
            self.kill()
            return
        self.wakeup.set()

    def kill(self) -> None:
        """Stop this connection now: reader and writer are cancelled and the stream
        closed. Payments it handed to the core still finish and are journaled; their
        replies are dropped (a retry with the same key finds them)."""
        self.writer_failed = True
        self.closing = True
        self.out.take()
        if self.scope is not None:
            self.scope.cancel()

    async def write_loop(self) -> None:
        """Send whatever is queued, in one write per wake-up, until closed and drained."""
        while True:
            if self.writer_failed:
                return
            if not len(self.out):
                if self.closing and self.in_flight == 0:
                    return
                self.wakeup = anyio.Event()
                await self.wakeup.wait()
                continue
            data = self.out.take()
            self.sending = True
            self.write_began = self.server._now()
            try:
                await self.stream.send(data)
                self.sending = False
            except _CLOSED:
                # Peer gone: payments in flight still finish and are journaled; only their
                # replies are dropped. A retry with the same key will find them.
                self.sending = False
                self.writer_failed = True
                self.closing = True
                return


class Server:
    def __init__(self, engine: Engine, config: ServerConfig, metrics: SwitchMetrics,
                 shard_map: ShardMap | None = None, shard: int = 0) -> None:
        self.engine = engine
        self.shard_map = shard_map if shard_map is not None else ShardMap()
        self.shard = shard
        #: Shards in the cluster; 1: standalone, no ownership check.
        self.shards = len(self.shard_map.addresses)
        self.config = config
        self.metrics = metrics
        self.in_flight = 0
        self.draining = False
        self._conns: ConnectionTable[_Connection] = ConnectionTable(config, log)
        self._idle = anyio.Event()
        self._idle.set()
        self._now = anyio.current_time  # rebound to the loop's own clock in run_workers
        self.admission = Admission(config.max_in_flight_total)
        self._lag = 0.0
        # payswitch_in_flight_payments and payswitch_open_connections count every door:
        # SwitchApp reads this door's ``in_flight`` and ``connections`` at scrape time.

    @property
    def connections(self) -> int:
        return self._conns.count

    @property
    def _open(self) -> set[_Connection]:
        return self._conns.open

    @property
    def pipeline(self) -> Engine:
        """The awaitable façade (``submit``) and the idempotency index, as before."""
        return self.engine

    async def run_workers(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The engine and the sweeper; runs until cancelled. Start it before serving."""
        self._now = backend_clock()
        async with anyio.create_task_group() as tg:
            await tg.start(self.engine.run)
            tg.start_soon(self._conns.run_sweeper, self._now)
            tg.start_soon(self._watch_lag)
            task_status.started()

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Accept connections until cancelled."""
        await listener.serve(self.handle_connection)

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        source = peer_source(stream)
        refusal = ""
        if self.draining:
            refusal = reasons.E_SHUTTING_DOWN
            detail = "switch is shutting down"
        else:
            detail = self._conns.refusal(source)
            if detail:
                refusal = reasons.E_OVERLOADED
        if refusal:
            encoder = ReplyEncoder()
            encoder.add(ErrorReply(None, refusal, f"connection refused: {refusal} ({detail})"))
            self.metrics.rejected[refusal].inc()
            with contextlib.suppress(*_CLOSED):
                await stream.send(encoder.take())
            await stream.aclose()
            return
        conn = _Connection(stream, self, source, self._now())
        self._conns.add(conn)
        try:
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                tg.start_soon(conn.write_loop)
                await self._read_loop(conn)
                conn.closing = True
                conn.wakeup.set()
        finally:
            self._conns.remove(conn)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_loop(self, conn: _Connection) -> None:
        cfg = self.config
        decoder = FrameDecoder(cfg.max_frame_bytes)
        metrics = self.metrics
        stream = conn.stream
        engine = self.engine
        measure = engine.measure
        per_connection = cfg.max_in_flight_per_connection
        shards = self.shards
        own = self.shard
        while not conn.writer_failed:
            if conn.in_flight >= per_connection:
                # Backpressure: read no more until replies bring us under the bound.
                conn.room = anyio.Event()
                await conn.room.wait()
                conn.room = None
                continue
            try:
                data = await stream.receive(cfg.read_bytes)
            except _CLOSED:
                return
            read_at = measure()
            conn.last_read = self._now()
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                metrics.frame_errors[reasons.E_FRAME_TOO_LARGE].inc()
                metrics.rejected[reasons.E_FRAME_TOO_LARGE].inc()
                conn.send(ErrorReply(None, reasons.E_FRAME_TOO_LARGE, str(exc)))
                log.warning("closing connection: %s", exc)
                return
            if not frames:
                continue
            conn.framed = True
            admitted: list[tuple[int, PaymentRequest]] = []
            for payload in frames:
                if self._shedding(conn):
                    try:
                        head = _decode_head(payload)
                    except (msgspec.DecodeError, RecursionError, ValueError):
                        # Not a readable pay: decode_request below answers it "malformed".
                        # Only DecodeError was caught once: a frame nested 5,000 deep
                        # (RecursionError) or with invalid UTF-8 (ValueError) read while
                        # shedding ended the whole switch.
                        head = None
                    if head is not None and head.op == "pay" and head.id is not None:
                        self._admit(conn, head.id)  # refuses it, naming the bound
                        continue
                request = decode_request(payload)
                if isinstance(request, Pay) and request.payment.idempotency_key.startswith(
                        ISO_KEY_PREFIX):
                    request = ErrorReply(request.id, reasons.E_INVALID,
                                         f"payment.idempotency_key: may not begin with "
                                         f"{ISO_KEY_PREFIX!r}: the ISO 8583 door's keys do")
                if isinstance(request, Pay):
                    if shards > 1:
                        owner = shard_of(request.payment.idempotency_key, shards)
                        if owner != own:
                            conn.send(self._moved(request.id, owner))
                            continue
                    if self._admit(conn, request.id):
                        admitted.append((request.id, request.payment))
                elif isinstance(request, ErrorReply):
                    # payswitch_frame_errors_total's kinds are malformed, invalid and
                    # frame_too_large (docs/metrics.md): a frame naming an unknown op is
                    # a well-formed frame that is no valid request, so kind "invalid";
                    # the refusal itself is counted by its own reason, unknown_op.
                    kind = (reasons.E_INVALID if request.code == reasons.E_UNKNOWN_OP
                            else request.code)
                    metrics.frame_errors[kind].inc()
                    metrics.rejected[request.code].inc()
                    conn.send(request)
                elif isinstance(request, Query):
                    owner = shard_of(request.idempotency_key, shards) if shards > 1 else own
                    conn.send(self._query(request) if owner == own
                              else self._moved(request.id, owner))
                elif isinstance(request, Ping):
                    conn.send(Pong(request.id))
                elif isinstance(request, Shards):
                    conn.send(ShardMapReply(request.id, own, list(self.shard_map.addresses)))
            if admitted:
                # Every payment of this read enters the core together: their journal
                # records share one group commit, their replies one write.
                engine.requests(conn, admitted, read_at)

    def _shedding(self, conn: _Connection) -> bool:
        return (self.in_flight >= self.admission.limit or self.draining
                or conn.in_flight >= self.config.max_in_flight_per_connection
                or self.admission.lag > self.config.max_queue_delay_s)

    def _admit(self, conn: _Connection, request_id: int) -> bool:
        """Shed before any processing: a refusal costs microseconds."""
        cfg = self.config
        if self.draining:
            self._refuse(conn, request_id, reasons.E_SHUTTING_DOWN, "switch is shutting down")
            return False
        if conn.in_flight >= cfg.max_in_flight_per_connection:
            self._refuse(conn, request_id, reasons.E_OVERLOADED,
                         f"max_in_flight_per_connection={cfg.max_in_flight_per_connection}"
                         " reached")
            return False
        if self.admission.lag > cfg.max_queue_delay_s:
            # Bytes read now waited about this long for the loop: refuse everything new
            # (nothing journaled) until the lag is back under the bound.
            self._refuse(conn, request_id, reasons.E_OVERLOADED,
                         f"event loop {self.admission.lag * 1000:.0f} ms behind "
                         f"(max_queue_delay_s={cfg.max_queue_delay_s})")
            return False
        if self.in_flight >= self.admission.limit:
            self._refuse(conn, request_id, reasons.E_OVERLOADED,
                         f"{self.in_flight} payments in flight (adaptive limit "
                         f"{self.admission.limit}, max_in_flight_total="
                         f"{cfg.max_in_flight_total})")
            return False
        conn.in_flight += 1
        self.in_flight += 1
        if self.in_flight == 1:
            self._idle = anyio.Event()
        return True

    def _answered(self, conn: _Connection) -> None:
        self.in_flight -= 1
        assert self.in_flight >= 0 and conn.in_flight >= 0
        if self.in_flight == 0:
            self._idle.set()
        if conn.room is not None and conn.in_flight < self.config.max_in_flight_per_connection:
            conn.room.set()

    def _refuse(self, conn: _Connection, request_id: int, code: str, message: str) -> None:
        self.metrics.rejected[code].inc()
        conn.send(ErrorReply(request_id, code, message))

    def _moved(self, request_id: int, owner: int) -> Moved:
        self.metrics.rejected[reasons.E_MOVED].inc()
        return Moved(request_id, owner, self.shards, self.shard_map.addresses[owner])

    def _query(self, request: Query) -> Response:
        entry = self.engine.index.get(request.idempotency_key)
        if entry is None or entry.result is None:
            state = "unknown key" if entry is None else "still in flight"
            return ErrorReply(
                request.id, reasons.E_NOT_FOUND, f"{request.idempotency_key!r}: {state}"
            )
        return Reply(request.id, entry.result, replay=True)

    async def _watch_lag(self) -> None:
        """Sample the event loop's lag and steer the adaptive admission limit."""
        measure = self.engine.measure
        while True:
            period = LAG_PERIOD_S if self.in_flight else LAG_IDLE_PERIOD_S
            before = measure()
            await anyio.sleep(period)
            self._lag = measure() - before - period
            self.admission.observe(self._lag, self.in_flight)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new payments and wait for those in flight. True if all finished."""
        self.draining = True
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
            # Every payment has its reply queued; wait until the writers sent them.
            while not all(conn.flushed for conn in self._open):
                await anyio.sleep(0.001)
            return True
        return False
