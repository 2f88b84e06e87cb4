"""Micro-benchmarks: the frame codec and each pipeline stage, in isolation.

Run: ``.venv/bin/python -m pytest bench/test_micro_core.py --benchmark-enable --benchmark-only``
(``make bench`` does this). Numbers are per call; compare within one run.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import anyio
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pytest_benchmark.fixture import BenchmarkFixture

from loadtests.harness.workload import Workload, WorkloadMix
from switch.adapters.base import ChannelAdapter, NetworkReply
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.journal import (
    FINAL,
    Journal,
    JournalRecord,
    OnFull,
    encode_payment,
    encode_result,
    open_database,
)
from switch.model import (
    CardRef,
    Channel,
    Party,
    Payment,
    Result,
    Status,
    check_transition,
    tokenize_pan,
)
from switch.observability.metrics import LATENCY_BUCKETS, SwitchMetrics
from switch.payment.core import PaymentCore
from switch.payment.idempotency import IdempotencyIndex, body_hash
from switch.payment.risk import RiskConfig, RiskEngine, VelocityConfig
from switch.payment.validation import validate
from switch.protocols.wire import (
    FrameDecoder,
    Pay,
    Reply,
    ReplyEncoder,
    Response,
    decode_request,
    encode_request,
)
from switch.routing.resilience import ResilienceConfig
from switch.routing.router import Route, Router
from switch.routing.table import load_route_table
from tests.payments import card_payment

KEY = b"bench-key-0123456789"
REQUEST = card_payment()
FRAME = encode_request(Pay(1, REQUEST))
PAYMENT = Payment(
    "P1-1", "k1", "card", 1000, "USD", Party("A1"), Party("B1"),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    card=CardRef(tokenize_pan("4111111111111111", KEY), "1111", "411111", "2812", "T1", "M1",
                 "5999"),
)
RESULT = Result("P1-1", Status.APPROVED, "00", "ABC123", "standin-card")


def test_frame_decode_64k_read(benchmark: BenchmarkFixture) -> None:
    """Per read of ~64 KiB: every frame parsed and typed-decoded."""
    chunk = FRAME * (65536 // len(FRAME))
    frames_per_read = 65536 // len(FRAME)

    def run() -> None:
        for payload in FrameDecoder().feed(chunk):
            decode_request(payload)

    benchmark.extra_info["frames_per_read"] = frames_per_read
    benchmark(run)


def test_reply_encode_batch_of_100(benchmark: BenchmarkFixture) -> None:
    def run() -> bytes:
        out = ReplyEncoder()
        for i in range(100):
            out.add(Reply(i, RESULT))
        return out.take()

    benchmark(run)


def test_validate(benchmark: BenchmarkFixture) -> None:
    benchmark(validate, REQUEST)


def test_dedupe_hash_and_lookup(benchmark: BenchmarkFixture) -> None:
    index = IdempotencyIndex(retention_s=86400, max_keys=1_000_000)
    encode = msgspec.msgpack.Encoder().encode

    def run() -> None:
        digest = body_hash(encode(REQUEST), KEY)
        index.get(REQUEST.idempotency_key)
        assert digest

    benchmark(run)


def test_risk_assess(benchmark: BenchmarkFixture) -> None:
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(max_count=10**5,
                                                          max_amount_cny_minor=10**15)), KEY)
    clock = iter(range(10**9))
    benchmark(lambda: risk.assess(PAYMENT, float(next(clock)) * 1e-3))


def test_risk_assess_key_mix(benchmark: BenchmarkFixture) -> None:
    """Per 1,000 payments of the simulator's mix at its 200/s, default velocity limits.

    test_risk_assess repeats one card, so it only ever finds an existing key; here cards and
    accounts are Zipf-skewed as the simulator draws them, so about a third of the key
    look-ups are new keys (a window made, expired keys forgotten) and some payments are
    declined for velocity, as in the simulated hour.
    """
    workload = Workload(1, WorkloadMix(duplicate_share=0.0, invalid_share=0.0))
    payments = []
    for i in range(24_000):  # two minutes of traffic, then the same again, later
        request = workload.next()[0]
        card = None
        if request.card is not None:
            pan = request.card.pan
            card = CardRef(tokenize_pan(pan, KEY), pan[-4:], pan[:6], "2812", "T1", "M1", "5999")
        payments.append(Payment(
            f"P1-{i}", request.idempotency_key, request.channel, request.amount,
            request.currency, request.payer, request.payee, PAYMENT.received_at, card=card,
        ))
    risk = RiskEngine(RiskConfig(), KEY)
    clock = itertools.count()

    def run() -> None:
        assess, n = risk.assess, len(payments)
        for _ in range(1000):
            i = next(clock)
            assess(payments[i % n], i / 200)

    benchmark(run)


def test_state_transitions(benchmark: BenchmarkFixture) -> None:
    def run() -> None:
        check_transition("P1-1", Status.RECEIVED, Status.ROUTED)
        check_transition("P1-1", Status.ROUTED, Status.SENT)
        check_transition("P1-1", Status.SENT, Status.APPROVED)

    benchmark(run)


def test_journal_records_encode(benchmark: BenchmarkFixture) -> None:
    def run() -> None:
        encode_payment(PAYMENT)
        encode_result(RESULT)

    benchmark(run)


def test_metrics_per_payment(benchmark: BenchmarkFixture) -> None:
    metrics = SwitchMetrics(networks=["standin-card"])
    counter = metrics.payments[("card", Status.APPROVED)]
    histogram = metrics.duration["card"]
    network = metrics.network_duration["standin-card"]

    def run() -> None:
        counter.inc()
        histogram.observe(0.002)
        network.observe(0.001)
        metrics.in_flight.set(3)

    benchmark(run)


def test_metrics_per_payment_prometheus_client(benchmark: BenchmarkFixture) -> None:
    """The same calls on prometheus-client's own children (locked), for comparison."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["channel"], registry=registry).labels("card")
    histograms = Histogram("h", "h", ["channel"], buckets=LATENCY_BUCKETS, registry=registry)
    histogram, network = histograms.labels("card"), histograms.labels("standin-card")
    gauge = Gauge("g", "g", registry=registry)

    def run() -> None:
        counter.inc()
        histogram.observe(0.002)
        network.observe(0.001)
        gauge.set(3)

    benchmark(run)


