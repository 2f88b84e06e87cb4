"""ISO 8583 (1987 layout, ASCII) codec: messages, builders, framing and response matching.

Sans-IO: every function here takes bytes or values and returns bytes or values. Nothing
reads a socket or a clock (builders take the transmission time as an argument), so the
same code serves the asyncio, trio and gevent sides of the simulator and runs unchanged
under tests.

Wire layout. The field layout is the classic 1987 one, encoded the way jPOS's
``ISO87APackager`` does it: MTI as 4 ASCII digits, bitmaps as 16 ASCII hex characters,
every field ASCII, variable fields with an ASCII ``LL`` length. An all-ASCII message is
easy to read in a packet capture and in the golden bytes of the tests. pyiso8583 does
the field walking; we own the spec dict, the numeric-field checks it does not do, and
the translation of its exceptions into :class:`CodecError`.

Framing. On TCP each message is preceded by a 2-byte big-endian length.
:class:`FrameDecoder` splits a byte stream into messages, parsing *every* complete frame
in each chunk it is fed: reading big chunks and slicing them is what gave 0.5-0.8 M
frames/s here, against ~35 k/s for a read-exactly-one-frame loop.

Matching. Responses come back on the same connection in any order, and are paired with
their requests by key, as jPOS QMUX does: the MTI's class (request and response share it:
0100 and 0110, 0400/0401 and 0410) plus DE11 (STAN) plus DE41 (terminal id).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Final

import iso8583 as _pyiso
import msgspec

from switch.protocols.errors import CodecError, FramingError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FIELD_CLASS",
    "SPEC",
    "CardTransaction",
    "FrameDecoder",
    "IsoMessage",
    "NetworkCode",
    "ResponseCode",
    "authorization_advice",
    "authorization_request",
    "check_length_prefixes",
    "content_problem",
    "decode",
    "encode",
    "financial_request",
    "frame",
    "match_key",
    "network_request",
    "repeat",
    "response",
    "response_mti",
    "reversal_advice",
    "reversal_request",
]


class ResponseCode(enum.StrEnum):
    """DE39 values the simulator uses (a StrEnum, so it compares equal to the wire text)."""

    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    INVALID_CARD = "14"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    NOT_PERMITTED = "57"
    OVER_AMOUNT_LIMIT = "61"
    RESPONSE_TOO_LATE = "68"
    ISSUER_INOPERATIVE = "91"
    DUPLICATE_TRANSMISSION = "94"
    SYSTEM_MALFUNCTION = "96"


class NetworkCode(enum.StrEnum):
    """DE70 network management information codes carried by 0800/0810."""

    SIGN_ON = "001"
    SIGN_OFF = "002"
    ECHO = "301"


def _field(len_type: int, max_len: int, desc: str) -> dict[str, Any]:
    return {
        "data_enc": "ascii",
        "len_enc": "ascii",
        "len_type": len_type,
        "max_len": max_len,
        "desc": desc,
    }


FIXED, LLVAR = 0, 2

#: The pyiso8583 spec. Only fields listed here are accepted; a bitmap naming any other
#: field is rejected rather than guessed at, because a wrong guess about a field's length
#: would misparse every field after it.
SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": _field(FIXED, 0, "Message Header (none)"),
    "t": _field(FIXED, 4, "Message Type Indicator"),
    "p": _field(FIXED, 16, "Bitmap, Primary (hex)"),
    "1": _field(FIXED, 16, "Bitmap, Secondary (hex)"),
    "2": _field(LLVAR, 19, "Primary Account Number"),
    "3": _field(FIXED, 6, "Processing Code"),
    "4": _field(FIXED, 12, "Amount, Transaction (minor units)"),
    "7": _field(FIXED, 10, "Transmission Date and Time MMDDhhmmss"),
    "11": _field(FIXED, 6, "System Trace Audit Number"),
    "12": _field(FIXED, 6, "Time, Local Transaction hhmmss"),
    "13": _field(FIXED, 4, "Date, Local Transaction MMDD"),
    "14": _field(FIXED, 4, "Date, Expiration YYMM"),
    "18": _field(FIXED, 4, "Merchant Category Code"),
    "22": _field(FIXED, 3, "POS Entry Mode"),
    "32": _field(LLVAR, 11, "Acquiring Institution Id"),
    "37": _field(FIXED, 12, "Retrieval Reference Number"),
    "38": _field(FIXED, 6, "Authorization Id Response"),
    "39": _field(FIXED, 2, "Response Code"),
    "41": _field(FIXED, 8, "Card Acceptor Terminal Id"),
    "42": _field(FIXED, 15, "Card Acceptor Id"),
    "43": _field(FIXED, 40, "Card Acceptor Name/Location"),
    "49": _field(FIXED, 3, "Currency Code, Transaction"),
    "70": _field(FIXED, 3, "Network Management Information Code"),
    "90": _field(FIXED, 42, "Original Data Elements"),
}

#: Content class of each data element, as the 1987 standard names them: ``n`` ASCII
#: digits, ``an`` ASCII letters and digits, ``ans`` printable ASCII (0x20-0x7E). With
#: :data:`SPEC`'s lengths this is the one source of truth for what a field can carry: the
#: codec enforces it on every encode and decode, and the switch's request validation asks
#: :func:`content_problem` before a payment is accepted, so nothing a client sends can
#: pass validation and then fail to encode.
FIELD_CLASS: Final[dict[int, str]] = {
    2: "n", 3: "n", 4: "n", 7: "n", 11: "n", 12: "n", 13: "n", 14: "n", 18: "n", 22: "n",
    32: "n", 37: "an", 38: "an", 39: "an", 41: "ans", 42: "ans", 43: "ans", 49: "n",
    70: "n", 90: "n",
}

# Data elements (not bitmaps) we know, and those whose content must be digits: pyiso8583
# checks lengths but not content, and a letter in DE4 must not reach the amount parser.
_DATA_ELEMENTS: Final = frozenset(int(k) for k in SPEC if k.isdigit() and k != "1")
_NUMERIC: Final = frozenset(de for de, cls in FIELD_CLASS.items() if cls == "n")
_FIXED_WIDTH: Final = {int(k): v["max_len"] for k, v in SPEC.items() if k.isdigit()}
_VARIABLE: Final = frozenset(int(k) for k, v in SPEC.items() if k.isdigit() and v["len_type"])


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def content_problem(de: int, value: str) -> str | None:
    """Why ``value`` cannot be sent in data element ``de``, or None if it can.

    Checks the field's content class (:data:`FIELD_CLASS`) and its length in :data:`SPEC`:
    a fixed ``n`` field must be exactly its width (callers zero-pad numbers first), a fixed
    ``an``/``ans`` field at most its width (the codec pads it with spaces), a variable field
    at most its maximum. The reason names the class and the limit, for an error reply.
    """
    cls = FIELD_CLASS.get(de)
    if cls is None:
        return "field not defined in the payswitch 1987 spec"
    width = _FIXED_WIDTH[de]
    if cls == "n":
        if not (value.isascii() and value.isdigit()):
            return f"must be ASCII digits 0-9 (ISO 8583 DE{de} is n)"
        if de in _VARIABLE:
            return None if len(value) <= width else f"at most {width} digits (DE{de})"
        return None if len(value) == width else f"exactly {width} digits (DE{de})"
    # For ASCII text, isalnum() is exactly [0-9A-Za-z] (an) and isprintable() exactly
    # 0x20-0x7E (ans); "" is neither, but passes the class check (its length may not).
    if value and not (value.isascii()
                      and (value.isalnum() if cls == "an" else value.isprintable())):
        kind = "ASCII letters and digits" if cls == "an" else "printable ASCII (0x20-0x7E)"
        return f"must be {kind} (ISO 8583 DE{de} is {cls})"
    if len(value) > width:
        return f"at most {width} characters (DE{de})"
    return None

# Fields a response echoes from its request; the rest (PAN expiry, POS data, merchant
# name) are the acquirer's business and do not come back.
_ECHOED: Final[tuple[int, ...]] = (2, 3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 70, 90)
_ECHOED_BEFORE_38: Final = tuple(de for de in _ECHOED if de < 38)
_ECHOED_AFTER_39: Final = tuple(de for de in _ECHOED if de > 39)

# jPOS QMUX's default MTI mapping: the third digit's request/response pair collapses to
# its even member, the fourth digit (repeat) is ignored.
_MTI_CLASS: Final = {str(d): str(d & ~1) for d in range(10)}


class IsoMessage(msgspec.Struct, frozen=True):
    """A decoded message: its MTI and data elements keyed by number (values as on the wire).

    Values stay strings (``fields[4] == "000000012345"``) because that is what the wire
    holds; conversions belong to the caller that knows what it needs.
    """

    mti: str
    fields: dict[int, str] = msgspec.field(default_factory=dict)

    def get(self, de: int) -> str | None:
        return self.fields.get(de)

    @property
    def stan(self) -> str | None:
        return self.fields.get(11)

    @property
    def terminal_id(self) -> str | None:
        return self.fields.get(41)

    @property
    def response_code(self) -> str | None:
        return self.fields.get(39)


def _path(pyiso_field: object) -> str:
    name = str(pyiso_field)
    if name == "t":
        return "MTI"
    if name in ("p", "1"):
        return "bitmap"
    if name == "h":
        return "header"
    return f"DE{name}"


def _check_mti(mti: str) -> None:
    if len(mti) != 4 or not mti.isdigit() or not mti.isascii():
        raise CodecError(f"MTI must be 4 ASCII digits, got {mti!r}", "MTI")


def decode(data: bytes | bytearray | memoryview) -> IsoMessage:
    """Parse one message (without its length prefix).

    A well-formed message is parsed by :func:`_decode_fast`; anything it is not sure of
    goes to pyiso8583, the reference, whose verdict (and error) stands.
    """
    if isinstance(data, memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes | bytearray):
        raise CodecError(f"expected bytes, got {type(data).__name__}", "message")
    parsed = _decode_fast(data)
    if parsed is not None:
        mti, fields, printable = parsed
    else:
        mti, fields = _decode_reference(data)
        printable = False
    _check_mti(mti)
    for de, value in fields.items():
        if de in _NUMERIC and not (value.isdigit() and value.isascii()):
            raise CodecError(f"numeric field holds {value!r}", f"DE{de}")
        # ``printable``: every byte of the message was, so no field can fail this.
        if not printable and not _printable_ascii(value):
            raise CodecError(f"holds a character outside printable ASCII: {value!r}", f"DE{de}")
    return IsoMessage(mti, fields)


def _decode_reference(data: bytes | bytearray) -> tuple[str, dict[int, str]]:
    try:
        doc, raw = _pyiso.decode(data, SPEC)
    except _pyiso.DecodeError as exc:
        raise CodecError(f"{exc.msg} (at byte {exc.pos})", _path(exc.field)) from None
    except KeyError as exc:
        # pyiso8583 indexes the spec with every field the bitmap names.
        path = _path(exc.args[0] if exc.args else "?")
        raise CodecError("field not defined in the payswitch 1987 spec", path) from None
    check_length_prefixes(raw)
    mti = doc.pop("t")
    return mti, {int(key): value for key, value in doc.items() if key not in ("p", "1", "h")}


def check_length_prefixes(raw: dict[str, Any]) -> None:
    """Refuse a variable field whose ASCII length prefix is not all digits.

    pyiso8583 reads the prefix with ``int()``, which takes " 9", "9 ", "+9" and "-0":
    a length no ISO 8583 peer writes (LL is n2) and jPOS refuses. ``raw`` is the encoded
    half of pyiso8583's decode result (per field, its ``len`` and ``data`` bytes).
    """
    for key, parts in raw.items():
        prefix = parts.get("len", b"")
        if prefix and not (prefix.isdigit() and prefix.isascii()):
            raise CodecError(f"length prefix {bytes(prefix)!r} is not ASCII digits", _path(key))


#: Uppercase hex digits: what our encoder writes in a bitmap. Anything else (lowercase is
#: legal) is left to the reference decoder.
_HEX_UPPER: Final = frozenset("0123456789ABCDEF")


def _decode_fast(data: bytes | bytearray) -> tuple[str, dict[int, str], bool] | None:
    """The MTI and fields of a message in this module's own shape, and whether all of it
    is printable ASCII; None to ask pyiso8583.

    Why: pyiso8583 walks a dict per field and costs ~23 us a message; the card adapter,
    the simulators and the acquirer door decode one per payment. This parses the same
    spec (ASCII MTI, ASCII hex bitmaps, FIXED and LLVAR ASCII fields) in a few us, and
    gives up on anything unusual so the reference decides: a property test holds the two
    equal on random messages and damaged bytes (tests/protocols/test_iso8583_fast.py).
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    primary = text[4:20]
    if len(primary) != 16 or not _HEX_UPPER.issuperset(primary):
        return None
    bitmap = int(primary, 16) << 64
    pos = 20
    if bitmap >> 127:  # field 1: a secondary bitmap follows
        secondary = text[20:36]
        if len(secondary) != 16 or not _HEX_UPPER.issuperset(secondary):
            return None
        bitmap |= int(secondary, 16)
        pos = 36
    if bitmap & _UNKNOWN_BITS:
        return None  # a field outside our spec: the reference names it
    fields: dict[int, str] = {}
    for de, bit, width, variable in _LAYOUT:
        if not bitmap & bit:
            continue
        if variable:
            size = text[pos:pos + 2]
            if len(size) != 2 or not size.isdigit() or int(size) > width:
                return None
            pos += 2
            width = int(size)
        value = text[pos:pos + width]
        if len(value) != width:
            return None
        fields[de] = value
        pos += width
    if pos != len(text):
        return None
    return text[:4], fields, text.isprintable()


