"""EMVCo merchant-presented QR: parse, validate and build the TLV payload.

A payload is a flat run of data elements, each ``ID (2 digits) + length (2 digits) +
value``; IDs 26-51 (merchant account templates), 62 (additional data) and 64+ nest the
same format inside their value. The last element is always ``6304`` + CRC-16/CCITT-FALSE
of everything before it *including* the literal ``6304``, as 4 upper-case hex digits.

Validation follows the EMVCo MPM specification: 00 first with value "01"; 63 last with
the right CRC; 00, at least one merchant account (02-51), 52, 53, 58, 59, 60 and 63
present; no ID twice; 01 is "11" (static) or "12" (dynamic); 59 <= 25 and 60 <= 15
characters; 54 at most 13 characters of digits with one optional '.'; tip indicator
rules for 55/56/57. Errors name the offending tag (``tag 54``, ``tag 62.05``).

Some schemes publish codes that exceed the name/city limits (the KHQR public sample has
a 16-character city); ``lenient_lengths=True`` accepts those while keeping every
structural check. Strict is the default because we *generate* codes to the standard.

Lengths count characters, not bytes, as EMVCo defines them; the CRC runs over the UTF-8
bytes. ``binascii.crc_hqx`` is exactly this CRC (poly 0x1021, no reflection, no final
xor) given the 0xFFFF start value, and runs in C.

The parsed :class:`MerchantQr` keeps the order of repeated structures (merchant
accounts, template and additional-data sub-elements, unknown templates) but not the
relative order of different top-level IDs, which carries no meaning; :func:`build` emits
IDs in ascending order, so ``parse(build(qr)) == qr``.
"""

from __future__ import annotations

import binascii
from typing import Final

import msgspec

from switch.protocols.errors import CodecError

__all__ = [
    "MAX_PAYLOAD_CHARS",
    "MerchantAccount",
    "MerchantQr",
    "Tlv",
    "build",
    "crc16",
    "parse",
]

#: Refused before parsing: a version 40 QR code holds at most 4,296 alphanumeric
#: characters, so anything longer did not come from a QR code.
MAX_PAYLOAD_CHARS: Final = 4096

STATIC: Final = "11"
DYNAMIC: Final = "12"


class Tlv(msgspec.Struct, frozen=True):
    """One data element inside a template, or an ID this module does not interpret."""

    tag: str
    value: str


class MerchantAccount(msgspec.Struct, frozen=True, kw_only=True):
    """ID 02-51. 02-25 are primitive (card scheme ids); 26-51 are templates whose
    sub-element 00 is the globally unique id of the payment system."""

    tag: str
    value: str | None = None
    template: tuple[Tlv, ...] = ()

    @property
    def gui(self) -> str | None:
        for sub in self.template:
            if sub.tag == "00":
                return sub.value
        return None


class MerchantQr(msgspec.Struct, frozen=True, kw_only=True):
    """A merchant-presented QR. 00 (always "01") and 63 (the CRC) are implied."""

    merchant_accounts: tuple[MerchantAccount, ...]
    mcc: str  # 52
    currency: str  # 53, ISO 4217 numeric
    country: str  # 58, ISO 3166 alpha-2
    merchant_name: str  # 59
    merchant_city: str  # 60
    initiation: str | None = None  # 01: "11" static, "12" dynamic
    amount: str | None = None  # 54, kept as text: "25.50" must come back as "25.50"
    tip_indicator: str | None = None  # 55: 01 prompt, 02 fixed fee, 03 percentage fee
    convenience_fee_fixed: str | None = None  # 56
    convenience_fee_percentage: str | None = None  # 57
    postal_code: str | None = None  # 61
    additional_data: tuple[Tlv, ...] | None = None  # 62 sub-elements (01 bill no., ...)
    extra: tuple[Tlv, ...] = ()  # 64 language template, 65-79 RFU, 80-99 unreserved


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


def _crc_hex(text: str, path: str) -> str:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError("not encodable as UTF-8", path) from None
    return f"{crc16(raw):04X}"


def _is_num(value: str) -> bool:
    return value.isascii() and value.isdigit()


# --------------------------------------------------------------------------- parsing


def _split(text: str, where: str) -> list[Tlv]:
    """Split a nested template value into sub-elements (``where`` prefixes error paths)."""
    out: list[Tlv] = []
    seen: set[str] = set()
    i, n = 0, len(text)
    while i < n:
        tag, size = text[i : i + 2], text[i + 2 : i + 4]
        if len(size) < 2 or not _is_num(tag) or not _is_num(size):
            raise CodecError(f"malformed sub-element header {text[i : i + 4]!r}", where)
        path = f"{where}.{tag}"
        end = i + 4 + int(size)
        if end > n:
            raise CodecError(f"length {size} overruns the template", path)
        if size == "00":
            raise CodecError("empty value", path)
        if tag in seen:
            raise CodecError("sub-element appears twice", path)
        seen.add(tag)
        out.append(Tlv(tag, text[i + 4 : end]))
        i = end
    return out


