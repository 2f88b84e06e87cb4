"""The anyio shell around the sans-IO payment core (switch/payment/core.py).

It owns every await so the core owns none:

* the journal port: records go into the journal's open group-commit batch; the
  journal reports each commit (on the loop, in order) and the core then completes all
  of that batch's payments at once;
* the network port: adapters that send without waiting (:class:`SendsWithoutWaiting`)
  get the request queued and deliver answers in batches; any other adapter is driven
  by a small pool of bridge tasks (grown only while every bridge is busy), each running
  one ``authorize`` under a cancel scope the core's timeout can cancel;
* the core's one timer heap: one task sleeps until its next deadline, woken early when
  an event sets an earlier one;
* the awaitable façade :meth:`Engine.submit` for front doors that want one result per
  call (HTTP, ISO 8583 acquirer listeners): an origin whose reply sets an Event.

A deterministic simulator replaces this module: it implements the same three ports over
in-memory queues and calls the core's ``on_*`` methods with its own ``now``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from switch.adapters.base import ChannelAdapter, NetworkReply, NotSent, SendsWithoutWaiting
from switch.clock import Clock, backend_clock, timer_deadline
from switch.journal import Journal
from switch.model import Payment, PaymentRequest
from switch.observability.metrics import SwitchMetrics
from switch.payment.core import PaymentCore, Rejected, Submitted
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.standin import StandIn
from switch.protocols.wire import ErrorReply, Reply, Response
from switch.routing.router import Router

log = logging.getLogger(__name__)
Row = tuple[str, str, str, str, bytes, bytes, int]


class JournalShell:
    """The core's journal port on the group-commit :class:`Journal`.

    Each commit is reported to the core by the journal's listener call, on the loop, in
    commit order: no task waits per batch.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._off = journal.mode == "off"
        self._engine: Engine | None = None
        journal.listen(self._committed)

    def append(self, row: Row) -> object | None:
        batch = self.journal.append_row(row)  # raises JournalFull / JournalFailed
        return None if self._off else batch

    def attach(self, engine: Engine) -> None:
        self._engine = engine

    def _committed(self, batch: Any) -> None:
        engine = self._engine
        if engine is None or self._off:
            return
        if batch.error is not None:
            engine.core.on_commit_failed(batch, batch.error)
        else:
            engine.core.on_committed(batch, engine.now(), engine.measure())
        engine.kick()


class NetworkShell:
    """The core's network port over the adapters."""

    def __init__(self, adapters: Mapping[str, ChannelAdapter], deliver: Callable[
            [Sequence[tuple[int, NetworkReply | None]]], None]) -> None:
        self._native: dict[str, SendsWithoutWaiting] = {
            name: adapter for name, adapter in adapters.items()
            if isinstance(adapter, SendsWithoutWaiting)}
        self._adapters = dict(adapters)
        self._deliver = deliver
        # Bridge jobs: bounded by the admission limits (each holds a slot), so the buffer
        # below is never the binding bound.
        self._jobs_in, self._jobs_out = anyio.create_memory_object_stream[
            tuple[ChannelAdapter, int, Payment]](1_000_000)
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._cancelled: set[int] = set()
        self._queued = 0
        self._idle = 0
        self.bridges = 0
        self._group: anyio.abc.TaskGroup | None = None

    def send(self, endpoint: str, token: int, payment: Payment) -> None:
        native = self._native.get(endpoint)
        if native is not None:
            native.start(token, payment, self._deliver)
            return
        self._jobs_in.send_nowait((self._adapters[endpoint], token, payment))
        self._queued += 1
        if self._queued > self._idle:
            assert self._group is not None, "Engine.run() is not running"
            self.bridges += 1
            self._idle += 1
            self._group.start_soon(self._bridge)

    def cancel(self, endpoint: str, token: int) -> None:
        native = self._native.get(endpoint)
        if native is not None:
            native.cancel(token)
            return
        scope = self._scopes.pop(token, None)
        if scope is not None:
            scope.cancel()
        else:  # still queued: the bridge skips it
            self._cancelled.add(token)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._group = tg
            await anyio.sleep_forever()

    async def _bridge(self) -> None:
        """Run queued ``authorize`` calls one at a time; report each answer as an event."""
        async for adapter, token, payment in self._jobs_out:
            self._queued -= 1
            self._idle -= 1
            try:
                if token in self._cancelled:
                    self._cancelled.discard(token)
                    continue
                await self._one(adapter, token, payment)
            finally:
                self._idle += 1

    async def _one(self, adapter: ChannelAdapter, token: int, payment: Payment) -> None:
        reply: NetworkReply | None = None
        with anyio.CancelScope() as scope:
            self._scopes[token] = scope
            try:
                reply = await adapter.authorize(payment)
            except NotSent:
                reply = None
            except Exception:  # an adapter bug: the core times this attempt out
                log.exception("%s: authorize failed", adapter.name,
                              extra={"payment_id": payment.payment_id})
                return
            finally:
                self._scopes.pop(token, None)
            self._deliver([(token, reply)])


