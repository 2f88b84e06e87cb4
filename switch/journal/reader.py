"""The one reader of the journal: rows back to records, records folded per payment.

Everything that reads the journal -- start-up replay, the ledger, reconciliation, the money
audit, scenario traces -- goes through :func:`fold` (or :func:`records` for a raw walk),
so the kinds are read one way everywhere:

* an ``intent`` opens a payment (its body is the ``Payment``);
* the latest ``unknown`` or ``final`` is its outcome; a ``final`` finishes it;
* an ``advice`` marks a stand-in approval as delivered to the issuer.

Archived history (``switch.journal.archive``) is read too when the archive database is
attached as ``archive``: its records come first (they are older, and a payment's records
always move there together), then the live journal's.
"""

from __future__ import annotations

import copy
import itertools
import operator
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from switch.journal.records import (
    ADVICE,
    COLUMNS,
    FINAL,
    INTENT,
    UNKNOWN,
    JournalRecord,
    from_row,
)
from switch.model import Payment, Result, Status

ARCHIVE_SCHEMA = "archive"
_payment_decoder = msgspec.msgpack.Decoder(Payment)
_result_decoder = msgspec.msgpack.Decoder(Result)
_SELECT = f"SELECT seq, {', '.join(COLUMNS)} FROM {{schema}}.journal"


def archive_path(journal: str | Path) -> Path:
    """Where the archive of the journal at ``journal`` lives: a SQLite file beside it."""
    journal = Path(journal)
    return journal.with_name(journal.name + ".archive")


def has_archive(db: sqlite3.Connection) -> bool:
    return any(name == ARCHIVE_SCHEMA for _, name, *_ in db.execute("PRAGMA database_list"))


def main_database_file(db: sqlite3.Connection) -> str:
    """The file of ``db``'s main database ("" for an in-memory one)."""
    return next((file for _, name, file in db.execute("PRAGMA database_list")
                 if name == "main"), "")


def attach_existing_archive(db: sqlite3.Connection) -> bool:
    """Attach the archive of ``db``'s journal if there is one; True if attached."""
    if has_archive(db):
        return True
    main = main_database_file(db)
    if not main or not archive_path(main).exists():
        return False
    db.execute(f"ATTACH DATABASE ? AS {ARCHIVE_SCHEMA}", (str(archive_path(main)),))
    return True


def _rows(db: sqlite3.Connection, after_seq: int, live_only: bool) -> Iterator[tuple[
        int, str, str, str, str, bytes, bytes, int]]:
    """Raw rows (``seq`` first, then :data:`COLUMNS`): the one SELECT on the journal.

    Archived rows first; a live row already archived (a move cut by a crash) is skipped.
    The live journal alone is SQLite's own cursor, not a generator wrapped around it: a
    replay reads every row of the journal through here.
    """
    assert after_seq >= 0
    live = _SELECT.format(schema="main") + " WHERE seq > ?"
    if live_only or not attach_existing_archive(db):
        return db.execute(live + " ORDER BY seq", (after_seq,))
    return _archived_then_live(db, after_seq, live)


def _archived_then_live(db: sqlite3.Connection, after_seq: int, live: str) -> Iterator[tuple[
        int, str, str, str, str, bytes, bytes, int]]:
    yield from db.execute(_SELECT.format(schema=ARCHIVE_SCHEMA) + " WHERE seq > ?"
                          " ORDER BY seq", (after_seq,))
    live += (f" AND NOT EXISTS (SELECT 1 FROM {ARCHIVE_SCHEMA}.journal AS a"
             " WHERE a.seq = main.journal.seq)")
    yield from db.execute(live + " ORDER BY seq", (after_seq,))


def records(db: sqlite3.Connection, *, after_seq: int = 0,
            live_only: bool = False) -> Iterator[tuple[int, JournalRecord]]:
    """Every record with its ``seq``: archived ones first, then the live journal's."""
    for seq, pid, key, kind, status, body_hash, body, at_us in _rows(db, after_seq, live_only):
        yield seq, from_row((pid, key, kind, status, body_hash, body, at_us))


