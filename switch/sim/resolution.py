"""The production resolver's decisions on the simulation's event queue.

:class:`~switch.payment.resolver.ResolutionQueue` decides (the timer heap, the per-channel
schedules, retries, the budget and window before an operator takes over, what an answer
means); :class:`SimResolver` is its shell in virtual time, as
:class:`~switch.payment.resolver.Resolver` is on anyio: at most ``workers`` attempts in
flight per channel, each bounded by its route's timeout, the worker held until the answer
is durable. The attempt itself travels through the simulated world (refused, blackholed,
reset, late, technical errors), and the card reversal reaches the real card scheme.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from channels.behaviour import RequestPlan
from switch.adapters.base import NetworkReply
from switch.journal import encode_result
from switch.model import Payment, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import (
    CHANNELS,
    Candidate,
    ResolutionConfig,
    ResolutionJob,
    ResolutionQueue,
)
from switch.routing.router import Route
from switch.sim.networks import World
from switch.sim.saturation import SaturatedSpans

#: The resolver's default bound on tracked payments (app.py does not change it).
MAX_QUEUE: Final = 10_000

# Event kinds of the resolver (the simulation owns the numbering).
RES_WAKE, RES_ISSUER, RES_REPLY, RES_TIMEOUT = 100, 101, 102, 103


class Sim(Protocol):
    """What the resolver's shell needs of the simulation (switch/sim/simulation.py)."""

    now: float
    unknown_since: dict[str, float]
    failed_attempt_at: dict[str, float]
    world: World
    saturation: SaturatedSpans

    def push(self, at: float, kind: int, a: Any = None, b: Any = None) -> None: ...
    def wall(self) -> dt.datetime: ...
    def wall_us(self) -> int: ...
    def journal_then(self, boot: Any, row: Any, then: Callable[[], None]) -> None: ...
    def resolved(self, payment: Payment, result: Result) -> None: ...


