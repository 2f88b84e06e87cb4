"""The TCP machinery every simulated network shares: connections, requests, the server loop."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import anyio.abc

from channels.behaviour import Behaviour, CapacityExceeded, GateTicket, RequestPlan
from channels.books import BookStore
from channels.config import NetworkSpec
from channels.metrics import ChannelMetrics

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared server

_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class FrameSplitter(Protocol):
    def feed(self, data: bytes) -> Sequence[bytes | memoryview]: ...


class SimConnection:
    """One client connection to a simulated network."""

    __slots__ = ("_lock", "alive", "before_send", "id", "in_flight", "scope", "stream")

    def __init__(self, conn_id: int, stream: anyio.abc.ByteStream,
                 before_send: Callable[[], None] = lambda: None) -> None:
        self.id = conn_id
        self.stream = stream
        #: Called before every write: the books on disk commit what the answer reports.
        self.before_send = before_send
        self._lock = anyio.Lock()
        self.alive = True
        self.in_flight = 0
        self.scope: anyio.CancelScope | None = None

    async def send(self, data: bytes) -> bool:
        """Write one frame; False if the connection is gone (the answer is lost)."""
        if not self.alive:
            return False
        self.before_send()
        try:
            async with self._lock:
                await self.stream.send(data)
        except _CLOSED:
            self.alive = False
            return False
        return True

    async def send_within(self, data: bytes, timeout_s: float) -> bool:
        """:meth:`send`, bounded: a peer that stops reading must not stall the sender
        (a network's own pushes, such as settlement notifications).

        A write the timeout cut may have left part of the frame on the wire (trio writes
        a large frame in chunks; asyncio's transport takes it whole), and the peer would
        read the next frame's bytes as the rest of this one. So the connection is closed,
        as a network drops a peer that stopped reading: its requests are answered no
        more, and it redials.
        """
        with anyio.move_on_after(timeout_s):
            return await self.send(data)
        log.warning("connection %d: a write did not finish within %g s; closing it",
                    self.id, timeout_s)
        self.close()
        return False

    def close(self) -> None:
        self.alive = False
        if self.scope is not None:
            self.scope.cancel()

    def reset(self) -> None:
        """Drop the connection with an RST (SO_LINGER 0), cancelling what is in flight on it."""
        with contextlib.suppress(Exception):
            raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


class SimRequest(ABC):
    """One request as a network understands it; `SimServer.serve_request` drives it."""

    #: The fault scope key: a PAN (card), "DE-FR:BNPAFRPP" (SWIFT), a merchant id (QR).
    route_key: str = ""
    #: Latency the network adds on top of the behaviour's (e.g. correspondent hops); a
    #: "slow" fault multiplies it too.
    extra_latency_s: float = 0.0
    #: Set by decide()/reject(): the metrics outcome label.
    outcome: str = "other"

    def admit(self) -> None:  # noqa: B027 - optional hook
        """Called on arrival, unless swallowed: e.g. book the reference as pending."""

    def abandon(self) -> None:  # noqa: B027 - optional hook
        """Called if admitted but cancelled before decide(): undo admit()."""

    @abstractmethod
    def decide(self, technical_error: str | None) -> bytes | None:
        """The network's decision (books it) and the answer's payload."""

    @abstractmethod
    def reject(self, code: str) -> bytes | None:
        """Answer "unavailable" (`code` is ISO 8583's technical vocabulary) without processing."""


class SimServer(ABC):
    """The TCP face shared by the three simulated networks."""

    def __init__(self, spec: NetworkSpec, behaviour: Behaviour, metrics: ChannelMetrics) -> None:
        self.spec = spec
        self.name = spec.name
        #: The simulator's books on disk (channels/books.py), shared by its networks.
        self.books: BookStore | None = None
        self.behaviour = behaviour
        self.metrics = metrics
        self.port: int = spec.port
        self._conns: dict[int, SimConnection] = {}
        self._next_conn = 0
        self.refused_connections = 0
        self.bad_frames = 0

    def _flush_books(self) -> None:
        if self.books is not None:
            self.books.commit()

    # --- protocol hooks ------------------------------------------------------------------

    @abstractmethod
    def new_splitter(self) -> FrameSplitter: ...

    @abstractmethod
    def frame(self, payload: bytes) -> bytes: ...

    @abstractmethod
    def garbage(self) -> bytes:
        """A payload the client's decoder must reject (the "malformed" fault)."""

    @abstractmethod
    def parse(self, conn: SimConnection, payload: bytes) -> SimRequest | bytes | None:
        """A request to serve, an immediate answer (network management: only a blackhole
        stops it), or None (nothing to answer; the network counts why)."""

    async def background(self) -> None:
        """Network-specific background work (e.g. settlement), run while serving."""
        await anyio.sleep_forever()

    # --- serving -------------------------------------------------------------------------

    def connection(self, conn_id: int) -> SimConnection | None:
        return self._conns.get(conn_id)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        spec = self.spec
        first = await anyio.create_tcp_listener(local_host=spec.host, local_port=spec.port)
        self.port = first.extra(anyio.abc.SocketAttribute.local_port)
        listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = first
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.background)
            accept_scope: anyio.CancelScope | None = None
            task_status.started(self.port)
            try:
                while True:
                    state = self.behaviour.connection_state(anyio.current_time())
                    if state == "down":
                        if accept_scope is not None:
                            accept_scope.cancel()  # _accept closes its listener on the way out
                            accept_scope = listener = None
                            log.info("%s: down; listener closed", self.name)
                        elif listener is not None:
                            await listener.aclose()
                            listener = None
                        for conn in list(self._conns.values()):
                            conn.reset()
                    else:
                        if listener is None:
                            try:
                                listener = await anyio.create_tcp_listener(
                                    local_host=spec.host, local_port=self.port)
                                log.info("%s: up; listening on %d", self.name, self.port)
                            except OSError as exc:  # the old socket may not be closed yet
                                log.debug("%s: cannot listen again yet: %s", self.name, exc)
                        if listener is not None and accept_scope is None:
                            accept_scope = anyio.CancelScope()
                            tg.start_soon(self._accept, listener, tg, accept_scope)
                    await anyio.sleep(spec.fault_poll_s)
            finally:
                if accept_scope is None and listener is not None:
                    with anyio.CancelScope(shield=True):
                        await listener.aclose()
                tg.cancel_scope.cancel()

    async def _accept(self, listener: anyio.abc.Listener[anyio.abc.SocketStream],
                      tg: anyio.abc.TaskGroup, scope: anyio.CancelScope) -> None:
        """Accept until ``scope`` is cancelled, then close ``listener``."""
        with scope:
            try:
                # Connection handlers go to ``tg``: closing the listener does not cut them.
                await listener.serve(self._connection, task_group=tg)
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        if len(self._conns) >= self.spec.max_connections:
            self.refused_connections += 1
            log.warning("%s: %d connections already; closing a new one",
                        self.name, self.spec.max_connections)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        self._next_conn += 1
        conn = SimConnection(self._next_conn, stream, self._flush_books)
        self._conns[conn.id] = conn
        self.metrics.set_connections(self.name, len(self._conns))
        try:
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                await self._read(conn, tg)
                # EOF: requests already received still run to their decision, as a real
                # network processes what reached it; only their answers are lost.
        finally:
            conn.alive = False
            del self._conns[conn.id]
            self.metrics.set_connections(self.name, len(self._conns))
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, conn: SimConnection, tg: anyio.abc.TaskGroup) -> None:
        splitter = self.new_splitter()
        limit = self.spec.max_in_flight_per_connection
        while True:
            try:
                data = await conn.stream.receive(65536)
            except _CLOSED:
                return
            broken: Exception | None = None
            try:
                frames = splitter.feed(data)
            except Exception as exc:  # the splitter's own error: cannot re-sync the stream
                broken = exc
                # The complete frames the same read carried before the bad prefix reached
                # the network as surely as those of an earlier read: they are served (TCP's
                # segmentation must not decide which requests are dropped).
                frames = getattr(exc, "frames_before", None) or []
            for payload in frames:
                if conn.in_flight >= limit:
                    await self._overloaded(conn, bytes(payload))
                    continue
                self._arrive(conn, bytes(payload), tg)
            if broken is not None:
                self.bad_frames += 1
                self.metrics.count(self.name, "bad_request")
                log.info("%s: framing error, no more reads on connection %d: %s",
                         self.name, conn.id, broken)
                # As at EOF: what was received runs to its answer, then the connection
                # closes; nothing after the bad prefix is read.
                return

    async def _overloaded(self, conn: SimConnection, payload: bytes) -> None:
        item = self.parse(conn, payload)
        if item is None:
            self.metrics.count(self.name, "bad_request")
            return
        if isinstance(item, bytes):
            # Network management (an echo) is answered at once and holds no slot: past the
            # bound it is answered all the same, or a busy link would read as a dead one.
            echo = self._management_answer(item)
            if echo is not None:
                await conn.send(self.frame(echo))
            return
        self.metrics.count(self.name, "overloaded")
        answer = item.reject("91")
        if answer is not None:
            await conn.send(self.frame(answer))

    def _management_answer(self, answer: bytes) -> bytes | None:
        """A network-management answer (an echo's), or None if the endpoint is blackholed
        now (counted): such a frame is answered at once, outside every queue."""
        if self.behaviour.connection_state(anyio.current_time()) == "blackhole":
            self.metrics.count(self.name, "blackhole")
            return None
        return answer

    def _arrive(self, conn: SimConnection, payload: bytes, tg: anyio.abc.TaskGroup) -> None:
        """One frame as it is read, before the next one is looked at: parsed, its seeded
        plan drawn, admitted, and decided at once if a service slot is free (a queued one is
        decided in the release that hands it its slot, in arrival order). Only the waiting
        (queue, service latency) and the answer run in a task of their own, so neither the
        seeded draws nor the order of decisions depend on the order an event loop happens to
        run tasks in (trio shuffles them): same seed, same frames, same answers."""
        try:
            item = self.parse(conn, payload)
            if item is None:
                self.metrics.count(self.name, "bad_request")
                return
            if isinstance(item, bytes):
                answer: bytes | _Service | None = self._management_answer(item)
                if answer is None:
                    return
            else:
                answer = self._admit(item)
            if answer is None:
                return
            conn.in_flight += 1
            tg.start_soon(self._request, conn, answer)
        except Exception:
            log.exception("%s: error serving a request", self.name)
            self.metrics.count(self.name, "error")

    async def _request(self, conn: SimConnection, item: bytes | _Service) -> None:
        try:
            if isinstance(item, bytes):
                await conn.send(self.frame(item))
            else:
                await self._serve(conn, item)
        except Exception:
            log.exception("%s: error serving a request", self.name)
            self.metrics.count(self.name, "error")
        finally:
            conn.in_flight -= 1

    async def serve_request(self, conn: SimConnection, request: SimRequest) -> None:
        """Apply the seeded plan to one request; see the module docstring for the order."""
        item = self._admit(request)
        if isinstance(item, bytes):
            await conn.send(self.frame(item))
        elif item is not None:
            await self._serve(conn, item)

    def _admit(self, request: SimRequest) -> bytes | _Service | None:
        """The synchronous half of serving ``request``: its plan, and what can be decided on
        arrival. Returns an answer to send at once, the service to finish, or None."""
        name, metrics = self.name, self.metrics
        plan: RequestPlan = self.behaviour.plan(anyio.current_time(), request.route_key)
        if plan.action == "blackhole":
            metrics.count(name, "blackhole")
            return None
        if plan.action == "refuse":
            metrics.count(name, "refused")
            return request.reject(self.behaviour.config.errors.unavailable_code)
        request.admit()
        service = _Service(request, plan)
        try:
            ticket = self.behaviour.capacity().enter_or_queue(service.decide)
        except CapacityExceeded:
            metrics.count(name, "overloaded")
            return request.reject("91")
        except BaseException:
            request.abandon()
            raise
        if ticket is None:
            service.decide()
        service.ticket = ticket
        return service

    async def _serve(self, conn: SimConnection, service: _Service) -> None:
        """The asynchronous half: wait for a slot, the service latency, then the answer."""
        name, metrics = self.name, self.metrics
        request, plan = service.request, service.plan
        gate = self.behaviour.capacity()
        if service.ticket is not None:
            try:
                await gate.wait(service.ticket)
            except BaseException:
                if not service.decided:
                    request.abandon()
                raise
        delay = plan.latency_s + request.extra_latency_s * plan.latency_factor
        try:
            if service.error is not None:
                request.abandon()
                raise service.error
            await anyio.sleep(delay)
        finally:
            gate.release()
        answer = service.answer
        metrics.count(name, request.outcome)
        if plan.action == "reset":
            metrics.count(name, "reset")
            conn.reset()
            return
        if answer is None:
            return
        if plan.late_delay_s > 0:
            metrics.count(name, "late")
            await anyio.sleep(plan.late_delay_s)
        metrics.observe(name, delay + plan.late_delay_s)
        if plan.malformed:
            metrics.count(name, "malformed")
            await conn.send(self.frame(self.garbage()))
            return
        data = self.frame(answer)
        await conn.send(data)
        if plan.duplicate:
            metrics.count(name, "duplicate")
            await conn.send(data)


class _Service:
    """One admitted request: its plan, its place at the capacity gate, its decision."""

    __slots__ = ("answer", "decided", "error", "plan", "request", "ticket")

    def __init__(self, request: SimRequest, plan: RequestPlan) -> None:
        self.request = request
        self.plan = plan
        self.ticket: GateTicket | None = None
        self.answer: bytes | None = None
        self.decided = False
        self.error: Exception | None = None

    def decide(self) -> None:
        """The network's decision; run on arrival, or by the release handing over a slot
        (so it must not raise: an error is kept for the request's own task)."""
        try:
            self.answer = self.request.decide(self.plan.technical_error)
        except Exception as exc:
            self.error = exc
        self.decided = True
