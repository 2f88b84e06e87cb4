"""Behaviour model: determinism, latency shape, technical errors, fault effects, capacity."""

from __future__ import annotations

import random
import statistics
from typing import Any

import anyio
import msgspec
import pytest
import trio.testing

from channels.behaviour import (
    DRAWS_PER_ERROR,
    DRAWS_PER_LATENCY,
    DRAWS_PER_PLAN,
    Behaviour,
    BehaviourConfig,
    CapacityConfig,
    CapacityExceeded,
    CapacityGate,
    EndpointOverride,
    ErrorMixConfig,
    LatencyConfig,
    RequestPlan,
)
from channels.faults import Fault, FaultTimeline

EP = "cardnet"


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    # A fresh MockClock per test: under trio, sleeps jump instantly and timings are exact.
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


def make(seed: int = 7, *faults: Fault, **config: Any) -> Behaviour:
    return Behaviour(msgspec.convert(config, BehaviourConfig), seed, endpoint=EP,
                     faults=FaultTimeline(faults))


NOISY = {"latency": {"median_ms": 20, "sigma": 0.6, "tail_prob": 0.05, "tail_factor": 8},
         "errors": {"technical_error_rate": 0.1}}


# --- determinism --------------------------------------------------------------------------------


def run_plans(behaviour: Behaviour, count: int = 300, start: float = 0.0) -> list[RequestPlan]:
    return [behaviour.plan(start + i * 0.1, route_key=f"4{i % 7}11") for i in range(count)]


def test_same_seed_same_outcomes_different_seed_different() -> None:
    faults = (Fault(kind="error_burst", endpoint=EP, rate=0.3, start_s=5, duration_s=5),
              Fault(kind="reset", endpoint=EP, rate=0.2, match=("42",)))
    first = run_plans(make(11, *faults, **NOISY))
    assert first == run_plans(make(11, *faults, **NOISY))
    assert first != run_plans(make(12, *faults, **NOISY))
    a, b, c = make(5, **NOISY), make(5, **NOISY), make(6, **NOISY)
    latencies = [a.sample_latency(0.0) for _ in range(50)]
    assert latencies == [b.sample_latency(0.0) for _ in range(50)]
    assert latencies != [c.sample_latency(0.0) for _ in range(50)]
    errors = [a.technical_error(0.0) for _ in range(200)]
    assert errors == [b.technical_error(0.0) for _ in range(200)]
    assert errors != [c.technical_error(0.0) for _ in range(200)]


@pytest.mark.parametrize(
    "fault",
    [None, Fault(kind="down", endpoint=EP), Fault(kind="late", endpoint=EP, rate=1, delay_s=9),
     Fault(kind="partial", endpoint=EP, match=("4",))],
)
def test_draw_counts_are_fixed_whatever_the_outcome(fault: Fault | None) -> None:
    behaviour = make(21, *([fault] if fault else []), **NOISY)
    reference = random.Random(21)

    def advance(draws: int) -> None:
        for _ in range(draws):
            reference.random()
        assert behaviour.rng.getstate() == reference.getstate()

    behaviour.sample_latency(1.0, "4111")
    advance(DRAWS_PER_LATENCY)
    behaviour.technical_error(1.0, "4111")
    advance(DRAWS_PER_ERROR)
    behaviour.plan(1.0, "4111")
    advance(DRAWS_PER_PLAN)


def test_a_fault_window_does_not_shift_later_outcomes() -> None:
    outage = Fault(kind="down", endpoint=EP, start_s=0, duration_s=10)
    with_outage, without = make(9, outage, **NOISY), make(9, **NOISY)
    during = [with_outage.plan(float(t)) for t in range(10)]
    assert {plan.action for plan in during} == {"refuse"}
    for t in range(10):
        without.plan(float(t))
    assert run_plans(with_outage, start=10.0) == run_plans(without, start=10.0)


def test_derived_generators_are_stable_and_independent() -> None:
    behaviour = make(4)
    business = behaviour.derive_rng("business")
    assert business.random() == make(4).derive_rng("business").random()
    assert business.random() != behaviour.derive_rng("other").random()
    assert behaviour.rng.getstate() == random.Random(4).getstate()  # untouched


# --- latency ------------------------------------------------------------------------------------


def test_lognormal_median_is_roughly_right() -> None:
    behaviour = make(1, latency={"median_ms": 40, "sigma": 0.5})
    samples = [behaviour.sample_latency(0.0) for _ in range(20_000)]
    assert statistics.median(samples) == pytest.approx(0.040, rel=0.05)
    # sigma 0.5: the 84th percentile sits near median * e^0.5.
    p84 = statistics.quantiles(samples, n=100)[83]
    assert p84 == pytest.approx(0.040 * 1.6487, rel=0.08)


