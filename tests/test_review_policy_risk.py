"""Review: risk velocity windows keep every key of the payment being assessed."""

from __future__ import annotations

from switch.payment.risk import RiskConfig, RiskEngine, VelocityConfig
from tests.test_risk import KEY, payment


def test_a_cards_event_is_not_lost_when_its_window_expired_and_the_account_is_new() -> None:
    """The card's window is fetched first (its old events expire), then the payer account
    is new, so expired keys are forgotten: the card's own window was among them, and the
    payment's event went into a window no longer in the index. The card then passed its
    velocity limit (max_count=1: two payments a second apart both allowed)."""
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(window_s=60, max_count=1)), KEY)
    assert risk.assess(payment(account="A"), 0.0).reason is None
    assert risk.assess(payment(account="B"), 100.0).reason is None  # t=0 has left the window
    decision = risk.assess(payment(account="C"), 101.0)  # same card, 1 s later
    assert decision.rule == "velocity_count"
    # card + account B are what can still decide anything (A expired at t=60)
    assert risk.tracked_keys == 3  # card, B, and C (its window was created, then declined)


def test_a_new_cards_first_event_counts_when_its_account_is_new_too() -> None:
    """On a quiet switch (every tracked key expired), a new card paying from a new account
    lost its event the same way: its fresh, empty window was the first one forgotten. A
    card paying from a fresh account each time was never velocity-checked."""
    risk = RiskEngine(RiskConfig(velocity=VelocityConfig(window_s=60, max_count=2)), KEY)
    decisions = [risk.assess(payment(account=f"ACC{i}"), float(i)).rule for i in range(4)]
    assert decisions == ["", "", "velocity_count", "velocity_count"]
