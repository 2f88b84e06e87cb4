"""End-to-end reconciliation: the switch journal against the networks' settlement files.

Columnar from disk to kernel, so 10M records per side fit in seconds and < 2 GB:

1. :func:`load_switch_side` -- the journal's reconciliation columns
   (:mod:`switch.journal.columns`: hashed reference, amount, currency, time per intent;
   status, stand-in and advice facts per outcome), folded per payment by a numba kernel.
   No msgpack record is decoded, except those of the few breaks when they are written.
2. :func:`load_network_side` -- every settlement file of a directory straight into
   columns: card clearing files and QR CSVs parsed, checked and hashed by one numba pass
   (the strict decoders of :mod:`switch.protocols.settlement_files` decide anything it is
   not sure of), camt.053 through streaming lxml, references hashed by a numba kernel. A
   malformed file is rejected whole, naming the file, line and field; a directory without
   settlement files is an error too (:class:`NoSettlementFiles`), never "everything is
   missing".
3. :func:`match` -- the numba kernels: exact pass on the hashed reference (partitioned by
   key above ``PARTITION_RECORDS`` to bound the hash table's memory), then the tolerance
   pass on the leftovers only, within each channel. Between the passes, switch records
   the network should never have (declined, failed, pending) and network reversals are
   claimed, so the tolerance pass cannot pair them with a stray entry on the other side
   and hide a break.
4. Classes the kernels do not know are added on the arrays: ``expected_absent``
   (declined/failed and not at the network), ``matched_netted`` (a network entry netting
   one or more payments of one counterparty, see :func:`_match_netted`),
   ``orphan_reversal``, ``late_settlement``, ``standin_exposure`` and ``outside_files``.
5. :func:`write_outputs` -- breaks.csv (sorted by severity, then amount), summary.json
   and summary.html (totals per class and currency, the largest breaks, the
   amount-weighted view).

On two cores (the target machine) :func:`run` keeps both busy: the journal is read in a
thread while the files are (steps 1 and 2 are mostly GIL-free: SQLite, numpy, numba), the
exact pass matches two key partitions at a time, and the breaks' strings are looked up
in the journal by a thread while netting and the report are computed.

Breaks you can trust. ``standin_exposure`` (explained) needs evidence in the journal: the
payment was approved in stand-in *and* the issuer refused its 0120 advice (an ``advice``
record whose reason is not 00). A stand-in payment whose advice was delivered, or not
delivered yet, and that is missing at the network is a plain ``missing_at_network``.
``outside_files``: an approved payment missing at the network, approved after the last
settlement record in the files: the files end before the journal does, so it cannot be
in them. It is counted and warned about, not listed as a break.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
import json
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from switch.backoffice.recon.breaks import BreakTable, LazyBreaks
from switch.backoffice.recon.classes import (
    KIND_NAMES,
    NOT_BREAKS,
    SEVERITY,
    ReconReport,
    Record,
)
from switch.backoffice.recon.kernels import (
    FLAG_ADVICE_DELIVERED,
    FLAG_ADVICE_REFUSED,
    FLAG_DUPLICATE_INTENT,
    FLAG_STOOD_IN,
    BreakClass,
    ReconResult,
    RecordArrays,
    RecordStatus,
    exact_match_columns,
    exact_match_partitioned,
    fold_outcomes,
    huge_pages,
    kind_currency_sums,
    mark_late,
    tolerance_match,
)
from switch.backoffice.recon.outputs import write_outputs
from switch.backoffice.recon.sides import (
    NoSettlementFiles,
    Side,
    Texts,
    concat_sides,
    load_network_side,
    settlement_files,
)
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.journal import bodies_by_seq
from switch.journal import columns as jcols
from switch.model import Payment
from switch.protocols import emvqr
from switch.protocols.errors import CodecError

_STATUS: Final = {
    "approved": RecordStatus.SETTLED,
    "declined": RecordStatus.DECLINED,
    "failed": RecordStatus.FAILED,
    "reversed": RecordStatus.REVERSED,
    "unknown": RecordStatus.PENDING,
    "sent": RecordStatus.PENDING,
}
#: Minor -> major units per ISO numeric currency code (ordering only; unknown: 2).
_SCALE: Final = np.full(1024, 0.01)
for _num, _exp in CURRENCIES.values():
    _SCALE[_num] = 10.0 ** -_exp
#: Above this many network records the exact pass runs in key partitions of about this
#: size: its hash table is 43-85 bytes per network record, which at 10M would be 0.5 GB,
#: and each partition gathers its four columns (at 1M: ~150 MB at a time in all).
PARTITION_RECORDS: Final = 1_000_000

# Kind codes on the arrays: the kernels' BreakClass values, then the classes added here.
_EXPECTED_ABSENT, _NETTED, _ORPHAN_REVERSAL, _LATE, _STANDIN, _OUTSIDE = 8, 9, 10, 11, 12, 13
_NOT_BREAK_CODES: Final = np.array([name in NOT_BREAKS for name in KIND_NAMES])
_RANK: Final = np.array([SEVERITY.index(n) if n in SEVERITY else len(SEVERITY)
                         for n in KIND_NAMES], np.int64)


# ------------------------------------------------------------------------- both sides


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
        lambda idx: Texts([records[i].reference for i in idx.tolist()],
                          [records[i].source for i in idx.tolist()],
                          [records[i].line for i in idx.tolist()],
                          [records[i].counterparty for i in idx.tolist()]),
        lambda idx: [records[i].counterparty for i in idx.tolist()],
        lambda idx: [records[i] for i in idx.tolist()],
    )


# ------------------------------------------------------------------------ switch side


def load_switch_side(journal: Path) -> Side:
    """Every payment with an intent in the journal, from its reconciliation columns."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, check_same_thread=False)
    cols = jcols.read_columns(db, ("seq", "pid", "ref", "amount", "time_us", "currency",
                                   "channel"))
    it, out = cols.intents, cols.outcomes
    del cols
    status, time_us, flags, _ = fold_outcomes(
        it.pop("pid"), it["time_us"], out["pid"], out["time_us"], out["status"], out["kind"],
        out["flags"], int(RecordStatus.PENDING), overwrite_time=True)
    del out  # the outcomes are folded: drop them before anything else is allocated
    keep = (flags & FLAG_DUPLICATE_INTENT) == 0
    if not keep.all():
        it = {name: arr[keep] for name, arr in it.items()}
        status, time_us, flags = status[keep], time_us[keep], flags[keep]
    seq = it.pop("seq")
    if len(seq) and int(seq.max()) < 2**31:  # half the memory (40 MB at 10M payments)
        seq = seq.astype(np.int32)
    strings = _SwitchStrings(journal, db, seq)
    side = Side(it["ref"], it["amount"], it["currency"], status, time_us, it["channel"], flags,
                strings.texts, strings.counterparties)
    side.prefetch = strings.prefetch
    side.secondaries = strings.secondaries
    return side


