"""Resolves payments whose outcome is unknown: sent to a network, no answer in time.

Money rule: an unknown payment is never assumed approved or declined. Cards get a
reversal (the issuer voids any hold it placed); SWIFT and QR get a status inquiry (the
network's book is the truth). The answer is journaled as the payment's final state, and
the idempotency index is updated so a client retry sees it.

Bounded: at most ``max_queue`` payments wait here and each gets at most ``max_attempts``
tries with capped exponential backoff. A payment that does not fit, or runs out of
attempts, stays "unknown" in the journal, where the next start-up finds it again: the
journal, not this queue, is the durable store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from switch.adapters.base import NetworkReply, NotSent
from switch.journal import encode_result
from switch.model import Payment, Result, Status


class ResolutionPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How an unknown outcome is chased: reversal (card), pacs.028 (SWIFT), check-status (QR).

    Networks cap status checks after an outage (one national QR scheme: the first no
    sooner than 90 s after the payment, at most 3 in the first 2 hours): the resolver's
    traffic needs a budget of its own, set here per channel.
    """

    #: First attempt this long after the payment.
    first_after_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0.05
    #: Attempts at most (backing off between them).
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    #: Give up (the payment stays unknown until the next start) after this long.
    within_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 600.0
    #: Longest wait between attempts.
    max_delay_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 5.0


class ResolutionConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How unknown outcomes are chased, per channel."""

    card: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)
    swift: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)
    qr: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)


if TYPE_CHECKING:
    from switch.clock import Clock
    from switch.journal import Journal
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.idempotency import IdempotencyIndex
    from switch.routing.router import Route

log = logging.getLogger(__name__)

_STATUS: Final = {
    "approved": Status.APPROVED,
    "declined": Status.DECLINED,
    "failed": Status.FAILED,
    "reversed": Status.REVERSED,
}
Job = tuple[Payment, bytes, "Route"]


class Resolver:
    def __init__(
        self,
        *,
        clock: Clock,
        journal: Journal,
        index: IdempotencyIndex,
        metrics: SwitchMetrics,
        max_queue: int = 10_000,
        workers: int = 8,
        policies: ResolutionConfig | None = None,
    ) -> None:
        assert max_queue >= 1 and workers >= 1
        self._clock = clock
        self._journal = journal
        self._index = index
        self._metrics = metrics
        self._policies = policies if policies is not None else ResolutionConfig()
        self._workers = workers
        send: MemoryObjectSendStream[Job]
        receive: MemoryObjectReceiveStream[Job]
        send, receive = anyio.create_memory_object_stream(max_queue)
        self._send = send
        self._receive = receive
        self.pending = 0
        self.resolved = 0
        self.overflowed = 0

    def submit(self, payment: Payment, digest: bytes, route: Route) -> None:
        try:
            self._send.send_nowait((payment, digest, route))
        except anyio.WouldBlock:
            self.overflowed += 1
            log.error("resolver queue full; payment stays unknown until restart",
                      extra={"payment_id": payment.payment_id})
            return
        self.pending += 1
        self._metrics.unresolved.set(self.pending)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        async for payment, digest, route in self._receive:
            try:
                await self._resolve(payment, digest, route)
            finally:
                self.pending -= 1
                self._metrics.unresolved.set(self.pending)

    async def _resolve(self, payment: Payment, digest: bytes, route: Route) -> None:
        policy: ResolutionPolicy = getattr(self._policies, payment.channel)
        started = self._clock.now()
        # The network's own rule may forbid asking too early (QR: not before 90 s).
        await anyio.sleep(policy.first_after_s)
        delay = max(policy.first_after_s, 0.05)
        for attempt in range(1, policy.max_attempts + 1):
            reply: NetworkReply | None = None
            try:
                with anyio.move_on_after(route.timeout_s):
                    reply = await route.adapter.resolve(payment)
            except NotSent as exc:
                log.info("resolve attempt %d: %s", attempt, exc,
                         extra={"payment_id": payment.payment_id})
            if reply is not None:
                await self._finish(payment, digest, route, reply)
                return
            if self._clock.now() - started + delay > policy.within_s:
                break
            await anyio.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
        log.error("still unknown after %d attempts; resolved at the next start", attempt,
                  extra={"payment_id": payment.payment_id})

    async def _finish(
        self, payment: Payment, digest: bytes, route: Route, reply: NetworkReply
    ) -> None:
        status = _STATUS[reply.outcome]
        result = Result(
            payment.payment_id,
            status,
            reply.reason,
            reply.network_ref,
            route.network,
            aml_flag=payment.aml_flag,
        )
        await self._journal.write(
            (
                payment.payment_id,
                payment.idempotency_key,
                "final",
                status.value,
                digest,
                encode_result(result),
                self._clock.wall_us(),
            )
        )
        self._index.complete(payment.idempotency_key, result)
        self._metrics.resolved[(payment.channel, status)].inc()
        self.resolved += 1
