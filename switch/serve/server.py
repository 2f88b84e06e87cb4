"""The TCP face of the switch: connections, framing, admission, batched replies.

Each connection runs a reader (this task) and a writer. The reader pulls up to
``read_bytes`` at a time, parses every complete frame, and hands each payment to a pool
of worker tasks, so replies can come back out of order (pipelining). Replies are queued
on the connection and the writer sends everything queued in one write.

Why a pool and not a task per payment: with anyio 4.16, ``start_soon`` measured ~47 us
per task (a TaskHandle, two Events and a cancel scope each) against ~3 us to hand a job
to an idle worker through a memory stream. Workers are spawned only when none is idle,
and each admitted payment reserves one, so the pool never exceeds the in-flight bound.

Bounds, each with its own refusal: connections (``max_connections``), frame size
(``max_frame_bytes``: the connection is closed, since the stream cannot be re-synced),
payments in flight per connection and in total (refused as ``overloaded``). A bad frame
only ever affects its own connection.

The handler takes any anyio ``ByteStream``: TCP in production, in-memory streams in
simulation tests.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import anyio.abc

from switch import reasons
from switch.clock import backend_clock
from switch.observability.metrics import SwitchMetrics
from switch.payment.pipeline import Pipeline, Rejected
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    FrameTooLarge,
    Pay,
    Ping,
    Pong,
    Query,
    Reply,
    ReplyEncoder,
    Response,
    decode_request,
)
from switch.serve.config import ServerConfig

log = logging.getLogger(__name__)

_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class _Connection:
    """Per-connection state: the reply queue, its writer, and the in-flight count."""

    __slots__ = ("closing", "in_flight", "out", "sending", "stream", "wakeup", "writer_failed")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.out = ReplyEncoder()
        self.wakeup = anyio.Event()
        self.in_flight = 0
        self.closing = False
        self.writer_failed = False
        self.sending = False

    @property
    def flushed(self) -> bool:
        return self.writer_failed or (not len(self.out) and not self.sending)

    def reply(self, response: Response) -> None:
        self.out.add(response)
        self.wakeup.set()

    async def write_loop(self) -> None:
        """Send whatever is queued, in one write per wake-up, until closed and drained."""
        while True:
            if not len(self.out):
                if self.closing and self.in_flight == 0:
                    return
                self.wakeup = anyio.Event()
                await self.wakeup.wait()
                continue
            data = self.out.take()
            self.sending = True
            try:
                await self.stream.send(data)
                self.sending = False
            except _CLOSED:
                # Peer gone: payments in flight still finish and are journaled; only their
                # replies are dropped. A retry with the same key will find them.
                self.writer_failed = True
                self.closing = True
                return


class Server:
    def __init__(self, pipeline: Pipeline, config: ServerConfig, metrics: SwitchMetrics) -> None:
        self.pipeline = pipeline
        self.config = config
        self.metrics = metrics
        self.connections = 0
        self.in_flight = 0
        self.draining = False
        self._open: set[_Connection] = set()
        self._idle = anyio.Event()
        self._idle.set()
        # The worker pool. The job stream's buffer equals the total in-flight bound, so
        # ``send_nowait`` cannot block: admission already refused anything beyond it.
        self._jobs_in, self._jobs_out = anyio.create_memory_object_stream[
            tuple[_Connection, Pay, float]
        ](config.max_in_flight_total)
        self._now = anyio.current_time  # rebound to the loop's own clock in run_workers
        self._workers_group: anyio.abc.TaskGroup | None = None
        self.workers = 0
        self._idle_workers = 0

    async def run_workers(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Host the worker pool; runs until cancelled. Start it before serving."""
        self._now = backend_clock()
        async with anyio.create_task_group() as tg:
            self._workers_group = tg
            task_status.started()
            await anyio.sleep_forever()

    async def _worker(self) -> None:
        receive = self._jobs_out
        while True:
            conn, request, admitted_at = await receive.receive()
            if self._now() - admitted_at > self.config.max_queue_delay_s:
                # The switch is CPU-bound and this payment waited too long to even start:
                # refuse it (nothing journaled yet) so what is admitted keeps a bounded
                # latency, instead of every payment getting slower together.
                self._refuse(conn, request.id, reasons.E_OVERLOADED,
                             f"queued longer than max_queue_delay_s="
                             f"{self.config.max_queue_delay_s}")
                self._done(conn)
                self._idle_workers += 1
                continue
            await self._process(conn, request)
            self._idle_workers += 1

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Accept connections until cancelled."""
        await listener.serve(self.handle_connection)

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        cfg = self.config
        if self.connections >= cfg.max_connections or self.draining:
            code = reasons.E_SHUTTING_DOWN if self.draining else reasons.E_OVERLOADED
            refusal = ReplyEncoder()
            refusal.add(
                ErrorReply(
                    None,
                    code,
                    f"connection refused: {code} (max_connections={cfg.max_connections})",
                )
            )
            self.metrics.rejected[code].inc()
            with contextlib.suppress(*_CLOSED):
                await stream.send(refusal.take())
            await stream.aclose()
            return
        self.connections += 1
        self.metrics.connections.set(self.connections)
        conn = _Connection(stream)
        self._open.add(conn)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.write_loop)
                await self._read_loop(conn, tg)
                conn.closing = True
                conn.wakeup.set()
        finally:
            self._open.discard(conn)
            self.connections -= 1
            self.metrics.connections.set(self.connections)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_loop(self, conn: _Connection, tg: anyio.abc.TaskGroup) -> None:
        cfg = self.config
        decoder = FrameDecoder(cfg.max_frame_bytes)
        metrics = self.metrics
        stream = conn.stream
        while not conn.writer_failed:
            try:
                data = await stream.receive(cfg.read_bytes)
            except _CLOSED:
                return
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                metrics.frame_errors[reasons.E_FRAME_TOO_LARGE].inc()
                metrics.rejected[reasons.E_FRAME_TOO_LARGE].inc()
                conn.reply(ErrorReply(None, reasons.E_FRAME_TOO_LARGE, str(exc)))
                log.warning("closing connection: %s", exc)
                return
            for payload in frames:
                request = decode_request(payload)
                if isinstance(request, Pay):
                    self._admit(conn, tg, request)
                elif isinstance(request, ErrorReply):
                    metrics.frame_errors[request.code].inc()
                    metrics.rejected[request.code].inc()
                    conn.reply(request)
                elif isinstance(request, Query):
                    conn.reply(self._query(request))
                elif isinstance(request, Ping):
                    conn.reply(Pong(request.id))

    def _admit(self, conn: _Connection, tg: anyio.abc.TaskGroup, request: Pay) -> None:
        cfg = self.config
        if self.draining:
            self._refuse(conn, request.id, reasons.E_SHUTTING_DOWN, "switch is shutting down")
        elif conn.in_flight >= cfg.max_in_flight_per_connection:
            self._refuse(
                conn,
                request.id,
                reasons.E_OVERLOADED,
                f"max_in_flight_per_connection={cfg.max_in_flight_per_connection} reached",
            )
        elif self.in_flight >= cfg.max_in_flight_total:
            self._refuse(
                conn,
                request.id,
                reasons.E_OVERLOADED,
                f"max_in_flight_total={cfg.max_in_flight_total} reached",
            )
        else:
            conn.in_flight += 1
            self.in_flight += 1
            self._idle = anyio.Event() if self._idle.is_set() else self._idle
            self.metrics.in_flight.set(self.in_flight)
            if self._idle_workers:
                self._idle_workers -= 1  # reserve it: the job below is that worker's
            else:
                assert self._workers_group is not None, "run_workers() is not running"
                assert self.workers < self.config.max_in_flight_total
                self.workers += 1
                self._workers_group.start_soon(self._worker)
            self._jobs_in.send_nowait((conn, request, self._now()))

    def _refuse(self, conn: _Connection, request_id: int, code: str, message: str) -> None:
        self.metrics.rejected[code].inc()
        conn.reply(ErrorReply(request_id, code, message))

    async def _process(self, conn: _Connection, request: Pay) -> None:
        try:
            submitted = await self.pipeline.submit(request.payment)
            conn.reply(Reply(request.id, submitted.result, submitted.replay))
        except Rejected as exc:
            self.metrics.rejected[exc.code].inc()
            conn.reply(ErrorReply(request.id, exc.code, exc.message))
        finally:
            self._done(conn)

    def _done(self, conn: _Connection) -> None:
        conn.in_flight -= 1
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        if self.in_flight == 0:
            self._idle.set()
        if conn.in_flight == 0 and conn.closing:
            conn.wakeup.set()

    def _query(self, request: Query) -> Response:
        entry = self.pipeline.index.get(request.idempotency_key)
        if entry is None or entry.result is None:
            state = "unknown key" if entry is None else "still in flight"
            return ErrorReply(
                request.id, reasons.E_NOT_FOUND, f"{request.idempotency_key!r}: {state}"
            )
        return Reply(request.id, entry.result, replay=True)

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
