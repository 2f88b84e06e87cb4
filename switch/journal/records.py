"""The journal's record type: one typed record per step of a payment, and its kinds.

A payment's history is its records in ``seq`` order:

* ``intent``  -- about to send to a network (write-ahead); the body is the ``Payment``;
* ``unknown`` -- sent, no answer in time; the body is a ``Result`` in state unknown;
* ``final``   -- the result the client is (or would be) told; the body is a ``Result``;
* ``advice``  -- a stand-in approval's 0120 advice reached the issuer; the body is the
  stand-in ``Result``.

Every writer also states what happens when the journal is full (:class:`OnFull`): a
record that describes nothing the outside world has seen yet may be *shed* (the request
is refused as overloaded); a record of something that already happened on a network must
*wait* for room, because dropping it would lose or double money.

:func:`to_row` is the one place a record becomes a row of the ``journal`` table; the
reader (``switch.journal.reader``) is the one place rows become records again.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

import msgspec

from switch.model import Payment, Result, Status

RecordKind = Literal["intent", "unknown", "final", "advice"]
INTENT: Final = "intent"
UNKNOWN: Final = "unknown"
FINAL: Final = "final"
ADVICE: Final = "advice"
KINDS: Final[tuple[RecordKind, ...]] = (INTENT, UNKNOWN, FINAL, ADVICE)

#: The columns of the ``journal`` table a record fills, in :func:`to_row`'s order.
COLUMNS: Final = ("payment_id", "idempotency_key", "kind", "status", "body_hash", "record",
                  "at_us")
Row = tuple[str, str, str, str, bytes, bytes, int]

_encoder: Final = msgspec.msgpack.Encoder()
_STATUS_OF: Final = {s.value: s for s in Status}
_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)
_result_decoder: Final = msgspec.msgpack.Decoder(Result)


class OnFull(enum.Enum):
    """What a writer's record does when ``journal.max_pending`` records are waiting."""

    #: Refuse (``JournalFull``): nothing has left the switch, the client may retry.
    SHED = "shed"
    #: Wait for the writer to make room: the fact already happened and must be kept.
    WAIT = "wait"


class JournalRecord(msgspec.Struct, frozen=True, gc=False):
    payment_id: str
    idempotency_key: str
    kind: RecordKind
    status: Status
    body_hash: bytes
    #: msgpack of the ``Payment`` (intent) or of the ``Result`` (every other kind).
    body: bytes
    #: Wall-clock microseconds (from the switch's injected clock).
    at_us: int

    @classmethod
    def intent(cls, payment: Payment, digest: bytes, at_us: int) -> JournalRecord:
        return cls(payment.payment_id, payment.idempotency_key, INTENT, Status.SENT, digest,
                   _encoder.encode(payment), at_us)

    @classmethod
    def outcome(cls, kind: RecordKind, payment: Payment, result: Result, digest: bytes,
                at_us: int) -> JournalRecord:
        """An ``unknown``, ``final`` or ``advice`` record carrying ``result``."""
        assert kind != INTENT, "an intent carries the payment, not a result"
        assert result.payment_id == payment.payment_id, "result of another payment"
        return cls(payment.payment_id, payment.idempotency_key, kind, result.status, digest,
                   _encoder.encode(result), at_us)

    def payment(self) -> Payment:
        assert self.kind == INTENT, f"a {self.kind} record carries no payment"
        return _payment_decoder.decode(self.body)

    def result(self) -> Result:
        assert self.kind != INTENT, "an intent record carries no result"
        return _result_decoder.decode(self.body)


def to_row(record: JournalRecord) -> Row:
    """The one place a record becomes a row (columns in :data:`COLUMNS` order)."""
    return (record.payment_id, record.idempotency_key, record.kind, record.status.value,
            record.body_hash, record.body, record.at_us)


def from_row(row: Row) -> JournalRecord:
    """A row read back (columns in :data:`COLUMNS` order) as a record."""
    payment_id, key, kind, status, body_hash, body, at_us = row
    assert kind in KINDS, f"unknown journal record kind {kind!r}"
    return JournalRecord(payment_id, key, kind, _STATUS_OF[status], body_hash, body, at_us)


def encode_payment(payment: Payment) -> bytes:
    return _encoder.encode(payment)


def encode_result(result: Result) -> bytes:
    return _encoder.encode(result)
