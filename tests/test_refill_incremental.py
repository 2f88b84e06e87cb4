"""The running switch's refill reads its journal incrementally (switch/journal/reader.py,
``OpenFold``; app.py's ``backlog``).

The resolver takes back what overflowed its queue by reading the journal's unfinished
payments. That read folded the whole live journal every time: seconds per refill at
millions of rows, again and again, exactly while an outage's backlog drained. Now each
refill folds only the rows since the last one and keeps only the payments that may still
be unfinished. It must give what a whole fold gives, through reopened payments (a reversal
re-journals an intent after a final), late unknowns and advices, and retention moving
finished payments to the archive between refills.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.journal import (
    ADVICE,
    FINAL,
    INTENT,
    UNKNOWN,
    Compactor,
    JournalRecord,
    fold,
    open_database,
    replay,
)
from switch.journal.reader import ARCHIVE_SCHEMA, OpenFold, UnfinishedPayment, unfinished_of
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status

PIDS = [f"P{i}" for i in range(6)]
NOW_US = 10**15  # long after every record: retention may move any finished payment


def _payment(pid: str, amount: int = 100) -> Payment:
    return Payment(pid, "k" + pid, "card", amount, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


class World:
    """A live journal (with its archive) written one record at a time."""

    def __init__(self) -> None:
        self.db = open_database(":memory:", "off")
        self.at_us = 1_000_000

    def write(self, pid: str, kind: str, status: Status = Status.APPROVED,
              digest: bytes = b"h", amount: int = 100, stood_in: bool = False) -> None:
        self.at_us += 1000
        payment = _payment(pid, amount)
        if kind == INTENT:
            record = JournalRecord.intent(payment, digest, self.at_us)
        else:
            result = Result(pid, status, "00" if status is Status.APPROVED else "05",
                            stood_in=stood_in and status is Status.APPROVED)
            record = JournalRecord.outcome(kind, payment, result, digest,  # type: ignore[arg-type]
                                           self.at_us)
        self.db.execute(INSERT, to_row(record))

    def whole(self) -> list[UnfinishedPayment]:
        """What a whole fold of the live journal gives (the old refill)."""
        return unfinished_of(fold(self.db, live_only=True))

    def archive(self, pid: str) -> bool:
        """Move every live record of ``pid`` to the archive, as retention moves a payment
        finished (and a late record of one already there); never the newest row."""
        live = fold(self.db, live_only=True).payments.get(pid)
        if live is None:
            return False
        archived_final = self.db.execute(
            f"SELECT 1 FROM {ARCHIVE_SCHEMA}.journal WHERE payment_id = ? AND kind = ?",
            (pid, FINAL)).fetchone() is not None
        finished = live.finished and not live.reopened
        late = live.intent == b"" and live.outcome_kind != FINAL and archived_final
        if not (finished or late):
            return False
        newest = self.db.execute("SELECT MAX(seq) FROM main.journal").fetchone()[0]
        seqs = [s for (s,) in self.db.execute(
            "SELECT seq FROM main.journal WHERE payment_id = ?", (pid,))]
        if newest in seqs:
            return False  # SQLite would hand its seq out again
        marks = ",".join("?" * len(seqs))
        self.db.execute(f"INSERT OR IGNORE INTO {ARCHIVE_SCHEMA}.journal"
                        f" SELECT * FROM main.journal WHERE seq IN ({marks})", seqs)
        self.db.execute(f"DELETE FROM main.journal WHERE seq IN ({marks})", seqs)
        return True


_KINDS = st.sampled_from([INTENT, INTENT, FINAL, FINAL, UNKNOWN, ADVICE])
_STATUS = st.sampled_from([Status.APPROVED, Status.DECLINED, Status.REVERSED,
                           Status.FAILED])
_RECORD = st.tuples(st.just("record"), st.sampled_from(PIDS), _KINDS, _STATUS,
                    st.sampled_from([b"h", b"h", b"g"]), st.integers(1, 3), st.booleans())
_OPS = st.lists(st.one_of(
    _RECORD, _RECORD, _RECORD, _RECORD,
    st.tuples(st.just("refill")),
    st.tuples(st.just("archive"), st.sampled_from(PIDS)),
    st.tuples(st.just("compact")),
    st.tuples(st.just("restart")),
), max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_an_incremental_refill_gives_what_a_whole_fold_gives(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Random journals: intents (a second one reopens a finished payment), finals of every
    status (a reversal after an approval), late unknowns, advices, digests and bodies that
    change, archival of finished payments between refills (by hand and by the real
    compactor), restarts seeding the state from the replay's fold. After every refill the
    incremental state gives the same unfinished payments as a whole fold: the same
    payments, body hashes, statuses and bodies, in the same order."""
    world = World()
    state = OpenFold()
    compactor = Compactor(1.0, max_live_payments=1, max_rows=7)
    for op in ops:
        if op[0] == "record":
            _, pid, kind, status, digest, amount, stood_in = op
            world.write(pid, kind, status, digest, amount, stood_in)
        elif op[0] == "archive":
            world.archive(op[1])
        elif op[0] == "compact":
            compactor.step(world.db, NOW_US)
        elif op[0] == "restart":
            state = OpenFold()
            recovered = replay(world.db, backlog=state)
            assert recovered.unfinished == world.whole()
            compactor = Compactor(1.0, max_live_payments=1, max_rows=7)
        state.update(world.db)
        assert state.unfinished() == world.whole()
        # Only what may still be unfinished is kept.
        assert not any(h.finished and not h.reopened for h in state.payments.values())


