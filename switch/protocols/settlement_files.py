"""Settlement files, the evidence networks send at each cut-off, sans-IO.

Three formats, one record type (:class:`SettlementEntry`):

* card clearing file (``.clr``): CSV-like lines ``H`` header, ``D`` detail, ``T`` trailer
  whose count and amount sum must match the details (so truncation is detected);
* SWIFT-style camt.053.001.08 bank-to-customer statement (XML, parsed safely);
* QR scheme CSV with a header row.

Policy on bad input (documented for reconciliation): a malformed file is rejected
*whole*, with an error naming the file, line and field. A settlement file with one bad
row cannot be trusted to be complete, and silently dropping rows would turn into false
"missing at network" breaks.

:func:`inject_discrepancies` plants seeded, logged discrepancies (missing, amount off,
duplicated, unknown reference) so reconciliation has something real to find, and a test
can check it finds exactly those.
"""

from __future__ import annotations

import csv
import io
import random
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, Literal

import defusedxml
import defusedxml.ElementTree as SafeET
import msgspec

from switch.protocols.iso20022 import format_amount, parse_amount

NS_CAMT053: Final = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
#: Bound on a settlement file we will parse: a cycle of a busy network, not a disk.
MAX_FILE_BYTES: Final = 256 * 1024 * 1024

EntryStatus = Literal["settled", "reversed"]
DiscrepancyKind = Literal["missing", "amount_off", "duplicated", "unknown_reference"]


class SettlementFileError(ValueError):
    """A settlement file that cannot be used; names the file, line and field."""

    def __init__(self, file: str, line: int, field: str, reason: str) -> None:
        super().__init__(f"{file}:{line}: {field}: {reason}")
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason


class SettlementEntry(msgspec.Struct, frozen=True):
    """One settled (or reversed) payment as the network reports it.

    ``reference`` is the channel's own key: RRN for cards, UETR for SWIFT, the QR
    reference for QR. ``secondary`` carries the rest of the key (STAN + terminal + local
    date for cards, EndToEndId for SWIFT, merchant id for QR).
    """

    reference: str
    secondary: str
    amount: int
    currency: str
    status: EntryStatus
    settled_at_us: int


class Discrepancy(msgspec.Struct, frozen=True):
    kind: DiscrepancyKind
    reference: str
    detail: str = ""


# --- card clearing file -----------------------------------------------------------------


def encode_card_clearing(network: str, cycle: str, entries: Sequence[SettlementEntry],
                         numeric_currency: dict[str, int]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["H", network, cycle, len(entries)])
    total = 0
    for e in entries:
        writer.writerow(["D", e.reference, e.secondary, e.amount,
                         f"{numeric_currency[e.currency]:03d}", e.status, e.settled_at_us])
        total += e.amount
    writer.writerow(["T", len(entries), total])
    return out.getvalue()


def decode_card_clearing(text: str, file: str,
                         alpha_currency: dict[int, str]) -> list[SettlementEntry]:
    rows = _read_csv(text, file)
    if not rows or rows[0][:1] != ["H"]:
        raise SettlementFileError(file, 1, "record type", "first line must be the H header")
    entries: list[SettlementEntry] = []
    trailer: list[str] | None = None
    for lineno, row in enumerate(rows[1:], start=2):
        if trailer is not None:
            raise SettlementFileError(file, lineno, "record type", "data after the T trailer")
        kind = row[0] if row else ""
        if kind == "T":
            trailer = row
            continue
        if kind != "D" or len(row) != 7:
            raise SettlementFileError(file, lineno, "record type",
                                      f"expected a D record of 7 fields, got {row[:2]}")
        _, reference, secondary, amount, currency, status, settled = row
        entries.append(SettlementEntry(
            _nonempty(reference, file, lineno, "reference"),
            secondary,
            _int(amount, file, lineno, "amount"),
            _currency_numeric(currency, alpha_currency, file, lineno),
            _status(status, file, lineno),
            _int(settled, file, lineno, "settled_at_us"),
        ))
    if trailer is None:
        raise SettlementFileError(file, len(rows) + 1, "T trailer", "missing: file truncated?")
    if len(trailer) != 3 or _int(trailer[1], file, len(rows), "count") != len(entries):
        raise SettlementFileError(file, len(rows), "count",
                                  f"trailer says {trailer[1:2]}, file has {len(entries)}")
    if _int(trailer[2], file, len(rows), "amount sum") != sum(e.amount for e in entries):
        raise SettlementFileError(file, len(rows), "amount sum", "does not match the details")
    return entries


# --- camt.053 statement -----------------------------------------------------------------


