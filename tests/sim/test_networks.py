"""The simulated issuers' trace-number oracle: a 94 to a payment's first transmission is
the switch's fault only when the other transmission of that STAN + terminal was *sent*
within the issuer's duplicate window. The issuer's own check goes by arrival, so a
message the network held for longer than the window collides with a legitimate reuse
after the sequence wrapped (seed 908 at intensity 100: 898 s in the network)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switch import reasons
from switch.model import CardRef, Party, Payment
from switch.sim.networks import World
from switch.sim.simulation import SimOptions

AT = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)


def card_payment(n: int, stan: int) -> Payment:
    card = CardRef(token="tok-a", last4="1111", bin="411111", expiry="2812",
                   terminal_id="TERM0001", merchant_id="MERCHANT01", mcc="5999",
                   stan=f"{stan:06d}", rrn=f"01{n:010d}")
    return Payment(f"P1-{n}", f"k{n}", "card", 1000, "USD", Party("ACCT000001"),
                   Party("MERCH00001"), AT, card=card)


@pytest.fixture
def world() -> World:
    return World(SimOptions(seed=1).channels_toml, [], seed=1)


def deliver(world: World, payment: Payment, sent_at: float, arrives_at: float) -> str:
    return world.authorize("card-primary", payment, None, arrives_at, sent_at).reason


def test_the_window_is_the_issuers(world: World) -> None:
    assert world.duplicate_window_s == 60.0  # the cases below are written around it


def test_a_stale_message_after_a_wrap_is_not_a_reuse(world: World) -> None:
    # The reuse is sent 900 s after the original; the original, held by the network,
    # arrives just after it and is refused 94.
    assert deliver(world, card_payment(2, 7), sent_at=1000.0, arrives_at=1000.001) == "00"
    assert deliver(world, card_payment(1, 7), sent_at=100.0, arrives_at=1000.5) == \
        reasons.DUPLICATE_TRANSMISSION
    assert world.stan_reused == []


def test_a_reuse_within_the_window_is_named(world: World) -> None:
    assert deliver(world, card_payment(2, 7), sent_at=30.0, arrives_at=30.001) == "00"
    assert deliver(world, card_payment(1, 7), sent_at=0.0, arrives_at=40.0) == \
        reasons.DUPLICATE_TRANSMISSION
    assert world.stan_reused == ["P1-1"]


@pytest.mark.parametrize(("second_sent_at", "named"), [(59.0, True), (61.0, False)])
def test_the_later_payment_refused_is_named_only_when_sent_within_the_window(
        world: World, second_sent_at: float, named: bool) -> None:
    # The first arrives late (50 s in the network), the second just after it was sent:
    # the issuer refuses the second whatever its send time, the oracle only within 60 s.
    assert deliver(world, card_payment(1, 7), sent_at=0.0, arrives_at=50.0) == "00"
    assert deliver(world, card_payment(2, 7), sent_at=second_sent_at,
                   arrives_at=second_sent_at + 0.01) == reasons.DUPLICATE_TRANSMISSION
    assert world.stan_reused == (["P1-2"] if named else [])


def test_send_times_are_forgotten_with_the_issuers_window(world: World) -> None:
    for n in range(1, 101):
        deliver(world, card_payment(n, n), sent_at=float(n), arrives_at=float(n))
    # At 100 s, what arrived at or before 40 s has left the window: 60 keys remain.
    assert len(world._sent_at) == 60