class SimResolver:
    """The core's ResolverPort and recovery's resolver, for one boot of the switch."""

    def __init__(self, sim: Sim, boot: Any, policies: ResolutionConfig,
                 index: IdempotencyIndex, metrics: SwitchMetrics) -> None:
        self.sim = sim
        self.boot = boot
        self.queue = ResolutionQueue(index=index, metrics=metrics, max_queue=MAX_QUEUE,
                                     policies=policies)
        self.max_queue = MAX_QUEUE
        self.busy = dict.fromkeys(CHANNELS, 0)
        #: Attempts in flight at once per channel: each channel's ``workers`` policy.
        self.workers = {c: getattr(policies, c).workers for c in CHANNELS}
        #: The channels with a free worker, as _free answers them: kept with ``busy``
        #: (_take, _release) instead of made at every call. Stale wake-ups call _free
        #: twice each, millions of times in a simulated hour, for a set that changes only
        #: when an attempt starts or ends.
        self._free_now: list[str] = list(CHANNELS)
        self._wake_at = math.inf
        #: The latest wake-up armed: an older one still queued is superseded (stale).
        self._arm_no = 0
        self._attempt_no = 0
        #: The attempt each job in flight waits on (a late answer to an older one is dropped).
        self._waiting: dict[ResolutionJob, int] = {}

    def submit(self, payment: Payment, digest: bytes, route: Route,
               status: Status = Status.UNKNOWN, elapsed_s: float = 0.0) -> None:
        sim = self.sim
        sim.unknown_since.setdefault(payment.payment_id, sim.now)  # for the schedule check
        self.queue.submit(payment, digest, route, status, elapsed_s, sim.now)
        self._arm()

    def refill(self, candidates: Iterable[Candidate]) -> None:
        """Take back what overflowed the queue (ResolutionQueue.refill), and wake up."""
        # As app.py's: the reversals being decided are the acquirer shell's for now.
        self.queue.refill(candidates, self.sim.now, waits=self.boot.reversals.deciding)
        self._arm()

    def _free(self) -> list[str]:
        return self._free_now

    def _take(self, channel: str) -> None:
        busy = self.busy
        busy[channel] += 1
        assert busy[channel] <= self.workers[channel], (channel, busy[channel])
        if busy[channel] == self.workers[channel]:
            self.sim.saturation.start(channel, self.sim.now)
        self._free_now = [c for c in CHANNELS if busy[c] < self.workers[c]]

    def _release(self, channel: str) -> None:
        busy = self.busy
        if busy[channel] == self.workers[channel]:
            self.sim.saturation.end(channel, self.sim.now)
        busy[channel] -= 1
        assert busy[channel] >= 0, channel
        self._free_now = [c for c in CHANNELS if busy[c] < self.workers[c]]

    def _arm(self) -> None:
        """A wake-up at the next due time of a channel with a free worker (the scheduler
        task's sleep)."""
        due = self.queue.next_due(self._free())
        if due is not None and due < self._wake_at:
            self._wake_at = due
            self._arm_no += 1
            self.sim.push(max(due, self.sim.now), RES_WAKE, self.boot, self._arm_no)

    def wake(self, arm_no: int) -> None:
        """The wake-up armed as ``arm_no`` is due. Only the latest armed one runs, as the
        real scheduler (Resolver.run) sleeps until one deadline, woken early by a submit,
        a retry or a freed worker, each of which arms here too (submit, _done,
        _no_answer). A superseded one used to run anyway and arm once more: in seed 1's
        simulated hour 2.1M of the 5.5M events were such wake-ups, up to 1,800 queued at
        once; now 15k."""
        if arm_no != self._arm_no:
            return
        self._wake_at = math.inf
        while True:
            job = self.queue.pop_due(self.sim.now, self._free())
            if job is None:
                break
            self._take(job.payment.channel)
            self._attempt(job)
        self._arm()

    def _attempt(self, job: ResolutionJob) -> None:
        sim = self.sim
        now = sim.now
        self._attempt_no += 1
        attempt = self._attempt_no
        plan = sim.world.plan(job.route.network, now, job.payment, inquiry=True)
        if plan.action == "refuse":
            self._no_answer(job)  # NotSent: retried on the schedule at once
            return
        self._waiting[job] = attempt
        sim.push(now + job.route.timeout_s, RES_TIMEOUT, self.boot, (job, attempt))
        if plan.action in ("respond", "reset"):
            sim.push(now + plan.latency_s, RES_ISSUER, self.boot, (job, attempt, plan))

    def at_issuer(self, job: ResolutionJob, attempt: int, plan: RequestPlan) -> None:
        sim = self.sim
        if plan.technical_error is not None or plan.malformed:
            return  # answered 91/96 or garbage: the adapter repeats; the timeout retries
        # The card adapters draw their 0400's DE11 from the core's sequence (app.py).
        reply = sim.world.resolve(job.route.network, job.payment, sim.wall(),
                                  self.boot.trace.next(), now=sim.now)
        if plan.action == "reset":
            return  # decided, then the connection dropped: the timeout retries
        sim.push(sim.now + plan.late_delay_s, RES_REPLY, self.boot, (job, attempt, reply))

    def answered(self, job: ResolutionJob, attempt: int, reply: NetworkReply) -> None:
        if self._waiting.get(job) != attempt:
            return
        del self._waiting[job]
        result = self.queue.outcome(job, reply)
        payment = job.payment
        row = (payment.payment_id, payment.idempotency_key, "final", result.status.value,
               job.digest, encode_result(result), self.sim.wall_us())
        self.sim.journal_then(self.boot, row, lambda: self._done(job, result))

    def timed_out(self, job: ResolutionJob, attempt: int) -> None:
        if self._waiting.get(job) == attempt:
            del self._waiting[job]
            self._no_answer(job)

    def _no_answer(self, job: ResolutionJob) -> None:
        # For the schedule check: the next attempt is due within the channel's delay.
        self.sim.failed_attempt_at[job.payment.payment_id] = self.sim.now
        self.queue.no_answer(job, self.sim.now)
        self._release(job.payment.channel)
        self._arm()

    def _done(self, job: ResolutionJob, result: Result) -> None:
        self.queue.finished(job, result)
        self._release(job.payment.channel)
        self.sim.resolved(job.payment, result)
        self._arm()
