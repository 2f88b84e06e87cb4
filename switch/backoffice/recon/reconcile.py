"""End-to-end reconciliation: the switch journal against the networks' settlement files.

Columnar from disk to kernel, so 10M records per side fit in seconds and < 2 GB:

1. :func:`load_switch_side` -- the journal's reconciliation columns
   (:mod:`switch.journal.columns`: hashed reference, amount, currency, time per intent;
   status, stand-in and advice facts per outcome), folded per payment by a numba kernel.
   No msgpack record is decoded, except those of the few breaks when they are written.
2. :func:`load_network_side` -- every settlement file of a directory straight into
   columns (:mod:`switch.protocols.settlement_files`: polars for CSV, streaming lxml for
   camt.053), references hashed by a numba kernel from the Arrow buffers. A malformed file
   is rejected whole, naming the file, line and field; a directory without settlement
   files is an error too (:class:`NoSettlementFiles`), never "everything is missing".
3. :func:`match` -- the numba kernels: exact pass on the hashed reference (partitioned by
   key above ``PARTITION_RECORDS`` to bound the hash table's memory), then the tolerance
   pass on the leftovers only. Between the passes, switch records the network should
   never have (declined, failed, pending) and network reversals are claimed, so the
   tolerance pass cannot pair them with a stray entry on the other side and hide a break.
4. Classes the kernels do not know are added on the arrays: ``expected_absent``
   (declined/failed and not at the network), ``matched_netted`` (a network entry netting
   several payments of one counterparty, see :func:`_match_netted`), ``orphan_reversal``,
   ``late_settlement``, ``standin_exposure`` and ``outside_files``.
5. :func:`write_outputs` -- breaks.csv (sorted by severity, then amount), summary.json
   and summary.html (totals per class and currency, the largest breaks, the
   amount-weighted view).

Breaks you can trust. ``standin_exposure`` (explained) needs evidence in the journal: the
payment was approved in stand-in *and* the issuer refused its 0120 advice (an ``advice``
record whose reason is not 00). A stand-in payment whose advice was delivered, or not
delivered yet, and that is missing at the network is a plain ``missing_at_network``.
``outside_files``: an approved payment missing at the network, approved after the last
settlement record in the files: the files end before the journal does, so it cannot be
in them. It is counted and warned about, not listed as a break.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import html
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from switch.backoffice.recon.kernels import (
    FLAG_ADVICE_DELIVERED,
    FLAG_ADVICE_REFUSED,
    FLAG_DUPLICATE_INTENT,
    FLAG_STOOD_IN,
    BreakClass,
    ReconResult,
    RecordArrays,
    RecordStatus,
    exact_match,
    fold_outcomes,
    group_sums,
    hash_utf8_column,
    tolerance_match,
)
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.journal import columns as jcols
from switch.model import Payment
from switch.protocols import emvqr
from switch.protocols.errors import CodecError
from switch.protocols.settlement_files import (
    SettlementColumns,
    SettlementFileError,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
)

#: Listed as breaks, with their action, but not "unexplained": the exit code ignores them.
EXPLAINED: Final = frozenset({"standin_exposure", "late_settlement"})
NOT_BREAKS: Final = frozenset(
    {"matched", "matched_tolerance", "matched_netted", "expected_absent", "outside_files"}
)
SUGGESTED_ACTION: Final = {
    "missing_at_network": "Ask the network for the record; if it never settled, reverse "
    "or refund the payment and correct the ledger.",
    "missing_in_switch": "Find the payment at the network; book it if legitimate, else "
    "dispute it with the network.",
    "amount_mismatch": "Compare amounts and fees with the network; post an adjustment for "
    "the difference.",
    "currency_mismatch": "Check the currency conversion at the network; correct the entry.",
    "status_mismatch": "The network settled a payment the switch did not approve: raise "
    "a chargeback or book it after investigation.",
    "duplicate": "The same reference appears twice: claim the duplicate back.",
    "orphan_reversal": "A reversal with no approved payment: ask the network which "
    "payment it reverses.",
    "late_settlement": "Settled in a later cycle than expected: accrue it, no money lost.",
    "standin_exposure": "Approved in stand-in; the issuer refused the advice (recorded in "
    "the journal): recover from the acquirer or write off, within stand-in limits.",
}
#: breaks.csv order: unexplained money breaks first, the explained ones last.
SEVERITY: Final = (
    "amount_mismatch", "currency_mismatch", "missing_in_switch", "missing_at_network",
    "status_mismatch", "duplicate", "orphan_reversal", "standin_exposure", "late_settlement",
)
_STATUS: Final = {
    "approved": RecordStatus.SETTLED,
    "declined": RecordStatus.DECLINED,
    "failed": RecordStatus.FAILED,
    "reversed": RecordStatus.REVERSED,
    "unknown": RecordStatus.PENDING,
    "sent": RecordStatus.PENDING,
}
_SETTLED: Final = int(RecordStatus.SETTLED)
#: Minor -> major units per ISO numeric currency code (ordering only; unknown: 2).
_SCALE: Final = np.full(1024, 0.01)
for _num, _exp in CURRENCIES.values():
    _SCALE[_num] = 10.0 ** -_exp
_STATUS_NAME: Final = {0: "approved", 1: "declined", 2: "failed", 3: "reversed", 4: "unknown"}
_SUFFIX_CHANNEL: Final = {".clr": "card", ".xml": "swift", ".csv": "qr"}
_READERS: Final[dict[str, Callable[[bytes, str], SettlementColumns]]] = {
    ".clr": read_card_clearing_columns,
    ".xml": read_camt053_columns,
    ".csv": read_qr_csv_columns,
}
#: Above this many network records the exact pass runs in key partitions of about this
#: size: its hash table is 43-85 bytes per network record, which at 10M would be 0.5 GB.
PARTITION_RECORDS: Final = 2_500_000

# Kind codes on the arrays: the kernels' BreakClass values, then the classes added here.
_EXPECTED_ABSENT, _NETTED, _ORPHAN_REVERSAL, _LATE, _STANDIN, _OUTSIDE = 8, 9, 10, 11, 12, 13
KIND_NAMES: Final = (
    *(c.name.lower() for c in sorted(BreakClass)),
    "expected_absent", "matched_netted", "orphan_reversal", "late_settlement",
    "standin_exposure", "outside_files",
)
_NOT_BREAK_CODES: Final = np.array([name in NOT_BREAKS for name in KIND_NAMES])
_RANK: Final = np.array([SEVERITY.index(n) if n in SEVERITY else len(SEVERITY)
                         for n in KIND_NAMES], np.int64)


class NoSettlementFiles(SettlementFileError):
    """The files directory holds no settlement file (.clr, .xml, .csv)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, 0, "files",
                         "no settlement files (.clr, .xml, .csv) found; nothing to reconcile")

    def __str__(self) -> str:
        return f"no settlement files (.clr, .xml, .csv) in {self.file}: nothing to reconcile"


