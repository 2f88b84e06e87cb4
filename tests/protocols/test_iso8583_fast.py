"""The ISO 8583 fast paths against pyiso8583, the reference (issue 12, card codec cost).

The codec encodes and decodes our spec itself and hands anything unusual to pyiso8583.
These properties hold the two paths equal: the same bytes out for every message we can
build, the same message (or the same error) back from any bytes, well-formed or not.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.protocols import iso8583
from switch.protocols.errors import CodecError
from switch.protocols.iso8583 import FIELD_CLASS, SPEC, IsoMessage

_MTIS = ("0100", "0110", "0120", "0130", "0200", "0210", "0400", "0410", "0420", "0430",
         "0800", "0810")
_ALPHABET = {
    "n": "0123456789",
    "an": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "ans": "".join(chr(c) for c in range(0x20, 0x7F)),
}


@st.composite
def _values(draw: st.DrawFn, de: int) -> str:
    """Mostly a value that fits the field; sometimes one a size off either way."""
    spec = SPEC[str(de)]
    width = spec["max_len"]
    if spec["len_type"]:
        size = draw(st.integers(0, width + draw(st.sampled_from([0, 0, 0, 1]))))
    else:
        size = width + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    return draw(st.text(_ALPHABET[FIELD_CLASS[de]], min_size=max(size, 0),
                        max_size=max(size, 0)))


@st.composite
def messages(draw: st.DrawFn) -> IsoMessage:
    present = draw(st.sets(st.sampled_from(sorted(FIELD_CLASS)), max_size=len(FIELD_CLASS)))
    return IsoMessage(draw(st.sampled_from(_MTIS)), {de: draw(_values(de)) for de in present})


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except CodecError as exc:
        return ("error", str(exc))


def _reference_encode(msg: IsoMessage) -> object:
    with mock.patch.object(iso8583, "_encode_fast", lambda _msg: None):
        return _outcome(lambda: iso8583.encode(msg))


def _reference_decode(data: bytes) -> object:
    with mock.patch.object(iso8583, "_decode_fast", lambda _data: None):
        return _outcome(lambda: iso8583.decode(data))


@settings(max_examples=400)
@given(messages())
def test_encode_writes_the_bytes_pyiso8583_writes(msg: IsoMessage) -> None:
    assert _outcome(lambda: iso8583.encode(msg)) == _reference_encode(msg)


@settings(max_examples=400)
@given(messages())
def test_decode_reads_what_pyiso8583_reads(msg: IsoMessage) -> None:
    encoded = _reference_encode(msg)
    if not isinstance(encoded, bytes):
        return
    fast = iso8583._decode_fast(encoded)
    assert fast is not None, "a message we wrote takes the fast path"
    assert fast[:2] == (msg.mti, msg.fields)
    assert _outcome(lambda: iso8583.decode(encoded)) == _reference_decode(encoded)


@settings(max_examples=600)
@given(messages(), st.data())
def test_damaged_bytes_get_the_references_verdict(msg: IsoMessage, data: st.DataObject
                                                  ) -> None:
    """Truncated, extended, overwritten, non-ASCII, lowercase bitmaps: whatever the fast
    path accepts, the reference accepts the same way; what it doubts, the reference
    judges."""
    encoded = _reference_encode(msg)
    if not isinstance(encoded, bytes):
        return
    damage = data.draw(st.sampled_from(["cut", "add", "byte", "lower", "none"]))
    raw = bytearray(encoded)
    if damage == "cut":
        del raw[data.draw(st.integers(0, len(raw))):]
    elif damage == "add":
        raw += data.draw(st.binary(min_size=1, max_size=8))
    elif damage == "byte" and raw:
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif damage == "lower":
        raw[4:36] = bytes(raw[4:36]).lower()
    damaged = bytes(raw)
    assert _outcome(lambda: iso8583.decode(damaged)) == _reference_decode(damaged)


@pytest.mark.parametrize("msg", [
    IsoMessage("0100", {2: "4111111111111111", 3: "000000", 4: "000000001000"}),
    IsoMessage("0800", {7: "1126101500", 11: "000001", 70: "301"}),
    IsoMessage("0400", {2: "4111111111111111", 90: "0" * 42}),
])
def test_known_shapes_take_the_fast_path_both_ways(msg: IsoMessage) -> None:
    """Not only equal when it runs: it runs, for the requests the switch sends (a secondary
    bitmap for DE70 and DE90 included)."""
    fast = iso8583._encode_fast(msg)
    assert fast is not None and fast == _reference_encode(msg)
    decoded = iso8583._decode_fast(fast)
    assert decoded is not None and decoded[:2] == (msg.mti, msg.fields)


def _frame(mti: str, primary: str, body: str, secondary: str = "") -> bytes:
    return (mti + primary + secondary + body).encode("ascii")


@pytest.mark.parametrize("data", [
    _frame("0100", "0000000100000000", "12" + "1" * 12),  # DE32 LLVAR over its 11
    _frame("0100", "0000000100000000", "05" + "1" * 5),  # DE32 within: accepted
    _frame("0100", "4000000000000000", "1" * 18),  # DE2 without its length digits
    _frame("0100", "6000000000000000", "16" + "4" * 16 + "00000"),  # DE3 one short
    _frame("0100", "6000000000000000", "16" + "4" * 16 + "0000000"),  # one byte extra
    _frame("0100", "6000000000000000".lower().replace("6", "e"), ""),  # lowercase, DE3..
    _frame("0100", "0100000000000000", "x"),  # DE8: not in our spec
    _frame("0100", "8000000000000000", "", "0000000000000001"),  # DE128: not in it
    _frame("0800", "8000000000000000", "301", "0400000000000000"),  # DE70 via secondary
    _frame("0800", "8000000000000000", "301", "04000000000000"),  # secondary cut short
    b"0100",
    b"",
])
def test_crafted_bytes_get_the_references_verdict(data: bytes) -> None:
    assert _outcome(lambda: iso8583.decode(data)) == _reference_decode(data)