def test_heavy_tail_hits_at_its_probability_and_cap_bounds_samples() -> None:
    behaviour = make(2, latency={"median_ms": 10, "sigma": 0.05, "tail_prob": 0.1,
                                 "tail_factor": 50, "max_ms": 400})
    samples = [behaviour.sample_latency(0.0) for _ in range(10_000)]
    tail_share = sum(s > 0.1 for s in samples) / len(samples)
    assert tail_share == pytest.approx(0.1, abs=0.02)
    assert max(samples) <= 0.4


def test_slow_fault_multiplies_latency_exactly() -> None:
    slow = make(8, Fault(kind="slow", endpoint=EP, factor=5, match=("41",)), **NOISY)
    plain = make(8, **NOISY)
    assert slow.sample_latency(0.0, "4111") == pytest.approx(5 * plain.sample_latency(0.0))
    assert slow.sample_latency(0.0, "5111") == plain.sample_latency(0.0)


def test_zero_sigma_is_constant_latency() -> None:
    behaviour = make(3, latency={"median_ms": 25, "sigma": 0})
    assert {behaviour.sample_latency(0.0) for _ in range(50)} == {0.025}


# --- technical errors ---------------------------------------------------------------------------


def test_technical_error_rate_and_code_mix() -> None:
    behaviour = make(6, errors={"technical_error_rate": 0.2, "codes": {"91": 3, "96": 1}})
    codes = [behaviour.technical_error(0.0) for _ in range(20_000)]
    errors = [code for code in codes if code is not None]
    assert len(errors) / len(codes) == pytest.approx(0.2, abs=0.015)
    assert errors.count("91") / len(errors) == pytest.approx(0.75, abs=0.03)
    assert set(errors) == {"91", "96"}


def test_error_burst_raises_the_rate_for_matching_keys_only() -> None:
    behaviour = make(6, Fault(kind="error_burst", endpoint=EP, rate=1.0, match=("GB",),
                              start_s=1, duration_s=1))
    assert behaviour.technical_error(1.5, "GB33") in {"91", "96"}
    assert behaviour.technical_error(1.5, "DE89") is None
    assert behaviour.technical_error(2.5, "GB33") is None
    assert behaviour.technical_error(0.5, "GB33") is None


# --- plans: each fault kind -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault(kind="down", endpoint=EP), lambda p: p.action == "refuse"),
        (Fault(kind="flapping", endpoint=EP, period_s=2, start_down=True),
         lambda p: p.action == "refuse"),
        (Fault(kind="blackhole", endpoint=EP), lambda p: p.action == "blackhole"),
        (Fault(kind="reset", endpoint=EP, rate=1), lambda p: p.action == "reset"),
        (Fault(kind="partial", endpoint=EP, match=("4111",)),
         lambda p: p.action == "respond" and p.technical_error == "91"),
        (Fault(kind="error_burst", endpoint=EP, rate=1),
         lambda p: p.technical_error in {"91", "96"}),
        (Fault(kind="malformed", endpoint=EP, rate=1), lambda p: p.malformed),
        (Fault(kind="duplicate", endpoint=EP, rate=1), lambda p: p.duplicate),
        (Fault(kind="late", endpoint=EP, rate=1, delay_s=12),
         lambda p: p.late_delay_s == 12 and p.total_delay_s == p.latency_s + 12),
    ],
    ids=lambda value: value.kind if isinstance(value, Fault) else "",
)
def test_plan_applies_each_fault_kind(fault: Fault, check: Any) -> None:
    behaviour = make(13, fault)
    assert check(behaviour.plan(0.5, "41111111"))
    healthy = behaviour.plan(0.5, "5000") if fault.match else make(13).plan(0.5, "4111")
    assert healthy.action == "respond" and healthy.technical_error is None
    assert not (healthy.malformed or healthy.duplicate or healthy.late_delay_s)


def test_plan_precedence_down_over_blackhole_over_reset() -> None:
    behaviour = make(1, Fault(kind="down", endpoint=EP, match=("4",)),
                     Fault(kind="blackhole", endpoint=EP), Fault(kind="reset", endpoint=EP, rate=1))
    assert behaviour.plan(0.0, "4111").action == "refuse"
    assert behaviour.plan(0.0, "5111").action == "blackhole"


def test_fault_rates_are_honoured_statistically() -> None:
    behaviour = make(17, Fault(kind="duplicate", endpoint=EP, rate=0.25))
    plans = [behaviour.plan(0.0) for _ in range(8_000)]
    assert sum(p.duplicate for p in plans) / len(plans) == pytest.approx(0.25, abs=0.02)


def test_connection_state_follows_endpoint_wide_faults_only() -> None:
    behaviour = make(1, Fault(kind="down", endpoint=EP, duration_s=5),
                     Fault(kind="blackhole", endpoint=EP, start_s=5, duration_s=5),
                     Fault(kind="down", endpoint=EP, start_s=10, match=("4",)))
    states = [behaviour.connection_state(t) for t in (0.0, 6.0, 11.0)]
    assert states == ["down", "blackhole", "up"]
    assert behaviour.rng.getstate() == random.Random(1).getstate()


