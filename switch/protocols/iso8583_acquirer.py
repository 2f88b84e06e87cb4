"""The switch's ISO 8583 acquirer interface, sans-IO: bytes in, decisions and bytes out.

Acquirers send 0100/0101 (authorization), 0200/0201 (financial), 0400/0401 (reversal),
0420/0421 (reversal advice) and 0800 (network management); the switch answers 0110,
0210, 0410, 0430 and 0810. The field layout is the 1987 one of
:mod:`switch.protocols.iso8583` (all fields ASCII, LL lengths in ASCII); only the bitmap
encoding is configurable, because acquirers differ there: 16 ASCII hex characters
(jPOS ``ISO87APackager``) or 8 raw bytes (``ISO87BPackager``-style binary bitmap).

This module decides nothing about money. It turns a request into what the core needs
(:func:`parse_request`: a :class:`~switch.model.PaymentRequest`, a reversal of a known
original, or a network message) and a core outcome back into a response
(:func:`payment_response` and friends). Errors name the data element (``DE49``).

Idempotency comes from the acquirer's key fields: by default DE32 (acquirer) + DE41
(terminal) + DE11 (STAN) + DE7 (transmission time), so a repeat (0101, or the same 0100
sent again) replays the stored answer, and the same key with other content is refused
with 94 (duplicate transmission). A reversal finds its original through DE90 (original
MTI, STAN, DE7, acquirer) plus its own DE41.
"""

from __future__ import annotations

import copy
from typing import Any, Final, Literal

import iso8583 as _pyiso
import msgspec

from switch import reasons
from switch.currency import NUMERIC_TO_ALPHA
from switch.model import CardData, Party, PaymentRequest, Result, Status
from switch.protocols.errors import CodecError
from switch.protocols.iso8583 import SPEC, IsoMessage, check_length_prefixes, response_mti

__all__ = [
    "DEFAULT_KEY_FIELDS",
    "FORMAT_ERROR",
    "KEY_PREFIX",
    "AcquirerCodec",
    "AcquirerFormatError",
    "BitmapMode",
    "NetworkRequest",
    "PaymentCall",
    "ReversalCall",
    "Unsupported",
    "format_error_response",
    "network_response",
    "original_key",
    "parse_request",
    "payment_key",
    "payment_response",
    "refusal_code",
    "refusal_response",
    "reversal_response",
]

BitmapMode = Literal["ascii", "binary"]

#: DE39 30: format error. Acquirers recognise it as "your message was not understood".
FORMAT_ERROR: Final = "30"
#: DE39 25: unable to locate the original record (a reversal of a payment we never saw).
ORIGINAL_NOT_FOUND: Final = "25"
#: DE39 13: invalid amount (a reversal's DE4 other than its original's).
INVALID_AMOUNT: Final = reasons.INVALID_AMOUNT
#: DE3's transaction types the switch takes: 00, goods and services (a purchase).
PURCHASE: Final = "00"

#: The acquirer's key fields, in key order: acquirer id, terminal, STAN, transmission time.
DEFAULT_KEY_FIELDS: Final[tuple[int, ...]] = (32, 41, 11, 7)

_PAYMENT_MTIS: Final = frozenset({"0100", "0101", "0200", "0201"})
_REVERSAL_MTIS: Final = frozenset({"0400", "0401", "0420", "0421"})
_NETWORK_MTIS: Final = frozenset({"0800", "0801"})
_NUMERIC: Final = frozenset({2, 3, 4, 7, 11, 12, 13, 14, 18, 22, 32, 49, 70, 90})
_DATA_ELEMENTS: Final = frozenset(int(k) for k in SPEC if k.isdigit() and k != "1")
# What a response carries back: the key fields and the transaction's identity.
_ECHOED: Final[tuple[int, ...]] = (2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 70, 90)
_REQUIRED_PAYMENT: Final[tuple[int, ...]] = (2, 3, 4, 7, 11, 14, 41, 49)
_REQUIRED_REVERSAL: Final[tuple[int, ...]] = (4, 7, 11, 41, 90)