#: Per data element of the spec, ascending: (DE, its bitmap bit, width or maximum,
#: variable length?).
_LAYOUT: Final = tuple(
    (de, 1 << (128 - de), _FIXED_WIDTH[de], de in _VARIABLE) for de in sorted(_DATA_ELEMENTS))
#: Bitmap bits of fields outside the spec (bit 1, the secondary bitmap, is not a field).
_UNKNOWN_BITS: Final = ((1 << 128) - 1) & ~(1 << 127) & ~sum(bit for _, bit, _, _ in _LAYOUT)


def encode(msg: IsoMessage) -> bytes:
    """Serialize ``msg`` (without length prefix); bad field content raises CodecError.

    Built by :func:`_encode_fast` when every field fits the spec; otherwise pyiso8583,
    the reference, encodes it (or names the field it cannot).
    """
    _check_mti(msg.mti)
    for de, value in msg.fields.items():
        if de not in _DATA_ELEMENTS:
            raise CodecError("field not defined in the payswitch 1987 spec", f"DE{de}")
        if not isinstance(value, str):
            raise CodecError(f"expected text, got {type(value).__name__}", f"DE{de}")
        if de in _NUMERIC and not (value.isdigit() and value.isascii()):
            raise CodecError(f"numeric field holds {value!r}", f"DE{de}")
        if not _printable_ascii(value):
            raise CodecError(f"holds a character outside printable ASCII: {value!r}", f"DE{de}")
    fast = _encode_fast(msg)
    return fast if fast is not None else _encode_reference(msg)


