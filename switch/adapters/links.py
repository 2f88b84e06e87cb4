"""The connection machinery the three network adapters share.

The three adapters differ in codec and correlation key but share everything else, kept
here so that it is written (and fixed) once:

* :class:`LinkPool` -- a few persistent TCP connections per endpoint, used round-robin,
  each kept alive by its own supervisor task: connect, optional handshake (card
  sign-on), read loop, optional keep-alive (card echo), and on loss a reconnect after a
  capped exponential backoff with jitter drawn from a seeded ``random.Random``.
* :class:`Correlator` -- the in-flight requests keyed by their matching key. A response
  completes its waiter; one that matches nothing is counted as *late* (its waiter was
  abandoned on timeout), *duplicate* (its waiter already completed) or *unmatched*, and
  dropped: it never raises and never touches a payment.
* :func:`exchange` -- one request/response: register the waiter, queue the frame behind
  what the link already holds, wait. The caller applies the timeout by cancelling; a
  cancelled waiter is abandoned so a late answer is recognised as such, and its frame,
  if still queued, is withdrawn.
* :meth:`PooledAdapter._start_exchange` -- the same without waiting, for the payment
  core: the waiter holds a callback instead of an Event, the frame is queued on the
  link (one writer per link sends everything queued in one write), and the answer is
  delivered as an event with the core's token. ``cancel(token)`` abandons it.

Money rule for sending. :class:`~switch.adapters.base.NotSent` is raised only when the
request certainly did not reach the network: no usable connection, a bound exceeded, or
a write that failed (a half-written frame on a connection that then dies is never
decoded by the peer). A write that timed out after it began, or a connection lost after
sending, leaves the outcome unknown: the adapter then waits until the caller's timeout
cancels it, and the caller resolves the payment.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

import anyio
import anyio.abc

from switch.adapters.base import NetworkReply, NotSent, ReplySink
from switch.adapters.specs import AdapterConfig

log = logging.getLogger(__name__)


class PooledAdapter:
    """What every pooled network adapter shares: its name, connection pool, and the
    correlator's counters of stray answers (unmatched, late, duplicate). Subclasses set
    ``config``, ``_pool`` and ``_correlator`` and say which channel they serve."""

    config: AdapterConfig
    _pool: LinkPool
    _correlator: Correlator[Any, Any]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pool(self) -> LinkPool:
        return self._pool

    @property
    def unmatched(self) -> int:
        return self._correlator.unmatched

    @property
    def late(self) -> int:
        return self._correlator.late

    @property
    def duplicates(self) -> int:
        return self._correlator.duplicates

    @property
    def in_flight(self) -> int:
        return self._correlator.pending

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect and keep connected until the adapter is closed."""
        await self._pool.run(task_status=task_status)

    def _token_waiters(self) -> dict[int, Waiter[Any, Any]]:
        """Started requests by the core's token (bounded by the correlator's bound)."""
        waiters: dict[int, Waiter[Any, Any]] = self.__dict__.setdefault("_by_token", {})
        return waiters

    def cancel(self, token: int) -> None:
        """Nobody waits for ``token`` any more (timeout): an answer now is late."""
        waiter = self._token_waiters().pop(token, None)
        if waiter is not None:
            self._correlator.abandon(waiter)

    def _start_exchange(self, key: Hashable, data: bytes, token: int, deliver: ReplySink,
                        convert: Callable[[Any], NetworkReply | None]) -> None:
        """Send without waiting: the answer, converted, goes to ``deliver`` with ``token``.

        NotSent (raised here) if no connection is usable or a bound is reached. If the
        connection dies before the frame was written, ``deliver`` gets ``None`` (NotSent
        after the fact). An answer ``convert`` maps to None (pending at the network) is
        not delivered: the caller's timeout makes the outcome unknown.
        """
        waiters = self._token_waiters()
        link = self._pool.pick()
        correlator = self._correlator

        def answered(value: Any) -> None:
            waiters.pop(token, None)
            reply = convert(value)
            if reply is not None:
                deliver(((token, reply),))

        def never_left() -> None:
            if waiters.pop(token, None) is not None:
                correlator.forget(waiter)
                deliver(((token, None),))

        waiter = correlator.register(key, answered)
        waiters[token] = waiter
        try:
            link.send_nowait(data, never_left, waiter)
        except NotSent:
            waiters.pop(token, None)
            correlator.forget(waiter)
            raise

    def _new_pool(
        self,
        new_splitter: Callable[[], FrameSplitter],
        on_frame: Callable[[bytes, Link], None],
        handshake: Callable[[Link], Awaitable[bool]] | None = None,
        keepalive: Callable[[Link], Coroutine[Any, Any, None]] | None = None,
    ) -> LinkPool:
        """The connection pool this adapter's config describes."""
        cfg = self.config
        return LinkPool(
            name=cfg.name, host=cfg.host, port=cfg.port, size=cfg.connections,
            connect_timeout_s=cfg.connect_timeout_s, send_timeout_s=cfg.send_timeout_s,
            backoff_initial_s=cfg.reconnect_initial_s, backoff_max_s=cfg.reconnect_max_s,
            rng=random.Random(cfg.seed), new_splitter=new_splitter, on_frame=on_frame,
            handshake=handshake, keepalive=keepalive, max_queued=cfg.max_in_flight,
        )