def by_seq(db: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, JournalRecord]:
    """The records with these ``seq``s, live or archived (e.g. a break's intent)."""
    return {seq: from_row(tuple(row)) for seq, *row in _by_seq(db, seqs, _SELECT)}


def bodies_by_seq(db: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, bytes]:
    """The bodies only of the records with these ``seq``s, live or archived: what
    reconciliation reads for the few payments it shows (no record objects built)."""
    return dict(_by_seq(db, seqs, "SELECT seq, record FROM {schema}.journal"))


def _by_seq(db: sqlite3.Connection, seqs: Sequence[int], select: str) -> Iterator[Any]:
    """Rows by ``seq`` in ascending order (B-tree pages then come in file order: at 165k
    random seqs of a 6 GB journal, sorted lookups took 0.4 s where unsorted took 1.1 s).
    Archived rows first: a row in both (a move cut by a crash) is the archived one."""
    wanted = sorted(set(seqs))
    schemas = [ARCHIVE_SCHEMA, "main"] if attach_existing_archive(db) else ["main"]
    seen: set[int] = set()
    for start in range(0, len(wanted), 900):  # SQLite's default bound on variables
        chunk = wanted[start:start + 900]
        marks = ",".join("?" * len(chunk))
        for schema in schemas:
            for row in db.execute(select.format(schema=schema) + f" WHERE seq IN ({marks})",
                                  chunk):
                if len(schemas) == 1 or row[0] not in seen:
                    seen.add(row[0])
                    yield row


#: What a reversed final may follow without counting as a second final: an approval, or
#: the resolver's unknown while it reversed one.
_REVERSIBLE: Final = frozenset({Status.APPROVED, Status.UNKNOWN})


@dataclass(slots=True)
class PaymentHistory:
    """One payment folded from its records."""

    payment_id: str
    idempotency_key: str
    body_hash: bytes
    #: The intent's body, decoded on first use of :attr:`payment` (replay decodes only
    #: the payments it needs: open ones and stand-ins owing an advice).
    intent: bytes = b""
    intent_at_us: int = 0
    _payment: Payment | None = None
    #: The latest ``unknown`` or ``final`` record and its result.
    outcome_kind: str | None = None
    result: Result | None = None
    outcome_at_us: int = 0
    #: When it was first answered (its first ``unknown`` or ``final``): where the running
    #: switch's idempotency index put it in its eviction order.
    answered_at_us: int = 0
    finals: int = 0
    advised: bool = False
    #: An intent came after its final, an approval: a reversal under way (see
    #: :meth:`Fold._apply`).
    reopened: bool = False

    @property
    def payment(self) -> Payment | None:
        """The payment (None: declined before any intent, by risk)."""
        if self._payment is None and self.intent:
            self._payment = _payment_decoder.decode(self.intent)
        return self._payment

    @property
    def finished(self) -> bool:
        return self.outcome_kind == FINAL

    @property
    def status(self) -> str:
        """The latest state: the outcome's, or ``sent`` for an intent alone."""
        return self.result.status.value if self.result is not None else Status.SENT.value

    @property
    def at_us(self) -> int:
        """When the latest state was journaled."""
        return self.outcome_at_us if self.result is not None else self.intent_at_us

    @property
    def awaiting_advice(self) -> bool:
        """A stand-in approval whose 0120 advice has not reached the issuer yet."""
        return (self.finished and self.result is not None and self.result.stood_in
                and not self.advised)


