"""Retention decides by true age when the wall clock stepped across a restart.

A row's ``at_us`` is a stamp on the wall clock of the run that made it. The compactor's
horizon was ``now - retention`` on the running run's wall clock: after a forward step of
2 h across a restart, a payment made before it looked 2 h older than it was and moved to
the archive 2 h before its idempotency window ended. The next start restores the index
from the live journal, so it no longer knew the key, and a client's retry of an
acknowledged payment inside its window was booked a second time. With the run's restart
ages (switch/payment/restarts.py) retention archives a row only once its true age is past
the window; with no step known, or a backward one, it archives exactly as before.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

import anyio
import pytest

from switch.journal import (
    FINAL,
    Compactor,
    Journal,
    JournalRecord,
    OnFull,
    Retention,
    fold,
    open_database,
    replay,
)
from switch.journal.archive import TrueAges
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, Result, Status
from switch.payment.restarts import Anchor, RestartAges

BOOT = "0b7c5a2e-boot"
WALL0 = 1_768_435_200.0  # run A's wall anchor, at true time 0
HOUR = 3600.0
DAY_S = 24 * 3600
STEP = 2 * HOUR  # the wall clock's step across the restart at true time 1 h


def us(seconds: float) -> int:
    return round(seconds * 1e6)


def _open(path: Path) -> sqlite3.Connection:
    db = open_database(path, "group")
    db.execute("PRAGMA main.synchronous = OFF")  # what is tested is the archive's move
    return db


def _add(db: sqlite3.Connection, pid: str, at_us: int) -> None:
    """A finished payment: its intent at ``at_us``, its approval a microsecond later."""
    payment = Payment(pid, "k" + pid, "qr", 100, "CNY", Party("a"), Party("b"),
                      dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    rows = [JournalRecord.intent(payment, b"h", at_us),
            JournalRecord.outcome(FINAL, payment, Result(pid, Status.APPROVED, "00"), b"h",
                                  at_us + 1)]
    db.executemany(INSERT, [to_row(r) for r in rows])


def _compact(db: sqlite3.Connection, compactor: Compactor, now_us: int,
             ages: TrueAges | None) -> int:
    moved = 0
    while ((step := compactor.step(db, now_us, ages=ages)) > 0
           or compactor.scanned >= compactor.max_rows):
        moved += step
    return moved


def _live(db: sqlite3.Connection) -> set[str]:
    return {pid for (pid,) in db.execute("SELECT DISTINCT payment_id FROM main.journal")}


def _restored_keys(db: sqlite3.Connection, ages: RestartAges, now_us: int) -> set[str]:
    """The keys the next start's index holds: the live journal's finals inside the window
    in true time (switch/payment/resolver.py ``recover``)."""
    return {f.idempotency_key for f in replay(db).finals
            if ages.age_s(f.answered_at_us, now_us) < DAY_S}


def _runs(step_s: float, boot_id: str = BOOT) -> RestartAges:
    """Run A from true time 0 at WALL0; run B from true time 1 h, its wall clock
    ``step_s`` ahead of A's (another machine boot with ``boot_id`` != BOOT)."""
    return RestartAges([Anchor(BOOT, 1000.0, WALL0, 1),
                        Anchor(boot_id, 1000.0 + HOUR, WALL0 + HOUR + step_s, 2)])


def _b_wall(true_s: float, step_s: float = STEP) -> int:
    """Run B's wall clock at true time ``true_s``."""
    return us(WALL0 + true_s + step_s)


def _journal_across_the_step(db: sqlite3.Connection, step_s: float = STEP) -> None:
    """P-before made in run A (true 10 s), P-after in run B (true 1 h 100 s), and the
    newest row, which never moves."""
    _add(db, "P-before", us(WALL0 + 10))
    _add(db, "P-after", _b_wall(HOUR + 100, step_s))
    _add(db, "P-last", _b_wall(30 * HOUR, step_s))