def test_journal_group_commit_1000_payments(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """1000 payments x 2 records through the real group-commit path (fsync on)."""
    db = open_database(tmp_path / "bench.db", "group")
    row_intent = JournalRecord.intent(PAYMENT, b"h" * 16, 1)
    row_final = JournalRecord.outcome(FINAL, PAYMENT, RESULT, b"h" * 16, 2)

    async def write_all() -> None:
        journal = Journal(db, mode="group", max_batch=8192, max_pending=100_000,
                          metrics=SwitchMetrics(), writer="loop")
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)

            # 50 concurrent writers x 20 payments: concurrency for group commit without
            # paying a task spawn per payment (that cost belongs to the server, not here).
            async def writer() -> None:
                for _ in range(20):
                    await journal.write(row_intent, OnFull.SHED)
                    await journal.write(row_final, OnFull.WAIT)

            async with anyio.create_task_group() as writers:
                for _ in range(50):
                    writers.start_soon(writer)
            await journal.close()

    # pytest-benchmark leaves BenchmarkFixture.pedantic() unannotated.
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        lambda: anyio.run(write_all, backend="asyncio", backend_options={"use_uvloop": True}),
        rounds=5, iterations=1)


# --------------------------------------------------------------------------- the core alone

CORE_BATCH = 100
CORE_ROUNDS = 300
CORE_TABLE = """
[targets.card]
endpoints = ["card"]
[targets.swift]
endpoints = ["swift"]
[targets.qr]
endpoints = ["qr"]
[card]
default = "card"
[swift]
default = "swift"
[qr]
default = "qr"
"""
CORE_APPROVED = NetworkReply("approved", "00", "A1")


class _CoreJournal:
    """The journal port with no disk: every record joins the open batch."""

    def __init__(self) -> None:
        self.ticket = 0
        self.rows = 0

    def append(self, row: tuple[str, str, str, str, bytes, bytes, int]) -> object | None:
        self.rows += 1
        return self.ticket


class _CoreNetwork:
    """The network port with no network: what was sent, to answer it by hand."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, endpoint: str, token: int, payment: Payment) -> None:
        self.sent.append(token)

    def cancel(self, endpoint: str, token: int) -> None:
        return None


class _CoreInbox:
    def __init__(self) -> None:
        self.responses: list[Response] = []

    def reply(self, response: Response) -> None:
        self.responses.append(response)


class _NoResolver:
    def submit(self, payment: Payment, digest: bytes, route: Route) -> None:
        raise AssertionError("no payment of this benchmark has an unknown outcome")


def test_core_whole_life_batch_of_100(benchmark: BenchmarkFixture) -> None:
    """The sans-IO core alone, 100 payments a batch (bench/e2e.py's mix and config: card,
    SWIFT, QR; metrics on): their requests in one event, the intents' commit, the
    networks' answers in one event, the finals' commit, the 100 replies. No IO, no event
    loop, no SQLite: what the payment logic costs before any shell."""
    channels: tuple[Channel, ...] = ("card", "swift", "qr")
    adapters: dict[str, ChannelAdapter] = {
        c: StandInNetwork(StandInNetworkConfig(c, c)) for c in channels}
    metrics = SwitchMetrics(networks=adapters, enabled=True)
    config = ResilienceConfig()
    router = Router(load_route_table(CORE_TABLE, adapters), adapters, config, metrics, seed=1)
    journal, network, inbox = _CoreJournal(), _CoreNetwork(), _CoreInbox()
    core = PaymentCore(
        journal=journal, network=network,
        index=IdempotencyIndex(retention_s=3600, max_keys=4 * CORE_BATCH * CORE_ROUNDS),
        risk=RiskEngine(RiskConfig(velocity=VelocityConfig(
            max_count=10**5, max_amount_cny_minor=10**15)), KEY),
        router=router, resolver=_NoResolver(), metrics=metrics, token_key=KEY,
        boot_count=1, seed=1, wall_offset=1.7e9)
    workload = Workload(7, WorkloadMix(duplicate_share=0.0, invalid_share=0.0))
    batches = [[(i, workload.next()[0]) for i in range(CORE_BATCH)]
               for _ in range(CORE_ROUNDS + 2)]
    clock = itertools.count(1)

    def run() -> None:
        batch = batches.pop()
        now = float(next(clock))
        network.sent.clear()
        inbox.responses.clear()
        core.on_requests(inbox, batch, now, now, now)
        core.on_committed(journal.ticket, now, now)
        journal.ticket += 1
        core.on_replies([(token, CORE_APPROVED) for token in network.sent], now + 0.001,
                        now + 0.001)
        core.on_committed(journal.ticket, now + 0.001, now + 0.001)
        journal.ticket += 1
        assert len(inbox.responses) == CORE_BATCH and core.in_flight == 0

    benchmark.pedantic(run, rounds=CORE_ROUNDS, iterations=1,  # type: ignore[no-untyped-call]
                       warmup_rounds=2)
