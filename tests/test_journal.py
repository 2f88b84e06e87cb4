"""The journal: group commit batches, replay rebuilds finals and unfinished payments."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
import traceback
from pathlib import Path

import anyio
import pytest

from switch.journal import (
    FINAL,
    INTENT,
    Journal,
    JournalFailed,
    JournalFull,
    JournalRecord,
    OnFull,
    RecordKind,
    open_database,
    replay,
)
from switch.journal.records import to_row
from switch.journal.store import MAX_ROWS_PER_INSERT, insert_rows
from switch.model import Party, Payment, Result, Status
from switch.observability.metrics import SwitchMetrics

pytestmark = pytest.mark.anyio
#: Both writers (switch/journal/store.py, Journal): the loop's own thread and a thread.
each_writer = pytest.mark.parametrize("writer", ["loop", "thread"])


def _payment(i: int) -> Payment:
    return Payment(
        f"P1-{i}",
        f"k{i}",
        "qr",
        100,
        "CNY",
        Party("a"),
        Party("b"),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def _row(i: int, kind: RecordKind, status: Status) -> JournalRecord:
    if kind == INTENT:
        return JournalRecord.intent(_payment(i), b"h" * 16, i)
    return JournalRecord.outcome(kind, _payment(i), Result(f"P1-{i}", status, "00"), b"h" * 16, i)


@each_writer
async def test_group_commit_shares_commits_and_replay_rebuilds(tmp_path: Path, writer: str) -> None:
    db = open_database(tmp_path / "j.db", "group")
    assert replay(db).boot_count == 1
    journal = Journal(db, mode="group", max_batch=1000, max_pending=10_000, metrics=SwitchMetrics(),
                      writer=writer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        async with anyio.create_task_group() as writers:
            for i in range(300):
                writers.start_soon(journal.write, _row(i, INTENT, Status.SENT), OnFull.SHED)
        async with anyio.create_task_group() as writers:
            for i in range(200):  # 100 payments stay unfinished
                writers.start_soon(journal.write, _row(i, FINAL, Status.APPROVED), OnFull.WAIT)
        await journal.close()
    assert journal.committed_records == 500
    assert journal.commits < 50, "concurrent writers should share commits"
    recovered = replay(db)
    assert recovered.boot_count == 2
    assert len(recovered.finals) == 200
    assert sorted(u.payment.payment_id for u in recovered.unfinished) == sorted(
        f"P1-{i}" for i in range(200, 300)
    )


async def test_pending_records_are_bounded(tmp_path: Path) -> None:
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=2, max_pending=4, metrics=SwitchMetrics(),
                      writer="loop")
    for i in range(4):
        journal.append(_row(i, INTENT, Status.SENT))  # no writer running: they pile up
    with pytest.raises(JournalFull, match="max_pending"):
        journal.append(_row(5, INTENT, Status.SENT))


@each_writer
async def test_wait_policy_waits_for_a_commit_instead_of_refusing(
    tmp_path: Path, writer: str
) -> None:
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=2, max_pending=2, metrics=SwitchMetrics(),
                      writer=writer)
    journal.append(_row(0, INTENT, Status.SENT))
    journal.append(_row(1, INTENT, Status.SENT))
    with pytest.raises(JournalFull):
        await journal.write(_row(2, FINAL, Status.APPROVED), OnFull.SHED)
    async with anyio.create_task_group() as tg:
        async def start_writer_later() -> None:
            await anyio.sleep(0.01)
            assert journal.committed_records == 0  # still waiting for room, not refused
            tg.start_soon(journal.run)

        tg.start_soon(start_writer_later)
        with anyio.fail_after(10):
            await journal.write(_row(2, FINAL, Status.APPROVED), OnFull.WAIT)
        await journal.close()
    assert journal.committed_records == 3


@each_writer
async def test_the_writer_reports_every_commit_in_order_on_the_loop(
    tmp_path: Path, writer: str
) -> None:
    """The engine completes payments from the listener: it must hear every batch once,
    in commit order, after the batch is durable, on the loop's own thread."""
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=3, max_pending=1000, metrics=SwitchMetrics(),
                      writer=writer)
    loop_thread = threading.get_ident()
    heard: list[tuple[list[str], int, bool]] = []
    journal.listen(lambda batch: heard.append(
        ([row[0] for row in batch.rows], threading.get_ident(), batch.committed.is_set())))
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        async with anyio.create_task_group() as writers:
            for i in range(20):
                writers.start_soon(journal.write, _row(i, INTENT, Status.SENT), OnFull.SHED)
        await journal.close()
    in_seq_order = [pid for (pid,) in db.execute("SELECT payment_id FROM journal ORDER BY seq")]
    assert [pid for pids, _, _ in heard for pid in pids] == in_seq_order
    assert sorted(in_seq_order) == sorted(f"P1-{i}" for i in range(20))
    assert all(thread == loop_thread and durable for _, thread, durable in heard)
    assert len(heard) == journal.commits and journal.committed_records == 20
    assert all(len(pids) <= 3 for pids, _, _ in heard), "max_batch bounds a commit"


