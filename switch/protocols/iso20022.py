"""ISO 20022 codec: pacs.008 credit transfers, pacs.002 status reports, pacs.028 status requests.

pacs.008 is the primary cross-border format now that the MT/MX coexistence period has
ended (MT103 is read only as legacy input, see :mod:`switch.protocols.mt103`, and lands
in the same :class:`CreditTransfer`). One transaction per message: that is what the
simulator sends, and silently dropping the second transaction of a batch would lose
money, so a batch is rejected instead.

Generation is string building, not a DOM: the element order is fixed by the schema, the
values are validated first, and joining strings is several times cheaper than building
an ElementTree and serializing it.

Parsing treats input as hostile. defusedxml refuses DTDs (hence entity-expansion bombs
and external entities) before anything expands, input above :data:`MAX_XML_BYTES` is
refused before the parser sees it, and every missing or malformed element becomes a
:class:`CodecError` whose ``path`` is the element path, e.g.
``Document/FIToFICstmrCdtTrf/CdtTrfTxInf/IntrBkSttlmAmt``.

The same validators run on both sides, so anything :func:`decode_pacs008` returns can be
re-encoded, and ``decode(encode(x)) == x`` for every value ``encode`` accepts.

Amounts travel as integer minor units in the Structs and as decimal strings on the wire;
:data:`CURRENCY_EXPONENTS` converts between them. An unknown currency is rejected rather
than given a guessed exponent, since a wrong guess misstates the amount 100-fold.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from datetime import date, datetime
from typing import Final, Literal

import defusedxml
import defusedxml.ElementTree as SafeET
import msgspec

from switch.protocols.errors import CodecError

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_XML_BYTES",
    "NS_PACS002",
    "NS_PACS008",
    "NS_PACS028",
    "ChargeBearer",
    "CreditTransfer",
    "Party",
    "ReasonCode",
    "SettlementMethod",
    "StatusReport",
    "StatusRequest",
    "TxStatus",
    "check_bic",
    "check_iban",
    "check_text",
    "check_uetr",
    "decode",
    "decode_pacs002",
    "decode_pacs008",
    "decode_pacs028",
    "encode_pacs002",
    "encode_pacs008",
    "encode_pacs028",
    "format_amount",
    "parse_amount",
    "status_report_for",
    "status_request_for",
]

NS_PACS008: Final = "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"
NS_PACS002: Final = "urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10"
NS_PACS028: Final = "urn:iso:std:iso:20022:tech:xsd:pacs.028.001.05"

#: Largest document accepted. A single-transaction pacs message is a few KiB; the bound
#: stops a peer from making us parse megabytes per request.
MAX_XML_BYTES: Final = 256 * 1024

#: ISO 4217 minor-unit exponents. Most currencies have 2; the ones that differ are the
#: reason the table exists (JPY/KRW/VND 0; BHD/KWD/JOD/OMR/TND 3).
CURRENCY_EXPONENTS: Final[dict[str, int]] = {
    "AED": 2, "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2,
    "CZK": 2, "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "IDR": 2, "INR": 2, "ISK": 0,
    "JOD": 3, "JPY": 0, "KES": 2, "KHR": 2, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2,
    "NGN": 2, "NOK": 2, "NZD": 2, "OMR": 3, "PHP": 2, "PLN": 2, "SAR": 2, "SEK": 2,
    "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2, "USD": 2, "VND": 0, "ZAR": 2,
}  # fmt: skip

SettlementMethod = Literal["INDA", "INGA", "CLRG"]
ChargeBearer = Literal["DEBT", "CRED", "SHAR", "SLEV"]
TxStatus = Literal["ACCP", "ACSP", "ACSC", "PDNG", "RJCT"]

# str -> Literal lookups: membership test and narrowing in one step, no casts.
_SETTLEMENT_METHODS: Final[dict[str, SettlementMethod]] = {
    "INDA": "INDA", "INGA": "INGA", "CLRG": "CLRG",
}  # fmt: skip
_CHARGE_BEARERS: Final[dict[str, ChargeBearer]] = {
    "DEBT": "DEBT", "CRED": "CRED", "SHAR": "SHAR", "SLEV": "SLEV",
}  # fmt: skip
_TX_STATUSES: Final[dict[str, TxStatus]] = {
    "ACCP": "ACCP", "ACSP": "ACSP", "ACSC": "ACSC", "PDNG": "PDNG", "RJCT": "RJCT",
}  # fmt: skip


class ReasonCode(enum.StrEnum):
    """StsRsnInf/Rsn/Cd values the simulator produces.

    Parsing accepts any well-formed code (4 upper-case letters or digits): the external
    code list is long and grows, and a reason is informative, whereas an unknown TxSts
    would leave the payment state machine with nothing to do, so TxSts stays closed.
    """

    WRONG_ACCOUNT = "AC01"
    CLOSED_ACCOUNT = "AC04"
    INSUFFICIENT_FUNDS = "AM04"
    FORBIDDEN = "AG01"
    INVALID_FORMAT = "FF01"
    NOT_SPECIFIED = "MS03"


class Party(msgspec.Struct, frozen=True, kw_only=True):
    """Debtor or creditor: name, at most one account (IBAN or other id), address lines."""

    name: str
    iban: str | None = None
    account_id: str | None = None  # DbtrAcct/Id/Othr/Id when the account is not an IBAN
    address_lines: tuple[str, ...] = ()


class CreditTransfer(msgspec.Struct, frozen=True, kw_only=True):
    """One pacs.008 transaction (also what an MT103 translates into).

    XML mapping: msg_id GrpHdr/MsgId, created_at GrpHdr/CreDtTm, settlement_method
    GrpHdr/SttlmInf/SttlmMtd, instr_id/end_to_end_id/tx_id/uetr PmtId/*, amount_minor +
    currency IntrBkSttlmAmt[@Ccy], settlement_date IntrBkSttlmDt, charge_bearer ChrgBr,
    debtor Dbtr + DbtrAcct, debtor_agent_bic DbtrAgt/FinInstnId/BICFI, creditor_agent_bic
    CdtrAgt/FinInstnId/BICFI, creditor Cdtr + CdtrAcct, remittance RmtInf/Ustrd.
    """

    msg_id: str
    created_at: str  # ISODateTime as sent, e.g. "2025-01-15T09:30:00Z"
    settlement_method: SettlementMethod
    end_to_end_id: str
    uetr: str  # UUID v4, lower case
    amount_minor: int
    currency: str
    settlement_date: str  # YYYY-MM-DD
    charge_bearer: ChargeBearer
    debtor: Party
    debtor_agent_bic: str
    creditor_agent_bic: str
    creditor: Party
    instr_id: str | None = None
    tx_id: str | None = None
    remittance: str | None = None


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """pacs.002: the status of one earlier transaction. RJCT must carry a reason."""

    msg_id: str
    created_at: str
    orgnl_msg_id: str
    orgnl_end_to_end_id: str
    orgnl_uetr: str
    status: TxStatus
    reason: str | None = None
    additional_info: str | None = None
    orgnl_msg_nm_id: str = "pacs.008.001.08"
    orgnl_instr_id: str | None = None
    orgnl_tx_id: str | None = None
    #: OrgnlGrpInfAndSts/OrgnlCreDtTm: the original's creation time, when known.
    orgnl_created_at: str | None = None


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    """pacs.028: "what became of this payment?" for one earlier transaction."""

    msg_id: str
    created_at: str
    orgnl_msg_id: str
    orgnl_end_to_end_id: str
    orgnl_uetr: str
    orgnl_msg_nm_id: str = "pacs.008.001.08"
    orgnl_instr_id: str | None = None
    orgnl_tx_id: str | None = None


# --------------------------------------------------------------------------- amounts


def format_amount(amount_minor: int, currency: str, path: str = "IntrBkSttlmAmt") -> str:
    """12345 USD -> "123.45"; 12345 JPY -> "12345"; 12345 BHD -> "12.345"."""
    exp = _exponent(currency, path)
    if amount_minor < 0:
        raise CodecError(f"amount must not be negative, got {amount_minor}", path)
    if amount_minor >= 10**18:
        raise CodecError("amount exceeds the 18 digits ISO 20022 allows", path)
    if exp == 0:
        return str(amount_minor)
    whole, frac = divmod(amount_minor, 10**exp)
    return f"{whole}.{frac:0{exp}d}"


def parse_amount(text: str, currency: str, path: str = "IntrBkSttlmAmt") -> int:
    """"123.45" USD -> 12345. More decimals than the currency has is an error, not rounding."""
    exp = _exponent(currency, path)
    whole, dot, frac = text.partition(".")
    if not (whole.isdigit() and whole.isascii()) or (
        dot and not (frac.isdigit() and frac.isascii())
    ):
        raise CodecError(f"amount {text!r} is not a plain decimal number", path)
    if len(frac) > exp:
        raise CodecError(f"amount {text!r} has more than {exp} decimals for {currency}", path)
    if len(whole) + len(frac) > 18:
        raise CodecError("amount exceeds the 18 digits ISO 20022 allows", path)
    minor: int = int(whole) * 10**exp + (int(frac) * 10 ** (exp - len(frac)) if frac else 0)
    return minor


def _exponent(currency: str, path: str) -> int:
    exp = CURRENCY_EXPONENTS.get(currency)
    if exp is None:
        raise CodecError(f"currency {currency!r} is not in the exponent table", path)
    return exp


# --------------------------------------------------------------------------- validators
# Each returns its value so parsing can validate and assign in one expression. The
# check_* ones are public because the MT103 reader applies the same rules to its fields.


def _text(value: str, max_len: int, path: str) -> str:
    if not value or len(value) > max_len:
        raise CodecError(f"must be 1..{max_len} characters, got {len(value)}", path)
    if not value.isprintable():
        raise CodecError("contains non-printable characters", path)
    return value


#: The text rule (1..max_len printable characters) every Max35Text/Max140Text field obeys;
#: public so the switch's request validation admits only what encodes.
check_text: Final = _text


def check_bic(value: str, path: str) -> str:
    """BICFI: 4 alnum (institution), 2 letters (country), 2 alnum (location), [3 branch]."""
    if not (
        len(value) in (8, 11)
        and value.isascii()
        and value.isalnum()
        and value.upper() == value
        and value[4:6].isalpha()
    ):
        raise CodecError(f"{value!r} is not a BIC", path)
    return value


def check_iban(value: str, path: str) -> str:
    """IBAN shape (country, check digits, BBAN); the mod-97 check is the bank's business."""
    if not (
        15 <= len(value) <= 34
        and value.isascii()
        and value.isalnum()
        and value[:2].isalpha()
        and value[:2].isupper()
        and value[2:4].isdigit()
    ):
        raise CodecError(f"{value!r} is not an IBAN", path)
    return value


_HEX: Final = frozenset("0123456789abcdef")


def check_uetr(value: str, path: str) -> str:
    """UETR: a lower-case UUID v4, as the xsd pattern and SWIFT gpi require."""
    # xsd pattern: [a-f0-9]{8}-[a-f0-9]{4}-4[a-f0-9]{3}-[89ab][a-f0-9]{3}-[a-f0-9]{12}
    if (
        len(value) != 36
        or value[8] != "-"
        or value[13] != "-"
        or value[18] != "-"
        or value[23] != "-"
        or value[14] != "4"
        or value[19] not in "89ab"
        or value.count("-") != 4
        or not _HEX.issuperset(value.replace("-", ""))
    ):
        raise CodecError(f"{value!r} is not a lower-case UUID v4", path)
    return value


#: xs:dateTime as the ISO 20022 schemas type ISODateTime: YYYY-MM-DDThh:mm:ss, optional
#: fraction, optional zone (Z or +-hh:mm, at most 14:00). ``datetime.fromisoformat``
#: alone took ISO 8601 forms the schema refuses (week dates ``2025-W03-3``, basic
#: ``093000``, ``+0100``, ``+01``, a decimal comma), and we wrote them into documents that
#: failed XSD validation at the receiver.
_XSD_DATETIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))?")
#: ISODate (xs:date) as we write and read it: YYYY-MM-DD.
_XSD_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _datetime(value: str, path: str) -> str:
    try:
        # The pattern fixes the layout; fromisoformat the calendar (month 13, 25:00).
        ok = (_XSD_DATETIME.fullmatch(value) is not None
              and bool(datetime.fromisoformat(value[:19])))
    except ValueError:
        ok = False
    if not ok:
        raise CodecError(f"{value!r} is not an ISO date-time", path)
    return value


def _date(value: str, path: str) -> str:
    try:
        ok = _XSD_DATE.fullmatch(value) is not None and bool(date.fromisoformat(value))
    except ValueError:
        ok = False
    if not ok:
        raise CodecError(f"{value!r} is not a YYYY-MM-DD date", path)
    return value


def _reason(value: str, path: str) -> str:
    if len(value) != 4 or not (value.isascii() and value.isalnum()) or value.upper() != value:
        raise CodecError(f"{value!r} is not a 4-character reason code", path)
    return value


# --------------------------------------------------------------------------- generation


def _esc(value: str) -> str:
    if "&" in value or "<" in value or ">" in value or '"' in value:
        value = (
            value.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
        )
    return value


def _el(tag: str, value: str | None) -> str:
    return "" if value is None else f"<{tag}>{_esc(value)}</{tag}>"


_P008: Final = "Document/FIToFICstmrCdtTrf"
_TX008: Final = f"{_P008}/CdtTrfTxInf"


def _check_party(p: Party, role: str, acct: str) -> None:
    base = f"{_TX008}/{role}"
    _text(p.name, 140, f"{base}/Nm")
    if p.iban is not None and p.account_id is not None:
        raise CodecError("give an IBAN or another account id, not both", f"{_TX008}/{acct}/Id")
    if p.iban is not None:
        check_iban(p.iban, f"{_TX008}/{acct}/Id/IBAN")
    if p.account_id is not None:
        _text(p.account_id, 34, f"{_TX008}/{acct}/Id/Othr/Id")
    if len(p.address_lines) > 7:
        raise CodecError("at most 7 address lines", f"{base}/PstlAdr/AdrLine")
    for line in p.address_lines:
        _text(line, 70, f"{base}/PstlAdr/AdrLine")


def _party_xml(p: Party, role: str, acct: str) -> str:
    adr = ""
    if p.address_lines:
        adr = "<PstlAdr>" + "".join(_el("AdrLine", a) for a in p.address_lines) + "</PstlAdr>"
    out = f"<{role}>{_el('Nm', p.name)}{adr}</{role}>"
    if p.iban is not None:
        out += f"<{acct}><Id>{_el('IBAN', p.iban)}</Id></{acct}>"
    elif p.account_id is not None:
        out += f"<{acct}><Id><Othr>{_el('Id', p.account_id)}</Othr></Id></{acct}>"
    return out


def _check_credit_transfer(ct: CreditTransfer) -> str:
    """Validate every field; returns the formatted amount (needed by the encoder)."""
    _text(ct.msg_id, 35, f"{_P008}/GrpHdr/MsgId")
    _datetime(ct.created_at, f"{_P008}/GrpHdr/CreDtTm")
    if ct.settlement_method not in _SETTLEMENT_METHODS:
        raise CodecError(f"{ct.settlement_method!r} is not INDA|INGA|CLRG",
                         f"{_P008}/GrpHdr/SttlmInf/SttlmMtd")
    if ct.instr_id is not None:
        _text(ct.instr_id, 35, f"{_TX008}/PmtId/InstrId")
    _text(ct.end_to_end_id, 35, f"{_TX008}/PmtId/EndToEndId")
    if ct.tx_id is not None:
        _text(ct.tx_id, 35, f"{_TX008}/PmtId/TxId")
    check_uetr(ct.uetr, f"{_TX008}/PmtId/UETR")
    amount = format_amount(ct.amount_minor, ct.currency, f"{_TX008}/IntrBkSttlmAmt")
    _date(ct.settlement_date, f"{_TX008}/IntrBkSttlmDt")
    if ct.charge_bearer not in _CHARGE_BEARERS:
        raise CodecError(f"{ct.charge_bearer!r} is not DEBT|CRED|SHAR|SLEV", f"{_TX008}/ChrgBr")
    _check_party(ct.debtor, "Dbtr", "DbtrAcct")
    check_bic(ct.debtor_agent_bic, f"{_TX008}/DbtrAgt/FinInstnId/BICFI")
    check_bic(ct.creditor_agent_bic, f"{_TX008}/CdtrAgt/FinInstnId/BICFI")
    _check_party(ct.creditor, "Cdtr", "CdtrAcct")
    if ct.remittance is not None:
        _text(ct.remittance, 140, f"{_TX008}/RmtInf/Ustrd")
    return amount


_XML_DECL: Final = '<?xml version="1.0" encoding="UTF-8"?>'


def encode_pacs008(ct: CreditTransfer) -> bytes:
    """Serialize ``ct`` as a pacs.008.001.08 document (UTF-8 bytes)."""
    amount = _check_credit_transfer(ct)
    rmt = "" if ct.remittance is None else f"<RmtInf>{_el('Ustrd', ct.remittance)}</RmtInf>"
    doc = (
        f'{_XML_DECL}<Document xmlns="{NS_PACS008}"><FIToFICstmrCdtTrf>'
        f"<GrpHdr>{_el('MsgId', ct.msg_id)}{_el('CreDtTm', ct.created_at)}<NbOfTxs>1</NbOfTxs>"
        f"<SttlmInf><SttlmMtd>{ct.settlement_method}</SttlmMtd></SttlmInf></GrpHdr>"
        f"<CdtTrfTxInf><PmtId>{_el('InstrId', ct.instr_id)}"
        f"{_el('EndToEndId', ct.end_to_end_id)}{_el('TxId', ct.tx_id)}"
        f"{_el('UETR', ct.uetr)}</PmtId>"
        f'<IntrBkSttlmAmt Ccy="{ct.currency}">{amount}</IntrBkSttlmAmt>'
        f"<IntrBkSttlmDt>{ct.settlement_date}</IntrBkSttlmDt>"
        f"<ChrgBr>{ct.charge_bearer}</ChrgBr>"
        f"{_party_xml(ct.debtor, 'Dbtr', 'DbtrAcct')}"
        f"<DbtrAgt><FinInstnId>{_el('BICFI', ct.debtor_agent_bic)}</FinInstnId></DbtrAgt>"
        f"<CdtrAgt><FinInstnId>{_el('BICFI', ct.creditor_agent_bic)}</FinInstnId></CdtrAgt>"
        f"{_party_xml(ct.creditor, 'Cdtr', 'CdtrAcct')}"
        f"{rmt}</CdtTrfTxInf></FIToFICstmrCdtTrf></Document>"
    )
    return doc.encode("utf-8")


_P002: Final = "Document/FIToFIPmtStsRpt"
_TX002: Final = f"{_P002}/TxInfAndSts"


def _check_status_report(sr: StatusReport) -> None:
    _text(sr.msg_id, 35, f"{_P002}/GrpHdr/MsgId")
    _datetime(sr.created_at, f"{_P002}/GrpHdr/CreDtTm")
    _text(sr.orgnl_msg_id, 35, f"{_P002}/OrgnlGrpInfAndSts/OrgnlMsgId")
    _text(sr.orgnl_msg_nm_id, 35, f"{_P002}/OrgnlGrpInfAndSts/OrgnlMsgNmId")
    if sr.orgnl_created_at is not None:
        _datetime(sr.orgnl_created_at, f"{_P002}/OrgnlGrpInfAndSts/OrgnlCreDtTm")
    if sr.orgnl_instr_id is not None:
        _text(sr.orgnl_instr_id, 35, f"{_TX002}/OrgnlInstrId")
    _text(sr.orgnl_end_to_end_id, 35, f"{_TX002}/OrgnlEndToEndId")
    if sr.orgnl_tx_id is not None:
        _text(sr.orgnl_tx_id, 35, f"{_TX002}/OrgnlTxId")
    check_uetr(sr.orgnl_uetr, f"{_TX002}/OrgnlUETR")
    if sr.status not in _TX_STATUSES:
        raise CodecError(f"{sr.status!r} is not ACCP|ACSP|ACSC|PDNG|RJCT", f"{_TX002}/TxSts")
    if sr.reason is not None:
        _reason(sr.reason, f"{_TX002}/StsRsnInf/Rsn/Cd")
    elif sr.status == "RJCT":
        # A rejection without a reason leaves the sender unable to repair or route around.
        raise CodecError("a RJCT status needs a reason code", f"{_TX002}/StsRsnInf/Rsn/Cd")
    if sr.additional_info is not None:
        if sr.reason is None:
            raise CodecError("additional info needs a reason code", f"{_TX002}/StsRsnInf")
        _text(sr.additional_info, 105, f"{_TX002}/StsRsnInf/AddtlInf")


def encode_pacs002(sr: StatusReport) -> bytes:
    """Serialize ``sr`` as a pacs.002.001.10 document (UTF-8 bytes)."""
    _check_status_report(sr)
    rsn = ""
    if sr.reason is not None:
        rsn = (
            f"<StsRsnInf><Rsn><Cd>{sr.reason}</Cd></Rsn>"
            f"{_el('AddtlInf', sr.additional_info)}</StsRsnInf>"
        )
    doc = (
        f'{_XML_DECL}<Document xmlns="{NS_PACS002}"><FIToFIPmtStsRpt>'
        f"<GrpHdr>{_el('MsgId', sr.msg_id)}{_el('CreDtTm', sr.created_at)}</GrpHdr>"
        f"<OrgnlGrpInfAndSts>{_el('OrgnlMsgId', sr.orgnl_msg_id)}"
        f"{_el('OrgnlMsgNmId', sr.orgnl_msg_nm_id)}{_el('OrgnlCreDtTm', sr.orgnl_created_at)}"
        f"</OrgnlGrpInfAndSts>"
        f"<TxInfAndSts>{_el('OrgnlInstrId', sr.orgnl_instr_id)}"
        f"{_el('OrgnlEndToEndId', sr.orgnl_end_to_end_id)}{_el('OrgnlTxId', sr.orgnl_tx_id)}"
        f"{_el('OrgnlUETR', sr.orgnl_uetr)}<TxSts>{sr.status}</TxSts>{rsn}"
        f"</TxInfAndSts></FIToFIPmtStsRpt></Document>"
    )
    return doc.encode("utf-8")


_P028: Final = "Document/FIToFIPmtStsReq"
_TX028: Final = f"{_P028}/TxInf"


def _check_status_request(rq: StatusRequest) -> None:
    _text(rq.msg_id, 35, f"{_P028}/GrpHdr/MsgId")
    _datetime(rq.created_at, f"{_P028}/GrpHdr/CreDtTm")
    _text(rq.orgnl_msg_id, 35, f"{_TX028}/OrgnlGrpInf/OrgnlMsgId")
    _text(rq.orgnl_msg_nm_id, 35, f"{_TX028}/OrgnlGrpInf/OrgnlMsgNmId")
    if rq.orgnl_instr_id is not None:
        _text(rq.orgnl_instr_id, 35, f"{_TX028}/OrgnlInstrId")
    _text(rq.orgnl_end_to_end_id, 35, f"{_TX028}/OrgnlEndToEndId")
    if rq.orgnl_tx_id is not None:
        _text(rq.orgnl_tx_id, 35, f"{_TX028}/OrgnlTxId")
    check_uetr(rq.orgnl_uetr, f"{_TX028}/OrgnlUETR")


def encode_pacs028(rq: StatusRequest) -> bytes:
    """Serialize ``rq`` as a pacs.028.001.05 document (UTF-8 bytes)."""
    _check_status_request(rq)
    doc = (
        f'{_XML_DECL}<Document xmlns="{NS_PACS028}"><FIToFIPmtStsReq>'
        f"<GrpHdr>{_el('MsgId', rq.msg_id)}{_el('CreDtTm', rq.created_at)}</GrpHdr>"
        f"<TxInf><OrgnlGrpInf>{_el('OrgnlMsgId', rq.orgnl_msg_id)}"
        f"{_el('OrgnlMsgNmId', rq.orgnl_msg_nm_id)}</OrgnlGrpInf>"
        f"{_el('OrgnlInstrId', rq.orgnl_instr_id)}"
        f"{_el('OrgnlEndToEndId', rq.orgnl_end_to_end_id)}{_el('OrgnlTxId', rq.orgnl_tx_id)}"
        f"{_el('OrgnlUETR', rq.orgnl_uetr)}</TxInf></FIToFIPmtStsReq></Document>"
    )
    return doc.encode("utf-8")


def status_report_for(
    ct: CreditTransfer,
    *,
    msg_id: str,
    created_at: str,
    status: TxStatus,
    reason: str | None = None,
    additional_info: str | None = None,
) -> StatusReport:
    """The pacs.002 answering ``ct``, with every Orgnl* reference copied across.

    ``created_at`` is the report's own creation time (the caller's clock: codecs read
    none), never the original's, which travels as OrgnlCreDtTm.
    """
    return StatusReport(
        msg_id=msg_id,
        created_at=created_at,
        orgnl_msg_id=ct.msg_id,
        orgnl_end_to_end_id=ct.end_to_end_id,
        orgnl_uetr=ct.uetr,
        status=status,
        reason=reason,
        additional_info=additional_info,
        orgnl_instr_id=ct.instr_id,
        orgnl_tx_id=ct.tx_id,
        orgnl_created_at=ct.created_at,
    )


def status_request_for(ct: CreditTransfer, *, msg_id: str, created_at: str) -> StatusRequest:
    """The pacs.028 asking what became of ``ct``; ``created_at`` is the request's own time."""
    return StatusRequest(
        msg_id=msg_id,
        created_at=created_at,
        orgnl_msg_id=ct.msg_id,
        orgnl_end_to_end_id=ct.end_to_end_id,
        orgnl_uetr=ct.uetr,
        orgnl_instr_id=ct.instr_id,
        orgnl_tx_id=ct.tx_id,
    )


# --------------------------------------------------------------------------- parsing


def _parse_xml(data: bytes | bytearray | memoryview | str) -> ET.Element:
    """Size-check and parse untrusted XML, refusing DTDs, entities and external references."""
    source: bytes | str
    if isinstance(data, str):
        # Characters never outnumber UTF-8 bytes, so this check also bounds the encode.
        if len(data) > MAX_XML_BYTES:
            raise CodecError(f"document exceeds MAX_XML_BYTES={MAX_XML_BYTES}", "Document")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise CodecError("text is not encodable as UTF-8", "Document") from None
        # Text is parsed as text: its characters are already decoded, so an encoding
        # declaration ("ISO-8859-1") must not decode them again. Handing expat the UTF-8
        # bytes under such a declaration read "JOSÉ" as "JOSÃ\x89".
        source = data
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = source = bytes(data)
    else:
        raise CodecError(f"expected bytes or str, got {type(data).__name__}", "Document")
    if len(raw) > MAX_XML_BYTES:
        raise CodecError(
            f"document of {len(raw)} bytes exceeds MAX_XML_BYTES={MAX_XML_BYTES}", "Document"
        )
    try:
        root: ET.Element = SafeET.fromstring(source, forbid_dtd=True)
    except defusedxml.DTDForbidden:
        raise CodecError(
            "DTDs are forbidden (they enable entity bombs and external entities)", "Document"
        ) from None
    except defusedxml.EntitiesForbidden:
        raise CodecError("entity declarations are forbidden", "Document") from None
    except defusedxml.ExternalReferenceForbidden:
        raise CodecError("external references are forbidden", "Document") from None
    except defusedxml.DefusedXmlException as exc:
        raise CodecError(f"unsafe XML refused: {exc}", "Document") from None
    except ET.ParseError as exc:
        raise CodecError(f"not well-formed XML: {exc}", "Document") from None
    except (ValueError, LookupError, UnicodeError) as exc:  # e.g. unknown encoding name
        raise CodecError(f"unreadable XML: {exc}", "Document") from None
    return root


#: XML's whitespace characters: what the schema's "collapse" facet trims.
_XML_SPACE: Final = " \t\n\r"

# Deepest element we read is Document/FIToFICstmrCdtTrf/CdtTrfTxInf/DbtrAcct/Id/Othr/Id;
# nothing below this depth is indexed, which also keeps a deeply nested hostile document
# from costing more than its size.
_MAX_DEPTH: Final = 10


class _Doc:
    """Every element of one document, indexed by its path without namespaces.

    One walk and dictionary lookups cost a fraction of an ElementPath ``find`` per field,
    and the index keys double as the element paths that errors report. Elements in other
    namespaces and elements we do not read are ignored (a tolerant reader: optional
    schema elements such as PmtTpInf must not break parsing).
    """

    __slots__ = ("index",)

    def __init__(self, root: ET.Element, ns: str) -> None:
        prefix = "{" + ns + "}"
        cut = len(prefix)
        index: dict[str, list[ET.Element]] = {}
        # Breadth first, so each path's elements are listed in document order: the stack
        # this was listed them last parent first, and a pacs.002 with two StsRsnInf was
        # read with the second one's reason and the first one's AddtlInf.
        queue: list[tuple[ET.Element, str, int]] = [(root, "Document", 0)]
        for elem, path, depth in queue:  # grows while walked
            if depth >= _MAX_DEPTH:
                continue
            for child in elem:
                tag = child.tag
                if not (isinstance(tag, str) and tag.startswith(prefix)):
                    continue
                child_path = f"{path}/{tag[cut:]}"
                found = index.get(child_path)
                if found is None:
                    index[child_path] = [child]
                else:
                    found.append(child)
                queue.append((child, child_path, depth + 1))
        self.index = index

    def has(self, path: str) -> bool:
        return path in self.index

    def one(self, path: str) -> ET.Element:
        found = self.index.get(path)
        if found is None:
            raise CodecError("missing mandatory element", path)
        if len(found) != 1:
            raise CodecError(
                f"{len(found)} occurrences; only single-transaction messages are supported", path
            )
        return found[0]

    def text(self, path: str) -> str:
        """The text of the element at ``path``, which must occur once: a second one was
        silently ignored (a second Ustrd line lost; of two UETRs, one matched)."""
        found = self.index.get(path)
        if found is None:
            raise CodecError("missing mandatory element", path)
        if len(found) > 1:
            raise CodecError(f"{len(found)} occurrences; only one is supported", path)
        text = found[0].text
        if not text:
            raise CodecError("empty element", path)
        return text

    def collapsed(self, path: str) -> str:
        """The text of an element whose schema type collapses whitespace (xs:decimal,
        xs:date, xs:dateTime): ``<CreDtTm> 2025-01-15T09:30:00Z </CreDtTm>`` is valid."""
        return self.text(path).strip(_XML_SPACE)

    def opt_text(self, path: str) -> str | None:
        return self.text(path) if path in self.index else None

    def texts(self, path: str) -> tuple[str, ...]:
        out = []
        for elem in self.index.get(path, ()):
            if not elem.text:
                raise CodecError("empty element", path)
            out.append(elem.text)
        return tuple(out)


_ROOTS: Final = {
    NS_PACS008: "FIToFICstmrCdtTrf",
    NS_PACS002: "FIToFIPmtStsRpt",
    NS_PACS028: "FIToFIPmtStsReq",
}


def _document(
    data: bytes | bytearray | memoryview | str, expected_ns: str | None
) -> tuple[str, _Doc]:
    root = _parse_xml(data)
    tag = root.tag
    ns, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    if local != "Document":
        raise CodecError(f"root element is {local!r}, expected 'Document'", "Document")
    if (expected_ns is not None and ns != expected_ns) or ns not in _ROOTS:
        want = expected_ns or " or ".join(_ROOTS)
        raise CodecError(f"namespace {ns!r} is not {want}", "Document")
    doc = _Doc(root, ns)
    doc.one(f"Document/{_ROOTS[ns]}")
    return ns, doc


def _read_party(doc: _Doc, role: str, acct: str) -> Party:
    who, account = f"{_TX008}/{role}", f"{_TX008}/{acct}/Id"
    iban = account_id = None
    if doc.has(account):
        iban = doc.opt_text(f"{account}/IBAN")
        if iban is None:
            account_id = doc.text(f"{account}/Othr/Id")
    return Party(
        name=doc.text(f"{who}/Nm"),
        iban=iban,
        account_id=account_id,
        address_lines=doc.texts(f"{who}/PstlAdr/AdrLine"),
    )


def _read_pacs008(doc: _Doc) -> CreditTransfer:
    hdr = f"{_P008}/GrpHdr"
    nb = doc.text(f"{hdr}/NbOfTxs")
    if nb != "1":
        raise CodecError(
            f"NbOfTxs is {nb!r}; only single-transaction messages are supported",
            f"{hdr}/NbOfTxs",
        )
    mtd = doc.text(f"{hdr}/SttlmInf/SttlmMtd")
    settlement_method = _SETTLEMENT_METHODS.get(mtd)
    if settlement_method is None:
        raise CodecError(f"{mtd!r} is not INDA|INGA|CLRG", f"{hdr}/SttlmInf/SttlmMtd")
    doc.one(_TX008)
    amt_path = f"{_TX008}/IntrBkSttlmAmt"
    amt = doc.one(amt_path)
    currency = amt.get("Ccy")
    if currency is None:
        raise CodecError("missing Ccy attribute", amt_path)
    chrg = doc.text(f"{_TX008}/ChrgBr")
    charge_bearer = _CHARGE_BEARERS.get(chrg)
    if charge_bearer is None:
        raise CodecError(f"{chrg!r} is not DEBT|CRED|SHAR|SLEV", f"{_TX008}/ChrgBr")
    ct = CreditTransfer(
        msg_id=doc.text(f"{hdr}/MsgId"),
        created_at=doc.collapsed(f"{hdr}/CreDtTm"),
        settlement_method=settlement_method,
        instr_id=doc.opt_text(f"{_TX008}/PmtId/InstrId"),
        end_to_end_id=doc.text(f"{_TX008}/PmtId/EndToEndId"),
        tx_id=doc.opt_text(f"{_TX008}/PmtId/TxId"),
        uetr=doc.text(f"{_TX008}/PmtId/UETR"),
        amount_minor=parse_amount((amt.text or "").strip(_XML_SPACE), currency, amt_path),
        currency=currency,
        settlement_date=doc.collapsed(f"{_TX008}/IntrBkSttlmDt"),
        charge_bearer=charge_bearer,
        debtor=_read_party(doc, "Dbtr", "DbtrAcct"),
        debtor_agent_bic=doc.text(f"{_TX008}/DbtrAgt/FinInstnId/BICFI"),
        creditor_agent_bic=doc.text(f"{_TX008}/CdtrAgt/FinInstnId/BICFI"),
        creditor=_read_party(doc, "Cdtr", "CdtrAcct"),
        remittance=(
            doc.text(f"{_TX008}/RmtInf/Ustrd") if doc.has(f"{_TX008}/RmtInf") else None
        ),
    )
    _check_credit_transfer(ct)
    return ct


def _status_reason(elem: ET.Element, path: str) -> tuple[str, str | None]:
    """(Rsn/Cd, first AddtlInf) of one StsRsnInf element, in its own namespace."""
    ns = elem.tag[: elem.tag.index("}") + 1] if elem.tag.startswith("{") else ""
    code = elem.find(f"{ns}Rsn/{ns}Cd")
    if code is None:
        raise CodecError("missing mandatory element", f"{path}/Rsn/Cd")
    if not code.text:
        raise CodecError("empty element", f"{path}/Rsn/Cd")
    info = elem.find(f"{ns}AddtlInf")
    if info is not None and not info.text:
        raise CodecError("empty element", f"{path}/AddtlInf")
    return code.text, None if info is None else info.text


def _read_pacs002(doc: _Doc) -> StatusReport:
    hdr, grp = f"{_P002}/GrpHdr", f"{_P002}/OrgnlGrpInfAndSts"
    doc.one(_TX002)
    sts = doc.text(f"{_TX002}/TxSts")
    status = _TX_STATUSES.get(sts)
    if status is None:
        raise CodecError(f"{sts!r} is not ACCP|ACSP|ACSC|PDNG|RJCT", f"{_TX002}/TxSts")
    rsn = f"{_TX002}/StsRsnInf"
    has_rsn = doc.has(rsn)
    reason = additional_info = None
    if has_rsn:
        # The first StsRsnInf (the schema allows several), its reason and its own AddtlInf.
        reason, additional_info = _status_reason(doc.index[rsn][0], rsn)
    sr = StatusReport(
        msg_id=doc.text(f"{hdr}/MsgId"),
        created_at=doc.collapsed(f"{hdr}/CreDtTm"),
        orgnl_msg_id=doc.text(f"{grp}/OrgnlMsgId"),
        orgnl_msg_nm_id=doc.text(f"{grp}/OrgnlMsgNmId"),
        orgnl_instr_id=doc.opt_text(f"{_TX002}/OrgnlInstrId"),
        orgnl_end_to_end_id=doc.text(f"{_TX002}/OrgnlEndToEndId"),
        orgnl_tx_id=doc.opt_text(f"{_TX002}/OrgnlTxId"),
        orgnl_created_at=(doc.collapsed(f"{grp}/OrgnlCreDtTm")
                          if doc.has(f"{grp}/OrgnlCreDtTm") else None),
        orgnl_uetr=doc.text(f"{_TX002}/OrgnlUETR"),
        status=status,
        reason=reason,
        additional_info=additional_info,
    )
    _check_status_report(sr)
    return sr


def _read_pacs028(doc: _Doc) -> StatusRequest:
    hdr = f"{_P028}/GrpHdr"
    doc.one(_TX028)
    rq = StatusRequest(
        msg_id=doc.text(f"{hdr}/MsgId"),
        created_at=doc.collapsed(f"{hdr}/CreDtTm"),
        orgnl_msg_id=doc.text(f"{_TX028}/OrgnlGrpInf/OrgnlMsgId"),
        orgnl_msg_nm_id=doc.text(f"{_TX028}/OrgnlGrpInf/OrgnlMsgNmId"),
        orgnl_instr_id=doc.opt_text(f"{_TX028}/OrgnlInstrId"),
        orgnl_end_to_end_id=doc.text(f"{_TX028}/OrgnlEndToEndId"),
        orgnl_tx_id=doc.opt_text(f"{_TX028}/OrgnlTxId"),
        orgnl_uetr=doc.text(f"{_TX028}/OrgnlUETR"),
    )
    _check_status_request(rq)
    return rq


def decode_pacs008(data: bytes | bytearray | memoryview | str) -> CreditTransfer:
    """Parse a pacs.008.001.08 document holding exactly one transaction."""
    return _read_pacs008(_document(data, NS_PACS008)[1])


def decode_pacs002(data: bytes | bytearray | memoryview | str) -> StatusReport:
    """Parse a pacs.002.001.10 document holding exactly one transaction status."""
    return _read_pacs002(_document(data, NS_PACS002)[1])


def decode_pacs028(data: bytes | bytearray | memoryview | str) -> StatusRequest:
    """Parse a pacs.028.001.05 document holding exactly one status request."""
    return _read_pacs028(_document(data, NS_PACS028)[1])


def decode(
    data: bytes | bytearray | memoryview | str,
) -> CreditTransfer | StatusReport | StatusRequest:
    """Parse whichever of the three supported messages ``data`` is, by its namespace."""
    ns, doc = _document(data, None)
    if ns == NS_PACS008:
        return _read_pacs008(doc)
    if ns == NS_PACS002:
        return _read_pacs002(doc)
    return _read_pacs028(doc)
