"""An in-process stand-in network for the switch core.

It implements :class:`~switch.adapters.base.ChannelAdapter` exactly as the real
simulators' adapters do, so the pipeline is exercised end to end without sockets. It
keeps a book of what it approved, so a reversal really voids an approval and a status
inquiry really answers from the network's side.

Deterministic: all randomness comes from one ``random.Random(seed)``, consumed in call
order, so the same seed and the same arrival order give the same outcomes.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Annotated

import anyio
import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent
from switch.bounds import Probability
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


#: Bound on the stand-in's memory of booked payments; the oldest are forgotten first.
MAX_BOOKED = 2_000_000


class StandInNetwork:
    def __init__(self, config: StandInNetworkConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._booked: OrderedDict[str, NetworkReply] = OrderedDict()
        self.down = False  # tests flip this to simulate a refused connection
        self.approvals_by_key: dict[str, int] = {}
        self.reversals = 0

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

    async def authorize(self, payment: Payment) -> NetworkReply:
        if self.down:
            raise NotSent(f"{self.name}: connection refused")
        cfg = self._config
        draw = self._rng.random()
        delay = self._latency()
        if draw < cfg.error_rate:
            reply = NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)
        elif draw < cfg.error_rate + cfg.decline_rate:
            reply = NetworkReply("declined", reasons.DO_NOT_HONOUR)
        else:
            reply = NetworkReply("approved", reasons.APPROVED, self._reference(payment))
        # Book before the delay: the network has acted even if the switch times out.
        self._book(payment, reply)
        if delay:
            await anyio.sleep(delay)
        return reply

    def _reference(self, payment: Payment) -> str:
        if payment.swift is not None:
            return payment.swift.uetr
        return f"{self._rng.getrandbits(24):06X}"

    def _book(self, payment: Payment, reply: NetworkReply) -> None:
        self._booked[payment.payment_id] = reply
        if len(self._booked) > MAX_BOOKED:
            self._booked.popitem(last=False)
        if reply.outcome == "approved":
            key = payment.idempotency_key
            self.approvals_by_key[key] = self.approvals_by_key.get(key, 0) + 1

    async def resolve(self, payment: Payment) -> NetworkReply:
        if self.down:
            raise NotSent(f"{self.name}: connection refused")
        booked = self._booked.get(payment.payment_id)
        if payment.channel == "card":
            # A reversal: void an approval if there was one; either way nothing is owed.
            if booked is not None and booked.outcome == "approved":
                self.reversals += 1
                key = payment.idempotency_key
                self.approvals_by_key[key] -= 1
                self._booked[payment.payment_id] = NetworkReply("reversed", reasons.APPROVED)
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