# --------------------------------------------------------------------------- correlation

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Delivery = Literal["matched", "late", "duplicate", "unmatched"]

#: How many completed and abandoned keys are remembered to classify stray answers.
REMEMBERED_KEYS = 65_536


class Waiter(Generic[K, V]):
    """One request in flight: awaited (``event``) or answered by a callback (no Event:
    the payment core's sends create nothing awaitable per payment)."""

    __slots__ = ("callback", "event", "gone", "key", "value")

    def __init__(self, key: K, callback: Callable[[V], None] | None = None) -> None:
        self.key = key
        self.callback = callback
        self.event = anyio.Event() if callback is None else None
        self.value: V | None = None
        #: Nobody waits any more (abandoned or forgotten): a frame of it still queued on
        #: its link is never written.
        self.gone = False


class Correlator(Generic[K, V]):
    """Requests in flight by matching key; classifies every answer that arrives."""

    def __init__(self, name: str, max_pending: int, remembered: int = REMEMBERED_KEYS) -> None:
        assert max_pending >= 1 and remembered >= 1
        self.name = name
        self.max_pending = max_pending
        self._remembered = remembered
        self._pending: dict[K, Waiter[K, V]] = {}
        self._completed: OrderedDict[K, None] = OrderedDict()
        self._abandoned: OrderedDict[K, None] = OrderedDict()
        self.matched = 0
        self.late = 0
        self.duplicates = 0
        self.unmatched = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def waiting(self, key: K) -> bool:
        return key in self._pending

    def register(self, key: K, callback: Callable[[V], None] | None = None) -> Waiter[K, V]:
        if key in self._pending:
            raise NotSent(f"{self.name}: a request with key {key!r} is already in flight")
        if len(self._pending) >= self.max_pending:
            raise NotSent(f"{self.name}: {self.max_pending} requests already in flight")
        self._completed.pop(key, None)
        self._abandoned.pop(key, None)
        waiter: Waiter[K, V] = Waiter(key, callback)
        self._pending[key] = waiter
        return waiter

    def forget(self, waiter: Waiter[K, V]) -> None:
        """The request was never sent: drop its waiter without a trace."""
        waiter.gone = True
        if self._pending.get(waiter.key) is waiter:
            del self._pending[waiter.key]

    def abandon(self, waiter: Waiter[K, V]) -> None:
        """Sent, but nobody waits any more (timeout): an answer now is late."""
        waiter.gone = True
        if self._pending.get(waiter.key) is waiter:
            del self._pending[waiter.key]
            self._remember(self._abandoned, waiter.key)

    def deliver(self, key: K, value: V) -> Delivery:
        waiter = self._pending.pop(key, None)
        if waiter is not None:
            waiter.value = value
            self.matched += 1
            self._remember(self._completed, key)
            if waiter.callback is not None:
                waiter.callback(value)
            else:
                assert waiter.event is not None
                waiter.event.set()
            return "matched"
        if key in self._abandoned:
            del self._abandoned[key]
            self._remember(self._completed, key)
            self.late += 1
            return "late"
        if key in self._completed:
            self.duplicates += 1
            return "duplicate"
        self.unmatched += 1
        return "unmatched"

    def _remember(self, book: OrderedDict[K, None], key: K) -> None:
        book[key] = None
        book.move_to_end(key)
        if len(book) > self._remembered:
            book.popitem(last=False)


