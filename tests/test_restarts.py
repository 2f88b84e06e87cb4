"""Ages in true time across restarts whose wall clock stepped (switch/payment/restarts.py).

The arithmetic is sans-IO: anchors in, ages out. Each case builds the anchors a run of
starts would record -- (boot id, reference clock, wall anchor) -- from a true timeline,
and checks a payment's age against true time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from switch.payment import restarts
from switch.payment.restarts import MAX_ANCHORS, Anchor, RestartAges, at_start

BOOT = "0b7c5a2e-boot"
WALL0 = 1_768_435_200.0


def us(seconds: float) -> int:
    return round(seconds * 1e6)


def test_no_record_ages_on_the_wall_clock() -> None:
    ages = RestartAges([Anchor(BOOT, 1000.0, WALL0)])
    assert ages.step is None and ages.steps == ()
    assert ages.age_s(us(WALL0 + 5), us(WALL0 + 95.5)) == 90.5
    assert ages.age_s(us(WALL0 + 100), us(WALL0 + 95)) == 0.0  # never negative


def test_forward_step_is_subtracted() -> None:
    # Started at reference 1000; a payment at +10 s; crashed at +20, restarted at +25
    # true seconds with the wall clock 484 s ahead (seed 140's step).
    before = Anchor(BOOT, 1000.0, WALL0)
    after = Anchor(BOOT, 1025.0, WALL0 + 25 + 484)
    ages = RestartAges([before, after])
    assert ages.step == pytest.approx(484.0)
    made = us(WALL0 + 10)
    # At the restart: 15 s old in true time (the wall clock alone says 499 s).
    assert ages.age_s(made, us(after.wall_s)) == pytest.approx(15.0, abs=1e-3)
    # 80 s into the new run: 95 s old.
    assert ages.age_s(made, us(after.wall_s + 80)) == pytest.approx(95.0, abs=1e-3)
    # A payment of the new run: its wall age.
    assert ages.age_s(us(after.wall_s + 1), us(after.wall_s + 31)) == pytest.approx(30.0)


def test_backward_step_is_added_back() -> None:
    before = Anchor(BOOT, 1000.0, WALL0)
    after = Anchor(BOOT, 1025.0, WALL0 + 25 - 100)
    ages = RestartAges([before, after])
    assert ages.step == pytest.approx(-100.0)
    made = us(WALL0 + 10)  # past the new run's wall clock: only the old run made it
    assert ages.age_s(made, us(after.wall_s)) == pytest.approx(15.0, abs=1e-3)
    assert ages.age_s(made, us(after.wall_s + 10)) == pytest.approx(25.0, abs=1e-3)


def test_a_stamp_two_runs_could_have_made_takes_the_younger_age() -> None:
    """After a backward step, the running run's stamps overlap the old run's: the age is
    the younger reading (asked later, never early)."""
    before = Anchor(BOOT, 1000.0, WALL0)
    after = Anchor(BOOT, 1025.0, WALL0 + 25 - 100)
    ages = RestartAges([before, after])
    made = us(WALL0 + 10)
    now = us(after.wall_s + 100)  # the running run's clock has passed the stamp
    # The old run's stamp would be 115 s old, the running run's 15 s: 15.
    assert ages.age_s(made, now) == pytest.approx(15.0, abs=1e-3)


def test_several_restarts_subtract_every_later_step() -> None:
    # Runs at true 0-20, 25-40, 50-: steps +300 then +200; payments in each run.
    a0 = Anchor(BOOT, 1000.0, WALL0)
    a1 = Anchor(BOOT, 1025.0, WALL0 + 25 + 300)
    a2 = Anchor(BOOT, 1050.0, WALL0 + 50 + 500)
    ages = RestartAges([a0, a1, a2])
    assert ages.steps == pytest.approx((300.0, 200.0))
    now = us(a2.wall_s + 10)  # true time 60
    assert ages.age_s(us(WALL0 + 5), now) == pytest.approx(55.0, abs=1e-3)  # true 5
    assert ages.age_s(us(WALL0 + 300 + 30), now) == pytest.approx(30.0, abs=1e-3)  # true 30
    assert ages.age_s(us(WALL0 + 500 + 55), now) == pytest.approx(5.0, abs=1e-3)  # true 55


def test_another_boot_id_has_no_known_step() -> None:
    """A reboot restarts the reference clock: no step is known across it, and ages fall
    back to the wall clock there; a later restart within the new boot still counts."""
    a0 = Anchor("old-boot", 50_000.0, WALL0)
    a1 = Anchor(BOOT, 12.0, WALL0 + 600)  # rebooted: reference from ~0 again
    assert RestartAges([a0, a1]).steps == (None,)
    assert RestartAges([a0, a1]).age_s(us(WALL0 + 5), us(WALL0 + 600)) == 595.0
    a2 = Anchor(BOOT, 40.0, WALL0 + 600 + 28 + 400)  # then a +400 s step within the boot
    ages = RestartAges([a0, a1, a2])
    assert ages.steps[0] is None and ages.steps[1] == pytest.approx(400.0)
    # Made before the reboot: its wall age less the one step known after it.
    assert ages.age_s(us(WALL0 + 5), us(a2.wall_s)) == pytest.approx(623.0, abs=1e-3)


def test_no_boot_id_or_a_reference_gone_back_has_no_known_step() -> None:
    assert restarts.step_s(Anchor("", 1.0, WALL0), Anchor("", 5.0, WALL0 + 900)) is None
    assert restarts.step_s(Anchor(BOOT, 9.0, WALL0), Anchor(BOOT, 5.0, WALL0 + 900)) is None


def test_a_stamp_no_kept_run_made_takes_the_youngest_age() -> None:
    a0 = Anchor(BOOT, 1000.0, WALL0)
    a1 = Anchor(BOOT, 1025.0, WALL0 + 25 + 300)
    ages = RestartAges([a0, a1])
    now = us(a1.wall_s + 10)
    # Older than the oldest anchor: made before the +300 s step too.
    assert ages.age_s(us(WALL0 - 20), now) == pytest.approx(55.0, abs=1e-3)
    # In the forward step's gap (no run stamped there): as if before the step.
    assert ages.age_s(us(WALL0 + 100), now) == 0.0


def test_ages_are_rounded_down_to_a_millisecond() -> None:
    ages = RestartAges([Anchor(BOOT, 1.0, WALL0)])
    assert ages.age_s(us(WALL0), us(WALL0) + 89_999_999) == 89.999


def test_start_bookkeeping_round_trips_and_stays_bounded() -> None:
    value, ages, problem = at_start(None, Anchor(BOOT, 1.0, WALL0))
    assert problem is None and ages.step is None
    for i in range(2, MAX_ANCHORS + 10):
        value, ages, problem = at_start(value, Anchor(BOOT, float(i), WALL0 + i + 7))
        assert problem is None
    assert len(restarts.decode_history(value).anchors) == MAX_ANCHORS
    assert ages.step == pytest.approx(0.0)
    assert len(ages.steps) == MAX_ANCHORS - 1


def test_a_forgotten_start_keeps_its_steps_for_the_oldest_payments() -> None:
    """Review finding (stop 22): a +1000 s step, then a crash loop of more than
    MAX_ANCHORS starts. The anchor of the step was forgotten with its step, and a
    payment of the first run (31.6 s old) was aged 1031.6 s: asked at once. The steps
    of forgotten starts are kept as one sum, the most any of them could add."""
    stored, _, _ = at_start(None, Anchor(BOOT, 0.0, WALL0))
    made_us = us(WALL0 + 0.5)  # a QR payment of the first run, at true 0.5 s
    offset = WALL0 + 1000.0  # the wall clock steps +1000 s at the first restart
    t = 0.0
    for _ in range(MAX_ANCHORS):  # a start every 0.5 s (a port in use...)
        t += 0.5
        stored, ages, problem = at_start(stored, Anchor(BOOT, t, offset + t))
        assert problem is None
    assert restarts.decode_history(stored).forgotten_later_s == pytest.approx(1000.0)
    now = t + 0.1
    assert ages.age_s(made_us, us(offset + now)) == pytest.approx(now - 0.5, abs=2e-3)
    # A payment of a kept run is aged by the kept steps alone, as before.
    assert ages.age_s(us(offset + t - 1.0), us(offset + now)) == pytest.approx(1.1, abs=2e-3)


def test_the_forgotten_sum_takes_the_youngest_of_several_forgotten_steps() -> None:
    """Forgotten: a +300 s step, then a -100 s one. A payment made before both is 200 s
    younger than its wall age, one made between them 100 s OLDER: the sum kept is the
    most (the younger age), and a payment older than every kept start gets it."""
    history = restarts.History([])
    walls = [WALL0, WALL0 + 1 + 300, WALL0 + 2 + 200]  # true 0, 1, 2 s
    for i, wall in enumerate(walls):
        history = restarts.started(history, Anchor(BOOT, float(i), wall))
    for i in range(3, MAX_ANCHORS + 3):  # push the three out, no more steps
        history = restarts.started(history, Anchor(BOOT, float(i), WALL0 + 200 + i))
    assert history.forgotten_later_s == pytest.approx(200.0)
    ages = RestartAges(history.anchors, history.forgotten_later_s)
    now = us(WALL0 + 200 + MAX_ANCHORS + 5)
    assert ages.age_s(us(WALL0 + 0.5), now) == pytest.approx(MAX_ANCHORS + 4.5, abs=1e-3)


def _shortfall_s(ages: RestartAges, made_us: int, wall_us: int) -> float:
    """How much younger than its wall age ``age_s`` reads the stamp ``made_us``."""
    return (wall_us - made_us) / 1e6 - ages.age_s(made_us, wall_us)


def test_most_correction_is_zero_without_a_forward_step() -> None:
    a0 = Anchor(BOOT, 1000.0, WALL0)
    assert RestartAges([a0]).most_correction_s() == 0.0
    assert RestartAges([a0, Anchor(BOOT, 1025.0, WALL0 + 25)]).most_correction_s() == 0.0
    # Backward: true ages are longer than wall ages, never shorter.
    backward = RestartAges([a0, Anchor(BOOT, 1025.0, WALL0 + 25 - 100)])
    assert backward.stepped and backward.most_correction_s() == 0.0
    # Unknown (another machine boot): counted as 0.
    unknown = RestartAges([a0, Anchor("other-boot", 5.0, WALL0 + 25 + 484)])
    assert unknown.most_correction_s() == 0.0


def test_most_correction_of_a_forward_step_is_the_step() -> None:
    a0 = Anchor(BOOT, 1000.0, WALL0)
    a1 = Anchor(BOOT, 1025.0, WALL0 + 25 + 484)
    ages = RestartAges([a0, a1])
    assert ages.most_correction_s() == pytest.approx(484.0)
    # The run before the step's stamps are read that much younger; the running run's not.
    now = us(a1.wall_s + 80)
    assert _shortfall_s(ages, us(WALL0 + 10), now) == pytest.approx(484.0, abs=1e-3)
    assert _shortfall_s(ages, us(a1.wall_s + 1), now) == pytest.approx(0.0, abs=1e-3)


def test_most_correction_of_several_steps_is_the_largest_sum_after_a_run() -> None:
    def walls(*steps: float) -> RestartAges:
        anchors, offset = [Anchor(BOOT, 1000.0, WALL0)], 0.0
        for i, step in enumerate(steps, 1):
            offset += step
            anchors.append(Anchor(BOOT, 1000.0 + 25 * i, WALL0 + 25 * i + offset))
        return RestartAges(anchors)

    assert walls(300.0, 200.0).most_correction_s() == pytest.approx(500.0)  # run 0's
    assert walls(300.0, -100.0).most_correction_s() == pytest.approx(200.0)  # run 0's
    assert walls(-100.0, 300.0).most_correction_s() == pytest.approx(300.0)  # run 1's
    assert walls(-100.0, -300.0).most_correction_s() == 0.0  # the running run's
    # Another boot between: the step across it counts 0, the others still add up.
    a0 = Anchor("old-boot", 50_000.0, WALL0)
    a1 = Anchor(BOOT, 12.0, WALL0 + 600)
    a2 = Anchor(BOOT, 40.0, WALL0 + 600 + 28 + 400)
    assert RestartAges([a0, a1, a2]).most_correction_s() == pytest.approx(400.0)


def test_most_correction_counts_the_forgotten_starts_sum() -> None:
    a0 = Anchor(BOOT, 1000.0, WALL0)
    a1 = Anchor(BOOT, 1025.0, WALL0 + 25 + 50)  # a kept +50 s step
    # The forgotten starts' steps add to every kept step after them.
    assert RestartAges([a0, a1], 1000.0).most_correction_s() == pytest.approx(1050.0)
    # A forgotten sum that went back is no correction beyond the kept steps'.
    assert RestartAges([a0, a1], -300.0).most_correction_s() == pytest.approx(50.0)
    assert RestartAges([a0], -300.0).most_correction_s() == 0.0
    # As stored after a crash loop past MAX_ANCHORS starts (the +1000 s step forgotten).
    stored, _, _ = at_start(None, Anchor(BOOT, 0.0, WALL0))
    for i in range(1, MAX_ANCHORS + 1):
        stored, ages, _ = at_start(stored, Anchor(BOOT, i * 0.5, WALL0 + 1000.0 + i * 0.5))
    assert restarts.decode_history(stored).forgotten_later_s == pytest.approx(1000.0)
    assert ages.most_correction_s() == pytest.approx(1000.0)


@pytest.mark.parametrize("seed", range(20))
def test_most_correction_bounds_every_stamps_and_a_stamp_no_run_made_reaches_it(
        seed: int) -> None:
    """No stamp's age falls short of its wall age by more (than the millisecond it is
    rounded down by), and a stamp older than every run (the compactor's old probe, a
    stamp of 1938) falls short by exactly that."""
    import random

    rng = random.Random(seed)
    anchors, true_s, offset = [], 0.0, 0.0
    for run in range(rng.randint(1, 8)):
        if run:
            offset += rng.choice([0.0, rng.uniform(-3600, 3600)])
        boot = BOOT if rng.random() < 0.85 else f"boot-{run}"
        anchors.append(Anchor(boot, 500.0 + true_s, WALL0 + true_s + offset, run + 1))
        true_s += rng.uniform(1, 2000)
    forgotten = rng.choice([None, 0.0, rng.uniform(-3600, 3600)])
    ages = RestartAges(anchors, forgotten)
    most = ages.most_correction_s()
    assert most >= 0.0
    now = us(WALL0 + true_s + offset)
    lo = min(a.wall_s for a in anchors) - 7200
    for made in [rng.uniform(lo, now / 1e6) for _ in range(300)] + [a.wall_s for a in anchors]:
        assert _shortfall_s(ages, us(made), now) <= most + 1e-3 + 1e-6
    probe = -(10**15)
    assert most <= _shortfall_s(ages, probe, now) <= most + 1e-3 + 1e-6


def test_the_first_stored_form_a_bare_list_of_anchors_still_reads() -> None:
    old = f'[["b1", 1.0, {WALL0!r}, 3]]'
    assert restarts.decode_history(old) == restarts.History([Anchor("b1", 1.0, WALL0, 3)])
    value, _, problem = at_start(old, Anchor("b1", 2.0, WALL0 + 1.0, 4))
    assert problem is None and len(restarts.decode_history(value).anchors) == 2


@pytest.mark.parametrize("stored", ["not json", '[["b", 1.0]]', "[" + "1," * 40_000 + "1]"])
def test_an_unreadable_record_starts_afresh(stored: str) -> None:
    value, ages, problem = at_start(stored, Anchor(BOOT, 1.0, WALL0))
    assert problem is not None and "afresh" in problem
    assert restarts.decode_history(value).anchors == [Anchor(BOOT, 1.0, WALL0)]
    assert ages.steps == ()


# ------------------------------------------------------------------------------ the shells


class _FakeClock:
    def __init__(self, reference_s: float | None, wall_s: float) -> None:
        self._anchor = (reference_s, wall_s)

    def anchor(self) -> tuple[float | None, float]:
        return self._anchor


def test_start_up_records_its_anchor_in_the_journal_and_reads_the_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from switch.journal import open_database
    from switch.journal.store import read_meta
    from switch.serve import app

    monkeypatch.setattr(app, "boot_id", lambda: BOOT)
    db = open_database(tmp_path / "journal.db", "sync")
    first = app._record_start(db, cast(Any, _FakeClock(1000.0, WALL0)), 1)
    assert first.step is None
    # Down 25 s; the wall clock came back 484 s ahead.
    second = app._record_start(db, cast(Any, _FakeClock(1025.0, WALL0 + 25 + 484)), 2)
    assert second.step == pytest.approx(484.0)
    assert len(restarts.decode_history(read_meta(db, restarts.META_KEY)).anchors) == 2
    # A clock with no reference (a mock clock): stored with no boot id, no step known.
    third = app._record_start(db, cast(Any, _FakeClock(None, WALL0 + 900)), 3)
    assert third.step is None
    db.close()


def test_a_damaged_meta_value_starts_the_history_afresh_not_the_start_up_dies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A value no version wrote (a blob, or past the meta bound) was an assertion: the
    switch could not start on that journal."""
    from switch.journal import open_database
    from switch.journal.store import read_meta
    from switch.serve import app

    monkeypatch.setattr(app, "boot_id", lambda: BOOT)
    db = open_database(tmp_path / "journal.db", "sync")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
               (restarts.META_KEY, b"\x00not text"))
    with pytest.raises(ValueError, match="restart_anchors"):
        read_meta(db, restarts.META_KEY)
    ages = app._record_start(db, cast(Any, _FakeClock(1000.0, WALL0)), 1)
    assert ages.step is None
    assert "history started afresh" in caplog.text
    assert len(restarts.decode_history(read_meta(db, restarts.META_KEY)).anchors) == 1
    db.close()


