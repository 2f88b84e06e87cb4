"""Retention keeps every payment the idempotency window still remembers, and a failed
step strands nothing.

The ``max_keys`` bound once counted rows, two per payment; a payment with an ``unknown``
or a stand-in's advice has three, so the live journal kept fewer payments than the index
remembered: a restart forgot keys the running switch still answered (a retry then booked
twice), and a reversal of an archived original answered 00 without reversing. A step that
failed (archive disk full) left its payments behind the cursor until a restart.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from switch import reasons
from switch.journal import (
    ADVICE,
    FINAL,
    UNKNOWN,
    Compactor,
    JournalRecord,
    fold,
    open_database,
    replay,
)
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status
from switch.payment.idempotency import IdempotencyIndex
from switch.serve.engine import Engine
from switch.serve.frontcore import FrontCore

HOUR_US = 3_600_000_000
NOW_US = 100 * HOUR_US
DAY_S = 24 * 3600


def _open(path: Path) -> sqlite3.Connection:
    db = open_database(path, "group")
    # Each test writes its rows one payment at a time; durability of the live journal is
    # not what is tested (the archive's move keeps its own synchronous=FULL).
    db.execute("PRAGMA main.synchronous = OFF")
    return db


def _payment(pid: str) -> Payment:
    return Payment(pid, "k" + pid, "card", 1250, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def _add(db: sqlite3.Connection, pid: str, at_us: int, shape: str = "plain") -> Result:
    """One approved payment journaled as ``shape``: ``plain`` (intent, final),
    ``unknown`` (a timeout resolved later: intent, unknown, final), ``advised`` (a stand-in
    approval and its advice) or ``reversed`` (approved, then reversed by the ISO 8583 door:
    intent, final, intent, final). Returns the result the client was last told."""
    payment = _payment(pid)
    approved = Result(pid, Status.APPROVED, "00", stood_in=shape == "advised")
    rows = [JournalRecord.intent(payment, b"h", at_us)]
    if shape == "unknown":
        rows.append(JournalRecord.outcome(UNKNOWN, payment, Result(pid, Status.UNKNOWN, "68"),
                                          b"h", at_us + 1))
    rows.append(JournalRecord.outcome(FINAL, payment, approved, b"h", at_us + 2))
    if shape == "advised":
        rows.append(JournalRecord.outcome(ADVICE, payment, approved, b"h", at_us + 3))
    if shape == "reversed":
        reversed_ = Result(pid, Status.REVERSED, "00")
        rows.append(JournalRecord.intent(payment, b"h", at_us + 3))
        rows.append(JournalRecord.outcome(FINAL, payment, reversed_, b"h", at_us + 4))
        approved = reversed_
    db.executemany(INSERT, [to_row(r) for r in rows])
    return approved


def _compact(db: sqlite3.Connection, compactor: Compactor, now_us: int = NOW_US) -> int:
    moved = 0
    while (step := compactor.step(db, now_us)) > 0 or compactor.scanned >= compactor.max_rows:
        moved += step
    return moved


def _live(db: sqlite3.Connection) -> set[str]:
    return {pid for (pid,) in db.execute("SELECT DISTINCT payment_id FROM main.journal")}


SHAPES = ("plain", "unknown", "advised", "reversed")
ROWS = {"plain": 2, "unknown": 3, "advised": 3, "reversed": 4}
#: The default, and a count of finals that trails the rows (a few rows per step).
COUNTING = [pytest.param({}, id="counted-at-once"),
            pytest.param({"max_count_rows": 5}, id="counted-a-few-rows-a-step")]


@pytest.mark.parametrize("kwargs", COUNTING)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_newest_max_keys_payments_stay_live_whatever_their_row_count(
        tmp_path: Path, shape: str, kwargs: dict[str, Any]) -> None:
    db = _open(tmp_path / "j.db")
    max_keys = 10
    for i in range(40):  # a busy minute: all inside the window
        _add(db, f"P-{i:02d}", NOW_US - 60_000_000 + i * 10, shape)
    _compact(db, Compactor(DAY_S, max_live_payments=max_keys, **kwargs))
    newest = {f"P-{i:02d}" for i in range(40 - max_keys, 40)}
    # Exactly the newest: each counted once (a reversal's second final is not a second
    # payment), and the bound still holds.
    assert _live(db) == newest
    assert [f.idempotency_key for f in replay(db).finals] == sorted("k" + p for p in newest)
    # Each record read once, archived or live (a reversal's two finals are one payment's:
    # Fold.duplicates() would count them, so count records instead).
    everything = fold(db)
    assert len(everything.payments) == 40 and everything.records == 40 * ROWS[shape]


def test_a_restart_remembers_every_key_the_running_index_remembered(tmp_path: Path) -> None:
    """The running index and the index restored from the live journal, side by side,
    on a mix of payment shapes."""
    db = _open(tmp_path / "j.db")
    max_keys = 12
    running = IdempotencyIndex(retention_s=DAY_S, max_keys=max_keys)
    for i in range(60):
        pid = f"P-{i:02d}"
        result = _add(db, pid, NOW_US - 60_000_000 + i * 10, SHAPES[i % len(SHAPES)])
        running.begin("k" + pid, b"h", float(i))
        running.complete("k" + pid, result)
    _compact(db, Compactor(DAY_S, max_live_payments=max_keys))
    restarted = IdempotencyIndex(retention_s=DAY_S, max_keys=max_keys)
    restarted.restore_all((f.idempotency_key, f.body_hash, f.result, 60.0)
                          for f in replay(db).finals)
    assert set(running) == set(restarted)
    for key in running:
        assert restarted.get(key).result == running.get(key).result  # type: ignore[union-attr]


def test_payments_past_the_window_still_move_however_few(tmp_path: Path) -> None:
    """Counting payments keeps the newest ``max_keys``; the window still moves the rest."""
    db = _open(tmp_path / "j.db")
    for i in range(5):
        _add(db, f"P-old-{i}", NOW_US - 48 * HOUR_US + i * 10, "unknown")
    _add(db, "P-young", NOW_US - HOUR_US, "unknown")
    assert _compact(db, Compactor(DAY_S, max_live_payments=1_000)) == 15
    assert _live(db) == {"P-young"}


class _DeleteFails:
    """The journal's connection, but the live journal's DELETE fails once: the copy to
    the archive committed, then the disk failed."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.failed = False

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("DELETE FROM main.journal") and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self._db.executemany(sql, rows)


