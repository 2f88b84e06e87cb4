"""Resolves payments whose outcome is unknown: sent to a network, no answer in time.

Money rule: an unknown payment is never assumed approved or declined. Cards get a
reversal (the issuer voids any hold it placed); SWIFT and QR get a status inquiry (the
network's book is the truth). The answer is journaled as the payment's final state, and
the idempotency index is updated so a client retry sees it.

Scheduling: a timer heap per channel ordered by due time, per-channel schedules
(:class:`ResolutionPolicy`). Nothing sleeps on a job's delay: a QR check-status that may
not be asked before 90 s never holds up a card reversal due now. At most ``workers``
attempts per channel are in flight at once, each bounded by its route's timeout: card
reversals hanging on a late issuer never hold up SWIFT or QR inquiries.

Retried on the channel's schedule until resolved, or until the channel's budget
(``max_attempts``) or window (``within_s``) is spent: then it is *handed to an operator*
-- an error log line and ``payswitch_unresolved_escalated_payments`` (alert
PayswitchUnresolvedPaymentsEscalated) -- and stays counted in
``payswitch_unresolved_payments``; the journal still holds it as unknown, so the next
start-up tries again. Bounded: at most ``max_queue`` payments per channel are being
resolved; one past that waits in the journal (still counted as unresolved) and is taken
back by a *refill*, a fresh read of the journal's unfinished payments, once its channel's
queue is half empty. An escalated payment gives its place back (only its id, channel
and amount are kept, ``max_escalated`` of them), so a long outage's escalations never lock new
unknowns out. A payment whose resolution cannot be built (it cannot be encoded) is
*quarantined*: escalated at once, without retries, and counted apart.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, Protocol

import anyio
import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent
from switch.journal import FINAL, FinalRecord, JournalRecord, OnFull
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
    #: Attempts in flight at once on this channel. A crash leaves every payment then in
    #: flight unfinished: each waits its turn for a worker, so this sets how fast a
    #: restart's backlog drains (about workers / network latency per second).
    workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    # Why 32, not the old fixed 8: at 8 (~20 resolutions/s per channel) the simulator's
    # seed 1 (10 simulated min, fault intensity 20) saw the backlog of repeated crashes
    # outgrow the schedule, then the queue; at 32 the same seed holds both.


class ResolutionConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How unknown outcomes are chased, per channel."""

    card: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)
    swift: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)
    qr: ResolutionPolicy = msgspec.field(default_factory=ResolutionPolicy)


if TYPE_CHECKING:
    from switch.clock import Clock
    from switch.journal import Journal, Recovered
    from switch.journal.reader import UnfinishedPayment
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.idempotency import IdempotencyIndex
    from switch.payment.restarts import RestartAges
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
#: Every channel, each with its own timer heap and workers.
CHANNELS: Final = ("card", "swift", "qr")
#: A resolution's outcome was learned from the network: it must never be dropped.
ON_FULL: Final = OnFull.WAIT
#: Least time before the journal's backlog is read again after a read failed. A read
#: that works needs no such limit: it fills the queue, and the next waits until half of
#: that is done (a 5 s limit on every read left the workers idle with the queue empty
#: while payments waited in the journal: the simulator, seed 10, intensity 40, 10 min).
REFILL_RETRY_S: Final = 5.0
#: Escalated payments remembered (id and channel only) per ``max_queue``.
ESCALATED_PER_QUEUED: Final = 10


#: What the resolver is handed for one payment: the payment, its body hash, the route
#: to ask, its last journaled state (unknown, or sent if crash-recovered), its age, and
#: whether the journal showed it finished, then reopened by an acquirer's reversal.
Candidate = tuple[Payment, bytes, "Route", Status, float, bool]


@dataclass(slots=True, eq=False)
class ResolutionJob:
    payment: Payment
    digest: bytes
    route: Route
    policy: ResolutionPolicy
    status: Status  # the last state journaled: unknown (or sent, for a crash-recovered one)
    since: float  # when it was handed over (clock.now)
    attempts: int = 0
    delay: float = 0.05


