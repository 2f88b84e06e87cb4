"""The acquirer interface's sans-IO half: decoding, mapping to the core, responses."""

from __future__ import annotations

import pytest

from switch.model import Result, Status
from switch.protocols.errors import CodecError
from switch.protocols.iso8583 import IsoMessage
from switch.protocols.iso8583_acquirer import (
    AcquirerCodec,
    AcquirerFormatError,
    NetworkRequest,
    PaymentCall,
    ReversalCall,
    Unsupported,
    format_error_response,
    parse_request,
    payment_response,
    refusal_response,
)

AUTH = IsoMessage("0100", {
    2: "4111111111111111", 3: "000000", 4: "000000001250", 7: "1125101500", 11: "000042",
    14: "2812", 32: "412345", 41: "TERM0042", 42: "MERCHANT0000042", 49: "978",
})


@pytest.mark.parametrize("bitmap", ["ascii", "binary"])
def test_round_trip_in_both_bitmap_encodings(bitmap: str) -> None:
    codec = AcquirerCodec(bitmap)  # type: ignore[arg-type]
    raw = codec.encode(AUTH)
    assert len(raw[4:20] if bitmap == "ascii" else raw[4:12]) in (16, 8)
    assert codec.decode(raw) == AUTH


def test_a_payment_maps_onto_the_core_request() -> None:
    call = parse_request(AUTH)
    assert isinstance(call, PaymentCall)
    request = call.request
    assert request.idempotency_key == "iso:412345:TERM0042:000042:1125101500"
    assert (request.channel, request.amount, request.currency) == ("card", 1250, "EUR")
    assert request.card is not None and request.card.terminal_id == "TERM0042"
    assert "4111111111111111" not in request.payer.account  # never the PAN in clear
    # The key fields are configurable: DE37 (RRN) and DE41 instead.
    other = parse_request(IsoMessage("0100", {**AUTH.fields, 37: "RRN000000042"}), (37, 41))
    assert isinstance(other, PaymentCall)
    assert other.request.idempotency_key == "iso:RRN000000042:TERM0042"


@pytest.mark.parametrize(("drop", "change", "path"), [
    (49, None, "DE49"), (14, None, "DE14"), (None, (49, "999"), "DE49"),
    (None, (4, "000000000000"), "DE4"), (None, (2, "41111"), "DE2"),
])
def test_errors_name_the_data_element(drop: int | None, change: tuple[int, str] | None,
                                      path: str) -> None:
    fields = dict(AUTH.fields)
    if drop is not None:
        del fields[drop]
    if change is not None:
        fields[change[0]] = change[1]
    with pytest.raises(CodecError) as info:
        parse_request(IsoMessage("0100", fields))
    assert info.value.path == path


def test_a_reversal_finds_its_original_through_de90() -> None:
    de90 = "0100" + "000042" + "1125101500" + "412345".zfill(11) + "0" * 11
    reversal = IsoMessage("0400", {4: "000000001250", 7: "1125101600", 11: "000043",
                                   41: "TERM0042", 90: de90})
    call = parse_request(reversal)
    assert isinstance(call, ReversalCall) and not call.advice
    assert call.original_key == "iso:412345:TERM0042:000042:1125101500"
    advice = parse_request(IsoMessage("0421", reversal.fields))
    assert isinstance(advice, ReversalCall) and advice.advice
    assert isinstance(parse_request(IsoMessage("0800", {7: "1125101500", 11: "1", 70: "301"})),
                      NetworkRequest)
    with pytest.raises(CodecError, match="not accepted"):
        parse_request(IsoMessage("0110", AUTH.fields))


@pytest.mark.parametrize("acquirer", ["", "0412345", "412345"],
                         ids=["no-de32", "leading-zero", "plain"])
