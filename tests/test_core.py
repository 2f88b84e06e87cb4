"""The payment core with no IO at all: events in (with ``now``), effects out through fake
ports. Every attempt-plan branch, and the admission slot released exactly once on each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from switch.adapters.base import NetworkReply, NotSent
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.adapters.trace import MAX_RRN, MemoryTraceStore, TraceNumbers
from switch.journal import JournalFailed, JournalFull
from switch.model import Payment, PaymentRequest, Result, Status, luhn_ok
from switch.observability.metrics import SwitchMetrics
from switch.payment.core import MAX_DUPLICATE_WAITERS, PaymentCore
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.risk import RiskConfig, RiskEngine
from switch.payment.standin import StandIn, StandInConfig
from switch.protocols.wire import ErrorReply, Reply, Response
from switch.routing.admission import AdmissionLimiter
from switch.routing.resilience import ResilienceConfig
from switch.routing.retry import RetryBudgetConfig, RetryPolicy
from switch.routing.router import Route, Router
from switch.routing.table import load_route_table
from tests.payments import card_payment, qr_payment

TABLE = """
[targets.cards]
endpoints = ["card-a", "card-b"]
strategy = "priority"
timeout_s = 0.5
[targets.qr]
endpoints = ["qr"]
timeout_s = 0.5
[targets.swift]
endpoints = ["qr"]
[card]
default = "cards"
[qr]
default = "qr"
[swift]
default = "swift"
"""
APPROVED = NetworkReply("approved", "00", "A1")
TECHNICAL = NetworkReply("failed", "91")
DECLINED = NetworkReply("declined", "05")


class FakeJournal:
    """Group commit by hand: records go into the open batch until ``commit()``."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.batch = 1
        self.full = False
        self.failed = False

    def append(self, row: tuple[Any, ...]) -> object | None:
        if self.failed:
            raise JournalFailed("disk on fire")
        if self.full:
            raise JournalFull("full")
        self.rows.append(row)
        return self.batch

    def kinds(self) -> list[str]:
        return [row[2] for row in self.rows]


class FakeNetwork:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, Payment]] = []
        self.cancelled: list[int] = []
        self.down: set[str] = set()

    def send(self, endpoint: str, token: int, payment: Payment) -> None:
        if endpoint in self.down:
            raise NotSent(f"{endpoint} down")
        self.sent.append((endpoint, token, payment))

    def cancel(self, endpoint: str, token: int) -> None:
        self.cancelled.append(token)


class Inbox:
    def __init__(self) -> None:
        self.responses: list[Response] = []

    def reply(self, response: Response) -> None:
        self.responses.append(response)


@dataclass
class FakeResolver:
    submitted: list[tuple[Payment, Route]] = field(default_factory=list)

    def submit(self, payment: Payment, digest: bytes, route: Route) -> None:
        self.submitted.append((payment, route))


