"""The ISO 8583 acquirer listener: a thin IO shell around :mod:`switch.protocols.iso8583_acquirer`.

Acquirers connect over TCP and send 2-byte length-prefixed messages, pipelined: answers
come back in completion order and the acquirer matches them by its key fields (MTI
class + DE11 + DE41, as jPOS QMUX does), which every response echoes.

Per connection a reader parses every complete frame of each 64 KiB read and hands each
payment or reversal to a pool of worker tasks (as switch/serve/server.py does: a task
per request measured ~50-100 us here, a hand-off to an idle worker a few); the answer
is queued on the connection, and a writer sends everything queued in one write.
Network management (0800) is answered inline. Workers are spawned only when none is
idle, and each admitted request reserves one, so the pool never exceeds the in-flight
bound.

Bounds, each with its refusal:
- connections (``max_connections``; at the limit, the longest-idle connection with
  nothing in flight and no answer owed is closed to make room, so idle sockets cannot
  lock acquirers out, and no answer already queued is dropped for a newcomer)
  and connections per source address (``max_connections_per_source``): the new
  connection is closed at once (there is no request yet to answer);
- ``handshake_timeout_s`` to the first complete frame and ``idle_timeout_s`` with
  nothing read, nothing in flight and no answer owed: the connection is closed (one
  sweeper task; the logic is switch/serve/conntable.py, shared with the msgpack door);
  so is one whose peer has taken none of its owed answers for ``idle_timeout_s``;
- the reply buffer (``max_reply_buffer_bytes``): 0800 echoes, 91 refusals and 30 format
  errors are answered at once, outside the in-flight bound, so a peer that sends but
  does not read its answers would grow it without end; past it the connection is closed;
- frame size (``max_frame_bytes``): the stream cannot be re-synced, so the connection
  is closed;
- in flight per connection and in total: the request is answered with DE39 91;
- an unreadable message gets DE39 30 when its MTI can be read (the response echoes the
  key fields read before the error, and a field the switch does not know stops the
  reading only there: :func:`~switch.protocols.iso8583_acquirer.answerable_part`);
  otherwise it is counted and dropped, and
  the connection stays up (framing is intact).

A repeat of a payment whose reversal was accepted is never answered 00
(``Iso8583Door._reversed_since``): the core keeps the approval as the key's stored answer
until the resolver has reversed it at the issuer, so a repeat meanwhile replayed the
approval, auth code and all, for a payment being reversed (50 ms with a live issuer; for
as long as the issuer is unreachable, and across a restart, otherwise).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc
import msgspec

from switch import reasons
from switch.clock import backend_clock
from switch.model import Result, Status
from switch.payment.reversal import MAX_REVERSALS_IN_FLIGHT
from switch.protocols.errors import CodecError
from switch.protocols.iso8583 import FrameDecoder, IsoMessage, frame
from switch.protocols.iso8583_acquirer import (
    AcquirerCodec,
    AcquirerFormatError,
    NetworkRequest,
    PaymentCall,
    ReversalCall,
    Unsupported,
    answerable_part,
    format_error_response,
    network_response,
    parse_request,
    payment_response,
    refusal_response,
    reversal_response,
)
from switch.serve.config import Iso8583DoorConfig
from switch.serve.conntable import ConnectionTable, peer_source
from switch.serve.frontcore import FrontCore

log = logging.getLogger(__name__)

_CLOSED = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)

#: The newest record of a payment that says whether it is finished. A reversal is made
#: durable by journaling the payment's intent again (frontcore.py), and nothing else
#: journals an intent after a final: an approval whose newest record is an intent has a
#: reversal accepted and still under way (after a restart too). ``{schema}``: live or
#: archive (FrontCore reads the live journal first).
REOPENED_SQL: Final = (
    "SELECT kind FROM {schema}.journal WHERE payment_id = ?"
    " AND kind IN ('intent', 'final', 'unknown') ORDER BY seq DESC LIMIT 1")

class _Reversing:
    """Reversals of one original in progress in this door; ``done`` when none is left."""

    __slots__ = ("count", "done")

    def __init__(self) -> None:
        self.count = 0
        self.done = anyio.Event()


class _Conn:
    __slots__ = ("_clock", "closing", "dead", "framed", "in_flight", "last_read", "opened",
                 "out", "scope", "sending", "source", "stream", "wakeup", "write_began")

    def __init__(self, stream: anyio.abc.ByteStream, source: str, now: float,
                 clock: Callable[[], float] = anyio.current_time) -> None:
        self.stream = stream
        self.source = source
        self._clock = clock
        self.out = bytearray()
        self.wakeup = anyio.Event()
        self.in_flight = 0
        self.closing = False
        #: Nothing more is sent: the peer is gone or the connection was killed.
        self.dead = False
        self.framed = False  # a complete frame arrived (the "handshake")
        self.sending = False  # a write is under way
        self.opened = now
        self.last_read = now
        self.write_began = now
        self.scope: anyio.CancelScope | None = None

    def kill(self) -> None:
        """Stop this connection now: reader and writer are cancelled and the stream
        closed. Payments it handed to the core still finish and are journaled; their
        answers are dropped (a repeat with the same key fields gets the stored one)."""
        self.dead = True
        self.closing = True
        self.out.clear()
        if self.scope is not None:
            self.scope.cancel()

    async def write_loop(self) -> None:
        while True:
            if self.dead:
                return
            if not self.out:
                if self.closing and self.in_flight == 0:
                    return
                self.wakeup = anyio.Event()
                await self.wakeup.wait()
                continue
            data = bytes(self.out)
            self.out.clear()
            self.sending = True
            self.write_began = self._clock()
            try:
                await self.stream.send(data)
            except _CLOSED:
                # Peer gone: payments in flight still finish and are journaled; their
                # answers are dropped rather than buffered for no one.
                self.dead = True
                self.closing = True
                return
            finally:
                self.sending = False

    @property
    def flushed(self) -> bool:
        """Every answer queued has been handed to the socket (or nobody is there)."""
        return self.dead or (not self.out and not self.sending)

    @property
    def owed(self) -> bool:
        """Answers queued or being written: the connection table never evicts or sweeps
        such a connection as idle (switch/serve/conntable.py says why)."""
        return not self.flushed


class Iso8583Door:
    def __init__(self, core: FrontCore, config: Iso8583DoorConfig) -> None:
        self.core = core
        self.config = config
        self.codec = AcquirerCodec(config.bitmap)
        self.key_fields = tuple(config.key_fields)
        self._conns: ConnectionTable[_Conn] = ConnectionTable(config, log)
        self._now = anyio.current_time  # rebound to the loop's own clock in start()
        self.in_flight = 0
        self.draining = False
        #: Messages by MTI, refusals and format errors by reason: what the door saw.
        self.counts: Counter[str] = Counter()
        self._idle = anyio.Event()
        self._idle.set()
        self._accept_scope = anyio.CancelScope()
        # The job stream holds at most the in-flight bound: admission refused the rest.
        self._jobs_in, self._jobs_out = anyio.create_memory_object_stream[
            tuple[_Conn, PaymentCall | ReversalCall]](config.max_in_flight_total)
        self._workers: anyio.abc.TaskGroup | None = None
        self.workers = 0
        self._idle_workers = 0
        #: Original keys with a reversal being decided now (at most the in-flight bound).
        self._reversing: dict[str, _Reversing] = {}
        #: Original key -> payment id of approvals whose reversal this door answered 00,
        #: oldest first; MAX_REVERSALS_IN_FLIGHT at most (then those the resolver finished
        #: go, then the oldest: the journal still tells, see REOPENED_SQL).
        self._reversed: OrderedDict[str, str] = OrderedDict()

    @property
    def connections(self) -> int:
        return self._conns.count

    async def start(self, tg: anyio.abc.TaskGroup) -> int:
        """Listen, and accept into ``tg`` until :meth:`drain`; returns the port.

        The sweeper runs in ``tg`` too: connections still open while draining keep
        their timeouts."""
        self._now = backend_clock()
        scope = self._accept_scope
        listener = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port)
        port: int = listener.extra(anyio.abc.SocketAttribute.local_port)
        await tg.start(self._host_workers)

        async def accept() -> None:
            with scope:
                async with listener:
                    await listener.serve(self.handle_connection, task_group=tg)

        tg.start_soon(accept)
        tg.start_soon(self._conns.run_sweeper, self._now)
        return port

    async def _host_workers(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as workers:
            self._workers = workers
            task_status.started()
            await anyio.sleep_forever()

    async def _worker(self) -> None:
        async for conn, call in self._jobs_out:
            await self._process(conn, call)
            self._idle_workers += 1

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        source = peer_source(stream)
        if self.draining:
            refusal = reasons.E_SHUTTING_DOWN
        else:
            refusal = reasons.E_OVERLOADED if self._conns.refusal(source) else ""
        if refusal:
            self.counts["refused_connection"] += 1
            self.core.metrics.rejected[refusal].inc()
            await stream.aclose()
            return
        conn = _Conn(stream, source, self._now(), self._now)
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

    def _send(self, conn: _Conn, msg: IsoMessage) -> None:
        if conn.dead:
            return
        try:
            conn.out += frame(self.codec.encode(msg))
        except CodecError as exc:  # a value we echo does not fit: a bug, not the peer's
            log.error("cannot encode %s response: %s", msg.mti, exc)
            return
        limit = self.config.max_reply_buffer_bytes
        if len(conn.out) > limit:
            # The peer does not read its answers: drop it rather than buffer without end.
            self.counts["reply_buffer_full"] += 1
            log.warning("closing ISO 8583 connection from %s: reply buffer over %d bytes "
                        "(max_reply_buffer_bytes)", conn.source, limit)
            conn.kill()
            return
        conn.wakeup.set()

    async def _read_loop(self, conn: _Conn) -> None:
        cfg = self.config
        decoder = FrameDecoder(cfg.max_frame_bytes)
        while not conn.closing:
            try:
                data = await conn.stream.receive(cfg.read_bytes)
            except _CLOSED:
                return
            conn.last_read = self._now()
            try:
                frames = decoder.feed(data)
            except CodecError as exc:
                self.counts["frame_too_large"] += 1
                self.core.metrics.frame_errors[reasons.E_FRAME_TOO_LARGE].inc()
                self.core.metrics.rejected[reasons.E_FRAME_TOO_LARGE].inc()
                log.warning("closing ISO 8583 connection: %s", exc)
                return
            if frames or not decoder.buffered:
                # Every byte read made complete frames: zero-length keep-alives, which the
                # decoder drops, prove the peer speaks the framing as well as a message.
                conn.framed = True
            for payload in frames:
                if conn.dead:
                    return  # killed, or the peer is gone: nobody to answer the rest
                self._handle(conn, payload)

    def _format_error(self, conn: _Conn, partial: IsoMessage | None, exc: CodecError) -> None:
        self.counts["format_error"] += 1
        self.core.metrics.frame_errors[reasons.E_MALFORMED].inc()
        self.core.metrics.rejected[reasons.E_MALFORMED].inc()
        log.info("ISO 8583 format error: %s", exc)
        answer = format_error_response(partial)
        if answer is not None:
            self._send(conn, answer)
        else:
            self.counts["unanswerable"] += 1

    def _handle(self, conn: _Conn, payload: bytes) -> None:
        try:
            msg = self.codec.decode(payload)
        except AcquirerFormatError as exc:
            self._format_error(conn, answerable_part(exc, payload, self.codec.spec), exc)
            return
        self.counts[msg.mti] += 1
        try:
            call = parse_request(msg, self.key_fields)
        except Unsupported as exc:  # readable, but not a transaction the switch takes
            self.counts[f"unsupported_{exc.code}"] += 1
            self.core.metrics.rejected[reasons.E_INVALID].inc()
            log.info("ISO 8583 request not taken: %s", exc)
            answer = format_error_response(msg, exc.code)
            if answer is not None:
                self._send(conn, answer)
            return
        except CodecError as exc:
            self._format_error(conn, msg, exc)
            return
        if isinstance(call, NetworkRequest):
            self._send(conn, network_response(msg))
            return
        refusal = self._admit(conn)
        if refusal:
            self.counts[f"refused_{refusal}"] += 1
            self.core.metrics.rejected[refusal].inc()
            self._send(conn, refusal_response(msg, refusal))
            return
        if self._idle_workers:
            self._idle_workers -= 1  # reserved: the job below is that worker's
        else:
            assert self._workers is not None, "start() hosts the workers"
            self.workers += 1
            self._workers.start_soon(self._worker)
        self._jobs_in.send_nowait((conn, call))

    def _admit(self, conn: _Conn) -> str:
        cfg = self.config
        if self.draining:
            return reasons.E_SHUTTING_DOWN
        if (conn.in_flight >= cfg.max_in_flight_per_connection
                or self.in_flight >= cfg.max_in_flight_total):
            return reasons.E_OVERLOADED
        conn.in_flight += 1
        self.in_flight += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        return ""

    async def _process(self, conn: _Conn, call: PaymentCall | ReversalCall) -> None:
        try:
            if isinstance(call, PaymentCall):
                outcome = await self.core.submit(call.request)
                result = outcome.result
                if result is None:
                    self.counts[f"refused_{outcome.error_code}"] += 1
                    answer = refusal_response(call.message, outcome.error_code,
                                              outcome.error_message)
                elif result.status is Status.APPROVED:
                    answer = await self._approval_answer(call, result, outcome.replay)
                else:
                    answer = payment_response(call.message, result)
            else:
                code = await self._reverse(call)
                answer = reversal_response(call.message, code)
            self._send(conn, answer)
        finally:
            conn.in_flight -= 1
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            if conn.in_flight == 0 and conn.closing:
                conn.wakeup.set()

    # ------------------------------------------------------------------ reversed approvals

    async def _reverse(self, call: ReversalCall) -> str:
        key = call.original_key
        reversing = self._reversing.get(key)
        if reversing is None:
            reversing = self._reversing[key] = _Reversing()
        reversing.count += 1
        try:
            code = await self.core.reverse(key, amount=call.amount)
            if code == reasons.APPROVED:
                stored = self.core.stored(key)
                if stored is not None and stored.status is Status.APPROVED:
                    self._note_reversed(key, stored.payment_id)
            return code
        finally:
            reversing.count -= 1
            if reversing.count == 0:
                del self._reversing[key]
                reversing.done.set()

    def _note_reversed(self, key: str, payment_id: str) -> None:
        marks = self._reversed
        if key not in marks and len(marks) >= MAX_REVERSALS_IN_FLIGHT:
            # Those the resolver finished answer 68 by themselves (their stored result is
            # ``reversed``); a key the index let go is the core's business.
            for done in [k for k, pid in marks.items() if not self._stored_approval(k, pid)]:
                del marks[done]
            while len(marks) >= MAX_REVERSALS_IN_FLIGHT:
                marks.popitem(last=False)
        marks[key] = payment_id
        assert len(marks) <= MAX_REVERSALS_IN_FLIGHT

    def _stored_approval(self, key: str, payment_id: str) -> bool:
        stored = self.core.stored(key)
        return (stored is not None and stored.payment_id == payment_id
                and stored.status is Status.APPROVED)

    async def _approval_answer(self, call: PaymentCall, result: Result,
                               replay: bool) -> IsoMessage:
        """The 0110/0210 for an approval: 00, unless a reversal of it was accepted.

        The core keeps the approval as the key's stored answer until the resolver has
        reversed it at the issuer; a repeat meanwhile was a replay of it, auth code and
        all (no second booking, but the acquirer heard "approved" for a payment being
        undone, and its merchant completed a sale with nothing held). It answers as the
        reversed payment will: 68, no DE38.
        """
        try:
            reversed_ = await self._reversed_since(call.request.idempotency_key, result,
                                                   replay)
        except sqlite3.Error as exc:
            # Cannot tell whether it is being reversed: never 00 for what may be.
            log.error("ISO 8583 repeat of %s: journal unreadable: %s", result.payment_id, exc)
            return refusal_response(call.message, reasons.E_UNAVAILABLE)
        if reversed_:
            self.counts["repeat_of_reversed"] += 1
            result = msgspec.structs.replace(result, status=Status.REVERSED)
        return payment_response(call.message, result)

    async def _reversed_since(self, key: str, result: Result, replay: bool) -> bool:
        """Was a reversal of the approval ``result`` (the stored answer of ``key``) accepted?

        A reversal of it being decided in this door now is waited for (bounded: the core
        answers a reversal within its own bounds), so a pipelined 0400 and repeat get one
        story. Then: this door answered a reversal of it 00, or, for a replay, the
        journal holds the reversal (an intent journaled after the approval: a reversal
        accepted before a restart, or one this door no longer remembers).
        """
        reversing = self._reversing.get(key)
        waited = reversing is not None
        if reversing is not None:
            await reversing.done.wait()
        if self._reversed.get(key) == result.payment_id:
            return True  # (the payment id: a key reused after the index let it go is new)
        if not (replay or waited):
            return False  # a first answer: nothing reversed it before it was given
        rows = await self.core._query(REOPENED_SQL, (result.payment_id,))
        return bool(rows) and rows[0][0] == "intent"

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for those in flight. True if all finished."""
        self.draining = True
        self._accept_scope.cancel()
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
            # Every answer is queued; the connections are cancelled right after the drain,
            # so wait until the writers sent them (as the msgpack door does): an answer
            # queued last was lost at shutdown though its payment was journaled.
            while not all(conn.flushed for conn in self._conns.open):
                await anyio.sleep(0.001)
            return True
        return False