async def test_a_commit_window_gathers_more_records_per_commit(tmp_path: Path) -> None:
    async def commits_for(window_s: float, name: str) -> int:
        db = open_database(tmp_path / name, "group")
        journal = Journal(db, mode="group", max_batch=1000, max_pending=1000,
                          metrics=SwitchMetrics(), writer="thread",
                          commit_window_s=window_s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for i in range(30):  # one record per loop step: each could be its own commit
                journal.append(_row(i, INTENT, Status.SENT))
                await anyio.sleep(0.001)
            await journal.close()
        assert journal.committed_records == 30
        return journal.commits

    assert await commits_for(0.05, "window.db") < await commits_for(0.0, "none.db")


@each_writer
async def test_maintenance_runs_on_the_writer_between_commits(tmp_path: Path, writer: str) -> None:
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=8, max_pending=1000, metrics=SwitchMetrics(),
                      writer=writer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(_row(0, INTENT, Status.SENT), OnFull.SHED)
        count = await journal.maintain(
            lambda conn: conn.execute("SELECT count(*) FROM journal").fetchone()[0])
        with pytest.raises(sqlite3.OperationalError):
            await journal.maintain(lambda conn: conn.execute("SELECT nothing FROM nowhere"))
        await journal.close()
    assert count == 1
    with pytest.raises(JournalFailed, match="not running"):  # no writer: no silent wait
        await journal.maintain(lambda conn: None)


async def test_the_loop_writer_commits_on_the_loops_thread(tmp_path: Path) -> None:
    """writer="loop": every commit runs on the loop's thread (no hand-off), writer="thread"
    on another: the difference the two modes exist for."""
    threads: dict[str, set[int]] = {}
    for writer in ("loop", "thread"):
        db = open_database(tmp_path / f"{writer}.db", "group")
        journal = Journal(db, mode="group", max_batch=4, max_pending=1000,
                          metrics=SwitchMetrics(), writer=writer)  # type: ignore[arg-type]
        commit = journal._commit
        seen = threads[writer] = set()

        def spy(rows: list[object], commit=commit, seen=seen) -> None:  # type: ignore[no-untyped-def]
            seen.add(threading.get_ident())
            commit(rows)  # type: ignore[arg-type]

        journal._commit = spy  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for i in range(10):
                await journal.write(_row(i, INTENT, Status.SENT), OnFull.SHED)
            await journal.close()
        assert journal.committed_records == 10
    assert threads["loop"] == {threading.get_ident()}
    assert threading.get_ident() not in threads["thread"] and len(threads["thread"]) == 1


async def test_records_a_listener_appends_commit_at_the_next_loop_step(tmp_path: Path) -> None:
    """writer="loop": what a commit's listener appends (the core journals a payment's next
    step from there) is committed too, in order, but not from inside that commit: the loop
    gets its step back between commits."""
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=1000, max_pending=1000,
                      metrics=SwitchMetrics(), writer="loop")
    stack_depths: list[int] = []
    follow_ups = iter(range(100, 120))

    def listener(batch: object) -> None:
        stack_depths.append(len(traceback.extract_stack()))
        i = next(follow_ups, None)
        if i is not None:
            journal.append(_row(i, INTENT, Status.SENT))  # one more record per commit

    journal.listen(listener)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(_row(0, INTENT, Status.SENT), OnFull.SHED)
        with anyio.fail_after(10):
            while journal.committed_records < 21:
                await anyio.sleep(0.001)
        await journal.close()
    assert len(stack_depths) == 21
    assert max(stack_depths) - min(stack_depths) <= 6, "commits nested inside commits"
    in_seq_order = [pid for (pid,) in db.execute("SELECT payment_id FROM journal ORDER BY seq")]
    assert in_seq_order == ["P1-0"] + [f"P1-{i}" for i in range(100, 120)]


