"""The resolver and card stand-in against a full journal, a slow network and long outages.

Regressions: issue 10 item 3 (a full journal ended ``resolver.run``/``standin.run``), issue
11 defect 5 (card reversals queued behind QR checks sleeping their 90 s first delay) and
defect 6 (unknowns abandoned after 8 attempts, ~11 s, with the gauge at 0).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

from switch.adapters.base import NetworkReply, NotSent
from switch.clock import Clock
from switch.journal import Journal, JournalRecord, fold, open_database
from switch.model import CardRef, Party, Payment, QrRef, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import (
    REFILL_RETRY_S,
    ResolutionConfig,
    ResolutionPolicy,
    ResolutionQueue,
    Resolver,
)
from switch.payment.standin import StandIn, StandInConfig, StandInLimits
from switch.routing.router import Route

pytestmark = pytest.mark.anyio


def _payment(i: int, channel: str = "card") -> Payment:
    refs: dict[str, Any] = {}
    if channel == "card":
        refs["card"] = CardRef("tok", "1111", "411111", "2812", "T1", "M1", "5999", "1", "R1")
    else:
        refs["qr"] = QrRef("000201", f"P1-{i}")
    return Payment(f"P1-{i}", f"k{i}", channel, 100, "USD", Party("a"), Party("b"),  # type: ignore[arg-type]
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **refs)


@dataclass
class FakeNetwork:
    """Answers reversals/status checks and accepts advices; can be down for a while."""

    name: str = "issuer"
    channel: str = "card"
    down_until: float = 0.0
    resolved_at: dict[str, float] = field(default_factory=dict)
    advised: list[str] = field(default_factory=list)
    attempts: int = 0

    async def resolve(self, payment: Payment) -> NetworkReply:
        self.attempts += 1
        now = anyio.current_time()
        if now < self.down_until:
            raise NotSent("down")
        self.resolved_at[payment.payment_id] = now
        return NetworkReply("reversed", "00")

    async def advise(self, payment: Payment, ref: str) -> str:
        self.advised.append(payment.payment_id)
        return "00"  # the issuer's answer to the 0120


async def _journal_with_intents(tmp_path: Path, n: int, *, max_pending: int,
                                mode: Any = "group") -> tuple[Journal, Any]:
    db = open_database(tmp_path / "j.db", mode)
    journal = Journal(db, mode=mode, max_batch=4, max_pending=max_pending,
                      metrics=SwitchMetrics(), writer="thread")
    return journal, db

def _resolver(journal: Journal, metrics: SwitchMetrics, **options: Any
              ) -> tuple[Resolver, Clock, IdempotencyIndex]:
    """A resolver on a fresh clock and idempotency index (an hour, 1,000 keys)."""
    clock = Clock()
    index = IdempotencyIndex(retention_s=3600, max_keys=1000)
    return (Resolver(clock=clock, journal=journal, index=index, metrics=metrics, **options),
            clock, index)



async def test_full_journal_during_resolution_and_stand_in_loses_nothing(
        tmp_path: Path) -> None:
    metrics = SwitchMetrics()
    journal, db = await _journal_with_intents(tmp_path, 0, max_pending=8)
    resolver, clock, index = _resolver(journal, metrics)
    network = FakeNetwork()
    route = Route("issuer", network, timeout_s=1.0)  # type: ignore[arg-type]
    standin = StandIn(StandInConfig(), {"issuer": network}, journal, clock, metrics,  # type: ignore[dict-item]
                      lambda endpoint, now: True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(resolver.run)
        tg.start_soon(standin.run)
        # The writer is not running yet: the journal fills up with intents.
        for i in range(8):
            journal.append(JournalRecord.intent(_payment(100 + i), b"h", 1))
        assert journal.pending == 8
        for i in range(5):
            payment = _payment(i)
            index.begin(payment.idempotency_key, b"h", clock.now())
            resolver.submit(payment, b"h", route)
        for i in range(5, 10):
            payment = _payment(i)
            result = Result(payment.payment_id, Status.APPROVED, "00", "S12345", "issuer",
                            stood_in=True)
            standin.queue_advice(payment, result, "card-target", ("issuer",), b"h")
        await anyio.sleep(0.5)  # resolutions and deliveries meet the full journal
        # Both are waiting for room (store-and-forward delivers one advice at a time),
        # not dead: main's plain write() raised JournalFull and ended both tasks.
        assert len(network.resolved_at) == 5 and len(network.advised) == 1
        assert journal.committed_records == 0 and journal.pending == 8
        tg.start_soon(journal.run)  # room at last
        with anyio.fail_after(10):
            while resolver.pending or standin.pending or journal.pending:
                await anyio.sleep(0.01)
        await journal.close()
        tg.cancel_scope.cancel()
    folded = fold(db)
    finals = [h for h in folded.payments.values() if h.finished]
    assert sorted(h.payment_id for h in finals) == [f"P1-{i}" for i in range(5)]
    assert all(h.status == "reversed" for h in finals)
    assert sorted(h.payment_id for h in folded.payments.values() if h.advised) == [
        f"P1-{i}" for i in range(5, 10)]
    assert all(index.get(f"k{i}").result is not None for i in range(5))  # type: ignore[union-attr]


async def test_card_reversals_do_not_queue_behind_qr_checks(tmp_path: Path) -> None:
    """16 QR checks (first allowed after 90 s) then 1 card reversal, 8 'workers': the
    card is resolved at once, not after the QR jobs' sleeps (main: ~90 s later)."""
    metrics = SwitchMetrics()
    journal, _ = await _journal_with_intents(tmp_path, 0, max_pending=1000)
    card, qr = FakeNetwork(), FakeNetwork("qr-scheme", "qr")
    policies = ResolutionConfig(qr=ResolutionPolicy(first_after_s=90, max_attempts=3,
                                                    within_s=7200, max_delay_s=3600))
    resolver, clock, _ = _resolver(journal, metrics, workers=8, policies=policies)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        tg.start_soon(resolver.run)
        started = clock.now()
        for i in range(16):
            resolver.submit(_payment(i, "qr"), b"h", Route("qr-scheme", qr, 1.0))  # type: ignore[arg-type]
        resolver.submit(_payment(99), b"h", Route("issuer", card, 1.0))  # type: ignore[arg-type]
        with anyio.fail_after(5):
            while "P1-99" not in card.resolved_at:
                await anyio.sleep(0.01)
        assert card.resolved_at["P1-99"] - started < 1.0
        assert qr.attempts == 0  # not one QR check before its 90 s
        assert resolver.next_due() == pytest.approx(started + 90, abs=1.0)
        await journal.close()
        tg.cancel_scope.cancel()