class _SwitchStrings:
    """The strings of switch entries (reference, payment id, counterparty), read from
    their journaled intents: one B-tree lookup and one msgpack decode per entry, ~5 us,
    so ~1 s for the ~200k breaks of a 10M reconciliation with 2% of them planted.

    :meth:`prefetch` queues entries for a thread that looks them up on its own connection
    (SQLite steps release the GIL) while matching goes on; :meth:`texts` and
    :meth:`counterparties` wait for the queue to drain, take what it fetched and look up
    only what it did not. Entries are fetched once.
    """

    def __init__(self, journal: Path, db: sqlite3.Connection, seq: NDArray[np.integer[Any]]
                 ) -> None:
        self._journal = journal
        self._db = db
        self._seq = seq
        self._texts: dict[int, tuple[str, str]] = {}  # seq -> (reference, payment id)
        self._counterparty: dict[int, str] = {}
        # (priority, order, seqs, full): counterparties (netting waits for them) first.
        self._queue: queue.PriorityQueue[tuple[int, int, list[int], bool]] = (
            queue.PriorityQueue())
        self._order = itertools.count()
        self._full_pending = 0
        self._full_done = threading.Condition()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()
        self._error: BaseException | None = None

    def prefetch(self, first: NDArray[np.int64], then: NDArray[np.int64]) -> None:
        """Queue entries ``first`` (counterparties too) and ``then``; any thread."""
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="recon-strings",
                                                daemon=True)
                self._worker.start()
        if len(first):
            with self._full_done:
                self._full_pending += 1
            self._queue.put((0, next(self._order), self._seq[first].tolist(), True))
        if len(then):
            self._queue.put((1, next(self._order), self._seq[then].tolist(), False))

    def _serve(self) -> None:
        db = sqlite3.connect(f"file:{self._journal}?mode=ro", uri=True)
        while True:
            _, _, seqs, full = self._queue.get()
            try:
                if self._error is None:
                    self._fetch(db, seqs, full)
            except BaseException as exc:  # handed to the caller by _join
                self._error = exc
            finally:
                if full:
                    with self._full_done:
                        self._full_pending -= 1
                        self._full_done.notify_all()
                self._queue.task_done()

    def _join(self) -> None:
        if self._worker is not None:
            self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _fetch(self, db: sqlite3.Connection, seqs: list[int], full: bool) -> None:
        wanted = [s for s in seqs if s not in (self._counterparty if full else self._texts)]
        # Through the journal's reader: a payment past the idempotency window is archived.
        decoder: msgspec.msgpack.Decoder[Payment] | msgspec.msgpack.Decoder[jcols._Intent] = (
            _payment_decoder if full else _light_decoder)
        for s, body in bodies_by_seq(db, wanted).items():
            p = decoder.decode(body)
            self._texts[s] = (
                p.card.rrn if p.card is not None else p.swift.uetr if p.swift is not None
                else (p.qr.qr_reference if p.qr is not None else "") or p.payment_id,
                p.payment_id)
            if isinstance(p, Payment):
                self._counterparty[s] = _counterparty(p)

    def texts(self, idx: NDArray[np.int64]) -> Texts:
        """Strings of switch entries ``idx`` (a light decode of the payment id and the
        channel reference); every number comes from the columns."""
        self._join()
        wanted = self._seq[idx].tolist()
        self._fetch(self._db, wanted, full=False)
        got = [self._texts[s] for s in wanted]
        n = len(wanted)
        return Texts([t[0] for t in got], [t[1] for t in got], [0] * n, [""] * n)

    def secondaries(self, idx: NDArray[np.int64]) -> list[str]:
        """The card secondary key (STAN|terminal) of entries ``idx``, "" for others: for
        the few tolerance pairs only, so looked up here, not queued."""
        self._join()
        seqs = self._seq[idx].tolist()
        found: dict[int, str] = {}
        for s, body in bodies_by_seq(self._db, seqs).items():
            card = _payment_decoder.decode(body).card
            found[s] = f"{card.stan}|{card.terminal_id}" if card is not None else ""
        return [found.get(s, "") for s in seqs]

    def counterparties(self, idx: NDArray[np.int64]) -> list[str]:
        # Only the queued counterparties are waited for, not the queue's other strings.
        with self._full_done:
            self._full_done.wait_for(lambda: self._full_pending == 0)
        if self._error is not None:
            self._join()
        wanted = self._seq[idx].tolist()
        self._fetch(self._db, wanted, full=True)
        return [self._counterparty[s] for s in wanted]


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


