"""Circuit breaker: state transitions under scripted call sequences."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.fielderrors import describe_validation_error
from switch.routing.breaker import STATE_CODE, BreakerConfig, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(**kw: object) -> tuple[CircuitBreaker, list[tuple[str, BreakerState, BreakerState]]]:
    seen: list[tuple[str, BreakerState, BreakerState]] = []
    cfg = msgspec.convert(kw, BreakerConfig)
    return CircuitBreaker("ep", cfg, lambda e, old, new: seen.append((e, old, new))), seen


def feed(b: CircuitBreaker, now: float, script: str, duration: float = 0.01) -> float:
    """'o' ok, 'x' failure, 's' slow ok; 0.1 s apart. Returns the time after the last."""
    for ch in script:
        assert b.allow(now)
        b.record(now, ch != "x", 5.0 if ch == "s" else duration)
        now += 0.1
    return now


def test_failure_ratio_opens_only_after_min_calls() -> None:
    b, seen = make(window_calls=10, min_calls=6, failure_ratio=0.5, consecutive_failures=0)
    now = feed(b, 0.0, "xoxox")  # 3/5 failed, but fewer than 6 calls
    assert b.state is CLOSED
    feed(b, now, "o")  # 3/6 = 0.5: opens
    assert b.state is OPEN
    assert seen == [("ep", CLOSED, OPEN)]


def test_count_window_forgets_old_calls() -> None:
    b, _ = make(window_calls=4, min_calls=4, failure_ratio=0.75, consecutive_failures=0)
    now = feed(b, 0.0, "xxoooo")  # the two failures slid out of the window
    assert b.window_totals(now) == (4, 0, 0)
    feed(b, now, "xx")
    assert b.state is CLOSED  # 2/4 < 0.75
    feed(b, now + 1, "x")
    assert b.state is OPEN  # 3/4


def test_time_window_ages_out_buckets() -> None:
    b, _ = make(window="time", window_s=10.0, window_buckets=10, min_calls=4,
                failure_ratio=0.5, consecutive_failures=0)  # fmt: skip
    feed(b, 0.0, "xx")
    assert b.window_totals(1.0)[:2] == (2, 2)
    assert b.window_totals(20.0) == (0, 0, 0)  # both buckets expired
    feed(b, 20.0, "oooo")
    assert b.state is CLOSED  # the old failures no longer count: 0/4


def test_consecutive_failures_open_at_once() -> None:
    b, _ = make(consecutive_failures=3, min_calls=100)
    now = feed(b, 0.0, "xxoxx")
    assert b.state is CLOSED  # the success reset the run
    feed(b, now, "x")
    assert b.state is OPEN


def test_slow_calls_open_by_ratio() -> None:
    b, _ = make(window_calls=10, min_calls=4, slow_call_s=1.0, slow_call_ratio=0.5)
    now = feed(b, 0.0, "sooo")
    assert b.state is CLOSED
    feed(b, now, "s")  # 2/5 < 0.5
    assert b.state is CLOSED
    feed(b, now + 1, "s")  # 3/6
    assert b.state is OPEN


def test_open_refuses_then_half_opens_after_open_s() -> None:
    b, seen = make(consecutive_failures=2, open_s=5.0, half_open_probes=2)
    feed(b, 0.0, "xx")
    opened_at = 0.1
    assert not b.allow(opened_at + 4.9) and not b.available(opened_at + 4.9)
    assert b.available(opened_at + 5.0)
    assert b.allow(opened_at + 5.0)  # first probe reserved
    assert b.state is HALF
    assert b.allow(opened_at + 5.0)  # second probe
    assert not b.allow(opened_at + 5.0)  # probe limit reached
    assert not b.available(opened_at + 5.0)
    b.record(5.2, True, 0.01)
    assert b.state is HALF  # one probe still out
    b.record(5.3, True, 0.01)
    assert b.state is CLOSED
    assert [(o, n) for _, o, n in seen] == [(CLOSED, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    assert b.transitions == 3 and len(b.history) == 3
    assert b.window_totals(5.3) == (0, 0, 0)  # closed with a clean slate


def test_a_failed_probe_reopens_for_another_open_period() -> None:
    b, _ = make(consecutive_failures=1, open_s=2.0, half_open_probes=3)
    feed(b, 0.0, "x")
    assert b.allow(2.0) and b.allow(2.0)
    b.record(2.1, False, 0.01)
    assert b.state is OPEN
    assert not b.allow(4.0)  # open until 2.1 + 2.0
    b.record(4.0, True, 0.01)  # the other probe's late answer: ignored while open
    assert b.state is OPEN
    assert b.allow(4.1) and b.state is HALF


def test_slow_probes_reopen() -> None:
    b, _ = make(consecutive_failures=1, open_s=1.0, half_open_probes=2, slow_call_ratio=0.5)
    feed(b, 0.0, "x")
    assert b.allow(1.0) and b.allow(1.0)
    b.record(1.5, True, 0.01)
    b.record(10.0, True, 9.0)  # 1 of 2 probes slow: ratio 0.5 reached
    assert b.state is OPEN


def test_late_results_from_before_half_open_do_not_take_probe_slots() -> None:
    b, _ = make(consecutive_failures=2, open_s=5.0, half_open_probes=1)
    assert b.allow(0.0)  # a slow call leaves now...
    feed(b, 0.1, "xx")  # ...the breaker opens at 0.2...
    assert b.allow(5.2) and b.state is HALF  # ...and half-opens with one probe out
    b.record(5.3, True, 5.3)  # the old call's answer (started at 0.0): not the probe
    assert b.state is HALF
    assert not b.allow(5.3)  # the probe slot is still taken by the real probe
    b.record(5.4, True, 0.2)  # the probe's answer
    assert b.state is CLOSED


def test_lost_probe_counts_as_failed_after_probe_timeout() -> None:
    b, _ = make(consecutive_failures=1, open_s=1.0, half_open_probes=1, probe_timeout_s=3.0)
    feed(b, 0.0, "x")
    assert b.allow(1.0)  # reserved, and the caller never reports it
    assert not b.allow(2.0)
    assert b.poll(4.0) is OPEN  # given up on: open again
    assert b.allow(5.0) and b.state is HALF  # and the next cycle can probe


def test_an_abandoned_probe_frees_its_slot_without_a_verdict() -> None:
    b, seen = make(consecutive_failures=1, open_s=1.0, half_open_probes=1)
    assert b.allow(0.0)  # a call from before the breaker opened, never to report
    feed(b, 0.1, "x")
    assert b.allow(1.2) and not b.allow(1.2)  # half-open: the one probe is out
    b.abandon(1.3, 1.3)  # the old call (started at 0.0) gives up: not the probe
    assert not b.allow(1.3)
    b.abandon(1.4, 0.2)  # the probe's caller failed before sending
    assert b.state is HALF and b.allow(1.4)  # judged nothing; the slot is free again
    b.record(1.5, True, 0.1)
    assert b.state is CLOSED and seen[-1] == ("ep", HALF, CLOSED)


def test_active_probes() -> None:
    b, _ = make(probe_failures=2, open_s=10.0)
    b.record_probe(0.0, False)
    b.record_probe(1.0, True)  # resets the run
    b.record_probe(2.0, False)
    assert b.state is CLOSED
    b.record_probe(3.0, False)
    assert b.state is OPEN  # a quiet endpoint is caught without traffic
    b.record_probe(12.0, False)  # still failing: the open period restarts
    assert not b.allow(13.5)
    b.record_probe(14.0, True)  # recovered: half-open now, not at 22.0
    assert b.state is HALF
    b.record_probe(14.5, False)
    assert b.state is OPEN


def test_probe_failures_do_not_mix_with_traffic() -> None:
    b, _ = make(probe_failures=0, consecutive_failures=3)
    for t in range(10):
        b.record_probe(float(t), False)
    assert b.state is CLOSED
    feed(b, 20.0, "xox")
    assert b.state is CLOSED


def test_time_going_backwards_is_clamped() -> None:
    b, _ = make(consecutive_failures=1, open_s=5.0)
    feed(b, 10.0, "x")
    b.record(3.0, False, 0.1)  # an out-of-order report
    assert not b.allow(4.0)  # treated as 10.0, not as a time before the opening
    assert b.allow(15.0)


def test_force_open_and_state_codes() -> None:
    b, _ = make()
    b.force_open(1.0)
    assert b.state is OPEN and STATE_CODE[b.state] == 2


def test_config_errors_name_the_path() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"failure_ratio": 0}, BreakerConfig)
    assert describe_validation_error(info.value).startswith("failure_ratio:")
    with pytest.raises(msgspec.ValidationError, match="min_calls"):
        msgspec.convert({"window_calls": 5, "min_calls": 6}, BreakerConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"threshold": 1}, BreakerConfig)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["call_ok", "call_fail", "call_slow", "probe_ok", "probe_fail"]),
            st.floats(0.0, 3.0),
        ),
        max_size=200,
    )
)
def test_invariants_under_any_sequence(events: list[tuple[str, float]]) -> None:
    """Half-open never lets more than the probe limit through at once; history is bounded;
    every transition is between different states and reported to the hook."""
    b, seen = make(consecutive_failures=2, open_s=1.0, half_open_probes=2, window_calls=8,
                   min_calls=4, slow_call_ratio=0.75, probe_timeout_s=2.0)  # fmt: skip
    now = 0.0
    for kind, dt in events:
        now += dt
        if kind.startswith("probe"):
            b.record_probe(now, kind == "probe_ok")
            continue
        was = b.poll(now)
        allowed = b.allow(now)
        if was is BreakerState.OPEN:
            assert not allowed
        if allowed:
            duration = 2.0 if kind == "call_slow" else 0.01
            now += duration
            b.record(now, kind != "call_fail", duration)
        assert b._probes_reserved <= 2
    assert len(seen) == b.transitions
    assert all(old is not new for _, old, new in seen)
    assert len(b.history) <= 64
