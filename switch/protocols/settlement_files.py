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

Values are bounded, in every reader alike (strict decoders, polars fast paths, the numba
kernel in switch.backoffice.recon.kernels): an amount within ``|amount| < 10**18`` minor
units (:data:`MAX_ABS_AMOUNT`, ISO 20022's 18 digits) and a settlement time from
1970-01-01 up to 2100-01-01 UTC (:data:`MIN_TIME_US`, :data:`MAX_TIME_US`). A value past
them is no settlement, and reconciliation's arithmetic on differences is only exact
within ±2**61, so the file is refused naming the line and field.

Amounts are magnitudes: an amount is never negative, in any format. Direction has its
own field (the CSV formats' ``status``: ``settled`` or ``reversed``; camt.053's
``CdtDbtInd`` and ``RvslInd``), and a signed amount next to it would be a second,
possibly contradicting, say on the same thing: a ``-500,...,settled`` row is read by one
system as a reversal and by another as a settlement of -500. Such a file is refused,
naming the line and the amount field (camt.053's ``Amt`` is unsigned in the schema too).
A zero amount is accepted as before.

camt.053's reversal indicator (``Ntry/RvslInd``, xs:boolean) says the entry undoes an
earlier one of the opposite direction. The statements read here are a nostro's booked
incoming credit transfers (``CRDT``, status settled) and money going back on them
(``DBIT``, status reversed; with or without ``RvslInd``, since statements written before
it was emitted carry none). So ``DBIT`` with ``RvslInd`` true is that reversal: it reads
as ``reversed`` and reconciliation pairs it with the switch's reversed payment (a credit
booked in one statement and reversed in the next are one payment, as for cards). ``CRDT``
with ``RvslInd`` true would undo a *debit* this account never books as a payment: there is
no settlement it could be, and reading it as either a new settlement or a reversal would
misstate the money, so the file is refused naming ``Stmt/Ntry[i]/RvslInd``; as is a value
that is not an xs:boolean (true, false, 1, 0).

camt.053 entries must be booked: ``Ntry/Sts/Cd`` is ``BOOK``. A statement reports the
entries *booked* to the account (camt.053's definition); a pending (``PDNG``),
information-only (``INFO``) or future (``FUTR``) entry is not settled money, and a
missing ``Sts`` says nothing either way. Such a file is refused whole, naming
``Stmt/Ntry[i]/Sts`` (``.../Sts/Cd`` and the code when there is one), like any other
entry we cannot read as settlement: counted as settled, it would match its payment and
report clean money that has not moved; dropped, the statement would be read as the
bank's booked record when it is not one.

:func:`inject_discrepancies` plants seeded, logged discrepancies (missing, amount off,
duplicated, unknown reference) so reconciliation has something real to find, and a test
can check it finds exactly those.
"""

from __future__ import annotations

import csv
import io
import mmap
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
from lxml import etree
from numpy.typing import NDArray

from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.protocols.errors import CodecError
from switch.protocols.iso20022 import format_amount, parse_amount

NS_CAMT053: Final = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
#: Bound on a settlement file we will parse: a cycle of a busy network, not a disk.
MAX_FILE_BYTES: Final = 256 * 1024 * 1024
#: ``|amount| < MAX_ABS_AMOUNT`` (minor units): ISO 20022 amounts have at most 18 digits.
MAX_ABS_AMOUNT: Final = 10**18
#: Settlement times (µs since the epoch) from 1970-01-01 up to, not including, 2100-01-01
#: UTC: anything else is a wrong field or unit, not a settlement. Both bounds keep
#: reconciliation's differences of times far inside its exact range (±2**61).
MIN_TIME_US: Final = 0
MAX_TIME_US: Final = 4_102_444_800_000_000
_TIME_RANGE: Final = "1970-01-01..2100-01-01 UTC"

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


_DIGIT_RUNS: Final = re.compile(r"([0-9]+)")


def settlement_file_order(name: str) -> tuple[tuple[object, ...], str]:
    """Sort key for settlement file names (``<network>-<cycle>.<ext>``): runs of digits
    compare as numbers, so cycle 10000 comes after 9999 (a string sort put it first once
    the writer's four zero-padded digits ran out, and a reversal in cycle 10000 was read
    before the settlement it undoes in 9999).

    Digits compare by (count without leading zeros, digits), never through ``int``: a file
    name's digits can be longer than ``int()`` converts. The name itself breaks ties
    (``a-01`` and ``a-1``), so the order is total and the same on every machine.
    """
    parts = _DIGIT_RUNS.split(name)
    # split() with a group alternates text and digits, text first: like compares with like.
    key = tuple(part if k % 2 == 0 else (len(part.lstrip("0")), part.lstrip("0"))
                for k, part in enumerate(parts))
    return key, name


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
            _amount(amount, file, lineno, "amount"),
            _currency_numeric(currency, alpha_currency, file, lineno),
            _status(status, file, lineno),
            _time_us(settled, file, lineno, "settled_at_us"),
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
        # A reversal says so (RvslInd, between CdtDbtInd and Sts in the schema's order):
        # a bare DBIT on a nostro is an outgoing payment to any other reader.
        indicator = ("<CdtDbtInd>CRDT</CdtDbtInd>" if e.status == "settled" else
                     "<CdtDbtInd>DBIT</CdtDbtInd><RvslInd>true</RvslInd>")
        parts.append(
            f'<Ntry><Amt Ccy="{e.currency}">{format_amount(e.amount, e.currency)}</Amt>'
            f"{indicator}<Sts><Cd>BOOK</Cd></Sts>"
            f"<BookgDt><DtTm>{_iso(e.settled_at_us)}</DtTm></BookgDt>{_BKTXCD[e.status]}"
            f"<NtryDtls><TxDtls><Refs><EndToEndId>{esc(e.secondary)}</EndToEndId>"
            f"<UETR>{esc(e.reference)}</UETR></Refs></TxDtls></NtryDtls></Ntry>"
        )
    parts.append("</Stmt></BkToCstmrStmt></Document>")
    return "".join(parts).encode()


def _refuse_declarations(data: bytes, file: str) -> None:
    """Refuse any DTD or entity declaration outright, naming its line: nothing declared
    can then be expanded, whatever the parser's settings."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        line = data.count(b"\n", 0, max(data.find(b"<!DOCTYPE"), data.find(b"<!ENTITY"))) + 1
        raise SettlementFileError(file, line, "Document",
                                  "unsafe XML refused: a DTD or entity declaration")


def statement_closing(data: bytes, file: str) -> dict[str, int]:
    """A camt.053 statement's closing balances (``CLBD``), signed minor units per currency:
    the next statement's opening, when a restarted writer continues the chain.

    Parsed with the entry reader's safety settings (no DTD, no entities, no network);
    raises SettlementFileError for a file that is not a readable statement.
    """
    _refuse_declarations(data, file)
    ns = "{" + NS_CAMT053 + "}"
    closing: dict[str, int] = {}
    try:
        for _, bal in etree.iterparse(io.BytesIO(data), events=("end",), tag=ns + "Bal",
                                      resolve_entities=False, no_network=True,
                                      load_dtd=False, huge_tree=False):
            if bal.findtext(f"{ns}Tp/{ns}CdOrPrtry/{ns}Cd") != "CLBD":
                continue
            amt = bal.find(ns + "Amt")
            currency = "" if amt is None else amt.get("Ccy", "")
            where = f"Stmt/Bal[CLBD {currency}]/Amt"
            if amt is None or currency not in _ALPHA_TO_NUMERIC:
                raise SettlementFileError(file, bal.sourceline or 0, where,
                                          "missing amount or unknown currency")
            try:
                amount = parse_amount(amt.text or "", currency, where)
            except CodecError as exc:
                raise SettlementFileError(file, bal.sourceline or 0, where,
                                          str(exc)[:200]) from None
            debit = bal.findtext(ns + "CdtDbtInd") == "DBIT"
            closing[currency] = -amount if debit else amount
    except etree.XMLSyntaxError as exc:
        raise SettlementFileError(file, exc.lineno or 0, "Document",
                                  f"not well-formed: {str(exc)[:200]}") from None
    return closing


def decode_camt053(data: bytes, file: str) -> list[SettlementEntry]:
    """The entries of a camt.053 statement (the streaming reader, as objects)."""
    return read_camt053_columns(data, file).entries()


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
            _amount(amount, file, lineno, "amount"), currency, _status(status, file, lineno),
            _time_us(settled, file, lineno, "settled_at_us"),
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


_INT_RE: Final = re.compile(r"-?[0-9]{1,19}\Z")
_UINT_RE: Final = re.compile(r"[0-9]{1,19}\Z")


def _int(value: str, file: str, line: int, field: str) -> int:
    """A signed 64-bit integer in ASCII digits: no superscripts, no "--5", no "+5"."""
    if not _INT_RE.match(value):
        raise SettlementFileError(file, line, field, f"not an integer: {value[:40]!r}")
    number = int(value)
    if not -(1 << 63) <= number < (1 << 63):
        raise SettlementFileError(file, line, field, f"out of the 64-bit range: {value!r}")
    return number


def _amount(value: str, file: str, line: int, field: str) -> int:
    number = _int(value, file, line, field)
    if not -MAX_ABS_AMOUNT < number < MAX_ABS_AMOUNT:
        raise SettlementFileError(file, line, field,
                                  f"{value!r} is not below 10**18 in magnitude (minor units; "
                                  "ISO 20022 amounts have at most 18 digits)")
    if number < 0:
        # The status field carries the direction; a sign as well would be read as a
        # reversal by one system and a negative settlement by another (module docstring).
        raise SettlementFileError(file, line, field,
                                  f"{value!r} is negative: amounts are magnitudes in minor "
                                  "units; a reversal is status 'reversed', not a sign")
    return number


def _time_us(value: str, file: str, line: int, field: str) -> int:
    number = _int(value, file, line, field)
    if not MIN_TIME_US <= number < MAX_TIME_US:
        raise SettlementFileError(file, line, field,
                                  f"{value!r} is outside {_TIME_RANGE} (µs since the epoch)")
    return number


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
    if not _UINT_RE.match(value) or int(value) not in alpha:
        raise SettlementFileError(file, line, "currency",
                                  f"unknown ISO 4217 numeric {value[:40]!r}")
    return alpha[int(value)]


# --- columnar readers -------------------------------------------------------------------
#
# What reconciliation runs on: a settlement file straight into columns, no Python object
# per record. CSV goes through polars (measured on a 2M-line clearing file here: 0.22-0.36 s
# against pyarrow.csv's 0.37-0.94 s, and polars' frames are smaller), with the whole-file
# policy intact: polars parses strictly typed columns, the cheap checks polars does not
# make are vectorised, and whenever anything is off the strict decoder above re-reads the
# file to name the exact line and field (it is the source of truth; the fast path only
# ever accepts what it accepts). camt.053 streams through lxml's iterparse: entities never
# resolved and any DTD refused, no network, libxml2's depth and text-size limits kept
# (no huge_tree), and each entry freed once read, so memory stays flat in the file size.

#: RecordStatus codes (switch.backoffice.recon.kernels): settled 0, reversed 3.
STATUS_SETTLED: Final = 0
STATUS_REVERSED: Final = 3
_STATUS_OF: Final = {"settled": STATUS_SETTLED, "reversed": STATUS_REVERSED}
_ALPHA_TO_NUMERIC: Final = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
#: Bytes that make the fast CSV path hand over to the strict decoder: quoting, CR, and
#: what polars would tolerate in numbers but the strict rules do not (" 5", "+5").
_CSV_SLOW_BYTES: Final = (b'"', b"\r", b"+", b" ", b"\t")
_CHUNK_ENTRIES: Final = 65_536


@dataclass(frozen=True, slots=True)
class SettlementColumns:
    """A settlement file's records as columns (Arrow strings, numpy numbers)."""

    reference: pa.LargeStringArray
    secondary: pa.LargeStringArray
    amount: NDArray[np.int64]  # minor units
    currency: NDArray[np.int16]  # ISO 4217 numeric
    status: NDArray[np.int8]  # STATUS_SETTLED / STATUS_REVERSED
    time_us: NDArray[np.int64]
    first_line: int  # file line of record 0 (CSV: records are one per line after it)
    lines: NDArray[np.int32] | None = None  # per-record line, when not consecutive

    def __len__(self) -> int:
        return int(self.amount.shape[0])

    def line_of(self, i: int) -> int:
        return int(self.lines[i]) if self.lines is not None else self.first_line + i

    def entries(self) -> list[SettlementEntry]:
        """As objects (tests, small files)."""
        refs = self.reference.to_pylist()
        secs = self.secondary.to_pylist()
        return [
            SettlementEntry(refs[i] or "", secs[i] or "", int(self.amount[i]),
                            NUMERIC_TO_ALPHA[int(self.currency[i])],
                            "settled" if self.status[i] == STATUS_SETTLED else "reversed",
                            int(self.time_us[i]))
            for i in range(len(self))
        ]

    @classmethod
    def from_entries(cls, entries: Sequence[SettlementEntry], first_line: int,
                     lines: Sequence[int] | None = None) -> SettlementColumns:
        return cls(
            strings([e.reference for e in entries]),
            strings([e.secondary for e in entries]),
            np.array([e.amount for e in entries], np.int64),
            np.array([_ALPHA_TO_NUMERIC[e.currency] for e in entries], np.int16),
            np.array([_STATUS_OF[e.status] for e in entries], np.int8),
            np.array([e.settled_at_us for e in entries], np.int64),
            first_line,
            None if lines is None else np.array(lines, np.int32),
        )


def no_strings() -> pa.LargeStringArray:
    """An empty large_string array. Not ``pa.array([])``: pyarrow's first ``pa.array``
    call imports pandas (0.35 s, a quarter of a 1M-record reconciliation's start-up)."""
    return pa.nulls(0, pa.large_string())


def strings(values: list[str]) -> pa.LargeStringArray:
    """A large_string array of Python strings, built by polars (see :func:`no_strings`)."""
    return _as_large_string(pl.Series(values=values, dtype=pl.String))


def decode_text(data: bytes, file: str) -> str:
    """Strict UTF-8, or SettlementFileError naming the line of the first bad byte."""
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "file", f"exceeds {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SettlementFileError(file, line, "encoding",
                                  f"not UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _as_large_string(series: pl.Series) -> pa.LargeStringArray:
    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    return arr


def _fast_csv_ok(data: bytes) -> bool:
    """Plain ASCII CSV the polars read agrees on with the csv module: no quoting, no CR,
    no '+' or blanks (polars would read " 5" and "+5" as 5). Blank lines, which polars
    skips, are caught by the callers' line counts."""
    return data.isascii() and not any(b in data for b in _CSV_SLOW_BYTES)


def _polars_frame(data: bytes, schema: dict[str, Any], skip: int,
                  rows: int | None = None) -> pl.DataFrame | None:
    """The records of ``data`` after ``skip`` header lines (``rows`` of them, if given)."""
    try:
        return pl.read_csv(data, has_header=False, new_columns=list(schema), schema=schema,
                           quote_char=None, empty_string_is_null=False, skip_rows=skip,
                           n_rows=rows)
    except (pl.exceptions.PolarsError, ValueError):
        return None


def _exact_sum(amount: NDArray[np.int64]) -> int:
    if amount.size == 0:
        return 0
    bound = int(np.abs(amount, dtype=np.float64).max()) * amount.size
    if bound < (1 << 62):
        return int(amount.sum())
    return sum(int(a) for a in amount.tolist())  # rare: huge amounts, Python ints


def read_card_clearing_columns(data: bytes, file: str,
                               secondary: bool = True) -> SettlementColumns:
    """A card clearing file as columns; rejected whole (file:line:field) when malformed.

    ``secondary=False`` leaves the secondary key out (empty) when the caller has no use
    for it (reconciliation nets only QR entries by counterparty).
    """
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "file", f"exceeds {MAX_FILE_BYTES} bytes")
    cols = _card_fast(data, secondary)
    if cols is not None:
        return cols
    entries = decode_card_clearing(decode_text(data, file), file, NUMERIC_TO_ALPHA)
    return SettlementColumns.from_entries(entries, 2)


#: The value bounds as polars checks (past them, or a negative amount, the strict decoder
#: names the line).
_BOUNDS_OK: Final = (
    pl.col("amt").is_between(0, MAX_ABS_AMOUNT - 1).all().alias("amt_ok"),
    pl.col("ts").is_between(MIN_TIME_US, MAX_TIME_US - 1).all().alias("ts_ok"),
)

_CARD_SCHEMA: Final = {"t": pl.String, "ref": pl.String, "sec": pl.String, "amt": pl.Int64,
                       "cur": pl.Int64, "st": pl.Enum(["settled", "reversed"]),
                       "ts": pl.Int64}


def _card_fast(data: bytes, secondary: bool = True) -> SettlementColumns | None:
    """The fast path; None when the strict decoder must decide (and name the error)."""
    if not data.startswith(b"H,") or not data.endswith(b"\n"):
        return None
    start = data.index(b"\n") + 1
    tail = data.rfind(b"\n", 0, len(data) - 1) + 1
    if tail < start or not data.startswith(b"T,", tail):
        return None
    header = data[:start].split(b",")
    trailer = data[tail:-1].split(b",")
    if len(header) != 4 or len(trailer) != 3 or not _fast_csv_ok(data):
        return None
    try:
        count, total = int(trailer[1]), int(trailer[2])
    except ValueError:
        return None
    if tail == start:
        empty = np.zeros(0, np.int64)
        if count != 0 or total != 0:
            return None
        return SettlementColumns(no_strings(), no_strings(),
                                 empty, empty.astype(np.int16), empty.astype(np.int8), empty, 2)
    # One line per record between header and trailer: no blank line, nothing extra.
    if data.count(b"\n") != count + 2:
        return None
    df = _polars_frame(data, _CARD_SCHEMA, 1, count)
    if df is None or df.height != count:
        return None
    ok = df.select(
        (pl.col("t") == "D").all(),
        (pl.col("ref").str.len_bytes() > 0).all(),
        # is_in of a null (an empty field) is null, which .all() skips: checked apart.
        pl.col("cur").is_not_null().all().alias("cur_present"),
        pl.col("cur").is_in(list(NUMERIC_TO_ALPHA)).all(),
        pl.col("st").is_not_null().all(),
        pl.col("amt").is_not_null().all(),
        pl.col("ts").is_not_null().all(),
        *_BOUNDS_OK,
    ).row(0)
    if not all(ok):
        return None
    amount = df["amt"].to_numpy().astype(np.int64, copy=False)
    if _exact_sum(amount) != total:
        return None
    return SettlementColumns(
        _as_large_string(df["ref"]),
        _as_large_string(df["sec"]) if secondary else no_strings(), amount,
        df["cur"].to_numpy().astype(np.int16),
        np.where(df["st"].to_physical().to_numpy() == 0, STATUS_SETTLED,
                 STATUS_REVERSED).astype(np.int8),
        df["ts"].to_numpy().astype(np.int64, copy=False), 2)


_CARD_HEADER: Final = re.compile(rb"H,[\x20\x21\x23-\x7e]*\n")
_CARD_TRAILER: Final = re.compile(rb"T,(-?[0-9]{1,19}),(-?[0-9]{1,19})\n")


def card_clearing_frame(data: bytes | mmap.mmap) -> tuple[int, int, int, int] | None:
    """Where a card clearing file's detail lines are: (first byte, end byte, count, amount
    sum from the trailer), for a fast parser of the lines in between; None when the
    header or trailer line is not plain (printable ASCII, no quoting, integers as the
    strict decoder reads them) or the file is empty of details: the strict decoder then
    decides. The fast parser must still find exactly ``count`` lines adding up to the sum.
    """
    if len(data) > MAX_FILE_BYTES or data[-1:] != b"\n":
        return None
    header = _CARD_HEADER.match(data)
    if header is None:
        return None
    start = header.end()
    tail = data.rfind(b"\n", 0, len(data) - 1) + 1
    trailer = _CARD_TRAILER.fullmatch(data, tail) if tail > start else None
    if trailer is None:
        return None
    count, total = int(trailer.group(1)), int(trailer.group(2))
    if not (0 < count < (1 << 63) and -(1 << 63) <= total < (1 << 63)):
        return None
    return start, tail, count, total


QR_HEADER_LINE: Final = (",".join(QR_COLUMNS) + "\n").encode()


_QR_SCHEMA: Final = {"ref": pl.String, "merchant": pl.String, "amt": pl.Int64,
                     "cur": pl.String, "st": pl.Enum(["settled", "reversed"]), "ts": pl.Int64}
_QR_HEADER: Final = QR_HEADER_LINE


def read_qr_csv_columns(data: bytes, file: str) -> SettlementColumns:
    """A QR scheme CSV as columns; rejected whole (file:line:field) when malformed."""
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "file", f"exceeds {MAX_FILE_BYTES} bytes")
    cols = _qr_fast(data)
    if cols is not None:
        return cols
    entries = decode_qr_csv(decode_text(data, file), file, CURRENCIES)
    return SettlementColumns.from_entries(entries, 2)