def test_a_step_that_fails_on_a_full_archive_is_retried_in_full(tmp_path: Path) -> None:
    db = _open(tmp_path / "j.db")
    old = NOW_US - 48 * HOUR_US
    for i in range(50):
        _add(db, f"P-{i:02d}", old + i * 10, SHAPES[i % len(SHAPES)])
    _add(db, "P-young", NOW_US)
    # A small bound on what is held: failed steps must not fill it with payments that
    # were movable all along, after which retention would stop for good.
    compactor = Compactor(DAY_S, max_rows=40, max_held=5)
    pages = db.execute("PRAGMA archive.page_count").fetchone()[0]
    db.execute(f"PRAGMA archive.max_page_count = {pages}")  # the archive's disk is full
    for _ in range(3):  # what Journal._retain does: log, and step again later
        with pytest.raises(sqlite3.OperationalError, match="full"):
            compactor.step(db, NOW_US)
        assert compactor.held == 0 and compactor.archived == 0
    db.execute("PRAGMA archive.max_page_count = 1000000")  # space freed
    _compact(db, compactor)
    assert _live(db) == {"P-young"} and compactor.held == 0
    assert compactor.archived == db.execute("SELECT COUNT(*) FROM archive.journal"
                                            ).fetchone()[0]
    everything = fold(db)
    rows = sum(ROWS[SHAPES[i % len(SHAPES)]] for i in range(50)) + 2
    assert len(everything.payments) == 51 and everything.records == rows