@dataclass
class Fold:
    """The journal folded per payment, in order of first record."""

    payments: dict[str, PaymentHistory] = field(default_factory=dict)
    records: int = 0
    last_seq: int = 0

    def add(self, record: JournalRecord) -> None:
        self._apply(record.payment_id, record.idempotency_key, record.kind,
                    record.body_hash, record.body, record.at_us)

    def _apply(self, pid: str, key: str, kind: str, body_hash: bytes, body: bytes,
               at_us: int) -> None:
        """Apply one record: the one reading of the record kinds."""
        history = self.payments.get(pid)
        if history is None:
            history = self.payments[pid] = PaymentHistory(pid, key, body_hash)
        self.records += 1
        if kind == INTENT:
            history.intent = body  # decoded on first use
            history._payment = None  # a fold read between records decoded the one before
            history.intent_at_us = at_us
            # An intent after a final (a reversal re-journaled by the ISO 8583 door)
            # reopens the payment: it must be resolved again, after a crash too. Only
            # an approval has something to undo: an intent after ``reversed`` (a repeat
            # that raced the resolver), a decline or a failure reopened it, and every
            # start-up sent its issuer one more 0400 and journaled one more final.
            previous = history.result
            history.reopened = (history.outcome_kind == FINAL and previous is not None
                                and previous.status is Status.APPROVED)
        elif kind in (FINAL, UNKNOWN):
            if kind == UNKNOWN and history.outcome_kind == FINAL:
                return  # a late "unknown" never reopens a finished payment
            previous = history.result
            if not history.answered_at_us:
                history.answered_at_us = at_us
            history.outcome_kind = kind
            history.reopened = False
            result = history.result = _result_decoder.decode(body)
            history.outcome_at_us = at_us
            if kind == FINAL and not (
                    history.finals and result.status is Status.REVERSED
                    and previous is not None and previous.status in _REVERSIBLE):
                # An approval reversed since (an acquirer's 0400) is the one legal exit
                # from a terminal state, not a second booking: the audits counted every
                # such payment as booked twice.
                history.finals += 1
        elif kind == ADVICE:
            history.advised = True
        else:
            raise AssertionError(f"unknown journal record kind {kind!r}")

    def final_results(self) -> dict[str, Result]:
        """The final result per idempotency key (the last one, were there two)."""
        return {h.idempotency_key: h.result for h in self.payments.values()
                if h.finished and h.result is not None}

    def duplicates(self, forgotten: Mapping[str, int] | None = None) -> int:
        """Payments booked twice: an idempotency key or a payment id with two finals.

        ``forgotten``: per key, how many of its payments the idempotency window forgot
        (the simulator hears it from the index): a retry of the key after that began a
        new payment, as the window's contract says, so each allows one payment more."""
        # One pass, and a set of keys rather than a count per key (a key has two finals
        # iff one of its payments has, or a second payment of it has one): the simulator
        # asks this of every payment of a run, up to 700k in its simulated hour.
        by_id = 0
        seen: set[str] = set()
        twice: set[str] = set()
        allowed: Counter[str] = Counter(forgotten or ())
        for h in self.payments.values():
            finals = h.finals
            if finals:
                key = h.idempotency_key
                if finals > 1:
                    by_id += 1
                    twice.add(key)
                elif key not in seen:
                    seen.add(key)
                elif allowed[key] > 0:
                    allowed[key] -= 1  # a new payment of a key the window had forgotten
                else:
                    twice.add(key)
        return by_id + len(twice)

    def by_key(self) -> dict[str, PaymentHistory]:
        """The latest payment per idempotency key (one per key unless the key was reused)."""
        return {h.idempotency_key: h for h in self.payments.values()}


def fold(db: sqlite3.Connection, *, after_seq: int = 0, live_only: bool = False) -> Fold:
    out = Fold()
    out.last_seq = after_seq
    return fold_onto(db, out, live_only=live_only)


def fold_onto(db: sqlite3.Connection, out: Fold, *, live_only: bool = False) -> Fold:
    """Fold the records after ``out.last_seq`` onto ``out`` (records keep their order, so
    a journal that only grew since gives the same fold as reading it whole)."""
    apply = out._apply
    last = out.last_seq
    for seq, pid, key, kind, _status, body_hash, body, at_us in _rows(db, out.last_seq,
                                                                        live_only):
        apply(pid, key, kind, body_hash, body, at_us)
        if seq > last:  # not max(): a builtin call per record of every replay
            last = seq
    out.last_seq = last
    return out