async def test_a_recovered_payment_counts_its_first_delay_from_the_payment(
        tmp_path: Path) -> None:
    """Found by the simulator (seed 48): after a restart the first QR check waited 90 s
    anew. A payment made 80 s ago is due in 10 s; one made 200 s ago at once."""
    metrics = SwitchMetrics()
    journal, _ = await _journal_with_intents(tmp_path, 0, max_pending=1000)
    qr = FakeNetwork("qr-scheme", "qr")
    policies = ResolutionConfig(qr=ResolutionPolicy(first_after_s=90, max_attempts=3,
                                                    within_s=7200, max_delay_s=3600))
    resolver, clock, _ = _resolver(journal, metrics, workers=8, policies=policies)
    route = Route("qr-scheme", qr, 1.0)  # type: ignore[arg-type]
    now = clock.now()
    resolver.submit(_payment(1, "qr"), b"h", route, Status.SENT, elapsed_s=80.0)
    assert resolver.next_due() == pytest.approx(now + 10, abs=1.0)
    resolver.submit(_payment(2, "qr"), b"h", route, Status.SENT, elapsed_s=200.0)
    assert resolver.next_due() == pytest.approx(now, abs=1.0)
    await journal.close()


def test_unknowns_are_retried_through_a_long_outage_then_escalated(tmp_path: Path) -> None:
    """Under trio's mock clock: a 120 s outage is outlasted (main gave up after ~11 s);
    a payment still unanswered after ``within_s`` is escalated and stays counted."""
    import trio.testing

    async def scenario() -> None:
        metrics = SwitchMetrics()
        # Mode off: a commit in a worker thread would let the mock clock jump meanwhile.
        journal, _ = await _journal_with_intents(tmp_path, 0, max_pending=1000, mode="off")
        network = FakeNetwork(down_until=anyio.current_time() + 120)
        dead = FakeNetwork("dead", down_until=float("inf"))
        resolver, _, _ = _resolver(journal, metrics)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            tg.start_soon(resolver.run)
            resolver.submit(_payment(1), b"h", Route("issuer", network, 1.0))  # type: ignore[arg-type]
            resolver.submit(_payment(2), b"h", Route("dead", dead, 1.0))  # type: ignore[arg-type]
            await anyio.sleep(60)
            assert resolver.pending == 2 and metrics.unresolved._value.get() == 2
            await anyio.sleep(70)
            assert "P1-1" in network.resolved_at  # resolved within a retry of the end
            assert resolver.pending == 1 and resolver.escalated == 0
            await anyio.sleep(600)
            assert resolver.pending == 1 and resolver.escalated == 1
            assert metrics.unresolved._value.get() == 1
            assert metrics.unresolved_escalated._value.get() == 1
            assert dead.attempts <= 150
            await journal.close()
            tg.cancel_scope.cancel()

    # On trio's mock clock, so the 13 minutes take milliseconds.
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_crash_recovered_payment_goes_through_unknown_to_final(tmp_path: Path) -> None:
    metrics = SwitchMetrics()
    journal, db = await _journal_with_intents(tmp_path, 0, max_pending=10)
    clock = Clock()
    index = IdempotencyIndex(retention_s=60, max_keys=10)
    resolver = Resolver(clock=clock, journal=journal, index=index, metrics=metrics)
    network = FakeNetwork()
    with pytest.raises(AssertionError):  # only unknown (or sent, after a crash) is resolved
        resolver.submit(_payment(1), b"h", Route("x", network, 1.0),  # type: ignore[arg-type]
                        Status.APPROVED)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        tg.start_soon(resolver.run)
        index.begin("k1", b"h", clock.now())
        resolver.submit(_payment(1), b"h", Route("x", network, 1.0),  # type: ignore[arg-type]
                        Status.SENT)
        with anyio.fail_after(5):
            while resolver.pending:
                await anyio.sleep(0.01)
        await journal.close()
        tg.cancel_scope.cancel()
    assert fold(db).payments["P1-1"].status == "reversed"