# Switch refusals (before a payment is accepted) on the DE39 scale.
_REFUSAL_DE39: Final = {
    reasons.E_INVALID: FORMAT_ERROR,
    reasons.E_MALFORMED: FORMAT_ERROR,
    reasons.E_IDEMPOTENCY_CONFLICT: reasons.DUPLICATE_TRANSMISSION,
    reasons.E_OVERLOADED: reasons.ISSUER_UNAVAILABLE,
    reasons.E_SHUTTING_DOWN: reasons.ISSUER_UNAVAILABLE,
    reasons.E_UNAVAILABLE: reasons.SYSTEM_MALFUNCTION,
}


class Unsupported(CodecError):
    """A readable request the switch does not take; ``code`` is the DE39 to answer."""

    def __init__(self, reason: str, path: str, code: str) -> None:
        super().__init__(reason, path)
        self.code = code


class AcquirerFormatError(CodecError):
    """An unreadable acquirer message; ``partial`` is what was read before the error
    (the MTI and the fields decoded so far), or None when not even the MTI was readable."""

    def __init__(self, reason: str, path: str, partial: IsoMessage | None) -> None:
        super().__init__(reason, path)
        self.partial = partial


def _spec(bitmap: BitmapMode) -> dict[str, dict[str, Any]]:
    spec = copy.deepcopy(dict(SPEC))
    if bitmap == "binary":
        for key in ("p", "1"):
            spec[key] = {**spec[key], "data_enc": "b", "max_len": 8}
    return spec


def _path(field: object) -> str:
    name = str(field)
    return {"t": "MTI", "p": "bitmap", "1": "bitmap", "h": "header"}.get(name, f"DE{name}")


class AcquirerCodec:
    """Encode and decode acquirer messages with the configured bitmap encoding."""

    __slots__ = ("bitmap", "spec")

    def __init__(self, bitmap: BitmapMode = "ascii") -> None:
        self.bitmap = bitmap
        self.spec = _spec(bitmap)

    def decode(self, data: bytes) -> IsoMessage:
        """Parse one message; :class:`AcquirerFormatError` names the field.

        Its ``partial`` holds the MTI and fields decoded before the error, so a
        format-error response can still echo the key fields the acquirer matches on.
        """
        try:
            doc, raw = _pyiso.decode(data, self.spec)
        except _pyiso.DecodeError as exc:
            raise AcquirerFormatError(f"{exc.msg} (at byte {exc.pos})", _path(exc.field),
                                      _partial(exc.doc_dec, data)) from None
        except KeyError as exc:
            # pyiso8583 indexes the spec with every field the bitmap names.
            raise AcquirerFormatError("field not defined in the payswitch 1987 spec",
                                      _path(exc.args[0] if exc.args else "?"),
                                      _partial({}, data)) from None
        try:
            check_length_prefixes(raw)
        except CodecError as exc:
            # The partial message: the fields read before the one with the bad prefix.
            before: dict[str, str] = {}
            for key, value in doc.items():
                if _path(key) == exc.path:
                    break
                before[key] = value
            raise AcquirerFormatError(exc.reason, exc.path, _partial(before, data)) from None
        mti = doc.get("t", "")
        fields: dict[int, str] = {}
        for key, value in doc.items():
            if key in ("t", "p", "1", "h"):
                continue
            de = int(key)
            fields[de] = value
        msg = IsoMessage(mti, fields)
        if not (len(mti) == 4 and mti.isdigit() and mti.isascii()):
            raise AcquirerFormatError(f"MTI must be 4 ASCII digits, got {mti!r}", "MTI", None)
        for de, value in fields.items():
            if de in _NUMERIC and not (value.isdigit() and value.isascii()):
                raise AcquirerFormatError(f"numeric field holds {value!r}", f"DE{de}", msg)
        return msg

    def encode(self, msg: IsoMessage) -> bytes:
        """Serialize ``msg``; CodecError names what :meth:`decode` would refuse (an MTI
        that is not 4 digits, an ``n`` field holding other than digits): pyiso8583
        checks lengths only, so such a message went out and no peer could read it."""
        mti = msg.mti
        if not (len(mti) == 4 and mti.isdigit() and mti.isascii()):
            raise CodecError(f"MTI must be 4 ASCII digits, got {mti!r}", "MTI")
        doc: dict[str, str] = {"t": mti}
        for de, value in msg.fields.items():
            if de not in _DATA_ELEMENTS:
                raise CodecError("field not defined in the payswitch 1987 spec", f"DE{de}")
            if de in _NUMERIC and not (value.isdigit() and value.isascii()):
                raise CodecError(f"numeric field holds {value!r}", f"DE{de}")
            doc[str(de)] = value
        try:
            raw, _ = _pyiso.encode(doc, self.spec)
        except _pyiso.EncodeError as exc:
            raise CodecError(exc.msg, _path(exc.field)) from None
        return bytes(raw)