class _Awaiting:
    """The origin of one :meth:`Engine.submit` call: its reply sets an Event."""

    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: Response | None = None

    def reply(self, response: Response) -> None:
        self.response = response
        self.done.set()


class Engine:
    """Drives a :class:`PaymentCore` on anyio: time, journal commits, networks, timers."""

    def __init__(self, clock: Clock, journal: Journal, adapters: Mapping[str, ChannelAdapter],
                 build_core: Callable[[JournalShell, NetworkShell, float], PaymentCore]) -> None:
        self.clock = clock
        self.now = clock.now
        self.measure = clock.measure
        self.journal = journal
        self.journal_port = JournalShell(journal)
        self.network = NetworkShell(adapters, self._on_replies)
        self.core = build_core(self.journal_port, self.network,
                               clock.wall_seconds() - clock.now())
        self.journal_port.attach(self)
        self._timer_wake = anyio.Event()
        self._sleeping_until = float("inf")

    # What front doors reach through the engine (switch/serve/frontcore.py), as they
    # reached through the pipeline before: the same objects the core uses.
    @property
    def index(self) -> IdempotencyIndex:
        return self.core.index

    @property
    def metrics(self) -> SwitchMetrics:
        return self.core.metrics

    @property
    def router(self) -> Router:
        return self.core.router

    @property
    def resolver(self) -> Any:
        return self.core.resolver

    @property
    def standin(self) -> StandIn | None:
        return self.core.standin

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """The shell's tasks; runs until cancelled. Start it before serving."""
        self.now = backend_clock()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.network.run)
            tg.start_soon(self._timers)
            await anyio.lowlevel.checkpoint()
            task_status.started()

    # ----------------------------------------------------------------- events in

    def requests(self, origin: Any, requests: Sequence[tuple[int, PaymentRequest]],
                 read_at: float) -> None:
        """A batch of payments read together (``read_at``: when their bytes were read)."""
        self.core.on_requests(origin, requests, self.now(), self.measure(), read_at)
        self.kick()

    def _on_replies(self, replies: Sequence[tuple[int, NetworkReply | None]]) -> None:
        self.core.on_replies(replies, self.now(), self.measure())
        self.kick()

    async def submit(self, request: PaymentRequest) -> Submitted:
        """One payment, awaited: the façade for front doors. Raises :class:`Rejected`."""
        origin = _Awaiting()
        mono = self.measure()
        self.core.on_requests(origin, ((0, request),), self.now(), mono, mono)
        self.kick()
        await origin.done.wait()
        response = origin.response
        if isinstance(response, ErrorReply):
            raise Rejected(response.code, response.message)
        assert isinstance(response, Reply), response
        return Submitted(response.result, response.replay)

    # ----------------------------------------------------------------- timers

    def kick(self) -> None:
        """After any event: wake the timer task if the core now has an earlier deadline."""
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self._sleeping_until:
            self._timer_wake.set()

    async def _timers(self) -> None:
        core = self.core
        while True:
            now = self.now()
            deadline = core.next_deadline()
            if deadline is not None and deadline <= now:
                core.on_timers(now, self.measure())
                await anyio.lowlevel.checkpoint()
                continue
            self._sleeping_until = deadline if deadline is not None else float("inf")
            # On a whole millisecond: uvloop's timers spin on a sub-millisecond remainder.
            with anyio.CancelScope(deadline=timer_deadline(self._sleeping_until)):
                await self._timer_wake.wait()
            self._sleeping_until = float("inf")
            self._timer_wake = anyio.Event()
