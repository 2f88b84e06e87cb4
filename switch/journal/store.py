"""The durable journal: SQLite in WAL mode, one writer, group commit.

Why this shape:
* One writer. SQLite serialises writers anyway; one task owning the connection means no
  lock contention and a natural place to batch.
* Group commit. Each ``write()`` appends a row to the open batch and waits for that batch's
  commit. While one batch is being committed (an fsync, ~0.2 ms here) the next fills up,
  so under load hundreds of payments share one fsync. The commit runs in a worker thread,
  which releases the GIL during the fsync, so the event loop keeps serving.
* Write-ahead. The pipeline journals an ``intent`` before a payment goes to a network and a
  ``final`` before the client hears the result. After a crash, an intent with no final is
  a payment whose fate must be resolved (reversal / status inquiry), never forgotten.

The journal is append-only: a payment's history is its rows in ``seq`` order. Start-up
replays it to rebuild the idempotency index and the list of unfinished payments.

Modes: ``sync`` commits every record on its own, ``group`` batches (default), ``off``
neither waits nor fsyncs: acknowledged payments can then be lost on a crash.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, Protocol

import anyio
import msgspec

from switch.journal import columns
from switch.model import Payment, Result, Status

log = logging.getLogger(__name__)

#: intent: about to send; unknown: sent, no answer in time; final: the result;
#: advice: a stand-in approval's 0120 advice reached the issuer.
RecordKind = Literal["intent", "unknown", "final", "advice"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    record BLOB NOT NULL,
    at_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
INSERT: Final = (
    "INSERT INTO journal (payment_id, idempotency_key, kind, status, body_hash, record, at_us)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
Row = tuple[str, str, str, str, bytes, bytes, int]

_encoder: Final = msgspec.msgpack.Encoder()
_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)
_result_decoder: Final = msgspec.msgpack.Decoder(Result)


class _Observes(Protocol):
    def observe(self, amount: float) -> None: ...


class _Gauges(Protocol):
    def set_function(self, f: Callable[[], float]) -> None: ...


class JournalMetrics(Protocol):
    """What the journal reports: structural, so the journal never imports observability."""

    @property
    def commit_seconds(self) -> _Observes: ...

    @property
    def batch_size(self) -> _Observes: ...

    @property
    def journal_pending(self) -> _Gauges: ...


class JournalFull(Exception):
    """More records are waiting than ``max_pending`` allows: shed load, don't queue."""


class JournalFailed(Exception):
    """A commit failed. The switch stops accepting payments (fail-stop)."""


class _Batch:
    __slots__ = ("committed", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.committed = anyio.Event()
        self.error: BaseException | None = None


class FinalRecord(msgspec.Struct, frozen=True):
    idempotency_key: str
    body_hash: bytes
    result: Result
    at_us: int


class UnfinishedPayment(msgspec.Struct, frozen=True):
    body_hash: bytes
    payment: Payment
    status: Status  # the last state journaled: sent or unknown


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


def encode_payment(payment: Payment) -> bytes:
    return _encoder.encode(payment)


def encode_result(result: Result) -> bytes:
    return _encoder.encode(result)


def open_database(path: str | Path, mode: str) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: the connection is used from worker threads, but only ever
    # by one at a time (the single writer task awaits each commit).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=" + ("OFF" if mode == "off" else "FULL"))
    db.executescript(SCHEMA)
    columns.migrate(db)  # reconciliation's column chunks (switch/journal/columns.py)
    return db


def replay(db: sqlite3.Connection) -> Recovered:
    """Rebuild state from the journal, and count this boot."""
    last_final: dict[str, FinalRecord] = {}
    open_payments: dict[str, UnfinishedPayment] = {}
    intents: dict[str, Payment] = {}
    stood_in: dict[str, FinalRecord] = {}
    records = 0
    cursor = db.execute(
        "SELECT payment_id, idempotency_key, kind, status, body_hash, record, at_us"
        " FROM journal ORDER BY seq"
    )
    for payment_id, key, kind, status, body_hash, record, at_us in cursor:
        records += 1
        if kind == "final":
            open_payments.pop(payment_id, None)
            final = FinalRecord(key, body_hash, _result_decoder.decode(record), at_us)
            last_final[payment_id] = final
            if final.result.stood_in:
                stood_in[payment_id] = final
        elif kind == "advice":
            stood_in.pop(payment_id, None)
        elif kind == "intent":
            payment = _payment_decoder.decode(record)
            intents[payment_id] = payment
            open_payments[payment_id] = UnfinishedPayment(body_hash, payment, Status(status))
        elif kind == "unknown" and payment_id in open_payments:
            prior = open_payments[payment_id]
            open_payments[payment_id] = UnfinishedPayment(
                prior.body_hash, prior.payment, Status.UNKNOWN
            )
    row = db.execute("SELECT value FROM meta WHERE key = 'boot_count'").fetchone()
    boot_count = (int(row[0]) if row else 0) + 1
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('boot_count', ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(boot_count),),
    )
    advices = [PendingAdvice(f.body_hash, intents[pid], f.result)
               for pid, f in stood_in.items() if pid in intents]
    return Recovered(list(last_final.values()), list(open_payments.values()), boot_count,
                     records, advices)


