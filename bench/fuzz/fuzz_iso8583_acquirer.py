"""Fuzz target: the switch's ISO 8583 acquirer door, its sans-IO half (what a hostile or
broken acquirer's bytes reach): decode in both bitmap encodings, map to the core's
request, and build every answer the door may send back.

Declared outcome: ``CodecError`` (``AcquirerFormatError`` and ``Unsupported`` are
CodecErrors). Anything else escaping is a finding: the door would answer a malformed
message with a dropped connection or worse. Every answer built must also encode, since
the door writes it to the acquirer, and what it encodes must decode back to it.
"""

from __future__ import annotations

from switch.model import Result, Status
from switch.protocols.errors import CodecError
from switch.protocols.iso8583_acquirer import (
    AcquirerCodec,
    AcquirerFormatError,
    PaymentCall,
    answerable_part,
    format_error_response,
    parse_request,
    payment_response,
    refusal_response,
)

_CODECS = (AcquirerCodec("ascii"), AcquirerCodec("binary"))


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import acquirer_seeds

    return acquirer_seeds()


def _answer(codec: AcquirerCodec, data: bytes) -> None:
    try:
        message = codec.decode(data)
    except AcquirerFormatError as exc:
        # As the door answers it (switch/serve/iso8583_door.py).
        response = format_error_response(answerable_part(exc, data, codec.spec))
        if response is not None:
            assert codec.decode(codec.encode(response)) == response
        return
    assert codec.decode(codec.encode(message)) == message
    try:
        call = parse_request(message)
    except CodecError:
        response = format_error_response(message)
        if response is not None:
            assert codec.decode(codec.encode(response)) == response
        return
    if isinstance(call, PaymentCall):
        result = Result("P1-1", Status.APPROVED, "00", route="card-primary")
        for answer in (payment_response(message, result),
                       refusal_response(message, "overloaded", "fuzz")):
            assert codec.decode(codec.encode(answer)) == answer


def TestOneInput(data: bytes) -> None:
    for codec in _CODECS:
        _answer(codec, data)