def test_a_forward_step_keeps_a_payment_until_its_true_window_ends(tmp_path: Path) -> None:
    db = _open(tmp_path / "j.db")
    _journal_across_the_step(db)
    ages = _runs(STEP)
    compactor = Compactor(DAY_S)
    # 23 h after P-before in true time: 25 h on the stepped wall clock.
    now = _b_wall(10 + 23 * HOUR)
    assert ages.age_s(us(WALL0 + 10), now) == pytest.approx(23 * HOUR)
    assert _compact(db, compactor, now, ages) == 0
    assert _live(db) == {"P-before", "P-after", "P-last"}
    # The next start still knows the key: a retry is answered, not booked again.
    assert "kP-before" in _restored_keys(db, ages, now)
    # A second past its true window it moves; P-after (made in run B) waits for its own.
    assert _compact(db, compactor, _b_wall(10 + DAY_S + 1), ages) == 2
    assert _live(db) == {"P-after", "P-last"}
    assert _compact(db, compactor, _b_wall(HOUR + 100 + DAY_S - 1), ages) == 0
    assert _compact(db, compactor, _b_wall(HOUR + 100 + DAY_S + 1), ages) == 2
    assert _live(db) == {"P-last"}
    everything = fold(db)
    assert len(everything.payments) == 3 and everything.records == 6


class _Asked:
    """The run's ages, noting every stamp whose true age retention asks."""

    def __init__(self, ages: RestartAges) -> None:
        self._ages = ages
        self.asked: list[int] = []

    @property
    def stepped(self) -> bool:
        return self._ages.stepped

    def age_s(self, made_us: int, wall_us: int) -> float:
        self.asked.append(made_us)
        return self._ages.age_s(made_us, wall_us)

    def most_correction_s(self) -> float:
        return self._ages.most_correction_s()


def test_rows_this_run_writes_are_aged_on_its_own_clock(tmp_path: Path) -> None:
    """Rows written after the run's first step are its own: no true age is asked of them,
    and they move on their wall age as before."""
    db = _open(tmp_path / "j.db")
    _add(db, "P-before", us(WALL0 + 10))
    _add(db, "P-after", _b_wall(HOUR + 100))
    ages = _Asked(_runs(STEP))
    compactor = Compactor(DAY_S)
    assert _compact(db, compactor, _b_wall(2 * HOUR), ages) == 0  # the run's first step
    now_made = _b_wall(2 * HOUR + 1)
    _add(db, "P-now", now_made)
    _add(db, "P-newest", _b_wall(40 * HOUR))
    assert _compact(db, compactor, now_made + us(DAY_S) + 2, ages) == 6  # all but the newest
    assert _live(db) == {"P-newest"}
    assert ages.asked and now_made not in ages.asked and now_made + 1 not in ages.asked
    # Past the earlier runs' rows, a step asks no true age at all.
    asked = len(ages.asked)
    _add(db, "P-later", _b_wall(40 * HOUR + 1))
    assert _compact(db, compactor, _b_wall(70 * HOUR), ages) == 2
    assert len(ages.asked) == asked