@dataclass(frozen=True, slots=True)
class Record:
    channel: str
    reference: str
    amount: int
    currency: str
    status: str
    time_us: int
    source: str  # payment id (switch) or file name (network)
    #: Who the money goes to, as the network names it (QR merchant id, card/SWIFT payee):
    #: what a netted network entry aggregates by.
    counterparty: str = ""
    #: The switch approved it in stand-in, on the issuer's behalf.
    stood_in: bool = False
    #: Stand-in advice: "" none recorded, "delivered", or "refused" (by the issuer).
    advice: str = ""
    #: File line (network side), 0 when unknown.
    line: int = 0


@dataclass(frozen=True, slots=True)
class Break:
    kind: str
    switch: Record | None
    network: Record | None
    action: str

    def at_stake(self) -> int:
        """Minor units at stake: the difference of an amount break, else the amount."""
        s, n = self.switch, self.network
        if self.kind == "amount_mismatch" and s is not None and n is not None:
            return abs(s.amount - n.amount)
        side = s or n
        return abs(side.amount) if side is not None else 0


@dataclass
class ReconReport:
    switch_records: int
    network_records: int
    counts: dict[str, int]
    amounts: dict[str, dict[str, int]]  # class -> currency -> minor units
    breaks: list[Break]
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def unexplained(self) -> int:
        """Breaks nobody can account for yet; stand-in exposure (issuer refusal on
        record) and late settlement are listed but explained."""
        return sum(1 for b in self.breaks if b.kind not in EXPLAINED)


# ------------------------------------------------------------------------- both sides


@dataclass
class Side:
    """One side as columns. ``channel`` 1 card, 2 swift, 3 qr (journal.columns codes)."""

    key: NDArray[np.int64]
    amount: NDArray[np.int64]
    currency: NDArray[np.int16]
    status: NDArray[np.int8]
    time_us: NDArray[np.int64]
    channel: NDArray[np.int8]
    #: Switch: FLAG_* bits. Network: zeros.
    flags: NDArray[np.int8]
    #: Builds the Records of entries ``idx`` (only ever called for breaks and netting).
    records: Callable[[NDArray[np.int64]], list[Record]]
    #: Counterparties of entries (netting only).
    counterparties: Callable[[NDArray[np.int64]], list[str]]

    def __len__(self) -> int:
        return int(self.key.shape[0])


def _empty_side() -> Side:
    z = np.zeros(0, np.int64)
    return Side(z, z, z.astype(np.int16), z.astype(np.int8), z, z.astype(np.int8),
                z.astype(np.int8), lambda idx: [], lambda idx: [])


def _side_from_records(records: Sequence[Record]) -> Side:
    """Lists of Records (tests, small tools) -> columns; the same hash as the journal."""
    channel = np.array([jcols.CHANNEL_CODE.get(r.channel, 0) for r in records], np.int8)
    flags = np.array([
        (FLAG_STOOD_IN if r.stood_in else 0)
        | (FLAG_ADVICE_DELIVERED if r.advice == "delivered" else 0)
        | (FLAG_ADVICE_REFUSED if r.advice == "refused" else 0)
        for r in records], np.int8)
    return Side(
        np.array([jcols.reference_key(int(c), r.reference)
                  for c, r in zip(channel.tolist(), records, strict=True)], np.int64),
        np.array([r.amount for r in records], np.int64),
        np.array([CURRENCIES[r.currency][0] if r.currency in CURRENCIES else 0
                  for r in records], np.int16),
        np.array([int(_STATUS[r.status]) for r in records], np.int8),
        np.array([r.time_us for r in records], np.int64),
        channel, flags,
        lambda idx: [records[i] for i in idx.tolist()],
        lambda idx: [records[i].counterparty for i in idx.tolist()],
    )


