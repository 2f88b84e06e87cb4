"""Retention: finished payments past the window move to the archive; readers still see
them, start-up does not read them (issue 11 defect 8), and no record is lost or doubled."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import anyio
import pytest

from switch.journal import (
    ADVICE,
    FINAL,
    Compactor,
    Journal,
    JournalRecord,
    OnFull,
    Retention,
    fold,
    open_database,
    read,
    replay,
)
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status

HOUR_US = 3_600_000_000
NOW_US = 100 * HOUR_US


def _payment(pid: str) -> Payment:
    return Payment(pid, "k" + pid, "qr", 100, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def _add(db: sqlite3.Connection, pid: str, at_us: int, *, final: bool = True,
         stood_in: bool = False, advised: bool = False) -> None:
    payment = _payment(pid)
    rows = [JournalRecord.intent(payment, b"h", at_us)]
    result = Result(pid, Status.APPROVED, "00", stood_in=stood_in)
    if final:
        rows.append(JournalRecord.outcome(FINAL, payment, result, b"h", at_us + 1))
    if advised:
        rows.append(JournalRecord.outcome(ADVICE, payment, result, b"h", at_us + 2))
    db.executemany(INSERT, [to_row(r) for r in rows])


def _compact(db: sqlite3.Connection, compactor: Compactor, now_us: int = NOW_US) -> int:
    moved = 0
    while (step := compactor.step(db, now_us)) > 0 or compactor.scanned >= compactor.max_rows:
        moved += step
    return moved


def _live(db: sqlite3.Connection) -> list[str]:
    return sorted({pid for (pid,) in db.execute("SELECT payment_id FROM main.journal")})


def test_old_finished_payments_move_and_every_reader_still_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = open_database(path, "group")
    old = NOW_US - 48 * HOUR_US
    _add(db, "P-old", old)
    _add(db, "P-open", old + 10, final=False)  # sent, never answered: still owed
    _add(db, "P-standin", old + 20, stood_in=True)  # advice not delivered: still owed
    _add(db, "P-advised", old + 30, stood_in=True, advised=True)
    _add(db, "P-young", NOW_US - HOUR_US)  # inside the 24 h window
    compactor = Compactor(24 * 3600)
    assert _compact(db, compactor) == 5  # P-old (2 records) and P-advised (3)
    assert _live(db) == ["P-open", "P-standin", "P-young"]
    assert compactor.held == 2  # seen, owing something
    # Start-up reads the live journal only ...
    recovered = replay(db)
    assert recovered.records == 5
    assert [f.idempotency_key for f in recovered.finals] == ["kP-standin", "kP-young"]
    assert [u.payment.payment_id for u in recovered.unfinished] == ["P-open"]
    assert [a.payment.payment_id for a in recovered.pending_advices] == ["P-standin"]
    # ... every other reader reads both, each payment once.
    everything = fold(db)
    assert sorted(everything.payments) == ["P-advised", "P-old", "P-open", "P-standin",
                                           "P-young"]
    assert everything.duplicates() == 0
    db.close()
    offline = read(path)  # a fresh read-only connection finds the archive beside it
    assert len(offline.payments) == 5 and offline.payments["P-advised"].advised
    assert offline.final_results().keys() == {"kP-old", "kP-standin", "kP-advised", "kP-young"}


def test_a_held_payment_moves_once_its_last_record_is_old(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    old = NOW_US - 48 * HOUR_US
    _add(db, "P-1", old, final=False)  # unknown for 30 hours, then resolved
    _add(db, "P-2", old + 5)
    result = Result("P-1", Status.REVERSED, "00")
    db.execute(INSERT, to_row(JournalRecord.outcome(FINAL, _payment("P-1"), result, b"h",
                                                    old + 30 * HOUR_US)))
    _add(db, "P-young", NOW_US)
    compactor = Compactor(24 * 3600)
    assert _compact(db, compactor) == 2 and _live(db) == ["P-1", "P-young"]
    assert compactor.held == 1
    assert _compact(db, compactor, NOW_US + 12 * HOUR_US) == 2 and _live(db) == ["P-young"]
    assert fold(db).payments["P-1"].status == "reversed" and compactor.held == 0


def test_the_newest_row_stays_so_no_seq_is_ever_reused(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    for i in range(3):
        _add(db, f"P-{i}", NOW_US - 48 * HOUR_US + i * 10)
    _compact(db, Compactor(24 * 3600))
    (archived_max,) = db.execute("SELECT MAX(seq) FROM archive.journal").fetchone()
    assert _live(db) == ["P-2"]  # its final is the newest row: the payment stays whole
    _add(db, "P-9", NOW_US)
    (new_seq,) = db.execute("SELECT MIN(seq) FROM main.journal WHERE payment_id = 'P-9'"
                            ).fetchone()
    assert new_seq > archived_max


def test_a_move_cut_by_a_crash_is_read_once_and_finished_later(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    for i in range(4):
        _add(db, f"P-{i}", NOW_US - 48 * HOUR_US + i * 10)
    # The copy committed, the delete did not (crash between the two transactions).
    db.execute("INSERT INTO archive.journal SELECT * FROM main.journal WHERE payment_id = 'P-0'")
    folded = fold(db)
    assert folded.records == 8 and folded.duplicates() == 0
    _compact(db, Compactor(24 * 3600))  # a fresh compactor after the restart
    assert _live(db) == ["P-3"]
    assert fold(db).records == 8


def test_live_rows_are_bounded_by_max_keys_inside_the_window(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    for i in range(50):
        _add(db, f"P-{i:02d}", NOW_US - 60 + i)  # all inside the window
    _compact(db, Compactor(24 * 3600, max_live_payments=10))
    live = _live(db)
    assert 10 <= len(live) <= 11 and live[-1] == "P-49"
    assert len(fold(db).payments) == 50


@pytest.mark.anyio
async def test_journal_archives_while_it_writes(tmp_path: Path) -> None:
    from switch.observability.metrics import SwitchMetrics

    db = open_database(tmp_path / "j.db", "group")
    wall_us = [NOW_US - 48 * HOUR_US]
    journal = Journal(db, mode="group", max_batch=64, max_pending=1000,
                      metrics=SwitchMetrics(), writer="thread",
                      retention=Retention(Compactor(24 * 3600, max_rows=50),
                                          lambda: wall_us[0], every_s=0.001))
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        for i in range(200):
            payment = _payment(f"P-{i}")
            await journal.write(JournalRecord.intent(payment, b"h", wall_us[0]), OnFull.SHED)
            await journal.write(JournalRecord.outcome(
                FINAL, payment, Result(payment.payment_id, Status.APPROVED, "00"), b"h",
                wall_us[0]), OnFull.WAIT)
            if i == 100:
                wall_us[0] = NOW_US  # a day passes: the first hundred are past the window
        with anyio.fail_after(10):
            while db.execute("SELECT COUNT(*) FROM archive.journal").fetchone()[0] < 202:
                await anyio.sleep(0.01)
        await journal.close()
    assert fold(db).records == 400 and fold(db).duplicates() == 0
    assert replay(db).records == 198


def test_a_column_added_to_the_live_journal_reaches_the_archive(tmp_path: Path) -> None:
    """Room for migrations (e.g. reconciliation columns): archived rows keep them."""
    from switch.journal import attach_archive

    path = tmp_path / "j.db"
    db = open_database(path, "group")
    db.execute("ALTER TABLE main.journal ADD COLUMN recon_ref TEXT")
    attach_archive(db, path)  # what the next open_database does
    _add(db, "P-1", NOW_US - 48 * HOUR_US)
    db.execute("UPDATE main.journal SET recon_ref = 'R-1'")
    _add(db, "P-2", NOW_US)
    _compact(db, Compactor(24 * 3600))
    assert db.execute("SELECT DISTINCT recon_ref FROM archive.journal").fetchall() == [("R-1",)]


def test_an_intent_after_a_final_reopens_the_payment(tmp_path: Path) -> None:
    """The ISO 8583 door re-journals an approved payment's intent to reverse it: replay
    hands it to the resolver again (after a crash too) and retention keeps it live."""
    db = open_database(tmp_path / "j.db", "group")
    old = NOW_US - 48 * HOUR_US
    _add(db, "P-1", old)  # approved ...
    db.execute(INSERT, to_row(JournalRecord.intent(_payment("P-1"), b"h", old + 10)))
    _add(db, "P-young", NOW_US)
    recovered = replay(db)
    assert [u.payment.payment_id for u in recovered.unfinished] == ["P-1"]
    assert recovered.unfinished[0].status is Status.SENT
    assert "kP-1" in {f.idempotency_key for f in recovered.finals}  # a retry still sees it
    assert _compact(db, Compactor(24 * 3600)) == 0  # owed: never archived while reopened
    result = Result("P-1", Status.REVERSED, "00")
    db.execute(INSERT, to_row(JournalRecord.outcome(FINAL, _payment("P-1"), result, b"h",
                                                    old + 20)))
    _add(db, "P-newest", NOW_US + 1)
    assert replay(db).unfinished == []
    assert fold(db).payments["P-1"].status == "reversed"


def test_an_in_memory_journal_has_an_in_memory_archive(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's journal is ``:memory:``; its archive once went to a file named
    ``:memory:.archive`` in the working directory, shared by every run there (and
    committed by accident)."""
    monkeypatch.chdir(tmp_path)
    db = open_database(":memory:", "group")
    assert [file for _, _, file in db.execute("PRAGMA database_list")] == ["", ""]
    db.close()
    assert list(tmp_path.iterdir()) == []