def _qr_fast(data: bytes) -> SettlementColumns | None:
    if not data.startswith(_QR_HEADER) or not data.endswith(b"\n"):
        return None
    if not _fast_csv_ok(data):
        return None
    if len(data) == len(_QR_HEADER):
        empty = np.zeros(0, np.int64)
        return SettlementColumns(no_strings(), no_strings(),
                                 empty, empty.astype(np.int16), empty.astype(np.int8), empty, 2)
    df = _polars_frame(data, _QR_SCHEMA, 1)
    if df is None or df.height != data.count(b"\n") - 1:  # a blank line: strict decides
        return None
    currencies = pl.Enum(sorted(CURRENCIES))
    ok = df.select(
        (pl.col("ref").str.len_bytes() > 0).all(),
        pl.col("cur").is_in(list(CURRENCIES)).all(),
        pl.col("st").is_not_null().all(),
        pl.col("amt").is_not_null().all(),
        pl.col("ts").is_not_null().all(),
        *_BOUNDS_OK,
    ).row(0)
    if not all(ok):
        return None
    numeric = np.array([_ALPHA_TO_NUMERIC[c] for c in sorted(CURRENCIES)], np.int16)
    return SettlementColumns(
        _as_large_string(df["ref"]), _as_large_string(df["merchant"]),
        df["amt"].to_numpy().astype(np.int64, copy=False),
        numeric[df["cur"].cast(currencies).to_physical().to_numpy()],
        np.where(df["st"].to_physical().to_numpy() == 0, STATUS_SETTLED,
                 STATUS_REVERSED).astype(np.int8),
        df["ts"].to_numpy().astype(np.int64, copy=False), 2)