def _encode_reference(msg: IsoMessage) -> bytes:
    doc: dict[str, str] = {"t": msg.mti}
    for de, value in msg.fields.items():
        doc[str(de)] = value
    try:
        raw, _ = _pyiso.encode(doc, SPEC)
    except _pyiso.EncodeError as exc:
        raise CodecError(exc.msg, _path(exc.field)) from None
    return bytes(raw)


def _encode_fast(msg: IsoMessage) -> bytes | None:
    """The bytes pyiso8583 would write for ``msg`` (checked fields), or None to let it.

    Fields in ascending order after the MTI and the bitmaps (uppercase hex; the
    secondary one only when a field past 64 is present); a FIXED field must be exactly
    its width, an LLVAR one at most its maximum behind a two-digit length. Anything else
    is the reference's to refuse.
    """
    bitmap = 0
    parts: list[str] = []
    for de in sorted(msg.fields):
        value = msg.fields[de]
        width = _FIXED_WIDTH[de]
        if de in _VARIABLE:
            if len(value) > width:
                return None
            parts.append(f"{len(value):02d}")  # the LL of LLVAR
        elif len(value) != width:
            return None
        parts.append(value)
        bitmap |= 1 << (128 - de)
    # Field 1 (a secondary bitmap follows) only when a field past 64 is present.
    secondary = bitmap & ((1 << 64) - 1)
    head = f"{bitmap | 1 << 127:032X}" if secondary else f"{bitmap >> 64:016X}"
    return (msg.mti + head + "".join(parts)).encode("ascii")


