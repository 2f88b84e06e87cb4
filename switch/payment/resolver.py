"""Resolves payments whose outcome is unknown: sent to a network, no answer in time.

Money rule: an unknown payment is never assumed approved or declined. Cards get a
reversal (the issuer voids any hold it placed); SWIFT and QR get a status inquiry (the
network's book is the truth). The answer is journaled as the payment's final state, and
the idempotency index is updated so a client retry sees it.

Scheduling: one timer heap ordered by due time, per-channel schedules
(:class:`ResolutionPolicy`). Nothing sleeps on a job's delay: a QR check-status that may
not be asked before 90 s never holds up a card reversal due now. At most ``workers``
attempts are in flight at once, each bounded by its route's timeout.

Retried on the channel's schedule until resolved, or until the channel's budget
(``max_attempts``) or window (``within_s``) is spent: then it is *handed to an operator*
-- an error log line and ``payswitch_unresolved_escalated_payments`` (alert
PayswitchUnresolvedPaymentsEscalated) -- and stays counted in
``payswitch_unresolved_payments``; the journal still holds it as unknown, so the next
start-up tries again. Bounded: at most ``max_queue`` payments are tracked; one past that
is escalated at once. A payment whose resolution cannot be built (it cannot be encoded)
is *quarantined*: escalated at once, without retries, and counted apart.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

import anyio
import msgspec

from switch.adapters.base import NetworkReply, NotSent
from switch.journal import FINAL, JournalRecord, OnFull
from switch.model import Payment, Result, Status, check_transition
from switch.protocols.errors import CodecError
from switch.routing.router import NoRoute


class ResolutionPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How an unknown outcome is chased: reversal (card), pacs.028 (SWIFT), check-status (QR).

    Networks cap status checks after an outage (one national QR scheme: the first no
    sooner than 90 s after the payment, at most 3 in the first 2 hours): the resolver's
    traffic needs a budget of its own, set here per channel.
    """

    #: First attempt this long after the payment.
    first_after_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0.05
    #: The network's budget of attempts per payment (within ``within_s``). The default
    #: covers the window at ``max_delay_s`` (600 s / 5 s), so a long outage is retried
    #: throughout rather than given up after a few seconds.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 150
    #: Hand the payment to an operator (alert) after this long without an answer.
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
    from switch.journal import Journal, Recovered
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.idempotency import IdempotencyIndex
    from switch.payment.standin import StandIn
    from switch.routing.router import Route, Router
    from switch.routing.table import Target

log = logging.getLogger(__name__)

_STATUS: Final = {
    "approved": Status.APPROVED,
    "declined": Status.DECLINED,
    "failed": Status.FAILED,
    "reversed": Status.REVERSED,
}
#: A resolution's outcome was learned from the network: it must never be dropped.
ON_FULL: Final = OnFull.WAIT


