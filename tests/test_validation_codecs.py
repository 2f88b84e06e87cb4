"""Validation admits only what every codec can encode (issue 11, defects 2 and 3).

``str.isdigit()`` accepted superscript and Arabic-Indic digits: ``int()`` then raised
inside validation (the process exited), or the ISO 8583 encode failed after the payment
was accepted, counted as "not sent", and the switch approved it in stand-in.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch import reasons
from switch.adapters.iso8583 import CardAdapter, original_request
from switch.adapters.specs import CardAdapterConfig
from switch.model import (
    CardData,
    CardRef,
    Party,
    Payment,
    PaymentRequest,
    luhn_ok,
    tokenize_pan,
)
from switch.payment.validation import InvalidPayment, validate
from switch.protocols import iso8583
from switch.protocols.errors import CodecError
from tests.payments import card_payment, swift_payment

AT = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def with_card(**fields: str) -> PaymentRequest:
    base = card_payment()
    assert base.card is not None
    return msgspec.structs.replace(base, card=msgspec.structs.replace(base.card, **fields))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expiry", "28¹²"),  # superscript digits: isdigit() is True, int() raises
        ("expiry", "٢٨١٢"),  # Arabic-Indic digits: int() accepts them, the codec does not
        ("mcc", "٥٩٩٩"),
        ("mcc", "59²9"),
        ("terminal_id", "TÉRM0001"),
        ("terminal_id", "TERM\x0001"),
        ("merchant_id", "MERCHANT-ÜNO"),
        ("merchant_id", "M\n1"),
        ("pan", "4111111111111111".replace("1", "١")),
    ],
)
def test_card_fields_the_iso8583_codec_cannot_carry_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidPayment) as info:
        validate(with_card(**{field: value}))
    assert info.value.path == f"payment.card.{field}"


@pytest.mark.parametrize(
    ("field", "value"),
    [("end_to_end_id", "E2E\x00"), ("remittance", "line\x1bone")],
)
def test_swift_text_that_xml_cannot_carry_is_refused(field: str, value: str) -> None:
    base = swift_payment()
    assert base.swift is not None
    request = msgspec.structs.replace(
        base, swift=msgspec.structs.replace(base.swift, **{field: value}))
    with pytest.raises(InvalidPayment) as info:
        validate(request)
    assert info.value.path == f"payment.swift.{field}"


def test_swift_party_name_with_a_control_character_is_refused() -> None:
    request = msgspec.structs.replace(swift_payment(), payer=Party("DE89370400440532013000",
                                                                   "Name\x07"))
    with pytest.raises(InvalidPayment, match=r"payment.payer.name"):
        validate(request)


def _payment_for(request: PaymentRequest) -> Payment:
    card = request.card
    assert card is not None
    ref = CardRef(tokenize_pan(card.pan, b"k" * 32), card.pan[-4:], card.pan[:6], card.expiry,
                  card.terminal_id, card.merchant_id, card.mcc, "000001", "000000000001")
    return Payment("P1-1", request.idempotency_key, "card", request.amount, request.currency,
                   request.payer, request.payee, AT, card=ref)


_any_text = st.text(max_size=20) | st.text(alphabet=st.characters(max_codepoint=0x7F),
                                           max_size=20)


@settings(max_examples=400, deadline=None)
@given(expiry=_any_text, mcc=_any_text, terminal_id=_any_text, merchant_id=_any_text)
def test_whatever_validation_accepts_the_iso8583_codec_encodes(
    expiry: str, mcc: str, terminal_id: str, merchant_id: str
) -> None:
    """The one-source-of-truth property: validate() raises only InvalidPayment, and a card
    payment it accepts always becomes an encodable 0100 and 0120."""
    try:
        request = PaymentRequest(
            "k", "card", 1000, "USD", Party("A1"), Party("M1"),
            card=msgspec.convert({"pan": "4111111111111111", "expiry": expiry, "mcc": mcc,
                                  "terminal_id": terminal_id, "merchant_id": merchant_id},
                                 CardData))
    except msgspec.ValidationError:
        return  # msgspec's length bounds refused it before validation
    try:
        validate(request)
    except InvalidPayment:
        return
    original = original_request(_payment_for(request), "123456")
    iso8583.encode(original)
    iso8583.encode(iso8583.authorization_advice(original, response_code="00", auth_code="S1"))


def _luhn_completed(stem: str) -> str:
    return next(stem + d for d in "0123456789" if luhn_ok(stem + d))


@settings(max_examples=300, deadline=None)
@given(amount=st.integers(1, 10**15), pan_stem=st.text("0123456789", min_size=9, max_size=17))
def test_whatever_amount_and_pan_validation_accepts_the_card_adapter_encodes(
    amount: int, pan_stem: str
) -> None:
    """Amounts up to 10^15 pass msgspec, and 10- or 11-digit PANs pass DE2's own rule:
    the 0100 could then not be built (DE4 is n12; the network PAN needs 12 digits), and
    the adapter said "not sent", which let stand-in approve what no issuer saw."""
    request = msgspec.structs.replace(
        card_payment(amount=amount),
        card=CardData(pan=_luhn_completed("4" + pan_stem), expiry="2812"))
    try:
        validate(request)
    except InvalidPayment as exc:
        assert amount > 10**12 - 1 or len(request.card.pan) < 12, exc  # type: ignore[union-attr]
        return
    original = original_request(_payment_for(request), "123456")
    iso8583.encode(original)


def _unencodable_payment() -> Payment:
    # As a journal written before this fix may hold it: accepted with a non-ASCII terminal.
    request = card_payment()
    payment = _payment_for(request)
    assert payment.card is not None
    return msgspec.structs.replace(
        payment, card=msgspec.structs.replace(payment.card, terminal_id="TÉRM0001"))


@pytest.mark.anyio
async def test_an_encode_failure_is_a_format_error_decline_never_not_sent() -> None:
    adapter = CardAdapter(CardAdapterConfig(name="card", host="127.0.0.1", port=9))
    reply = await adapter.authorize(_unencodable_payment())  # NotSent here led to stand-in
    assert (reply.outcome, reply.reason) == ("declined", reasons.FORMAT_ERROR)
    assert "DE41" in reply.network_ref


@pytest.mark.anyio
async def test_an_advice_that_cannot_be_encoded_raises_codec_error_for_quarantine() -> None:
    adapter = CardAdapter(CardAdapterConfig(name="card", host="127.0.0.1", port=9))
    with pytest.raises(CodecError, match="DE41"):
        await adapter.advise(_unencodable_payment(), "S12345")