def test_hanging_card_reversals_do_not_hold_up_other_channels(tmp_path: Path) -> None:
    """Found by the simulator (seed 1, one simulated hour, 425 s): after a crash, ~1000
    recovered card reversals met an issuer answering late; each attempt held a worker to
    its timeout, and a SWIFT inquiry waited 26 s behind them in the shared pool of 8.
    Workers are per channel now: 16 hanging card reversals, then a QR check answered at
    once (under trio's mock clock)."""
    import trio.testing

    class Hanging(FakeNetwork):
        async def resolve(self, payment: Payment) -> NetworkReply:
            self.attempts += 1
            await anyio.sleep(math.inf)
            raise AssertionError("unreachable")

    async def scenario() -> None:
        metrics = SwitchMetrics()
        journal, _ = await _journal_with_intents(tmp_path, 0, max_pending=1000, mode="off")
        card, qr = Hanging(), FakeNetwork("qr-scheme", "qr")
        policies = ResolutionConfig(qr=ResolutionPolicy(first_after_s=0.05))
        resolver, clock, _ = _resolver(journal, metrics, workers=8, policies=policies)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            tg.start_soon(resolver.run)
            started = clock.now()
            for i in range(16):
                resolver.submit(_payment(i), b"h", Route("issuer", card, 10.0))  # type: ignore[arg-type]
            await anyio.sleep(0.1)  # past the card's first delay (0.05 s)
            assert card.attempts == 8  # the card channel's workers, all hanging
            resolver.submit(_payment(99, "qr"), b"h", Route("qr-scheme", qr, 1.0))  # type: ignore[arg-type]
            await anyio.sleep(1.0)
            assert qr.resolved_at["P1-99"] - started < 0.5  # shared pool: after 10 s
            await journal.close()
            tg.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_wait_between_attempts_exceeds_max_delay() -> None:
    """Found by the simulator (seed 1, one simulated hour, 2338 s: 346 QR payments resolved
    past their schedule): with first_after_s 90 and max_delay_s 30, the first retry after a
    refused check waited 90 s. Every wait is capped at max_delay_s (sans-IO, no clock)."""
    queue = ResolutionQueue(index=IdempotencyIndex(retention_s=60, max_keys=10),
                            metrics=SwitchMetrics(), policies=ResolutionConfig(
                                qr=ResolutionPolicy(first_after_s=90, max_delay_s=30)))
    route = Route("qr-scheme", FakeNetwork("qr-scheme", "qr"), 3.0)  # type: ignore[arg-type]
    assert queue.submit(_payment(1, "qr"), b"h", route, Status.UNKNOWN, 0.0, now=0.0)
    assert queue.next_due() == 90.0 and queue.pop_due(89.0) is None
    now = 90.0
    for _ in range(5):
        job = queue.pop_due(now)
        assert job is not None
        queue.no_answer(job, now)  # refused: the network is down
        due = queue.next_due()
        assert due is not None and due - now <= 30.0
        now = due