class ResolutionQueue:
    """The resolver's decisions, sans-IO: when each payment is asked about, what an answer
    means, when to give up. Time comes in as ``now``; nothing here awaits, sleeps or reads
    a clock. :class:`Resolver` drives it on anyio, the simulator (switch/sim) in virtual
    time: the same decisions either way."""

    def __init__(
        self,
        *,
        index: IdempotencyIndex,
        metrics: SwitchMetrics,
        max_queue: int = 10_000,
        policies: ResolutionConfig | None = None,
        max_escalated: int | None = None,
    ) -> None:
        assert max_queue >= 1 and (max_escalated is None or max_escalated >= 1)
        self._index = index
        self._metrics = metrics
        self._policies = policies if policies is not None else ResolutionConfig()
        self._max_queue = max_queue
        self._max_escalated = (max_escalated if max_escalated is not None
                               else ESCALATED_PER_QUEUED * max_queue)
        #: A timer heap per channel: the shells bound attempts in flight per channel, so a
        #: channel whose attempts all hang to their timeout never holds up the others.
        self._heaps: dict[str, list[tuple[float, int, ResolutionJob]]] = {
            channel: [] for channel in CHANNELS}
        self._order = itertools.count()  # ties on due time: first come, first served
        #: Every payment being resolved: queued or in flight (``max_queue`` at most per
        #: channel: one bound for all let card and QR jobs on degraded networks fill the
        #: queue while SWIFT's network was back and its workers idle, its unknowns waiting
        #: in the journal -- the simulator, seed 12, intensity 40, 10 simulated min).
        self._jobs: dict[str, ResolutionJob] = {}
        self._jobs_of: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        #: Payments handed to an operator, oldest first: id -> (channel, amount: a repeat
        #: reversal of another amount is 13, Reversals.admit), ``max_escalated``
        #: at most. They hold no place in the queue: held there, escalations of a long
        #: outage filled it and every new unknown waited in the journal until a restart.
        self._escalated: dict[str, tuple[str, int]] = {}
        self.resolved = 0
        #: Unknown payments held nowhere in memory, per channel: they wait in the journal
        #: for a refill.
        self._waiting: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        #: Every overflow ever counted, per channel: a refill's read misses those counted
        #: after it began.
        self._overflows: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        self._update_gauges()

    @property
    def pending(self) -> int:
        """Payments still unknown that this switch knows of (being resolved, escalated, or
        waiting in the journal)."""
        return len(self._jobs) + len(self._escalated) + self.overflowed

    @property
    def escalated(self) -> int:
        """Payments handed to an operator (bounded by ``max_escalated``). Not those past
        the queue's bound: a refill takes them back, and PayswitchUnresolvedPaymentsStuck
        pages if they stay unknown."""
        return len(self._escalated)

    @property
    def policies(self) -> ResolutionConfig:
        return self._policies

    @property
    def tracked(self) -> int:
        """Payments queued or in flight (bounded by ``max_queue`` per channel)."""
        return len(self._jobs)

    def tracked_of(self, channel: str) -> int:
        """``channel``'s payments queued or in flight (bounded by ``max_queue``)."""
        return self._jobs_of[channel]

    def holds(self, payment_id: str) -> bool:
        """``payment_id`` is this resolver's: queued, in flight, or handed to an operator
        (its final still to be journaled; the next start tries an escalated one again).
        An approved payment it holds is a reversal under way (Reversals.admit): the
        resolver is handed an approval only when a reversal reopened it."""
        return payment_id in self._jobs or payment_id in self._escalated

    def amount_held(self, payment_id: str) -> int | None:
        """The amount of a payment queued, in flight or escalated (None: not held)."""
        job = self._jobs.get(payment_id)
        if job is not None:
            return job.payment.amount
        escalated = self._escalated.get(payment_id)
        return None if escalated is None else escalated[1]

    def escalated_now(self, payment_id: str) -> bool:
        """``payment_id`` was handed to an operator (and not forgotten past the bound)."""
        return payment_id in self._escalated

    @property
    def overflowed(self) -> int:
        """Unknown payments waiting in the journal for room (all channels)."""
        return sum(self._waiting.values())

    @property
    def max_escalated(self) -> int:
        return self._max_escalated

    @property
    def overflow_mark(self) -> tuple[int, ...]:
        """Overflows counted so far, per channel: take it when a refill's read begins."""
        return tuple(self._overflows[c] for c in CHANNELS)

    def _update_gauges(self) -> None:
        assert len(self._escalated) <= self._max_escalated
        self._metrics.unresolved.set(self.pending)
        self._metrics.unresolved_escalated.set(self.escalated)

    def submit(self, payment: Payment, digest: bytes, route: Route, status: Status,
               elapsed_s: float, now: float) -> bool:
        """See :meth:`Resolver.submit`; True if a new job was scheduled."""
        assert elapsed_s >= 0.0, elapsed_s
        assert status in (Status.UNKNOWN, Status.SENT), status
        if payment.payment_id in self._jobs or payment.payment_id in self._escalated:
            return False  # already being resolved, or an operator's
        channel = payment.channel
        if self._jobs_of[channel] >= self._max_queue:
            self._overflow(channel)
            if self._waiting[channel] == 1:  # once per episode: the gauges count the rest
                log.error("resolver full for %s (%d); payments past it wait in the journal"
                          " until the queue has room", channel, self._max_queue,
                          extra={"payment_id": payment.payment_id})
            self._update_gauges()
            return False
        self._track(payment, digest, route, status, elapsed_s, now)
        return True

    def _overflow(self, channel: str) -> None:
        self._waiting[channel] += 1
        self._overflows[channel] += 1

    @property
    def needs_refill(self) -> bool:
        """A channel's payments wait in the journal (overflowed) and its queue is at most
        half full: time to take them back (:meth:`refill`). Half, so that one journal
        read takes thousands back, not one per finished job."""
        half = self._max_queue // 2
        jobs_of = self._jobs_of
        return any(n and jobs_of[c] <= half for c, n in self._waiting.items())

    def refill(self, candidates: Iterable[Candidate], now: float,
               mark: tuple[int, ...] | None = None,
               waits: Callable[[str], bool] | None = None) -> int:
        """Take back payments that overflowed the queue, from a fresh read of the journal's
        unfinished payments (the shell filters out those the payment core still owns).
        Without this they stayed unknown until the next restart, however long their
        network had been back (the simulator: seed 1, 10 simulated min, intensity 40).
        ``mark``: :attr:`overflow_mark` when the read began (None: just now). Returns how
        many were taken; those that still find no room are counted anew, and so are those
        counted after the read began, which it may have missed (counted twice at worst:
        one more read, never a payment forgotten until a restart). ``waits``: keys that are
        another's for now (a reversal being decided, FrontCore's): not taken, counted as
        waiting, so a later refill takes them back if that one lets go without a hand-over
        (skipped uncounted, a released claim left the reopened payment to nobody)."""
        for i, channel in enumerate(CHANNELS):
            since_read = 0 if mark is None else self._overflows[channel] - mark[i]
            assert 0 <= since_read <= self._waiting[channel]
            self._waiting[channel] = since_read
        taken = 0
        index, jobs, escalated, jobs_of = self._index, self._jobs, self._escalated, self._jobs_of
        for payment, digest, route, status, elapsed_s, reopened in candidates:
            pid = payment.payment_id
            if pid in jobs or pid in escalated:
                continue
            if waits is not None and waits(payment.idempotency_key):
                self._overflow(payment.channel)
                continue
            entry = index.get(payment.idempotency_key)
            known = entry.result if entry is not None else None
            if known is not None and known.payment_id == pid \
                    and known.status is not Status.UNKNOWN \
                    and not (reopened and known.status is Status.APPROVED):
                # Resolved since the journal was read (the core answers unknown). Not a
                # reversal's: its approval stays the key's answer until the reversal is
                # done (then reversed), and skipped, it stayed approved, the issuer holding
                # the money, until a restart (the simulator: reversal-undone, seed 5).
                continue
            if jobs_of[payment.channel] >= self._max_queue:
                self._overflow(payment.channel)
                continue
            self._track(payment, digest, route, status, elapsed_s, now)
            taken += 1
        assert max(jobs_of.values()) <= self._max_queue and sum(jobs_of.values()) == len(jobs)
        self._update_gauges()
        for channel, waiting in self._waiting.items():
            if waiting:
                log.error("resolver full for %s (%d); %d payments still wait in the journal",
                          channel, self._max_queue, waiting)
        return taken

    def _track(self, payment: Payment, digest: bytes, route: Route, status: Status,
               elapsed_s: float, now: float) -> None:
        if status is Status.SENT:
            # Crash-recovered: sent, then nothing journaled -- its outcome is unknown.
            check_transition(payment.payment_id, status, Status.UNKNOWN)
        policy: ResolutionPolicy = getattr(self._policies, payment.channel)
        # The wait after a failed attempt starts at the first delay, never above
        # max_delay_s ("longest wait between attempts"): QR's 90 s first delay made the
        # first retry wait 90 s, not 30 (the simulator found it: seed 1, one hour, 2338 s).
        job = ResolutionJob(payment, digest, route, policy, Status.UNKNOWN, now,
                            delay=min(max(policy.first_after_s, 0.05), policy.max_delay_s))
        self._jobs[payment.payment_id] = job
        self._jobs_of[payment.channel] += 1
        # The network's own rule may forbid asking too early (QR: not before 90 s after the
        # payment). The simulator found restarts waiting it anew: count from the payment.
        self._schedule(job, now + max(0.0, policy.first_after_s - elapsed_s))
        self._update_gauges()

    def _schedule(self, job: ResolutionJob, due: float) -> None:
        heapq.heappush(self._heaps[job.payment.channel], (due, next(self._order), job))

    def next_due(self, channels: Iterable[str] = CHANNELS) -> float | None:
        """When the next attempt of ``channels`` is due (None: nothing queued)."""
        dues = [h[0][0] for c in channels if (h := self._heaps[c])]
        return min(dues) if dues else None

    def pop_due(self, now: float, channels: Iterable[str] = CHANNELS) -> ResolutionJob | None:
        """The job of ``channels`` (those with a free worker) due first at ``now``; ties in
        order of scheduling."""
        best: list[tuple[float, int, ResolutionJob]] | None = None
        for c in channels:
            h = self._heaps[c]
            if h and h[0][0] <= now and (best is None or h[0][:2] < best[0][:2]):
                best = h
        return heapq.heappop(best)[2] if best is not None else None

    def no_answer(self, job: ResolutionJob, now: float) -> None:
        """An attempt got no answer (timeout, refused, error): retry on the channel's
        schedule, or hand the payment to an operator once its budget or window is spent."""
        job.attempts += 1
        policy = job.policy
        assert job.attempts <= policy.max_attempts
        if job.attempts >= policy.max_attempts or now - job.since + job.delay > policy.within_s:
            self._escalate(job, now)
            return
        self._schedule(job, now + job.delay)
        job.delay = min(job.delay * 2, policy.max_delay_s)

    def _escalate(self, job: ResolutionJob, now: float) -> None:
        """Budget or window spent: an operator takes over (alert); the journal keeps it
        unknown, so the next start-up tries again."""
        pid = job.payment.payment_id
        log.error("unknown outcome unresolved after %d attempts in %.0f s: handed to an"
                  " operator (resolved again at the next start)", job.attempts,
                  now - job.since, extra={"payment_id": pid})
        self._hand_over(job)

    def _hand_over(self, job: ResolutionJob) -> None:
        """``job`` leaves the queue for the operator's list. Past ``max_escalated`` the
        oldest is forgotten: it waits in the journal like an overflow, and a refill takes
        it back for another round of attempts (harmless: a reversal or an inquiry may be
        asked again)."""
        pid = job.payment.payment_id
        assert self._jobs.get(pid) is job and pid not in self._escalated
        self._forget(job)
        escalated = self._escalated
        if len(escalated) >= self._max_escalated:
            self._overflow(escalated.pop(next(iter(escalated)))[0])
        escalated[pid] = (job.payment.channel, job.payment.amount)
        assert len(escalated) <= self._max_escalated
        self._update_gauges()

    def quarantine(self, job: ResolutionJob, exc: Exception) -> None:
        """Set aside a payment whose resolution can never be built (a CodecError: the
        payment never changes) or hit a bug. Retrying it on the schedule would log the
        same failure up to ``max_attempts`` times; instead it is handed to an operator at
        once, counted in ``payswitch_quarantined_records{kind="resolution"}`` (alert). The
        journal keeps it unknown: the next start tries once more, never blocked by it."""
        pid = job.payment.payment_id
        self._metrics.quarantined["resolution"].inc()
        permanent = isinstance(exc, CodecError)
        log.error("resolution quarantined (%s): %s; handed to an operator",
                  "cannot be encoded" if permanent else "unexpected error", exc,
                  exc_info=not permanent, extra={"payment_id": pid})
        self._hand_over(job)

    def outcome(self, job: ResolutionJob, reply: NetworkReply) -> Result:
        """The network answered: the payment's final result, to journal before
        :meth:`finished` (unknown -> final, checked)."""
        payment = job.payment
        assert self._jobs.get(payment.payment_id) is job, "resolved twice"
        assert job.status is Status.UNKNOWN
        status = _STATUS[reply.outcome]
        check_transition(payment.payment_id, job.status, status)  # unknown -> final
        return Result(payment.payment_id, status, reply.reason, reply.network_ref,
                      job.route.network, aml_flag=payment.aml_flag)

    def finished(self, job: ResolutionJob, result: Result) -> None:
        """``result`` is durable: a client retry sees it; the job is done."""
        payment = job.payment
        assert self._jobs.get(payment.payment_id) is job, "resolved twice"
        self._index.complete(payment.idempotency_key, result)
        self._metrics.resolved[(payment.channel, result.status)].inc()
        self.resolved += 1
        self._forget(job)
        self._update_gauges()

    def _forget(self, job: ResolutionJob) -> None:
        """``job`` leaves the queue (resolved, or handed to an operator)."""
        channel = job.payment.channel
        del self._jobs[job.payment.payment_id]
        self._jobs_of[channel] -= 1
        assert self._jobs_of[channel] >= 0