_XML_DECL: Final = re.compile(rb"\A<\?xml[^>]{0,200}?encoding\s*=\s*[\"']([^\"']{0,40})[\"']")
_XML_ENCODINGS: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def read_camt053_columns(data: bytes, file: str) -> SettlementColumns:
    """A camt.053.001.08 statement as columns, streamed (memory flat in the file size).

    Refused whole, naming the file, line and element: any DTD (so no entity can be
    declared, let alone expanded), an encoding other than UTF-8/ASCII, XML that is not
    well-formed or nests deeper than libxml2's limit, a root other than a camt.053.001.08
    Document, an entry with a missing or malformed field or a value out of bounds, or an
    entry that is not booked (``Sts/Cd`` other than ``BOOK``, or no ``Sts``: see the
    module docstring), a negative ``Amt``, or an ``RvslInd`` that is not an xs:boolean
    or is true on a ``CRDT`` entry.

    ``CdtDbtInd`` ``CRDT`` reads as settled, ``DBIT`` as reversed (``RvslInd`` true or
    absent: a reversal of a credit this account booked; see the module docstring).
    """
    if len(data) > MAX_FILE_BYTES:
        raise SettlementFileError(file, 0, "Document", f"exceeds {MAX_FILE_BYTES} bytes")
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00", b"\x4c\x6f\xa7\x94")):
        raise SettlementFileError(file, 1, "encoding", "not UTF-8 (UTF-16/32 or EBCDIC)")
    declared = _XML_DECL.match(data.removeprefix(b"\xef\xbb\xbf"))
    if declared is not None:
        name = declared.group(1).decode("ascii", "replace").strip().lower()
        if name not in _XML_ENCODINGS:
            raise SettlementFileError(file, 1, "encoding",
                                      f"declared {name[:40]!r}; only UTF-8 is accepted")
    _refuse_declarations(data, file)
    ns = "{" + NS_CAMT053 + "}"
    reader = _Camt053Chunks(file, ns)
    try:
        # Events on <Ntry> only: one Python step per entry, not one per leaf (13-15 us
        # per entry became ~10, most of it parsing). Its fields are read from the
        # finished entry, first match in document order: Amt, CdtDbtInd and Sts/Cd right
        # under Ntry (the statement's Bal has the first two), DtTm only under BookgDt
        # (ValDt has one too), UETR and EndToEndId anywhere in the entry
        # (NtryDtls/TxDtls/Refs).
        events = etree.iterparse(
            io.BytesIO(data), events=("end",), tag=ns + "Ntry",
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
            remove_comments=True, remove_pis=True)
        fields, together = reader.paths, reader.together
        for _, el in events:
            if reader.i == 0:
                root = el.getroottree().getroot()
                if root.tag != ns + "Document":
                    raise SettlementFileError(file, 1, "Document",
                                              f"not a camt.053.001.08 document: {root.tag}")
            found = reader.found
            # One XPath call for the eight strings, newline-separated; a value holding a
            # newline itself (never valid) takes the field-by-field path.
            values = together(el).split("\n")
            if len(values) == 8:
                amount, ccy, indicator, status, booked, uetr, e2e, reversal = values
                found.update((("Amt", (amount, ccy)), ("CdtDbtInd", (indicator, None)),
                              ("Sts/Cd", (status, None)), ("BookgDt/DtTm", (booked, None)),
                              ("NtryDtls/TxDtls/Refs/UETR", (uetr, None)),
                              ("NtryDtls/TxDtls/Refs/EndToEndId", (e2e, None))))
                if reversal:
                    found["RvslInd"] = (reversal[1:], None)
            else:
                for name, path in fields:
                    leaf = path(el)
                    if leaf:
                        found[name] = (leaf[0].text if name != "RvslInd" else
                                       leaf[0].text or "",
                                       leaf[0].get("Ccy") if name == "Amt" else None)
            reader.add(el.sourceline or 0)
            el.clear(keep_tail=True)
            while el.getprevious() is not None:
                del el.getparent()[0]
        if reader.i == 0 and events.root is not None and events.root.tag != ns + "Document":
            raise SettlementFileError(file, 1, "Document",
                                      f"not a camt.053.001.08 document: {events.root.tag}")
    except SettlementFileError:
        raise
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or (exc.position[0] if exc.position else 0)
        raise SettlementFileError(file, line, "Document",
                                  f"not well-formed: {str(exc)[:200]}") from None
    except (ValueError, LookupError) as exc:  # lxml's own refusals (encoding, limits)
        raise SettlementFileError(file, 0, "Document", f"unreadable XML: {exc}") from None
    return reader.columns()