def _partial(doc: dict[str, str], data: bytes) -> IsoMessage | None:
    mti = doc.get("t")
    if mti is None:
        head = bytes(data[:4])
        mti = head.decode("ascii", "replace") if len(head) == 4 else ""
    if not (len(mti) == 4 and mti.isdigit() and mti.isascii()):
        return None
    fields = {int(k): v for k, v in doc.items() if k.isdigit()}
    return IsoMessage(mti, fields)


# --------------------------------------------------------------------------- requests


#: A field the spec does not define, as pyiso8583 is told to read it: fixed, and longer
#: than any frame (the prefix is 2 bytes), so the walk stops there with a DecodeError that
#: holds every field before it.
_UNREADABLE_FIELD: Final[dict[str, Any]] = {
    "data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0x10000,
    "desc": "not defined in the payswitch 1987 spec"}


class _StopAtUnknown(dict[str, dict[str, Any]]):
    """A spec whose undefined fields read as :data:`_UNREADABLE_FIELD`."""

    def __missing__(self, key: str) -> dict[str, Any]:
        return _UNREADABLE_FIELD


def readable_fields(payload: bytes, spec: dict[str, dict[str, Any]]) -> dict[int, str]:
    """The data elements of ``payload`` that can be read before its first unreadable part.

    The codec refuses a bitmap naming a field it does not know (its length is unknown, so
    nothing after it can be located) and, for that error, read nothing past the MTI: a
    DE60 at the end of an 0200 cost the format-error answer its DE11 and DE41, and the
    acquirer could not match it. The fields *before* the unknown one are where the
    bitmap says: this reads them, and stops, as the codec does, at a variable field whose
    length prefix is not digits.
    """
    failed = ""
    try:
        doc, raw = _pyiso.decode(bytes(payload), _StopAtUnknown(spec))
    except _pyiso.DecodeError as exc:
        # pyiso8583 enters the field it fails on as "" before reading it: not read.
        doc, raw, failed = exc.doc_dec, exc.doc_enc, str(exc.field)
    except Exception:  # pyiso8583 on bytes it was never meant to see: nothing is readable
        return {}
    fields: dict[int, str] = {}
    for key, value in doc.items():
        if key == failed:
            break
        if not key.isdigit() or key == "1":  # MTI, header and bitmaps
            continue
        prefix = raw.get(key, {}).get("len", b"")
        if prefix and not (prefix.isdigit() and prefix.isascii()):
            break  # as check_length_prefixes: this field and those after it are suspect
        fields[int(key)] = value
    return fields


def answerable_part(exc: AcquirerFormatError, payload: bytes,
                    spec: dict[str, dict[str, Any]]) -> IsoMessage | None:
    """What a format-error answer (:func:`format_error_response`) may echo of an
    unreadable request: the key fields the acquirer matches it on (MTI class + DE11 +
    DE41), whenever they were read; None when not even the MTI was."""
    partial = exc.partial
    if partial is None:
        return None
    fields = dict(partial.fields)
    if not fields:
        # Nothing read past the MTI (a field the spec does not know stops the codec
        # before any): read what precedes the error, for the key fields.
        fields = readable_fields(payload, spec)
    # The field the error is in was not read: pyiso8583 leaves it "" (a DE41 cut short
    # came back as "", which cannot be encoded, and the 30 was never sent).
    path = exc.path
    if path.startswith("DE") and path[2:].isdigit():
        fields.pop(int(path[2:]), None)
    return IsoMessage(partial.mti, fields)


class PaymentCall(msgspec.Struct, frozen=True):
    """0100/0200 (and repeats): a payment for the core."""

    message: IsoMessage
    request: PaymentRequest


