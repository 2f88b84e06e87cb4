"""The transaction model: state machine, PAN handling, validation."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from switch.model import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    IllegalTransition,
    Status,
    check_transition,
    luhn_ok,
    tokenize_pan,
)
from switch.payment.validation import InvalidPayment, validate
from tests.payments import card_payment, qr_payment, swift_payment


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.RECEIVED, Status.APPROVED),  # cannot skip routing and sending
        (Status.DECLINED, Status.APPROVED),  # final stays final
        (Status.FAILED, Status.APPROVED),
        (Status.REVERSED, Status.APPROVED),
        (Status.APPROVED, Status.DECLINED),  # a late duplicate answer cannot flip a result
        (Status.SENT, Status.REVERSED),  # only unknown or approved can be reversed
    ],
)
def test_illegal_transitions_are_refused(current: Status, target: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"{current} -> {target}"):
        check_transition("P1-1", current, target)


def test_happy_path_transitions_are_allowed() -> None:
    path = [Status.RECEIVED, Status.ROUTED, Status.SENT, Status.UNKNOWN, Status.REVERSED]
    for current, target in itertools.pairwise(path):
        check_transition("P1-1", current, target)


def test_terminal_states_only_exit_by_reversal() -> None:
    for state in TERMINAL_STATES:
        assert ALLOWED_TRANSITIONS[state] <= {Status.REVERSED}


def test_pan_token_is_keyed_and_stable() -> None:
    pan = "4111111111111111"
    assert tokenize_pan(pan, b"k" * 32) == tokenize_pan(pan, b"k" * 32)
    assert tokenize_pan(pan, b"k" * 32) != tokenize_pan(pan, b"j" * 32)
    assert pan not in tokenize_pan(pan, b"k" * 32)


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize(
    ("request_", "path"),
    [
        (card_payment(pan="4111111111111112"), "payment.card.pan"),
        (msgspec.structs.replace(card_payment(), currency="XXX"), "payment.currency"),
        (msgspec.structs.replace(card_payment(), card=None), "payment.card"),
        (msgspec.structs.replace(swift_payment(), card=card_payment().card), "payment.card"),
        (
            msgspec.structs.replace(
                swift_payment(),
                swift=msgspec.structs.replace(swift_payment().swift, debtor_agent="deutdeff"),
            ),
            "payment.swift.debtor_agent",
        ),
        (
            msgspec.structs.replace(
                card_payment(), card=msgspec.structs.replace(card_payment().card, expiry="2813")
            ),
            "payment.card.expiry",
        ),
    ],
)
def test_validation_names_the_field(request_: object, path: str) -> None:
    with pytest.raises(InvalidPayment) as info:
        validate(request_)  # type: ignore[arg-type]
    assert str(info.value).startswith(path + ":")


def test_valid_payments_pass() -> None:
    for request in (card_payment(), swift_payment(), qr_payment()):
        validate(request)
