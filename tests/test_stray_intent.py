"""A stray intent after a final with nothing to undo reopens nothing, and retention moves
it with its payment (the backstop eb48501 backed out, with what it lacked).

An intent journaled after ``reversed`` (a repeat reversal that raced the resolver), a
decline or a failure is no reversal under way: reopened, every start-up handed the
payment to the resolver again, one more 0400 each time. The fold reopens only after an
approval. For the live journal's fold to read such a payment as a fold of everything
does, retention must never leave the stray intent live without the rest of its payment:
it moves a payment with all its live records, and an intent first met after its payment
was archived follows it there.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from switch.journal import FINAL, INTENT, Compactor, JournalRecord, fold, open_database, replay
from switch.journal.reader import OpenFold, unfinished_of
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status

HOUR_US = 3_600_000_000
NOW_US = 100 * HOUR_US
OLD_US = NOW_US - 48 * HOUR_US
DAY_S = 24 * 3600


def _payment(pid: str) -> Payment:
    return Payment(pid, "k" + pid, "card", 100, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def _write(db: sqlite3.Connection, pid: str, kind: str, at_us: int,
           status: Status = Status.APPROVED) -> None:
    payment = _payment(pid)
    if kind == INTENT:
        record = JournalRecord.intent(payment, b"h", at_us)
    else:
        code = {Status.APPROVED: "00", Status.REVERSED: "00"}.get(status, "05")
        record = JournalRecord.outcome(FINAL, payment, Result(pid, status, code), b"h", at_us)
    db.execute(INSERT, to_row(record))


def _compact(db: sqlite3.Connection, compactor: Compactor) -> int:
    moved = 0
    while (step := compactor.step(db, NOW_US)) > 0 or compactor.scanned >= compactor.max_rows:
        moved += step
    return moved


def _live(db: sqlite3.Connection) -> set[str]:
    return {pid for (pid,) in db.execute("SELECT DISTINCT payment_id FROM main.journal")}


def test_an_intent_after_a_final_with_nothing_to_undo_reopens_nothing(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    for pid, status in (("P-1", Status.REVERSED), ("P-2", Status.DECLINED),
                        ("P-3", Status.APPROVED), ("P-4", Status.FAILED)):
        _write(db, pid, INTENT, NOW_US)
        _write(db, pid, FINAL, NOW_US + 1, status)
    for i, pid in enumerate(("P-1", "P-2", "P-3", "P-4")):
        _write(db, pid, INTENT, NOW_US + 10 + i)
    folded = fold(db)
    assert {pid: h.reopened for pid, h in folded.payments.items()} == {
        "P-1": False, "P-2": False, "P-3": True, "P-4": False}
    # Only the approval has something to undo: the one payment start-up resolves again.
    assert [u.payment.payment_id for u in replay(db).unfinished] == ["P-3"]


def test_a_stray_intent_moves_with_its_payment(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    _write(db, "P-1", INTENT, OLD_US)  # approved, reversed, then a late repeat's intent
    _write(db, "P-1", FINAL, OLD_US + 1)
    _write(db, "P-1", INTENT, OLD_US + 2)
    _write(db, "P-1", FINAL, OLD_US + 3, Status.REVERSED)
    _write(db, "P-1", INTENT, OLD_US + 4)
    _write(db, "P-2", INTENT, OLD_US + 5)  # declined, then a stray intent
    _write(db, "P-2", FINAL, OLD_US + 6, Status.DECLINED)
    _write(db, "P-2", INTENT, OLD_US + 7)
    _write(db, "P-young", INTENT, NOW_US)
    _write(db, "P-young", FINAL, NOW_US + 1)
    assert replay(db).unfinished == []
    assert _compact(db, Compactor(DAY_S)) == 8
    assert _live(db) == {"P-young"}


def test_a_step_never_leaves_a_stray_intent_live_without_its_payment(tmp_path: Path) -> None:
    """The split the incremental refill's property test found: a step's bound cut a
    payment after its decline; the stray intent past it stayed live, read open by the
    live journal's fold, finished by a fold of everything and by the refill's state."""
    db = open_database(tmp_path / "j.db", "group")
    _write(db, "P-0", INTENT, OLD_US)
    _write(db, "P-0", FINAL, OLD_US + 1, Status.DECLINED)
    _write(db, "P-0", INTENT, OLD_US + 2)  # past the first step's two rows
    _write(db, "P-1", INTENT, OLD_US + 3)
    _write(db, "P-1", FINAL, OLD_US + 4)
    _write(db, "P-young", INTENT, NOW_US)
    state = OpenFold()
    state.update(db)
    compactor = Compactor(DAY_S, max_rows=2)
    assert compactor.step(db, NOW_US) == 0  # P-0 waits for its stray intent
    assert _live(db) == {"P-0", "P-1", "P-young"} and compactor.held == 1
    state.update(db)
    whole = unfinished_of(fold(db, live_only=True))
    assert state.unfinished() == whole
    assert [u.payment.payment_id for u in whole] == ["P-young"]
    assert _compact(db, compactor) == 5  # then all of it moves together
    state.update(db)
    assert _live(db) == {"P-young"} and state.unfinished() == unfinished_of(
        fold(db, live_only=True))


def test_an_intent_met_after_its_payment_was_archived_follows_it(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    _write(db, "P-1", INTENT, OLD_US)
    _write(db, "P-1", FINAL, OLD_US + 1, Status.DECLINED)
    _write(db, "P-2", INTENT, OLD_US + 2)
    _write(db, "P-2", FINAL, OLD_US + 3)
    _write(db, "P-3", INTENT, OLD_US + 4)  # open: stays, held
    assert _compact(db, Compactor(DAY_S)) == 4
    # Journaled after its payment moved (a repeat that raced retention): it reopens
    # nothing, and once past the window it follows its payment.
    _write(db, "P-1", INTENT, OLD_US + 10)
    _write(db, "P-young", INTENT, NOW_US)
    assert _compact(db, Compactor(DAY_S)) == 1  # a fresh compactor: a restart
    assert _live(db) == {"P-3", "P-young"}
    everything = fold(db)
    assert everything.payments["P-1"].finished and not everything.payments["P-1"].reopened
    assert everything.records == 7