def _sans_io_queue(n: int, max_queue: int) -> tuple[ResolutionQueue, IdempotencyIndex,
                                                    Route, list[Payment]]:
    """A ResolutionQueue of ``max_queue`` and ``n`` card payments begun in its index."""
    index = IdempotencyIndex(retention_s=60, max_keys=100)
    queue = ResolutionQueue(index=index, metrics=SwitchMetrics(), max_queue=max_queue)
    route = Route("issuer", FakeNetwork(), 1.0)  # type: ignore[arg-type]
    payments = [_payment(i) for i in range(n)]
    for p in payments:
        index.begin(p.idempotency_key, b"h", 0.0)
    return queue, index, route, payments


def test_payments_past_the_queue_bound_are_taken_back_once_it_has_room() -> None:
    """Found by the simulator (seed 1, 10 simulated min at fault intensity 40): repeated
    crashes left more unfinished payments than the queue's 10,000, and those past the
    bound stayed unknown until the next restart, however long their network had been
    back. Now they wait in the journal and a refill takes them back once the queue is at
    most half full; it skips what is tracked or resolved since the read (sans-IO)."""
    queue, index, route, payments = _sans_io_queue(7, max_queue=4)
    taken = [queue.submit(p, b"h", route, Status.UNKNOWN, 0.0, now=0.0) for p in payments]
    assert taken == [True] * 4 + [False] * 3
    assert (queue.tracked, queue.overflowed, queue.pending) == (4, 3, 7)
    assert queue.escalated == 0  # waiting for room is not an operator's matter
    assert not queue.needs_refill  # full: a journal read would take nothing back

    for _ in range(2):  # two resolved: the queue is half full
        job = queue.pop_due(1.0)
        assert job is not None
        queue.finished(job, queue.outcome(job, NetworkReply("reversed", "00")))
    assert queue.needs_refill
    # A payment resolved after the read (its final is in the index) is not taken back.
    index.complete("k6", Result("P1-6", Status.REVERSED, "00"))
    # The journal's unfinished payments as read: the two still tracked come back too.
    backlog = [(p, b"h", route, Status.UNKNOWN, 1.0, False) for p in payments[2:]]
    assert queue.refill(backlog, now=2.0) == 2  # P1-4, P1-5; P1-6 resolved
    assert (queue.tracked, queue.overflowed) == (4, 0)
    assert not queue.needs_refill

    # Still no room for all: the rest is counted again, to be taken by the next refill
    # (P1-0 and P1-1 were resolved above: skipped, not counted).
    queue2 = ResolutionQueue(index=index, metrics=SwitchMetrics(), max_queue=2)
    assert queue2.refill([(p, b"h", route, Status.SENT, 1.0, False) for p in payments[:6]],
                         now=0.0) == 2
    assert (queue2.tracked, queue2.overflowed) == (2, 2)


