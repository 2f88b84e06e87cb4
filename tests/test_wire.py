"""The frame codec: framing, limits, field-path errors, and fuzzing."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.model import Result, Status
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    FrameTooLarge,
    Pay,
    Ping,
    Query,
    Reply,
    ReplyEncoder,
    decode_request,
    decode_response,
    encode_request,
    frame,
)
from tests.payments import card_payment, qr_payment, swift_payment


def test_frames_split_across_reads_are_reassembled() -> None:
    data = encode_request(Pay(1, card_payment())) + encode_request(Ping(2))
    decoder = FrameDecoder()
    frames = []
    for i in range(len(data)):
        frames += decoder.feed(data[i : i + 1])
    assert [type(decode_request(f)) for f in frames] == [Pay, Ping]
    assert decoder.buffered == 0


def test_every_complete_frame_in_one_read_is_returned() -> None:
    data = b"".join(encode_request(Ping(i)) for i in range(100))
    frames = FrameDecoder().feed(data + data[:3])
    assert [decode_request(f).id for f in frames] == list(range(100))  # type: ignore[union-attr]


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge, match="max_frame_bytes=1024"):
        decoder.feed((1025).to_bytes(4, "big"))


def test_invalid_field_error_names_the_path_and_keeps_the_id() -> None:
    body = msgspec.to_builtins(card_payment())
    body["amount"] = -5
    payload = msgspec.msgpack.encode({"op": "pay", "id": 9, "payment": body})
    reply = decode_request(payload)
    assert isinstance(reply, ErrorReply)
    assert reply.id == 9
    assert reply.code == "invalid"
    assert reply.message == "payment.amount: Expected `int` >= 1"


def test_unknown_field_is_named() -> None:
    body = msgspec.to_builtins(card_payment())
    body["cvv"] = "123"
    reply = decode_request(msgspec.msgpack.encode({"op": "pay", "id": 1, "payment": body}))
    assert isinstance(reply, ErrorReply) and reply.message == "payment.cvv: unknown key"


def test_garbage_is_malformed() -> None:
    reply = decode_request(b"\xc1\xc1")
    assert isinstance(reply, ErrorReply) and reply.code == "malformed" and reply.id is None


def test_replies_are_batched_into_one_buffer() -> None:
    out = ReplyEncoder()
    result = Result("P1-1", Status.APPROVED, "00")
    for i in range(3):
        out.add(Reply(i, result))
    frames = FrameDecoder().feed(out.take())
    assert [decode_response(f).id for f in frames] == [0, 1, 2]
    assert len(out) == 0


@pytest.mark.parametrize("payment", [card_payment(), swift_payment(), qr_payment()])
def test_requests_round_trip(payment: object) -> None:
    request = Pay(7, payment)  # type: ignore[arg-type]
    (payload,) = FrameDecoder().feed(encode_request(request))
    assert decode_request(payload) == request


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_never_crash_the_decoder(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except FrameTooLarge:
            return  # the connection would be closed; that is the defined outcome
        for payload in frames:
            assert isinstance(decode_request(payload), (Pay, Query, Ping, ErrorReply))
        assert decoder.buffered <= 4 + 4096


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 300))
def test_mutated_valid_frames_never_raise(noise: bytes, position: int) -> None:
    payload = bytearray(msgspec.msgpack.encode(Pay(1, card_payment())))
    position %= len(payload)
    payload[position : position + len(noise)] = noise
    decoded = decode_request(bytes(payload))  # a request or an ErrorReply, never raises
    assert isinstance(decoded, (Pay, Query, Ping, ErrorReply))


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=64),
    st.integers(1, 10**15),
    st.sampled_from(["USD", "EUR", "JPY", "CNY"]),
    st.integers(0, 2**63 - 1),
)
def test_valid_messages_round_trip(key: str, amount: int, currency: str, rid: int) -> None:
    request = Pay(rid, card_payment(key=key, amount=amount, currency=currency))
    (payload,) = FrameDecoder().feed(frame(msgspec.msgpack.encode(request)))
    assert decode_request(payload) == request


# --- nesting depth (issue 11, defect 1) --------------------------------------------------


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_deeply_nested_arrays_are_malformed_not_a_recursion_error(depth: int) -> None:
    # 1,000 nested arrays raised RecursionError from _request_id_of and ended the process.
    reply = decode_request(b"\x91" * depth + b"\xc0")
    assert isinstance(reply, ErrorReply)
    assert (reply.code, reply.id) == ("malformed", None)
    assert "nested too deep" in reply.message


def test_deep_nesting_inside_a_map_is_malformed() -> None:
    # The typed decoder skips the unknown key's value recursively, before seeing "op".
    payload = b"\x83\xa1x" + b"\x91" * 2000 + b"\xc0" + b"\xa2op\xa3pay\xa2id\x07"
    reply = decode_request(payload)
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"


def test_moderate_nesting_still_gets_its_field_error() -> None:
    reply = decode_request(b"\x91" * 900 + b"\xc0")
    assert isinstance(reply, ErrorReply) and reply.code == "invalid"


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 20_000), st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"]),
       st.binary(max_size=8))
def test_any_nesting_depth_is_answered(depth: int, opener: bytes, tail: bytes) -> None:
    decoded = decode_request(opener * depth + b"\xc0" + tail)
    assert isinstance(decoded, (Pay, Query, Ping, ErrorReply))
