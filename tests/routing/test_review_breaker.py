"""Review: a half-open breaker's probe times out ``probe_timeout_s`` after it was let
through, not after the half-open period began."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.routing.test_breaker import CLOSED, HALF, OPEN, feed, make


def test_a_probe_let_through_late_in_a_quiet_half_open_period_is_not_given_up_at_once() -> None:
    """The gauge refresher polls the breaker half-open by time alone; on a quiet endpoint
    the first payment may come long after. Its probe was "lost" as soon as it was taken:
    every other payment found the endpoint unavailable (stand-in or 91 instead of a free
    probe slot), and the next poll re-opened the breaker on an endpoint that was fine."""
    b, _ = make(consecutive_failures=1, open_s=1.0, half_open_probes=3, probe_timeout_s=3.0)
    feed(b, 0.0, "x")
    assert b.poll(1.0) is HALF  # half-open by time (refresh_gauges), nobody paying
    assert b.allow(20.0)  # the first payment, 19 s later: a probe
    assert b.available(20.01)  # two probe slots are still free
    assert b.poll(20.5) is HALF  # 0.5 s into a 3 s probe timeout: not lost
    b.record(20.6, True, 0.6)
    assert b.state is HALF  # one of three probes answered
    assert b.allow(20.7) and b.allow(20.7)
    b.record(20.8, True, 0.1)
    b.record(20.8, True, 0.1)
    assert b.state is CLOSED


def test_a_lost_probe_still_counts_as_failed_after_its_own_timeout() -> None:
    b, _ = make(consecutive_failures=1, open_s=1.0, half_open_probes=2, probe_timeout_s=3.0)
    feed(b, 0.0, "x")
    assert b.poll(1.0) is HALF
    assert b.allow(10.0)  # reserved, and never reported
    assert b.poll(12.9) is HALF
    assert b.poll(13.0) is OPEN  # 3 s after it was let through


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "abandon", "poll"]),
                          st.floats(0.0, 4.0)), max_size=120))
def test_no_probe_is_given_up_before_its_own_timeout(events: list[tuple[str, float]]) -> None:
    """Whatever the order of events, a half-open breaker re-opens for a lost probe only
    once some probe has been out for ``probe_timeout_s`` without a report."""
    b, _ = make(consecutive_failures=1, open_s=1.0, half_open_probes=2, probe_timeout_s=3.0)
    now = feed(b, 0.0, "x")  # open from here on; the events drive it
    out: list[float] = []  # let-through times of probes not yet reported (oldest first)
    for kind, dt in events:
        now += dt
        if kind in ("poll", "allow"):
            before = b.state
            if before is HALF and b.poll(now) is OPEN:  # a probe given up on
                assert out and now - out[0] >= 3.0, (now, out)
        if b.state is not HALF:
            out.clear()
        if kind == "allow":
            state = b.poll(now)
            if b.allow(now) and state is HALF:
                out.append(now)
        elif kind in ("ok", "fail", "abandon") and out and b.state is HALF:
            duration = now - out[0]
            if kind == "abandon":
                b.abandon(now, duration)
            else:
                b.record(now, kind == "ok", duration)
            out.pop(0)
            if b.state is CLOSED:
                b.force_open(now)  # back to the half-open cycle
                out.clear()
        assert b._probes_reserved == len(out) <= 2 or b.state is OPEN