def test_a_refill_takes_back_a_reversal_whose_key_still_answers_approved() -> None:
    """Found by the simulator (reversal-undone, seed 5, the resolver bounded at 50): an
    acquirer's reversal accepted while the queue was full waits in the journal, the
    approval reopened. Its key answers the approval until the reversal is done, and the
    refill took that for "resolved since the journal was read": skipped, it stayed
    approved, the issuer holding the money, until a restart. An approval read as final
    (not reopened) is still skipped: the core finished it after the read."""
    queue, index, route, payments = _sans_io_queue(2, max_queue=4)
    for p in payments:
        index.complete(p.idempotency_key, Result(p.payment_id, Status.APPROVED, "00"))
    reversed_one, finished_one = payments
    taken = queue.refill([(reversed_one, b"h", route, Status.SENT, 1.0, True),
                          (finished_one, b"h", route, Status.SENT, 1.0, False)], now=1.0)
    assert taken == 1 and queue.tracked == 1
    job = queue.pop_due(10.0)
    assert job is not None and job.payment.payment_id == reversed_one.payment_id


def test_a_refill_counts_a_reversal_being_decided_as_waiting_not_taken() -> None:
    """Found by review: a refill skipped a payment whose reversal the front door was
    deciding without counting it; if that claim was then let go (a full journal), the
    reopened payment was held by nobody until another overflow or a restart."""
    queue, index, route, payments = _sans_io_queue(1, max_queue=4)
    p = payments[0]
    index.complete(p.idempotency_key, Result(p.payment_id, Status.APPROVED, "00"))
    deciding = {p.idempotency_key}
    taken = queue.refill([(p, b"h", route, Status.SENT, 1.0, True)], now=1.0,
                         waits=deciding.__contains__)
    assert taken == 0 and queue.tracked == 0
    assert queue.overflowed == 1 and queue.needs_refill  # another read will come
    deciding.clear()  # the claim let go without a hand-over
    assert queue.refill([(p, b"h", route, Status.SENT, 1.0, True)], now=2.0,
                        waits=deciding.__contains__) == 1


def test_escalated_payments_give_their_place_in_the_queue_back() -> None:
    """An escalated payment used to keep its place until a restart: a long outage's
    escalations filled the queue, every new unknown waited in the journal, and no refill
    came (it waits for the queue to be half empty). Now only its id is kept, at most
    ``max_escalated`` of them; past that the oldest waits in the journal like an overflow
    and a refill takes it back for another round (sans-IO)."""
    index = IdempotencyIndex(retention_s=60, max_keys=100)
    queue = ResolutionQueue(index=index, metrics=SwitchMetrics(), max_queue=2,
                            max_escalated=2, policies=ResolutionConfig(
                                card=ResolutionPolicy(max_attempts=1)))
    route = Route("issuer", FakeNetwork(), 1.0)  # type: ignore[arg-type]
    payments = [_payment(i) for i in range(4)]

    def escalate_all(now: float) -> None:
        while (job := queue.pop_due(now)) is not None:
            queue.no_answer(job, now)  # one attempt allowed: escalated

    assert queue.submit(payments[0], b"h", route, Status.UNKNOWN, 0.0, now=0.0)
    assert queue.submit(payments[1], b"h", route, Status.UNKNOWN, 0.0, now=0.0)
    escalate_all(1.0)
    assert (queue.tracked, queue.escalated, queue.pending) == (0, 2, 2)
    assert not queue.submit(payments[0], b"h", route, Status.UNKNOWN, 0.0, now=1.0)
    # Room for a new unknown although two are escalated (the old queue was full).
    assert queue.submit(payments[2], b"h", route, Status.UNKNOWN, 0.0, now=1.0)
    assert (queue.tracked, queue.overflowed) == (1, 0)

    escalate_all(2.0)  # a third escalation: P1-0, the oldest, is forgotten
    assert (queue.tracked, queue.escalated, queue.overflowed, queue.pending) == (0, 2, 1, 3)
    assert queue.needs_refill
    backlog = [(p, b"h", route, Status.UNKNOWN, 3.0, False) for p in payments[:3]]
    assert queue.refill(backlog, now=3.0) == 1  # P1-0 only: the other two are escalated
    assert (queue.tracked, queue.escalated, queue.overflowed) == (1, 2, 0)