class ReversalCall(msgspec.Struct, frozen=True):
    """0400/0420 (and repeats): undo the payment whose idempotency key is ``original_key``;
    ``amount`` (DE4) must be the original's: the switch reverses whole payments only."""

    message: IsoMessage
    original_key: str
    advice: bool
    amount: int


class NetworkRequest(msgspec.Struct, frozen=True):
    """0800: sign-on 001, sign-off 002, echo 301."""

    message: IsoMessage
    code: str


#: The ISO door's keys begin so; the other doors refuse a client's key that does: such a
#: key could take an acquirer's payment's place, and the acquirer's 0400 would reverse it.
KEY_PREFIX: Final = "iso:"


def payment_key(fields: dict[int, str], key_fields: tuple[int, ...]) -> str:
    """The idempotency key of a payment from its key fields (``iso:`` + values joined).

    The acquirer id (DE32) counts as a number: DE90 carries it zero-padded to 11 digits,
    so its leading zeros, or whether it was sent at all, cannot be told back from there,
    and a reversal must rebuild the very key its original had.
    """
    return KEY_PREFIX + ":".join(
        fields.get(de, "").strip().lstrip("0") if de == 32 else fields.get(de, "").strip()
        for de in key_fields)


def original_key(msg: IsoMessage, key_fields: tuple[int, ...]) -> str:
    """The key of the payment a reversal undoes, rebuilt from DE90 and the reversal itself.

    DE90 n42 = original MTI (4) + STAN (6) + DE7 (10) + acquirer id (11, zero-padded) +
    forwarder (11). DE32 is taken from the reversal when present, else from DE90 (all
    zeros: the original had none); DE41 and anything else from the reversal.
    """
    de90 = msg.fields[90]
    original = dict(msg.fields)
    original[11] = de90[4:10]
    original[7] = de90[10:20]
    if 32 not in original:
        original[32] = de90[20:31]
    return payment_key(original, key_fields)


def _require(msg: IsoMessage, required: tuple[int, ...]) -> None:
    for de in required:
        if de not in msg.fields:
            raise CodecError(f"required in a {msg.mti}", f"DE{de}")


def parse_request(
    msg: IsoMessage, key_fields: tuple[int, ...] = DEFAULT_KEY_FIELDS
) -> PaymentCall | ReversalCall | NetworkRequest:
    """What a decoded request asks for; :class:`CodecError` names the offending field."""
    mti = msg.mti
    f = msg.fields
    if mti in _PAYMENT_MTIS:
        _require(msg, _REQUIRED_PAYMENT)
        if f[3][:2] != PURCHASE:
            # A refund (20) or a cash withdrawal (01) was booked as a purchase: a credit
            # to the card became a debit.
            raise Unsupported(f"transaction type {f[3][:2]} (DE3 {f[3]}): only purchases "
                              f"({PURCHASE}xxxx) are taken", "DE3", reasons.INVALID_TRANSACTION)
        currency = NUMERIC_TO_ALPHA.get(int(f[49]))
        if currency is None:
            raise CodecError(f"unknown ISO 4217 numeric currency {f[49]!r}", "DE49")
        amount = int(f[4])
        if amount < 1:
            raise CodecError("amount must be at least 1 minor unit", "DE4")
        pan = f[2]
        if len(pan) < 12:
            raise CodecError("PAN must be 12 to 19 digits", "DE2")
        terminal = f[41].strip() or "-"
        merchant = f.get(42, "").strip()
        try:
            request = PaymentRequest(
                idempotency_key=payment_key(f, key_fields),
                channel="card",
                amount=amount,
                currency=currency,
                # Never the PAN in clear: the payer is named by BIN + last four, which
                # PCI DSS allows to be shown together.
                payer=Party(f"CARD{pan[:6]}{pan[-4:]}"),
                payee=Party(merchant or f"TERM{terminal}"),
                card=CardData(pan=pan, expiry=f[14], terminal_id=terminal[:8],
                              merchant_id=merchant, mcc=f.get(18, "5999")),
            )
        except (msgspec.ValidationError, TypeError) as exc:
            raise CodecError(str(exc), "message") from None
        return PaymentCall(msg, request)
    if mti in _REVERSAL_MTIS:
        _require(msg, _REQUIRED_REVERSAL)
        if len(f[90]) != 42:
            raise CodecError("original data elements must be 42 digits", "DE90")
        return ReversalCall(msg, original_key(msg, key_fields), advice=mti[2] == "2",
                            amount=int(f[4]))
    if mti in _NETWORK_MTIS:
        _require(msg, (7, 11, 70))
        return NetworkRequest(msg, f[70])
    raise CodecError(f"MTI {mti} is not accepted on the acquirer interface", "MTI")


