"""The durable journal: SQLite in WAL mode, one writer, group commit.

Why this shape:
* One writer. SQLite serialises writers anyway; one thread owning the connection means no
  lock contention and a natural place to batch.
* Group commit. Each ``write()`` appends a row to the open batch and waits for that batch's
  commit. While one batch is being committed (an fsync, ~0.2 ms here) the next fills up,
  so under load hundreds of payments share one fsync. The commit runs in the journal's
  own thread, which releases the GIL during the fsync, so the event loop keeps serving,
  and reports back through the loop's thread-safe call (switch/loopcalls.py).
* Write-ahead. The pipeline journals an ``intent`` before a payment goes to a network and a
  ``final`` before the client hears the result. After a crash, an intent with no final is
  a payment whose fate must be resolved (reversal / status inquiry), never forgotten.

The journal is append-only: a payment's history is its records in ``seq`` order
(``switch.journal.records``). Start-up replays it (``switch.journal.reader``) to rebuild the
idempotency index and the list of unfinished payments.

Full journal: each ``write`` says what its record does when ``max_pending`` records are
waiting (:class:`~switch.journal.records.OnFull`): shed (``JournalFull``, the request is
refused) or wait for room. Waiting is bounded by the writer's own progress.

Modes: ``sync`` commits every record on its own, ``group`` batches (default), ``off``
neither waits nor fsyncs: acknowledged payments can then be lost on a crash.
"""

from __future__ import annotations

import functools
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol, TypeVar, Union

import anyio

from switch.journal import columns
from switch.journal.archive import Compactor, TrueAges, attach_archive
from switch.journal.checkpointer import Checkpointer, start_beside
from switch.journal.reader import main_database_file
from switch.journal.records import COLUMNS, KINDS, JournalRecord, OnFull, Row, to_row
from switch.loopcalls import LoopCalls, loop_calls

log = logging.getLogger(__name__)