class CountingLimiter(AdmissionLimiter):
    """Every acquire and release, to prove each slot is given back exactly once."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.acquired: list[str] = []
        self.released: list[str] = []

    def try_acquire(self, endpoint: str) -> bool:
        ok = super().try_acquire(endpoint)
        if ok:
            self.acquired.append(endpoint)
        return ok

    def release(self, endpoint: str) -> None:
        self.released.append(endpoint)
        super().release(endpoint)


class _Clock:
    def now(self) -> float:
        return 0.0


@dataclass
class Rig:
    core: PaymentCore
    journal: FakeJournal
    network: FakeNetwork
    resolver: FakeResolver
    router: Router
    standin: StandIn | None
    inbox: Inbox
    acquired: list[str]
    released: list[str]
    now: float = 100.0

    def pay(self, *requests: PaymentRequest) -> None:
        self.core.on_requests(self.inbox, list(enumerate(requests, 1)), self.now, self.now,
                              self.now)

    def commit(self) -> None:
        ticket = self.journal.batch
        self.journal.batch += 1
        self.core.on_committed(ticket, self.now, self.now)

    def answer(self, reply: NetworkReply | None, index: int = -1) -> None:
        _, token, _ = self.network.sent[index]
        self.core.on_replies([(token, reply)], self.now, self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.on_timers(self.now, self.now)

    def only_reply(self) -> Response:
        assert len(self.inbox.responses) == 1, self.inbox.responses
        return self.inbox.responses[0]

    def slots_balanced(self) -> bool:
        return (sorted(self.acquired) == sorted(self.released)
                and self.router.limiter.in_flight() == 0)


def make_rig(*, standin: bool = False, resilience: ResilienceConfig | None = None,
             risk: RiskEngine | None = None, boot_count: int = 1,
             rrns: TraceNumbers | None = None) -> Rig:
    names = ("card-a", "card-b", "qr")
    adapters = {n: StandInNetwork(StandInNetworkConfig(n, "qr" if n == "qr" else "card"))
                for n in names}
    metrics = SwitchMetrics(networks=adapters, enabled=True)
    config = resilience or ResilienceConfig()
    router = Router(load_route_table(TABLE, adapters), adapters, config, metrics, seed=1)
    limiter = CountingLimiter(adapters, config.admission)
    router.limiter = limiter
    acquired, released = limiter.acquired, limiter.released
    journal, network, resolver = FakeJournal(), FakeNetwork(), FakeResolver()
    stand_in = None
    if standin:
        stand_in = StandIn(StandInConfig(), adapters, journal, _Clock(),  # type: ignore[arg-type]
                           metrics, lambda e, now: True)
    core = PaymentCore(
        journal=journal, network=network,
        index=IdempotencyIndex(retention_s=3600, max_keys=1000),
        risk=risk or RiskEngine(RiskConfig(), b"k" * 32), router=router, resolver=resolver,
        metrics=metrics, token_key=b"k" * 32, boot_count=boot_count, seed=1,
        wall_offset=1.7e9, standin=stand_in, rrns=rrns,
    )
    return Rig(core, journal, network, resolver, router, stand_in, Inbox(), acquired, released)


def result_of(response: Response) -> tuple[str, str]:
    assert isinstance(response, Reply), response
    return response.result.status, response.result.reason


def test_a_payments_whole_life_as_events_and_actions() -> None:
    rig = make_rig()
    rig.pay(card_payment("life-1"))
    # Write-ahead: the intent is journaled and nothing is sent before it is durable.
    assert rig.journal.kinds() == ["intent"] and rig.network.sent == []
    assert rig.core.in_flight == 1 and rig.acquired == ["card-a"]
    rig.commit()
    assert [s[0] for s in rig.network.sent] == ["card-a"]
    assert rig.core.next_deadline() == pytest.approx(rig.now + 0.5)
    rig.now += 0.002
    rig.answer(APPROVED)
    # The final record is written, but the client hears nothing before its commit.
    assert rig.journal.kinds() == ["intent", "final"] and rig.inbox.responses == []
    assert rig.slots_balanced()
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert rig.core.in_flight == 0 and rig.core.next_deadline() is None


def test_one_commit_completes_every_payment_of_a_batch() -> None:
    rig = make_rig()
    rig.pay(*(card_payment(f"b-{i}", payer=f"P{i}") for i in range(5)))
    assert rig.journal.kinds() == ["intent"] * 5
    rig.commit()
    assert len(rig.network.sent) == 5
    for i in range(5):
        rig.answer(APPROVED, i)
    rig.commit()
    assert sorted(r.id for r in rig.inbox.responses) == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert rig.slots_balanced()


def test_timeout_after_send_is_unknown_and_handed_to_resolution() -> None:
    rig = make_rig()
    rig.pay(card_payment("slow-1"))
    rig.commit()
    token = rig.network.sent[0][1]
    rig.advance(0.5)
    assert rig.network.cancelled == [token]
    assert rig.journal.kinds() == ["intent", "unknown"]
    assert rig.slots_balanced()
    rig.commit()
    assert result_of(rig.only_reply()) == ("unknown", "68")
    assert [route.network for _, route in rig.resolver.submitted] == ["card-a"]
    # A late answer is ignored: no second final, no second reply.
    rig.answer(APPROVED)
    assert rig.journal.kinds() == ["intent", "unknown"] and len(rig.inbox.responses) == 1


def test_not_sent_fails_over() -> None:
    rig = make_rig()
    rig.network.down.add("card-a")
    rig.pay(card_payment("down-1"))
    rig.commit()
    assert rig.network.sent == []  # NotSent at once; card-b after the retry back-off
    rig.advance(0.025)
    assert [s[0] for s in rig.network.sent] == ["card-b"]
    rig.answer(APPROVED)
    rig.commit()
    reply = rig.only_reply()
    assert result_of(reply) == ("approved", "00")
    assert isinstance(reply, Reply) and reply.result.route == "card-b"
    assert rig.slots_balanced() and rig.acquired == ["card-a", "card-b"]


def test_not_sent_reported_later_also_fails_over() -> None:
    rig = make_rig(resilience=ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0)))
    rig.pay(card_payment("late-notsent"))
    rig.commit()
    rig.answer(None)  # the adapter found out after queuing that it never left
    assert [s[0] for s in rig.network.sent] == ["card-a", "card-b"]
    rig.answer(DECLINED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("declined", "05")
    assert rig.slots_balanced()


def test_technical_error_retries_elsewhere_after_a_backoff() -> None:
    rig = make_rig()
    rig.pay(card_payment("tech-1"))
    rig.commit()
    rig.answer(TECHNICAL)
    assert len(rig.network.sent) == 1  # waiting out the back-off
    deadline = rig.core.next_deadline()
    assert deadline is not None and deadline <= rig.now + 0.025
    rig.advance(0.025)
    assert [s[0] for s in rig.network.sent] == ["card-a", "card-b"]
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert rig.slots_balanced()


DUPLICATE = NetworkReply("declined", "94")
TOO_LATE = NetworkReply("failed", "68")


def test_a_94_after_an_earlier_attempt_went_on_the_wire_is_resolved_not_failed() -> None:
    # card-a answered 96, which some networks send after booking; the failover to card-b
    # carries the same STAN, and the issuer calls it a duplicate of that original.
    rig = make_rig()
    rig.pay(card_payment("dup-after-96"))
    rig.commit()
    rig.answer(NetworkReply("failed", "96"))
    rig.advance(0.025)
    assert [s[0] for s in rig.network.sent] == ["card-a", "card-b"]
    rig.answer(DUPLICATE)
    rig.commit()
    assert result_of(rig.only_reply()) == ("unknown", "68")
    assert [route.network for _, route in rig.resolver.submitted] == ["card-b"]
    assert rig.slots_balanced()


def test_a_94_on_the_first_attempt_stands_as_a_failure_and_reverses_nothing() -> None:
    # The original is another payment's (a reused trace number): a reversal of this STAN
    # could undo that one, and this payment was booked nowhere.
    rig = make_rig()
    rig.pay(card_payment("dup-first"))
    rig.commit()
    rig.answer(DUPLICATE)
    rig.commit()
    assert result_of(rig.only_reply()) == ("declined", "94")
    assert rig.resolver.submitted == [] and len(rig.network.sent) == 1
    assert rig.slots_balanced()


def test_a_68_answer_leaves_the_outcome_to_resolution() -> None:
    rig = make_rig()
    rig.pay(card_payment("too-late"))
    rig.commit()
    rig.answer(TOO_LATE)
    rig.commit()
    assert result_of(rig.only_reply()) == ("unknown", "68")
    assert len(rig.resolver.submitted) == 1 and len(rig.network.sent) == 1
    assert rig.slots_balanced()


def test_retry_budget_exhausted_keeps_the_last_answer() -> None:
    no_budget = RetryBudgetConfig(ratio=0.0, min_per_s=0.0)
    rig = make_rig(resilience=ResilienceConfig(retry_budget=no_budget))
    rig.pay(card_payment("budget-1"))
    rig.commit()
    rig.answer(TECHNICAL)
    assert len(rig.network.sent) == 1
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert rig.router.metrics.retries_denied["budget"].value == 1
    assert rig.slots_balanced()


def test_deadline_stops_the_attempts() -> None:
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("deadline-1"))
    rig.commit()
    assert rig.core.next_deadline() == pytest.approx(rig.now + 0.3)  # min(timeout, deadline)
    rig.now += 0.3
    rig.answer(TECHNICAL)  # answered right at the deadline: no time left for card-b
    assert len(rig.network.sent) == 1
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert rig.router.metrics.retries_denied["deadline"].value == 1
    assert rig.slots_balanced()


def test_every_breaker_open_means_card_stand_in_with_an_advice() -> None:
    rig = make_rig(standin=True)
    for breaker in rig.router.health.breakers.values():
        breaker.force_open(rig.now)
    rig.pay(card_payment("standin-1", amount=1500))
    assert rig.acquired == []  # nothing to reserve
    rig.commit()
    assert rig.network.sent == []
    rig.commit()
    reply = rig.only_reply()
    assert isinstance(reply, Reply) and reply.result.stood_in
    assert result_of(reply) == ("approved", "00")
    assert rig.standin is not None and rig.standin.pending == 1
    assert rig.slots_balanced()


def test_breaker_open_on_the_reserved_endpoint_releases_its_slot() -> None:
    rig = make_rig()
    rig.pay(card_payment("half-1"))
    # card-a trips between routing and the intent's commit.
    rig.router.health.breakers["card-a"].force_open(rig.now)
    rig.commit()
    assert [s[0] for s in rig.network.sent] == ["card-b"]
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert rig.slots_balanced()


def test_every_endpoint_full_sheds_before_the_journal() -> None:
    rig = make_rig()
    limiter = rig.router.limiter
    for _ in range(512):
        limiter.try_acquire("card-a")
        limiter.try_acquire("card-b")
    rig.acquired.clear()
    rig.pay(card_payment("full-1"))
    reply = rig.only_reply()
    assert isinstance(reply, ErrorReply) and reply.code == "overloaded"
    assert rig.journal.rows == [] and rig.core.in_flight == 0
    # The key was never accepted: a retry starts afresh.
    assert rig.core.index.get("full-1") is None


def test_journal_full_on_the_intent_sheds_and_releases_the_slot() -> None:
    rig = make_rig()
    rig.journal.full = True
    rig.pay(card_payment("jfull-1"))
    reply = rig.only_reply()
    assert isinstance(reply, ErrorReply) and reply.code == "overloaded"
    assert rig.slots_balanced() and rig.acquired == ["card-a"]
    assert rig.core.index.get("jfull-1") is None


def test_journal_full_after_send_waits_for_room_instead_of_dropping() -> None:
    rig = make_rig()
    rig.pay(card_payment("room-1"))
    rig.commit()
    rig.journal.full = True
    rig.answer(APPROVED)
    assert rig.inbox.responses == []
    rig.journal.full = False
    rig.commit()  # a commit frees room: the final goes in now
    assert rig.journal.kinds() == ["intent", "final"]
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert rig.slots_balanced()


def test_journal_failure_refuses_as_unavailable() -> None:
    rig = make_rig()
    rig.journal.failed = True
    rig.pay(card_payment("jfail-1"))
    reply = rig.only_reply()
    assert isinstance(reply, ErrorReply) and reply.code == "unavailable"
    assert rig.slots_balanced()


def test_commit_failure_fails_every_waiting_payment() -> None:
    rig = make_rig()
    rig.pay(card_payment("cf-1"), card_payment("cf-2", payer="OTHER"))
    rig.core.on_commit_failed(rig.journal.batch, OSError("EIO"))
    assert [r.code for r in rig.inbox.responses] == ["unavailable"] * 2  # type: ignore[union-attr]
    assert rig.slots_balanced() and rig.core.in_flight == 0


def test_duplicates_in_flight_wait_and_get_the_same_result() -> None:
    rig = make_rig()
    rig.pay(card_payment("dup-1"), card_payment("dup-1"), card_payment("dup-1", amount=7))
    assert len(rig.journal.rows) == 1
    conflict = [r for r in rig.inbox.responses if isinstance(r, ErrorReply)]
    assert [c.code for c in conflict] == ["idempotency_conflict"]
    rig.commit()
    rig.answer(APPROVED)
    rig.commit()
    replies = [r for r in rig.inbox.responses if isinstance(r, Reply)]
    assert sorted(r.replay for r in replies) == [False, True]
    assert len({r.result.payment_id for r in replies}) == 1
    assert len(rig.network.sent) == 1


def test_duplicate_waiters_are_bounded() -> None:
    rig = make_rig()
    rig.pay(*[card_payment("many")] * (MAX_DUPLICATE_WAITERS + 2))
    refused = [r for r in rig.inbox.responses if isinstance(r, ErrorReply)]
    assert [r.code for r in refused] == ["overloaded"]


def test_duplicate_of_a_payment_under_resolution_waits_with_a_bound() -> None:
    rig = make_rig()
    rig.core.index.begin("recovered-1", b"x", rig.now)  # as start-up does for unfinished
    request = card_payment("recovered-1")
    import msgspec

    from switch.payment.idempotency import body_hash
    digest = body_hash(msgspec.msgpack.encode(request), b"k" * 32)
    rig.core.index.get("recovered-1").body_hash = digest  # type: ignore[union-attr]
    rig.pay(request)
    assert rig.inbox.responses == []
    for _ in range(110):
        rig.advance(0.02)
    reply = rig.only_reply()
    assert isinstance(reply, ErrorReply) and "still in flight" in reply.message


def test_a_retry_of_a_recovered_payment_hears_its_current_state() -> None:
    import msgspec

    from switch.payment.idempotency import body_hash

    rig = make_rig()
    request = card_payment("recovered-2")
    digest = body_hash(msgspec.msgpack.encode(request), b"k" * 32)
    rig.core.index.begin("recovered-2", digest, rig.now)
    rig.core.recovered("recovered-2", "P0-7", "card-a")
    rig.pay(request)
    rig.advance(0.5)
    assert rig.inbox.responses == []  # waits for the resolver first
    rig.core.index.complete("recovered-2", Result("P0-7", Status.REVERSED, "00"))
    rig.advance(0.02)
    assert result_of(rig.only_reply()) == ("reversed", "00")
    rig.inbox.responses.clear()
    request = card_payment("recovered-3")
    rig.core.index.begin("recovered-3", body_hash(msgspec.msgpack.encode(request), b"k" * 32),
                         rig.now)
    rig.core.recovered("recovered-3", "P0-8", "card-a")
    rig.pay(request)
    for _ in range(110):
        rig.advance(0.02)
    reply = rig.only_reply()
    assert isinstance(reply, Reply) and reply.replay
    assert (reply.result.payment_id, reply.result.status) == ("P0-8", "unknown")


def test_an_unexpected_error_fails_only_that_payment() -> None:
    class Flaky(RiskEngine):
        def assess(self, payment: Payment, now: float) -> Any:
            if payment.idempotency_key == "boom":
                raise RuntimeError("bug in a rule")
            return super().assess(payment, now)

    rig = make_rig(risk=Flaky(RiskConfig(), b"k" * 32))
    rig.pay(card_payment("ok-1"), card_payment("boom", payer="B"), qr_payment("ok-2"))
    boom = [r for r in rig.inbox.responses if isinstance(r, ErrorReply)]
    assert [(r.id, r.code) for r in boom] == [(2, "unavailable")]
    assert rig.core.errors == 1 and rig.core.index.get("boom") is None
    rig.commit()
    for i in range(len(rig.network.sent)):
        rig.answer(APPROVED, i)
    rig.commit()
    assert sorted(r.id for r in rig.inbox.responses) == [1, 2, 3]  # type: ignore[union-attr]
    assert rig.slots_balanced()


def test_an_error_after_sending_makes_the_outcome_unknown() -> None:
    rig = make_rig()
    rig.pay(card_payment("after-send"))
    rig.commit()

    def broken(*args: object) -> None:
        raise RuntimeError("bug while recording health")

    rig.router.health.record = broken  # type: ignore[method-assign]
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("unknown", "68")
    assert len(rig.resolver.submitted) == 1 and rig.core.errors == 1
    assert rig.slots_balanced()


@pytest.mark.parametrize("path", ["approved", "declined", "timeout", "not_sent_all",
                                  "technical_then_budget", "shed_journal", "error"])
def test_the_admission_slot_is_released_exactly_once(path: str) -> None:
    rig = make_rig(resilience=ResilienceConfig(
        retry_budget=RetryBudgetConfig(ratio=0.0, min_per_s=0.0)))
    if path == "not_sent_all":
        rig.network.down.update({"card-a", "card-b"})
    if path == "shed_journal":
        rig.journal.full = True
    rig.pay(card_payment(f"slot-{path}"))
    rig.commit()
    if path in ("approved", "declined", "technical_then_budget"):
        rig.answer({"approved": APPROVED, "declined": DECLINED}.get(path, TECHNICAL))
    elif path == "timeout":
        rig.advance(1.0)
    elif path == "error":
        rig.router.health.record = None  # type: ignore[assignment, method-assign]
        rig.answer(APPROVED)
    rig.commit()
    assert len(rig.inbox.responses) == 1
    assert rig.slots_balanced(), (rig.acquired, rig.released)
    assert len(rig.released) == len(set(zip(rig.released, range(len(rig.released)), strict=True)))


def _ids(responses: list[Response]) -> Iterator[int | None]:
    return (r.id for r in responses)  # type: ignore[union-attr]


def test_status_names_are_the_wire_contract() -> None:
    assert {s.value for s in Status} >= {"approved", "declined", "failed", "unknown"}


def test_an_attempt_past_its_deadline_takes_no_probe_slot() -> None:
    # A half-open breaker admits half_open_probes calls, each holding a slot until it
    # reports. An attempt whose deadline passed while its intent waited (a disk stall)
    # makes no call: it must not take a slot, or three such leave the breaker refusing a
    # healthy issuer for good (the simulator's seed 7680, stop 13).
    rig = make_rig()
    rig.now = 100.0
    rig.pay(card_payment("late-1"))
    rig.now += rig.router.config.payment_deadline_s + 0.1  # the intent's commit was slow
    breaker = rig.router.health.breakers["card-a"]
    breaker.force_open(rig.now - breaker.config.open_s - 0.001)
    assert breaker.poll(rig.now).value == "half_open"
    rig.commit()
    assert rig.network.sent == []
    assert breaker._probes_reserved == 0 and breaker.available(rig.now)
    assert rig.slots_balanced()


def test_a_bug_before_the_breakers_verdict_gives_its_probe_slot_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The answer came, but a bug struck before the breaker heard of it: the attempt still
    # holds its token and slot, so the undo gives both back. Until stop 15 the token was
    # cleared first, and such a bug kept the half-open probe slot until probe_timeout_s.
    rig = make_rig()
    rig.now = 100.0
    breaker = rig.router.health.breakers["card-a"]
    breaker.force_open(rig.now - breaker.config.open_s - 0.001)
    rig.pay(card_payment("bug-after-answer"))
    rig.commit()
    assert breaker._probes_reserved == 1  # the probe is in flight

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug while classifying an answer")

    monkeypatch.setattr("switch.payment.core.classify", broken)
    rig.answer(NetworkReply("approved", "00", "A1"))
    assert rig.core.errors == 1
    assert breaker._probes_reserved == 0 and breaker.available(rig.now)
    assert rig.slots_balanced()


def test_a_bug_in_a_send_gives_its_probe_slot_back() -> None:
    # The call never went out and will never report: the half-open breaker must not keep
    # its probe slot for it (three such and a healthy issuer is refused, as seed 7680's
    # leak did, until the probe timeout re-opens the breaker).
    rig = make_rig()
    rig.now = 100.0
    breaker = rig.router.health.breakers["card-a"]
    breaker.force_open(rig.now - breaker.config.open_s - 0.001)
    assert breaker.poll(rig.now).value == "half_open"

    def broken(endpoint: str, token: int, payment: Payment) -> None:
        raise RuntimeError("bug in an adapter's send")

    rig.network.send = broken  # type: ignore[method-assign]
    rig.pay(card_payment("bug-in-send"))
    rig.commit()
    assert rig.core.errors == 1
    assert breaker._probes_reserved == 0 and breaker.available(rig.now)
    assert breaker.state.value == "half_open"  # no verdict on the endpoint
    assert rig.slots_balanced()


def test_rrns_are_never_reused_across_restarts() -> None:
    # The RRN was the boot's last two digits and a count from 1 each boot: boot 101's
    # first payment had boot 1's RRN (a 4-worker cluster numbers boots N apart: its 26th
    # restart). Now a durable 12-digit sequence, resumed past each boot's reservation.
    store = MemoryTraceStore()
    seen: list[str] = []
    for boot in (1, 2, 101, 201):
        rig = make_rig(boot_count=boot, rrns=TraceNumbers(store, max_value=MAX_RRN))
        rig.pay(*(card_payment(f"rrn-{boot}-{i}") for i in range(3)))
        rig.commit()  # the intents are durable: the 0100s go out
        seen += [p.card.rrn for _, _, p in rig.network.sent if p.card is not None]
    assert len(seen) == 12 and len(set(seen)) == 12, seen
    assert all(len(r) == 12 and r.isdigit() for r in seen)


def _luhn_pan(stem: str) -> str:
    """``stem`` plus the check digit that makes it pass the Luhn check."""
    return next(stem + d for d in "0123456789" if luhn_ok(stem + d))


EIGHT_DIGIT_BINS = """
[targets.low]
endpoints = ["card-a"]
[targets.high]
endpoints = ["card-b"]
[[card.ranges]]
low = "45678900"
high = "45678949"
target = "low"
[[card.ranges]]
low = "45678950"
high = "45678999"
target = "high"
"""


@pytest.mark.parametrize(("stem", "kept", "target"), [
    ("456789601234567", "45678960", "high"),  # 16 digits: the first 8 are kept
    ("456789101234567", "45678910", "low"),
    ("45678960123456", "456789", "low"),  # 15 digits: the first 6, keyed 45678900000
])
def test_a_card_keeps_and_routes_on_its_first_8_digits(stem: str, kept: str,
                                                         target: str) -> None:
    # ISO/IEC 7812 issuer numbers are 8 digits: two issuers may share a 6-digit BIN. Kept
    # at 6 digits, every card of 456789xx routed as 45678900, to the first issuer.
    rig = make_rig()
    rig.pay(card_payment("bin8", pan=_luhn_pan(stem)))
    rig.commit()
    [(_, _, payment)] = rig.network.sent
    assert payment.card is not None and payment.card.bin == kept
    table = load_route_table(EIGHT_DIGIT_BINS, ["card-a", "card-b"])
    found = table.lookup(payment)
    assert found is not None and found.name == target