async def test_a_loop_commit_waits_behind_a_maintenance_step(tmp_path: Path) -> None:
    """writer="loop": while a maintain() step holds the connection on the writer thread,
    a commit must not run beside it on the loop; it queues behind the step there, and
    commits return to the loop once the step has reported."""
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=1000, max_pending=1000,
                      metrics=SwitchMetrics(), writer="loop")
    step_started = threading.Event()
    release_step = threading.Event()
    committed_during_step: list[int] = []

    def slow_step(conn: sqlite3.Connection) -> int:
        step_started.set()
        assert release_step.wait(10)
        committed_during_step.append(journal.committed_records)
        return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(_row(0, INTENT, Status.SENT), OnFull.SHED)
        result: list[int] = []

        async def maintain() -> None:
            result.append(await journal.maintain(slow_step))

        tg.start_soon(maintain)
        with anyio.fail_after(10):
            while not step_started.is_set():
                await anyio.sleep(0.001)
        journal.append(_row(1, INTENT, Status.SENT))
        await anyio.sleep(0.05)  # many loop steps: a loop commit would have run by now
        assert journal.committed_records == 1, "a commit ran beside the maintenance step"
        release_step.set()
        with anyio.fail_after(10):
            await journal.write(_row(2, INTENT, Status.SENT), OnFull.SHED)
        await journal.close()
    assert result == [1] and committed_during_step == [1]
    assert journal.committed_records == 3


async def test_a_stalled_loop_commit_is_logged_while_it_lasts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """writer="loop": a commit stuck on the disk freezes the loop, so the loop cannot say
    so; the watchdog thread does, during the stall, naming the journal's file. A fast
    commit logs nothing."""
    db = open_database(tmp_path / "j.db", "group")
    journal = Journal(db, mode="group", max_batch=100, max_pending=1000,
                      metrics=SwitchMetrics(), writer="loop", stall_warn_s=0.1)
    commit = journal._commit
    logged_during_the_stall: list[bool] = []

    def stalled(rows: list[object]) -> None:
        if len(logged_during_the_stall) == 0:  # the second commit is fast
            time.sleep(0.5)  # the loop's thread, as an fsync on a stalled disk holds it
            logged_during_the_stall.append(any(
                "has held the event loop" in r.getMessage() for r in caplog.records))
        commit(rows)  # type: ignore[arg-type]

    journal._commit = stalled  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="switch.journal")
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(_row(0, INTENT, Status.SENT), OnFull.SHED)
        stall_lines = len(caplog.records)
        await journal.write(_row(1, INTENT, Status.SENT), OnFull.SHED)
        await journal.close()
    assert logged_during_the_stall == [True]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("has held the event loop" in m for m in messages) == 1
    assert any(m.startswith("journal commit held the event loop 0.") for m in messages)
    assert all(str(tmp_path / "j.db") in m for m in messages)
    assert len(caplog.records) == stall_lines, "the fast commit logged"