class Journal:
    """Append-only, group-committed payment journal. Run :meth:`run` in a task group."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        mode: Literal["sync", "group", "off"],
        max_batch: int,
        max_pending: int,
        metrics: JournalMetrics,
        clock: Callable[[], float] = anyio.current_time,
        commit_window_s: float = 0.0,
    ) -> None:
        assert max_batch >= 1 and max_pending >= max_batch
        self._clock = clock  # for the commit-latency metric only
        assert 0.0 <= commit_window_s <= 1.0
        self._commit_window_s = commit_window_s if mode == "group" else 0.0
        # Read at scrape time, so a stuck writer shows as a growing backlog.
        metrics.journal_pending.set_function(lambda: float(self._pending))
        self._db = db
        self.mode = mode
        self._max_batch = 1 if mode == "sync" else max_batch
        self._max_pending = max_pending
        self._metrics = metrics
        self._batches: deque[_Batch] = deque([_Batch()])
        self._pending = 0
        self._wakeup = anyio.Event()
        self._room = anyio.Event()  # set after each commit: pending records went down
        self._closed = False
        self.failure: BaseException | None = None
        self.commits = 0
        self.committed_records = 0
        if mode == "off":
            log.warning(
                "journal mode 'off': replies do not wait for the journal and nothing is "
                "fsynced -- acknowledged payments WILL be lost on a crash"
            )

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, row: Row) -> _Batch:
        """Queue one record; return the batch whose commit makes it durable."""
        if self.failure is not None:
            raise JournalFailed(str(self.failure))
        if self._closed:
            raise JournalFailed("journal is closed")
        if self._pending >= self._max_pending:
            raise JournalFull(f"journal has {self._pending} records pending (max_pending)")
        batch = self._batches[-1]
        if len(batch.rows) >= self._max_batch:
            batch = _Batch()
            self._batches.append(batch)
        batch.rows.append(row)
        self._pending += 1
        self._wakeup.set()
        return batch

    async def write(self, row: Row) -> None:
        """Append ``row`` and return once it is durable (immediately in mode ``off``)."""
        batch = self.append(row)
        if self.mode == "off":
            return
        await batch.committed.wait()
        if batch.error is not None:
            raise JournalFailed(str(batch.error)) from batch.error

    async def write_when_room(self, row: Row) -> None:
        """Like :meth:`write`, but wait for a commit to free room instead of refusing.

        For records that must not be dropped (the outcome of a payment already sent):
        the wait is bounded by the writer's own progress.
        """
        while True:
            try:
                await self.write(row)
                return
            except JournalFull:
                await self._room.wait()

    async def run(self) -> None:
        """The writer loop. Returns after :meth:`close` once everything is committed."""
        while True:
            if not self._batches[0].rows:
                if self._closed:
                    return
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            if self._commit_window_s > 0 and len(self._batches[0].rows) < self._max_batch:
                # Let the batch fill for a moment: one fsync and one thread hand-off for
                # more records. Trades at most the window in latency for CPU per record.
                await anyio.sleep(self._commit_window_s)
            batch = self._batches.popleft()
            if not self._batches:
                self._batches.append(_Batch())
            started = self._clock()
            try:
                await anyio.to_thread.run_sync(self._commit, batch.rows)
            except Exception as exc:  # disk full, I/O error: fail-stop, never guess
                log.critical("journal commit failed: %s", exc)
                self.failure = exc
                batch.error = exc
                for waiting in self._batches:
                    waiting.error = exc
                    waiting.committed.set()
                batch.committed.set()
                self._room.set()  # waiters for room wake and meet the failure
                raise
            self._pending -= len(batch.rows)
            self._room.set()
            self._room = anyio.Event()
            self.commits += 1
            self.committed_records += len(batch.rows)
            self._metrics.commit_seconds.observe(self._clock() - started)
            self._metrics.batch_size.observe(len(batch.rows))
            batch.committed.set()

    def _commit(self, rows: list[Row]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(INSERT, rows)
            columns.append_batch(db, rows)  # same transaction: columns never disagree
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (SQLITE_FULL does): a ROLLBACK then
            # raised "cannot rollback - no transaction is active" and hid the real cause
            # ("database or disk is full") from the critical log line.
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    log.error("journal rollback after a failed commit also failed: %s",
                              rollback)
            raise

    async def close(self) -> None:
        """Stop accepting records; :meth:`run` returns after the last batch commits."""
        self._closed = True
        self._wakeup.set()


def count_duplicates(db: sqlite3.Connection) -> int:
    """Payments booked twice: an idempotency key or payment id with two final records."""
    by_key = db.execute(
        "SELECT COUNT(*) FROM (SELECT idempotency_key FROM journal WHERE kind = 'final'"
        " GROUP BY idempotency_key HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    by_id = db.execute(
        "SELECT COUNT(*) FROM (SELECT payment_id FROM journal WHERE kind = 'final'"
        " GROUP BY payment_id HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    return int(by_key) + int(by_id)


def final_results(db: sqlite3.Connection) -> dict[str, Result]:
    """The last final result per idempotency key, for audits (demo, crash tests)."""
    out: dict[str, Result] = {}
    for key, record in db.execute(
        "SELECT idempotency_key, record FROM journal WHERE kind = 'final' ORDER BY seq"
    ):
        out[key] = _result_decoder.decode(record)
    return out
