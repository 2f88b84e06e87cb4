"""Retention: finished payments older than the idempotency window move to an archive.

Why: start-up replays the live journal; if the live journal held all history, start-up
time and memory would grow with every payment ever booked (12.7 us and 1.86 KB each: 5M
took 64 s and 9.4 GB). The archive is a second SQLite file beside the journal
(``<journal>.archive``), attached to the journal's connection as ``archive``; the reader
(``switch.journal.reader``) reads it with the live journal, so the ledger, reconciliation
and audits still see every payment, while start-up reads only the live journal: the
idempotency window plus the payments still open.

What moves: every record of a payment whose ``final`` is older than the window (its
idempotency key can no longer be retried) and which owes nothing -- not open, not a
stand-in approval waiting for its advice. Records keep their ``seq``.

How: :class:`Compactor` walks the live journal in ``seq`` order from a cursor, a bounded
number of rows per step, and stops at the first row younger than the window that fewer
than ``max_keys`` payments' finals follow. That count is of payments, not rows: a payment
has two rows, or three (an ``unknown`` resolved later, a stand-in's advice), or more, and
start-up restores the newest ``max_keys`` finals, so each of them must still be live. The
newest live row is never moved, so SQLite never hands out an archived ``seq`` again. A
payment seen but not yet movable is *held* (its seqs remembered) until its last record
shows up; a record that shows up after its payment was archived (a late ``unknown``)
follows it there. Each step copies the movable records (``INSERT OR IGNORE``,
committed), then deletes them from the live journal (committed). A crash between the two
leaves a record in both; the reader skips live records already archived, and the next
step finishes the move.
A step that fails (full archive disk, I/O error) changes none of the compactor's state, so
the next step looks at the same rows again. The steps run in the journal's writer
(``Journal.maintain``), so there is still one writer.

Ages: a row's ``at_us`` is a stamp on the wall clock of the run that made it. A wall
clock stepped forward across a restart made the earlier runs' rows look older by the
step, and they were archived that much before their idempotency window ended: the next
start restored no key for them, and a client's retry inside its window was booked again.
Given the run's restart ages (:class:`TrueAges`, ``switch.payment.restarts``), a step
never archives a row whose true age is inside the window. The rows this run wrote (seq
past the newest live row at its first step) are stamped on this run's clock, so their wall
age is their true age; only the rows before them are corrected, with one horizon lowered
by the most any of them can be corrected by, and a true age asked only of a row between
that horizon and the wall one. Once the cursor is past those rows (a window after the
start), a step is the one it was with no step recorded. A backward step keeps rows longer
than their window, as before (harmless: ``max_live_payments`` still bounds them).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import msgspec

from switch.journal.reader import ARCHIVE_SCHEMA, archive_path, has_archive
from switch.journal.records import ADVICE, FINAL, INTENT, UNKNOWN
from switch.model import Result, Status

_result_decoder: Final = msgspec.msgpack.Decoder(Result)
_REVERSED: Final = Status.REVERSED.value


#: Kinds that never open a payment: met first, they may belong to an archived one.
_LATE_KINDS: Final = frozenset({UNKNOWN, ADVICE})


class TrueAges(Protocol):
    """What retention asks of the run's restart ages: ``switch.payment.restarts.
    RestartAges`` (named by its shape: the journal may not import the payment layer)."""

    @property
    def stepped(self) -> bool:
        """Some known wall step is not zero: true ages differ from wall ages."""
        ...

    def age_s(self, made_us: int, wall_us: int) -> float:
        """True age in seconds of a stamp ``made_us`` at ``wall_us`` (this run's wall)."""
        ...

    def most_correction_s(self) -> float:
        """The most any stamp's true age (``age_s``, before its rounding down to a
        millisecond) falls short of its wall age, in seconds; never below 0."""
        ...


def _correction_us(ages: TrueAges) -> int:
    """The most any stamp's true age falls short of its wall age, in microseconds,
    rounded up, plus a millisecond (ages are floored to one). Never below 0: a run's own
    stamps are corrected by nothing."""
    return max(0, math.ceil(ages.most_correction_s() * 1e6)) + 1000


def _archived_finished(db: sqlite3.Connection, pid: str) -> bool:
    """The archive holds a final of ``pid``: only a finished payment that owed nothing
    moves there, all its records together (one probe of the payment id index)."""
    return db.execute(
        f"SELECT 1 FROM {ARCHIVE_SCHEMA}.journal WHERE payment_id = ? AND kind = ? LIMIT 1",
        (pid, FINAL)).fetchone() is not None


def _archived_last_final(db: sqlite3.Connection, pid: str) -> str | None:
    """The status of the archive's last final of ``pid`` (None: it holds none)."""
    row = db.execute(
        f"SELECT status FROM {ARCHIVE_SCHEMA}.journal WHERE payment_id = ? AND kind = ?"
        " ORDER BY seq DESC LIMIT 1", (pid, FINAL)).fetchone()
    return None if row is None else str(row[0])


def _live_after(db: sqlite3.Connection, pids: list[str], seq: int) -> set[str]:
    """Those of ``pids`` with a live record past ``seq``: one statement, a probe of the
    payment id index each."""
    if not pids:
        return set()
    return {pid for (pid,) in db.execute(
        "SELECT c.value FROM json_each(?) AS c WHERE EXISTS (SELECT 1 FROM main.journal"
        " AS j WHERE j.payment_id = c.value AND j.seq > ?)",
        (msgspec.json.encode(pids).decode(), seq))}


def _columns(db: sqlite3.Connection, schema: str) -> list[tuple[str, str]]:
    return [(name, type_) for _, name, type_, *_ in
            db.execute(f"PRAGMA {schema}.table_info(journal)")]


def attach_archive(db: sqlite3.Connection, journal: str | Path) -> Path:
    """Attach (creating if need be) the archive of the journal at ``journal``.

    An in-memory journal (the simulator's, tests') gets an in-memory archive: a file
    named after ``:memory:`` would land in the working directory, shared by every run.
    """
    path = Path(":memory:") if str(journal) == ":memory:" else archive_path(journal)
    if not has_archive(db):
        db.execute(f"ATTACH DATABASE ? AS {ARCHIVE_SCHEMA}", (str(path),))
    db.execute(f"PRAGMA {ARCHIVE_SCHEMA}.journal_mode=WAL")
    # The copy must be durable before the live records are deleted.
    db.execute(f"PRAGMA {ARCHIVE_SCHEMA}.synchronous=FULL")
    # The archive's table is the live one's, columns added later included (a migration
    # of the live table reaches the archive at the next attach).
    (live_sql,) = db.execute(
        "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = 'journal'"
    ).fetchone()
    db.execute(live_sql.replace("CREATE TABLE journal",
                                f"CREATE TABLE IF NOT EXISTS {ARCHIVE_SCHEMA}.journal", 1))
    archived = {name for name, _ in _columns(db, ARCHIVE_SCHEMA)}
    for name, type_ in _columns(db, "main"):
        if name not in archived:
            db.execute(f"ALTER TABLE {ARCHIVE_SCHEMA}.journal ADD COLUMN {name} {type_}")
    _copy_indexes(db)
    return path


def _copy_indexes(db: sqlite3.Connection) -> None:
    """Give the archive's table the live table's indexes (the payment id's above all: a
    lookup that misses the live journal reads the archive, the larger of the two, and
    retention looks up archived payments by id). Idempotent; an archive written before
    an index gains it at its next attach."""
    for name, sql in db.execute(
            "SELECT name, sql FROM main.sqlite_master WHERE type = 'index'"
            " AND tbl_name = 'journal' AND sql IS NOT NULL").fetchall():
        # SQLite stores "CREATE [UNIQUE] INDEX <name> ON journal (...)", without the
        # IF NOT EXISTS it was created with.
        archived = sql.replace(f"INDEX {name} ", f"INDEX IF NOT EXISTS {ARCHIVE_SCHEMA}.{name} ",
                               1)
        assert archived != sql, f"unexpected index definition: {sql!r}"
        db.execute(archived)


@dataclass(slots=True)
class _Held:
    seqs: list[int] = field(default_factory=list)
    finished: bool = False
    #: Its last final was an approval: the one final a reversal's intent reopens.
    approved: bool = False
    stood_in: bool = False
    advised: bool = False

    @property
    def movable(self) -> bool:
        return self.finished and (self.advised or not self.stood_in)

    def copy(self) -> _Held:
        return _Held(list(self.seqs), self.finished, self.approved, self.stood_in,
                     self.advised)


class Compactor:
    """Moves finished payments older than ``retention_s`` to the archive, a step at a time.

    Sans-IO in time: each :meth:`step` is given the current wall time.
    """

    def __init__(self, retention_s: float, *, max_live_payments: int = 2_000_000,
                 max_rows: int = 2_000, max_held: int = 1_000_000,
                 max_count_rows: int = 100_000) -> None:
        # ``max_rows`` bounds one step, which holds the journal's connection: ~2k rows is
        # tens of milliseconds, the most a commit waits behind retention. Counting finals
        # is one range scan of the rowid, far cheaper per row (100k rows: ~11 ms), hence
        # its own, larger bound.
        assert retention_s > 0 and max_rows >= 1 and max_held >= 1
        assert max_live_payments >= 1 and max_count_rows >= 1
        self.retention_us = int(retention_s * 1_000_000)
        #: Past this many payments finished after a row, it moves even inside the window:
        #: the idempotency index keeps at most ``max_keys`` keys anyway, and start-up
        #: restores the newest ``max_keys`` finals, so it never needs more.
        self.max_live_payments = max_live_payments
        self.max_rows = max_rows
        self.max_held = max_held
        self.max_count_rows = max_count_rows
        self._cursor = 0  # every live row with seq <= cursor is held (or archived)
        self._held: dict[str, _Held] = {}
        #: Payments' finals among the live rows in (cursor, counted_to]: how many payments
        #: finished after the cursor, known without rereading the rows every step.
        self._counted_to = 0
        self._newer_finals = 0
        self.archived = 0
        #: Rows the last step looked at: ``max_rows`` means more may be due at once.
        self.scanned = 0
        #: The stepped ages last given, the live rows up to which earlier runs may have
        #: written (the newest live seq at the first step given them), and the most those
        #: rows' stamps are corrected by.
        self._ages: TrueAges | None = None
        self._earlier_to = 0
        self._most_correction_us = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def step(self, db: sqlite3.Connection, now_us: int, ages: TrueAges | None = None) -> int:
        """Archive what is due among the next ``max_rows`` live rows; the count moved.

        ``ages``: the run's restart ages (None, or no step known: wall ages). A row is due
        once its true age is past the window; a backward step still waits for its wall age.

        When :attr:`scanned` is below ``max_rows``, nothing more is due now: the caller
        waits before the next step. When this raises, no row is left behind: the cursor
        and what is held are as before, and the next step looks at the same rows again.
        """
        assert now_us > 0 and has_archive(db)
        horizon = now_us - self.retention_us
        self.scanned = 0
        if len(self._held) >= self.max_held:
            return 0  # everything held owes something; do not grow past the bound
        # The newest live row always stays: SQLite hands out max(seq) + 1 next, and a seq
        # must never be reused for a record while an archived record holds it.
        newest = db.execute("SELECT MAX(seq) FROM main.journal").fetchone()[0] or 0
        behind = self._count_finals(db, newest)
        # Everything below is staged in locals and committed only once the move is
        # durable: a step that raises must leave its rows to be looked at again, not
        # behind the cursor, held for good.
        cursor, newer, counted_to = self._cursor, self._newer_finals, self._counted_to
        keep = self.max_live_payments
        # Rows stamped before a stepped restart are cut at a horizon lowered by the most
        # any of them is corrected by; a row between that cut and the wall horizon is
        # asked its true age (_due). With no step known, or once the cursor is past the
        # earlier runs' rows, the cut is the wall horizon and each row costs as before.
        earlier_to = self._earlier_rows(ages, newest)
        cut = horizon - self._most_correction_us if cursor < earlier_to else horizon
        corrected = cut < horizon
        rows = db.execute(
            "SELECT seq, payment_id, kind, status, record, at_us FROM main.journal"
            " WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
            (cursor, newest, self.max_rows))
        touched: dict[str, _Held] = {}
        fresh: list[str] = []  # first met at an intent: a new payment's, or a stray one
        scanned = 0
        try:
            for seq, pid, kind, status, record, at_us in rows:  # lazily: usually 1 row
                counted = seq <= counted_to and kind == FINAL and status != _REVERSED
                after = newer - 1 if counted else newer
                if at_us >= cut and after < keep and not (
                        corrected and self._due(seq, at_us, now_us, earlier_to, ages)):
                    break  # younger than the window, and among the newest payments
                cursor, newer = seq, after
                scanned += 1
                held = touched.get(pid)
                if held is None:
                    held = touched[pid] = self._holding(db, pid, kind)
                    if kind == INTENT and pid not in self._held:
                        fresh.append(pid)
                held.seqs.append(seq)
                if kind == INTENT:
                    # An intent after an approval reopens it (a reversal); after any other
                    # final there is nothing to undo, as the reader's fold decides
                    # (reader.Fold._apply).
                    held.finished = held.finished and not held.approved
                elif kind == FINAL:
                    held.finished = True
                    held.approved = status == Status.APPROVED.value
                    held.stood_in = (held.approved
                                     and _result_decoder.decode(record).stood_in)
                elif kind == ADVICE:
                    held.advised = True
        finally:
            rows.close()  # no statement open across the move's transactions
        staying = self._settle(db, touched, fresh, cursor)
        seqs = [s for pid, h in touched.items() if h.movable and pid not in staying
                for s in h.seqs]
        if seqs:
            self._move(db, seqs)
        self._cursor = cursor
        self._newer_finals = newer
        self._counted_to = max(counted_to, cursor)
        for pid, h in touched.items():
            if h.movable and pid not in staying:
                self._held.pop(pid, None)
            else:
                self._held[pid] = h
        self.archived += len(seqs)
        assert not seqs or self._cursor >= max(seqs)
        # Finals still to count may let more rows go at once: step again without waiting.
        self.scanned = self.max_rows if behind else scanned
        return len(seqs)

    def _earlier_rows(self, ages: TrueAges | None, newest: int) -> int:
        """The live rows up to which runs before this one may have written, when ``ages``
        know a step (0: none, every row is aged on the wall clock)."""
        if ages is None or not ages.stepped:
            return 0
        if ages is not self._ages:  # this run's first step: its rows come after these
            self._ages = ages
            self._earlier_to = newest
            self._most_correction_us = _correction_us(ages)
        return self._earlier_to

    def _due(self, seq: int, at_us: int, now_us: int, earlier_to: int,
             ages: TrueAges | None) -> bool:
        """A row between the corrected cut and the wall horizon: past the window in true
        time. This run's rows are stamped on its own clock: their wall age is true."""
        if at_us >= now_us - self.retention_us:
            return False  # inside the window on the wall clock: kept, as ever
        if seq > earlier_to:
            return True
        assert ages is not None
        return ages.age_s(at_us, now_us) * 1_000_000 >= self.retention_us

    @staticmethod
    def _settle(db: sqlite3.Connection, touched: dict[str, _Held], fresh: list[str],
                cursor: int) -> set[str]:
        """Stray intents, and the payments that must wait for their later live records:
        the ones not to move this step, though finished.

        An intent after a final other than an approval reopens nothing (reader.Fold):
        a payment first met at such a stray intent, its final already archived, is
        finished, and follows it there (held as a new payment, it stayed live for good).
        Asked of the archive only for a payment the step leaves open with no final seen
        (the step's last rows, payments still open): a payment's intent and final met
        together need no probe.

        A payment moves with all its live records (reader.OpenFold counts on it): one
        finished with nothing to undo, a stray intent of it still live past the cursor,
        waits for it, or the live journal's fold would read that intent as a new
        payment, open, while a fold of everything reads it finished."""
        for pid in fresh:
            h = touched[pid]
            if not h.finished and not h.approved:
                last = _archived_last_final(db, pid)
                if last is not None and last != Status.APPROVED.value:
                    h.finished = True
        return _live_after(db, [pid for pid, h in touched.items()
                                if not h.approved and h.movable], cursor)

    def _holding(self, db: sqlite3.Connection, pid: str, kind: str) -> _Held:
        """What is known of ``pid``, first met at a row of ``kind`` in this step.

        A payment's rows are walked in seq order, so one first met at an ``unknown`` or
        an ``advice`` had its intent archived: its payment finished and owed nothing. Such
        a late record (the reader never lets it reopen a finished payment) follows its
        payment to the archive; held as a payment never finished, it stayed live and held
        for good, restart after restart. Asked of the archive, not assumed: a stray record
        of a payment the archive does not hold finished stays held, as before.
        """
        prior = self._held.get(pid)
        if prior is not None:
            return prior.copy()
        if kind in _LATE_KINDS and _archived_finished(db, pid):
            return _Held(finished=True)
        return _Held()

    def _count_finals(self, db: sqlite3.Connection, newest: int) -> bool:
        """Count the finals of up to ``max_count_rows`` more live rows; True if rows are
        left to count.

        Each payment counts once: its final, or its first final when a reversal
        re-journaled its intent (the ISO 8583 door reverses card payments only, and a card
        reversal always ends ``reversed``, which is not counted). So a payment whose only
        final is ``reversed`` (a timeout reversed) counts not at all: it stays live longer,
        within the window, rather than an idempotency key being forgotten. Rows not counted
        yet count as no final either: a count that lags keeps more live, never less.
        """
        start = max(self._counted_to, self._cursor)
        if start > self._counted_to:  # the cursor passed every counted row
            assert self._newer_finals == 0
        end = min(newest, start + self.max_count_rows)
        if end > start:
            (finals,) = db.execute(
                "SELECT COUNT(*) FROM main.journal WHERE seq > ? AND seq <= ?"
                " AND kind = ? AND status != ?", (start, end, FINAL, _REVERSED)).fetchone()
            self._newer_finals += finals
            self._counted_to = end
        return self._counted_to < newest

    @staticmethod
    def _move(db: sqlite3.Connection, seqs: list[int]) -> None:
        every = ", ".join(name for name, _ in _columns(db, "main"))
        db.execute("CREATE TEMP TABLE IF NOT EXISTS moving (seq INTEGER PRIMARY KEY)")
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM temp.moving")
            db.executemany("INSERT INTO temp.moving (seq) VALUES (?)", ((s,) for s in seqs))
            db.execute(
                f"INSERT OR IGNORE INTO {ARCHIVE_SCHEMA}.journal ({every})"
                f" SELECT {every} FROM main.journal WHERE seq IN (SELECT seq FROM temp.moving)")
            db.execute("COMMIT")  # archived copy durable first ...
            db.execute("BEGIN")
            db.execute("DELETE FROM main.journal WHERE seq IN (SELECT seq FROM temp.moving)")
            db.execute("COMMIT")  # ... then gone from the live journal
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