def fold_records(stream: Iterable[JournalRecord]) -> Fold:
    out = Fold()
    for record in stream:
        out.add(record)
    return out


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """The journal at ``path`` for reading, with its archive attached when there is one."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    archived = archive_path(path)
    if archived.exists():
        db.execute(f"ATTACH DATABASE ? AS {ARCHIVE_SCHEMA}", (f"file:{archived}?mode=ro",))
    return db


def read(path: str | Path) -> Fold:
    """Fold the journal at ``path`` (live and archived), for offline readers."""
    db = open_readonly(path)
    try:
        return fold(db)
    finally:
        db.close()


def final_results(db: sqlite3.Connection) -> dict[str, Result]:
    """The last final result per idempotency key, for audits (demo, crash tests)."""
    return fold(db).final_results()


def count_duplicates(db: sqlite3.Connection) -> int:
    """Payments booked twice: an idempotency key or payment id with two final records."""
    return fold(db).duplicates()


# --- start-up replay --------------------------------------------------------------------


class FinalRecord(msgspec.Struct, frozen=True):
    idempotency_key: str
    body_hash: bytes
    result: Result
    #: When the payment was first answered (an ``unknown`` counts), not its final: the
    #: order and age the running switch's idempotency index gave it (recovered_from).
    answered_at_us: int


class UnfinishedPayment(msgspec.Struct, frozen=True):
    body_hash: bytes
    payment: Payment
    status: Status  # the last state journaled: sent or unknown
    #: Finished, then reopened by an acquirer's reversal (its intent journaled again):
    #: the key's answer stays the approval until the reversal is done.
    reopened: bool = False
    #: When its network had seen it by, on the wall clock of the run that journaled it
    #: (microseconds; 0: the journal shows no such moment): :func:`seen_by_us`. The
    #: resolver counts a network's first delay from it (resolver.py's ``_candidate``).
    seen_by_us: int = 0


class PendingAdvice(msgspec.Struct, frozen=True):
    """A stand-in approval whose 0120 advice has not been delivered yet."""

    body_hash: bytes
    payment: Payment
    result: Result


class Recovered(msgspec.Struct, frozen=True):
    """What start-up learns from replaying the journal."""

    finals: list[FinalRecord]
    unfinished: list[UnfinishedPayment]
    boot_count: int
    records: int
    pending_advices: list[PendingAdvice] = msgspec.field(default_factory=list)


def recovered_from(folded: Fold, boot_count: int,
                   backlog: OpenFold | None = None) -> Recovered:
    """What start-up learns from ``folded``. ``backlog``: seeded with the payments that
    may still be unfinished, so the resolver's first refill need not read the whole
    journal again (:class:`OpenFold`)."""
    # One pass: nearly every payment is finished and owes nothing, so the finals are most
    # of the work (a start-up restores the whole idempotency window, millions of keys at
    # the bound); the few open ones or owing an advice come out of the same walk. Two
    # walks (a comprehension, then a loop) cost a fifth more, and more on a large fold
    # whose histories no longer fit the CPU's caches.
    finals: list[FinalRecord] = []
    final = finals.append
    unfinished: list[UnfinishedPayment] = []
    advices: list[PendingAdvice] = []
    open_: list[PaymentHistory] | None = [] if backlog is not None else None
    for h in folded.payments.values():
        result = h.result
        if h.outcome_kind == FINAL:
            assert result is not None
            final(FinalRecord(h.idempotency_key, h.body_hash, result, h.answered_at_us))
            if h.reopened:
                if open_ is not None:
                    open_.append(h)
                if (one := _unfinished(h)) is not None:
                    unfinished.append(one)
            # Reopened: a reversal of the stand-in approval was accepted (only a reversal
            # journals an intent after a final), and its advice was withdrawn
            # (StandIn.withdraw): sent now, the issuer would hold a reversed payment.
            if result.stood_in and not h.advised and not h.reopened and h.payment is not None:
                advices.append(PendingAdvice(h.body_hash, h.payment, result))
        else:
            if open_ is not None:
                open_.append(h)
            if (one := _unfinished(h)) is not None:
                unfinished.append(one)
    if backlog is not None:
        assert open_ is not None
        backlog.seed(open_, folded.last_seq)
    # Oldest first, in the order the running index held them: by first answer, not by
    # final. A payment resolved long after its unknown was near the front of the running
    # index, and restored by its final it pushed out, at the max_keys bound, a key the
    # switch still answered from: a retry of that key after the restart was booked anew.
    finals.sort(key=_answered_at_us)
    return Recovered(finals, unfinished, boot_count, folded.records, advices)


_answered_at_us: Final = operator.attrgetter("answered_at_us")


def _done(h: PaymentHistory) -> bool:
    """Finished and not reopened: unfinished again only if a later intent reopens it."""
    return h.outcome_kind == FINAL and not h.reopened


class OpenFold:
    """The live journal's payments that may still be unfinished, brought up to date one
    read at a time: the running switch's refill (app.py's backlog), after its resolver's
    queue overflowed.

    Reading the whole live journal at every refill cost time in proportion to the journal
    (millions of rows at the idempotency bound, seconds each) again and again, just as an
    outage's backlog drained. Each :meth:`update` folds only the rows after the last one
    it read (by ``seq``, which only grows), and keeps only the payments not finished:
    memory in proportion to the open payments, not the journal. It gives what a whole
    fold of the live journal (``fold(db, live_only=True)``) gives: the same unfinished
    payments, statuses, body hashes and order. Three cases make that hold:

    * a payment dropped as finished may be reopened later (a reversal re-journals its
      intent), or get a late ``unknown`` (which never reopens it): a payment first met in
      the new rows and left open is looked up by its id, and refolded from its whole live
      history if it has records older than the last read;
    * retention (``switch.journal.archive``) moves finished payments to the archive, all
      of a payment's live records together: a kept payment whose first live record is
      gone was moved (its new records, if any, are folded again from the live journal
      alone, as a whole fold would);
    * a seed from start-up's replay (:meth:`seed`) knows no seqs: each seeded
      payment is refolded from its live records at the first update.

    One update runs at a time (the resolver reads once at a time), in a thread. A read
    that fails empties the state: the next one reads the whole live journal again.
    """

    def __init__(self) -> None:
        #: The payments that may be unfinished, by their first live record: a Fold of
        #: the live journal without its finished payments.
        self._fold = Fold()
        #: Each kept payment's first live record (None: seeded, not located yet).
        self._first: dict[str, int | None] = {}

    @property
    def last_seq(self) -> int:
        """The newest journal row folded so far."""
        return self._fold.last_seq

    @property
    def payments(self) -> dict[str, PaymentHistory]:
        """The payments kept: those not finished (or reopened), in order of first record."""
        return self._fold.payments

    def reset(self) -> None:
        self._fold = Fold()
        self._first = {}

    def seed(self, histories: Iterable[PaymentHistory], last_seq: int) -> None:
        """Start from a whole fold of the live journal up to ``last_seq`` (start-up's
        replay): its payments not finished, copied (the caller's fold may go on)."""
        self.reset()
        self._fold.last_seq = last_seq
        payments, first = self._fold.payments, self._first
        for h in histories:
            if not _done(h):
                payments[h.payment_id] = copy.copy(h)
                first[h.payment_id] = None

    def read(self, path: str | Path) -> list[UnfinishedPayment]:
        """Bring the state up to the journal at ``path`` on a connection of its own (the
        writer keeps committing: one read transaction, one consistent snapshot) and
        return its unfinished payments: what ``unfinished_of(fold_onto(db, Fold(),
        live_only=True))`` returns, at a fraction of its cost."""
        db = open_readonly(path)
        try:
            db.execute("BEGIN")
            self.update(db)
            return self.unfinished()
        finally:
            db.close()  # a read only: closing ends the transaction

    def unfinished(self) -> list[UnfinishedPayment]:
        return unfinished_of(self._fold)

    def update(self, db: sqlite3.Connection) -> None:
        """Fold the live journal's rows after :attr:`last_seq`; see the class. Run it in
        one read transaction. If it raises, the state is emptied (the next update reads
        the whole live journal)."""
        try:
            self._update(db)
        except BaseException:
            self.reset()
            raise

    def _update(self, db: sqlite3.Connection) -> None:
        old_last = self._fold.last_seq
        newest = db.execute("SELECT MAX(seq) FROM main.journal").fetchone()[0] or 0
        if newest < old_last:  # not this journal any more (replaced): start over
            self.reset()
            old_last = 0
        first = self._first
        # Kept payments moved to the archive since (or seeded, never located): refold
        # each from its live records the last read saw -- none, mostly.
        stale = [pid for pid, seq in first.items() if seq is None]
        located = {seq: pid for pid, seq in first.items() if seq is not None}
        stale += [located[seq] for seq in _gone(db, located)]
        self._refold(db, stale, old_last)
        # The new rows, folded as a whole fold would.
        fold = self._fold
        payments = fold.payments
        before = len(payments)
        fold_onto(db, fold, live_only=True)
        new_last = fold.last_seq
        peak = len(payments)
        # Payments first met in the new rows (added last: a fold only adds): the finished
        # ones go; an open one may be an older payment dropped as finished, reopened.
        fresh: list[str] = []
        for pid in list(itertools.islice(payments, before, None)):
            h = payments[pid]
            if h.outcome_kind == FINAL and not h.reopened:
                del payments[pid]
            else:
                fresh.append(pid)
        older: list[str] = []
        for pid, seq in _first_seqs(db, fresh):
            if seq > old_last:
                first[pid] = seq  # all its live records are new: folded as they are
            else:
                older.append(pid)
        self._refold(db, older, new_last)
        # Kept payments finished by the new rows go.
        for pid in [pid for pid, h in payments.items()
                    if h.outcome_kind == FINAL and not h.reopened]:
            del payments[pid]
            del first[pid]
        assert payments.keys() == first.keys()
        # In order of first live record, as a whole fold has them (a refolded payment was
        # added last): the refill takes the oldest first.
        seqs = [at for pid in payments if (at := first[pid]) is not None]
        assert len(seqs) == len(payments), "a kept payment not located"
        # A dict keeps its peak's table when emptied: after a large read (the first one,
        # or a burst) copy it, so that memory follows what is kept, not the peak.
        compact = peak > 2 * len(payments) + 1024
        if any(a > b for a, b in itertools.pairwise(seqs)):
            order = dict(zip(payments, seqs, strict=True))
            fold.payments = dict(sorted(payments.items(), key=lambda kv: order[kv[0]]))
        elif compact:
            fold.payments = dict(payments)
        if compact:
            self._first = dict(first)

    def _refold(self, db: sqlite3.Connection, pids: Sequence[str], upto: int) -> None:
        """Fold ``pids`` anew from their live records up to ``upto``; keep the open ones."""
        fold, first = self._fold, self._first
        payments = fold.payments
        for pid in pids:
            payments.pop(pid, None)
            first.pop(pid, None)
        apply = fold._apply
        for chunk in _chunks(pids):
            sql = _SELECT.format(schema="main") + (
                f" WHERE payment_id IN ({','.join('?' * len(chunk))}) AND seq <= ?"
                " ORDER BY seq")
            for seq, pid, key, kind, _status, body_hash, body, at_us in db.execute(
                    sql, (*chunk, upto)):
                apply(pid, key, kind, body_hash, body, at_us)
                first.setdefault(pid, seq)
        for pid in pids:
            h = payments.get(pid)
            if h is not None and h.outcome_kind == FINAL and not h.reopened:
                del payments[pid]
                del first[pid]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), 900):  # SQLite's default bound on variables
        yield items[start:start + 900]