class Resolver:
    """:class:`ResolutionQueue` on anyio: a scheduler task, ``workers`` attempts at most in
    flight per channel, each bounded by its route's timeout, answers journaled before they
    count."""

    def __init__(
        self,
        *,
        clock: Clock,
        journal: Journal,
        index: IdempotencyIndex,
        metrics: SwitchMetrics,
        max_queue: int = 10_000,
        workers: int | None = None,
        policies: ResolutionConfig | None = None,
        backlog: Callable[[], Awaitable[Iterable[Candidate]]] | None = None,
    ) -> None:
        """``workers``: attempts in flight per channel, for every channel (default: each
        channel's ``workers`` policy). ``backlog``: the journal's unfinished payments the
        core does not own, read afresh, to take back what overflowed ``max_queue``."""
        assert max_queue >= 1 and (workers is None or workers >= 1)
        self._clock = clock
        self._journal = journal
        self.queue = ResolutionQueue(index=index, metrics=metrics, max_queue=max_queue,
                                     policies=policies)
        self._workers = {c: workers if workers is not None
                         else getattr(self.queue.policies, c).workers for c in CHANNELS}
        self._backlog = backlog
        #: Keys not to take back yet, counted as waiting (ResolutionQueue.refill's
        #: ``waits``): the reversals the front doors are deciding (app.py sets it).
        self.waits: Callable[[str], bool] | None = None
        self._refill_at = -math.inf
        self._wakeup = anyio.Event()

    @property
    def pending(self) -> int:
        """Payments still unknown that this switch knows of (tracked or overflowed)."""
        return self.queue.pending

    @property
    def escalated(self) -> int:
        return self.queue.escalated

    @property
    def resolved(self) -> int:
        return self.queue.resolved

    @property
    def overflowed(self) -> int:
        return self.queue.overflowed

    def submit(self, payment: Payment, digest: bytes, route: Route,
               status: Status = Status.UNKNOWN, elapsed_s: float = 0.0) -> None:
        """Track ``payment`` (state ``status``: unknown, or sent if recovered after a crash)
        until the network tells its outcome. ``elapsed_s``: how long ago it was made, so a
        crash-recovered payment does not wait its channel's first delay all over again."""
        if self.queue.submit(payment, digest, route, status, elapsed_s, self._clock.now()):
            self._wakeup.set()

    def next_due(self) -> float | None:
        return self.queue.next_due()

    async def run(self) -> None:
        """The scheduler: start each job's attempt when it is due, ``workers`` at most per
        channel (a shared pool let card reversals hanging on a late issuer hold up every
        SWIFT and QR inquiry behind them: the simulator found it, after a crash)."""
        busy = dict.fromkeys(CHANNELS, 0)
        workers = self._workers
        async with anyio.create_task_group() as tg:
            while True:
                now = self._clock.now()
                if self._backlog is not None and self.queue.needs_refill \
                        and now >= self._refill_at:
                    self._refill_at = math.inf  # one read at a time
                    tg.start_soon(self._refill)
                free = [c for c in CHANNELS if busy[c] < workers[c]]
                job = self.queue.pop_due(now, free)
                if job is None:
                    due = self.queue.next_due(free)
                    if self.queue.needs_refill and self._refill_at < math.inf:
                        due = self._refill_at if due is None else min(due, self._refill_at)
                    self._wakeup = anyio.Event()
                    timeout = math.inf if due is None else due - self._clock.now()
                    with anyio.move_on_after(timeout):
                        await self._wakeup.wait()  # a submit, a retry or a freed worker
                    continue
                busy[job.payment.channel] += 1
                tg.start_soon(self._attempt, job, busy)

    async def _refill(self) -> None:
        """Read the journal's backlog (in a thread: the shell's ``backlog``) and take back
        what fits; the next read no sooner than this one took, and after a failed read,
        not for REFILL_RETRY_S."""
        assert self._backlog is not None
        mark = self.queue.overflow_mark  # what overflows during the read, it may miss
        began = self._clock.now()
        try:
            self.queue.refill(await self._backlog(), self._clock.now(), mark, self.waits)
        except Exception as exc:  # the journal unreadable for now: the next round retries
            log.error("resolver backlog unreadable: %s", exc, exc_info=exc)
            self._refill_at = self._clock.now() + REFILL_RETRY_S
        else:
            # The read folds the live journal in a thread, beside the loop's payments: at
            # most half the time goes to reading, however large the journal.
            now = self._clock.now()
            self._refill_at = now + (now - began)
        finally:
            self._wakeup.set()

    async def _attempt(self, job: ResolutionJob, busy: dict[str, int]) -> None:
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
                self.queue.quarantine(job, exc)
                return
            if reply is not None:
                await self._finish(job, reply)
            else:
                self.queue.no_answer(job, self._clock.now())
        finally:
            busy[payment.channel] -= 1
            self._wakeup.set()

    async def _finish(self, job: ResolutionJob, reply: NetworkReply) -> None:
        result = self.queue.outcome(job, reply)
        await self._journal.write(
            JournalRecord.outcome(FINAL, job.payment, result, job.digest,
                                  self._clock.wall_us()),
            ON_FULL,
        )
        self.queue.finished(job, result)