#: Bank transaction codes (ISO 20022 external code set, domain PMNT): a settled payment is
#: a received cross-border credit transfer, a reversal an issued one going back.
_BKTXCD: Final[dict[EntryStatus, str]] = {
    "settled": "<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>XBCT</SubFmlyCd>"
               "</Fmly></Domn></BkTxCd>",
    "reversed": "<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>ICDT</Cd><SubFmlyCd>XBCT</SubFmlyCd>"
                "</Fmly></Domn></BkTxCd>",
}


def closing_balances(opening: Mapping[str, int],
                     entries: Iterable[SettlementEntry]) -> dict[str, int]:
    """Per currency: ``opening`` plus settled entries minus reversed ones (minor units)."""
    closing = dict(opening)
    for e in entries:
        signed = e.amount if e.status == "settled" else -e.amount
        closing[e.currency] = closing.get(e.currency, 0) + signed
    return closing


def encode_camt053(statement_id: str, account: str, created_at_us: int,
                   entries: Sequence[SettlementEntry], *,
                   opening: Mapping[str, int] | None = None,
                   base_currency: str = "EUR") -> bytes:
    """A camt.053.001.08 statement: opening (OPBD) and closing (CLBD) balance per currency,
    then one entry per record.

    Balances are mandatory in the schema (``Stmt/Bal``, 1..n, and an account in several
    currencies needs a pair per currency). ``opening`` is the previous statement's
    closing, signed minor units per currency; a statement with no currency at all
    reports a zero ``base_currency`` balance, since it must report one.
    """
    def esc(v: str) -> str:
        return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    created = _iso(created_at_us)
    start = dict(opening or {})
    closing = closing_balances(start, entries)
    currencies = sorted(closing) or [base_currency]
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<Document xmlns="{NS_CAMT053}"><BkToCstmrStmt>',
        f"<GrpHdr><MsgId>{esc(statement_id)}</MsgId><CreDtTm>{created}</CreDtTm></GrpHdr>",
        f"<Stmt><Id>{esc(statement_id)}</Id><CreDtTm>{created}</CreDtTm>",
        f"<Acct><Id><Othr><Id>{esc(account)}</Id></Othr></Id></Acct>",
    ]
    for code, balances in (("OPBD", start), ("CLBD", closing)):
        for ccy in currencies:
            amount = balances.get(ccy, 0)
            parts.append(
                f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>"
                f'<Amt Ccy="{ccy}">{format_amount(abs(amount), ccy)}</Amt>'
                f"<CdtDbtInd>{'CRDT' if amount >= 0 else 'DBIT'}</CdtDbtInd>"
                f"<Dt><DtTm>{created}</DtTm></Dt></Bal>"
            )
    for e in entries:
        indicator = "CRDT" if e.status == "settled" else "DBIT"
        parts.append(
            f'<Ntry><Amt Ccy="{e.currency}">{format_amount(e.amount, e.currency)}</Amt>'
            f"<CdtDbtInd>{indicator}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>"
            f"<BookgDt><DtTm>{_iso(e.settled_at_us)}</DtTm></BookgDt>{_BKTXCD[e.status]}"
            f"<NtryDtls><TxDtls><Refs><EndToEndId>{esc(e.secondary)}</EndToEndId>"
            f"<UETR>{esc(e.reference)}</UETR></Refs></TxDtls></NtryDtls></Ntry>"
        )
    parts.append("</Stmt></BkToCstmrStmt></Document>")
    return "".join(parts).encode()


def decode_camt053(data: bytes, file: str) -> list[SettlementEntry]:
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "Document", f"exceeds {MAX_FILE_BYTES} bytes")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise SettlementFileError(file, 0, "Document", f"unsafe XML refused: {exc}") from None
    except ET.ParseError as exc:
        line = exc.position[0] if exc.position else 0
        raise SettlementFileError(file, line, "Document", f"not well-formed: {exc}") from None
    ns = "{" + NS_CAMT053 + "}"
    if root.tag != ns + "Document":
        raise SettlementFileError(file, 1, "Document",
                                  f"not a camt.053.001.08 document: {root.tag}")
    entries = []
    for i, ntry in enumerate(root.iter(ns + "Ntry")):
        where = f"Stmt/Ntry[{i}]"

        def text(path: str, ntry: ET.Element = ntry, where: str = where, line: int = i + 1) -> str:
            el = ntry.find(ns + path.replace("/", "/" + ns))
            if el is None or not el.text:
                raise SettlementFileError(file, line, f"{where}/{path}", "missing")
            return el.text

        amt = ntry.find(ns + "Amt")
        if amt is None or not amt.text or not amt.get("Ccy"):
            raise SettlementFileError(file, i + 1, f"{where}/Amt", "missing amount or Ccy")
        currency = amt.get("Ccy", "")
        try:
            amount = parse_amount(amt.text, currency, f"{where}/Amt")
        except ValueError as exc:
            raise SettlementFileError(file, i + 1, f"{where}/Amt", str(exc)) from None
        indicator = text("CdtDbtInd")
        if indicator not in ("CRDT", "DBIT"):
            raise SettlementFileError(file, i + 1, f"{where}/CdtDbtInd",
                                      f"bad value {indicator!r}")
        booked = text("BookgDt/DtTm")
        try:
            settled = int(datetime.fromisoformat(booked).timestamp() * 1_000_000)
        except ValueError:
            raise SettlementFileError(file, i + 1, f"{where}/BookgDt/DtTm",
                                      "not a date-time") from None
        entries.append(SettlementEntry(
            text("NtryDtls/TxDtls/Refs/UETR"), text("NtryDtls/TxDtls/Refs/EndToEndId"),
            amount, currency, "settled" if indicator == "CRDT" else "reversed", settled,
        ))
    return entries


