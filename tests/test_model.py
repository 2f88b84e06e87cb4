"""The transaction model: state machine, PAN handling, validation."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    "key", [b"k" * 32, b"", b"short", b"x" * 128, b"y" * 129, bytes(range(200))])
@given(pan=st.text(alphabet="0123456789", min_size=12, max_size=19))
@settings(max_examples=50)
def test_pan_token_is_hmac_blake2b_of_the_pan(key: bytes, pan: str) -> None:
    """The precomputed-pad HMAC gives the bytes of the standard library's HMAC (stored
    tokens and blocklists depend on it), long keys included."""
    expected = hmac.new(key, pan.encode("ascii"), hashlib.blake2b).hexdigest()[:32]
    assert tokenize_pan(pan, key) == expected
    assert tokenize_pan(pan, key) == expected  # from the cached pads as well


def _luhn_by_the_book(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("")
    assert not luhn_ok("4111 1111 1111 1111")
    assert not luhn_ok("\u0664111111111111111")  # an Arabic-Indic digit is not ASCII


@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_agrees_with_the_textbook_loop(digits: str) -> None:
    assert luhn_ok(digits) == _luhn_by_the_book(digits)


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