def test_a_payment_reopened_after_its_final_was_dropped_is_read_as_a_whole_fold_does() -> None:
    world = World()
    state = OpenFold()
    world.write("P1", INTENT)
    world.write("P1", FINAL, Status.APPROVED)
    world.write("P2", INTENT)
    state.update(world.db)
    assert [u.payment.payment_id for u in state.unfinished()] == ["P2"]
    assert "P1" not in state.payments  # finished: not kept
    # A late unknown never reopens a finished payment ...
    world.write("P1", UNKNOWN, Status.UNKNOWN)
    state.update(world.db)
    assert state.unfinished() == world.whole()
    assert "P1" not in state.payments
    # ... a reversal's re-journaled intent does: sent again, and in its first record's
    # place (before P2), as the whole fold has it.
    world.write("P1", INTENT)
    state.update(world.db)
    assert [(u.payment.payment_id, u.status) for u in state.unfinished()] == [
        ("P1", Status.SENT), ("P2", Status.SENT)]
    assert state.unfinished() == world.whole()
    world.write("P1", FINAL, Status.REVERSED)
    state.update(world.db)
    assert state.unfinished() == world.whole()
    assert list(state.payments) == ["P2"]


def test_a_kept_payment_finished_and_archived_between_refills_is_gone() -> None:
    world = World()
    state = OpenFold()
    world.write("P1", INTENT)
    world.write("P1", UNKNOWN, Status.UNKNOWN)
    state.update(world.db)
    assert [u.status for u in state.unfinished()] == [Status.UNKNOWN]
    world.write("P1", FINAL, Status.REVERSED)  # resolved ...
    world.write("P2", INTENT)
    assert world.archive("P1")  # ... and moved before the next refill read its final
    state.update(world.db)
    assert state.unfinished() == world.whole()
    assert list(state.payments) == ["P2"]