class Submits(Protocol):
    """What recovery hands unfinished payments to: :class:`Resolver`, or the simulator's."""

    def submit(self, payment: Payment, digest: bytes, route: Route,
               status: Status = Status.UNKNOWN, elapsed_s: float = 0.0) -> None: ...


def _age_of(final_age: tuple[FinalRecord, float]) -> float:
    return final_age[1]


def recover(
    recovered: Recovered,
    *,
    index: IdempotencyIndex,
    resolver: Submits,
    standin: StandIn,
    router: Router,
    metrics: SwitchMetrics,
    now: float,
    wall_us: int,
    retention_s: float,
    resolve_endpoint: Callable[[Payment, Target], str],
    on_recovered: Callable[[Payment, Route], None] | None = None,
    ages: RestartAges | None = None,
    sent_within_s: float = 0.0,
) -> None:
    """Start-up recovery, in one place: restore the idempotency window, re-queue
    undelivered stand-in advices, and hand every unfinished payment to the resolver
    before the switch reports ready. ``ages``: the recent starts' wall steps, so an
    unfinished payment's age (its first delay) is true time, not a stepped wall clock's
    (None: read on the wall clock). ``sent_within_s``: how long after its receipt a
    payment may still have been sent (the core's payment deadline): the first delay
    counts from then, as the network counts from when it first saw the payment."""
    assert 0.0 <= sent_within_s <= 86400.0
    assert retention_s > 0 and wall_us > 0
    # The idempotency window in true time too: on the wall clock, a forward step forgot
    # keys the step early, and a client's retry near the window's edge was a new payment.
    # Wall ages when no step is known (nearly every start): a frame scan per final less.
    true_ages = ages if ages is not None and ages.stepped else None
    final_ages: Iterable[tuple[FinalRecord, float]]
    if true_ages is None:
        final_ages = ((final, (wall_us - final.answered_at_us) / 1e6)
                      for final in recovered.finals)
    else:
        # Oldest first in true time, the order the running index held them: by wall
        # stamp, a run after a backward step sorted before the runs it followed, and at
        # the max_keys bound its keys, the youngest, were evicted first (a retry of one
        # with another body was approved anew: simulate --vary-config seed 1284).
        final_ages = sorted(((final, true_ages.age_s(final.answered_at_us, wall_us))
                             for final in recovered.finals),
                            key=_age_of, reverse=True)
    index.restore_all((final.idempotency_key, final.body_hash, final.result, now - age_s)
                      for final, age_s in final_ages if age_s < retention_s)  # oldest first
    for advice in recovered.pending_advices:
        target = router.target(advice.payment)
        standin.recovered(advice.payment, target.name)
        standin.queue_advice(advice.payment, advice.result, target.name, target.endpoints,
                             advice.body_hash)
    for unfinished in recovered.unfinished:
        # The route first: the key's state depends on whether anyone will resolve it.
        candidate = _candidate(unfinished, router, resolve_endpoint, wall_us, ages,
                               sent_within_s)
        if candidate is None:
            _unresolvable(index, unfinished, now)
            continue
        key = unfinished.payment.idempotency_key
        # Pending in the index, so a client retry waits for the answer.
        if index.get(key) is None:
            index.begin(key, unfinished.body_hash, now)
        payment, digest, route, status, elapsed_s, _ = candidate
        resolver.submit(payment, digest, route, status, elapsed_s=elapsed_s)
        if on_recovered is not None:  # the core answers retries of this key meanwhile
            on_recovered(payment, route)
        metrics.recovered.inc()