@pytest.mark.parametrize("count", [0, 1, 2, 3, 255, 256, 257, 300, 1000])
def test_a_batch_is_inserted_in_order_in_few_statements(tmp_path: Path, count: int) -> None:
    # Few statements: each one releases and re-takes the GIL once (store.insert_rows). Per
    # row, as executemany does, a busy event loop made a 1,000-row commit take 0.5 s.
    db = open_database(tmp_path / "j.db", "group")
    rows = [to_row(_row(i, INTENT, Status.SENT)) for i in range(count)]
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    db.execute("BEGIN")
    last = insert_rows(db, rows)
    db.execute("COMMIT")
    db.set_trace_callback(None)
    inserts = [s for s in statements if s.startswith("INSERT INTO journal")]
    assert len(inserts) == -(-count // MAX_ROWS_PER_INSERT)  # one per 256 rows, rounded up
    assert last == count
    stored = db.execute("SELECT seq, payment_id FROM journal ORDER BY seq").fetchall()
    assert [pid for _, pid in stored] == [f"P1-{i}" for i in range(count)]
    assert [seq for seq, _ in stored] == list(range(1, count + 1))


@pytest.mark.parametrize(("statuses", "twice"), [
    ((Status.APPROVED, Status.REVERSED), 0),  # an acquirer's 0400 after the approval
    ((Status.APPROVED, Status.APPROVED), 2),  # counted by payment id and by key
    ((Status.DECLINED, Status.REVERSED), 2),
    ((Status.REVERSED, Status.REVERSED), 2),
])
def test_an_approval_reversed_since_is_not_booked_twice(
        statuses: tuple[Status, Status], twice: int) -> None:
    # The ISO 8583 door re-journals the intent, then the reversal's final follows: every
    # such payment was counted by the audits as booked twice.
    from switch.journal.reader import Fold

    payment = _payment(1)
    folded = Fold()
    for at, status in enumerate(statuses):
        folded.add(JournalRecord.intent(payment, b"h", 10 * at + 1))
        folded.add(JournalRecord.outcome(
            FINAL, payment, Result(payment.payment_id, status, "00"), b"h", 10 * at + 2))
    assert folded.duplicates() == twice
    assert folded.payments[payment.payment_id].result.status is statuses[-1]  # type: ignore[union-attr]


def test_a_restart_restores_the_keys_the_running_index_held() -> None:
    # The running index orders keys by first answer (an unknown counts); the restart
    # ordered them by final. A payment resolved long after its unknown then pushed out,
    # at the max_keys bound, a key the switch still answered from.
    from switch.journal import UNKNOWN
    from switch.journal.reader import Fold, recovered_from
    from switch.payment.idempotency import IdempotencyIndex
    from switch.payment.resolver import recover

    slow, quick = _payment(1), _payment(2)
    records = [
        JournalRecord.intent(slow, b"h", 1_000_000),
        JournalRecord.outcome(UNKNOWN, slow, Result(slow.payment_id, Status.UNKNOWN, "68"),
                              b"h", 2_000_000),
        JournalRecord.intent(quick, b"h", 3_000_000),
        JournalRecord.outcome(FINAL, quick, Result(quick.payment_id, Status.APPROVED, "00"),
                              b"h", 4_000_000),
        JournalRecord.outcome(FINAL, slow, Result(slow.payment_id, Status.REVERSED, "00"),
                              b"h", 90_000_000),
    ]
    running = IdempotencyIndex(retention_s=3600, max_keys=1)
    for record in records:  # as the core drives the index
        if record.kind == "intent":
            running.begin(record.idempotency_key, b"h", record.at_us / 1e6)
        else:
            running.complete(record.idempotency_key, Result(record.payment_id,
                                                            Status(record.status), "00"))
    folded = Fold()
    for record in records:
        folded.add(record)
    restored = IdempotencyIndex(retention_s=3600, max_keys=1)
    recover(recovered_from(folded, 2), index=restored, resolver=None, standin=None,  # type: ignore[arg-type]
            router=None, metrics=SwitchMetrics(), now=100.0, wall_us=100_000_000,  # type: ignore[arg-type]
            retention_s=3600.0, resolve_endpoint=lambda payment, target: "")
    assert list(restored) == list(running) == [quick.idempotency_key]
