"""Route tables: decoding, whole-table rejection with key paths, lookups, immutability."""

from __future__ import annotations

import dataclasses
import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.harness.workload import _qr_payload
from switch.model import CardRef, Party, Payment, QrRef, SwiftRef
from switch.routing.table import RouteTable, bin_key, load_route_table, qr_guis, sticky_key
from switch.routing.tablespec import (
    BIN_WIDTH,
    LeastLatency,
    Priority,
    RouteTableError,
    Sticky,
    SuccessRate,
    Weighted,
)

KNOWN = {"visa-a", "visa-b", "mc-a", "mc-b", "corr-1", "corr-2", "qr-1", "qr-2"}

TABLE = """
[targets.visa]
scheme = "visa"
endpoints = ["visa-a", "visa-b"]
timeout_s = 1.5

[targets.mc]
scheme = "mastercard"
endpoints = ["mc-a", "mc-b"]
strategy = { kind = "weighted", weights = [3, 1] }

[targets.fast]
endpoints = ["visa-b", "visa-a"]
strategy = "least_latency"

[targets.corr]
endpoints = ["corr-1", "corr-2"]
strategy = { kind = "success_rate", exploration = 0.1, demote_below = 0.9 }

[targets.corr-fr]
endpoints = ["corr-2"]

[targets.corr-us]
endpoints = ["corr-1"]
strategy = { kind = "sticky", key = "payer_account" }

[targets.qr]
endpoints = ["qr-1", "qr-2"]

[targets.qr-acq]
endpoints = ["qr-2"]

[card]
default = "visa"
[[card.ranges]]
low = "400000"
high = "499999"
target = "visa"
[[card.ranges]]
low = "510000"
high = "559999"
target = "mc"
[[card.ranges]]
prefix = "36123456"
target = "fast"

[swift]
default = "corr"
by_bic = [
    { creditor_bic = "BNPAFRPP", target = "corr-fr" },
    { creditor_bic = "BNPAFRPPXXX", target = "corr-us" },
]
by_corridor = [{ debtor_country = "DE", creditor_country = "GB", target = "corr-fr" }]
by_currency = [{ currency = "USD", target = "corr-us" }]

[qr]
by_scheme = [{ gui = "com.payswitch.qr", target = "qr" }]
by_acquirer = [{ acquirer = "ACQ9", target = "qr-acq" }]
"""

_AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def card(bin_: str, token: str = "tok") -> Payment:
    ref = CardRef(token, "1111", bin_, "2812", "TERM0001", "", "5999")
    return Payment("P1", "k", "card", 100, "USD", Party("A1"), Party("M1"), _AT, card=ref)


def swift(debtor: str, creditor: str, currency: str = "EUR") -> Payment:
    ref = SwiftRef(debtor, creditor, "uetr", "e2e")
    return Payment("P2", "k", "swift", 100, currency, Party("A2"), Party("B2"), _AT, swift=ref)


def qr(payload: str) -> Payment:
    return Payment("P3", "k", "qr", 100, "CNY", Party("A3"), Party("M3"), _AT, qr=QrRef(payload))


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return load_route_table(TABLE, KNOWN)


def name(target: object) -> str | None:
    return None if target is None else target.name  # type: ignore[attr-defined]


# ------------------------------------------------------------------ decoding and lookup


def test_targets_decode_with_strategies(table: RouteTable) -> None:
    t = table.targets
    assert t["visa"].endpoints == ("visa-a", "visa-b")
    assert t["visa"].strategy == Priority() and t["visa"].timeout_s == 1.5
    assert t["mc"].strategy == Weighted(weights=(3, 1))
    assert t["fast"].strategy == LeastLatency()
    assert t["corr"].strategy == SuccessRate(exploration=0.1, demote_below=0.9)
    assert t["corr-us"].strategy == Sticky(key="payer_account")
    assert table.card_ranges == 3 and len(table.digest) == 12


