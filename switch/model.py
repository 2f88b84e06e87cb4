"""The one transaction model every channel shares.

Records that live long (payments, results, references) are ``gc=False`` Structs: they hold
only scalars and other such Structs, so they cannot form reference cycles, and keeping
them out of the cyclic garbage collector's view removed its longest pauses (a full
collection over every stored result took 68 ms with 30k payments in memory).

A client submits a :class:`PaymentRequest`; once validated it becomes a :class:`Payment`,
the switch's own record, which never holds a card number in clear (only a keyed-hash
token and the last four digits). Channel-specific references (RRN/STAN/terminal for
cards, UETR/EndToEndId for SWIFT, the QR reference) hang off one struct so that tracing
and reconciliation work the same way for all three networks.

The :class:`PaymentState` machine is explicit: :func:`transition` refuses anything not in
``ALLOWED_TRANSITIONS``, so a late or duplicate network answer can never move a payment
that is already final.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from typing import Annotated, Final, Literal

import msgspec

Channel = Literal["card", "swift", "qr"]
CHANNELS: Final[tuple[Channel, ...]] = ("card", "swift", "qr")

# Bounds on client-supplied strings. Length limits are cheap for msgspec to check; we
# keep regexes off the hot path (a regex constraint tripled decode cost when measured).
#: An idempotency key is 1 to this many characters (Unicode code points), by the same rule
#: on every door: a msgpack key is a str (UTF-8 on the wire); an HTTP ``Idempotency-Key``
#: header is read as UTF-8 (a header that is not UTF-8 is refused), so a key is the same
#: key, of the same length, whichever door it came through (docs/http-api.md).
MAX_KEY_CHARS: Final = 64
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=34)]
Name = Annotated[str, msgspec.Meta(max_length=70)]
CurrencyCode = Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
#: Minor units. The ceiling (10^15) keeps every amount exact in int64 and float64.
MinorUnits = Annotated[int, msgspec.Meta(ge=1, le=10**15)]
Pan = Annotated[str, msgspec.Meta(min_length=12, max_length=19)]
Expiry = Annotated[str, msgspec.Meta(min_length=4, max_length=4)]
Bic = Annotated[str, msgspec.Meta(min_length=8, max_length=11)]
QrPayload = Annotated[str, msgspec.Meta(min_length=20, max_length=512)]


class Party(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    account: AccountId
    name: Name = ""


class CardData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Card details as the acquirer sends them. Only ever lives in the request."""

    pan: Pan
    expiry: Expiry  # YYMM
    terminal_id: Annotated[str, msgspec.Meta(min_length=1, max_length=8)] = "TERM0001"
    merchant_id: Annotated[str, msgspec.Meta(max_length=15)] = ""
    mcc: Annotated[str, msgspec.Meta(min_length=4, max_length=4)] = "5999"


class SwiftData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    debtor_agent: Bic
    creditor_agent: Bic
    end_to_end_id: Annotated[str, msgspec.Meta(max_length=35)] = ""
    remittance: Annotated[str, msgspec.Meta(max_length=140)] = ""


class QrData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: QrPayload


class PaymentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a client submits. Its canonical encoding is what idempotency compares."""

    idempotency_key: IdempotencyKey
    channel: Channel
    amount: MinorUnits
    currency: CurrencyCode
    payer: Party
    payee: Party
    card: CardData | None = None
    swift: SwiftData | None = None
    qr: QrData | None = None


class Status(enum.StrEnum):
    RECEIVED = "received"
    ROUTED = "routed"
    SENT = "sent"
    APPROVED = "approved"
    DECLINED = "declined"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REVERSED = "reversed"


TERMINAL_STATES: Final[frozenset[Status]] = frozenset(
    {Status.APPROVED, Status.DECLINED, Status.FAILED, Status.REVERSED}
)

# Every legal move. APPROVED -> REVERSED is the one exit from a terminal state: a
# reversal of an approved authorization (late answer after a timeout, or an explicit
# void) is a new fact about the same money, recorded as a further journal entry.
ALLOWED_TRANSITIONS: Final[dict[Status, frozenset[Status]]] = {
    Status.RECEIVED: frozenset({Status.ROUTED, Status.DECLINED, Status.FAILED}),
    Status.ROUTED: frozenset({Status.SENT, Status.FAILED}),
    Status.SENT: frozenset({Status.APPROVED, Status.DECLINED, Status.FAILED, Status.UNKNOWN}),
    Status.UNKNOWN: frozenset({Status.APPROVED, Status.DECLINED, Status.FAILED, Status.REVERSED}),
    Status.APPROVED: frozenset({Status.REVERSED}),
    Status.DECLINED: frozenset(),
    Status.FAILED: frozenset(),
    Status.REVERSED: frozenset(),
}


class IllegalTransition(Exception):
    """A state change the payment state machine forbids."""

    def __init__(self, payment_id: str, current: Status, target: Status) -> None:
        super().__init__(f"payment {payment_id}: illegal transition {current} -> {target}")
        self.payment_id = payment_id
        self.current = current
        self.target = target


def check_transition(payment_id: str, current: Status, target: Status) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(payment_id, current, target)


class CardRef(msgspec.Struct, frozen=True, gc=False):
    """Card references. The PAN itself is reduced to a keyed token plus its last 4."""

    token: str
    last4: str
    #: Routing needs it, and PCI DSS allows keeping it with the last 4: the first 8 digits
    #: of a PAN of 16 or more, the first 6 of a shorter one (routing.tablespec); 6 digits
    #: in records journaled before 8-digit BINs.
    bin: str
    expiry: str
    terminal_id: str
    merchant_id: str
    mcc: str
    stan: str = ""
    rrn: str = ""
    #: Digits in the card's PAN (12-19). The network PAN in DE2 keeps it, so a 13- or
    #: 19-digit card does not go out as 16 digits; 16 for records journaled before it.
    pan_length: int = 16


class SwiftRef(msgspec.Struct, frozen=True, gc=False):
    debtor_agent: str
    creditor_agent: str
    uetr: str
    end_to_end_id: str
    remittance: str = ""


class QrRef(msgspec.Struct, frozen=True, gc=False):
    payload: str
    qr_reference: str = ""


class Payment(msgspec.Struct, frozen=True, gc=False):
    """The switch's own record of a payment; safe to journal and log (no clear PAN)."""

    payment_id: str
    idempotency_key: str
    channel: Channel
    amount: int
    currency: str
    payer: Party
    payee: Party
    received_at: dt.datetime
    card: CardRef | None = None
    swift: SwiftRef | None = None
    qr: QrRef | None = None
    aml_flag: bool = False

    @property
    def velocity_keys(self) -> tuple[str, ...]:
        """Keys whose sliding-window velocity the risk step tracks."""
        if self.card is not None:
            return ("card:" + self.card.token, "acct:" + self.payer.account)
        return ("acct:" + self.payer.account,)


class Result(msgspec.Struct, frozen=True, gc=False):
    """The outcome of a payment: what the client is told and what the journal keeps."""

    payment_id: str
    status: Status
    reason: str  # a short code: ISO 8583 DE39 style for all channels, see reasons.py
    channel_ref: str = ""  # the network's own reference (auth code / UETR / QR ref)
    route: str = ""
    stood_in: bool = False
    aml_flag: bool = False


def tokenize_pan(pan: str, key: bytes) -> str:
    """Keyed hash of a PAN: stable for velocity/blocklists, useless without the key.

    HMAC-BLAKE2b, first 32 hex digits. Computed from the key's inner and outer hash states,
    prepared once per key: the same bytes as ``hmac.new(key, pan, blake2b)`` (a test holds
    them equal) at half its cost, which every card payment pays (issue 12).
    """
    pads = _HMAC_PADS.get(key)
    if pads is None:
        pads = _hmac_pads(key)
    inner = pads[0].copy()
    inner.update(pan.encode("ascii"))
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()[:32]


#: Inner and outer HMAC-BLAKE2b states per key (one key per switch; bounded anyway).
_HMAC_PADS: dict[bytes, tuple[hashlib.blake2b, hashlib.blake2b]] = {}
_MAX_HMAC_KEYS: Final = 16
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _hmac_pads(key: bytes) -> tuple[hashlib.blake2b, hashlib.blake2b]:
    block = hashlib.blake2b().block_size
    # RFC 2104: a key longer than the block is hashed first.
    short = hashlib.blake2b(key).digest() if len(key) > block else key
    padded = short.ljust(block, b"\0")
    pads = (hashlib.blake2b(padded.translate(_IPAD)), hashlib.blake2b(padded.translate(_OPAD)))
    if len(_HMAC_PADS) >= _MAX_HMAC_KEYS:
        _HMAC_PADS.clear()
    _HMAC_PADS[key] = pads
    return pads


def utc_from_timestamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def luhn_ok(digits: str) -> bool:
    """True if ``digits`` is ASCII digits passing the Luhn (mod 10) check of ISO/IEC 7812.

    In C: the digits in odd places from the right are summed as they are, the others
    through a table of doubled-and-reduced values (about 3x faster than a Python loop;
    every card payment is checked).
    """
    if not (digits.isascii() and digits.isdigit()):
        return False
    raw = digits.encode("ascii")
    total = sum(raw[-1::-2].translate(_LUHN_SAME)) + sum(raw[-2::-2].translate(_LUHN_DOUBLED))
    return total % 10 == 0


_LUHN_SAME: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))


