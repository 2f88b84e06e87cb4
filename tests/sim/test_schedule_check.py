"""The resolution-schedule check (verify.check_schedule) against the resolver's own rule.

The resolver counts a payment's first delay from the latest moment its network could
first have seen it. Handed over live (the core's unknown), from that hand-over; taken
from the journal (start-up recovery, a refill after the queue overflowed: resolver.py's
``_candidate``), from its receipt plus the payment deadline, or sooner when the journal
shows it seen (its unknown: reader.seen_by_us), and from the restart at the latest for
one made before it. The check holds it to exactly that (verify.resolution_origin):

* counted from the receipt plus the deadline for every payment taken back, a refill of
  an everyday unknown waited the whole deadline more than the core's hand-over would
  have, and the check, which allowed the deadline only across a restart, called it late
  (a 60 s deadline, an overflowing queue: 48 QR payments 57 s "late");
* counted from the unknown as a stand-in for the receipt, the check let a recovered
  payment be up to the deadline (once: the network timeout) later than the rule: a
  resolver 1.5 s past the schedule after a restart went unseen.

Before the check knew recovery's rule at all, a QR payment recovered by it was reported
``unknown-past-schedule`` (seed 25, 60 simulated s at intensity 20, a 60 s deadline:
asked at its restart + 90 s, reported 43.7 s after its first delay, of 38 s allowed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from channels.faults import Fault
from switch.journal import INTENT, UNKNOWN, JournalRecord
from switch.journal.reader import Fold, fold_records, unfinished_of
from switch.journal.records import RecordKind
from switch.model import Party, Payment, Result, Status
from switch.payment import resolver as resolver_module
from switch.payment.resolver import ResolutionQueue, backlog_candidates, first_endpoint
from switch.serve.config import SwitchConfig
from switch.sim.options import SimResult, Violation, sim_config
from switch.sim.saturation import SaturatedSpans
from switch.sim.schedule import Schedule
from switch.sim.simulation import SimOptions, simulate
from switch.sim.verify import UNKNOWN_SLACK_S, check_schedule, resolution_origin

replace = msgspec.structs.replace
QR = sim_config().resolution.qr  # first delay 90 s, max delay 30 s


def config(deadline_s: float, qr_max_delay_s: float | None = None) -> SwitchConfig:
    """The simulator's configuration with an operator's payment deadline (and QR delay)."""
    cfg = sim_config()
    resolution = cfg.resolution
    if qr_max_delay_s is not None:
        resolution = replace(resolution, qr=replace(resolution.qr, max_delay_s=qr_max_delay_s))
    return replace(cfg, resolution=resolution,
                   resilience=replace(cfg.resilience, payment_deadline_s=deadline_s))


def run(options: SimOptions, cfg: SwitchConfig) -> SimResult:
    options.config = cfg
    return simulate(options)


def late(result: SimResult) -> list[Violation]:
    return [v for v in result.violations if v.invariant == "unknown-past-schedule"]


#: QR blackholed for 6 s (its payments go unknown, first inquiry due 90 s on), then a
#: crash 45 s in, the wall clock 300 s ahead at the restart: each unknown is recovered
#: younger than a long deadline (which recovery once counted its first delay from, so
#: from the restart; now from its unknown).
QR_OUTAGE_THEN_CRASH = Schedule(
    10.0, (Fault(kind="blackhole", endpoint="qr", start_s=2.0, duration_s=6.0),),
    ((45.0, 2.0, 300.0),))


@pytest.mark.parametrize(("deadline_s", "qr_max_delay_s"), [(60.0, None), (30.0, 10.0)])
def test_a_payment_recovered_by_the_rule_is_on_schedule(
        deadline_s: float, qr_max_delay_s: float | None) -> None:
    """Before the check knew the rule, 75 QR payments each time "late": 41.6 s of 38 s
    allowed with a 60 s deadline; 27.0 s of 18 s with a 30 s deadline where QR's max
    delay is 10 s (an operator's setting: at 20 s, none)."""
    result = run(SimOptions(seed=5, duration_s=10.0, rate=100.0, schedule=QR_OUTAGE_THEN_CRASH),
                 config(deadline_s, qr_max_delay_s))
    assert result.counters["crashes"] == 1 and result.counters["resolved"] > 50
    assert not result.violations, result.violations[:3]


def test_the_seed_that_showed_it_holds_every_invariant() -> None:
    result = run(SimOptions(seed=25, duration_s=60.0, rate=100.0, intensity=20.0),
                 config(60.0))
    assert result.counters["crashes"] >= 2
    assert not result.violations, result.violations[:3]


@contextmanager
def recovery_forgets_ages() -> Iterator[None]:
    """Recovery hands every payment over as if just made: each restart waits its whole
    first delay again (what ``elapsed_s`` is for), however long ago it was sent."""
    original = resolver_module._candidate

    def candidate(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        return None if found is None else (*found[:4], 0.0, found[5])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "_candidate", candidate)
        yield


def test_a_recovered_payment_truly_late_is_still_found() -> None:
    """QR blackholed until 170 s, a crash at 160 s: the unknowns are recovered 150 s and
    more after their receipt, past deadline + first delay, so the rule asks at once (and
    on schedule after the outage). Planted, they wait 90 s more: late even by the rule's
    allowance, with the same 60 s deadline that allowance is made of."""
    schedule = Schedule(
        10.0, (Fault(kind="blackhole", endpoint="qr", start_s=2.0, duration_s=168.0),),
        ((160.0, 2.0, 300.0),))
    options = SimOptions(seed=5, duration_s=10.0, rate=100.0, schedule=schedule)
    result = run(options, config(60.0))
    assert result.counters["resolved"] > 50 and not result.violations, result.violations[:3]
    with recovery_forgets_ages():
        planted = run(options, config(60.0))
    assert len(late(planted)) > 50, planted.violations[:3]




# ----------------------------------------------- refills: counted from the unknown (gap 1)


def resolver_full_at(monkeypatch: pytest.MonkeyPatch, max_queue: int) -> None:
    monkeypatch.setattr("switch.sim.resolution.MAX_QUEUE", max_queue)


#: QR blackholed from 1 s to 4 s, no crash: its ~75 unknowns overflow a resolver bounded
#: at 20, and refills take them back as the queue drains, from 90 s on.
QR_OUTAGE = Schedule(
    10.0, (Fault(kind="blackhole", endpoint="qr", start_s=1.0, duration_s=3.0),), ())


@contextmanager
def refills_count_from_the_deadline() -> Iterator[None]:
    """Planted: the journal's unknowns ignored (the resolver before reader.seen_by_us):
    a payment taken back counts its first delay from its receipt plus the deadline."""
    original = resolver_module._candidate

    def candidate(unfinished: Any, *args: Any) -> Any:
        return original(replace(unfinished, seen_by_us=0), *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "_candidate", candidate)
        yield


def test_an_unknown_refilled_after_an_overflow_is_asked_on_schedule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 60 s deadline, the refills asked every overflowed QR unknown at its receipt
    + 60 + 90 s, where the core's own hand-over asks at its unknown + 90 s: 48 of them
    57 s "late" (38 s allowed), with no restart to excuse it. Counted from the unknown
    the journal shows, none is; and the check still finds the old rule late."""
    resolver_full_at(monkeypatch, 20)
    options = SimOptions(seed=5, duration_s=10.0, rate=100.0, schedule=QR_OUTAGE)
    result = run(options, config(60.0))
    assert result.counters["resolved"] > 50 and not result.violations, result.violations[:3]
    with refills_count_from_the_deadline():
        planted = run(options, config(60.0))
    assert len(late(planted)) > 30, planted.violations[:3]


# ------------------------------------ recovery: counted from the receipt, not the unknown


@contextmanager
def qr_resolver_late_by(late_s: float) -> Iterator[None]:
    """Planted: every QR payment's first attempt ``late_s`` after its rule's time."""
    original = ResolutionQueue._track

    def track(self: ResolutionQueue, payment: Payment, digest: bytes, route: Any,
              status: Status, elapsed_s: float, now: float) -> None:
        later = late_s if payment.channel == "qr" else 0.0
        original(self, payment, digest, route, status, elapsed_s - later, now)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResolutionQueue, "_track", track)
        yield


def test_a_recovered_payment_a_little_past_its_schedule_is_found() -> None:
    """QR blackholed 1-4 s, the switch down from 6 s to 11 s: its unknowns are recovered
    and asked at their receipt + 3 s (the deadline) + 90 s. Planted 39.5 s later, 1.5 s
    past the 38 s allowed. The check counted from the unknown, ~3 s after the receipt,
    as recovery counted from the receipt then: it allowed ~3 s more and found none."""
    schedule = Schedule(10.0, QR_OUTAGE.faults, ((6.0, 5.0, 0.0),))
    options = SimOptions(seed=2, duration_s=10.0, rate=100.0, intensity=0.0, schedule=schedule)
    result = simulate(options)
    assert result.counters["crashes"] == 1 and result.counters["resolved"] > 50
    assert not result.violations, result.violations[:3]
    allowed = QR.max_delay_s + 3.0 + UNKNOWN_SLACK_S  # the QR route's timeout: 3 s
    with qr_resolver_late_by(allowed + 1.5):
        planted = simulate(options)
    assert len(late(planted)) > 40, planted.violations[:3]


# ------------------------------------------------- the check's origin against the rule

OFFSET_S = 1_767_225_600.0  # the wall clock at virtual 0: 2026-01-01, no step
DEADLINE_S = 60.0


def stamp(t: float) -> int:
    """Virtual time ``t`` on the wall clock, as the switch stamps records."""
    return int((OFFSET_S + t) * 1_000_000)


def qr_payment_made_at(t: float) -> Payment:
    return Payment("P1-1", "k1", "qr", 100, "CNY", Party("a"), Party("b"),
                   dt.datetime.fromtimestamp(OFFSET_S + t, tz=dt.UTC))


def journal(*records: tuple[str, float, bool]) -> Fold:
    """One QR payment made at 10 s, and ``records`` (kind, at, stood in) after it."""
    payment = qr_payment_made_at(10.0)
    rows = [JournalRecord.intent(payment, b"h", stamp(10.0))]
    for kind, at, stood_in in records:
        if kind == INTENT:
            rows.append(JournalRecord.intent(payment, b"h", stamp(at)))
            continue
        status = Status.UNKNOWN if kind == UNKNOWN else Status.APPROVED
        result = Result("P1-1", status, "00", stood_in=stood_in)
        rows.append(JournalRecord.outcome(cast(RecordKind, kind), payment, result, b"h",
                                          stamp(at)))
    return fold_records(rows)


def rule_origin(fold: Fold, taken_at: float, started: float) -> float:
    """When the resolver counts the first delay from, taking the payment over from
    ``fold`` at ``taken_at`` in a run started at ``started`` (resolver.py, for real)."""
    router = SimpleNamespace(target=lambda p: SimpleNamespace(endpoints=("qr",)),
                             route=lambda endpoint, target: endpoint)
    [candidate] = backlog_candidates(
        unfinished_of(fold), router=cast(Any, router), wall_us=stamp(taken_at),
        resolve_endpoint=first_endpoint, owned=lambda key: False,
        sent_within_s=DEADLINE_S, started_us=stamp(started))
    return taken_at - candidate[4]


def check_origin(fold: Fold, since: float, started: float, now: float) -> float:
    def read(at_us: int) -> float:
        return now - (stamp(now) - at_us) / 1e6

    payment = fold.payments["P1-1"].payment
    assert payment is not None
    return resolution_origin(payment, since, fold.payments["P1-1"], read, started,
                             stamp(started), DEADLINE_S)


#: (what the journal shows, first handed over at, the run's start, taken over at, the
#: rule's origin, the check's): the payment made at 10 s, a 60 s deadline.
CASES = {
    # Unknown at 13 s, handed to the resolver once durable, at 13.002 s; overflowed,
    # taken back at 120 s. The rule counts from 13 s (from the deadline, 70 s), the check
    # from the hand-over, as a resolver that had room counts.
    "unknown-refilled": ((("unknown", 13.0, False),), 13.002, 0.0, 120.0, 13.0, 13.002),
    # The same, the switch restarted at 50 s: recovered then, or taken back later.
    "unknown-recovered": ((("unknown", 13.0, False),), 13.002, 50.0, 50.0, 13.0, 13.0),
    "unknown-recovered-refilled": ((("unknown", 13.0, False),), 13.002, 50.0, 200.0,
                                   13.0, 13.0),
    # Crashed before its unknown, recovered at 50 s, before its deadline (70 s): from the
    # restart, taken back later too (from the deadline, a refill at 100 s asked 20 s late).
    "sent-recovered": ((), 50.0, 50.0, 50.0, 50.0, 50.0),
    "sent-recovered-refilled": ((), 50.0, 50.0, 100.0, 50.0, 50.0),
    "sent-recovered-past-its-deadline": ((), 120.0, 120.0, 120.0, 70.0, 70.0),
    # Approved at 10.5 s by its network, reopened by a reversal at 30 s (handed over at
    # 30.01 s), taken back at 40 s: the rule counts from the approval.
    "reopened-refilled": ((("final", 10.5, False), ("intent", 30.0, False)), 30.01, 0.0,
                          40.0, 10.5, 30.01),
    # A stand-in approval: the issuer may first see it in its advice, any time: from the
    # deadline, or the refill (40 s) if sooner, which the check cannot know.
    "reopened-stand-in-refilled": ((("final", 10.5, True), ("intent", 30.0, False)), 30.01,
                                   0.0, 40.0, 40.0, 70.0),
}
Case = tuple[tuple[tuple[str, float, bool], ...], float, float, float, float, float]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_check_counts_from_what_the_rule_counts_from(case: Case) -> None:
    """Never before the rule's origin (a false alarm), and after it only by what the check
    cannot know: a live hand-over's commit, the moment of a refill."""
    records, since, started, taken_at, rule, checked = case
    fold = journal(*records)
    assert rule_origin(fold, taken_at, started) == pytest.approx(rule, abs=1e-3)
    assert check_origin(fold, since, started, now=taken_at + 100.0) == pytest.approx(
        checked, abs=1e-3)


def test_recovery_counts_a_payment_made_before_the_restart_from_its_unknown() -> None:
    """Its unknown (13 s) rather than its receipt plus the deadline (70 s) or the
    restart (50 s): the check held recovery to min(restart, unknown + deadline), 50 s."""
    assert rule_origin(journal(("unknown", 13.0, False)), 50.0, 50.0) == pytest.approx(13.0)


def found(now: float, origin: float, restarts: list[float]) -> bool:
    violations: list[str] = []
    check_schedule("P1-304", now, origin, QR, None, cast(Any, None), restarts,
                   lambda invariant, _s, _d: violations.append(invariant))
    return violations == ["unknown-past-schedule"]


def test_the_allowance_is_the_schedule_from_the_origin_and_no_more() -> None:
    """Seed 25's numbers (P1-304 recovered at 50.78 s). The schedule here: max delay 30 s
    + a 5 s timeout + 5 s slack, from the origin + 90 s, or from the restart if later."""
    restarts = [24.46, 50.78]
    # Seen by its network at 7 s: due at 97 s.
    assert not found(97.0 + 39.9, 7.0, restarts)
    assert found(97.0 + 40.1, 7.0, restarts)
    # Counted from the restart (crashed before its unknown, the deadline past it).
    assert not found(140.78 + 39.9, 50.78, restarts)
    assert found(140.78 + 40.1, 50.78, restarts)
    # First delay over before the restart: from the restart.
    assert not found(50.78 + 39.9, -60.0, restarts)
    assert found(50.78 + 40.1, -60.0, restarts)


# ------------------------------------------ a backlog drained at full capacity (seed 80346)


def test_saturated_spans_join_in_an_instant_and_count_only_their_overlap() -> None:
    spans = SaturatedSpans()
    spans.start("card", 1.0)
    spans.end("card", 2.0)
    spans.start("card", 2.0)  # the next job of a backlog, taken as a worker freed
    spans.end("card", 4.0)
    spans.start("card", 6.0)  # still open
    assert spans.seconds("card", 0.0, 10.0) == pytest.approx(3.0 + 4.0)
    assert spans.seconds("card", 1.5, 3.0) == pytest.approx(1.5)
    assert spans.seconds("card", 4.0, 6.0) == 0.0
    assert spans.seconds("qr", 0.0, 10.0) == 0.0
    spans.end_all(7.0)  # a crash: its workers died with it
    assert spans.seconds("card", 0.0, 10.0) == pytest.approx(3.0 + 1.0)
    spans.end("card", 8.0)  # a worker of no saturated channel: nothing to close
    assert spans.seconds("card", 0.0, 10.0) == pytest.approx(4.0)


def test_the_allowance_grows_by_the_time_every_worker_was_busy_and_only_by_that() -> None:
    """40 s allowed (seed 25's schedule, as above); 30 s more with every worker busy."""
    violations: list[str] = []

    def check(now: float, busy_s: float) -> bool:
        violations.clear()
        check_schedule("P1-1", now, 7.0, QR, None, cast(Any, None), [],
                       lambda invariant, _s, _d: violations.append(invariant),
                       saturated_s=lambda start, end: min(busy_s, end - start))
        return violations == ["unknown-past-schedule"]

    assert not check(97.0 + 69.9, busy_s=30.0)
    assert check(97.0 + 70.1, busy_s=30.0)
    assert check(97.0 + 40.1, busy_s=0.0)  # workers idle while it was due: late


#: Both card endpoints blackholed from 1 s to 9 s: every card payment sent then goes
#: unknown, and each needs a reversal once the networks are back.
CARD_OUTAGE = Schedule(10.0, tuple(
    Fault(kind="blackhole", endpoint=endpoint, start_s=1.0, duration_s=8.0)
    for endpoint in ("card-primary", "card-secondary")), ())


def one_card_worker() -> SwitchConfig:
    cfg = sim_config()
    card = replace(cfg.resolution.card, workers=1, max_delay_s=1.0)
    return replace(cfg, resolution=replace(cfg.resolution, card=card))


def test_a_backlog_drained_at_full_capacity_is_on_schedule() -> None:
    """One card worker drains the outage's reversals one at a time, past the schedule's
    per-payment allowance for the last of them. The check counts the time the worker was
    busy; without it (the check as it was), the same run is "late"."""
    options = SimOptions(seed=3, duration_s=10.0, rate=200.0, schedule=CARD_OUTAGE)
    result = run(options, one_card_worker())
    assert result.counters["resolved"] > 300, result.counters
    assert not result.violations, result.violations[:3]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SaturatedSpans, "seconds", lambda self, channel, start, end: 0.0)
        blind = run(SimOptions(seed=3, duration_s=10.0, rate=200.0, schedule=CARD_OUTAGE),
                    one_card_worker())
    assert len(late(blind)) > 10, blind.violations[:3]