def test_a_start_that_recorded_no_anchor_makes_the_step_across_it_unknown() -> None:
    """Review finding (stop 22): run 1 recorded an anchor, run 2 was an older version
    that recorded none and whose wall clock stepped back 100 s, run 3 recorded one with
    no further step. The step measured from run 1 to run 3 (-100 s) is run 2's own; a
    payment made in run 2 was charged it and aged 152 s instead of 52 s: the QR network
    asked at once, 40 s before it allows. The journal's boot counts (2 missing) tell."""
    stored, _, _ = at_start(None, Anchor(BOOT, 0.0, WALL0, 1))
    made_us = int((WALL0 - 100.0 + 250.0) * 1e6)  # run 2, at true 250 s
    _, ages, problem = at_start(stored, Anchor(BOOT, 301.0, WALL0 - 100.0 + 301.0, 3))
    assert problem is None and ages.step is None
    wall_us = int((WALL0 - 100.0 + 302.0) * 1e6)  # true 302 s
    assert ages.age_s(made_us, wall_us) == pytest.approx(52.0, abs=1e-3)
    # Consecutive starts keep their known step.
    _, consecutive, _ = at_start(stored, Anchor(BOOT, 301.0, WALL0 - 100.0 + 301.0, 2))
    assert consecutive.step == pytest.approx(-100.0)


