"""ISO 8583 codec: golden bytes, builders, QMUX matching, framing, and fuzzing."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.protocols import iso8583 as m
from switch.protocols.errors import CodecError

T0 = datetime(2025, 1, 15, 12, 34, 56)

TXN = m.CardTransaction(
    pan="4111111111111111",
    amount_minor=12345,
    currency="840",
    stan=1,
    transmitted_at=T0,
    terminal_id="TERM0001",
    merchant_id="MERCHANT0000001",
    acquirer_id="123456",
    expiry="2812",
    mcc="5411",
    pos_entry_mode="051",
    rrn="501512000001",
    merchant_name_location="CORNER GROCERY AUSTIN US",
)

# The exact wire image of TXN as a 0100: MTI, hex primary bitmap, then each field.
GOLDEN_0100 = (
    b"0100"
    b"723C440108E08000"  # bitmap: 2 3 4 7 11 12 13 14 18 22 32 37 41 42 43 49
    b"16" b"4111111111111111"  # DE2 LLVAR
    b"000000"  # DE3
    b"000000012345"  # DE4
    b"0115123456"  # DE7 MMDDhhmmss
    b"000001"  # DE11
    b"123456"  # DE12
    b"0115"  # DE13
    b"2812"  # DE14
    b"5411"  # DE18
    b"051"  # DE22
    b"06" b"123456"  # DE32 LLVAR
    b"501512000001"  # DE37
    b"TERM0001"  # DE41
    b"MERCHANT0000001"  # DE42
    b"CORNER GROCERY AUSTIN US                "  # DE43 padded to 40
    b"840"  # DE49
)

GOLDEN_0110 = (
    b"0110"
    b"723800010EC08000"
    b"164111111111111111" b"000000" b"000000012345" b"0115123456" b"000001" b"123456" b"0115"
    b"06123456" b"501512000001"
    b"A1B2C3"  # DE38
    b"00"  # DE39
    b"TERM0001" b"MERCHANT0000001" b"840"
)

GOLDEN_0800_ECHO = b"0800" b"8220000000000000" b"0400000000000000" b"0115123456" b"000003" b"301"


def test_authorization_request_golden_bytes() -> None:
    msg = m.authorization_request(TXN)
    assert m.encode(msg) == GOLDEN_0100
    assert m.decode(GOLDEN_0100) == msg


def test_authorization_response_golden_bytes() -> None:
    req = m.decode(GOLDEN_0100)
    resp = m.response(req, m.ResponseCode.APPROVED, auth_code="A1B2C3")
    assert resp.mti == "0110"
    assert m.encode(resp) == GOLDEN_0110
    assert m.decode(GOLDEN_0110).response_code == "00"


def test_network_echo_golden_bytes() -> None:
    msg = m.network_request(m.NetworkCode.ECHO, stan=3, transmitted_at=T0)
    assert m.encode(msg) == GOLDEN_0800_ECHO
    resp = m.response(m.decode(GOLDEN_0800_ECHO), "00")
    assert resp == m.IsoMessage("0810", {7: "0115123456", 11: "000003", 39: "00", 70: "301"})


def test_financial_request_differs_only_in_mti() -> None:
    auth, fin = m.authorization_request(TXN), m.financial_request(TXN)
    assert fin.mti == "0200" and fin.fields == auth.fields
    assert m.response(fin, m.ResponseCode.INSUFFICIENT_FUNDS).mti == "0210"


def test_reversal_carries_original_data_elements() -> None:
    original = m.authorization_request(TXN)
    rev = m.reversal_request(
        original, stan=2, transmitted_at=datetime(2025, 1, 15, 12, 35, 30), reason_code="68"
    )
    assert rev.mti == "0400"
    # original MTI + STAN + DE7 + acquirer id zero-padded to 11 + 11-zero forwarder
    assert rev.fields[90] == "0100" "000001" "0115123456" "00000123456" "00000000000"
    assert len(rev.fields[90]) == 42
    assert rev.stan == "000002" and rev.fields[7] == "0115123530"
    assert rev.fields[39] == "68" and rev.fields[4] == original.fields[4]
    assert m.decode(m.encode(rev)) == rev
    assert m.response(rev, "00").mti == "0410"

    rep = m.repeat(rev)
    assert rep.mti == "0401" and rep.fields == rev.fields
    assert m.decode(m.encode(rep)) == rep


def test_reversal_advice_and_repeat() -> None:
    adv = m.reversal_advice(m.financial_request(TXN), stan=9, transmitted_at=T0)
    assert adv.mti == "0420" and adv.fields[90].startswith("0200000001")
    assert m.repeat(adv).mti == "0421"
    assert m.response(m.repeat(adv), "00").mti == "0430"


def test_authorization_advice_for_stand_in() -> None:
    adv = m.authorization_advice(
        m.authorization_request(TXN), response_code=m.ResponseCode.APPROVED, auth_code="SI0001"
    )
    assert adv.mti == "0120" and adv.fields[39] == "00" and adv.fields[38] == "SI0001"
    assert m.decode(m.encode(adv)) == adv
    assert m.response(adv, "00").mti == "0130"
    with pytest.raises(CodecError) as exc:
        m.authorization_advice(m.financial_request(TXN), response_code="00")
    assert exc.value.path == "MTI"


def test_cannot_reverse_a_response_or_network_message() -> None:
    with pytest.raises(CodecError):
        m.reversal_request(m.IsoMessage("0110", {11: "000001", 7: "0115123456"}), stan=1,
                           transmitted_at=T0)
    with pytest.raises(CodecError) as exc:
        m.reversal_request(m.IsoMessage("0100", {7: "0115123456"}), stan=1, transmitted_at=T0)
    assert exc.value.path == "DE11"


@pytest.mark.parametrize(
    ("request_mti", "response_mti"),
    [("0100", "0110"), ("0101", "0110"), ("0120", "0130"), ("0200", "0210"),
     ("0400", "0410"), ("0401", "0410"), ("0420", "0430"), ("0421", "0430"),
     ("0800", "0810")],
)
def test_response_mti(request_mti: str, response_mti: str) -> None:
    assert m.response_mti(request_mti) == response_mti


def test_response_to_a_response_is_refused() -> None:
    with pytest.raises(CodecError):
        m.response_mti("0110")
    with pytest.raises(CodecError):
        m.repeat(m.IsoMessage("0410", {}))
    with pytest.raises(CodecError):
        m.repeat(m.IsoMessage("0401", {}))


def test_match_key_pairs_requests_with_responses() -> None:
    auth = m.authorization_request(TXN)
    assert m.match_key(auth) == ("010", "000001", "TERM0001")
    assert m.match_key(m.response(auth, "05")) == m.match_key(auth)
    rev = m.reversal_request(auth, stan=7, transmitted_at=T0)
    keys = {m.match_key(rev), m.match_key(m.repeat(rev)), m.match_key(m.response(rev, "00"))}
    assert keys == {("040", "000007", "TERM0001")}
    adv = m.reversal_advice(auth, stan=7, transmitted_at=T0)
    assert m.match_key(adv) != m.match_key(rev)  # 042 class vs 040
    # Same STAN, other terminal or other class: different keys.
    assert m.match_key(m.financial_request(TXN)) != m.match_key(auth)
    other_terminal = m.CardTransaction(**{**_txn_kwargs(), "terminal_id": "TERM0002"})
    assert m.match_key(m.authorization_request(other_terminal)) != m.match_key(auth)


def _txn_kwargs() -> dict[str, object]:
    return {f: getattr(TXN, f) for f in TXN.__struct_fields__}


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"", "MTI"),
        (b"01", "MTI"),
        (b"0100", "bitmap"),
        (b"0100ZZZZZZZZZZZZZZZZ", "bitmap"),
        (b"01X04000000000000000164111111111111111", "MTI"),
        (b"0100" b"0800000000000000" b"000000000100", "DE5"),  # DE5 is not in our spec
        (b"0100" b"1000000000000000" b"00000000012A", "DE4"),  # letter in numeric field
        (b"0100" b"4000000000000000" b"2041111111111111111111", "DE2"),  # LL > 19
        (b"0100" b"4000000000000000" b"16411111", "DE2"),  # truncated
        (b"0100" b"1000000000000000" b"000000012345EXTRA", "DE4"),  # trailing bytes
        (b"0100" b"8000000000000000", "bitmap"),  # secondary bitmap announced, missing
        (b"\xff\xfe\xfd\xfc", "MTI"),
    ],
)
def test_decode_errors_name_the_field(data: bytes, path: str) -> None:
    with pytest.raises(CodecError) as exc:
        m.decode(data)
    assert exc.value.path == path


def test_encode_errors_name_the_field() -> None:
    with pytest.raises(CodecError) as exc:
        m.encode(m.IsoMessage("0100", {4: "12.50"}))
    assert exc.value.path == "DE4"
    with pytest.raises(CodecError) as exc:
        m.encode(m.IsoMessage("0100", {41: "TOO-LONG-ID"}))
    assert exc.value.path == "DE41"
    with pytest.raises(CodecError) as exc:
        m.encode(m.IsoMessage("0100", {55: "9F02"}))
    assert exc.value.path == "DE55"
    with pytest.raises(CodecError) as exc:
        m.encode(m.IsoMessage("100", {}))
    assert exc.value.path == "MTI"
    with pytest.raises(CodecError) as exc:
        m.authorization_request(m.CardTransaction(**{**_txn_kwargs(), "amount_minor": -1}))
    assert exc.value.path == "DE4"


def test_secondary_bitmap_round_trip() -> None:
    msg = m.IsoMessage("0800", {7: "0115123456", 11: "000001", 70: "001"})
    raw = m.encode(msg)
    assert raw[4:5] == b"8"  # bit 1 announces the secondary bitmap
    assert m.decode(raw) == msg


# --------------------------------------------------------------------------- framing


def test_frame_and_decoder_split_at_every_offset() -> None:
    stream = m.frame(GOLDEN_0100) + m.frame(GOLDEN_0110) + m.frame(GOLDEN_0800_ECHO)
    for cut in range(len(stream) + 1):
        dec = m.FrameDecoder()
        frames = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert frames == [GOLDEN_0100, GOLDEN_0110, GOLDEN_0800_ECHO]
        assert dec.buffered == 0


def test_decoder_parses_every_complete_frame_per_call() -> None:
    dec = m.FrameDecoder()
    payloads = [bytes([i]) * i for i in range(1, 50)]
    data = b"".join(m.frame(p) for p in payloads)
    assert dec.feed(memoryview(data + b"\x00")) == payloads
    assert dec.buffered == 1
    assert dec.feed(b"\x02ab") == [b"ab"]


def test_decoder_skips_zero_length_keepalives() -> None:
    dec = m.FrameDecoder()
    assert dec.feed(b"\x00\x00" + m.frame(b"x") + b"\x00\x00") == [b"x"]


def test_decoder_rejects_oversized_frame_and_stays_failed() -> None:
    dec = m.FrameDecoder(max_frame_size=100)
    assert dec.feed(m.frame(b"a" * 100)) == [b"a" * 100]
    with pytest.raises(CodecError, match="max_frame_size=100"):
        dec.feed(b"\x00\x65")
    with pytest.raises(CodecError, match="max_frame_size=100"):
        dec.feed(m.frame(b"ok"))


def test_frame_rejects_payload_beyond_prefix() -> None:
    assert m.frame(b"") == b"\x00\x00"
    with pytest.raises(CodecError) as exc:
        m.frame(b"x" * 65536)
    assert exc.value.path == "frame"
    with pytest.raises(ValueError):
        m.FrameDecoder(max_frame_size=70000)


# --------------------------------------------------------------------------- fuzzing

SEEDS = [
    GOLDEN_0100,
    GOLDEN_0110,
    GOLDEN_0800_ECHO,
    m.encode(m.reversal_request(m.decode(GOLDEN_0100), stan=2, transmitted_at=T0)),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[pos] = draw(st.sampled_from(b"0123456789ABCDEF F\x00\xff:"))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 6))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        m.decode(data)


@settings(max_examples=300, deadline=None)
@given(mutated(SEEDS))
def test_fuzz_mutated_messages_raise_only_codec_error(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except CodecError:
        return
    # Whatever decodes must re-encode: a decoded message is always a valid message.
    assert m.decode(m.encode(msg)) == msg


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


_ANS = st.characters(min_codepoint=32, max_codepoint=126)
FIELD_VALUES: dict[int, st.SearchStrategy[str]] = {
    2: st.text("0123456789", min_size=1, max_size=19),
    3: _digits(6), 4: _digits(12), 7: _digits(10), 11: _digits(6), 12: _digits(6),
    13: _digits(4), 14: _digits(4), 18: _digits(4), 22: _digits(3),
    32: st.text("0123456789", min_size=1, max_size=11),
    37: st.text(_ANS, min_size=12, max_size=12), 38: st.text(_ANS, min_size=6, max_size=6),
    39: st.text(_ANS, min_size=2, max_size=2), 41: st.text(_ANS, min_size=8, max_size=8),
    42: st.text(_ANS, min_size=15, max_size=15), 43: st.text(_ANS, min_size=40, max_size=40),
    49: _digits(3), 70: _digits(3), 90: _digits(42),
}  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> m.IsoMessage:
    chosen = draw(st.sets(st.sampled_from(sorted(FIELD_VALUES))))
    fields = {de: draw(FIELD_VALUES[de]) for de in sorted(chosen)}
    return m.IsoMessage(draw(_digits(4)), fields)


@settings(max_examples=200, deadline=None)
@given(messages())
def test_round_trip_any_valid_message(msg: m.IsoMessage) -> None:
    assert m.decode(m.encode(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=10), st.data())
def test_fuzz_frame_decoder_reassembles_any_chunking(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(m.frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    dec, out, prev = m.FrameDecoder(max_frame_size=300), [], 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:cut])
        prev = cut
    assert out == payloads


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_frame_decoder_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        m.FrameDecoder(max_frame_size=64).feed(data)