# --- configuration ------------------------------------------------------------------------------


def test_endpoint_overrides_and_unknown_endpoint() -> None:
    config = BehaviourConfig(
        latency=LatencyConfig(median_ms=10, sigma=0),
        endpoints={"slow-issuer": EndpointOverride(latency=LatencyConfig(median_ms=300, sigma=0),
                                                   capacity=CapacityConfig(max_concurrency=2))},
    )
    behaviour = Behaviour(config, 1, endpoint=EP)
    assert behaviour.sample_latency(0.0) == pytest.approx(0.010)
    assert behaviour.sample_latency(0.0, endpoint="slow-issuer") == pytest.approx(0.300)
    assert behaviour.capacity("slow-issuer").max_concurrency == 2
    assert behaviour.capacity() is behaviour.capacity(EP)
    with pytest.raises(KeyError, match="unknown endpoint 'nowhere'"):
        behaviour.plan(0.0, endpoint="nowhere")


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"latency": {"median_ms": 0}}, "$.latency.median_ms"),
        ({"latency": {"sigma": -1}}, "$.latency.sigma"),
        ({"latency": {"tail_prob": 1.5}}, "$.latency.tail_prob"),
        ({"latency": {"tail_factor": 0.5}}, "$.latency.tail_factor"),
        ({"latency": {"median_ms": 500, "max_ms": 100}}, "$.latency"),
        ({"capacity": {"max_concurrency": 0}}, "$.capacity.max_concurrency"),
        ({"capacity": {"max_queue": -1}}, "$.capacity.max_queue"),
        ({"errors": {"technical_error_rate": 2}}, "$.errors.technical_error_rate"),
        ({"errors": {"codes": {}}}, "$.errors.codes"),
        ({"errors": {"codes": {"9 1": 1}}}, "$.errors.codes"),
        ({"errors": {"codes": {"91": 0}}}, "$.errors.codes"),
        ({"endpoints": {"x": {"latency": {"median_ms": -3}}}}, "latency.median_ms"),
        ({"latncy": {}}, "unknown field `latncy`"),
    ],
)
def test_config_bounds_are_enforced(config: dict[str, Any], path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(config, BehaviourConfig)
    assert path in str(caught.value)
    ErrorMixConfig()  # the defaults themselves are valid


# --- capacity -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_capacity_rejects_past_concurrency_plus_queue() -> None:
    gate = CapacityGate(max_concurrency=2, max_queue=3, name="issuer")
    release = anyio.Event()
    outcomes: list[str] = []

    async def request() -> None:
        try:
            async with gate:
                await release.wait()
            outcomes.append("served")
        except CapacityExceeded:
            outcomes.append("rejected")

    async with anyio.create_task_group() as tasks:
        for _ in range(7):
            tasks.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        assert (gate.in_service, gate.waiting) == (2, 3)
        assert outcomes == ["rejected", "rejected"]
        with pytest.raises(CapacityExceeded, match="2 in service and 3 waiting"):
            async with gate:
                pass
        release.set()
    assert outcomes.count("served") == 5
    assert (gate.in_service, gate.waiting) == (0, 0)
    assert (gate.admitted_total, gate.rejected_total) == (5, 3)


@pytest.mark.anyio
async def test_latency_grows_with_queueing(anyio_backend_name: str) -> None:
    # Service time 0.05 s, two slots: request k completes after ceil((k+1)/2) services.
    behaviour = make(1, latency={"median_ms": 50, "sigma": 0},
                     capacity={"max_concurrency": 2, "max_queue": 10})
    gate = behaviour.capacity()
    start = anyio.current_time()
    finished: list[float] = []

    async def request() -> None:
        async with gate:
            await anyio.sleep(behaviour.sample_latency(anyio.current_time()))
        finished.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tasks:
        for _ in range(6):
            tasks.start_soon(request)
    expected = [0.05, 0.05, 0.10, 0.10, 0.15, 0.15]
    if anyio_backend_name == "trio":  # mock clock: exact
        assert finished == pytest.approx(expected)
    else:  # real clock: only ordering and lower bounds are reliable
        assert all(got >= want - 0.005 for got, want in zip(finished, expected, strict=True))
        assert finished[-1] < 1.0


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_the_queue() -> None:
    gate = CapacityGate(max_concurrency=1, max_queue=1)
    release = anyio.Event()

    async def hold() -> None:
        async with gate:
            await release.wait()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01):
            async with gate:
                pytest.fail("should still be waiting")
        assert gate.waiting == 0
        with anyio.move_on_after(0.01):  # the queue slot is free again, so this waits too
            async with gate:
                pytest.fail("should still be waiting")
        release.set()
    async with gate:
        assert gate.in_service == 1
    assert (gate.in_service, gate.waiting, gate.rejected_total) == (0, 0, 0)