# ------------------------------------------------------------------------ switch side


def load_switch_side(journal: Path) -> Side:
    """Every payment with an intent in the journal, from its reconciliation columns."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, check_same_thread=False)
    cols = jcols.read_columns(db)
    it, out = cols.intents, cols.outcomes
    del cols
    status, time_us, flags, _ = fold_outcomes(
        it.pop("pid"), it["time_us"], out["pid"], out["time_us"], out["status"], out["kind"],
        out["flags"], int(RecordStatus.PENDING))
    del out  # the outcomes are folded: drop them before anything else is allocated
    keep = (flags & FLAG_DUPLICATE_INTENT) == 0
    if not keep.all():
        it = {name: arr[keep] for name, arr in it.items()}
        status, time_us, flags = status[keep], time_us[keep], flags[keep]
    seq = it["seq"]
    memo: dict[int, Record] = {}

    def records(idx: NDArray[np.int64]) -> list[Record]:
        todo = np.array([i for i in idx.tolist() if i not in memo], np.int64)
        if len(todo):
            memo.update(zip(todo.tolist(), _switch_records(db, side, seq, todo), strict=True))
        return [memo[i] for i in idx.tolist()]

    side = Side(it["ref"], it["amount"], it["currency"], status, time_us, it["channel"], flags,
        records, lambda idx: _switch_counterparties(db, seq, idx),
    )
    return side


def _intents_by_seq(db: sqlite3.Connection, wanted: list[int], full: bool) -> dict[int, Any]:
    decoder = _payment_decoder if full else _light_decoder
    out: dict[int, Any] = {}
    for start in range(0, len(wanted), 900):
        chunk = wanted[start:start + 900]
        marks = ",".join("?" * len(chunk))
        for s, record in db.execute(
                f"SELECT seq, record FROM journal WHERE seq IN ({marks})", chunk):
            out[int(s)] = decoder.decode(record)
    return out


def _switch_records(db: sqlite3.Connection, side: Side, seq: NDArray[np.int64],
                    idx: NDArray[np.int64]) -> list[Record]:
    """Records of switch entries ``idx``: strings from their intents (a light decode of
    the fields a break shows), the rest from the columns."""
    wanted = seq[idx].tolist()
    payments = _intents_by_seq(db, wanted, full=False)
    status = side.status[idx].tolist()
    times = side.time_us[idx].tolist()
    flags = side.flags[idx].tolist()
    names = _STATUS_NAME
    out = []
    for s, st, t, f in zip(wanted, status, times, flags, strict=True):
        p = payments[s]
        advice = ("refused" if f & FLAG_ADVICE_REFUSED else
                  "delivered" if f & FLAG_ADVICE_DELIVERED else "")
        ref = (p.card.rrn if p.card is not None else p.swift.uetr if p.swift is not None
               else (p.qr.qr_reference if p.qr is not None else "") or p.payment_id)
        out.append(Record(p.channel, ref, p.amount, p.currency, names.get(st, "unknown"), t,
                          p.payment_id, "", bool(f & FLAG_STOOD_IN), advice))
    return out


def _switch_counterparties(db: sqlite3.Connection, seq: NDArray[np.int64],
                           idx: NDArray[np.int64]) -> list[str]:
    wanted = seq[idx].tolist()
    payments = _intents_by_seq(db, wanted, full=True)
    return [_counterparty(payments[s]) for s in wanted]


_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)
_light_decoder: Final = msgspec.msgpack.Decoder(jcols._Intent)


def _counterparty(payment: Payment) -> str:
    if payment.qr is not None:
        return _qr_merchant(payment.qr.payload)
    return payment.payee.account


@functools.lru_cache(maxsize=65_536)
def _qr_merchant(payload: str) -> str:
    """The merchant id of a QR payload (static QRs repeat per merchant: cached)."""
    try:
        qr = emvqr.parse(payload)
    except CodecError:
        return ""
    for account in qr.merchant_accounts:
        for sub in account.template:
            if sub.tag == "01" and sub.value:
                return sub.value
    return ""


def _reference(payment: Payment) -> str:
    if payment.card is not None:
        return payment.card.rrn
    if payment.swift is not None:
        return payment.swift.uetr
    assert payment.qr is not None
    return payment.qr.qr_reference or payment.payment_id


# ----------------------------------------------------------------------- network side


@dataclass
class _File:
    path: Path
    channel: str
    cols: SettlementColumns
    start: int  # index of its first record on the network side


def settlement_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in _READERS and p.is_file())


def load_network_side(directory: Path,
                      on_file: Callable[[Path, int], None] | None = None) -> Side:
    """Every record of every settlement file in ``directory``, as columns.

    ``on_file(path, records)`` is called after each file (progress). Raises
    :class:`NoSettlementFiles` when there is none, SettlementFileError on a bad file.
    """
    paths = settlement_files(directory)
    if not paths:
        raise NoSettlementFiles(str(directory))
    files: list[_File] = []
    keys, amounts, currencies, statuses, times, channels = [], [], [], [], [], []
    n = 0
    for path in paths:
        if path.suffix == ".clr":
            cols = read_card_clearing_columns(path.read_bytes(), str(path), secondary=False)
        else:
            cols = _READERS[path.suffix](path.read_bytes(), str(path))
        channel = _SUFFIX_CHANNEL[path.suffix]
        code = jcols.CHANNEL_CODE[channel]
        ref = cols.reference
        offsets = np.frombuffer(ref.buffers()[1], np.int64)[ref.offset:ref.offset + len(ref) + 1]
        data = ref.buffers()[2]
        keys.append(hash_utf8_column(
            np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8),
            offsets, code))
        amounts.append(cols.amount)
        currencies.append(cols.currency)
        statuses.append(cols.status)
        times.append(cols.time_us)
        channels.append(np.full(len(cols), code, np.int8))
        if channel != "qr":  # only QR entries net by counterparty: keep the rest lean
            cols = SettlementColumns(cols.reference, pa.array([], pa.large_string()),
                                     cols.amount[:0], cols.currency[:0], cols.status[:0],
                                     cols.time_us[:0], cols.first_line, cols.lines)
        files.append(_File(path, channel, cols, n))
        n += len(keys[-1])
        if on_file is not None:
            on_file(path, len(keys[-1]))
    starts = np.array([f.start for f in files], np.int64)

    def joined(parts: list[NDArray[Any]]) -> NDArray[Any]:
        """One column, its per-file parts freed as it is built (peak: one column twice)."""
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        parts.clear()
        return out

    side = Side(
        joined(keys), joined(amounts), joined(currencies), joined(statuses), joined(times),
        joined(channels), np.zeros(n, np.int8),
        lambda idx: _network_records(side, files, starts, idx),
        lambda idx: [r.counterparty for r in _network_records(side, files, starts, idx)],
    )
    return side


def _network_records(side: Side, files: list[_File], starts: NDArray[np.int64],
                     idx: NDArray[np.int64]) -> list[Record]:
    """Records of network entries ``idx``: strings taken per file, in one Arrow take."""
    if not len(idx):
        return []
    which = np.searchsorted(starts, idx, side="right") - 1
    out: list[Record | None] = [None] * len(idx)
    settled = _SETTLED
    for k in np.unique(which).tolist():
        f = files[k]
        pos = np.flatnonzero(which == k)
        local = idx[pos] - f.start
        refs = f.cols.reference.take(pa.array(local)).to_pylist()
        secs = (f.cols.secondary.take(pa.array(local)).to_pylist() if len(f.cols.secondary)
                else [""] * len(local))
        glob = idx[pos]
        amounts = side.amount[glob].tolist()
        currencies = side.currency[glob].tolist()
        statuses = side.status[glob].tolist()
        times = side.time_us[glob].tolist()
        lines = (f.cols.lines[local].tolist() if f.cols.lines is not None
                 else (local + f.cols.first_line).tolist())
        name, channel, alpha = f.path.name, f.channel, NUMERIC_TO_ALPHA
        for p, ref, sec, a, c, st, t, line in zip(pos.tolist(), refs, secs, amounts,
                                                  currencies, statuses, times, lines,
                                                  strict=True):
            out[p] = Record(channel, ref, a, alpha.get(c, "???"),
                            "approved" if st == settled else "reversed", t, name, sec or "",
                            line=line)
    return [r for r in out if r is not None]


# ----------------------------------------------------------------------------- match


def _arrays(side: Side, idx: NDArray[np.int64] | None = None) -> RecordArrays:
    def take(a: NDArray[Any]) -> NDArray[np.int64]:
        return (a if idx is None else a[idx]).astype(np.int64)

    return RecordArrays(take(side.key), take(side.amount), take(side.currency),
                        take(side.time_us), take(side.status))


def _exact(sw: Side, net: Side) -> ReconResult:
    """Pass 1, in key partitions when the network side is large (bounded table memory)."""
    parts = max(1, -(-len(net) // PARTITION_RECORDS))
    if parts == 1:
        return exact_match(_arrays(sw), _arrays(net))
    result = ReconResult(np.full(len(sw), -1, np.int64), np.full(len(sw), -1, np.int8),
                         np.full(len(net), -1, np.int64), np.full(len(net), -1, np.int8))
    sw_part = (sw.key.view(np.uint64) % np.uint64(parts)).astype(np.int8)
    net_part = (net.key.view(np.uint64) % np.uint64(parts)).astype(np.int8)
    for p in range(parts):
        si = np.flatnonzero(sw_part == p)
        ni = np.flatnonzero(net_part == p)
        r = exact_match(_arrays(sw, si), _arrays(net, ni))
        result.switch_class[si] = r.switch_class
        result.network_class[ni] = r.network_class
        m = r.switch_match >= 0
        result.switch_match[si[m]] = ni[r.switch_match[m]]
        m = r.network_match >= 0
        result.network_match[ni[m]] = si[r.network_match[m]]
    return result


def _tolerance(sw: Side, net: Side, result: ReconResult, tol_amount: int,
               tol_time_us: int) -> None:
    """Pass 2 on the leftovers only (compact copies), results scattered back."""
    ls = np.flatnonzero(result.switch_class < 0)
    ln = np.flatnonzero(result.network_class < 0)
    sub = ReconResult(np.full(len(ls), -1, np.int64), np.full(len(ls), -1, np.int8),
                      np.full(len(ln), -1, np.int64), np.full(len(ln), -1, np.int8))
    tolerance_match(_arrays(sw, ls), _arrays(net, ln), sub, tol_amount=tol_amount,
                    tol_time_us=tol_time_us)
    result.switch_class[ls] = sub.switch_class
    result.network_class[ln] = sub.network_class
    m = sub.switch_match >= 0
    result.switch_match[ls[m]] = ln[sub.switch_match[m]]
    m = sub.network_match >= 0
    result.network_match[ln[m]] = ls[sub.network_match[m]]


def match(
    switch: Side | Sequence[Record],
    network: Side | Sequence[Record],
    *,
    tol_amount: int = 0,
    tol_time_us: int = 5_000_000,
    late_after_s: float = 86400.0,
) -> ReconReport:
    sw = switch if isinstance(switch, Side) else _side_from_records(switch)
    net = network if isinstance(network, Side) else _side_from_records(network)
    if len(sw) == 0 and len(net) == 0:
        return ReconReport(0, 0, {}, {}, [])
    settled = int(RecordStatus.SETTLED)
    result = _exact(sw, net) if len(sw) and len(net) else ReconResult(
        np.full(len(sw), -1, np.int64), np.full(len(sw), -1, np.int8),
        np.full(len(net), -1, np.int64), np.full(len(net), -1, np.int8))
    # Claim switch leftovers the network should not have (declined/failed/pending), and
    # network reversals: neither may be offered to the tolerance pass as a partner.
    expected_absent = (result.switch_class < 0) & (sw.status != settled)
    result.switch_class[expected_absent] = BreakClass.MISSING_AT_NETWORK
    stray_reversals = (result.network_class < 0) & (net.status == int(RecordStatus.REVERSED))
    result.network_class[stray_reversals] = BreakClass.MISSING_IN_SWITCH
    _tolerance(sw, net, result, tol_amount, tol_time_us)

    sw_kind = result.switch_class.copy()
    net_kind = result.network_class.copy()
    sw_kind[expected_absent] = _EXPECTED_ABSENT
    _match_netted(sw, net, sw_kind, net_kind, result, tol_amount)

    # Late settlement: matched, but settled more than late_after_s after approval.
    paired = np.flatnonzero(((sw_kind == BreakClass.MATCHED)
                             | (sw_kind == BreakClass.MATCHED_TOLERANCE))
                            & (result.switch_match >= 0))
    partner = result.switch_match[paired]
    late = (net.time_us[partner] - sw.time_us[paired]) > late_after_s * 1e6
    sw_kind[paired[late]] = _LATE
    net_kind[partner[late]] = _LATE
    # A network reversal nobody approved is an orphan.
    orphan = (net.status == int(RecordStatus.REVERSED)) & (
        (net_kind == BreakClass.MISSING_IN_SWITCH) | (net_kind == BreakClass.STATUS_MISMATCH))
    net_kind[orphan] = _ORPHAN_REVERSAL
    # Stand-in exposure only with the issuer's refusal on record.
    missing = sw_kind == BreakClass.MISSING_AT_NETWORK
    evidence = ((sw.flags & FLAG_STOOD_IN) != 0) & ((sw.flags & FLAG_ADVICE_REFUSED) != 0)
    sw_kind[missing & evidence] = _STANDIN
    warnings = []
    # Files that end before the journal: approved after the last settlement record.
    if len(net):
        net_last = int(net.time_us.max())
        outside = (sw_kind == BreakClass.MISSING_AT_NETWORK) & (sw.time_us > net_last)
        n_out = int(outside.sum())
        if n_out:
            sw_kind[outside] = _OUTSIDE
            warnings.append(
                f"the settlement files end at {_iso(net_last)} but the journal goes on to "
                f"{_iso(int(sw.time_us.max()))}: {n_out} payments approved after the last "
                "settlement record are counted as outside_files, not as breaks; "
                "reconcile again with the later files")
        net_first = int(net.time_us.min())
        early = missing & (sw.time_us < net_first)
        if int(early.sum()) > max(10, 0.5 * int((sw.time_us < net_first).sum())):
            warnings.append(
                f"the settlement files start at {_iso(net_first)}: {int(early.sum())} "
                "payments approved before that are missing at the network; if their "
                "cycles' files are elsewhere, add them")
    return _report(sw, net, sw_kind, net_kind, result, warnings)


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat(timespec="seconds")


def _report(sw: Side, net: Side, sw_kind: NDArray[np.int8], net_kind: NDArray[np.int8],
            result: ReconResult, warnings: list[str]) -> ReconReport:
    n_kinds = len(KIND_NAMES)
    counts: dict[str, int] = {}
    amounts: dict[str, dict[str, int]] = defaultdict(dict)
    unpaired = result.network_match < 0

    def tally(kind: NDArray[np.int8], side: Side, mask: NDArray[np.bool_] | None,
              prefix: str) -> None:
        k = kind if mask is None else kind[mask]
        cur = side.currency if mask is None else side.currency[mask]
        amt = side.amount if mask is None else side.amount[mask]
        codes = k.astype(np.int64) * 1024 + cur.astype(np.int64)
        n, total = group_sums(codes, amt, n_kinds * 1024)
        for code in np.flatnonzero(n).tolist():
            name = KIND_NAMES[code // 1024]
            counts[prefix + name] = counts.get(prefix + name, 0) + int(n[code])
            alpha = NUMERIC_TO_ALPHA.get(code % 1024, str(code % 1024))
            amounts[name][alpha] = amounts[name].get(alpha, 0) + int(total[code])

    tally(sw_kind, sw, None, "")
    tally(net_kind, net, unpaired, "network:")
    sw_breaks = np.flatnonzero(~_NOT_BREAK_CODES[sw_kind])
    net_breaks = np.flatnonzero(unpaired & ~_NOT_BREAK_CODES[net_kind])
    # Order first, on arrays (severity, then money at stake in major units, largest
    # first), so the Python objects are built once, already sorted.
    partners = result.switch_match[sw_breaks]
    sw_k = sw_kind[sw_breaks].astype(np.int64)
    stake = np.abs(sw.amount[sw_breaks]).astype(np.float64)
    is_amount = (sw_k == BreakClass.AMOUNT_MISMATCH) & (partners >= 0)
    stake[is_amount] = np.abs(sw.amount[sw_breaks[is_amount]]
                              - net.amount[partners[is_amount]]).astype(np.float64)
    stake *= _SCALE[sw.currency[sw_breaks].astype(np.int64) % 1024]
    net_k = net_kind[net_breaks].astype(np.int64)
    net_stake = (np.abs(net.amount[net_breaks]).astype(np.float64)
                 * _SCALE[net.currency[net_breaks].astype(np.int64) % 1024])
    rank = np.concatenate([_RANK[sw_k], _RANK[net_k]])
    order = np.lexsort((-np.concatenate([stake, net_stake]), rank))
    n_sw = len(sw_breaks)
    sw_order = order[order < n_sw]
    sw_records = sw.records(sw_breaks[sw_order])
    sw_partners = partners[sw_order]
    partner_records = net.records(sw_partners[sw_partners >= 0])
    built: dict[int, Break] = {}
    p = 0
    for k, (pos, rec, other) in enumerate(zip(sw_order.tolist(), sw_records,
                                              sw_partners.tolist(), strict=True)):
        kind = KIND_NAMES[sw_k[pos]]
        partner = None
        if other >= 0:
            partner = partner_records[p]
            p += 1
        built[pos] = Break(kind, rec, partner, SUGGESTED_ACTION[kind])
        del k
    net_order = order[order >= n_sw] - n_sw
    for pos, rec in zip(net_order.tolist(), net.records(net_breaks[net_order]), strict=True):
        kind = KIND_NAMES[net_k[pos]]
        built[n_sw + pos] = Break(kind, None, rec, SUGGESTED_ACTION[kind])
    breaks = [built[i] for i in order.tolist()]
    return ReconReport(len(sw), len(net), counts, dict(amounts), breaks, warnings)


def _major(minor: int, b: Break) -> float:
    side = b.switch or b.network
    exp = CURRENCIES.get(side.currency, (0, 2))[1] if side is not None else 2
    return float(minor) / float(10**int(exp))


def _match_netted(sw: Side, net: Side, sw_kind: NDArray[np.int8], net_kind: NDArray[np.int8],
                  result: ReconResult, tol_amount: int) -> int:
    """Many-to-one: a network entry that nets several payments (one per merchant and
    cycle, say) against the approved switch payments it covers.

    Within one (channel, currency, counterparty), leftover network entries are taken in
    time order, and each claims the leftover approved switch payments made before it and
    after the previous entry; the sums must agree (within ``tol_amount``). Deterministic,
    and it never touches records the exact and tolerance passes already paired. Only
    leftovers are looked at, so their counterparties are read (from the journal and the
    files) for those few records only.
    """
    settled = int(RecordStatus.SETTLED)
    cand_net = np.flatnonzero((net_kind == BreakClass.MISSING_IN_SWITCH)
                              & (net.status == settled))
    if not len(cand_net):
        return 0
    net_cp = net.counterparties(cand_net)
    entries: dict[tuple[int, int, str], list[int]] = {}
    for n, cp in zip(cand_net.tolist(), net_cp, strict=True):
        if cp:
            entries.setdefault((int(net.channel[n]), int(net.currency[n]), cp), []).append(n)
    if not entries:
        return 0
    channels = {c for c, _, _ in entries}
    cand_sw = np.flatnonzero((sw_kind == BreakClass.MISSING_AT_NETWORK) & (sw.status == settled)
                             & np.isin(sw.channel, list(channels)))
    payments: dict[tuple[int, int, str], list[int]] = {}
    for i, cp in zip(cand_sw.tolist(), sw.counterparties(cand_sw), strict=True):
        payments.setdefault((int(sw.channel[i]), int(sw.currency[i]), cp), []).append(i)
    netted = 0
    for group, ns in entries.items():
        pool = sorted(payments.get(group, []), key=lambda i: int(sw.time_us[i]))
        start = 0
        for n in sorted(ns, key=lambda n: int(net.time_us[n])):
            cut = int(net.time_us[n])
            covered = []
            while start < len(pool) and int(sw.time_us[pool[start]]) <= cut:
                covered.append(pool[start])
                start += 1
            if len(covered) < 2:
                continue
            if abs(sum(int(sw.amount[i]) for i in covered) - int(net.amount[n])) <= tol_amount:
                net_kind[n] = _NETTED
                for i in covered:
                    sw_kind[i] = _NETTED
                    result.switch_match[i] = n
                netted += 1
    return netted


# ---------------------------------------------------------------------------- outputs


def _fmt_major(minor: int, currency: str) -> str:
    exp = CURRENCIES.get(currency, (0, 2))[1]
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**exp)
    return f"{sign}{whole:,}" + (f".{frac:0{exp}d}" if exp else "")


_CSV_HEADER: Final = [
    "class", "explained", "channel", "reference", "amount_at_stake", "currency",
    "switch_payment_id", "switch_amount", "switch_currency", "switch_status",
    "network_file", "network_line", "network_amount", "network_currency", "network_status",
    "suggested_action",
]


def write_outputs(
    report: ReconReport, out_dir: Path, title: str = "payswitch reconciliation"
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "breaks.csv",
        "json": out_dir / "summary.json",
        "html": out_dir / "summary.html",
    }
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_CSV_HEADER)
        for b in report.breaks:  # already sorted: severity, then amount at stake
            s, n = b.switch, b.network
            any_side = s or n
            assert any_side is not None
            writer.writerow([
                b.kind, "yes" if b.kind in EXPLAINED else "no", any_side.channel,
                any_side.reference, _fmt_major(b.at_stake(), any_side.currency).replace(",", ""),
                any_side.currency,
                s.source if s else "", s.amount if s else "", s.currency if s else "",
                s.status if s else "",
                n.source if n else "", n.line if n else "", n.amount if n else "",
                n.currency if n else "", n.status if n else "", b.action,
            ])
    by_class = Counter(b.kind for b in report.breaks)
    summary = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),  # wall timestamp
        "switch_records": report.switch_records,
        "network_records": report.network_records,
        "classes": report.counts,
        "amounts_minor": report.amounts,
        "breaks": dict(by_class),
        "unexplained_breaks": report.unexplained,
        "clean": report.unexplained == 0,
        "warnings": report.warnings,
        "phases": report.phases,
        "first_breaks": [asdict(b) for b in report.breaks[:50]],
    }
    paths["json"].write_text(json.dumps(summary, indent=2))
    paths["html"].write_text(_html(report, title))
    return paths


def _html(report: ReconReport, title: str) -> str:
    esc = html.escape
    verdict = ("reconciliation clean" if report.unexplained == 0
               else f"{report.unexplained} unexplained breaks")
    # Totals per class and currency (records and amounts, switch and network sides).
    rows = []
    for kind in KIND_NAMES:
        count = report.counts.get(kind, 0) + report.counts.get(f"network:{kind}", 0)
        if not count:
            continue
        per_ccy = report.amounts.get(kind, {})
        amounts = "<br>".join(f"{esc(_fmt_major(a, c))} {esc(c)}"
                              for c, a in sorted(per_ccy.items()))
        role = ("explained break" if kind in EXPLAINED else
                "not a break" if kind in NOT_BREAKS else "break")
        rows.append(f"<tr class='{role.replace(' ', '-')}'><td>{esc(kind)}</td><td>{role}</td>"
                    f"<td class=n>{count:,}</td><td class=n>{amounts}</td></tr>")
    # Amount-weighted view: breaks per class and currency by money at stake, with a bar.
    weights: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for b in report.breaks:
        side = b.switch or b.network
        assert side is not None
        w = weights[(b.kind, side.currency)]
        w[0] += 1
        w[1] += b.at_stake()
    by_ccy: dict[str, int] = defaultdict(int)
    for (_, ccy), (_, amt) in weights.items():
        by_ccy[ccy] += amt
    weighted = []
    for (kind, ccy), (n, amt) in sorted(weights.items(), key=lambda kv: (kv[0][1], -kv[1][1])):
        share = amt / by_ccy[ccy] if by_ccy[ccy] else 0.0
        weighted.append(
            f"<tr><td>{esc(ccy)}</td><td>{esc(kind)}</td><td class=n>{n:,}</td>"
            f"<td class=n>{esc(_fmt_major(amt, ccy))}</td><td><div class=bar "
            f"style='width:{share * 300:.0f}px'></div> {share:.1%}</td></tr>")
    largest = []
    for b in sorted(report.breaks, key=lambda b: -_major(b.at_stake(), b))[:25]:
        side = b.switch or b.network
        assert side is not None
        largest.append(
            f"<tr><td>{esc(b.kind)}</td><td>{esc(side.channel)}</td><td>{esc(side.reference)}"
            f"</td><td class=n>{esc(_fmt_major(b.at_stake(), side.currency))} "
            f"{esc(side.currency)}</td><td>{esc(b.switch.source if b.switch else '')}</td>"
            f"<td>{esc(b.network.source if b.network else '')}</td></tr>")
    warn = "".join(f"<p class=warn>warning: {esc(w)}</p>" for w in report.warnings)
    return (
        f"<!doctype html><meta charset=utf-8><title>{esc(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;"
        "border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}"
        ".bar{display:inline-block;height:10px;background:#c0392b}"
        ".warn{color:#b35900;font-weight:bold}tr.break td:first-child{color:#c0392b}</style>"
        f"<h1>{esc(title)}</h1><p><b>{esc(verdict)}</b> — {report.switch_records:,} switch "
        f"records, {report.network_records:,} network records</p>{warn}"
        "<h2>Totals per class and currency</h2><table><tr><th>class</th><th>role</th>"
        f"<th>records</th><th>amount</th></tr>{''.join(rows)}</table>"
        "<h2>Breaks by money at stake (per currency)</h2><table><tr><th>currency</th>"
        "<th>class</th><th>breaks</th><th>at stake</th><th>share of the currency's breaks"
        f"</th></tr>{''.join(weighted)}</table>"
        "<h2>Largest breaks</h2><table><tr><th>class</th><th>channel</th><th>reference</th>"
        "<th>at stake</th><th>switch payment</th><th>network file</th></tr>"
        f"{''.join(largest)}</table>"
        "<p>Every break is in breaks.csv with both sides and a suggested action, sorted by "
        "severity, then money at stake.</p>"
    )


# ------------------------------------------------------------------ the whole command


class Progress(Protocol):
    """What :func:`run` reports while it works (the CLI draws it; tests ignore it)."""

    def start(self, phase: str, total: float | None) -> None:
        """A phase begins; ``total`` in its own units (bytes, records) or None."""

    def advance(self, amount: float) -> None:
        """Progress within the current phase."""

    def done(self) -> None:
        """The current phase ended."""


class _NoProgress:
    def start(self, phase: str, total: float | None) -> None:
        pass

    def advance(self, amount: float) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass
class _Phases:
    progress: Progress
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    _t: tuple[float, float] = (0.0, 0.0)
    _name: str = ""

    def start(self, name: str, total: float | None = None) -> None:
        import time

        self._name = name
        self._t = (time.perf_counter(), time.process_time())  # bench: phase figures
        self.progress.start(name, total)

    def done(self, records: int) -> None:
        import time

        wall = time.perf_counter() - self._t[0]  # bench: phase figures
        cpu = time.process_time() - self._t[1]
        self.figures[self._name] = {
            "wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "records": records,
            "records_per_s": round(records / wall) if wall > 0 else 0,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        self.progress.done()


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (per address space, so a parent's peak does not leak
    in through fork + exec as ru_maxrss does), else ru_maxrss."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(journal: Path, files_dir: Path, out_dir: Path, *, tol_amount: int = 0,
        tol_time_us: int = 5_000_000, late_after_s: float = 86400.0,
        progress: Progress | None = None) -> tuple[ReconReport, dict[str, Path]]:
    """``payswitch reconcile``: read both sides, match, write; figures per phase.

    Raises SettlementFileError (or NoSettlementFiles) before anything is written.
    """
    phases = _Phases(progress or _NoProgress())
    paths = settlement_files(files_dir)
    if not paths:
        raise NoSettlementFiles(str(files_dir))
    phases.start("read files", float(sum(p.stat().st_size for p in paths)))
    net = load_network_side(
        files_dir, on_file=lambda path, n: phases.progress.advance(path.stat().st_size))
    phases.done(len(net))
    phases.start("read journal")
    sw = load_switch_side(journal)
    phases.done(len(sw))
    phases.start("match")
    report = match(sw, net, tol_amount=tol_amount, tol_time_us=tol_time_us,
                   late_after_s=late_after_s)
    phases.done(len(sw) + len(net))
    phases.start("write", float(len(report.breaks)))
    report.phases = phases.figures
    written = write_outputs(report, out_dir)
    phases.done(len(report.breaks))
    # The write phase's own figures go into summary.json too (written once more: small).
    summary = json.loads(written["json"].read_text())
    summary["phases"] = phases.figures
    written["json"].write_text(json.dumps(summary, indent=2))
    return report, written