# ----------------------------------------------------------------------- network side


# ----------------------------------------------------------------------------- match


def _arrays(side: Side, idx: NDArray[np.int64] | None = None) -> RecordArrays:
    """The tolerance pass's columns, the channel folded into the currency column.

    Pass 2 pairs on currency, amount and time alone, and a card payment missing at its
    network once paired with an unknown camt.053 entry of the same amount a second later,
    hiding two real breaks. The exact pass's key has the channel in it already; here the
    kernels (and the reference) compare the currency column for equality only, so
    ``channel << 16 | currency`` makes them pair within a channel with no change of theirs.
    """
    def take(a: NDArray[Any]) -> NDArray[np.int64]:
        return (a if idx is None else a[idx]).astype(np.int64)

    return RecordArrays(take(side.key), take(side.amount), _channel_currency(side, idx),
                        take(side.time_us), take(side.status))


def _channel_currency(side: Side, idx: NDArray[np.int64] | None = None
                      ) -> NDArray[np.int64]:
    """``channel << 16 | currency`` as int64: one code per (channel, currency), in
    [0, 2**31) as the kernels require (channel < 128, currency an int16)."""
    channel = side.channel if idx is None else side.channel[idx]
    currency = side.currency if idx is None else side.currency[idx]
    return (channel.astype(np.int64) << 16) | (currency.astype(np.int64) & 0xFFFF)