# --------------------------------------------------------------------------- builders


class CardTransaction(msgspec.Struct, frozen=True, kw_only=True):
    """What an acquirer knows about a card payment; the input of the 0100/0200 builders.

    ``transmitted_at`` feeds DE7 and ``local_at`` (default: the same instant) DE12/DE13.
    Times are arguments, never read from a clock, so builders stay deterministic.
    """

    pan: str
    amount_minor: int
    currency: str  # ISO 4217 numeric, e.g. "840"
    stan: int
    transmitted_at: datetime
    terminal_id: str
    merchant_id: str
    acquirer_id: str
    processing_code: str = "000000"
    local_at: datetime | None = None
    expiry: str | None = None  # YYMM
    mcc: str | None = None
    pos_entry_mode: str | None = None
    rrn: str | None = None
    merchant_name_location: str | None = None


def _num(value: int | str, de: int) -> str:
    """Zero-pad a numeric value to the field's fixed width, refusing what will not fit."""
    text = str(value)
    width = _FIXED_WIDTH[de]
    if not (text.isdigit() and text.isascii()) or len(text) > width:
        raise CodecError(f"{value!r} is not a number of at most {width} digits", f"DE{de}")
    return text.zfill(width)


def _ans(value: str, de: int) -> str:
    """Space-pad text to the field's fixed width, as fixed ans fields are on the wire."""
    width = _FIXED_WIDTH[de]
    if len(value) > width:
        raise CodecError(f"{value!r} is longer than {width} characters", f"DE{de}")
    return value.ljust(width)