def _gone(db: sqlite3.Connection, seqs: Iterable[int]) -> Iterator[int]:
    """Those of ``seqs`` no longer in the live journal (by its primary key)."""
    for chunk in _chunks(sorted(seqs)):
        values = ",".join(["(?)"] * len(chunk))
        yield from (seq for (seq,) in db.execute(
            f"WITH wanted(seq) AS (VALUES {values}) SELECT seq FROM wanted"
            " WHERE NOT EXISTS (SELECT 1 FROM main.journal AS j WHERE j.seq = wanted.seq)",
            chunk))


def _first_seqs(db: sqlite3.Connection, pids: Sequence[str]) -> Iterator[tuple[str, int]]:
    """Each of ``pids``' first live record (those with none are left out)."""
    for chunk in _chunks(pids):
        yield from db.execute(
            f"SELECT payment_id, MIN(seq) FROM main.journal"
            f" WHERE payment_id IN ({','.join('?' * len(chunk))}) GROUP BY payment_id", chunk)


def unfinished_of(folded: Fold) -> list[UnfinishedPayment]:
    """The payments of ``folded`` sent and not final (recovered_from's unfinished, without
    the finals): what the resolver takes back once it has room (resolver.refill)."""
    return [one for h in folded.payments.values() if (one := _unfinished(h)) is not None]