# Every bytes value bound to a statement (each record's body hash and body) went through
# sqlite3's adaptation on 3.11: bytes is not among the types it passes straight through,
# so each bind looked up an adapter, then __adapt__ and __conform__, both failing with a
# formatted AttributeError. An identity adapter (bytes(b) is b) is one dict hit: measured
# 2.5 -> 2.1 us of CPU per journal row inserted (100k rows, 100 per commit).
sqlite3.register_adapter(bytes, bytes)
T = TypeVar("T")

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
-- Lookups by payment id (the front doors' find and reversal): without it each one read
-- the whole live journal, and on a miss the whole archive. Every entry also holds the
-- seq (the rowid), so "the newest record of a payment" is read off its end. IF NOT
-- EXISTS: a journal written before the index gains it when opened (attach_archive
-- gives the archive the same).
CREATE INDEX IF NOT EXISTS journal_payment_id ON journal (payment_id);
"""
_ROW_PLACEHOLDERS: Final = f"({', '.join('?' * len(COLUMNS))})"
INSERT: Final = f"INSERT INTO journal ({', '.join(COLUMNS)}) VALUES {_ROW_PLACEHOLDERS}"
#: Most rows one INSERT statement carries (7 parameters each: 1,792, under SQLite's 32,766).
MAX_ROWS_PER_INSERT: Final = 256
#: Prepared statements the connection keeps: an INSERT for every row count up to
#: MAX_ROWS_PER_INSERT, and the rest of the journal's own.
CACHED_STATEMENTS: Final = MAX_ROWS_PER_INSERT + 64


@functools.cache
def _insert_rows_sql(count: int) -> str:
    assert 1 <= count <= MAX_ROWS_PER_INSERT, count
    return f"INSERT INTO journal ({', '.join(COLUMNS)}) VALUES " + ", ".join(
        [_ROW_PLACEHOLDERS] * count)


#: The switch process's GIL switch interval (``sys.setswitchinterval``; Python's default
#: is 5 ms). Why: the commit thread needs the GIL back after every SQLite call, and while
#: the event loop is busy each hand-back waited up to the interval. Measured with a busy
#: loop thread (bench/bench_journal_gil.py): a 100-row commit took 54 ms at 5 ms, 2.7 ms
#: at 0.5 ms with multi-row inserts; a 1,000-row commit 502 ms and 11 ms.
GIL_SWITCH_INTERVAL_S: Final = 0.0005
#: writer="loop": a commit that holds the loop this long is logged while it lasts, from a
#: watchdog thread (the loop itself can say nothing until the disk answers). A healthy
#: commit takes well under 10 ms (payswitch_journal_commit_seconds).
LOOP_STALL_WARN_S: Final = 1.0


def insert_rows(db: sqlite3.Connection, rows: list[Row]) -> int:
    """Insert ``rows`` (in order, so their seqs are contiguous) in as few statements as
    SQLite's parameter limit allows; return the last row's seq (0 if none).

    Why not ``executemany``: it steps SQLite once per row and releases and re-takes the
    GIL around each step; with the event loop busy on the other thread, every re-take
    could wait for the loop to give the GIL up. A commit of 1,000 rows then took half a
    second, slowed the payments waiting on it, grew the next batch, and the switch
    melted under overload. One statement per MAX_ROWS_PER_INSERT rows, each row count
    its own cached statement (CACHED_STATEMENTS): a commit of up to 256 rows takes the
    GIL back once for its rows.
    """
    done, total, last = 0, len(rows), 0
    while done < total:
        chunk = rows[done:done + MAX_ROWS_PER_INSERT]
        cursor = db.execute(_insert_rows_sql(len(chunk)),
                            [value for row in chunk for value in row])
        last = cursor.lastrowid or 0
        done += len(chunk)
    assert done == total, "every row inserted exactly once"
    assert total == 0 or last >= total, "seqs are positive and contiguous"
    return last


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


#: What the writer thread is given: a batch to commit, a maintenance step, or None (stop).
_Job = Union["_Batch", "_Maintenance", None]


class _Maintenance:
    """A step on the connection between commits (retention), and its outcome."""

    __slots__ = ("done", "error", "result", "step")

    def __init__(self, step: Callable[[sqlite3.Connection], object]) -> None:
        self.step = step
        self.done = anyio.Event()
        self.result: object = None
        self.error: BaseException | None = None


def open_database(path: str | Path, mode: str) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: opened here, read at start-up (replay), then used by one
    # writer at a time: the loop's thread or the journal's writer thread (Journal).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         cached_statements=CACHED_STATEMENTS)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=" + ("OFF" if mode == "off" else "FULL"))
    db.executescript(SCHEMA)
    columns.migrate(db)  # reconciliation's column chunks (switch/journal/columns.py)
    attach_archive(db, path)  # retention moves old finished payments there (archive.py)
    return db


def _database_path(db: sqlite3.Connection) -> str:
    """The main database's file, for log lines ("" for an in-memory one or on an error:
    a log line's detail never stops the journal)."""
    try:
        return main_database_file(db)
    except sqlite3.Error:
        return ""


#: Longest meta value written or read (the meta table holds small facts, not records).
MAX_META_VALUE: Final = 256 * 1024


def read_meta(db: sqlite3.Connection, key: str) -> str | None:
    """The journal's meta value under ``key`` (None: never written). Start-up only,
    before the writer thread owns the connection. Raises ValueError for a value no
    version wrote (not text, or past MAX_META_VALUE): the caller decides what a damaged
    fact costs, a start-up must not die of it."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    value = row[0]
    if not isinstance(value, str) or len(value) > MAX_META_VALUE:
        raise ValueError(f"journal meta {key!r}: not text of at most {MAX_META_VALUE:,}"
                         f" characters ({type(value).__name__})")
    return value


def write_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    """Store ``value`` under ``key``, durably as the journal's mode makes commits (the
    connection is in autocommit: the statement is its own transaction). Start-up only."""
    assert len(value) <= MAX_META_VALUE, key
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
               " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def _is_io_error(exc: sqlite3.Error) -> bool:
    """SQLite's I/O error (SQLITE_IOERR or one of its extended codes): the disk failed a
    read, write or fsync, unlike a full disk or a busy lock, which pass."""
    code = getattr(exc, "sqlite_errorcode", None)  # absent when raised by Python code
    if isinstance(code, int):
        return code & 0xFF == sqlite3.SQLITE_IOERR
    return "disk I/O error" in str(exc)  # SQLite's own text for SQLITE_IOERR


@dataclass(frozen=True, slots=True)
class Retention:
    """Archive finished payments older than the idempotency window (``archive.py``)."""

    compactor: Compactor
    #: Wall-clock microseconds (injected: the switch's clock, or a test's).
    wall_us: Callable[[], int]
    every_s: float = 1.0
    #: The run's restart ages (switch.payment.restarts.RestartAges): with a wall step
    #: known, a payment is archived once its true age is past the window, not its wall
    #: age (None: wall ages, as with no step recorded).
    ages: TrueAges | None = None


class Journal:
    """Append-only, group-committed payment journal. Run :meth:`run` in a task group.

    The loop fills the open batch; at the end of the current loop step (so every record
    of one wake-up shares the commit) the batch is committed by one of two writers:

    * ``writer="loop"``: right there, on the loop's own thread, as Redis does with
      ``appendfsync always``. No hand-off, so no cross-thread wake-up and no wait for the
      GIL: on this 2-core VM a wake-up costs 20-30 us of CPU, and a commit beside a busy
      loop took 6x-13x as long as alone (bench/bench_journal_gil.py). Measured side by
      side (bench/bench_rates.py probe, two rounds): 10-23% less CPU per payment at
      1,000-10,000/s and p99 about halved at 8,000-10,000/s. The price: while an fsync is
      slow, the whole loop waits with it (nothing is read, refused or scraped).
    * ``writer="thread"``: a writer thread, started by :meth:`run`, commits while the
      loop goes on; it reports each commit back through the loop's own thread-safe call
      (no per-commit task or worker pool: bench/bench_thread_hop.py). A slow disk then
      delays only the payments waiting on it, and past ``max_pending`` they are refused.

    Either way one writer at a time keeps commits in order, so the listener
    (:meth:`listen`) hears them first-in, first-out. The thread exists in both modes: it
    runs :meth:`maintain` steps (retention), and in ``loop`` mode commits that arrive
    while such a step holds the connection queue behind it there. For a journal in a
    file, a third thread copies the WAL back into it (checkpointer.py), so that no commit
    does it (~15 ms every ~4 MB on the loop).
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        mode: Literal["sync", "group", "off"],
        max_batch: int,
        max_pending: int,
        metrics: JournalMetrics,
        writer: Literal["loop", "thread"],
        commit_window_s: float = 0.0,
        retention: Retention | None = None,
        commit_clock: Callable[[], float] = time.perf_counter,
        stall_warn_s: float = LOOP_STALL_WARN_S,
    ) -> None:
        assert max_batch >= 1 and max_pending >= max_batch
        assert 0.0 <= commit_window_s <= 1.0
        assert writer in ("loop", "thread")
        assert not (writer == "loop" and commit_window_s), "a commit window needs the thread"
        self.writer = writer
        assert stall_warn_s > 0
        self._stall_warn_s = stall_warn_s
        #: writer="loop": when the commit now under way began (commit_clock), else None;
        #: read by the stall watchdog's thread.
        self._commit_started: float | None = None
        self._watchdog_stop = threading.Event()
        self._path = _database_path(db)
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
        self._retention = retention
        #: Times each commit for payswitch_journal_commit_seconds. Read on the writer
        #: thread, where the loop's clock is not to be read; injected like every clock.
        self._commit_clock = commit_clock
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._calls: LoopCalls | None = None  # bound by run(), on the loop
        self._writer: threading.Thread | None = None
        self._busy = False  # a batch is being committed (by the thread, or here)
        self._maintaining = 0  # maintain() steps given to the thread, not yet reported
        self._hand_off_armed = False
        self._listeners: list[Callable[[_Batch], None]] = []
        #: Checkpoints off the committing thread (checkpointer.py); started by run() for a
        #: journal in a file.
        self._checkpointer: Checkpointer | None = None
        self._stopped = anyio.Event()  # closed and drained, or failed
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

    def listen(self, listener: Callable[[_Batch], None]) -> None:
        """Call ``listener(batch)`` on the loop after each commit, in commit order (a
        failed commit too: ``batch.error`` is set). It must not raise."""
        self._listeners.append(listener)

    def append(self, record: JournalRecord) -> _Batch:
        """Queue one record; return the batch whose commit makes it durable.

        Raises ``JournalFull`` past ``max_pending``: callers that must not shed use
        :meth:`write` with ``OnFull.WAIT``.
        """
        return self.append_row(to_row(record))

    def append_row(self, row: Row) -> _Batch:
        """:meth:`append` for a record already in row form (the payment core's, which
        skips building a record object twice per payment)."""
        assert row[2] in KINDS, f"unknown journal record kind {row[2]!r}"
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
        assert 0 < self._pending <= self._max_pending
        if not self._busy and not self._hand_off_armed and self._calls is not None:
            # At the end of this loop step, not now: the rest of this wake-up's records
            # join the same commit.
            self._hand_off_armed = True
            self._calls.soon(self._hand_off)
        return batch

    async def write(self, record: JournalRecord, on_full: OnFull) -> None:
        """Append ``record`` and return once it is durable (immediately in mode ``off``).

        ``on_full`` is the writer's policy when ``max_pending`` records are waiting:
        ``SHED`` raises ``JournalFull``; ``WAIT`` waits for a commit to free room (bounded
        by the writer's own progress) -- for the outcome of something already sent.
        """
        while True:
            try:
                batch = self.append(record)
                break
            except JournalFull:
                if on_full is OnFull.SHED:
                    raise
                await self._room.wait()
        if self.mode == "off":
            return
        await batch.committed.wait()
        if batch.error is not None:
            raise JournalFailed(str(batch.error)) from batch.error

    async def run(self) -> None:
        """The writer. Returns after :meth:`close` once everything is committed; raises
        the commit error after a failed commit (fail-stop).

        With ``retention``, old finished payments move to the archive meanwhile.
        """
        assert self._writer is None, "Journal.run() twice"
        self._calls = loop_calls()
        if self._path:
            self._checkpointer = start_beside(self._db, self._path)
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer",
                                        daemon=True)
        self._writer.start()
        if self.writer == "loop":
            threading.Thread(target=self._watch_stalls, name="journal-watchdog",
                             daemon=True).start()  # ends when run() sets _watchdog_stop
        try:
            self._hand_off()  # records appended before the writer started
            async with anyio.create_task_group() as tg:
                if self._retention is not None:
                    tg.start_soon(self._retain, self._retention)
                await self._stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            self._watchdog_stop.set()
            self._jobs.put(None)
            # Quick unless a commit is under way; a commit cannot be abandoned halfway,
            # and its report must find the loop still running.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._writer.join)
                if self._checkpointer is not None:
                    await anyio.to_thread.run_sync(self._checkpointer.stop)
        if self.failure is not None:
            raise self.failure

    async def maintain(self, step: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``step`` on the journal's connection in the writer thread, between commits."""
        # Without a writer the job would wait for ever: say so instead.
        if self._writer is None or not self._writer.is_alive():
            raise JournalFailed("the journal's writer is not running (Journal.run)")
        job = _Maintenance(step)
        self._maintaining += 1  # until it reports, commits queue behind it on the thread
        self._jobs.put(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # step's own result

    async def close(self) -> None:
        """Stop accepting records; :meth:`run` returns after the last batch commits."""
        self._closed = True
        self._hand_off()

    async def _retain(self, retention: Retention) -> None:
        compactor = retention.compactor
        while True:
            try:
                now_us = retention.wall_us()  # read on the loop: the clock is the loop's
                await self.maintain(functools.partial(compactor.step, now_us=now_us,
                                                        ages=retention.ages))
            except sqlite3.Error as exc:
                if _is_io_error(exc):
                    # The disk under the journal failed (its DELETE, or the archive's
                    # copy): what it holds can no longer be trusted, as after a failed
                    # commit. Fail-stop the same way, never carry on beside it.
                    log.critical("journal retention failed: %s", exc)
                    self._fail_stop(exc, [])
                    return
                # A full archive, a busy lock: retention can wait (the step changed
                # nothing); the journal itself goes on.
                log.error("journal retention step failed: %s", exc)
                compactor.scanned = 0
            # A full step means more may be due at once; otherwise check again later.
            full = compactor.scanned >= compactor.max_rows
            await anyio.sleep(0 if full else retention.every_s)

    # ----------------------------------------------------------------- on the loop

    def _hand_off(self) -> None:
        """Give the oldest batch to the writer if it is idle; note when all is done."""
        self._hand_off_armed = False
        if self._busy or self.failure is not None or self._calls is None:
            return
        if self.writer == "loop" and not self._maintaining:
            self._commit_here()
            return
        if self._batches[0].rows:
            batch = self._batches.popleft()
            if not self._batches:
                self._batches.append(_Batch())
            self._busy = True
            self._jobs.put(batch)
        elif self._closed:
            self._stopped.set()

    def _commit_here(self) -> None:
        """``writer="loop"``: commit the batches waiting now, on this thread, in order.

        Only those waiting when called: what the commits' listeners append meanwhile
        waits for the end of this loop step, as any other record does, so a listener
        that appends on every commit cannot hold the loop here."""
        assert self.writer == "loop" and not self._busy and not self._maintaining
        for _ in range(len(self._batches)):
            batch = self._batches[0]
            if not batch.rows or self.failure is not None:
                break
            self._batches.popleft()
            if not self._batches:
                self._batches.append(_Batch())
            self._busy = True
            started = self._commit_started = self._commit_clock()
            error: Exception | None = None
            try:
                self._commit(batch.rows)
            except Exception as exc:  # disk full, I/O error: fail-stop, never guess
                error = exc
            finally:
                self._commit_started = None
            seconds = self._commit_clock() - started
            if seconds >= self._stall_warn_s:
                log.warning("journal commit held the event loop %.1f s (%s): the disk was "
                            "stalled; nothing was read or answered meanwhile", seconds,
                            self._path)
            if not self._account(batch, error, seconds):
                return  # failed: fail-stop has told every waiter
            self._busy = False
        assert not self._busy
        if self._batches[0].rows and self.failure is None:
            assert self._calls is not None
            self._hand_off_armed = True
            self._calls.soon(self._hand_off)
        elif self._closed and self.failure is None:
            self._stopped.set()

    def _committed(self, batch: _Batch, error: BaseException | None, seconds: float) -> None:
        """The writer thread finished ``batch`` (reported on the loop, in commit order)."""
        if not self._account(batch, error, seconds):
            return
        if not self._commit_window_s:
            self._busy = False
            self._hand_off()
        # else: the writer lets the next batch gather, then calls _writer_ready.

    def _account(self, batch: _Batch, error: BaseException | None, seconds: float) -> bool:
        """A commit ended: count it and tell its waiters. False if it failed (fail-stop)."""
        if error is not None:
            self._failed(batch, error)
            return False
        self._pending -= len(batch.rows)
        assert self._pending >= 0, "journal pending went negative"
        self.commits += 1
        self.committed_records += len(batch.rows)
        if self._checkpointer is not None:
            self._checkpointer.committed(len(batch.rows))
        self._metrics.commit_seconds.observe(seconds)
        self._metrics.batch_size.observe(len(batch.rows))
        batch.committed.set()
        self._tell(batch)
        self._room.set()
        self._room = anyio.Event()
        return True

    def _writer_ready(self) -> None:
        self._busy = False
        self._hand_off()

    def _failed(self, batch: _Batch, error: BaseException) -> None:
        """A commit failed: fail-stop."""
        log.critical("journal commit failed: %s", error)
        self._fail_stop(error, [batch])

    def _fail_stop(self, error: BaseException, failed_first: list[_Batch]) -> None:
        """Fail-stop: ``failed_first`` and every batch queued behind them fail, nothing is
        appended any more, and run() raises ``error``. A batch already with the writer
        reports its own outcome: if it commits, its records are durable and so told.
        The first failure is the one run() raises: the cause, not what followed it."""
        if self.failure is None:
            self.failure = error
        failed = [*failed_first, *(b for b in self._batches if b.rows)]
        self._batches = deque([_Batch()])
        for each in failed:
            each.error = error
            each.committed.set()
            self._tell(each)
        self._room.set()  # waiters for room wake and meet the failure
        self._stopped.set()

    def _tell(self, batch: _Batch) -> None:
        for listener in self._listeners:
            try:
                listener(batch)
            except Exception:  # a listener's bug must not stop the journal's reports
                log.exception("journal commit listener failed")

    def _maintained(self, job: _Maintenance) -> None:
        assert self._maintaining > 0
        self._maintaining -= 1
        job.done.set()
        if not self._busy:
            self._hand_off()  # loop mode: commits resume here; the thread held none

    # ----------------------------------------------------------------- off the loop

    def _watch_stalls(self) -> None:
        """writer="loop": log a commit that has held the loop for ``stall_warn_s``, once
        per commit, while it still holds it: an operator who finds the switch silent
        (no replies, no metrics) learns why from the log."""
        warned: float | None = None
        while not self._watchdog_stop.wait(self._stall_warn_s / 4):
            started = self._commit_started
            if started is None or started == warned:
                continue
            held = self._commit_clock() - started
            if held >= self._stall_warn_s:
                warned = started
                log.error("journal commit has held the event loop %.1f s so far (%s): the "
                          "disk is stalled, and the switch reads and answers nothing until "
                          'it returns (journal.writer = "thread" keeps the loop answering)',
                          held, self._path)

    # ----------------------------------------------------------------- on the writer

    def _write_loop(self) -> None:
        calls = self._calls
        assert calls is not None
        while True:  # until run() puts None
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Maintenance):
                try:
                    job.result = job.step(self._db)
                except BaseException as exc:  # handed to the awaiting task, raised there
                    job.error = exc
                calls.from_thread(self._maintained, job)
                continue
            clock = self._commit_clock
            started = clock()
            error: BaseException | None = None
            try:
                self._commit(job.rows)
            except BaseException as exc:  # disk full, I/O error: fail-stop, never guess
                error = exc
            calls.from_thread(self._committed, job, error, clock() - started)
            if error is None and self._commit_window_s:
                # Let the next batch gather: fewer, larger commits (commit_window_s).
                time.sleep(self._commit_window_s)
                calls.from_thread(self._writer_ready)

    def _commit(self, rows: list[Row]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            last = insert_rows(db, rows)
            # Same transaction: the columns never disagree with the rows.
            columns.append_batch(db, rows, last_seq=last)
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