def _unresolvable(index: IdempotencyIndex, unfinished: UnfinishedPayment, now: float) -> None:
    """No route to resolve ``unfinished``: it stays unknown in the journal, and the next
    start tries again. Its key answers that state at once, as a live payment's unknown
    does, rather than staying in flight: nobody would ever finish it before a restart,
    so every retry waited, was refused, and the entry outlived every eviction. It is
    kept, never let go: the payment was sent, and a retry must not book it afresh."""
    payment = unfinished.payment
    key = payment.idempotency_key
    if index.get(key) is not None:
        return  # an answer already given (an approval being reversed) stays the answer
    index.begin(key, unfinished.body_hash, now)
    index.complete(key, Result(payment.payment_id, Status.UNKNOWN, reasons.RESPONSE_TOO_LATE,
                               aml_flag=payment.aml_flag))
    entry = index.get(key)
    assert entry is not None and not entry.pending, "an unresolvable key left in flight"


def first_endpoint(payment: Payment, target: Target) -> str:
    """The endpoint an unfinished payment was sent to: the reversal must go to the same
    issuer network. The intent does not record it, so take the target's first endpoint;
    card endpoints of one scheme share the issuers' books, and the resolver retries."""
    return target.endpoints[0]


def backlog_candidates(
    unfinished: Iterable[UnfinishedPayment],
    *,
    router: Router,
    wall_us: int,
    resolve_endpoint: Callable[[Payment, Target], str],
    owned: Callable[[str], bool],
    ages: RestartAges | None = None,
    sent_within_s: float = 0.0,
    started_us: int = 0,
) -> Iterator[Candidate]:
    """What a refill may take back: the journal's unfinished payments, less those the
    payment core still owns (an intent whose attempt is in flight is unfinished in the
    journal, yet no business of the resolver's). Lazy: filtered as the queue takes them,
    on the event loop, so ``owned`` is read at the moment it matters. ``ages`` and
    ``sent_within_s``: as :func:`recover`'s (a payment taken back may have been made
    before a restart). ``started_us``: this run's start on its wall clock (0: not known).
    A payment made before it (:func:`made_before_run`) was sent, if ever, before it: its
    attempts died with their run. So its first delay counts from this start at the
    latest, as start-up recovery's did; counted from its receipt plus the deadline, one
    that had overflowed the queue at the start waited up to that deadline longer."""
    assert 0.0 <= sent_within_s <= 86400.0 and started_us >= 0
    up_s = max(0.0, (wall_us - started_us) / 1e6) if started_us else 0.0
    for one in unfinished:
        if owned(one.payment.idempotency_key):
            continue
        candidate = _candidate(one, router, resolve_endpoint, wall_us, ages, sent_within_s)
        if candidate is None:
            continue
        if candidate[4] < up_s and not one.reopened \
                and made_before_run(one.payment, started_us):
            candidate = (*candidate[:4], up_s, candidate[5])
        yield candidate