def test_boot_id_is_read_or_empty(tmp_path: Path) -> None:
    from switch.clock import boot_id

    path = tmp_path / "boot_id"
    path.write_text("6f1c2d3e-aaaa-bbbb-cccc-0123456789ab\n")
    assert boot_id(str(path)) == "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab"
    assert boot_id(str(tmp_path / "missing")) == ""


def test_the_clock_anchors_a_reference_only_on_the_real_clock() -> None:
    import trio
    import trio.testing

    from switch.clock import Clock

    async def anchor() -> tuple[float | None, float]:
        return Clock().anchor()

    reference, wall = trio.run(anchor)
    assert reference is not None and wall > 0
    mocked, _ = trio.run(anchor, clock=trio.testing.MockClock())
    assert mocked is None


def test_recovery_keeps_the_youngest_keys_at_the_bound_after_a_backward_step() -> None:
    """simulate --vary-config seed 1284: the finals came oldest first by wall stamp, so
    a run after a backward step (75 s) sorted before the run it followed, and at the
    max_keys bound its keys, the youngest, were the ones evicted: a retry of one with
    another body was approved as a new payment. Oldest first in true time, as the
    running index held them, the youngest stay."""
    from switch.journal.reader import FinalRecord, Recovered
    from switch.model import Result, Status
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.idempotency import IdempotencyIndex
    from switch.payment.resolver import recover

    a0 = Anchor(BOOT, 1000.0, WALL0, 1)
    a1 = Anchor(BOOT, 1040.0, WALL0 + 40 - 75, 2)  # down at 38 s; wall -75 s
    a2 = Anchor(BOOT, 1060.0, WALL0 + 60 - 75, 3)  # down at 52 s; no step
    ages = RestartAges([a0, a1, a2])
    assert ages.stepped
    # Run 1 answered keys at 10..30 s (true time); run 2 at 45 and 50 s, stamped 75 s
    # behind: by wall stamp they come first.
    finals = [FinalRecord(f"run2-{t}", b"h", Result(f"P2-{t}", Status.APPROVED, "00"),
                          us(WALL0 + t - 75)) for t in (45, 50)]
    finals += [FinalRecord(f"run1-{t}", b"h", Result(f"P1-{t}", Status.APPROVED, "00"),
                           us(WALL0 + t)) for t in (10, 20, 30)]
    index = IdempotencyIndex(retention_s=600, max_keys=3)
    recover(Recovered(finals, [], 3, 5), index=index, resolver=cast(Any, None),
            standin=cast(Any, None), router=cast(Any, None), metrics=SwitchMetrics(),
            now=70.0, wall_us=us(a2.wall_s + 10), retention_s=600.0,
            resolve_endpoint=lambda payment, target: "", ages=ages)
    assert sorted(index) == ["run1-30", "run2-45", "run2-50"]