def test_card_lookup_by_bin_range_and_default(table: RouteTable) -> None:
    assert name(table.lookup(card("411111"))) == "visa"
    assert name(table.lookup(card("499999"))) == "visa"
    assert name(table.lookup(card("530000"))) == "mc"
    assert name(table.lookup(card("559999"))) == "mc"
    assert name(table.lookup(card("560000"))) == "visa"  # default
    assert name(table.lookup_card("36123456")) == "fast"  # 8-digit range
    assert name(table.lookup_card("3612345")) == "visa"  # too short to match it
    assert name(table.lookup_card("361234567891234")) == "fast"  # longer: in the range
    assert name(table.lookup_card("41x111")) == "visa"  # unusable prefix: default


def test_swift_precedence(table: RouteTable) -> None:
    # Exact 11-character BIC beats its 8-character form, which beats corridor/currency.
    assert name(table.lookup(swift("DEUTDEFF", "BNPAFRPPXXX", "USD"))) == "corr-us"
    assert name(table.lookup(swift("DEUTDEFF", "BNPAFRPP123"))) == "corr-fr"
    assert name(table.lookup(swift("DEUTDEFF", "BNPAFRPP"))) == "corr-fr"
    assert name(table.lookup(swift("DEUTDEFF", "BARCGB22", "USD"))) == "corr-fr"  # corridor
    assert name(table.lookup(swift("DEUTDEFF", "CHASUS33", "USD"))) == "corr-us"  # currency
    assert name(table.lookup(swift("DEUTDEFF", "CHASUS33", "EUR"))) == "corr"  # default


def test_qr_by_acquirer_then_scheme(table: RouteTable) -> None:
    payload = _qr_payload(3, None)
    assert qr_guis(payload) == ["com.payswitch.qr"]
    assert name(table.lookup(qr(payload))) == "qr"
    assert name(table.lookup(qr(payload), acquirer="ACQ9")) == "qr-acq"
    assert name(table.lookup(qr(payload), acquirer="ACQ1")) == "qr"
    other = payload.replace("com.payswitch.qr", "com.example.qrx")
    assert table.lookup(qr(other)) is None  # no QR default in this table


@given(st.text(max_size=80))
def test_qr_gui_scan_never_raises(payload: str) -> None:
    assert isinstance(qr_guis(payload), list)


def test_bin_key_normalises_to_fixed_width() -> None:
    assert bin_key("411111") == 41111100000
    assert bin_key("41111122334455") == 41111122334
    assert bin_key("41111") == -1 and bin_key("4111a1") == -1 and bin_key("٤١١١١١") == -1
    assert len(str(bin_key("999999"))) == BIN_WIDTH


def test_sticky_key(table: RouteTable) -> None:
    assert sticky_key(table.targets["corr-us"], swift("DEUTDEFF", "CHASUS33")) == "A2"
    assert sticky_key(table.targets["visa"], card("411111")) is None
    tok = load_route_table(
        '[targets.s]\nendpoints = ["visa-a"]\nstrategy = "sticky"', KNOWN
    ).targets["s"]
    assert sticky_key(tok, card("411111", token="T9")) == "T9"


