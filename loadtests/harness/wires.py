"""What the open-loop generator needs from a protocol: encode a request, match replies.

The generator (loadtests/harness/loadgen.py) owns the schedule, the connections, the
HdrHistograms and the intervals; a :class:`Wire` owns the bytes. ``msgpack`` (the
switch's own protocol) is built into the generator; ``iso8583`` and ``http`` plug in
with this interface (:mod:`loadtests.harness.iso8583_client`,
:mod:`loadtests.harness.http_client`; ``loadrun.make_wire`` picks one).

A reply is matched back to its request by the protocol's own rule (ISO 8583: key
fields; HTTP/1.1: order on the connection). A reply that matches no request is an
:class:`Answer` without a request id: the generator counts it under
``unmatched_reply`` in the errors, where every report shows it, instead of dropping it.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

import msgspec

from switch.model import Channel, PaymentRequest

WireName = Literal["msgpack", "iso8583", "http"]
UNMATCHED: Final = "unmatched_reply"


class Answer(msgspec.Struct, array_like=True):
    """One reply: its request id (None: matched nothing), and what it said.

    ``status`` is a payment status (approved, declined, failed, unknown) or None when
    the reply was an error, named by ``error`` (the report's error code).
    """

    rid: int | None
    status: str | None = None
    error: str | None = None
    replay: bool = False
    payment_id: str = ""


class Wire(Protocol):
    name: str
    #: Channels this protocol can carry (ISO 8583: cards only).
    channel: Channel | None

    def encode(self, rid: int, request: PaymentRequest, conn: int) -> bytes:
        """The bytes of request ``rid`` on connection ``conn``; registers it for matching."""
        ...

    def encode_malformed(self, junk: bytes, conn: int) -> bytes:
        """Bytes the server cannot parse (the workload's malformed share)."""
        ...

    def feed(self, conn: int, data: bytes) -> list[Answer]:
        """Every complete reply in ``data`` (and what was buffered before)."""
        ...

    def forget(self, conn: int) -> None:
        """The connection is gone: drop its matching state."""
        ...


class Iso8583Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``payswitch load --protocol iso8583`` settings (all on the command line)."""

    bitmap: Literal["ascii", "binary"] = "ascii"
    #: Reply matching key: "mti" (the MTI class, as jPOS QMUX) and data element numbers.
    match: list[str] = msgspec.field(default_factory=lambda: ["mti", "11", "41"])
    #: A pyiso8583 spec as JSON (field number -> definition) replacing the built-in one.
    spec_file: str | None = None
    acquirer_id: str = "412345"