def _de7(ts: datetime) -> str:
    # %-formatting: twice as fast as an f-string with format specs, same text.
    return "%02d%02d%02d%02d%02d" % (  # noqa: UP031
        ts.month, ts.day, ts.hour, ts.minute, ts.second)


def _card_request(mti: str, txn: CardTransaction) -> IsoMessage:
    de7 = _de7(txn.transmitted_at)
    # DE12 hhmmss and DE13 MMDD are the local time's DE7 text (MMDDhhmmss), cut.
    local = de7 if txn.local_at is None else _de7(txn.local_at)
    if not (txn.pan.isdigit() and txn.pan.isascii() and len(txn.pan) <= 19):
        raise CodecError("PAN must be at most 19 digits", "DE2")
    if not (txn.acquirer_id.isdigit() and len(txn.acquirer_id) <= 11):
        raise CodecError("acquirer id must be at most 11 digits", "DE32")
    fields: dict[int, str] = {
        2: txn.pan,
        3: _num(txn.processing_code, 3),
        4: _num(txn.amount_minor, 4),
        7: de7,
        11: _num(txn.stan, 11),
        12: local[4:],  # hhmmss
        13: local[:4],  # MMDD
    }
    if txn.expiry is not None:
        fields[14] = _num(txn.expiry, 14)
    if txn.mcc is not None:
        fields[18] = _num(txn.mcc, 18)
    if txn.pos_entry_mode is not None:
        fields[22] = _num(txn.pos_entry_mode, 22)
    fields[32] = txn.acquirer_id
    if txn.rrn is not None:
        fields[37] = _ans(txn.rrn, 37)
    fields[41] = _ans(txn.terminal_id, 41)
    fields[42] = _ans(txn.merchant_id, 42)
    if txn.merchant_name_location is not None:
        fields[43] = _ans(txn.merchant_name_location, 43)
    fields[49] = _num(txn.currency, 49)
    return IsoMessage(mti, fields)


