"""The column chunks' packing (switch/journal/columns.py, ``_pack``) against the decode path
it replaced: for any intent (card, SWIFT, QR with or without its reference) and any
outcome kind (unknown, final, stand-in final, advice delivered or refused), the bytes are
those of ``np.array(values, dtype).tobytes()`` over the values decoded from each record.

Why: reconciliation reads chunks written by every version of the switch with
``np.frombuffer``; the ``struct`` packing (issue 12) must not change one byte of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.currency import CURRENCIES
from switch.journal import columns as jcols
from switch.journal.records import KINDS, JournalRecord, Row, to_row
from switch.model import CardRef, Party, Payment, QrRef, Result, Status, SwiftRef

# ----------------------------------------------------------------- the decode path (before)


class _Card(msgspec.Struct):
    rrn: str = ""
    stan: str = ""
    terminal_id: str = ""


class _Swift(msgspec.Struct):
    uetr: str = ""
    end_to_end_id: str = ""


class _Qr(msgspec.Struct):
    qr_reference: str = ""


class _Intent(msgspec.Struct):
    payment_id: str
    channel: str
    amount: int
    currency: str
    card: _Card | None = None
    swift: _Swift | None = None
    qr: _Qr | None = None


class _Outcome(msgspec.Struct):
    reason: str = ""
    stood_in: bool = False


def _reference_intent(seq: int, record: bytes, at_us: int) -> tuple[int, ...]:
    p = msgspec.msgpack.decode(record, type=_Intent)
    channel = jcols.CHANNEL_CODE.get(p.channel, 0)
    if p.card is not None:
        ref, sec = p.card.rrn, f"{p.card.stan}|{p.card.terminal_id}"
    elif p.swift is not None:
        ref, sec = p.swift.uetr, p.swift.end_to_end_id
    else:
        ref, sec = (p.qr.qr_reference if p.qr is not None else "") or p.payment_id, ""
    currency = CURRENCIES.get(p.currency, (0, 0))[0]
    return (seq, jcols.payment_key(p.payment_id), jcols.reference_key(channel, ref),
            jcols.reference_key(channel, sec) if sec else 0, p.amount, at_us, currency,
            channel)


def _reference_outcome(pid: str, kind: str, status: str, record: bytes,
                       at_us: int) -> tuple[int, ...] | None:
    code = {"unknown": jcols.UNKNOWN, "final": jcols.FINAL, "advice": jcols.ADVICE}.get(kind)
    if code is None:
        return None
    o = msgspec.msgpack.decode(record, type=_Outcome)
    if code == jcols.ADVICE and o.reason not in ("", "00"):
        code = jcols.ADVICE_REFUSED
    return (jcols.payment_key(pid), at_us, jcols.STATUS_CODE.get(status, jcols.PENDING), code,
            jcols.STOOD_IN if o.stood_in else 0)


def _reference_pack(rows: list[Row], first_seq: int) -> tuple[bytes, bytes]:
    intents: list[tuple[int, ...]] = []
    outcomes: list[tuple[int, ...]] = []
    for i, (pid, _key, kind, status, _digest, record, at_us) in enumerate(rows):
        if kind == "intent":
            intents.append(_reference_intent(first_seq + i, record, at_us))
        else:
            values = _reference_outcome(pid, kind, status, record, at_us)
            if values is not None:
                outcomes.append(values)
    return (np.array(intents, jcols.INTENT_DTYPE).tobytes(),
            np.array(outcomes, jcols.OUTCOME_DTYPE).tobytes())


# ----------------------------------------------------------------- payments and outcomes

# Any text msgpack can carry (no lone surrogates), ASCII or not, empty or not.
_text = st.text(st.characters(codec="utf-8"), max_size=40)
_int64 = st.integers(-(1 << 63), (1 << 63) - 1)
_at_us = st.integers(0, (1 << 63) - 1)
_currency = st.one_of(st.sampled_from(sorted(CURRENCIES)), st.text(max_size=4))


@st.composite
def _payments(draw: st.DrawFn) -> Payment:
    channel = draw(st.sampled_from(["card", "swift", "qr", "other"]))
    card = swift = qr = None
    if channel == "card":
        card = CardRef("tok", "1234", "411111", "2812", draw(_text), "", "5999",
                       stan=draw(_text), rrn=draw(_text))
    elif channel == "swift":
        swift = SwiftRef("DEUTDEFF", "BNPAFRPP", draw(_text), draw(_text))
    elif channel == "qr" and draw(st.booleans()):  # a QR payment may carry no QrRef yet
        qr = QrRef("payload", draw(_text))
    return Payment(draw(_text), draw(_text), channel, draw(_int64),  # type: ignore[arg-type]
                   draw(_currency), Party("A1"), Party("A2"),
                   dt.datetime(2024, 1, 1, tzinfo=dt.UTC), card, swift, qr)


@st.composite
def _records(draw: st.DrawFn) -> list[JournalRecord]:
    """A commit's records: intents and outcomes of every kind, in any order."""
    records = []
    for payment in draw(st.lists(_payments(), min_size=0, max_size=12)):
        at_us = draw(_at_us)
        records.append(JournalRecord.intent(payment, b"h", at_us))
        for kind in draw(st.lists(st.sampled_from([k for k in KINDS if k != "intent"]),
                                  max_size=3)):
            result = Result(payment.payment_id, draw(st.sampled_from(list(Status))),
                            draw(st.one_of(st.sampled_from(["", "00", "05", "91"]), _text)),
                            stood_in=draw(st.booleans()))
            records.append(JournalRecord.outcome(kind, payment, result, b"h", draw(_at_us)))
    return draw(st.permutations(records))