def test_a_seed_from_the_replay_saves_the_first_refill_a_whole_read() -> None:
    world = World()
    for i in range(50):
        world.write(f"F{i}", INTENT)
        world.write(f"F{i}", FINAL)
    world.write("U", INTENT)
    world.write("U", UNKNOWN, Status.UNKNOWN)
    state = OpenFold()
    replay(world.db, backlog=state)
    assert list(state.payments) == ["U"] and state.last_seq == 102
    read: list[str] = []
    world.db.set_trace_callback(read.append)
    state.update(world.db)
    world.db.set_trace_callback(None)
    assert state.unfinished() == world.whole()
    # Only U's own records and the rows after the replay were read.
    assert not any("seq > 0" in sql for sql in read)
    assert any("payment_id IN ('U')" in sql for sql in read), read


def test_memory_stays_bounded_finished_payments_are_not_kept() -> None:
    """Rounds of traffic, each refilled: the state holds the open payments only, however
    many finished before (a persistent whole fold, as the simulator's, held them all)."""
    world = World()
    state = OpenFold()
    compactor = Compactor(1.0, max_live_payments=100, max_rows=10_000)
    n = 0
    for round_ in range(20):
        for _ in range(500):
            n += 1
            world.write(f"F{n}", INTENT)
            world.write(f"F{n}", FINAL)
        world.write(f"U{round_}", INTENT)
        world.write(f"U{round_}", UNKNOWN, Status.UNKNOWN)
        if round_ >= 2:  # resolve an older unknown
            world.write(f"U{round_ - 2}", FINAL, Status.REVERSED)
        compactor.step(world.db, NOW_US)
        state.update(world.db)
        assert len(state.payments) <= 2
        assert len(state._first) == len(state.payments)
    assert state.unfinished() == world.whole()
    assert [u.payment.payment_id for u in state.unfinished()] == ["U18", "U19"]
    assert state.last_seq >= 2 * n


def test_a_refill_reads_only_the_rows_since_the_last_one(tmp_path: Path) -> None:
    """The cost of a refill follows what was journaled since the last one, not the
    journal: counted in SQLite's virtual-machine steps on the reader's connection."""
    path = tmp_path / "j.db"
    world = World()
    world.db.close()
    world.db = open_database(path, "off")
    for i in range(5000):
        world.write(f"F{i}", INTENT)
        world.write(f"F{i}", FINAL)
    world.write("U", INTENT)
    state = OpenFold()
    assert [u.payment.payment_id for u in state.read(path)] == ["U"]  # a whole read
    for i in range(50):
        world.write(f"G{i}", INTENT)
        world.write(f"G{i}", FINAL)
    world.write("V", INTENT)

    def steps(read: object) -> tuple[int, list[str]]:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        original = sqlite3.connect

        def counting(*args: object, **kwargs: object) -> sqlite3.Connection:
            db = original(*args, **kwargs)  # type: ignore[arg-type]
            db.set_progress_handler(tick, 100)
            return db

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sqlite3, "connect", counting)
            got = read(path)  # type: ignore[operator]
        return count[0], [u.payment.payment_id for u in got]

    incremental, got = steps(state.read)
    whole, expected = steps(lambda p: unfinished_of(fold(open_database(p, "off"),
                                                         live_only=True)))
    assert got == expected == ["U", "V"]
    assert incremental * 20 < whole, (incremental, whole)


def test_a_failed_read_starts_over_from_the_whole_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = open_database(path, "off")
    payment = _payment("P1")
    db.execute(INSERT, to_row(JournalRecord.intent(payment, b"h", 1)))
    state = OpenFold()
    assert len(state.read(path)) == 1
    db.execute(INSERT, to_row(JournalRecord("P1", "kP1", FINAL, Status.APPROVED, b"h",
                                            b"not msgpack", 2)))
    with pytest.raises(msgspec.DecodeError):
        state.read(path)
    assert state.last_seq == 0 and not state.payments
    db.execute("DELETE FROM journal WHERE record = ?", (b"not msgpack",))
    db.execute(INSERT, to_row(JournalRecord.outcome(
        FINAL, payment, Result("P1", Status.APPROVED, "00"), b"h", 3)))
    assert state.read(path) == []