def _partition_records() -> int:
    return PARTITION_RECORDS  # a function, so a test can make every run partitioned


#: Partitions of the exact pass matched at once (threads; the kernels release the GIL).
#: Each is PARTITION_RECORDS / EXACT_WORKERS records, so memory is as with one.
EXACT_WORKERS: Final = 2


def _exact(sw: Side, net: Side) -> ReconResult:
    """Pass 1, in key partitions when the network side is large (bounded table memory),
    two partitions at a time (at 10M, ~1.2 s of the pass ran on one core of two).

    As each partition is matched, the switch entries that may be breaks are queued for
    their strings (:func:`_prefetch_breaks`), so those lookups overlap the rest."""
    parts = max(1, -(-len(net) // _partition_records()))
    net_last = int(net.time_us.max()) if len(net) else None
    if parts == 1:
        result = exact_match_columns(*_columns4(sw), *_columns4(net))
        _prefetch_breaks(sw, result.switch_class, np.arange(len(sw)), net_last)
        return result
    return exact_match_partitioned(
        (sw.key, sw.amount, sw.currency, sw.status),
        (net.key, net.amount, net.currency, net.status), parts * EXACT_WORKERS,
        workers=EXACT_WORKERS, on_partition=lambda result, si: _prefetch_breaks(
            sw, result.switch_class, si, net_last))


def _prefetch_breaks(sw: Side, switch_class: NDArray[np.int8], si: NDArray[Any],
                     net_last: int | None) -> None:
    """Queue the strings of switch entries ``si`` that the exact pass left as possible
    breaks: approved ones it did not pair (missing at the network, unless the tolerance
    pass or netting pairs them: QR ones with their counterparty, for netting) and pairs
    that disagree. Approved after the files' end: outside_files, not breaks (unless
    netting wants them, QR). Late pairs are known later: queued by :func:`match`."""
    if sw.prefetch is None or not len(si):
        return
    cls = switch_class[si]
    # The few candidates first (a few % of the records), then their other columns.
    maybe = np.flatnonzero((cls < 0) | ((cls >= BreakClass.AMOUNT_MISMATCH)
                                        & (cls <= BreakClass.DUPLICATE)))
    idx = np.asarray(si[maybe], np.int64)
    cls = cls[maybe]
    leftover = (cls < 0) & (sw.status[idx] == int(RecordStatus.SETTLED))
    qr = leftover & (sw.channel[idx] == jcols.CHANNEL_CODE["qr"])
    if net_last is not None:
        leftover &= sw.time_us[idx] <= net_last
    sw.prefetch(idx[qr], idx[(leftover & ~qr) | (cls >= 0)])


def _columns4(side: Side) -> list[NDArray[np.int64]]:
    """key, amount, currency, status as writable contiguous int64."""
    out = []
    for c in (side.key, side.amount, side.currency, side.status):
        col = np.ascontiguousarray(c, dtype=np.int64)
        out.append(col if col.flags.writeable else col.copy())
    return out


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


def _second_look(sw: Side, net: Side, result: ReconResult, tol_amount: int,
                 tol_time_us: int) -> int:
    """Check the tolerance pairs of card records against their secondary keys
    (STAN|terminal): a pair whose keys disagree is undone, and the undone records are
    paired again where a key, the currency and the tolerances agree. The rest are
    missing. Returns how many pairs were undone.

    Why: the tolerance pass pairs leftovers on amount, currency and time alone.
    - A card clearing record carries its cycle's cut time, so with short cycles the time
      filters nothing: a payment missing at the network paired with an unknown record of
      the same amount, and two real breaks were hidden as ``matched_tolerance`` (the
      demo's planted breaks showed it).
    - Two garbled references of the same amount and second can be paired crosswise (at
      10M records, about 1 in 45 of them).
    A garbled reference keeps its STAN and terminal; a stranger does not. Only card
    records are looked at: the other channels' files keep no secondary the switch side
    also has.
    """
    if sw.secondaries is None or net.secondaries is None:
        return 0
    tol = np.flatnonzero((result.switch_class == BreakClass.MATCHED_TOLERANCE)
                         & (sw.channel == jcols.CHANNEL_CODE["card"]))
    if not len(tol):
        return 0
    partner = result.switch_match[tol]
    assert (result.network_match[partner] == tol).all(), "tolerance pairs are mutual"
    ours, theirs = sw.secondaries(tol), net.secondaries(partner)
    differ = [k for k, (a, b) in enumerate(zip(ours, theirs, strict=True))
              if a != b and a != "" and b != ""]
    undo_sw, undo_net = tol[differ], partner[differ]
    result.switch_class[undo_sw] = BreakClass.MISSING_AT_NETWORK
    result.network_class[undo_net] = BreakClass.MISSING_IN_SWITCH
    result.switch_match[undo_sw] = -1
    result.network_match[undo_net] = -1
    # Pair again by key among the undone, each network record at most once. A STAN
    # repeats (six digits), so a key may name several records: the first within the
    # tolerances wins.
    free: dict[str, list[int]] = {}
    for k in differ:
        free.setdefault(theirs[k], []).append(int(partner[k]))
    for k in differ:
        i, candidates = int(tol[k]), free.get(ours[k], [])
        for j in candidates:
            if (sw.currency[i] == net.currency[j]
                    and abs(int(sw.amount[i]) - int(net.amount[j])) <= tol_amount
                    and abs(int(sw.time_us[i]) - int(net.time_us[j])) <= tol_time_us):
                candidates.remove(j)
                result.switch_class[i] = result.network_class[j] = (
                    BreakClass.MATCHED_TOLERANCE)
                result.switch_match[i], result.network_match[j] = j, i
                break
    return len(differ)


def _pair_cleared_reversals(sw: Side, net: Side, result: ReconResult) -> None:
    """Pair a cleared-then-reversed card authorization with the switch's reversal.

    A reversal that reaches the issuer just after a clearing cut-off comes as two network
    records with one key: ``settled`` in one cycle, ``reversed`` in the next. Against a
    switch payment that ended reversed, the pair is the match; the exact pass saw the
    first as a status mismatch and the second as a duplicate. Only those few records are
    looked at, and only a reversal of the same amount and currency pairs.
    """
    rev = int(RecordStatus.REVERSED)
    later = np.flatnonzero((result.network_class == BreakClass.DUPLICATE)
                           & (net.status == rev))
    if not len(later):
        return
    mism = np.flatnonzero((result.switch_class == BreakClass.STATUS_MISMATCH)
                          & (sw.status == rev))
    partner = result.switch_match[mism]
    cleared = net.status[partner] == int(RecordStatus.SETTLED)
    by_key = {k: (i, j) for k, i, j in zip(net.key[partner[cleared]].tolist(),
                                           mism[cleared].tolist(),
                                           partner[cleared].tolist(), strict=True)}
    for j in later.tolist():
        hit = by_key.get(int(net.key[j]))
        if hit is None:
            continue
        i, first = hit
        if net.amount[j] != net.amount[first] or net.currency[j] != net.currency[first]:
            continue
        del by_key[int(net.key[j])]  # one reversal per cleared record
        assert result.switch_match[i] == first and result.network_match[first] == i
        result.switch_class[i] = BreakClass.MATCHED
        result.network_class[first] = BreakClass.MATCHED
        result.network_class[j] = BreakClass.MATCHED
        result.network_match[j] = i


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
    _pair_cleared_reversals(sw, net, result)
    # Claim switch leftovers the network should not have (declined/failed/pending), and
    # network reversals: neither may be offered to the tolerance pass as a partner.
    expected_absent = (result.switch_class < 0) & (sw.status != settled)
    result.switch_class[expected_absent] = BreakClass.MISSING_AT_NETWORK
    stray_reversals = (result.network_class < 0) & (net.status == int(RecordStatus.REVERSED))
    result.network_class[stray_reversals] = BreakClass.MISSING_IN_SWITCH
    _tolerance(sw, net, result, tol_amount, tol_time_us)
    _second_look(sw, net, result, tol_amount, tol_time_us)

    sw_kind = result.switch_class.copy()
    net_kind = result.network_class.copy()
    sw_kind[expected_absent] = _EXPECTED_ABSENT
    # Late settlement: matched, but settled more than late_after_s after approval. (Only
    # pairs are looked at, and netting only takes unpaired records: the order of the
    # two does not matter, and this one tells sooner which records are breaks.)
    mark_late(sw_kind, net_kind, result.switch_match, sw.time_us, net.time_us,
              late_after_s * 1e6, _LATE)
    if sw.prefetch is not None:  # the late pairs' strings (the rest are queued already)
        sw.prefetch(np.zeros(0, np.int64), np.flatnonzero(sw_kind == _LATE))
    groups, cand_sw = _netting_candidates(sw, net, sw_kind, net_kind)
    _match_netted(sw, net, sw_kind, net_kind, result, tol_amount, tol_time_us,
                  groups, cand_sw)
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


#: The class of a network record that is the reversal of an authorization cleared in the
#: cycle before, paired with its switch payment together with that clearing.
REVERSAL_OF_CLEARED: Final = "reversal_of_cleared"


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
        n, total = kind_currency_sums(k, cur, amt, n_kinds)
        for code in np.flatnonzero(n).tolist():
            name = KIND_NAMES[code // 1024]
            counts[prefix + name] = counts.get(prefix + name, 0) + int(n[code])
            alpha = NUMERIC_TO_ALPHA.get(code % 1024, str(code % 1024))
            amounts[name][alpha] = amounts[name].get(alpha, 0) + int(total[code])

    tally(sw_kind, sw, None, "")
    tally(net_kind, net, unpaired, "network:")
    # A network record paired with a switch record whose own partner is another network
    # record: the reversal, in the next cycle, of an authorization cleared in one
    # (_pair_cleared_reversals). Counted, so that every network record is in some class:
    # "5,655 network records, 5,654 matched" read as one record gone unreported.
    paired = np.flatnonzero(~unpaired)
    second = paired[result.switch_match[result.network_match[paired]] != paired]
    if len(second):
        name = REVERSAL_OF_CLEARED
        counts["network:" + name] = len(second)
        for currency in np.unique(net.currency[second]).tolist():
            alpha = NUMERIC_TO_ALPHA.get(int(currency) % 1024, str(currency))
            amounts[name][alpha] = int(net.amount[second[net.currency[second] == currency]].sum())
    sw_breaks = np.flatnonzero(~_NOT_BREAK_CODES[sw_kind])
    net_breaks = np.flatnonzero(unpaired & ~_NOT_BREAK_CODES[net_kind])
    # Order on arrays (severity, then money at stake in major units, largest first); the
    # breaks stay columns (BreakTable) and Break objects are built only when looked at.
    partners = result.switch_match[sw_breaks]
    sw_k = sw_kind[sw_breaks]
    stake = np.abs(sw.amount[sw_breaks])
    is_amount = (sw_k == BreakClass.AMOUNT_MISMATCH) & (partners >= 0)
    stake[is_amount] = np.abs(sw.amount[sw_breaks[is_amount]]
                              - net.amount[partners[is_amount]])
    net_k = net_kind[net_breaks]
    net_stake = np.abs(net.amount[net_breaks])
    stakes = np.concatenate([stake, net_stake]).astype(np.int64)
    major = stakes * _SCALE[np.concatenate([sw.currency[sw_breaks],
                                            net.currency[net_breaks]]).astype(np.int64) % 1024]
    kinds = np.concatenate([sw_k, net_k]).astype(np.int8)
    order = np.lexsort((-major, _RANK[kinds.astype(np.int64)]))
    no_sw = np.full(len(net_breaks), -1, np.int64)
    table = BreakTable(
        kinds[order],
        np.concatenate([sw_breaks, no_sw])[order],
        np.concatenate([partners, net_breaks])[order],
        stakes[order], sw, net)
    return ReconReport(len(sw), len(net), counts, dict(amounts), LazyBreaks(table), warnings,
                       table=table)


def _netting_candidates(sw: Side, net: Side, sw_kind: NDArray[np.int8],
                        net_kind: NDArray[np.int8]
                        ) -> tuple[dict[tuple[int, int, str], list[int]], NDArray[np.int64]]:
    """Leftover network entries that may net several payments, by (channel, currency,
    counterparty), and the leftover approved switch payments that could be in them."""
    settled = int(RecordStatus.SETTLED)
    cand_net = np.flatnonzero((net_kind == BreakClass.MISSING_IN_SWITCH)
                              & (net.status == settled))
    none = np.zeros(0, np.int64)
    if not len(cand_net):
        return {}, none
    net_cp = net.counterparties(cand_net)
    entries: dict[tuple[int, int, str], list[int]] = {}
    for n, cp in zip(cand_net.tolist(), net_cp, strict=True):
        if cp:
            entries.setdefault((int(net.channel[n]), int(net.currency[n]), cp), []).append(n)
    if not entries:
        return {}, none
    channels = {c for c, _, _ in entries}
    cand_sw = np.flatnonzero((sw_kind == BreakClass.MISSING_AT_NETWORK) & (sw.status == settled)
                             & np.isin(sw.channel, list(channels)))
    return entries, cand_sw


def _match_netted(sw: Side, net: Side, sw_kind: NDArray[np.int8], net_kind: NDArray[np.int8],
                  result: ReconResult, tol_amount: int, skew_us: int,
                  entries: dict[tuple[int, int, str], list[int]],
                  cand_sw: NDArray[np.int64]) -> int:
    """Many-to-one: a network entry that nets payments (one per merchant and cycle,
    say) against the approved switch payments it covers.

    Within one (channel, currency, counterparty), leftover network entries are taken in
    time order, and each claims the leftover approved switch payments made before it and
    after the previous entry; the sums must agree (within ``tol_amount``). One payment is
    a range too: the QR scheme writes a net row for a merchant paid once in a cycle, and
    that row is stamped with the cut, often further from the payment than the tolerance
    pass looks.

    The cut is not sharp: a net entry carries the network's cycle cut-off, the switch's
    time is when it journaled the answer, and a payment the network settled just before
    the cut can be journaled just after it (under load, by a second or more). So when the
    payments up to the cut do not add up, the range's end moves payment by payment, nearest
    first, among those within ``skew_us`` of the cut, and the first range that adds up is
    taken. Deterministic, and it never touches records the exact and tolerance passes
    already paired. Only
    leftovers are looked at, so their counterparties are read (from the journal and the
    files) for those few records only.
    """
    if not entries:
        return 0
    payments: dict[tuple[int, int, str], list[int]] = {}
    for i, cp in zip(cand_sw.tolist(), sw.counterparties(cand_sw), strict=True):
        payments.setdefault((int(sw.channel[i]), int(sw.currency[i]), cp), []).append(i)
    netted = 0
    for group, ns in entries.items():
        pool = sorted(payments.get(group, []), key=lambda i: int(sw.time_us[i]))
        times = [int(sw.time_us[i]) for i in pool]
        sums = [0]
        for i in pool:
            sums.append(sums[-1] + int(sw.amount[i]))
        start = 0
        for n in sorted(ns, key=lambda n: int(net.time_us[n])):
            cut, want = int(net.time_us[n]), int(net.amount[n])
            nominal = bisect.bisect_right(times, cut, lo=start)
            low = max(start + 1, bisect.bisect_right(times, cut - skew_us, lo=start))
            high = bisect.bisect_right(times, cut + skew_us, lo=start)
            ends = sorted(range(low, high + 1), key=lambda e: (abs(e - nominal), e))
            if nominal >= start + 1 and nominal not in ends:
                ends.insert(0, nominal)
            end = next((e for e in ends if abs(sums[e] - sums[start] - want) <= tol_amount),
                       None)
            if end is None:
                start = max(start, nominal)  # as if it added up: the next cycle starts here
                continue
            net_kind[n] = _NETTED
            for i in pool[start:end]:
                sw_kind[i] = _NETTED
                result.switch_match[i] = n
            netted += 1
            start = end
    return netted


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

    def done(self, records: int, cpu_s: float | None = None) -> None:
        import time

        wall = time.perf_counter() - self._t[0]  # bench: phase figures
        cpu = time.process_time() - self._t[1] if cpu_s is None else cpu_s
        self.add(self._name, (wall, cpu), records)
        self.progress.done()

    def add(self, name: str, figures: tuple[float, float], records: int) -> None:
        """A phase's (wall, CPU) figures, measured elsewhere (a concurrent phase)."""
        wall, cpu = figures
        self.figures[name] = {
            "wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "records": records,
            "records_per_s": round(records / wall) if wall > 0 else 0,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }


_T = TypeVar("_T")


def _timed(fn: Callable[[], _T]) -> tuple[_T, tuple[float, float]]:
    """``fn()`` with its wall time and this thread's CPU time."""
    import time

    t, c = time.perf_counter(), time.thread_time()  # bench: phase figures
    value = fn()
    return value, (time.perf_counter() - t, time.thread_time() - c)  # bench: figures


def _warm_match(net: Side) -> None:
    """Load the exact pass's kernels (numba's cache, ~0.15 s) on a few records with the
    sides' dtypes, so the match does not wait for it."""
    n = 64

    def columns(side_dtypes: Side) -> tuple[NDArray[Any], ...]:
        return (np.arange(n, dtype=side_dtypes.key.dtype),
                np.ones(n, side_dtypes.amount.dtype), np.zeros(n, side_dtypes.currency.dtype),
                np.zeros(n, side_dtypes.status.dtype))

    # The switch side's columns have the journal's dtypes, the same as the files'.
    exact_match_partitioned(columns(net), columns(net), 2, workers=1)


def _files_cpu(net: Side) -> float:
    """CPU of the threads that read the files (see sides.load_network_side)."""
    return float(getattr(net, "read_cpu_s", 0.0))


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


def run(journal: Path | Sequence[Path], files_dir: Path, out_dir: Path, *, tol_amount: int = 0,
        tol_time_us: int = 5_000_000, late_after_s: float = 86400.0,
        progress: Progress | None = None) -> tuple[ReconReport, dict[str, Path]]:
    """``payswitch reconcile``: read both sides, match, write; figures per phase.

    Raises SettlementFileError (or NoSettlementFiles) before anything is written.
    """
    with huge_pages(False):  # on again for the kernels' hash tables only
        return _run(journal, files_dir, out_dir, tol_amount=tol_amount,
                    tol_time_us=tol_time_us, late_after_s=late_after_s, progress=progress)


def _run(journal: Path | Sequence[Path], files_dir: Path, out_dir: Path, *, tol_amount: int,
         tol_time_us: int, late_after_s: float,
         progress: Progress | None) -> tuple[ReconReport, dict[str, Path]]:
    phases = _Phases(progress or _NoProgress())
    paths = settlement_files(files_dir)
    if not paths:
        raise NoSettlementFiles(str(files_dir))
    # A cluster's journals (one per shard) make one switch side together.
    journals = [journal] if isinstance(journal, Path) else list(journal)
    # The journal is read while the files are: its reads are SQLite steps, numpy copies
    # and a numba fold, all without the GIL, and the files' readers are mostly numba
    # kernels too, so the two phases share the machine's cores (at 10M, ~1.6 s of the
    # journal hid behind ~3 s of files). Their figures overlap in time: each phase's wall
    # is its own span, its CPU its own threads'.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-journal") as pool:
        switch_side = pool.submit(_timed, lambda: concat_sides(
            [load_switch_side(j) for j in journals]))
        phases.start("read files", float(sum(p.stat().st_size for p in paths)))
        net = load_network_side(
            files_dir, on_file=lambda path, n: phases.progress.advance(path.stat().st_size))
        phases.done(len(net), cpu_s=_files_cpu(net))
        if not switch_side.done():
            _warm_match(net)  # while the journal is still being read
        sw, journal_figures = switch_side.result()
    phases.add("read journal", journal_figures, len(sw))
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
