"""The journal's WAL is copied into its file by a thread of its own, not inside a commit
(switch/journal/checkpointer.py): a checkpoint held the event loop ~15 ms every ~4 MB."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from switch.journal import Journal, JournalRecord, OnFull, open_database
from switch.journal.checkpointer import (
    CHECKPOINT_EVERY_COMMITS,
    WRITER_CHECKPOINT_PAGES,
    Checkpointer,
)
from switch.model import Party, Payment
from switch.observability.metrics import SwitchMetrics

pytestmark = pytest.mark.anyio


def _intent(i: int) -> JournalRecord:
    payment = Payment(f"P1-{i}", f"k{i}", "qr", 100, "CNY", Party("a"), Party("b"),
                      dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    return JournalRecord.intent(payment, b"h" * 16, i)


def _rows_in_the_file_alone(path: Path, tmp_path: Path) -> int:
    """Journal rows the database file holds without its WAL: what checkpoints copied."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    db = sqlite3.connect(alone)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone() is None:
            return 0  # not even the schema has left the WAL
        return int(db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])
    finally:
        db.close()


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("writer", ["loop", "thread"])
async def test_commits_leave_the_checkpoints_to_the_thread(tmp_path: Path, writer: str) -> None:
    """One commit a record, past the thread's turn but far below the writer's own
    bound: the file holds the rows (the thread copied them), and the writer's automatic
    checkpoint is the larger bound. SQLite's default (1,000 pages, in the commit) copies
    nothing this early: the file alone would be empty."""
    path = tmp_path / "journal.db"
    db = open_database(path, "group")
    journal = Journal(db, mode="group", max_batch=1, max_pending=10, metrics=SwitchMetrics(),
                      writer=writer)  # type: ignore[arg-type]
    records = CHECKPOINT_EVERY_COMMITS + 20
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        for i in range(records):
            await journal.write(_intent(i), OnFull.WAIT)
        checkpointer = journal._checkpointer
        assert checkpointer is not None
        thread: Checkpointer = checkpointer
        await anyio.to_thread.run_sync(_wait_for, lambda: thread.passes >= 1)
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WRITER_CHECKPOINT_PAGES
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        assert pages < 1000, "the test must stay below SQLite's default checkpoint"
        copied = _rows_in_the_file_alone(path, tmp_path)
        await journal.close()
    assert journal.commits == records
    assert 0 < copied <= records
    assert thread.failures == 0
    db.close()
    assert not Path(f"{path}-wal").exists(), "the last connection closed removes the WAL"


def test_a_checkpoint_is_due_after_enough_records_or_commits(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    open_database(path, "group").close()
    checkpointer = Checkpointer(str(path), 2, every_records=100, every_commits=3)  # 2: FULL
    checkpointer.start()
    try:
        checkpointer.committed(1)
        checkpointer.committed(1)
        time.sleep(0.2)
        assert checkpointer.passes == 0, "not due yet"
        checkpointer.committed(1)  # the third commit
        _wait_for(lambda: checkpointer.passes == 1)
        checkpointer.committed(100)  # enough records in one commit
        _wait_for(lambda: checkpointer.passes == 2)
    finally:
        checkpointer.stop()
    assert checkpointer.failures == 0


def test_an_unopenable_file_leaves_checkpoints_to_the_writer(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    checkpointer = Checkpointer(str(tmp_path / "no-such-dir" / "journal.db"), 2)
    checkpointer.start()
    checkpointer.stop()
    assert "checkpoints stay with the writer" in caplog.text
    assert checkpointer.passes == 0


async def test_an_in_memory_journal_has_no_checkpoint_thread() -> None:
    db = open_database(":memory:", "group")
    journal = Journal(db, mode="group", max_batch=10, max_pending=10, metrics=SwitchMetrics(),
                      writer="loop")
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(_intent(1), OnFull.WAIT)
        await journal.close()
    assert journal._checkpointer is None