def test_recovery_restores_the_idempotency_window_in_true_time() -> None:
    """Review finding (stop 22): the window was restored on the wall clock. After a
    +1000 s step, a key answered 10 s before the crash read as 1010 s old and, with a
    600 s window, was forgotten: the client's retry would have been a new payment."""
    from switch.journal.reader import FinalRecord, Recovered
    from switch.model import Result, Status
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.idempotency import IdempotencyIndex
    from switch.payment.resolver import recover

    a0 = Anchor(BOOT, 1000.0, WALL0)
    a1 = Anchor(BOOT, 1030.0, WALL0 + 30 + 1000)  # down 10 s after the payment; +1000 s
    ages = RestartAges([a0, a1])
    answered = FinalRecord("key-1", b"h", Result("P-1", Status.APPROVED, "00"), us(WALL0 + 20))
    for used, kept in ((None, []), (ages, ["key-1"])):
        index = IdempotencyIndex(retention_s=600, max_keys=10)
        recover(Recovered([answered], [], 2, 2), index=index, resolver=cast(Any, None),
                standin=cast(Any, None), router=cast(Any, None), metrics=SwitchMetrics(),
                now=50.0, wall_us=us(a1.wall_s + 1), retention_s=600.0,
                resolve_endpoint=lambda payment, target: "", ages=used)
        assert list(index) == kept
