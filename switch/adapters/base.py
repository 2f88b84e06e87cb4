"""The interface between the pipeline and a network: one adapter per network endpoint.

The pipeline knows nothing of ISO 8583, XML or QR strings; it hands an adapter a
:class:`~switch.model.Payment` and gets a :class:`NetworkReply`. The in-process stand-in
network and the adapters for the real simulators implement the same protocol, so the
pipeline does not change when one replaces the other.

Two ways to send. ``authorize`` awaits one answer (simple; the resolver and stand-in use
it). A :class:`SendsWithoutWaiting` adapter also offers ``start``: queue the request and
return at once; the answer comes back later, with the caller's token, through a
:data:`ReplySink`, in batches. The payment core drives networks that way, so no task,
Event or cancel scope exists per payment.

Two failure kinds matter for money and must stay distinct:
* :class:`NotSent`: the request never left (connection refused, no connection). Safe to
  retry or fail over: the network cannot have acted on it.
* Anything after sending -- a timeout, a reset -- leaves the outcome *unknown*. The
  pipeline then journals it as unknown and calls :meth:`ChannelAdapter.resolve`
  (a reversal for cards, a status inquiry for SWIFT, a check-status for QR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from switch.model import Channel, Payment

Outcome = Literal["approved", "declined", "failed", "reversed"]


class NetworkReply(msgspec.Struct, frozen=True, gc=False):
    outcome: Outcome
    reason: str  # mapped onto the switch's DE39-style scale (switch/reasons.py)
    network_ref: str = ""  # auth code, UETR, QR reference: the network's own reference


class NotSent(Exception):
    """The request never reached the network; retrying cannot double-book."""


class ChannelAdapter(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def channel(self) -> Channel: ...

    async def authorize(self, payment: Payment) -> NetworkReply:
        """Send the payment and return the network's answer.

        Raises :class:`NotSent` if it was never sent. Cancellation (the pipeline's timeout)
        after sending leaves the outcome unknown.
        """
        ...

    async def resolve(self, payment: Payment) -> NetworkReply:
        """Settle an unknown outcome: reverse it (card) or ask the network (SWIFT, QR)."""
        ...

    async def aclose(self) -> None: ...


#: Answers by token, delivered together; ``None`` for a request that turned out NotSent.
ReplySink = Callable[[Sequence[tuple[int, NetworkReply | None]]], None]


@runtime_checkable
class SendsWithoutWaiting(Protocol):
    """An adapter that queues a request and reports its answer later as an event."""

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        """Queue ``payment``; its answer goes to ``deliver`` with ``token``, never from
        inside this call. Raises :class:`NotSent` if it certainly cannot leave."""
        ...

    def cancel(self, token: int) -> None:
        """Nobody waits for ``token`` any more (timeout): an answer now is late."""
        ...
