"""The simulated switch's ports: what the real payment core and router are wired to, and
one boot of the switch (everything a crash throws away)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

from switch.adapters.base import NetworkReply, NotSent
from switch.adapters.trace import TraceNumbers
from switch.model import Channel, Payment
from switch.payment.core import PaymentCore
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.restarts import RestartAges
from switch.payment.reversal import Reversals
from switch.payment.standin import StandIn
from switch.protocols.wire import Response
from switch.routing.router import Router
from switch.sim.disk import SimJournal
from switch.sim.resolution import SimResolver


class Host(Protocol):
    """What the ports need of the simulation (switch/sim/simulation.py)."""

    now: float

    def wall_us(self) -> int: ...
    def client_reply(self, response: Response) -> None: ...
    def net_send(self, boot: Boot, endpoint: str, token: int, payment: Payment) -> None: ...


class Stub:
    """The router's view of an endpoint (name, channel); the sim carries the traffic."""

    def __init__(self, name: str, channel: Channel) -> None:
        self._name = name
        self._channel = channel

    @property
    def name(self) -> str:
        return self._name

    @property
    def channel(self) -> Channel:
        return self._channel

    async def authorize(self, payment: Payment) -> NetworkReply:
        raise NotSent("simulated endpoint: traffic goes through the simulation")

    async def resolve(self, payment: Payment) -> NetworkReply:
        raise NotSent("simulated endpoint: traffic goes through the simulation")

    async def aclose(self) -> None:
        return None


class Origin:
    """Every client's connection: the core's reply goes straight to the simulation's
    client_reply (bound once: a frame less per reply)."""

    def __init__(self, sim: Host) -> None:
        self.sim = sim
        self.reply: Callable[[Response], None] = sim.client_reply


class Net:
    """The core's NetworkPort: a request's fate comes from the endpoint's Behaviour."""

    def __init__(self, sim: Host, boot: Boot) -> None:
        self.sim = sim
        self.boot = boot
        # net_send with this boot bound once: a frame less per request.
        self.send: Callable[[str, int, Payment], None] = partial(sim.net_send, boot)

    def cancel(self, endpoint: str, token: int) -> None:
        return None  # a late answer finds no token in the core and is dropped there


class SimClock:
    def __init__(self, sim: Host) -> None:
        self.sim = sim

    def now(self) -> float:
        return self.sim.now

    def wall_us(self) -> int:
        """The wall clock records are stamped with (the simulation's, jumps included)."""
        return self.sim.wall_us()


class Boot:
    """One incarnation of the switch: everything a crash throws away."""

    core: PaymentCore
    router: Router
    index: IdempotencyIndex
    standin: StandIn
    resolver: SimResolver
    journal: SimJournal
    trace: TraceNumbers
    #: The recent starts' wall steps, read at this start (recovery's and refills' ages).
    ages: RestartAges

    def __init__(self, number: int, started: float) -> None:
        self.number = number
        self.started = started
        self.alive = True
        self.failed = False
        self.waiting: dict[object, list[Callable[[], None]]] = {}
        self.advice_delay = 0.05
        self.advice_armed = False
        self.wake_at = math.inf
        #: The acquirer reversals this boot is deciding or handed to its resolver
        #: (FrontCore's).
        self.reversals = Reversals()

    def discard(self) -> None:
        """Drop everything this boot holds, as a crash does. Its parts point back at it
        (the ports, the journal's callbacks), so without this it is cyclic garbage, left
        to a collector the simulation keeps off (switch/sim/simulation.py run())."""
        for name in ("core", "router", "index", "standin", "resolver", "journal", "trace",
                     "reversals"):
            self.__dict__.pop(name, None)
        self.waiting = {}
