"""Review: the payment core's attempt plan (retry budget, retries with nowhere to go)."""

from __future__ import annotations

from switch.protocols.wire import Reply
from switch.routing.resilience import ResilienceConfig
from switch.routing.retry import RetryBudgetConfig
from tests.payments import card_payment, qr_payment
from tests.test_core import TECHNICAL, make_rig, result_of


def _value(counter: object) -> float:
    return counter.value  # type: ignore[attr-defined,no-any-return]


def test_a_failure_on_the_last_endpoint_spends_no_retry_and_waits_no_back_off() -> None:
    """Retries go to the next endpoint only (never the same one), so a 91 from the last
    candidate -- here the only one -- ends the attempts. It used to take a retry from the
    global budget, count a retry that was never made and hold the answer for a back-off
    first: under an outage of a one-endpoint route, those phantom retries spent the budget
    that real failovers on other routes needed."""
    rig = make_rig()
    metrics = rig.router.metrics
    budget_before = rig.router.budget.remaining(rig.now)
    rig.pay(qr_payment("qr-tech"))
    rig.commit()
    rig.answer(TECHNICAL)
    assert rig.journal.kinds() == ["intent", "final"]  # at once, no back-off timer
    assert rig.core.next_deadline() is None
    assert rig.router.budget.remaining(rig.now) > budget_before  # +0.1: one first attempt
    assert _value(metrics.retries[("qr", "technical")]) == 0
    rig.commit()
    assert result_of(rig.only_reply()) == ("failed", "91")
    assert [s[0] for s in rig.network.sent] == ["qr"]
    assert rig.slots_balanced()


def test_no_stand_in_while_an_untried_issuer_endpoint_is_up() -> None:
    """card-a cannot be reached (NotSent) and the retry budget is spent, so card-b --
    healthy, breaker closed -- is not tried. Stand-in is for when no issuer endpoint can
    be reached; it approved here on the issuer's behalf while the issuer was reachable."""
    no_budget = RetryBudgetConfig(ratio=0.0, min_per_s=0.0)
    rig = make_rig(standin=True, resilience=ResilienceConfig(retry_budget=no_budget))
    rig.network.down.add("card-a")
    rig.pay(card_payment("standin-budget", amount=1500))
    rig.commit()
    rig.commit()
    reply = rig.only_reply()
    assert isinstance(reply, Reply) and not reply.result.stood_in
    assert result_of(reply) == ("failed", "91")
    assert rig.standin is not None and rig.standin.pending == 0 and rig.standin.approved == 0
    assert rig.slots_balanced()


def test_stand_in_still_when_every_issuer_endpoint_was_tried_and_unreachable() -> None:
    rig = make_rig(standin=True)
    rig.network.down.update({"card-a", "card-b"})
    rig.pay(card_payment("standin-down", amount=1500))
    rig.commit()
    rig.advance(0.025)  # the back-off before card-b
    rig.commit()
    reply = rig.only_reply()
    assert isinstance(reply, Reply) and reply.result.stood_in
    assert result_of(reply) == ("approved", "00")