def test_the_queue_says_which_payments_it_holds_for_the_reversal_decisions() -> None:
    """Reversals.admit asks it: an approval the resolver holds (queued, in flight or
    escalated) is a reversal under way, and a repeat of it is never claimed again."""
    queue = ResolutionQueue(index=IdempotencyIndex(retention_s=60, max_keys=100),
                            metrics=SwitchMetrics(), max_queue=1, policies=ResolutionConfig(
                                card=ResolutionPolicy(max_attempts=1)))
    route = Route("issuer", FakeNetwork(), 1.0)  # type: ignore[arg-type]
    held, overflowed = _payment(0), _payment(1)
    assert queue.submit(held, b"h", route, Status.SENT, 0.0, now=0.0)
    assert not queue.submit(overflowed, b"h", route, Status.SENT, 0.0, now=0.0)
    pid = held.payment_id
    assert queue.holds(pid) and queue.amount_held(pid) == held.amount
    assert not queue.escalated_now(pid)
    assert not queue.holds(overflowed.payment_id)  # waits in the journal: nobody's yet
    job = queue.pop_due(1.0)
    assert job is not None
    queue.no_answer(job, 1.0)  # escalated: still held, and its amount (a repeat: 13)
    assert queue.holds(pid) and queue.escalated_now(pid)
    assert queue.amount_held(pid) == held.amount


def test_one_channels_backlog_never_keeps_another_channels_unknowns_out() -> None:
    """Found by the simulator (seed 12, 10 simulated min, fault intensity 40): one bound for
    every channel filled with card and QR jobs on degraded networks while SWIFT's network
    was back, its workers idle and its unknowns waiting in the journal, resolved 24.6 s
    after the network was back against 20 s allowed. The bound is per channel (sans-IO)."""
    index = IdempotencyIndex(retention_s=60, max_keys=100)
    queue = ResolutionQueue(index=index, metrics=SwitchMetrics(), max_queue=2)
    card = Route("issuer", FakeNetwork(), 1.0)  # type: ignore[arg-type]
    qr = Route("qr-scheme", FakeNetwork("qr-scheme", "qr"), 1.0)  # type: ignore[arg-type]
    cards = [_payment(i) for i in range(3)]
    qrs = [_payment(10 + i, "qr") for i in range(3)]
    for p in cards + qrs:
        index.begin(p.idempotency_key, b"h", 0.0)
    assert [queue.submit(p, b"h", card, Status.UNKNOWN, 0.0, now=0.0) for p in cards] \
        == [True, True, False]
    assert [queue.submit(p, b"h", qr, Status.UNKNOWN, 100.0, now=0.0) for p in qrs] \
        == [True, True, False]  # the card queue is full; the QR one has its own room
    assert (queue.tracked_of("card"), queue.tracked_of("qr"), queue.overflowed) == (2, 2, 2)
    assert not queue.needs_refill
    while (job := queue.pop_due(1.0, ["qr"])) is not None:  # QR's network is back
        queue.finished(job, queue.outcome(job, NetworkReply("approved", "00")))
    assert queue.needs_refill  # for QR, although the card queue is still full
    backlog = [(p, b"h", r, Status.UNKNOWN, 1.0, False)
               for p, r in ((cards[2], card), (qrs[2], qr))]
    assert queue.refill(backlog, now=2.0) == 1  # P1-12; P1-2 still finds no room
    assert (queue.tracked_of("card"), queue.tracked_of("qr"), queue.overflowed) == (2, 1, 1)
    assert not queue.needs_refill


def test_a_refill_counts_what_overflowed_while_it_read_the_journal() -> None:
    """The switch reads its backlog in a thread while the loop goes on. A payment that
    overflowed during the read may be missing from it; the refill used to reset the count
    and forget it until a restart. It stays counted, for the next refill (sans-IO)."""
    queue, _, route, payments = _sans_io_queue(5, max_queue=2)
    for p in payments[:3]:
        queue.submit(p, b"h", route, Status.UNKNOWN, 0.0, now=0.0)  # P1-2 overflows
    job = queue.pop_due(1.0)
    assert job is not None
    queue.finished(job, queue.outcome(job, NetworkReply("reversed", "00")))
    assert queue.needs_refill
    mark = queue.overflow_mark  # the read begins; it will see P1-1 and P1-2
    read = [(p, b"h", route, Status.UNKNOWN, 1.0, False) for p in payments[1:3]]
    queue.submit(payments[3], b"h", route, Status.UNKNOWN, 0.0, now=1.0)  # the last place
    queue.submit(payments[4], b"h", route, Status.UNKNOWN, 0.0, now=1.0)  # overflows
    assert queue.refill(read, now=2.0, mark=mark) == 0  # still full
    assert queue.overflowed == 2  # P1-2 found no room; P1-4 was not in the read


