"""Regressions for four journal defects.

1. A late ``unknown`` of an archived payment was held by retention for good (and the
   row kept live): the compactor never learned that its payment had finished.
2. An I/O error from retention's DELETE was logged and retention went on, while every
   other journal I/O failure fail-stops.
3. Start-up recovery began an idempotency entry before it knew a route existed: a
   recovered payment with no route kept its key in flight until a restart.
4. No index on ``payment_id``: a lookup by payment id scanned the live journal, and on a
   miss the whole archive.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import anyio
import pytest

from switch.journal import (
    FINAL,
    UNKNOWN,
    Compactor,
    Journal,
    JournalFailed,
    JournalRecord,
    OnFull,
    Retention,
    fold,
    open_database,
    replay,
)
from switch.journal.reader import Recovered, UnfinishedPayment, archive_path
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import first_endpoint, recover
from switch.routing.router import NoRoute, Router
from switch.serve.engine import Engine
from switch.serve.frontcore import FIND_SQL, INTENT_SQL, FrontCore

HOUR_US = 3_600_000_000
NOW_US = 100 * HOUR_US
DAY_S = 24 * 3600


def _payment(pid: str) -> Payment:
    return Payment(pid, "k" + pid, "card", 1250, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def _open(path: Path) -> sqlite3.Connection:
    db = open_database(path, "group")
    db.execute("PRAGMA main.synchronous = OFF")  # durability is not what is tested
    return db


def _add(db: sqlite3.Connection, pid: str, at_us: int, *, final: bool = True) -> Result:
    payment = _payment(pid)
    approved = Result(pid, Status.APPROVED, "00")
    rows = [JournalRecord.intent(payment, b"h", at_us)]
    if final:
        rows.append(JournalRecord.outcome(FINAL, payment, approved, b"h", at_us + 1))
    db.executemany(INSERT, [to_row(r) for r in rows])
    return approved


def _late_unknown(db: sqlite3.Connection, pid: str, at_us: int) -> None:
    unknown = Result(pid, Status.UNKNOWN, "68")
    db.execute(INSERT, to_row(JournalRecord.outcome(UNKNOWN, _payment(pid), unknown, b"h",
                                                    at_us)))


def _compact(db: sqlite3.Connection, compactor: Compactor, now_us: int = NOW_US) -> int:
    moved = 0
    while (step := compactor.step(db, now_us)) > 0 or compactor.scanned >= compactor.max_rows:
        moved += step
    return moved


def _live(db: sqlite3.Connection) -> set[str]:
    return {pid for (pid,) in db.execute("SELECT DISTINCT payment_id FROM main.journal")}


# --- 1. a late unknown of an archived payment -------------------------------------------


@pytest.mark.parametrize("restarted", [False, True], ids=["same-compactor", "after-restart"])
def test_a_late_unknown_of_an_archived_payment_joins_it_in_the_archive(
        tmp_path: Path, restarted: bool) -> None:
    db = _open(tmp_path / "j.db")
    old = NOW_US - 48 * HOUR_US
    approved = _add(db, "P-1", old)
    _add(db, "P-2", old + 10)  # its final is the newest row: it stays live for now
    compactor = Compactor(DAY_S)
    assert _compact(db, compactor) == 2 and _live(db) == {"P-2"}
    # The network's late timeout record of P-1, journaled after P-1 was archived.
    _late_unknown(db, "P-1", NOW_US + HOUR_US)
    _add(db, "P-newest", NOW_US + 2 * HOUR_US)
    if restarted:
        compactor = Compactor(DAY_S)
    # A day later: P-2 and the late unknown are past the window.
    assert _compact(db, compactor, NOW_US + 30 * HOUR_US) == 3
    assert _live(db) == {"P-newest"}, "the late unknown stays live"
    assert compactor.held == 1, "the late unknown is held until a restart"  # P-newest
    everything = fold(db)
    # Read with its payment, and as the reader always reads it: it reopens nothing.
    assert everything.payments["P-1"].result == approved
    assert everything.payments["P-1"].finished and everything.duplicates() == 0
    assert everything.records == 2 + 2 + 1 + 2
    assert replay(db).unfinished == []


def test_a_lone_unknown_whose_payment_is_not_archived_finished_stays_held(
        tmp_path: Path) -> None:
    """Only a payment the archive holds as finished lets its late record go."""
    db = _open(tmp_path / "j.db")
    old = NOW_US - 48 * HOUR_US
    _add(db, "P-open", old, final=False)  # sent, never answered: owed
    _late_unknown(db, "P-open", old + 5)
    _late_unknown(db, "P-stray", old + 10)  # nothing else anywhere: keep it, never guess
    _add(db, "P-young", NOW_US)
    compactor = Compactor(DAY_S)
    assert _compact(db, compactor) == 0
    assert _live(db) == {"P-open", "P-stray", "P-young"} and compactor.held == 2
    assert [u.payment.payment_id for u in replay(db).unfinished] == ["P-open"]


# --- 2. an I/O error from retention's DELETE fail-stops ---------------------------------


def _io_error(coded: bool) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("disk I/O error")
    if coded:  # as SQLite raises it: an extended IOERR code
        error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
        error.sqlite_errorname = "SQLITE_IOERR_WRITE"  # type: ignore[attr-defined]
    return error


class _DeleteFails:
    """The journal's connection, but the live journal's DELETE fails with ``error``."""

    def __init__(self, db: sqlite3.Connection, error: sqlite3.Error) -> None:
        self._db = db
        self._error = error

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("DELETE FROM main.journal"):
            raise self._error
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self._db.executemany(sql, rows)


def _journal(db: Any, writer: Literal["loop", "thread"] = "thread") -> Journal:
    return Journal(cast(sqlite3.Connection, db), mode="group", max_batch=64, max_pending=1000,
                   metrics=SwitchMetrics(), writer=writer,
                   retention=Retention(Compactor(DAY_S), lambda: NOW_US, every_s=0.001))


@pytest.mark.anyio
@pytest.mark.parametrize("coded", [True, False], ids=["sqlite-ioerr", "message-only"])
async def test_an_io_error_from_retentions_delete_fail_stops_the_journal(
        tmp_path: Path, coded: bool, caplog: pytest.LogCaptureFixture) -> None:
    db = _open(tmp_path / "j.db")
    for i in range(5):
        _add(db, f"P-{i}", NOW_US - 48 * HOUR_US + i * 10)
    _add(db, "P-young", NOW_US)
    error = _io_error(coded)
    journal = _journal(_DeleteFails(db, error))
    caplog.set_level(logging.CRITICAL, logger="switch.journal")
    with anyio.fail_after(5):  # before the fix: retention logged and went on for ever
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error") as raised:
            await journal.run()
    assert raised.value is error and journal.failure is error
    with pytest.raises(JournalFailed, match="disk I/O error"):
        journal.append(JournalRecord.intent(_payment("P-after"), b"h", NOW_US))
    assert any("retention" in r.getMessage() and r.levelno == logging.CRITICAL
               for r in caplog.records)
    db.close()


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["loop", "thread"])
async def test_a_full_archive_only_pauses_retention(
        tmp_path: Path, writer: Literal["loop", "thread"]) -> None:
    """The benign case: the archive's disk is full; the live journal is fine, so
    retention waits and the journal goes on committing."""
    db = _open(tmp_path / "j.db")
    for i in range(5):
        _add(db, f"P-{i}", NOW_US - 48 * HOUR_US + i * 10)
    _add(db, "P-young", NOW_US)
    pages = db.execute("PRAGMA archive.page_count").fetchone()[0]
    db.execute(f"PRAGMA archive.max_page_count = {pages}")
    journal = _journal(db, writer)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await anyio.sleep(0.05)  # several retention steps fail on the full archive
            payment = _payment("P-after")
            await journal.write(JournalRecord.intent(payment, b"h", NOW_US), OnFull.SHED)
            await journal.close()
    assert journal.failure is None and "P-after" in _live(db)
    db.close()


# --- 3. recovery with no route ----------------------------------------------------------


def _no_route(payment: Payment) -> Any:
    raise NoRoute(f"no route for {payment.payment_id}")


@pytest.mark.parametrize("status", [Status.SENT, Status.UNKNOWN])
def test_a_recovered_payment_without_a_route_is_answered_unknown_not_left_in_flight(
        status: Status) -> None:
    payment = _payment("P-1")
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    submitted: list[Payment] = []
    recover(Recovered([], [UnfinishedPayment(b"h", payment, status)], 2, 2),
            index=index, resolver=SimpleNamespace(submit=lambda p, *a, **k: submitted.append(p)),  # type: ignore[arg-type]
            standin=None,  # type: ignore[arg-type]
            router=cast(Router, SimpleNamespace(target=_no_route)),
            metrics=SwitchMetrics(), now=10.0, wall_us=NOW_US, retention_s=float(DAY_S),
            resolve_endpoint=first_endpoint)
    assert submitted == []
    entry = index.get(payment.idempotency_key)
    # Kept (a retry must never book it afresh: it was sent), and answered with its
    # current state rather than waiting for a resolution nobody is running.
    assert entry is not None and entry.body_hash == b"h"
    assert not entry.pending, "the key stays in flight until a restart"
    assert entry.result is not None and entry.result.status is Status.UNKNOWN
    assert entry.result.payment_id == "P-1"


def test_recovery_without_a_route_leaves_a_known_result_alone() -> None:
    """A reversal re-journaled after an approval (reopened): the key's approved answer
    stays what the client was told."""
    payment = _payment("P-1")
    approved = Result("P-1", Status.APPROVED, "00")
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    index.begin(payment.idempotency_key, b"h", 1.0)
    index.complete(payment.idempotency_key, approved)
    recover(Recovered([], [UnfinishedPayment(b"h", payment, Status.SENT)], 2, 2),
            index=index, resolver=SimpleNamespace(submit=None),  # type: ignore[arg-type]
            standin=None,  # type: ignore[arg-type]
            router=cast(Router, SimpleNamespace(target=_no_route)),
            metrics=SwitchMetrics(), now=10.0, wall_us=NOW_US, retention_s=float(DAY_S),
            resolve_endpoint=first_endpoint)
    entry = index.get(payment.idempotency_key)
    assert entry is not None and entry.result == approved and not entry.pending


def test_a_recovered_payment_with_a_route_stays_in_flight_for_the_resolver() -> None:
    payment = _payment("P-1")
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    submitted: list[Payment] = []
    route = SimpleNamespace(network="card")
    router = SimpleNamespace(target=lambda p: SimpleNamespace(endpoints=["card"]),
                             route=lambda endpoint, target: route)
    recover(Recovered([], [UnfinishedPayment(b"h", payment, Status.UNKNOWN)], 2, 2),
            index=index, resolver=SimpleNamespace(submit=lambda p, *a, **k: submitted.append(p)),  # type: ignore[arg-type]
            standin=None,  # type: ignore[arg-type]
            router=cast(Router, router),
            metrics=SwitchMetrics(), now=10.0, wall_us=NOW_US, retention_s=float(DAY_S),
            resolve_endpoint=first_endpoint)
    entry = index.get(payment.idempotency_key)
    assert submitted == [payment] and entry is not None and entry.pending


# --- 4. lookups by payment id use an index ----------------------------------------------


def _plan(db: sqlite3.Connection, sql: str) -> str:
    return " | ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, ("P-1",)))


@pytest.mark.parametrize("sql", [FIND_SQL, INTENT_SQL], ids=["find", "intent"])
def test_a_lookup_by_payment_id_uses_the_index_live_and_archived(
        tmp_path: Path, sql: str) -> None:
    db = _open(tmp_path / "j.db")
    for schema in ("main", "archive"):
        plan = _plan(db, sql.format(schema=schema))
        assert "USING INDEX journal_payment_id" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # newest first straight from the index
    db.close()


OLD_SCHEMA = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    record BLOB NOT NULL,
    at_us INTEGER NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _indexes(db: sqlite3.Connection, schema: str) -> list[str]:
    return [name for (name,) in db.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type = 'index'"
        " AND tbl_name = 'journal' AND sql IS NOT NULL")]


@pytest.mark.anyio
async def test_a_journal_from_before_the_index_gains_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    for file in (path, archive_path(path)):  # both written by the code before the index
        old = sqlite3.connect(file)
        old.executescript(OLD_SCHEMA)
        old.close()
    old = sqlite3.connect(path)
    approved = _add(old, "P-1", NOW_US - 48 * HOUR_US)
    _add(old, "P-2", NOW_US)
    old.commit()
    old.close()
    for _ in range(2):  # idempotent: a second open finds it and changes nothing
        db = _open(path)
        assert _indexes(db, "main") == _indexes(db, "archive") == ["journal_payment_id"]
        db.close()
    db = _open(path)
    _compact(db, Compactor(DAY_S))
    assert _live(db) == {"P-2"}
    db.close()
    front = FrontCore(cast(Engine, SimpleNamespace()), str(path))
    try:
        assert await front.find("P-1") == (approved, "kP-1")  # from the archive
        assert await front.find("P-404") is None
    finally:
        front.close()