def parse(payload: str | bytes, *, lenient_lengths: bool = False) -> MerchantQr:
    """Parse and validate a merchant-presented QR payload."""
    if isinstance(payload, bytes | bytearray):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError("payload is not UTF-8", "payload") from None
    elif not isinstance(payload, str):
        raise CodecError(f"expected str or bytes, got {type(payload).__name__}", "payload")
    n = len(payload)
    if n > MAX_PAYLOAD_CHARS:
        raise CodecError(f"payload exceeds MAX_PAYLOAD_CHARS={MAX_PAYLOAD_CHARS}", "payload")
    if not payload.startswith("000201"):
        raise CodecError("payload must begin with payload format indicator 000201", "tag 00")

    elements: dict[str, str] = {}
    accounts: list[MerchantAccount] = []
    extra: list[Tlv] = []
    seen: set[str] = set()
    i = 0
    while i < n:
        tag, size = payload[i : i + 2], payload[i + 2 : i + 4]
        if len(size) < 2:
            raise CodecError(f"truncated data element header at offset {i}", "payload")
        if not _is_num(tag):
            raise CodecError(f"ID {tag!r} at offset {i} is not two digits", "payload")
        path = f"tag {tag}"
        if not _is_num(size):
            raise CodecError(f"length {size!r} is not two digits", path)
        start = i + 4
        end = start + int(size)
        if end > n:
            raise CodecError(
                f"length {size} overruns the payload ({n - start} characters left)", path
            )
        if size == "00":
            raise CodecError("empty value", path)
        if tag in seen:
            raise CodecError("data element appears twice", path)
        seen.add(tag)
        value = payload[start:end]
        if tag == "63":
            if end != n:
                raise CodecError("CRC must be the last data element", path)
            if size != "04":
                raise CodecError(f"CRC length must be 04, not {size}", path)
            expected = _crc_hex(payload[:start], path)
            if value.upper() != expected:
                raise CodecError(f"CRC {value} does not match computed {expected}", path)
        if "02" <= tag <= "25":
            accounts.append(MerchantAccount(tag=tag, value=value))
        elif "26" <= tag <= "51":
            accounts.append(MerchantAccount(tag=tag, template=tuple(_split(value, path))))
        elif tag >= "64":
            extra.append(Tlv(tag, value))
        else:
            elements[tag] = value
        i = end

    if "63" not in elements:
        raise CodecError("CRC data element missing", "tag 63")
    if not accounts:
        raise CodecError("at least one merchant account information (02-51) is required",
                         "tag 02-51")
    for tag in ("52", "53", "58", "59", "60"):
        if tag not in elements:
            raise CodecError("mandatory data element missing", f"tag {tag}")
    if elements["00"] != "01":
        raise CodecError(f"payload format indicator must be 01, not {elements['00']!r}",
                         "tag 00")
    add = elements.get("62")
    qr = MerchantQr(
        merchant_accounts=tuple(accounts),
        mcc=elements["52"],
        currency=elements["53"],
        country=elements["58"],
        merchant_name=elements["59"],
        merchant_city=elements["60"],
        initiation=elements.get("01"),
        amount=elements.get("54"),
        tip_indicator=elements.get("55"),
        convenience_fee_fixed=elements.get("56"),
        convenience_fee_percentage=elements.get("57"),
        postal_code=elements.get("61"),
        additional_data=None if add is None else tuple(_split(add, "tag 62")),
        extra=tuple(extra),
    )
    _validate(qr, lenient_lengths)
    return qr


# --------------------------------------------------------------------------- validation


def _check_len(value: str, max_len: int, path: str) -> None:
    if not 0 < len(value) <= max_len:
        raise CodecError(f"must be 1..{max_len} characters, got {len(value)}", path)


def _check_decimal(value: str, max_len: int, path: str) -> None:
    _check_len(value, max_len, path)
    whole, dot, frac = value.partition(".")
    if not _is_num(whole) or (dot and not _is_num(frac)):
        raise CodecError(f"{value!r} is not digits with an optional '.'", path)


def _check_tags(items: tuple[Tlv, ...], lo: str, hi: str, where: str) -> None:
    seen: set[str] = set()
    for item in items:
        path = f"{where}.{item.tag}" if where != "tag" else f"tag {item.tag}"
        if len(item.tag) != 2 or not _is_num(item.tag) or not lo <= item.tag <= hi:
            raise CodecError(f"ID must be two digits in {lo}..{hi}", path)
        if item.tag in seen:
            raise CodecError("appears twice", path)
        seen.add(item.tag)
        _check_len(item.value, 99, path)