@dataclass(slots=True, eq=False)
class _Job:
    payment: Payment
    digest: bytes
    route: Route
    policy: ResolutionPolicy
    status: Status  # the last state journaled: unknown (or sent, for a crash-recovered one)
    since: float  # when it was handed over (clock.now)
    attempts: int = 0
    delay: float = 0.05


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
        self._max_queue = max_queue
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()  # ties on due time: first come, first served
        self._jobs: dict[str, _Job] = {}  # every tracked payment: queued, in flight, escalated
        self._escalated: set[str] = set()
        self._wakeup = anyio.Event()
        self.resolved = 0
        self.overflowed = 0
        self._update_gauges()

    @property
    def pending(self) -> int:
        """Payments still unknown that this switch knows of (tracked or overflowed)."""
        return len(self._jobs) + self.overflowed

    @property
    def escalated(self) -> int:
        return len(self._escalated) + self.overflowed

    def _update_gauges(self) -> None:
        assert len(self._escalated) <= len(self._jobs) and self.overflowed >= 0
        self._metrics.unresolved.set(self.pending)
        self._metrics.unresolved_escalated.set(self.escalated)

    def submit(self, payment: Payment, digest: bytes, route: Route,
               status: Status = Status.UNKNOWN, elapsed_s: float = 0.0) -> None:
        """Track ``payment`` (state ``status``: unknown, or sent if recovered after a crash)
        until the network tells its outcome. ``elapsed_s``: how long ago it was made, so a
        crash-recovered payment does not wait its channel's first delay all over again."""
        assert elapsed_s >= 0.0, elapsed_s
        assert status in (Status.UNKNOWN, Status.SENT), status
        if payment.payment_id in self._jobs:
            return  # already being resolved
        if len(self._jobs) >= self._max_queue:
            self.overflowed += 1
            log.error("resolver full (%d); payment stays unknown until restart: operator",
                      self._max_queue, extra={"payment_id": payment.payment_id})
            self._update_gauges()
            return
        if status is Status.SENT:
            # Crash-recovered: sent, then nothing journaled -- its outcome is unknown.
            check_transition(payment.payment_id, status, Status.UNKNOWN)
        policy: ResolutionPolicy = getattr(self._policies, payment.channel)
        now = self._clock.now()
        job = _Job(payment, digest, route, policy, Status.UNKNOWN, now,
                   delay=max(policy.first_after_s, 0.05))
        self._jobs[payment.payment_id] = job
        # The network's own rule may forbid asking too early (QR: not before 90 s after the
        # payment). The simulator found restarts waiting it anew: count from the payment.
        self._schedule(job, now + max(0.0, policy.first_after_s - elapsed_s))
        self._update_gauges()

    def _schedule(self, job: _Job, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._order), job))
        self._wakeup.set()

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    async def run(self) -> None:
        """The scheduler: start each job's attempt when it is due, ``workers`` at most."""
        limiter = anyio.Semaphore(self._workers)
        async with anyio.create_task_group() as tg:
            while True:
                due = self.next_due()
                if due is None or due > self._clock.now():
                    self._wakeup = anyio.Event()
                    timeout = math.inf if due is None else due - self._clock.now()
                    with anyio.move_on_after(timeout):
                        await self._wakeup.wait()
                    continue
                _, _, job = heapq.heappop(self._heap)
                await limiter.acquire()
                tg.start_soon(self._attempt, job, limiter)

    async def _attempt(self, job: _Job, limiter: anyio.Semaphore) -> None:
        payment = job.payment
        try:
            reply: NetworkReply | None = None
            try:
                with anyio.move_on_after(job.route.timeout_s):
                    reply = await job.route.adapter.resolve(payment)
            except NotSent as exc:
                log.info("resolve attempt %d: %s", job.attempts + 1, exc,
                         extra={"payment_id": payment.payment_id})
            except Exception as exc:  # one payment's fault never ends the resolver
                self._quarantine(job, exc)
                return
            if reply is not None:
                await self._finish(job, reply)
            else:
                self._retry(job)
        finally:
            limiter.release()

    def _retry(self, job: _Job) -> None:
        job.attempts += 1
        policy = job.policy
        now = self._clock.now()
        assert job.attempts <= policy.max_attempts
        if job.attempts >= policy.max_attempts or now - job.since + job.delay > policy.within_s:
            self._escalate(job, now)
            return
        self._schedule(job, now + job.delay)
        job.delay = min(job.delay * 2, policy.max_delay_s)

    def _escalate(self, job: _Job, now: float) -> None:
        """Budget or window spent: an operator takes over (alert); the journal keeps it
        unknown, so the next start-up tries again."""
        pid = job.payment.payment_id
        assert pid in self._jobs and pid not in self._escalated
        self._escalated.add(pid)
        log.error("unknown outcome unresolved after %d attempts in %.0f s: handed to an"
                  " operator (resolved again at the next start)", job.attempts,
                  now - job.since, extra={"payment_id": pid})
        self._update_gauges()

    def _quarantine(self, job: _Job, exc: Exception) -> None:
        """Set aside a payment whose resolution can never be built (a CodecError: the
        payment never changes) or hit a bug. Retrying it on the schedule would log the
        same failure up to ``max_attempts`` times; instead it is handed to an operator at
        once, counted in ``payswitch_quarantined_records{kind="resolution"}`` (alert). The
        journal keeps it unknown: the next start tries once more, never blocked by it."""
        pid = job.payment.payment_id
        assert self._jobs.get(pid) is job and pid not in self._escalated
        self._metrics.quarantined["resolution"].inc()
        permanent = isinstance(exc, CodecError)
        log.error("resolution quarantined (%s): %s; handed to an operator",
                  "cannot be encoded" if permanent else "unexpected error", exc,
                  exc_info=not permanent, extra={"payment_id": pid})
        self._escalated.add(pid)
        self._update_gauges()

    async def _finish(self, job: _Job, reply: NetworkReply) -> None:
        payment, route = job.payment, job.route
        assert self._jobs.get(payment.payment_id) is job, "resolved twice"
        assert job.status is Status.UNKNOWN
        status = _STATUS[reply.outcome]
        check_transition(payment.payment_id, job.status, status)  # unknown -> final
        result = Result(
            payment.payment_id,
            status,
            reply.reason,
            reply.network_ref,
            route.network,
            aml_flag=payment.aml_flag,
        )
        await self._journal.write(
            JournalRecord.outcome(FINAL, payment, result, job.digest, self._clock.wall_us()),
            ON_FULL,
        )
        self._index.complete(payment.idempotency_key, result)
        self._metrics.resolved[(payment.channel, status)].inc()
        self.resolved += 1
        del self._jobs[payment.payment_id]
        self._escalated.discard(payment.payment_id)
        self._update_gauges()


def recover(
    recovered: Recovered,
    *,
    index: IdempotencyIndex,
    resolver: Resolver,
    standin: StandIn,
    router: Router,
    metrics: SwitchMetrics,
    now: float,
    wall_us: int,
    retention_s: float,
    resolve_endpoint: Callable[[Payment, Target], str],
    on_recovered: Callable[[Payment, Route], None] | None = None,
) -> None:
    """Start-up recovery, in one place: restore the idempotency window, re-queue
    undelivered stand-in advices, and hand every unfinished payment to the resolver
    before the switch reports ready."""
    assert retention_s > 0 and wall_us > 0
    for final in recovered.finals:  # oldest first
        age_s = (wall_us - final.at_us) / 1e6
        if age_s < retention_s:
            index.restore(final.idempotency_key, final.body_hash, final.result, now - age_s)
    for advice in recovered.pending_advices:
        target = router.target(advice.payment)
        standin.queue_advice(advice.payment, advice.result, target.endpoints, advice.body_hash)
    for unfinished in recovered.unfinished:
        key = unfinished.payment.idempotency_key
        # Pending in the index, so a client retry waits for the answer.
        if index.get(key) is None:
            index.begin(key, unfinished.body_hash, now)
        try:
            target = router.target(unfinished.payment)
            route = router.route(resolve_endpoint(unfinished.payment, target), target)
        except NoRoute:
            log.error("no route to resolve an unfinished payment",
                      extra={"payment_id": unfinished.payment.payment_id})
            continue
        made_us = int(unfinished.payment.received_at.timestamp() * 1e6)
        resolver.submit(unfinished.payment, unfinished.body_hash, route, unfinished.status,
                        elapsed_s=max(0.0, (wall_us - made_us) / 1e6))
        if on_recovered is not None:  # the core answers retries of this key meanwhile
            on_recovered(unfinished.payment, route)
        metrics.recovered.inc()
