"""An in-process stand-in network for the switch core.

It implements :class:`~switch.adapters.base.ChannelAdapter` exactly as the real
simulators' adapters do, so the pipeline is exercised end to end without sockets. It
keeps a book of what it approved, so a reversal really voids an approval and a status
inquiry really answers from the network's side.

Deterministic: all randomness comes from one ``random.Random(seed)``, consumed in call
order, so the same seed and the same arrival order give the same outcomes.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from typing import Annotated

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent, ReplySink
from switch.bounds import Probability
from switch.clock import backend_clock, timer_deadline
from switch.model import Channel, Payment


class StandInNetworkConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An in-process stand-in network: same adapter interface as the real simulators."""

    #: What routes call it.
    name: str
    #: The channel it serves.
    channel: Channel
    #: Median answer time (lognormal).
    latency_median_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 2.0
    #: Log-space spread of the answer time.
    latency_sigma: Annotated[float, msgspec.Meta(ge=0, le=3)] = 0.5
    #: Share of payments declined.
    decline_rate: Probability = 0.03
    #: Share of payments answered with a technical error (retried elsewhere).
    error_rate: Probability = 0.01
    seed: int = 1


#: Answers leave at the nearest whole millisecond of their drawn time: the event loop's
#: timers have millisecond resolution (see switch.clock.timer_deadline).
HALF_TICK_S = 0.0005
#: Bound on the stand-in's memory of booked payments; the oldest are forgotten first.
MAX_BOOKED = 2_000_000


class StandInNetwork:
    def __init__(self, config: StandInNetworkConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        # payment id -> (idempotency key, answer), oldest first; MAX_BOOKED of them.
        self._booked: OrderedDict[str, tuple[str, NetworkReply]] = OrderedDict()
        self.down = False  # tests flip this to simulate a refused connection
        #: Approvals standing per idempotency key, for the payments still in the book: a
        #: key approved twice within the last MAX_BOOKED payments is a double booking.
        self.approvals_by_key: dict[str, int] = {}
        self.reversals = 0
        # Answers of started requests, by due time: one delivery task for all of them.
        self._due: list[tuple[float, int, NetworkReply]] = []
        self._sink: ReplySink | None = None
        self._wake: anyio.Event | None = None
        self._sleeping_until = float("inf")
        self._clock = anyio.current_time

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def channel(self) -> Channel:
        return self._config.channel

    def _latency(self) -> float:
        cfg = self._config
        if cfg.latency_median_ms == 0:
            return 0.0
        median_s = cfg.latency_median_ms / 1000.0
        return median_s * self._rng.lognormvariate(0.0, cfg.latency_sigma)

    def _decide(self, payment: Payment) -> tuple[NetworkReply, float]:
        """Draw ``payment``'s outcome and latency (in that order: a seed gives the same
        outcomes whichever way it is sent) and book it before any delay: the network has
        acted even if the switch times out."""
        cfg = self._config
        draw = self._rng.random()
        delay = self._latency()
        if draw < cfg.error_rate:
            reply = NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)
        elif draw < cfg.error_rate + cfg.decline_rate:
            reply = NetworkReply("declined", reasons.DO_NOT_HONOUR)
        else:
            reply = NetworkReply("approved", reasons.APPROVED, self._reference(payment))
        self._book(payment, reply)
        return reply, delay

    async def authorize(self, payment: Payment) -> NetworkReply:
        if self.down:
            raise NotSent(f"{self.name}: connection refused")
        reply, delay = self._decide(payment)
        if delay:
            await anyio.sleep(delay)
        return reply

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        """Queue ``payment``; its answer reaches ``deliver`` after the drawn latency.

        Same draws in the same order as :meth:`authorize`, so a seed gives the same
        outcomes either way. Needs :meth:`run` (started by the switch like any adapter's).
        """
        if self.down:
            raise NotSent(f"{self.name}: connection refused")
        reply, delay = self._decide(payment)
        self._sink = deliver
        due = self._clock() + delay
        heapq.heappush(self._due, (due, token, reply))
        if due < self._sleeping_until and self._wake is not None:
            self._wake.set()

    def cancel(self, token: int) -> None:
        return None  # the answer is dropped by the core as late; nothing to undo here

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Deliver started requests' answers when due, all due ones in one batch."""
        self._clock = clock = backend_clock()
        self._wake = anyio.Event()
        task_status.started()
        due = self._due
        while True:
            now = clock()
            if due and due[0][0] <= now + HALF_TICK_S:
                batch = []
                while due and due[0][0] <= now + HALF_TICK_S:
                    _, token, reply = heapq.heappop(due)
                    batch.append((token, reply))
                assert self._sink is not None
                self._sink(batch)
                await anyio.lowlevel.checkpoint()
                continue
            self._sleeping_until = due[0][0] if due else float("inf")
            with anyio.CancelScope(deadline=timer_deadline(self._sleeping_until - HALF_TICK_S)):
                await self._wake.wait()
            self._sleeping_until = float("inf")
            self._wake = anyio.Event()

    def _reference(self, payment: Payment) -> str:
        if payment.swift is not None:
            return payment.swift.uetr
        return f"{self._rng.getrandbits(24):06X}"

    def _book(self, payment: Payment, reply: NetworkReply) -> None:
        key = payment.idempotency_key
        self._booked[payment.payment_id] = (key, reply)
        if reply.outcome == "approved":
            self.approvals_by_key[key] = self.approvals_by_key.get(key, 0) + 1
        if len(self._booked) > MAX_BOOKED:
            self._forget_oldest()
        assert len(self._booked) <= MAX_BOOKED

    def _forget_oldest(self) -> None:
        """Drop the oldest booked payment and its key's count once nothing holds it."""
        _, (key, reply) = self._booked.popitem(last=False)
        count = self.approvals_by_key.get(key, 0) - (reply.outcome == "approved")
        if count > 0:
            self.approvals_by_key[key] = count
        else:
            self.approvals_by_key.pop(key, None)

    async def resolve(self, payment: Payment) -> NetworkReply:
        if self.down:
            raise NotSent(f"{self.name}: connection refused")
        entry = self._booked.get(payment.payment_id)
        booked = entry[1] if entry is not None else None
        if payment.channel == "card":
            # A reversal: void an approval if there was one; either way nothing is owed.
            if booked is not None and booked.outcome == "approved":
                self.reversals += 1
                key = payment.idempotency_key
                self.approvals_by_key[key] -= 1
                self._booked[payment.payment_id] = (
                    key, NetworkReply("reversed", reasons.APPROVED))
            return NetworkReply("reversed", reasons.APPROVED, booked.network_ref if booked else "")
        # Status inquiry: the network's book is the truth; unseen means never processed.
        if booked is None:
            return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)
        return booked

    async def probe(self) -> bool:
        return not self.down

    @property
    def booked_twice(self) -> int:
        return sum(1 for count in self.approvals_by_key.values() if count > 1)

    async def aclose(self) -> None:
        return None