def test_a_reversal_without_de32_finds_an_original_with_or_without_one(acquirer: str) -> None:
    # DE90 carries the acquirer id zero-padded: whether the original sent one, and its
    # leading zeros, cannot be told back from there (both once answered 25 for ever).
    original = dict(AUTH.fields)
    if acquirer:
        original[32] = acquirer
    else:
        del original[32]
    payment = parse_request(IsoMessage("0100", original))
    assert isinstance(payment, PaymentCall)
    de90 = "0100" + "000042" + "1125101500" + acquirer.zfill(11) + "0" * 11
    reversal = parse_request(IsoMessage("0400", {4: "000000001250", 7: "1125101600",
                                                 11: "000043", 41: "TERM0042", 90: de90}))
    assert isinstance(reversal, ReversalCall)
    assert reversal.original_key == payment.request.idempotency_key


@pytest.mark.parametrize("processing_code", ["200000", "010000", "300000", "090000"])
def test_only_purchases_are_taken_answered_12_otherwise(processing_code: str) -> None:
    # A refund (20) was approved and booked as a purchase: a credit became a debit.
    request = IsoMessage("0100", {**AUTH.fields, 3: processing_code})
    with pytest.raises(Unsupported) as info:
        parse_request(request)
    assert info.value.path == "DE3" and info.value.code == "12"
    answer = format_error_response(request, info.value.code)
    assert answer is not None and answer.fields[39] == "12" and answer.mti == "0110"
    assert isinstance(parse_request(IsoMessage("0100", {**AUTH.fields, 3: "003000"})),
                      PaymentCall)


def test_a_reversal_carries_its_amount() -> None:
    de90 = "0100" + "000042" + "1125101500" + "412345".zfill(11) + "0" * 11
    call = parse_request(IsoMessage("0400", {4: "000000000001", 7: "1125101600",
                                             11: "000043", 41: "TERM0042", 90: de90}))
    assert isinstance(call, ReversalCall) and call.amount == 1


@pytest.mark.parametrize("status", [Status.REVERSED, Status.DECLINED, Status.FAILED])
def test_only_an_approval_is_answered_00(status: Status) -> None:
    # A reversed payment's result carries reason 00 (the reversal went through): its
    # repeat was answered 00, and the merchant completed a sale with nothing held.
    answer = payment_response(AUTH, Result("P1-1", status, "00", "AB1234"))
    assert answer.fields[39] != "00" and 38 not in answer.fields
    expected = "68" if status is Status.REVERSED else "96"
    assert answer.fields[39] == expected


def test_responses_echo_the_key_fields_and_carry_real_codes() -> None:
    approved = payment_response(AUTH, Result("P1", Status.APPROVED, "00", "A1B2C3"))
    assert approved.mti == "0110" and approved.fields[39] == "00"
    assert approved.fields[38] == "A1B2C3"
    assert all(approved.fields[de] == AUTH.fields[de] for de in (7, 11, 32, 41, 49))
    unknown = payment_response(AUTH, Result("P1", Status.UNKNOWN, "68"))
    assert unknown.fields[39] == "68" and 38 not in unknown.fields
    assert refusal_response(AUTH, "overloaded").fields[39] == "91"
    assert refusal_response(AUTH, "idempotency_conflict").fields[39] == "94"
    assert refusal_response(AUTH, "invalid", "payment.card.pan: fails Luhn").fields[39] == "14"


def test_unreadable_messages_get_30_when_the_mti_is_readable() -> None:
    codec = AcquirerCodec()
    raw = codec.encode(AUTH)
    with pytest.raises(AcquirerFormatError) as info:
        codec.decode(raw[:-5])  # DE49 cut short
    answer = format_error_response(info.value.partial)
    assert answer is not None and answer.mti == "0110" and answer.fields[39] == "30"
    assert answer.fields[11] == "000042" and answer.fields[41] == "TERM0042"
    with pytest.raises(AcquirerFormatError) as info:
        codec.decode(b"\xc1\xc1junk")
    assert format_error_response(info.value.partial) is None
    # A response cannot be answered.
    assert format_error_response(IsoMessage("0110", {11: "000001"})) is None