# --- QR CSV -----------------------------------------------------------------------------

QR_COLUMNS: Final = ("qr_reference", "merchant_id", "amount", "currency", "status",
                     "settled_at_us")


def encode_qr_csv(entries: Iterable[SettlementEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(QR_COLUMNS)
    for e in entries:
        writer.writerow([e.reference, e.secondary, e.amount, e.currency, e.status,
                         e.settled_at_us])
    return out.getvalue()


def decode_qr_csv(text: str, file: str, known_currencies: Iterable[str]) -> list[SettlementEntry]:
    known = set(known_currencies)
    rows = _read_csv(text, file)
    if not rows or tuple(rows[0]) != QR_COLUMNS:
        raise SettlementFileError(file, 1, "header", f"expected {','.join(QR_COLUMNS)}")
    entries = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(QR_COLUMNS):
            raise SettlementFileError(file, lineno, "row",
                                      f"expected {len(QR_COLUMNS)} fields, got {len(row)}")
        reference, merchant, amount, currency, status, settled = row
        if currency not in known:
            raise SettlementFileError(file, lineno, "currency", f"unknown currency {currency!r}")
        entries.append(SettlementEntry(
            _nonempty(reference, file, lineno, "qr_reference"), merchant,
            _int(amount, file, lineno, "amount"), currency, _status(status, file, lineno),
            _int(settled, file, lineno, "settled_at_us"),
        ))
    return entries


# --- discrepancies ----------------------------------------------------------------------


def inject_discrepancies(entries: Sequence[SettlementEntry], rate: float,
                         rng: random.Random) -> tuple[list[SettlementEntry], list[Discrepancy]]:
    """Plant discrepancies in about ``rate`` of the entries; return both file and log."""
    assert 0.0 <= rate <= 1.0
    kinds: tuple[DiscrepancyKind, ...] = ("missing", "amount_off", "duplicated",
                                          "unknown_reference")
    out: list[SettlementEntry] = []
    log: list[Discrepancy] = []
    for e in entries:
        if rng.random() >= rate:
            out.append(e)
            continue
        kind = kinds[rng.randrange(len(kinds))]
        if kind == "missing":
            log.append(Discrepancy(kind, e.reference))
        elif kind == "amount_off":
            delta = max(1, e.amount // 10)
            out.append(msgspec.structs.replace(e, amount=e.amount + delta))
            log.append(Discrepancy(kind, e.reference, f"+{delta}"))
        elif kind == "duplicated":
            out += [e, e]
            log.append(Discrepancy(kind, e.reference))
        else:
            out.append(e)
            ghost = msgspec.structs.replace(e, reference=f"UNKNOWN-{rng.getrandbits(40):010x}")
            out.append(ghost)
            log.append(Discrepancy(kind, ghost.reference))
    return out, log


# --- helpers ----------------------------------------------------------------------------


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat(timespec="microseconds")


def _read_csv(text: str, file: str) -> list[list[str]]:
    if len(text) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "file", f"exceeds {MAX_FILE_BYTES} bytes")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise SettlementFileError(file, reader.line_num, "line", f"not valid CSV: {exc}") from None


def _int(value: str, file: str, line: int, field: str) -> int:
    if not value.lstrip("-").isdigit():
        raise SettlementFileError(file, line, field, f"not an integer: {value!r}")
    return int(value)


def _nonempty(value: str, file: str, line: int, field: str) -> str:
    if not value:
        raise SettlementFileError(file, line, field, "empty")
    return value


def _status(value: str, file: str, line: int) -> EntryStatus:
    if value == "settled":
        return "settled"
    if value == "reversed":
        return "reversed"
    raise SettlementFileError(file, line, "status", f"expected settled|reversed, got {value!r}")


def _currency_numeric(value: str, alpha: dict[int, str], file: str, line: int) -> str:
    if not value.isdigit() or int(value) not in alpha:
        raise SettlementFileError(file, line, "currency", f"unknown ISO 4217 numeric {value!r}")
    return alpha[int(value)]