# --------------------------------------------------------------------------- connections

_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class FrameSplitter(Protocol):
    """What a link needs from a codec's frame decoder (ISO 8583 or switch.protocols.wire)."""

    def feed(self, data: bytes) -> Sequence[bytes | memoryview]: ...


class Queued(Protocol):
    """Whoever queued a frame: once it is gone (nobody waits any more), the frame is not
    written -- a request given up before it left must not reach the network later, after
    what replaced it (the resolver's inquiry or reversal)."""

    gone: bool


class Written:
    """What became of a frame :func:`exchange` queued: reported once by the link's writer
    (True: handed over whole; False: outcome unknown; None: never left)."""

    __slots__ = ("event", "gone", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.gone = False
        self.outcome: bool | None = None

    def report(self, outcome: bool | None) -> None:
        self.outcome = outcome
        self.event.set()

    def never_left(self) -> None:
        self.report(None)


class _NeverStarted(NotSent):
    """Nothing of the write began: every frame of its batch certainly stayed here."""


#: Frames one link holds for its writer, unless its pool says otherwise (the adapters'
#: pools use their ``max_in_flight``, whose default this is). The correlator's bound
#: alone left the queue unbounded: frames given up while queued stay in it until the
#: writer's next wake-up, and answers to the network's own requests (an 0810 to its
#: echo) are nobody's request in flight. With the writer held by a peer that does not
#: read (up to ``send_timeout_s``), both grew without limit.
MAX_QUEUED_FRAMES: Final = 8192


class Link:
    """One TCP connection of a pool. One writer task writes every frame, in the order
    queued: requests the core sends without waiting and :func:`exchange`'s alike, so an
    inquiry or reversal never overtakes the request it is about (that once let a
    pacs.028 reach the network before its pacs.008: "never received", failed -- then the
    network booked it)."""

    __slots__ = (
        "_queue", "_send_timeout_s", "_wake", "alive", "index", "max_queued", "ready",
        "ready_at", "scope", "stream", "was_ready",
    )

    def __init__(self, index: int, stream: anyio.abc.ByteStream, send_timeout_s: float,
                 max_queued: int = MAX_QUEUED_FRAMES) -> None:
        assert max_queued >= 1
        self.index = index
        self.stream = stream
        self._send_timeout_s = send_timeout_s
        #: Past it a frame is refused NotSent: see :data:`MAX_QUEUED_FRAMES`.
        self.max_queued = max_queued
        self.alive = True
        self.ready = False
        self.was_ready = False
        #: When the link last became ready (the pool's reconnect backoff reads it).
        self.ready_at = 0.0
        self.scope: anyio.CancelScope | None = None
        #: Frames queued for the writer: the bytes, what to do if they never leave, and
        #: who queued them (skipped once gone).
        self._queue: list[tuple[bytes, Callable[[], None], Queued]] = []
        self._wake = anyio.Event()

    @property
    def queued(self) -> int:
        """Frames waiting for the writer (given-up ones included until it skips them)."""
        return len(self._queue)

    def send_nowait(self, data: bytes, never_left: Callable[[], None], owner: Queued) -> None:
        """Queue one frame for this link's writer; everything queued leaves in one write.

        NotSent if the link is closed or already holds ``max_queued`` frames. ``never_left``
        runs (from the writer) if the link dies before the frame was written: certainly not
        sent, safe to fail over. Once ``owner.gone``, a frame not yet written never is.
        """
        if not self.alive:
            raise NotSent(f"connection {self.index} is closed")
        if len(self._queue) >= self.max_queued:
            # Given-up frames would be skipped by the writer anyway: drop them before
            # refusing a live one. Only here, at the bound, so the common path stays an
            # append. Refused as NotSent, not waited for: nothing of it left, so the core
            # fails over or answers at once, and the caller never blocks on a stuck peer.
            self._queue = [item for item in self._queue if not item[2].gone]
            if len(self._queue) >= self.max_queued:
                raise NotSent(f"connection {self.index}: {self.max_queued} frames already "
                              f"queued (max_in_flight={self.max_queued})")
        self._queue.append((data, never_left, owner))
        assert len(self._queue) <= self.max_queued
        self._wake.set()

    async def send(self, data: bytes) -> bool:
        """Write one frame behind everything queued. True: handed over whole. False:
        outcome unknown (the link dropped mid-write). NotSent: it never left.

        Cancelling the caller while the frame waits in the queue withdraws it; once its
        write began, the write finishes (bounded by ``send_timeout_s``), so a frame is
        never cut in half by a timeout.
        """
        written = Written()
        self.send_nowait(data, written.never_left, written)
        try:
            await written.event.wait()
        finally:
            written.gone = True  # withdrawn if still queued (the caller was cancelled)
        if written.outcome is None:
            raise NotSent(f"connection {self.index} closed before the frame was written")
        return written.outcome

    async def write_queued(self) -> None:
        """The writer: one write per wake-up of everything queued, until the link dies.

        A batch whose write fails part-way may have reached the peer in part: its frames'
        outcomes stay unknown (the caller's timeout), never NotSent -- unless it was a
        single frame (a half-written frame is never decoded) or nothing began.
        """
        try:
            while self.alive:
                if not self._queue:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                batch = [item for item in self._queue if not item[2].gone]
                self._queue = []
                if not batch:
                    continue
                try:
                    whole = await self._write(b"".join(data for data, _, _ in batch))
                except NotSent as exc:
                    if len(batch) == 1 or isinstance(exc, _NeverStarted):
                        for _, never_left, _ in batch:
                            never_left()
                        continue
                    whole = False
                for _, _, owner in batch:
                    if isinstance(owner, Written):
                        owner.report(whole)
        finally:
            queued, self._queue = self._queue, []
            for _, never_left, _ in queued:
                never_left()

    def kill(self) -> None:
        """Stop using this connection; its supervisor closes it and redials."""
        self.alive = False
        self.ready = False
        if self.scope is not None:
            self.scope.cancel()

    async def _write(self, data: bytes) -> bool:
        """Write ``data`` (the writer's only write). True: handed over whole. False:
        outcome unknown (timed out midway). NotSent: the connection failed on it
        (:class:`_NeverStarted` if the link was dead already).

        Shielded from the writer's cancellation (the link being killed) so a frame is
        never cut in half; ``send_timeout_s`` bounds it instead.
        """
        if not self.alive:
            raise _NeverStarted(f"connection {self.index} is closed")
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._send_timeout_s):
            try:
                await self.stream.send(data)
                return True
            except _CLOSED as exc:
                self.kill()
                raise NotSent(f"connection {self.index} failed on write: {exc!r}") from None
        # The write timed out after it began: part of it may have left.
        self.kill()
        return False