def test_table_is_immutable(table: RouteTable) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.digest = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.targets["new"] = table.targets["visa"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        table.targets["visa"].endpoints = ()  # type: ignore[misc]
    assert isinstance(table.targets["visa"].endpoints, tuple)


def test_reload_is_a_reference_swap(table: RouteTable) -> None:
    """A payment keeps the target it looked up even after the table is replaced."""
    held = table.lookup(card("411111"))
    new = load_route_table(TABLE.replace('"visa-a", "visa-b"]', '"visa-b"]', 1), KNOWN)
    assert name(new.lookup(card("411111"))) == "visa"
    assert new.targets["visa"].endpoints == ("visa-b",)
    assert held is not None and held.endpoints == ("visa-a", "visa-b")


# ------------------------------------------------------------------ rejection


def rejected(text: str, known: set[str] = KNOWN) -> str:
    with pytest.raises(RouteTableError) as info:
        load_route_table(text, known)
    return str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "path", "reason"),
    [
        ('"mc-b"]', '"mc-z"]', "targets.mc.endpoints[1]", "unknown endpoint 'mc-z'"),
        ('["corr-2"]', "[]", "targets.corr-fr.endpoints", "length >= 1"),
        ("[3, 1]", "[3, 1, 1]", "targets.mc.strategy.weights", "3 weights for 2 endpoints"),
        ("[3, 1]", "[0, 0]", "targets.mc.strategy.weights", "at least one weight"),
        ('"400000"', '"4000x0"', "card.ranges[0].low", "regex"),
        ('"400000"', '"40000"', "card.ranges[0].low", "length >= 6"),
        ('high = "559999"', 'high = "509999"', "card.ranges[1]", "above high"),
        ('low = "510000"', 'low = "450000"', "card.ranges[1]", "overlaps card.ranges[0]"),
        ('"36123456"', '"41234567"', "card.ranges[2]", "overlaps card.ranges[0]"),
        ('target = "mc"', 'target = "nope"', "card.ranges[1].target", "unknown target 'nope'"),
        ('default = "corr"', 'default = "nope"', "swift.default", "unknown target"),
        ('"USD"', '"XXX"', "swift.by_currency[0].currency", "unknown currency"),
        ('"BNPAFRPPXXX"', '"BNPAFRPP"', "swift.by_bic[1].creditor_bic", "already routed"),
        ('"BNPAFRPP"', '"bnpafrpp"', "swift.by_bic[0].creditor_bic", "regex"),
        ("timeout_s = 1.5", "timeout_s = 0", "targets.visa.timeout_s", "> 0"),
        ("timeout_s = 1.5", "timeout = 1.5", "targets.visa.timeout", "unknown key"),
        ("exploration = 0.1", "exploration = 0.9", "targets.corr.strategy.exploration", "<= 0.5"),
        ('"least_latency"', '"fastest"', "targets.fast.strategy", "Invalid"),
        ("[targets.qr]", "[targets.'bad name']", "targets.bad name", "a target name"),
    ],
)
def test_invalid_tables_are_rejected_whole_with_key_path(
    old: str, new: str, path: str, reason: str
) -> None:
    assert old in TABLE
    message = rejected(TABLE.replace(old, new, 1))
    assert f"{path}:" in message or f"{path} " in message, message
    assert reason in message, message


def test_every_problem_is_reported_and_nothing_applies() -> None:
    text = TABLE.replace('"mc-b"]', '"mc-z"]').replace('"USD"', '"XXX"')
    message = rejected(text)
    assert "targets.mc.endpoints[1]" in message
    assert "swift.by_currency[0].currency" in message
    # A target that failed its own checks is not reported again by each reference to it.
    assert "card.ranges[1].target" not in message


def test_range_needs_prefix_or_both_bounds() -> None:
    assert "needs prefix" in rejected(TABLE.replace('low = "510000"\n', "", 1))
    both = TABLE.replace('prefix = "36123456"', 'prefix = "36123456"\nlow = "361234"')
    assert "not both" in rejected(both)


def test_empty_and_broken_tables() -> None:
    assert "targets" in rejected("")
    assert "at least one target" in rejected("targets = {}")
    assert "not valid TOML" in rejected("[targets.x\n")
    assert "unknown endpoint" in rejected(TABLE, KNOWN - {"qr-2"})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(100_000, 999_999), st.integers(0, 9_999)), max_size=30))
def test_overlap_detection_matches_brute_force(spans: list[tuple[int, int]]) -> None:
    ranges = [(lo, min(999_999, lo + width)) for lo, width in spans]
    body = "".join(
        f'[[card.ranges]]\nlow = "{lo}"\nhigh = "{hi}"\ntarget = "t"\n' for lo, hi in ranges
    )
    text = '[targets.t]\nendpoints = ["visa-a"]\n' + body
    overlapping = any(
        a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(ranges) for b in ranges[i + 1 :]
    )
    if overlapping:
        assert "overlaps" in rejected(text)
    else:
        table = load_route_table(text, KNOWN)
        for lo, hi in ranges:
            assert name(table.lookup_card(str(lo))) == "t"
            assert name(table.lookup_card(str(hi) + "99999")) == "t"


def test_strategy_structs_round_trip_through_msgspec() -> None:
    raw = msgspec.to_builtins(Weighted(weights=(1, 2)))
    assert raw == {"kind": "weighted", "weights": (1, 2)}
    assert msgspec.convert(raw, Weighted | Priority) == Weighted(weights=(1, 2))
