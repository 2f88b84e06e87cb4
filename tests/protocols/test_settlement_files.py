"""Settlement files: round trips, whole-file rejection naming file/line/field, discrepancies."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.protocols.settlement_files import (
    SettlementEntry,
    SettlementFileError,
    decode_camt053,
    decode_card_clearing,
    decode_qr_csv,
    encode_camt053,
    encode_card_clearing,
    encode_qr_csv,
    inject_discrepancies,
)

NUMERIC = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
ENTRIES = [
    SettlementEntry("001000000001", "000001|TERM0001|1121", 12345, "USD", "settled",
                    1_795_000_000_000_000),
    SettlementEntry("001000000002", "000002|TERM0001|1121", 500, "JPY", "reversed",
                    1_795_000_001_000_000),
]


def test_card_clearing_round_trip() -> None:
    text = encode_card_clearing("visa-sim", "2026-11-21T10", ENTRIES, NUMERIC)
    assert decode_card_clearing(text, "c.clr", NUMERIC_TO_ALPHA) == ENTRIES


def test_truncated_card_file_is_rejected_naming_the_trailer() -> None:
    text = encode_card_clearing("visa-sim", "c1", ENTRIES, NUMERIC)
    truncated = "\n".join(text.splitlines()[:-1]) + "\n"
    with pytest.raises(SettlementFileError, match=r"c.clr:\d+: T trailer: missing"):
        decode_card_clearing(truncated, "c.clr", NUMERIC_TO_ALPHA)


def test_bad_currency_names_file_line_field() -> None:
    text = encode_card_clearing("visa-sim", "c1", ENTRIES, NUMERIC).replace(",840,", ",999,")
    with pytest.raises(SettlementFileError) as info:
        decode_card_clearing(text, "c.clr", NUMERIC_TO_ALPHA)
    assert (info.value.file, info.value.line, info.value.field) == ("c.clr", 2, "currency")


def test_camt053_round_trip_and_hostile_xml() -> None:
    data = encode_camt053("STMT-1", "NOSTRO-EUR", 1_795_000_000_000_000, ENTRIES[:1])
    assert decode_camt053(data, "s.xml") == ENTRIES[:1]
    bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa">]><a>&a;</a>'
    with pytest.raises(SettlementFileError, match="unsafe XML refused"):
        decode_camt053(bomb, "s.xml")


def test_qr_csv_round_trip_and_bad_row() -> None:
    text = encode_qr_csv(ENTRIES)
    assert decode_qr_csv(text, "q.csv", CURRENCIES) == ENTRIES
    with pytest.raises(SettlementFileError, match=r"q.csv:3: amount: not an integer"):
        decode_qr_csv(text.replace(",500,", ",5x0,"), "q.csv", CURRENCIES)


def test_injected_discrepancies_are_logged_exactly() -> None:
    entries = [SettlementEntry(f"R{i}", "", 100 + i, "USD", "settled", i) for i in range(2000)]
    planted, log = inject_discrepancies(entries, 0.05, random.Random(3))
    assert 40 < len(log) < 160
    refs = [e.reference for e in planted]
    for d in log:
        if d.kind == "missing":
            assert d.reference not in refs
        elif d.kind == "duplicated":
            assert refs.count(d.reference) == 2
        elif d.kind == "unknown_reference":
            assert d.reference.startswith("UNKNOWN-") and d.reference in refs
    again = inject_discrepancies(entries, 0.05, random.Random(3))
    assert again == (planted, log)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_decoders_raise_only_their_own_error(text: str) -> None:
    for decode in (lambda t: decode_card_clearing(t, "f", NUMERIC_TO_ALPHA),
                   lambda t: decode_qr_csv(t, "f", CURRENCIES),
                   lambda t: decode_camt053(t.encode(), "f")):
        with contextlib.suppress(SettlementFileError):
            decode(text)