#: A receipt stamp this close before a run's start may be the run's own: a payment's
#: receipt is kept as a datetime (whole microseconds, rounded), not as the stamp itself.
RUN_EDGE_US: Final = 1_000


def made_before_run(payment: Payment, started_us: int) -> bool:
    """``payment`` was made before the run that started at ``started_us`` (its wall
    clock; 0: not known, False). Told apart by stamps on purpose: one of an earlier run
    past this one's start (the wall clock set back at the restart) counts as this run's,
    which never asks early. Unless a reversal reopened it, nothing sent it in this run;
    a reopened one may be a stand-in approval whose advice reached the issuer since."""
    return bool(started_us) and received_us(payment) < started_us - RUN_EDGE_US


def received_us(payment: Payment) -> int:
    """``payment``'s receipt, on the wall clock of the run that made it (microseconds):
    the stamp its age, its run and its first delay are all counted from."""
    return int(payment.received_at.timestamp() * 1e6)


def _candidate(unfinished: UnfinishedPayment, router: Router,
               resolve_endpoint: Callable[[Payment, Target], str], wall_us: int,
               ages: RestartAges | None, sent_within_s: float) -> Candidate | None:
    """The resolver's arguments for one unfinished payment, or None with no route."""
    payment = unfinished.payment
    try:
        target = router.target(payment)
        route = router.route(resolve_endpoint(payment, target), target)
    except NoRoute:
        log.error("no route to resolve an unfinished payment",
                  extra={"payment_id": payment.payment_id})
        return None
    made_us = received_us(payment)
    # Its age sets the first delay (QR: no check-status before 90 s after the payment).
    # Counted from when the network could last have first seen it, as the network counts:
    # the core sends no attempt past the payment deadline from receipt, and a disk stall
    # may hold the intent's commit, so the send, nearly that long (counted from receipt,
    # seed 140 of a 10 s, intensity-40 campaign asked 87.1 s after the send: a 2.9 s
    # stall).
    age_s = max(0.0, _age_s(made_us, wall_us, ages) - sent_within_s)
    if unfinished.seen_by_us:
        # Or from when the journal shows it seen (its unknown: an attempt had been sent),
        # whichever is sooner. From the deadline alone, a refill asked every payment that
        # had overflowed the queue up to that deadline later than the core's own
        # hand-over would have, and a restart's recovery likewise.
        age_s = max(age_s, _age_s(unfinished.seen_by_us, wall_us, ages))
    assert age_s >= 0.0, age_s
    return (payment, unfinished.body_hash, route, unfinished.status, age_s,
            unfinished.reopened)


def _age_s(stamp_us: int, wall_us: int, ages: RestartAges | None) -> float:
    """How long ago ``stamp_us`` was, in true time. On the wall clock alone (``ages``
    None), a forward step at a restart made a payment look older: asked early."""
    if ages is None:
        return max(0.0, (wall_us - stamp_us) / 1e6)
    return ages.age_s(stamp_us, wall_us)