def authorization_request(txn: CardTransaction) -> IsoMessage:
    """0100: ask the issuer to approve and hold funds (dual message)."""
    return _card_request("0100", txn)


def financial_request(txn: CardTransaction) -> IsoMessage:
    """0200: approve and post in one message (single message, e.g. ATM, debit)."""
    return _card_request("0200", txn)


_REVERSIBLE: Final = frozenset({"0100", "0101", "0200", "0201", "0120", "0121"})
# A reversal repeats the original's transaction data so the issuer can find and undo it
# even without DE90 support; DE7/DE11 are the reversal's own.
_REVERSAL_COPIED: Final[tuple[int, ...]] = (2, 3, 4, 12, 13, 14, 18, 22, 32, 37, 41, 42, 43, 49)


def _reversal(
    mti: str,
    original: IsoMessage,
    stan: int,
    transmitted_at: datetime,
    reason_code: str | None,
) -> IsoMessage:
    if original.mti not in _REVERSIBLE:
        raise CodecError(f"cannot reverse a {original.mti} message", "MTI")
    f = original.fields
    for de in (11, 7):
        if de not in f:
            raise CodecError("original lacks this field, needed for DE90", f"DE{de}")
    # DE90 n42 = original MTI (4) + STAN (6) + DE7 (10) + acquirer id (11) + forwarder (11).
    # We act as the acquirer-side originator, so there is no forwarding institution.
    de90 = f"{original.mti}{f[11]}{f[7]}{f.get(32, '').zfill(11)}{'0' * 11}"
    fields: dict[int, str] = {de: f[de] for de in _REVERSAL_COPIED if de in f}
    fields[7] = _de7(transmitted_at)
    fields[11] = _num(stan, 11)
    if reason_code is not None:
        # Many networks carry the reversal reason in DE39 (e.g. 68 for a timeout reversal).
        fields[39] = _ans(reason_code, 39)
    fields[90] = de90
    return IsoMessage(mti, dict(sorted(fields.items())))


def reversal_request(
    original: IsoMessage,
    *,
    stan: int,
    transmitted_at: datetime,
    reason_code: str | None = None,
) -> IsoMessage:
    """0400 undoing ``original`` (a 0100/0200/0120); DE90 identifies the original."""
    return _reversal("0400", original, stan, transmitted_at, reason_code)


def reversal_advice(
    original: IsoMessage,
    *,
    stan: int,
    transmitted_at: datetime,
    reason_code: str | None = None,
) -> IsoMessage:
    """0420: the reversal told rather than asked; it must be stored and forwarded."""
    return _reversal("0420", original, stan, transmitted_at, reason_code)


def authorization_advice(
    original: IsoMessage,
    *,
    response_code: str,
    auth_code: str | None = None,
    stan: int | None = None,
    transmitted_at: datetime | None = None,
) -> IsoMessage:
    """0120: tell the issuer what was decided on its behalf (stand-in) for ``original``."""
    if original.mti not in ("0100", "0101"):
        raise CodecError(f"an authorization advice follows a 0100, not {original.mti}", "MTI")
    fields = dict(original.fields)
    if stan is not None:
        fields[11] = _num(stan, 11)
    if transmitted_at is not None:
        fields[7] = _de7(transmitted_at)
    if auth_code is not None:
        fields[38] = _ans(auth_code, 38)
    fields[39] = _ans(response_code, 39)
    return IsoMessage("0120", dict(sorted(fields.items())))


def repeat(msg: IsoMessage) -> IsoMessage:
    """The repeat of a request or advice (0400 -> 0401, 0420 -> 0421, 0120 -> 0121).

    Sent when no response arrived; it keeps STAN and DE41, so it matches the same
    pending entry and the receiver can recognise it as a duplicate.
    """
    mti = msg.mti
    _check_mti(mti)
    if int(mti[2]) % 2 or mti[3] != "0":
        raise CodecError(f"only an original request or advice can be repeated, not {mti}", "MTI")
    return IsoMessage(mti[:3] + "1", dict(msg.fields))


def network_request(code: str, *, stan: int, transmitted_at: datetime) -> IsoMessage:
    """0800 network management: sign-on 001, sign-off 002, echo test 301."""
    return IsoMessage(
        "0800",
        {7: _de7(transmitted_at), 11: _num(stan, 11), 70: _num(code, 70)},
    )