def _unfinished(h: PaymentHistory) -> UnfinishedPayment | None:
    """``h`` as an unfinished payment: sent and not final (or reopened), else None."""
    if h.outcome_kind == FINAL:  # first: the payment is decoded only when it is wanted
        if not h.reopened:
            return None
        status = Status.SENT
    else:
        status = Status.UNKNOWN if h.outcome_kind == UNKNOWN else Status.SENT
    payment = h.payment
    return None if payment is None else UnfinishedPayment(h.body_hash, payment, status,
                                                          h.reopened, seen_by_us(h))


def seen_by_us(h: PaymentHistory) -> int:
    """A moment by which ``h``'s network had seen the payment, if its records show one
    (wall microseconds of the run that journaled it; 0: none): its first answer, when that
    was an ``unknown`` (journaled once an attempt sent had no answer) or an approval the
    network gave. Not a stand-in approval's: the issuer may first see that one in its
    advice, later. Not the intent's: journaled before the send, which a disk stall may
    hold back for up to the payment deadline."""
    if h.outcome_kind == UNKNOWN or (h.reopened and h.result is not None
                                     and not h.result.stood_in):
        return h.answered_at_us
    return 0


def next_boot(db: sqlite3.Connection) -> int:
    """Count this boot in the journal's meta table."""
    row = db.execute("SELECT value FROM meta WHERE key = 'boot_count'").fetchone()
    boot_count = (int(row[0]) if row else 0) + 1
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('boot_count', ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(boot_count),),
    )
    return boot_count


def replay(db: sqlite3.Connection, folded: Fold | None = None, *,
           backlog: OpenFold | None = None) -> Recovered:
    """Rebuild state from the live journal (archived payments are finished and outside
    the idempotency window, so start-up never reads them), and count this boot.

    ``folded``: this journal's fold from an earlier start, when nothing was archived since
    (the simulator, restarting thousands of times): only the newer records are read and
    folded onto it, instead of the whole journal at every start. ``backlog``: seeded from
    the same fold (the resolver's refills then read only what was journaled since).
    """
    folded = fold_onto(db, folded if folded is not None else Fold(), live_only=True)
    return recovered_from(folded, next_boot(db), backlog)
