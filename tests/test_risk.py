"""Risk rules: amount limits, blocklists, velocity windows, AML flag."""

from __future__ import annotations

import datetime as dt

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.model import CardRef, Party, Payment, Result, Status, tokenize_pan
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.risk import AmountLimit, RiskConfig, RiskEngine, VelocityConfig

KEY = b"test-key-0123456789"
PAN = "4111111111111111"


def payment(
    amount: int = 1000,
    currency: str = "USD",
    account: str = "A1",
    pan: str = PAN,
    channel: str = "card",
) -> Payment:
    card = CardRef(tokenize_pan(pan, KEY), pan[-4:], pan[:6], "2812", "T1", "M1", "5999")
    return Payment(
        "P1-1",
        "k",
        channel,
        amount,
        currency,
        Party(account),
        Party("B1"),  # type: ignore[arg-type]
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        card=card,
    )


def engine(**kwargs: object) -> RiskEngine:
    return RiskEngine(msgspec.convert(kwargs, RiskConfig), KEY)


def test_amount_limit_per_channel_and_currency() -> None:
    risk = RiskEngine(RiskConfig(amount_limits=[AmountLimit("card", "USD", 5000)]), KEY)
    assert risk.assess(payment(5000), 0).reason is None
    decision = risk.assess(payment(5001), 0)
    assert (decision.reason, decision.rule) == ("61", "amount_limit")
    assert risk.assess(payment(5001, currency="EUR"), 0).reason is None


def test_blocklists() -> None:
    risk = engine(blocked_pans=[PAN], blocked_accounts=["BAD"])
    assert risk.assess(payment(), 0).rule == "blocklist"
    assert risk.assess(payment(pan="5500000000000004", account="BAD"), 0).rule == "blocklist"
    assert risk.assess(payment(pan="5500000000000004"), 0).reason is None


def test_velocity_count_slides() -> None:
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(window_s=10, max_count=3)), KEY)
    for t in range(3):
        assert risk.assess(payment(), float(t)).reason is None
    assert risk.assess(payment(), 3.0).rule == "velocity_count"
    # The first entry (t=0) leaves the window at t=10; one more fits.
    assert risk.assess(payment(), 10.0).reason is None
    assert risk.assess(payment(), 10.5).rule == "velocity_count"


def test_velocity_amount_in_cny_equivalent() -> None:
    config = RiskConfig(velocity=VelocityConfig(window_s=60, max_amount_cny_minor=710_000))
    risk = RiskEngine(config, KEY)
    assert risk.assess(payment(50_000), 0).reason is None  # 500 USD = 3550 CNY
    assert risk.assess(payment(50_000), 1).reason is None  # 7100 CNY total: at the limit
    assert risk.assess(payment(1), 2).rule == "velocity_amount"


def test_keys_whose_events_all_expired_are_forgotten() -> None:
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(window_s=10)), KEY)
    for i in range(100):  # a new card and account every second: two keys each
        risk.assess(payment(account=f"A{i}", pan=f"4{i:014d}"), float(i))
    # Only the last ten seconds' keys can still decide anything; the rest are gone.
    assert risk.tracked_keys == 2 * 10
    assert risk.assess(payment(account="A95", pan=f"4{95:014d}"), 100.0).reason is None


def test_velocity_keys_are_bounded() -> None:
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(max_keys=10)), KEY)
    for i in range(100):
        risk.assess(payment(account=f"A{i}", pan=PAN if i % 2 else "5500000000000004"), 0)
    assert risk.tracked_keys <= 10


def test_aml_flag_default_threshold_is_50000_cny() -> None:
    risk = engine()
    assert risk.assess(payment(5_000_000, "CNY", account="X1"), 0).aml_flag is True  # exactly
    assert risk.assess(payment(4_999_999, "CNY", account="X2"), 0).aml_flag is False
    assert risk.assess(payment(800_000, "USD", account="X3"), 0).aml_flag is True  # 56,800 CNY
    assert risk.assess(payment(700_000, "USD", account="X4"), 0).aml_flag is False  # 49,700 CNY
    assert risk.assess(payment(800_000, "USD", account="X5"), 0).reason is None  # flag, not decline


def test_idempotency_index_is_bounded_and_keeps_in_flight() -> None:
    index = IdempotencyIndex(retention_s=100, max_keys=3)
    for i in range(3):
        index.begin(f"k{i}", b"h", 0)
        index.complete(f"k{i}", Result(f"P{i}", Status.APPROVED, "00"))
    index.begin("in-flight", b"h", 1)
    index.begin("k-new", b"h", 1)
    assert "in-flight" in index and "k0" not in index and len(index) <= 3 + 1
    index.begin("late", b"h", 500)  # retention: everything completed before t=400 goes
    assert "k2" not in index and "in-flight" in index
    # A pending entry at the front does not shield completed ones behind it.
    index.complete("k-new", Result("Pn", Status.APPROVED, "00"))
    index.begin("later", b"h", 1000)
    assert "k-new" not in index and "in-flight" in index


class _ReferenceVelocity:
    """The sliding windows as plainly as they can be written: a list of (time, weight)
    per key; before a new key, the least recently seen keys whose events have all expired
    are forgotten, and past ``max_keys`` the least recently seen key."""

    def __init__(self, window_s: float, max_count: int, max_amount: int, max_keys: int) -> None:
        self.window_s, self.max_count, self.max_amount = window_s, max_count, max_amount
        self.max_keys = max_keys
        self.events: dict[str, list[tuple[float, int]]] = {}

    def assess(self, keys: tuple[str, ...], weight: int, now: float) -> str | None:
        windows = []
        for key in keys:
            events = self.events.pop(key, None)
            if events is None:
                events = []
                while self.events:
                    oldest = next(iter(self.events))
                    if oldest in keys:
                        break  # this payment's own key, just seen: never forgotten
                    kept = self.events[oldest]
                    if kept and kept[-1][0] > now - self.window_s:
                        break
                    del self.events[oldest]
                if len(self.events) >= self.max_keys:
                    del self.events[next(iter(self.events))]
            self.events[key] = [e for e in events if e[0] > now - self.window_s]
            windows.append(self.events[key])
        for events in windows:
            if len(events) >= self.max_count:
                return "velocity_count"
            if sum(w for _, w in events) + weight > self.max_amount:
                return "velocity_amount"
        for events in windows:
            events.append((now, weight))
        return None


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 9),
                          st.sampled_from([0, 250, 1_000, 2_500, 5_000, 10_000])),
                max_size=300))
@settings(max_examples=200)
def test_velocity_windows_decide_as_a_plain_sliding_window(
        steps: list[tuple[int, int, int]]) -> None:
    """Arrays with a moving head and a dict as the LRU (GC-free, issue 12) decide exactly
    as lists per key would: expiry at the window's edge, compaction, eviction included."""
    # Gaps that land exactly on the window's edge; limits both rules reach.
    risk = engine(velocity={"window_s": 10, "max_count": 6, "max_amount_cny_minor": 150_000,
                            "max_keys": 6}, fx_to_cny={"USD": 7.0})
    reference = _ReferenceVelocity(10, 6, 150_000, 6)
    now = 0.0
    for account, units, gap_ms in steps:
        now += gap_ms / 1000
        p = payment(amount=units * 1000, account=f"A{account}", pan=PAN)
        decision = risk.assess(p, now)
        assert (decision.rule or None) == reference.assess(p.velocity_keys, units * 7000, now)
    assert risk.tracked_keys == len(reference.events)
