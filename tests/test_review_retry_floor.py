"""Review: no retry or failover attempt with almost no time left before the deadline.

An attempt given a few milliseconds cannot be answered by a network working normally
(tens of milliseconds), so it times out and turns a clean 91 -- the previous endpoint's
definitive "nothing done" -- into UNKNOWN, which needs a reversal: a worse outcome made by
the retry itself. Below a floor, the attempts end with the last definitive answer."""

from __future__ import annotations

import msgspec
import pytest

from switch.routing.resilience import ResilienceConfig
from switch.routing.retry import MIN_ATTEMPT_S, RetryPolicy
from tests.payments import card_payment
from tests.test_core import APPROVED, TECHNICAL, make_rig, result_of


def _denied(rig: object, reason: str) -> float:
    return rig.router.metrics.retries_denied[reason].value  # type: ignore[attr-defined,no-any-return]


def _retries(rig: object) -> float:
    counter = rig.router.metrics.retries[("card", "technical")]  # type: ignore[attr-defined]
    return counter.value  # type: ignore[no-any-return]


def test_the_floor_is_below_the_routes_timeouts_and_above_a_networks_latency() -> None:
    # The default network answers in ~20 ms (p99 ~65 ms); a route's default timeout is 2 s.
    assert 0.065 <= MIN_ATTEMPT_S < 2.0


def test_a_91_just_before_the_deadline_ends_the_payment_instead_of_a_doomed_retry() -> None:
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-retry"))
    rig.commit()
    rig.now += 0.3 - 0.005  # card-a answers 91 with 5 ms of the payment's budget left
    rig.answer(TECHNICAL)
    assert [s[0] for s in rig.network.sent] == ["card-a"]  # card-b is not tried
    assert rig.core.next_deadline() is None
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")  # not unknown: nothing to reverse
    assert rig.resolver.submitted == []
    assert _denied(rig, "deadline") == 1 and _denied(rig, "attempts") == 0
    assert _retries(rig) == 0  # no retry counted, none taken from the budget
    assert rig.slots_balanced()


def test_a_failover_after_not_sent_needs_the_floor_too() -> None:
    # The intent's commit was slow (a disk stall): card-a, the first attempt, cannot be
    # reached (NotSent) and only 5 ms remain -- card-b is not sent a doomed attempt.
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.network.down.add("card-a")
    rig.pay(card_payment("floor-failover"))
    rig.now += 0.3 - 0.005
    rig.commit()
    assert rig.network.sent == []
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert rig.resolver.submitted == []
    assert _denied(rig, "deadline") == 1
    assert rig.slots_balanced()


def test_a_back_off_that_would_leave_less_than_the_floor_is_not_planned() -> None:
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.05, max_delay_s=0.05),
                              payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-backoff"))
    rig.commit()
    rig.now += 0.3 - MIN_ATTEMPT_S - 1e-6  # any back-off (up to 50 ms) would eat the floor
    rig.answer(TECHNICAL)
    assert rig.journal.kinds() == ["intent", "final"]  # at once: no timer, no retry
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert _denied(rig, "deadline") == 1 and _denied(rig, "attempts") == 0
    assert rig.slots_balanced()


def test_a_retry_with_enough_time_left_is_still_made() -> None:
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-ok"))
    rig.commit()
    rig.now += 0.3 - MIN_ATTEMPT_S - 0.001
    rig.answer(TECHNICAL)
    assert [s[0] for s in rig.network.sent] == ["card-a", "card-b"]
    deadline = rig.core.next_deadline()
    assert deadline == pytest.approx(rig.now + MIN_ATTEMPT_S + 0.001)  # the rest of the budget
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert _denied(rig, "deadline") == 0
    assert rig.slots_balanced()


def test_the_attempt_cap_is_still_counted_as_attempts() -> None:
    config = ResilienceConfig(retry=RetryPolicy(max_attempts=1))
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-cap"))
    rig.commit()
    rig.answer(TECHNICAL)
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert _denied(rig, "attempts") == 1 and _denied(rig, "deadline") == 0


def test_a_route_whose_timeout_is_below_the_floor_still_fails_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The floor is "the least worth giving an attempt"; an attempt given the route's whole
    # timeout is never too short, however short that timeout is configured.
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0))
    rig = make_rig(resilience=config)
    short = msgspec.structs.replace(rig.router.table.targets["cards"],
                                    timeout_s=MIN_ATTEMPT_S / 2)
    monkeypatch.setattr(rig.router, "target", lambda payment: short)
    rig.pay(card_payment("floor-short-route"))
    rig.commit()
    rig.answer(TECHNICAL)
    assert [s[0] for s in rig.network.sent] == ["card-a", "card-b"]
    assert rig.core.next_deadline() == pytest.approx(rig.now + MIN_ATTEMPT_S / 2)
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert _denied(rig, "deadline") == 0


def test_a_first_attempt_left_less_than_the_floor_is_not_sent() -> None:
    # The intent's commit took nearly the whole payment deadline (a disk stall): the first
    # attempt would have 5 ms. Sent, it timed out and a payment nothing had touched became
    # unknown and needed a reversal; not sent, it fails 91 with nothing done.
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-first"))
    rig.now += 0.3 - 0.005
    rig.commit()
    assert rig.network.sent == []
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")  # not stand-in: the issuer is up
    assert rig.resolver.submitted == []
    assert _denied(rig, "deadline") == 1
    assert rig.slots_balanced()


def test_a_first_attempt_with_the_floor_left_is_sent() -> None:
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0), payment_deadline_s=0.3)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-first-ok"))
    rig.now += 0.3 - MIN_ATTEMPT_S - 0.001
    rig.commit()
    assert [s[0] for s in rig.network.sent] == ["card-a"]
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
    assert _denied(rig, "deadline") == 0


def test_a_payment_deadline_below_the_floor_still_gets_its_first_attempt() -> None:
    # An attempt given all the time the payment ever gets is never too short.
    config = ResilienceConfig(retry=RetryPolicy(base_delay_s=0.0),
                              payment_deadline_s=MIN_ATTEMPT_S / 2)
    rig = make_rig(resilience=config)
    rig.pay(card_payment("floor-short-deadline"))
    rig.commit()
    assert [s[0] for s in rig.network.sent] == ["card-a"]
    rig.answer(APPROVED)
    rig.commit()
    assert result_of(rig.only_reply()) == ("approved", "00")