def test_a_step_cut_between_copy_and_delete_is_finished_by_the_next(tmp_path: Path) -> None:
    db = _open(tmp_path / "j.db")
    old = NOW_US - 48 * HOUR_US
    for i in range(8):
        _add(db, f"P-{i}", old + i * 10, "unknown")
    _add(db, "P-young", NOW_US)
    compactor = Compactor(DAY_S)
    flaky = _DeleteFails(db)
    with pytest.raises(sqlite3.OperationalError, match="I/O"):
        compactor.step(cast(sqlite3.Connection, flaky), NOW_US)
    assert len(_live(db)) == 9  # copied, not deleted: every row in both
    assert compactor.held == 0
    _compact(db, compactor)
    assert _live(db) == {"P-young"} and compactor.archived == 24
    assert fold(db).records == 26 and fold(db).duplicates() == 0


# --- the front doors read archived payments too ---------------------------------------


class _Journal:
    def __init__(self) -> None:
        self.written: list[JournalRecord] = []

    async def write(self, record: JournalRecord, on_full: object) -> None:
        self.written.append(record)


def _front(path: Path, index: IdempotencyIndex) -> tuple[FrontCore, _Journal, list[Payment]]:
    """A FrontCore over fakes of the engine's parts that ``reverse`` touches."""
    journal = _Journal()
    submitted: list[Payment] = []
    route = SimpleNamespace(network="card")
    pipeline = SimpleNamespace(
        index=index,
        router=SimpleNamespace(target=lambda p: SimpleNamespace(endpoints=["card"]),
                               route=lambda endpoint, target: route),
        journal=journal,
        clock=SimpleNamespace(wall_us=lambda: NOW_US),
        resolver=SimpleNamespace(submit=lambda p, digest, r: submitted.append(p)),
    )
    return FrontCore(cast(Engine, pipeline), str(path)), journal, submitted


@pytest.mark.anyio
async def test_a_reversal_and_a_lookup_find_an_archived_payment(tmp_path: Path) -> None:
    """The index can remember a key whose payment is archived (it evicts in the order
    payments first answered; retention and start-up count finals): a reversal must still
    undo it, and ``GET /v1/payments/{id}`` must still find it."""
    path = tmp_path / "j.db"
    db = _open(path)
    approved = _add(db, "P-1", NOW_US - 48 * HOUR_US)
    _add(db, "P-young", NOW_US)
    _compact(db, Compactor(DAY_S))
    assert _live(db) == {"P-young"}
    db.close()
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    index.begin("kP-1", b"h", 0.0)
    index.complete("kP-1", approved)
    front, journal, submitted = _front(path, index)
    try:
        assert await front.find("P-1") == (approved, "kP-1")
        assert await front.reverse("kP-1", amount=1250) == reasons.APPROVED
        assert [p.payment_id for p in submitted] == ["P-1"]  # handed to the resolver
        assert [(r.kind, r.payment_id) for r in journal.written] == [("intent", "P-1")]
        assert await front.find("P-404") is None
    finally:
        front.close()


@pytest.mark.anyio
async def test_a_lookup_prefers_the_live_journal(tmp_path: Path) -> None:
    """A payment archived and then reversed: its newest state is live."""
    path = tmp_path / "j.db"
    db = _open(path)
    _add(db, "P-1", NOW_US - 48 * HOUR_US)
    _add(db, "P-young", NOW_US)
    _compact(db, Compactor(DAY_S))
    reversed_ = Result("P-1", Status.REVERSED, "00")
    db.execute(INSERT, to_row(JournalRecord.outcome(FINAL, _payment("P-1"), reversed_, b"h",
                                                    NOW_US + 1)))
    db.close()
    front, _, _ = _front(path, IdempotencyIndex(retention_s=DAY_S, max_keys=10))
    try:
        assert await front.find("P-1") == (reversed_, "kP-1")
    finally:
        front.close()