class LinkPool:
    """A fixed number of connection slots to one endpoint, each redialled when lost."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        size: int,
        connect_timeout_s: float,
        send_timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        rng: random.Random,
        new_splitter: Callable[[], FrameSplitter],
        on_frame: Callable[[bytes, Link], None],
        handshake: Callable[[Link], Awaitable[bool]] | None = None,
        keepalive: Callable[[Link], Coroutine[Any, Any, None]] | None = None,
        read_bytes: int = 65536,
        max_queued: int = MAX_QUEUED_FRAMES,
    ) -> None:
        assert size >= 1 and max_queued >= 1
        self.name = name
        self.host = host
        self.port = port
        self._slots: list[Link | None] = [None] * size
        self._connect_timeout_s = connect_timeout_s
        self._send_timeout_s = send_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = max(backoff_max_s, backoff_initial_s)
        self._rng = rng
        self._new_splitter = new_splitter
        self._on_frame = on_frame
        self._handshake = handshake
        self._keepalive = keepalive
        self._read_bytes = read_bytes
        #: Each link's write-queue bound (:data:`MAX_QUEUED_FRAMES`).
        self.max_queued = max_queued
        self._next = 0
        self._scope: anyio.CancelScope | None = None
        self._closing = False
        self.connects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.handshake_failures = 0
        self.framing_errors = 0
        self.frame_handler_errors = 0

    @property
    def ready_links(self) -> int:
        return sum(1 for link in self._slots if link is not None and link.ready and link.alive)

    def pick(self) -> Link:
        """The next usable connection, round-robin; NotSent if there is none."""
        slots = self._slots
        count = len(slots)
        for step in range(count):
            index = (self._next + step) % count
            link = slots[index]
            if link is not None and link.ready and link.alive:
                self._next = index + 1
                return link
        raise NotSent(f"{self.name}: no connection to {self.host}:{self.port}")

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(attempt, 30))
        return ceiling / 2 + self._rng.random() * ceiling / 2

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep every slot connected until closed. Reports started once every slot has
        tried once (successfully or not), so a caller can send right away."""
        remaining = len(self._slots)
        all_tried = anyio.Event()

        def tried() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                all_tried.set()

        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._closing:
                scope.cancel()
            async with anyio.create_task_group() as tg:
                for index in range(len(self._slots)):
                    tg.start_soon(self._slot, index, tried)
                await all_tried.wait()
                task_status.started()

    async def aclose(self) -> None:
        self._closing = True
        for link in self._slots:
            if link is not None:
                link.kill()
        if self._scope is not None:
            self._scope.cancel()

    async def _slot(self, index: int, tried: Callable[[], None]) -> None:
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                tried()

        attempt = 0
        while not self._closing:
            stream: anyio.abc.SocketStream | None = None
            try:
                with anyio.fail_after(self._connect_timeout_s):
                    stream = await anyio.connect_tcp(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                self.connect_failures += 1
                log.debug("%s: connect %d failed: %r", self.name, index, exc)
            if stream is not None:
                self.connects += 1
                link = Link(index, stream, self._send_timeout_s, self.max_queued)
                try:
                    await self._run_link(link, report)
                finally:
                    self._slots[index] = None
                    self.disconnects += 1
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                if link.was_ready and (anyio.current_time() - link.ready_at
                                       >= self._backoff_max_s):
                    # Up for a while: a fresh loss. A peer that accepts and drops at once
                    # (a balancer before a dead backend) was redialled every 0.1 s for ever
                    # when any successful connect reset the backoff.
                    attempt = 0
            report()
            attempt += 1
            await anyio.sleep(self.backoff(attempt))

    async def _run_link(self, link: Link, report: Callable[[], None]) -> None:
        async with anyio.create_task_group() as tg:
            link.scope = tg.cancel_scope
            tg.start_soon(self._reader, link)
            tg.start_soon(link.write_queued)
            ok = True
            if self._handshake is not None:
                ok = await self._handshake(link)
            if ok and link.alive:
                link.ready = link.was_ready = True
                link.ready_at = anyio.current_time()
                self._slots[link.index] = link
                report()
                if self._keepalive is not None:
                    tg.start_soon(self._keepalive, link)
            else:
                self.handshake_failures += 1
                report()
                link.kill()

    async def _reader(self, link: Link) -> None:
        splitter = self._new_splitter()
        try:
            while True:
                data = await link.stream.receive(self._read_bytes)
                try:
                    frames = splitter.feed(data)
                except Exception as exc:  # the splitter's own: the stream cannot be re-synced
                    self.framing_errors += 1
                    log.debug("%s: framing error on connection %d: %r", self.name,
                              link.index, exc)
                    # Answers that arrived whole before the bad prefix still count: dropped,
                    # their payments became unknown and were reversed though answered.
                    self._handle(getattr(exc, "frames_before", ()), link)
                    return
                self._handle(frames, link)
        except _CLOSED:
            pass
        finally:
            link.kill()

    def _handle(self, frames: Sequence[bytes | memoryview], link: Link) -> None:
        on_frame = self._on_frame
        for payload in frames:
            try:
                on_frame(bytes(payload), link)
            except Exception:
                # A handler bug must not take the connection (and its other in-flight
                # requests) down with it.
                self.frame_handler_errors += 1
                log.exception("%s: error handling a frame", self.name)


async def exchange(
    link: Link, correlator: Correlator[K, V], key: K, data: bytes
) -> V:
    """Send ``data`` on ``link`` and wait for the answer matching ``key``.

    NotSent if it never left. If the connection dies after sending, or the answer never
    comes, this waits until the caller cancels it (outcome unknown).
    """
    waiter = correlator.register(key)
    finished = False
    try:
        sent = await link.send(data)
        if not sent:
            log.debug("%s: write of %r timed out midway; outcome unknown", correlator.name, key)
        assert waiter.event is not None
        await waiter.event.wait()
        finished = True
        assert waiter.value is not None
        return waiter.value
    except NotSent:
        correlator.forget(waiter)
        finished = True
        raise
    finally:
        if not finished:
            correlator.abandon(waiter)