def _validate(qr: MerchantQr, lenient_lengths: bool) -> None:
    """Rules that hold for a parsed payload and for anything we build."""
    if qr.initiation is not None and qr.initiation not in (STATIC, DYNAMIC):
        raise CodecError(f"point of initiation must be 11 or 12, not {qr.initiation!r}",
                         "tag 01")
    if not qr.merchant_accounts:
        raise CodecError("at least one merchant account information (02-51) is required",
                         "tag 02-51")
    seen: set[str] = set()
    for acct in qr.merchant_accounts:
        path = f"tag {acct.tag}"
        if len(acct.tag) != 2 or not _is_num(acct.tag) or not "02" <= acct.tag <= "51":
            raise CodecError("merchant account ID must be 02..51", path)
        if acct.tag in seen:
            raise CodecError("data element appears twice", path)
        seen.add(acct.tag)
        if acct.tag <= "25":
            if acct.value is None or acct.template:
                raise CodecError("IDs 02-25 carry a plain value, not a template", path)
            _check_len(acct.value, 99, path)
        else:
            if acct.value is not None:
                raise CodecError("IDs 26-51 are templates, not plain values", path)
            _check_tags(acct.template, "00", "99", path)
            if acct.gui is None:
                raise CodecError("template lacks its globally unique identifier (00)",
                                 f"{path}.00")
    if not (len(qr.mcc) == 4 and _is_num(qr.mcc)):
        raise CodecError(f"merchant category code must be 4 digits, not {qr.mcc!r}", "tag 52")
    if not (len(qr.currency) == 3 and _is_num(qr.currency)):
        raise CodecError(f"currency must be ISO 4217 numeric, not {qr.currency!r}", "tag 53")
    if qr.amount is not None:
        _check_decimal(qr.amount, 13, "tag 54")
    tip = qr.tip_indicator
    if tip is not None and tip not in ("01", "02", "03"):
        raise CodecError(f"tip indicator must be 01, 02 or 03, not {tip!r}", "tag 55")
    if (qr.convenience_fee_fixed is not None) != (tip == "02"):
        raise CodecError("a fixed convenience fee goes with tip indicator 02 (and only then)",
                         "tag 56")
    if qr.convenience_fee_fixed is not None:
        _check_decimal(qr.convenience_fee_fixed, 13, "tag 56")
    if (qr.convenience_fee_percentage is not None) != (tip == "03"):
        raise CodecError("a percentage fee goes with tip indicator 03 (and only then)",
                         "tag 57")
    if qr.convenience_fee_percentage is not None:
        _check_decimal(qr.convenience_fee_percentage, 5, "tag 57")
    if not (len(qr.country) == 2 and qr.country.isascii() and qr.country.isalpha()
            and qr.country.isupper()):
        raise CodecError(f"country must be ISO 3166 alpha-2, not {qr.country!r}", "tag 58")
    _check_len(qr.merchant_name, 99 if lenient_lengths else 25, "tag 59")
    _check_len(qr.merchant_city, 99 if lenient_lengths else 15, "tag 60")
    if qr.postal_code is not None:
        _check_len(qr.postal_code, 10, "tag 61")
    if qr.additional_data is not None:
        if not qr.additional_data:
            raise CodecError("additional data template is empty", "tag 62")
        _check_tags(qr.additional_data, "00", "99", "tag 62")
    _check_tags(qr.extra, "64", "99", "tag")


# --------------------------------------------------------------------------- building


def _tlv(tag: str, value: str) -> str:
    size = len(value)
    if not 0 < size <= 99:
        raise CodecError(f"value of {size} characters does not fit a 2-digit length",
                         f"tag {tag}")
    return f"{tag}{size:02d}{value}"


def _join(items: tuple[Tlv, ...]) -> str:
    return "".join(_tlv(t.tag, t.value) for t in items)


def build(qr: MerchantQr, *, lenient_lengths: bool = False) -> str:
    """Serialize ``qr`` with IDs in ascending order and the CRC appended."""
    _validate(qr, lenient_lengths)
    parts = ["000201"]
    if qr.initiation is not None:
        parts.append(_tlv("01", qr.initiation))
    for acct in qr.merchant_accounts:
        value = acct.value if acct.value is not None else _join(acct.template)
        parts.append(_tlv(acct.tag, value))
    parts.append(_tlv("52", qr.mcc))
    parts.append(_tlv("53", qr.currency))
    for tag, opt in (
        ("54", qr.amount),
        ("55", qr.tip_indicator),
        ("56", qr.convenience_fee_fixed),
        ("57", qr.convenience_fee_percentage),
    ):
        if opt is not None:
            parts.append(_tlv(tag, opt))
    parts.append(_tlv("58", qr.country))
    parts.append(_tlv("59", qr.merchant_name))
    parts.append(_tlv("60", qr.merchant_city))
    if qr.postal_code is not None:
        parts.append(_tlv("61", qr.postal_code))
    if qr.additional_data is not None:
        parts.append(_tlv("62", _join(qr.additional_data)))
    parts.append(_join(qr.extra))
    parts.append("6304")
    body = "".join(parts)
    return body + _crc_hex(body, "tag 63")