#: xs:boolean's lexical forms (RvslInd).
_XS_BOOLEAN: Final = {"true": True, "1": True, "false": False, "0": False}
#: ExternalEntryStatus1Code's statuses other than BOOK: named as such when refused.
_UNBOOKED: Final = frozenset({"PDNG", "INFO", "FUTR"})


class _Camt053Chunks:
    """Accumulates entries into column chunks of _CHUNK_ENTRIES (bounded Python lists)."""

    def __init__(self, file: str, ns: str) -> None:
        self.file = file
        self.ns = ns
        self.i = 0
        self.found: dict[str, tuple[str | None, str | None]] = {}
        self._lists: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        self._chunks: list[tuple[Any, ...]] = []
        # Field name -> compiled path from the <Ntry>, first match in document order.
        nss = {"c": ns[1:-1]}
        self.paths = [
            (name, etree.XPath(path, namespaces=nss, smart_strings=False))
            for name, path in (
                ("Amt", "c:Amt[1]"), ("CdtDbtInd", "c:CdtDbtInd[1]"),
                ("Sts/Cd", "c:Sts[1]/c:Cd[1]"),
                ("BookgDt/DtTm", "(.//c:BookgDt/c:DtTm)[1]"),
                ("NtryDtls/TxDtls/Refs/UETR", "(.//c:UETR)[1]"),
                ("NtryDtls/TxDtls/Refs/EndToEndId", "(.//c:EndToEndId)[1]"),
                ("RvslInd", "c:RvslInd[1]"))]
        # RvslInd comes prefixed with "=" when present (substring of length count()), so
        # an empty <RvslInd/> is told from an absent one, and refused.
        self.together = etree.XPath(
            "concat(c:Amt[1], '\n', c:Amt[1]/@Ccy, '\n', c:CdtDbtInd[1], '\n',"
            " c:Sts[1]/c:Cd[1], '\n', (.//c:BookgDt/c:DtTm)[1], '\n', (.//c:UETR)[1], '\n',"
            " (.//c:EndToEndId)[1], '\n', substring('=', 1, count(c:RvslInd[1])),"
            " c:RvslInd[1])",
            namespaces=nss, smart_strings=False)

    def add(self, line: int) -> None:
        """One <Ntry> ended: the leaves seen since the previous one, every field checked."""
        file, where = self.file, f"Stmt/Ntry[{self.i}]"
        found, self.found = self.found, {}
        text, currency = found.get("Amt", (None, None))
        if not text or not currency:
            raise SettlementFileError(file, line, f"{where}/Amt", "missing amount or Ccy")
        if currency not in _ALPHA_TO_NUMERIC:
            raise SettlementFileError(file, line, f"{where}/Amt/@Ccy",
                                      f"unknown currency {currency[:40]!r}")
        if text.lstrip().startswith("-"):
            raise SettlementFileError(file, line, f"{where}/Amt",
                                      f"{text[:40]!r} is negative: camt.053 amounts are "
                                      "unsigned; the direction is CdtDbtInd (and RvslInd)")
        try:
            amount = parse_amount(text, currency, f"{where}/Amt")
        except CodecError as exc:
            reason = str(exc).removeprefix(f"{where}/Amt: ")
            raise SettlementFileError(file, line, f"{where}/Amt", reason[:200]) from None
        # parse_amount's 18 digits may all be major units: 18 digits of EUR are up to
        # 10**20 cents, past the bound (and past int64).
        if amount >= MAX_ABS_AMOUNT:
            raise SettlementFileError(file, line, f"{where}/Amt",
                                      f"{text[:40]!r} {currency} is 10**18 minor units or more")
        status = found.get("Sts/Cd", (None, None))[0]
        if status != "BOOK":
            if not status:
                raise SettlementFileError(file, line, f"{where}/Sts",
                                          "missing Sts/Cd: a statement entry must be booked "
                                          "(BOOK) to count as settled")
            reason = (f"{status} entry: not booked, so not settled; a camt.053 statement "
                      "reports booked entries (BOOK) only"
                      if status in _UNBOOKED else
                      f"not an entry status code: {status[:40]!r} (BOOK, PDNG, INFO, FUTR)")
            raise SettlementFileError(file, line, f"{where}/Sts/Cd", reason)
        values = []
        for name in ("CdtDbtInd", "BookgDt/DtTm", "NtryDtls/TxDtls/Refs/UETR",
                     "NtryDtls/TxDtls/Refs/EndToEndId"):
            text = found.get(name, (None, None))[0]
            if not text:
                raise SettlementFileError(file, line, f"{where}/{name}", "missing")
            values.append(text)
        indicator, booked, uetr, e2e = values
        if indicator not in ("CRDT", "DBIT"):
            raise SettlementFileError(file, line, f"{where}/CdtDbtInd",
                                      f"bad value {indicator[:40]!r}")
        reversal = found.get("RvslInd", (None, None))[0]
        if reversal is not None:
            # xs:boolean, whitespace collapsed; see the module docstring for the meaning.
            flag = _XS_BOOLEAN.get(reversal.strip())
            if flag is None:
                raise SettlementFileError(file, line, f"{where}/RvslInd",
                                          f"not a boolean: {reversal[:40]!r} (true, false, "
                                          "1, 0)")
            if flag and indicator == "CRDT":
                raise SettlementFileError(
                    file, line, f"{where}/RvslInd",
                    "a CRDT entry with RvslInd true reverses a debit, and this statement's "
                    "debits are reversals of settled credits, not payments: it cannot be "
                    "read as a settlement or as a reversal")
        try:
            when = datetime.fromisoformat(booked)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            settled = int(when.timestamp() * 1_000_000)
        except (ValueError, OverflowError, OSError):
            raise SettlementFileError(file, line, f"{where}/BookgDt/DtTm",
                                      "not a date-time") from None
        if not MIN_TIME_US <= settled < MAX_TIME_US:
            raise SettlementFileError(file, line, f"{where}/BookgDt/DtTm",
                                      f"{booked[:40]!r} is outside {_TIME_RANGE}")
        refs, secs, amounts, currencies, statuses, times, lines = self._lists
        refs.append(uetr)
        secs.append(e2e)
        amounts.append(amount)
        currencies.append(_ALPHA_TO_NUMERIC[currency])
        statuses.append(STATUS_SETTLED if indicator == "CRDT" else STATUS_REVERSED)
        times.append(settled)
        lines.append(line)
        self.i += 1
        if len(refs) >= _CHUNK_ENTRIES:
            self._flush()

    def _flush(self) -> None:
        refs, secs, amounts, currencies, statuses, times, lines = self._lists
        if refs:
            self._chunks.append((
                strings(refs), strings(secs),
                np.array(amounts, np.int64), np.array(currencies, np.int16),
                np.array(statuses, np.int8), np.array(times, np.int64),
                np.array(lines, np.int32)))
        self._lists = ([], [], [], [], [], [], [])

    def columns(self) -> SettlementColumns:
        self._flush()
        if not self._chunks:
            empty = np.zeros(0, np.int64)
            return SettlementColumns(no_strings(),
                                     no_strings(), empty,
                                     empty.astype(np.int16), empty.astype(np.int8), empty, 0,
                                     empty.astype(np.int32))
        parts = list(zip(*self._chunks, strict=True))
        return SettlementColumns(
            pa.concat_arrays(parts[0]), pa.concat_arrays(parts[1]),
            np.concatenate(parts[2]), np.concatenate(parts[3]), np.concatenate(parts[4]),
            np.concatenate(parts[5]), 0, np.concatenate(parts[6]))