# --------------------------------------------------------------------------- responses


def _answer(request: IsoMessage, code: str, auth_code: str | None = None) -> IsoMessage:
    f = request.fields
    fields = {de: f[de] for de in _ECHOED if de in f}
    if auth_code:
        fields[38] = auth_code[:6].ljust(6)
    fields[39] = code
    return IsoMessage(response_mti(request.mti), dict(sorted(fields.items())))


def payment_response(request: IsoMessage, result: Result) -> IsoMessage:
    """0110/0210 for the core's result: DE39 is the result's reason (one DE39 scale).

    An unknown outcome (no network answer in time) answers 68; the switch reverses it.
    DE38 carries the authorization code of an approval when the network gave one.

    00 only for an approval. A reversed payment's result carries reason 00 (the reversal
    went through): a repeat (0101) of an 0100 the switch had answered 68 and then
    reversed was answered 00, and the merchant completed a sale with nothing held. It
    answers 68 again; any other non-approval with a reason of 00 answers 96.
    """
    code = result.reason if len(result.reason) == 2 else reasons.SYSTEM_MALFUNCTION
    status = result.status
    if status is Status.UNKNOWN or status is Status.REVERSED:
        code = reasons.RESPONSE_TOO_LATE
    elif status is not Status.APPROVED and code == reasons.APPROVED:
        code = reasons.SYSTEM_MALFUNCTION
    assert code != reasons.APPROVED or status is Status.APPROVED, (status, code)
    auth = result.channel_ref if result.status is Status.APPROVED else None
    if auth is not None and not (0 < len(auth) <= 6 and auth.isascii()):
        auth = None
    return _answer(request, code, auth)


def refusal_code(error_code: str) -> str:
    """DE39 for a switch refusal (``overloaded`` -> 91, ``idempotency_conflict`` -> 94)."""
    return _REFUSAL_DE39.get(error_code, reasons.SYSTEM_MALFUNCTION)


def refusal_response(request: IsoMessage, error_code: str, message: str = "") -> IsoMessage:
    """The response to a request the switch refused before accepting it (91, 94, 30, 96).

    A PAN the core found invalid (not digits, Luhn) is 14 (invalid card), as an issuer
    would answer; any other invalid field is 30 (format error).
    """
    if error_code == reasons.E_INVALID and message.startswith("payment.card.pan"):
        return _answer(request, reasons.INVALID_CARD)
    return _answer(request, refusal_code(error_code))


def reversal_response(request: IsoMessage, code: str) -> IsoMessage:
    """0410/0430 with ``code``: 00 reversed (or nothing to undo), 25 original unknown."""
    return _answer(request, code)


def network_response(request: IsoMessage, code: str = reasons.APPROVED) -> IsoMessage:
    """0810 echoing DE7, DE11 and DE70."""
    return _answer(request, code)


def format_error_response(partial: IsoMessage | None, code: str = FORMAT_ERROR
                          ) -> IsoMessage | None:
    """The DE39 ``code`` (30 unless the error says otherwise: :class:`Unsupported`)
    response to a request that cannot be taken, if its header allows one.

    That needs a readable request MTI (a response to a response, or to garbage, cannot be
    addressed); the response echoes whichever key fields were read before the error.
    """
    if partial is None:
        return None
    mti = partial.mti
    if int(mti[2]) % 2:  # a response or an advice response: nothing to answer
        return None
    try:
        response_mti(mti)
    except CodecError:
        return None
    fields = {de: v for de, v in partial.fields.items()
              if de in _ECHOED and (de not in _NUMERIC or (v.isdigit() and v.isascii()))}
    return _answer(IsoMessage(mti, fields), code)