@pytest.mark.anyio
async def test_the_journal_retains_by_the_ages_it_is_given(tmp_path: Path) -> None:
    """Retention(ages=...) hands the run's ages to every step of the journal's writer."""
    from switch.observability.metrics import SwitchMetrics

    db = _open(tmp_path / "j.db")
    _add(db, "P-ancient", us(WALL0 - 48 * HOUR))  # before every kept run: long past
    _journal_across_the_step(db)
    ages = _runs(STEP)
    now = _b_wall(10 + 23 * HOUR)
    journal = Journal(db, mode="group", max_batch=64, max_pending=1000,
                      metrics=SwitchMetrics(), writer="thread",
                      retention=Retention(Compactor(DAY_S), lambda: now, every_s=0.001,
                                          ages=ages))
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        payment = Payment("P-new", "kP-new", "qr", 100, "CNY", Party("a"), Party("b"),
                          dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        await journal.write(JournalRecord.intent(payment, b"h", now), OnFull.SHED)
        with anyio.fail_after(10):
            while db.execute("SELECT COUNT(*) FROM archive.journal").fetchone()[0] < 2:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # more steps, none of which may move P-before
        await journal.close()
    assert _live(db) == {"P-before", "P-after", "P-last", "P-new"}
    assert "kP-before" in _restored_keys(db, ages, now)


@pytest.mark.parametrize("ages", [
    pytest.param(None, id="no-ages"),
    pytest.param(RestartAges([Anchor(BOOT, 1000.0, WALL0, 1)]), id="first-start"),
    pytest.param(_runs(0.0), id="no-step"),
    pytest.param(_runs(-STEP), id="backward-step"),
    pytest.param(_runs(STEP, "another-boot"), id="step-unknown"),
])
def test_no_step_or_a_backward_one_archives_as_before(
        tmp_path: Path, ages: RestartAges | None) -> None:
    """The same journal, compacted at the same wall times with and without the ages,
    keeps the same payments live at every time (a backward step keeps rows longer than
    their true window, as before: harmless, bounded by max_live_payments)."""
    rng = random.Random(7)
    stamps = sorted(us(WALL0 + rng.uniform(-30 * HOUR, 30 * HOUR)) for _ in range(300))
    dbs = []
    for name in ("with", "without"):
        db = _open(tmp_path / f"{name}.db")
        for i, at in enumerate(stamps):
            _add(db, f"P-{i:03d}", at)
        dbs.append(db)
    with_ages, without = Compactor(DAY_S, max_rows=37), Compactor(DAY_S, max_rows=37)
    for hours in range(0, 60, 3):
        now = us(WALL0 + hours * HOUR)
        moved = _compact(dbs[0], with_ages, now, ages)
        assert moved == _compact(dbs[1], without, now, None)
        assert _live(dbs[0]) == _live(dbs[1])
    assert with_ages.archived == without.archived == 2 * 299


@pytest.mark.parametrize("seed", range(12))
def test_no_row_moves_inside_its_true_window_whatever_the_steps(
        tmp_path: Path, seed: int) -> None:
    """Restarts with random steps (forward, backward, across a machine reboot: unknown),
    payments made in each run: at every time, no archived payment's age is inside the
    window (as the ages read it; in true time when every step is known), every payment
    past it by more than the steps' sizes summed has moved, and none is read twice."""
    rng = random.Random(seed)
    anchors: list[Anchor] = []
    true_s, reference, offset = 0.0, 500.0, 0.0
    db = _open(tmp_path / "j.db")
    made: dict[str, tuple[float, int]] = {}  # payment -> (true time, stamp)
    biggest = 0.0
    for run in range(rng.randint(2, 6)):
        if run:
            step = rng.choice([0.0, rng.uniform(-3 * HOUR, 3 * HOUR)])
            offset += step
            biggest += abs(step)
        boot = BOOT if rng.random() < 0.85 else f"boot-{run}"
        anchors.append(Anchor(boot, reference + true_s, WALL0 + true_s + offset, run + 1))
        for _ in range(rng.randint(5, 60)):
            true_s += rng.uniform(1, 1200)
            pid = f"P-{len(made):04d}"
            made[pid] = (true_s, us(WALL0 + true_s + offset))
            _add(db, pid, made[pid][1])
        true_s += rng.uniform(1, 600)  # down until the restart
    ages = RestartAges(anchors)
    known = all(a.boot_id == BOOT for a in anchors)
    newest = max(made)
    compactor = Compactor(DAY_S, max_rows=rng.choice([3, 50, 2000]))
    start_true = true_s
    for later in sorted(rng.uniform(0, 30 * HOUR) for _ in range(15)):
        now_true = start_true + later
        now = us(WALL0 + now_true + offset)
        _compact(db, compactor, now, ages)
        live = _live(db)
        for pid, (at_true, _) in made.items():
            if pid not in live:  # archived: past its window
                assert ages.age_s(made[pid][1], now) >= DAY_S, pid
                assert not known or now_true - at_true >= DAY_S - 1e-3, pid
            elif pid != newest and now_true - at_true > DAY_S + biggest + 1:
                raise AssertionError(f"{pid} stayed {now_true - at_true - DAY_S:.0f} s late")
    everything = fold(db)
    assert len(everything.payments) == len(made) and everything.records == 2 * len(made)


class _Probed:
    """The run's ages with the correction found as the compactor once found it: the wall
    age less the true age of a stamp no kept run made (1938), which ``age_s`` gives the
    youngest age of any run."""

    def __init__(self, ages: RestartAges, now_us: int) -> None:
        self._ages = ages
        self._now_us = now_us

    @property
    def stepped(self) -> bool:
        return self._ages.stepped

    def age_s(self, made_us: int, wall_us: int) -> float:
        return self._ages.age_s(made_us, wall_us)

    def most_correction_s(self) -> float:
        probe_us = -(10**15)
        return (self._now_us - probe_us) / 1e6 - self._ages.age_s(probe_us, self._now_us)


def test_the_compactor_lowers_its_horizon_by_the_most_correction_and_a_millisecond(
        tmp_path: Path) -> None:
    """The horizon for the earlier runs' rows: the ages' most correction (the step, plus
    the forgotten starts' sum after it), rounded up to a microsecond, plus the
    millisecond ages are rounded down by."""
    db = _open(tmp_path / "j.db")
    _journal_across_the_step(db)
    forgotten = RestartAges([Anchor(BOOT, 1000.0, WALL0, 1),
                             Anchor(BOOT, 1000.0 + HOUR, WALL0 + HOUR + STEP, 2)], 600.0)
    for ages, lowered_us in ((_runs(STEP), us(STEP) + 1000),
                             (forgotten, us(STEP + 600) + 1000)):
        compactor = Compactor(DAY_S)
        assert ages.most_correction_s() == pytest.approx(lowered_us / 1e6 - 1e-3)
        compactor.step(db, _b_wall(2 * HOUR), ages=ages)
        assert compactor._most_correction_us == lowered_us


@pytest.mark.parametrize("seed", range(8))
def test_most_correction_archives_as_the_old_1938_probe_did(tmp_path: Path, seed: int) -> None:
    """Two copies of one journal, compacted at the same times, one with the ages' own
    ``most_correction_s``, the other with the correction probed as before: the same rows
    move at every step."""
    rng = random.Random(seed)
    anchors: list[Anchor] = []
    true_s, offset = 0.0, 0.0
    stamps: list[int] = []
    for run in range(rng.randint(2, 6)):
        if run:
            offset += rng.choice([0.0, rng.uniform(-3 * HOUR, 3 * HOUR)])
        boot = BOOT if rng.random() < 0.85 else f"boot-{run}"
        anchors.append(Anchor(boot, 500.0 + true_s, WALL0 + true_s + offset, run + 1))
        for _ in range(rng.randint(5, 60)):
            true_s += rng.uniform(1, 1200)
            stamps.append(us(WALL0 + true_s + offset))
        true_s += rng.uniform(1, 600)
    ages = RestartAges(anchors, rng.choice([None, rng.uniform(-HOUR, HOUR)]))
    start_now = us(WALL0 + true_s + offset)
    dbs = []
    for name in ("method", "probe"):
        db = _open(tmp_path / f"{name}.db")
        for i, at in enumerate(stamps):
            _add(db, f"P-{i:04d}", at)
        dbs.append(db)
    rows = rng.choice([3, 50, 2000])
    own, probed = Compactor(DAY_S, max_rows=rows), Compactor(DAY_S, max_rows=rows)
    old = _Probed(ages, start_now)
    for later in sorted(rng.uniform(0, 30 * HOUR) for _ in range(15)):
        now = start_now + us(later)
        assert _compact(dbs[0], own, now, ages) == _compact(dbs[1], probed, now, old)
        assert _live(dbs[0]) == _live(dbs[1])
    assert abs(own._most_correction_us - probed._most_correction_us) <= 1000
    assert own.archived == probed.archived
