"""The journal port of a simulated switch: real SQLite behind a simulated disk.

Records go into the open batch exactly as in the group-commit journal
(switch/journal/store.py): the writer takes the open batch at the end of a loop step (here:
records of the same simulated instant share it), a record that comes later waits for the
next commit, one batch per commit, ``max_batch`` rows at most,
``max_pending`` rows waiting at most (past it :class:`~switch.journal.JournalFull`). The
simulation commits a batch when the disk says it is done: a commit takes ``base_s``,
more inside a stall window; inside a disk-full window, or when an fsync fails, the
commit is rolled back and the journal fails (fail-stop, :class:`~switch.journal.JournalFailed`
from then on), as the real writer does.

What survives a crash is exactly what the disk acknowledged: the rows of batches not yet
committed die with the switch. Acknowledged rows reach SQLite in bulk (:meth:`flush`,
before anyone reads the database: a restart's replay, the final checks): the same rows
in the same order as one transaction per batch would give, at a fraction of the cost (a
transaction per batch was a quarter of a simulated payment's CPU).
"""

from __future__ import annotations

import math
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from switch.journal import JournalFailed, JournalFull
from switch.journal.records import INTENT, Row
from switch.journal.store import insert_rows
from switch.sim.schedule import DiskFault

#: A commit (fsync included) on a healthy disk.
COMMIT_BASE_S: Final = 0.0003
#: Acknowledged rows buffered before they are written to SQLite in one transaction.
FLUSH_ROWS: Final = 20_000


class Batch:
    __slots__ = ("handed_at", "rows", "scheduled")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.scheduled = False
        #: When the writer took it (its commit started); inf while it is the open batch.
        self.handed_at = math.inf


class SimJournal:
    """The core's JournalPort; ``schedule(batch, at)`` asks the simulation for a commit event."""

    def __init__(self, db: sqlite3.Connection, schedule: Callable[[Batch, float], None],
                 now: Callable[[], float], *, max_batch: int = 1024,
                 max_pending: int = 50_000) -> None:
        self._db = db
        self._schedule = schedule
        self._now = now
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._batches: deque[Batch] = deque()
        self._committing: Batch | None = None
        self.pending = 0
        self._durable: list[Row] = []
        #: The newest intent row per payment among the first ``_indexed`` of ``_durable``
        #: (see unflushed_intent).
        self._intents: dict[str, Row] = {}
        self._indexed = 0
        self.failure: str | None = None
        self.commits = 0
        self.records = 0
        #: Extra latency to add to commits that start before the given time (stalls).
        self.stall_until = 0.0
        self.stall_s = 0.0

    def append(self, row: Row) -> object | None:
        if self.failure is not None:
            raise JournalFailed(self.failure)
        if self.pending >= self.max_pending:
            raise JournalFull(f"journal has {self.pending} records pending (max_pending)")
        batches = self._batches
        if (not batches or len(batches[-1].rows) >= self.max_batch
                or self._now() > batches[-1].handed_at):
            # The real writer takes the open batch at the end of a loop step; a record
            # appended after that (a later simulated instant) waits for the next commit,
            # never joins one already under way.
            batch = Batch()
            batches.append(batch)
        else:
            batch = batches[-1]
        batch.rows.append(row)
        self.pending += 1
        if self._committing is None:  # else _kick has nothing to do: spare the call
            self._kick()
        return batch

    def _kick(self) -> None:
        """One commit at a time, in order, like the single writer."""
        if self._committing is not None or not self._batches:
            return
        batch = self._batches[0]
        self._committing = batch
        now = self._now()
        batch.handed_at = now
        latency = COMMIT_BASE_S + (self.stall_s if now < self.stall_until else 0.0)
        self._schedule(batch, now + latency)

    def commit(self, batch: Batch, error: str | None) -> None:
        """The disk finished ``batch``: write it, or fail it (and everything after it)."""
        assert batch is self._committing and batch is self._batches[0]
        self._batches.popleft()
        self._committing = None
        if error is None:
            self._durable.extend(batch.rows)
            if len(self._durable) >= FLUSH_ROWS:
                self.flush()
            self.pending -= len(batch.rows)
            self.commits += 1
            self.records += len(batch.rows)
            self._kick()
            return
        self.failure = error

    def unflushed_intent(self, payment_id: str) -> Row | None:
        """The newest intent row of ``payment_id`` among the durable rows not yet written to
        SQLite: a reader of the journal must look here too (flushing them for one read
        cost 2% of a simulated hour's CPU). The rows are indexed as they are first asked
        about, each once: walking up to FLUSH_ROWS of them for every acquirer reversal
        cost half a percent of a simulated hour."""
        durable, intents = self._durable, self._intents
        for row in durable[self._indexed:]:  # (pid, key, kind, status, hash, body, at)
            if row[2] == INTENT:
                intents[row[0]] = row  # a later one of the same payment wins
        self._indexed = len(durable)
        return intents.get(payment_id)

    def flush(self) -> None:
        """Write every acknowledged row to SQLite (one transaction)."""
        if not self._durable:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            # The real writer's multi-row INSERTs (switch/journal/store.py): ~15% less CPU
            # per row than executemany's one step per row, and the same rows in order.
            insert_rows(db, self._durable)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._durable.clear()
        self._intents.clear()
        self._indexed = 0

    def failed_batches(self) -> list[Batch]:
        """After a failure: every batch still waiting (each fails with it)."""
        out = list(self._batches)
        self._batches.clear()
        return out


def disk_full(faults: Iterable[DiskFault], now: float) -> bool:
    """Inside a disk-full window: every commit fails (and a restart waits it out)."""
    return any(d.kind == "disk_full" and d.at <= now < d.at + d.duration_s for d in faults)


def disk_error(faults: Iterable[DiskFault], now: float, used: set[object]) -> str | None:
    """The error a commit finishing at ``now`` meets, if any; an fsync failure strikes once
    (``used`` remembers which)."""
    for d in faults:
        if d.kind == "disk_full" and d.at <= now < d.at + d.duration_s:
            return "database or disk is full"
        if d.kind == "fsync_fail" and d.at <= now and d not in used:
            used.add(d)
            return "fsync failed: I/O error"
    return None


def next_disk_error_at(faults: Iterable[DiskFault], now: float, used: set[object]) -> float:
    """The earliest time from which :func:`disk_error` may return an error (at or before
    ``now``: it may now; inf: never again). A commit before it needs no look at ``faults``."""
    at = math.inf
    for d in faults:
        if (d.kind == "disk_full" and now < d.at + d.duration_s) or (
                d.kind == "fsync_fail" and d not in used):
            at = min(at, d.at)
    return at
