"""Retry policy and budget, retry safety, endpoint selection strategies, admission."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.adapters.base import NetworkReply
from switch.fielderrors import describe_validation_error
from switch.routing.admission import AdmissionConfig, AdmissionLimiter
from switch.routing.breaker import BreakerConfig
from switch.routing.health import (
    Demotions,
    EndpointHealth,
    EwmaLatency,
    SuccessWindow,
    select_endpoints,
)
from switch.routing.resilience import ResilienceConfig
from switch.routing.retry import (
    FailureKind,
    RetryBudget,
    RetryBudgetConfig,
    RetryPolicy,
    classify,
    is_safe_to_retry,
)
from switch.routing.table import Target
from switch.routing.tablespec import LeastLatency, Priority, Sticky, SuccessRate, Weighted

EPS = ("a", "b", "c")


def target(strategy: object, endpoints: tuple[str, ...] = EPS) -> Target:
    return Target("t", "", endpoints, strategy, 1.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ retry policy


@settings(max_examples=300)
@given(attempt=st.integers(0, 63), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_bounds(attempt: int, seed: int) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.4)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(0.4, 0.01 * 2**attempt)


def test_full_jitter_spreads_over_the_whole_interval() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=10.0)
    rng = random.Random(1)
    draws = [policy.backoff(3, rng) for _ in range(5000)]  # cap 0.8
    assert max(draws) <= 0.8 and min(draws) >= 0
    assert abs(sum(draws) / len(draws) - 0.4) < 0.02  # uniform: mean is half the cap
    assert min(draws) < 0.01 and max(draws) > 0.79


def test_plan_retry_respects_attempt_cap_and_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.1)
    rng = random.Random(0)
    assert policy.plan_retry(1, rng, now=0.0, deadline=3.0) is not None
    assert policy.plan_retry(2, rng, now=0.0, deadline=3.0) is not None
    assert policy.plan_retry(3, rng, now=0.0, deadline=3.0) is None  # 3 attempts made
    # The next attempt could not get its minimum time before the deadline.
    assert policy.plan_retry(1, rng, now=2.5, deadline=3.0, min_attempt_s=0.5) is None
    delay = policy.plan_retry(1, rng, now=2.0, deadline=3.0, min_attempt_s=0.5)
    assert delay is not None and 2.0 + delay + 0.5 <= 3.0


def test_retry_policy_config_bounds() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"max_attempts": 6}, RetryPolicy)
    assert describe_validation_error(info.value).startswith("max_attempts:")
    with pytest.raises(msgspec.ValidationError, match="base_delay_s"):
        msgspec.convert({"base_delay_s": 2.0, "max_delay_s": 1.0}, RetryPolicy)
    cfg = msgspec.convert({"retry": {"max_attempts": 4}, "breakers": {"x": {}}}, ResilienceConfig)
    assert cfg.retry.max_attempts == 4 and cfg.breakers["x"] == BreakerConfig()


# ------------------------------------------------------------------ retry budget


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.05, 0.1, 0.5]),
    min_per_s=st.sampled_from([0.0, 0.5, 1.0]),
    rate_steps=st.lists(st.integers(0, 40), min_size=1, max_size=240),
)
def test_retry_budget_holds_under_a_failure_storm(
    ratio: float, min_per_s: float, rate_steps: list[int]
) -> None:
    """Every payment fails and asks for a retry (100% failure storm, varying traffic).
    At every granted retry, the retries in the trailing window never exceed
    ratio * first attempts in it plus the per-second minimum over the window."""
    cfg = RetryBudgetConfig(ratio=ratio, window_s=10.0, buckets=10, min_per_s=min_per_s)
    budget = RetryBudget(cfg)
    firsts: list[float] = []
    retries: list[float] = []
    step = 0.125  # exact in binary: window arithmetic in the check has no rounding
    for i, n in enumerate(rate_steps):
        now = i * step
        for _ in range(n):
            budget.record_attempt(now)
            firsts.append(now)
            for _ in range(4):  # each failure asks for up to 4 retries
                if budget.try_spend_retry(now):
                    retries.append(now)
                    lo = now - cfg.window_s
                    in_window = sum(1 for t in retries if lo <= t <= now)
                    base = sum(1 for t in firsts if lo <= t <= now)
                    assert in_window <= ratio * base + min_per_s * cfg.window_s + 1e-9
        assert budget.remaining(now) >= 0
    # And the storm was not simply refused outright: with traffic, the budget is used.
    if ratio >= 0.1 and sum(rate_steps) >= 100:
        assert retries


def test_retry_budget_allows_about_ratio_in_steady_state() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.1, window_s=10, buckets=10, min_per_s=0))
    granted = 0
    for i in range(3000):  # 100 payments/s for 30 s, all failing
        now = i / 100
        budget.record_attempt(now)
        granted += budget.try_spend_retry(now)
    assert 0.08 * 3000 <= granted <= 0.1 * 3000


def test_quiet_switch_can_still_retry() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.1, window_s=10, min_per_s=0.5))
    assert budget.remaining(0.0) == 5.0
    assert all(budget.try_spend_retry(float(t)) for t in range(5))
    assert not budget.try_spend_retry(5.0)
    assert budget.try_spend_retry(21.0)  # the old retries aged out


def test_retry_budget_clamps_time_going_back() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, window_s=10, buckets=10, min_per_s=0.2))
    assert budget.try_spend_retry(100.0) and budget.try_spend_retry(100.0)
    # A late report with an older time must not see a window without those retries.
    assert not budget.try_spend_retry(88.0)
    assert budget.remaining(88.0) == 0.0


# ------------------------------------------------------------------ retry safety


def test_classify() -> None:
    assert classify(None, not_sent=True) is FailureKind.NOT_SENT
    assert classify(None) is FailureKind.UNKNOWN
    assert classify(NetworkReply("approved", "00")) is None
    assert classify(NetworkReply("failed", "91")) is FailureKind.TECHNICAL
    assert classify(NetworkReply("failed", "96")) is FailureKind.TECHNICAL
    assert classify(NetworkReply("failed", "68")) is FailureKind.UNKNOWN
    assert classify(NetworkReply("declined", "94")) is FailureKind.UNKNOWN
    assert classify(NetworkReply("declined", "51")) is FailureKind.DECLINED
    assert classify(NetworkReply("declined", "05")) is FailureKind.DECLINED


@pytest.mark.parametrize("channel", ["card", "swift", "qr"])
def test_retry_safety_rules(channel: str) -> None:
    ch = channel  # type: ignore[assignment]
    assert is_safe_to_retry(ch, FailureKind.NOT_SENT, same_endpoint=True)
    assert is_safe_to_retry(ch, FailureKind.NOT_SENT, same_endpoint=False)
    # Outcome unknown: not until the first attempt is proven void (reversal acknowledged).
    assert not is_safe_to_retry(ch, FailureKind.UNKNOWN, same_endpoint=False)
    assert not is_safe_to_retry(ch, FailureKind.UNKNOWN, same_endpoint=True)
    assert is_safe_to_retry(ch, FailureKind.UNKNOWN, same_endpoint=False, resolved=True)
    # Technical decline answered by the network: another endpoint only.
    assert is_safe_to_retry(ch, FailureKind.TECHNICAL, same_endpoint=False)
    assert not is_safe_to_retry(ch, FailureKind.TECHNICAL, same_endpoint=True)
    assert not is_safe_to_retry(ch, FailureKind.DECLINED, same_endpoint=False)


# ------------------------------------------------------------------ strategies


def test_priority_keeps_listed_order_and_skips_open_breakers() -> None:
    health = EndpointHealth(EPS, breaker=BreakerConfig(consecutive_failures=1, open_s=5))
    t = target(Priority())
    rng = random.Random(0)
    assert health.select(t, 0.0, rng) == ["a", "b", "c"]
    health.record("a", 0.0, False, 0.01)
    assert health.select(t, 1.0, rng) == ["b", "c"]
    assert health.select(t, 5.0, rng) == ["a", "b", "c"]  # half-open: a probe may go
    for e in EPS:
        health.breakers[e].force_open(6.0)
    assert health.select(t, 6.0, rng) == []


def test_weighted_split_within_tolerance() -> None:
    t = target(Weighted(weights=(6, 3, 1)))
    rng = random.Random(42)
    firsts = Counter(select_endpoints(t, now=0.0, rng=rng)[0] for _ in range(20_000))
    assert abs(firsts["a"] / 20_000 - 0.6) < 0.02
    assert abs(firsts["b"] / 20_000 - 0.3) < 0.02
    assert abs(firsts["c"] / 20_000 - 0.1) < 0.02
    order = select_endpoints(t, now=0.0, rng=random.Random(1))
    assert sorted(order) == ["a", "b", "c"]  # the rest are failover, in listed order


def test_weighted_zero_weight_is_standby_only() -> None:
    health = EndpointHealth(EPS, breaker=BreakerConfig(consecutive_failures=1))
    t = target(Weighted(weights=(1, 0, 1)))
    rng = random.Random(3)
    assert all(health.select(t, 0.0, rng)[0] != "b" for _ in range(500))
    health.record("a", 0.0, False, 0.01)
    health.record("c", 0.0, False, 0.01)
    assert health.select(t, 0.5, rng) == ["b"]  # the standby takes over when alone


def test_least_latency_picks_the_lowest_ewma() -> None:
    health = EndpointHealth(EPS)
    t = target(LeastLatency(exploration=0.0))
    for _ in range(5):
        health.record("a", 0.0, True, 0.050)
        health.record("b", 0.0, True, 0.010)
    rng = random.Random(0)
    # c was never measured: it goes first once, to get measured.
    assert health.select(t, 0.0, rng) == ["c", "b", "a"]
    health.record("c", 0.0, True, 0.030)
    assert health.select(t, 0.0, rng) == ["b", "c", "a"]
    for _ in range(20):
        health.record("b", 0.0, True, 0.200)  # b slows down
    assert health.select(t, 0.0, rng)[0] == "c"


def test_fast_failures_do_not_look_fast() -> None:
    health = EndpointHealth(
        ("a", "b"),
        breaker=BreakerConfig(consecutive_failures=0, failure_ratio=1.0),
        failure_latency_s=0.5,
    )
    t = target(LeastLatency(exploration=0.0), ("a", "b"))
    for i in range(10):
        health.record("a", 0.0, i % 3 != 0, 0.0001)  # a third refused in 0.1 ms
        health.record("b", 0.0, True, 0.020)
    assert health.select(t, 0.0, random.Random(0)) == ["b", "a"]


def test_least_latency_explores_a_small_share() -> None:
    latency = {e: EwmaLatency() for e in EPS}
    for e, v in zip(EPS, (0.01, 0.02, 0.03), strict=True):
        latency[e].observe(v)
    t = target(LeastLatency(exploration=0.1))
    rng = random.Random(5)
    firsts = Counter(
        select_endpoints(t, now=0.0, rng=rng, latency=latency)[0] for _ in range(10_000)
    )
    assert abs(firsts["a"] / 10_000 - 0.9) < 0.015
    assert firsts["b"] > 0 and firsts["c"] > 0


def test_ewma_weights_recent_samples() -> None:
    e = EwmaLatency(alpha=0.5)
    assert e.value is None
    e.observe(1.0)
    e.observe(0.0)
    assert e.value == 0.5 and e.samples == 2


def test_success_rate_demotes_and_readmits() -> None:
    rule = SuccessRate(exploration=0.0, demote_below=0.8, retry_later_s=30.0, min_calls=10)
    health = EndpointHealth(
        ("a", "b"),
        breaker=BreakerConfig(consecutive_failures=0, failure_ratio=1.0),
        success_window_s=60,
    )
    t = target(rule, ("a", "b"))
    rng = random.Random(0)
    for i in range(20):
        health.record("a", 1.0, i % 2 == 0, 0.01)  # a: 50%
        health.record("b", 1.0, True, 0.01)  # b: 100%
    assert health.select(t, 2.0, rng) == ["b", "a"]  # a demoted, still last for failover
    assert health.demotions.demotions == 1
    # Even if a's window improves, it stays demoted until retry_later_s passes...
    assert health.select(t, 20.0, rng) == ["b", "a"]
    # ...then it is re-admitted with a clean slate: its old 50% no longer counts.
    assert health.select(t, 32.5, rng) == ["a", "b"]
    for _ in range(10):
        health.record("a", 40.0, False, 0.01)
    assert health.select(t, 41.0, rng) == ["b", "a"]  # and demoted again on fresh evidence
    assert health.demotions.demotions == 2


def test_success_rate_orders_by_rate_and_explores_demoted() -> None:
    rule = SuccessRate(exploration=0.05, demote_below=0.8, retry_later_s=1000.0, min_calls=10)
    success = {e: SuccessWindow(60.0, 12) for e in EPS}
    for i in range(100):
        success["a"].record(0.0, i % 10 != 0)  # 90%
        success["b"].record(0.0, True)  # 100%
        success["c"].record(0.0, i % 2 == 0)  # 50%: demoted
    t = target(rule)
    demotions = Demotions()
    rng = random.Random(11)
    firsts = Counter(
        select_endpoints(t, now=1.0, rng=rng, success=success, demotions=demotions)[0]
        for _ in range(10_000)
    )
    assert set(firsts) == {"b", "c"}
    assert abs(firsts["c"] / 10_000 - 0.05) < 0.01  # exploration share
    order = select_endpoints(t, now=1.0, rng=random.Random(0), success=success, demotions=demotions)
    assert order in (["b", "a", "c"], ["c", "b", "a"])


def test_sticky_is_stable_per_key_and_moves_only_failed_keys() -> None:
    health = EndpointHealth(EPS, breaker=BreakerConfig(consecutive_failures=1))
    t = target(Sticky())
    rng = random.Random(0)
    keys = [f"card-{i}" for i in range(600)]
    before = {k: health.select(t, 0.0, rng, k)[0] for k in keys}
    assert before == {k: health.select(t, 0.0, rng, k)[0] for k in keys}  # stable
    share = Counter(before.values())
    assert all(150 <= share[e] <= 250 for e in EPS), share  # spread over all endpoints
    health.record("b", 0.0, False, 0.01)  # b opens
    after = {k: health.select(t, 0.5, rng, k)[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "b")
    assert all(after[k] != "b" for k in keys)
    assert health.select(t, 0.5, rng, None) == ["a", "c"]  # no key: listed order


@pytest.mark.parametrize(
    "strategy",
    [Priority(), Weighted(weights=(2, 1, 1)), LeastLatency(exploration=0.3),
     SuccessRate(exploration=0.3, min_calls=2), Sticky()],
)  # fmt: skip
def test_selection_is_deterministic_with_the_same_seed(strategy: object) -> None:
    def run(seed: int) -> list[list[str]]:
        health = EndpointHealth(EPS, breaker=BreakerConfig(consecutive_failures=3))
        scenario = random.Random(99)  # the same call results in both runs
        rng = random.Random(seed)
        out = []
        for i in range(400):
            now = i * 0.05
            order = health.select(target(strategy), now, rng, f"k{i % 7}")
            out.append(order)
            if order:
                ok = scenario.random() > (0.6 if order[0] == "a" else 0.1)
                health.record(order[0], now, ok, scenario.uniform(0.001, 0.05))
        return out

    assert run(7) == run(7)


# ------------------------------------------------------------------ admission


def test_admission_limits_per_endpoint_and_total() -> None:
    limiter = AdmissionLimiter(EPS, AdmissionConfig(per_endpoint=2, total=3, overrides={"c": 1}))
    assert limiter.try_acquire("a") and limiter.try_acquire("a")
    assert not limiter.try_acquire("a")  # endpoint full
    assert limiter.try_acquire("c")
    assert not limiter.try_acquire("b")  # total full
    assert limiter.in_flight() == 3 and limiter.shed == 2
    limiter.release("a")
    assert limiter.try_acquire("b")
    limiter.release("c")
    assert limiter.try_acquire("c") and not limiter.try_acquire("c")
    with pytest.raises(AssertionError):
        AdmissionLimiter(EPS).release("a")