@settings(max_examples=300, deadline=None)
@given(records=_records(), first_seq=st.integers(1, (1 << 62)))
def test_pack_is_byte_identical_to_the_decode_path(records: list[JournalRecord],
                                                   first_seq: int) -> None:
    rows = [to_row(r) for r in records]
    assert jcols._pack(rows, first_seq) == _reference_pack(rows, first_seq)


@settings(max_examples=200, deadline=None)
@given(records=_records(), seq=st.integers(1, (1 << 62)))
def test_values_are_those_of_the_decode_path(records: list[JournalRecord], seq: int) -> None:
    for pid, _key, kind, status, _digest, record, at_us in map(to_row, records):
        if kind == "intent":
            assert jcols.intent_values(seq, record, at_us) == _reference_intent(
                seq, record, at_us)
        else:
            assert jcols.outcome_values(pid, kind, status, record, at_us) == (
                _reference_outcome(pid, kind, status, record, at_us))


def test_every_outcome_kind_and_flag_is_packed() -> None:
    """The cases the reconciliation depends on, spelled out: stand-in final, advice the
    issuer took (00), advice it refused, unknown, and a status outside STATUS_CODE."""
    payment = Payment("P-1", "k-1", "card", 1_000, "USD", Party("A1"), Party("A2"),
                      dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                      card=CardRef("tok", "1234", "411111", "2812", "T1", "", "5999",
                                   stan="000001", rrn="000000000001"))
    stood_in = Result("P-1", Status.APPROVED, "00", stood_in=True)
    records = [
        JournalRecord.intent(payment, b"h", 10),
        JournalRecord.outcome("unknown", payment, Result("P-1", Status.UNKNOWN, "68"), b"h",
                              11),
        JournalRecord.outcome("final", payment, stood_in, b"h", 12),
        JournalRecord.outcome("advice", payment, stood_in, b"h", 13),
        JournalRecord.outcome("advice", payment,
                              Result("P-1", Status.APPROVED, "05", stood_in=True), b"h", 14),
        JournalRecord.outcome("final", payment, Result("P-1", Status.SENT, ""), b"h", 15),
    ]
    rows = [to_row(r) for r in records]
    intents, outcomes = jcols._pack(rows, 7)
    assert (intents, outcomes) == _reference_pack(rows, 7)
    out = np.frombuffer(outcomes, jcols.OUTCOME_DTYPE)
    assert out["kind"].tolist() == [jcols.UNKNOWN, jcols.FINAL, jcols.ADVICE,
                                    jcols.ADVICE_REFUSED, jcols.FINAL]
    assert out["flags"].tolist() == [0, jcols.STOOD_IN, jcols.STOOD_IN, jcols.STOOD_IN, 0]
    assert out["status"].tolist() == [jcols.PENDING, 0, 0, 0, jcols.PENDING]
    ia = np.frombuffer(intents, jcols.INTENT_DTYPE)
    assert ia["seq"].tolist() == [7] and ia["currency"].tolist() == [840]


def test_rows_of_other_kinds_are_skipped_like_before() -> None:
    """A row kind the columns do not know (none today) adds nothing, as before."""
    result = msgspec.msgpack.encode(Result("P-1", Status.APPROVED, "00"))
    rows: list[Any] = [("P-1", "k", "note", "approved", b"h", result, 1)]
    assert jcols._pack(rows, 1) == _reference_pack(rows, 1) == (b"", b"")