async def _resolve_past_the_bound(
        tmp_path: Path, n: int, max_queue: int,
        reading: Callable[[int], Awaitable[None]]) -> tuple[FakeNetwork, list[float], Any]:
    """The anyio shell resolves ``n`` payments through a queue of ``max_queue``, the rest
    taken back from its ``backlog`` (app.py reads the journal); ``reading(k)`` runs
    during the k-th read. Returns the network, when each read began, and the journal."""
    metrics = SwitchMetrics()
    journal, db = await _journal_with_intents(tmp_path, 0, max_pending=100)
    network = FakeNetwork()
    route = Route("issuer", network, 1.0)  # type: ignore[arg-type]
    payments = [_payment(i) for i in range(n)]
    read_at: list[float] = []

    async def backlog() -> list[Any]:
        read_at.append(clock.now())
        await reading(len(read_at))
        return [(p, b"h", route, Status.UNKNOWN, 1.0, False) for p in payments
                if p.payment_id not in network.resolved_at]

    resolver, clock, index = _resolver(journal, metrics, max_queue=max_queue,
                                       backlog=backlog)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        tg.start_soon(resolver.run)
        for p in payments:
            index.begin(p.idempotency_key, b"h", clock.now())
            resolver.submit(p, b"h", route)
        assert resolver.overflowed == n - max_queue
        with anyio.fail_after(30):
            while resolver.pending:
                await anyio.sleep(0.01)
        await journal.close()
        tg.cancel_scope.cancel()
    assert sorted(network.resolved_at) == sorted(p.payment_id for p in payments)
    return network, read_at, db


async def test_the_resolver_reads_its_backlog_when_the_queue_has_room(tmp_path: Path) -> None:
    """The anyio shell: payments past ``max_queue`` are resolved without a restart, from
    the ``backlog`` the switch reads out of its journal (app.py)."""

    async def slow_read(_: int) -> None:
        await anyio.sleep(0.1)  # a read of the journal takes time

    _, read_at, db = await _resolve_past_the_bound(tmp_path, 6, 2, slow_read)
    assert len(read_at) >= 2  # 2 taken back per read
    # Each read as soon as the queue is half empty, and no sooner than the last one took
    # (0.1 s to read, 0.1 s apart): a fixed 5 s between reads left the workers idle while
    # payments waited (the simulator, seed 10, intensity 40, 10 min).
    gaps = [b - a for a, b in itertools.pairwise(read_at)]
    assert min(gaps) >= 0.19 and max(gaps) < REFILL_RETRY_S, gaps
    assert {p.status for p in fold(db).payments.values()} == {"reversed"}


