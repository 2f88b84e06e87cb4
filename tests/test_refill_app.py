"""The running switch's refill (switch/serve/app.py's ``backlog``): seeded by start-up's
replay, then folded on incrementally, it gives the resolver what a whole read of the live
journal gives (less the payments the core still owns)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import anyio
import pytest

from switch.journal import FINAL, UNKNOWN, JournalRecord, open_database
from switch.journal import reader as journal_reader
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import CardRef, Party, Payment, Result, Status
from tests.conftest import make_config, start_switch

pytestmark = pytest.mark.anyio


def _payment(pid: str) -> Payment:
    return Payment(pid, "k" + pid, "card", 2500, "USD", Party("ACCT000002"),
                   Party("MERCH00002"), dt.datetime.now(dt.UTC),
                   card=CardRef("tok-" + pid, "1111", "411111", "2812", "TERM0001",
                                "MERCH0000000001", "5411"))


def _write(db: sqlite3.Connection, pid: str, *kinds: str) -> None:
    payment = _payment(pid)
    for kind in kinds:
        if kind == "intent":
            record = JournalRecord.intent(payment, b"h", 1)
        else:
            status = Status.UNKNOWN if kind == UNKNOWN else Status.DECLINED
            record = JournalRecord.outcome(kind, payment,  # type: ignore[arg-type]
                                           Result(pid, status, "05"), b"h", 2)
        db.execute(INSERT, to_row(record))


async def test_the_switchs_refill_reads_only_what_was_journaled_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.db"
    db = open_database(path, "group")
    for i in range(200):
        _write(db, f"F{i}", "intent", FINAL)
    _write(db, "U1", "intent", UNKNOWN)  # recovered at start-up: the core owns it
    db.close()
    whole_reads: list[object] = []
    real_fold = journal_reader.fold_onto

    def counting_fold(db: sqlite3.Connection, out: journal_reader.Fold,
                      **kwargs: bool) -> journal_reader.Fold:
        if out.last_seq == 0:
            whole_reads.append(out)
        return real_fold(db, out, **kwargs)

    monkeypatch.setattr(journal_reader, "fold_onto", counting_fold)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path))
        assert len(whole_reads) == 1  # the replay
        resolver = switch.app.resolver
        assert resolver is not None and resolver._backlog is not None
        writer = open_database(path, "group")
        _write(writer, "U2", "intent", UNKNOWN)  # journaled while the switch runs
        got = [c[0].payment_id for c in await resolver._backlog()]
        # U1 too, unless the core still owns it or it was resolved already (the refill
        # itself skips what its resolver tracks).
        assert got[-1:] == ["U2"] and set(got) <= {"U1", "U2"}, got
        _write(writer, "U2", FINAL)
        got = [c[0].payment_id for c in await resolver._backlog()]
        assert set(got) <= {"U1"}, got
        writer.close()
        # Two refills, and still the one whole read: the replay's.
        assert len(whole_reads) == 1
        switch.app.request_shutdown()