def response_mti(mti: str) -> str:
    """The response MTI for a request or advice: third digit + 1, repeat digit cleared."""
    _check_mti(mti)
    third = int(mti[2])
    if third % 2:
        raise CodecError(f"{mti} is already a response", "MTI")
    return f"{mti[:2]}{third + 1}0"


def response(
    request: IsoMessage,
    response_code: str,
    *,
    auth_code: str | None = None,
) -> IsoMessage:
    """Answer ``request`` (0110, 0210, 0410, 0430, 0130, 0810 ...) with DE39 set.

    Echoes the fields the acquirer needs to match and reconcile the answer; the matching
    key (MTI class, DE11, DE41) survives by construction.
    """
    f = request.fields
    mti = _RESPONSE_MTI.get(request.mti)
    if mti is None:
        mti = _RESPONSE_MTI[request.mti] = response_mti(request.mti)  # raises if invalid
    # Built in field order (DE38 and DE39 fall between the echoed DE37 and DE41), so
    # nothing needs sorting afterwards.
    fields: dict[int, str] = {de: f[de] for de in _ECHOED_BEFORE_38 if de in f}
    if auth_code is not None:
        fields[38] = _ans(auth_code, 38)
    fields[39] = _ans(response_code, 39)
    for de in _ECHOED_AFTER_39:
        if de in f:
            fields[de] = f[de]
    return IsoMessage(mti, fields)


#: Every valid request MTI seen -> its response MTI (at most 5,000 four-digit ones).
_RESPONSE_MTI: dict[str, str] = {}


def match_key(msg: IsoMessage) -> tuple[str, str, str]:
    """jPOS QMUX key: (MTI class, DE11, DE41); a request and its response share it."""
    mti = msg.mti
    cls = mti[:2] + _MTI_CLASS.get(mti[2:3], mti[2:3])
    f = msg.fields
    return (cls, f.get(11, ""), f.get(41, ""))


# --------------------------------------------------------------------------- framing

#: Largest payload we accept by default. ISO 8583 messages are rarely above 2 KiB; the
#: bound caps what a misbehaving peer can make us buffer per connection.
DEFAULT_MAX_FRAME_SIZE: Final = 8192
_PREFIX_MAX: Final = 0xFFFF


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 2-byte big-endian length."""
    size = len(payload)
    if size > _PREFIX_MAX:
        raise CodecError(f"payload of {size} bytes does not fit a 2-byte length prefix", "frame")
    return size.to_bytes(2, "big") + payload


class FrameDecoder:
    """Split a byte stream into length-prefixed frames.

    ``feed`` returns every complete frame in the data so far and keeps the remainder.
    A declared length above ``max_frame_size`` raises CodecError naming the limit; the
    stream is then unusable (we can no longer tell where frames start), so further feeds
    raise the same error and the connection should be closed.

    Zero-length frames are dropped: some hosts send them as keep-alives, and they carry
    no message to decode.
    """

    __slots__ = ("_buf", "_error", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= _PREFIX_MAX:
            raise ValueError(f"max_frame_size must be in 1..{_PREFIX_MAX}")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._error: CodecError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            # Common case: the previous chunk ended on a frame boundary. Slice frames
            # straight out of the new chunk instead of copying it into the buffer first.
            src = data if isinstance(data, bytes | bytearray) else bytes(data)
        frames: list[bytes] = []
        pos, end_of_data, limit = 0, len(src), self.max_frame_size
        while end_of_data - pos >= 2:
            size = (src[pos] << 8) | src[pos + 1]
            if size > limit:
                self._error = FramingError(
                    f"declared length {size} exceeds max_frame_size={limit}", "frame"
                )
                raise FramingError(self._error.reason, "frame", frames)
            end = pos + 2 + size
            if end > end_of_data:
                break
            if size:
                frames.append(bytes(src[pos + 2 : end]))
            pos = end
        if src is buf:
            del buf[:pos]
        elif pos < end_of_data:
            buf += src[pos:]
        return frames