async def test_a_failed_backlog_read_is_retried_after_a_pause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal that cannot be read now is not read again at once, in a loop: the next
    read waits REFILL_RETRY_S (0.3 s here), and then the payment is resolved."""
    monkeypatch.setattr("switch.payment.resolver.REFILL_RETRY_S", 0.3)

    async def first_read_fails(k: int) -> None:
        if k == 1:
            raise OSError("disk I/O error")

    _, read_at, _ = await _resolve_past_the_bound(tmp_path, 2, 1, first_read_fails)
    assert len(read_at) == 2 and read_at[1] - read_at[0] >= 0.3


async def test_stand_in_exposure_found_undelivered_at_start_up_holds_against_the_limits(
) -> None:
    """A kill -9 with the issuer down reset the per-card and per-issuer totals: the same
    card then stood in for twice its limit (a second 5000 on a limit of 8000)."""
    from switch.journal.reader import PendingAdvice, Recovered
    from switch.payment.resolver import recover

    config = StandInConfig(limits={"USD": StandInLimits(
        per_payment_max="50.00", per_card_max="80.00", per_issuer_max="90.00")})
    metrics = SwitchMetrics()

    def standin() -> StandIn:
        return StandIn(config, {}, None, Clock(), metrics,  # type: ignore[arg-type]
                       lambda endpoint, now: True)

    first, second = (msgspec.structs.replace(_payment(i), amount=5000) for i in (1, 2))
    before = standin()
    assert before.decide(first, "card-target") is not None
    assert before.decide(second, "card-target") is None  # 10,000 > 8,000
    after = standin()  # the restart: P1-1's advice is still undelivered
    stood_in = Result(first.payment_id, Status.APPROVED, "00", "S12345", stood_in=True)
    target = SimpleNamespace(name="card-target", endpoints=("issuer",))
    recover(Recovered([], [], 2, 2, [PendingAdvice(b"h", first, stood_in)]),
            index=IdempotencyIndex(retention_s=60, max_keys=10),
            resolver=SimpleNamespace(submit=None),
            standin=after,
            router=SimpleNamespace(target=lambda payment: target),  # type: ignore[arg-type]
            metrics=metrics, now=0.0, wall_us=1, retention_s=60.0,
            resolve_endpoint=lambda payment, target: "issuer")
    assert after.pending == 1
    assert after.decide(second, "card-target") is None
    assert second.card is not None
    other_card = msgspec.structs.replace(
        second, card=msgspec.structs.replace(second.card, token="tok-2"))
    assert after.decide(other_card, "card-target") is None  # the issuer's 9,000, too


def _standin_journaling_advices(config: StandInConfig, network: FakeNetwork
                                ) -> tuple[StandIn, list[JournalRecord]]:
    """A stand-in delivering to ``network``, its advice records kept in a list."""
    standin = StandIn(config, {"issuer": network}, None,  # type: ignore[arg-type,dict-item]
                      Clock(), SwitchMetrics(), lambda endpoint, now: True)
    written: list[JournalRecord] = []

    async def write(record: JournalRecord, on_full: object) -> None:
        written.append(record)

    standin._journal = SimpleNamespace(write=write)  # type: ignore[assignment]
    return standin, written


async def _deliver_all(standin: StandIn) -> None:
    """Run the stand-in's sender until nothing waits in store and forward."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(standin.run)
        with anyio.fail_after(5):
            while standin.pending:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_a_delivered_advice_gives_the_issuers_stand_in_room_back() -> None:
    """Only the card's total was released on delivery: once per_issuer_max had
    ever been reached, stand-in at that issuer ended for the rest of the switch's life."""
    config = StandInConfig(limits={"USD": StandInLimits(
        per_payment_max="50.00", per_card_max="500.00", per_issuer_max="50.00")})
    network = FakeNetwork()
    standin, written = _standin_journaling_advices(config, network)
    first = msgspec.structs.replace(_payment(1), amount=5000)
    second = msgspec.structs.replace(
        _payment(2), amount=5000,
        card=msgspec.structs.replace(_payment(2).card, token="tok-2"))  # type: ignore[type-var]
    assert standin.decide(first, "card-target") is not None
    assert standin.decide(second, "card-target") is None  # the issuer's 5,000 is taken
    standin.advise(first, Result(first.payment_id, Status.APPROVED, "00", "S12345",
                                 stood_in=True), "card-target", ("issuer",), b"h")
    await _deliver_all(standin)
    assert network.advised == ["P1-1"] and len(written) == 1
    assert standin.decide(second, "card-target") is not None


async def test_an_advice_answered_91_is_kept_and_sent_again() -> None:
    """An 0130 answering 91 (issuer inoperative) was recorded as the issuer's refusal:
    the advice left store and forward and the issuer never learnt of the approval. It is
    kept and sent again, as the simulator's sender does, until the issuer takes it."""
    answers = ["91", "96", "00"]
    network = FakeNetwork()

    async def advise(payment: Payment, ref: str) -> str:
        network.advised.append(payment.payment_id)
        return answers.pop(0)

    network.advise = advise  # type: ignore[method-assign]
    standin, written = _standin_journaling_advices(StandInConfig(), network)
    payment = _payment(1)
    standin.queue_advice(payment, Result(payment.payment_id, Status.APPROVED, "00", "S12345",
                                         stood_in=True), "card-target", ("issuer",), b"h")
    await _deliver_all(standin)
    assert network.advised == ["P1-1"] * 3 and answers == []
    assert standin.delivered == 1 and len(written) == 1
    assert written[0].status == "approved" and written[0].kind == "advice"
