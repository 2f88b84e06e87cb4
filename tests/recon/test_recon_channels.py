"""Reconciliation within a channel: the tolerance pass never pairs a card payment with a
SWIFT or QR entry, and a QR net row covering one payment is that payment's match."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.recon.synth import build
from switch.backoffice.recon.classes import Record
from switch.backoffice.recon.kernels import (
    BreakClass,
    RecordStatus,
    exact_match,
    tolerance_match,
    warm_up,
)
from switch.backoffice.recon.reconcile import _arrays, load_switch_side, match
from switch.backoffice.recon.reference import RecordLists, reconcile_reference
from switch.backoffice.recon.sides import Side, load_network_side
from switch.currency import NUMERIC_TO_ALPHA
from switch.journal import columns as jcols
from switch.protocols.settlement_files import SettlementEntry, encode_camt053

S = 1_000_000  # µs


def rec(channel: str, ref: str, amount: int, ccy: str, t_s: float,
        counterparty: str = "") -> Record:
    return Record(channel, ref, amount, ccy, "approved", int(t_s * S), "x", counterparty)


def kinds(sw: list[Record], net: list[Record]) -> list[str]:
    return sorted(b.kind for b in match(sw, net).breaks)


# ------------------------------------------------------------------ tolerance pass


@pytest.mark.parametrize("stranger", ["swift", "qr"])
def test_a_missing_card_payment_is_not_paired_with_another_channels_entry(
        stranger: str) -> None:
    sw = [rec("card", "010000000052", 4093, "EUR", 100.0)]
    net = [rec(stranger, "GHOST", 4093, "EUR", 101.0)]
    report = match(sw, net)
    assert kinds(sw, net) == ["missing_at_network", "missing_in_switch"]
    assert report.unexplained == 2 and "matched_tolerance" not in report.counts


def test_the_tolerance_pass_still_pairs_within_a_channel() -> None:
    # A garbled card reference a second off is paired with its own channel's record,
    # though a SWIFT entry of the same amount is nearer in time.
    sw = [rec("card", "010000000052", 4093, "EUR", 100.0),
          rec("swift", "uetr-1", 9000, "USD", 200.0)]
    net = [rec("swift", "GHOST", 4093, "EUR", 100.0),
           rec("card", "010000000O52", 4093, "EUR", 101.0),
           rec("swift", "uetr-l", 9000, "USD", 202.0)]
    report = match(sw, net)
    assert report.counts.get("matched_tolerance") == 2
    [only] = report.breaks
    assert only.kind == "missing_in_switch" and only.network is not None
    assert only.network.channel == "swift" and only.network.reference == "GHOST"


def test_a_ghost_camt053_entry_does_not_hide_a_card_payment_missing_at_its_network(
        tmp_path: Path) -> None:
    """The reviewer's case end to end, from journal columns and real settlement files."""
    journal, files, _ = build(tmp_path / "base", 300, seed=3)
    sw = load_switch_side(journal)
    clr = (files / "card-0000.clr").read_text().splitlines()
    body = clr[1:-1]

    def switch_index(line: str) -> int | None:
        """The switch entry a plainly matched card record pairs with, else None."""
        _, rrn, _, amount, _, status, _ = line.split(",")
        idx = np.flatnonzero(sw.key == jcols.reference_key(jcols.CHANNEL_CODE["card"], rrn))
        ok = (status == "settled" and len(idx) == 1 and int(sw.amount[idx[0]]) == int(amount)
              and int(sw.status[idx[0]]) == int(RecordStatus.SETTLED))
        return int(idx[0]) if ok else None

    k = next(k for k, line in enumerate(body) if switch_index(line) is not None)
    i = switch_index(body[k])
    assert i is not None
    _, rrn, _, amount, currency, _, _ = body[k].split(",")
    del body[k]
    dropped = tmp_path / "dropped"
    shutil.copytree(files, dropped)
    total = sum(int(x.split(",")[3]) for x in body)
    (dropped / "card-0000.clr").write_text(
        "\n".join([clr[0], *body, f"T,{len(body)},{total}"]) + "\n")
    before = match(sw, load_network_side(dropped))
    ghosted = tmp_path / "ghosted"
    shutil.copytree(dropped, ghosted)
    alpha = NUMERIC_TO_ALPHA[int(currency)]
    ghost = SettlementEntry("9b2f4e1c-0000-4000-8000-00000000dead", "E2E-GHOST", int(amount),
                            alpha, "settled", int(sw.time_us[i]) + S)
    (ghosted / "swift-0001.xml").write_bytes(
        encode_camt053("S-GHOST", "NOSTRO", int(sw.time_us[i]), [ghost]))
    after = match(load_switch_side(journal), load_network_side(ghosted))
    assert after.unexplained == before.unexplained + 1
    assert after.counts.get("matched_tolerance", 0) == before.counts.get(
        "matched_tolerance", 0)
    missing = {(b.switch or b.network).reference for b in after.breaks  # type: ignore[union-attr]
               if b.kind in ("missing_at_network", "missing_in_switch")}
    assert {rrn, "9b2f4e1c-0000-4000-8000-00000000dead"} <= missing


# ------------------------------------------- kernels and reference on the folded code


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


def _side(rows: list[tuple[int, int, int, int, int]]) -> Side:
    """A Side from (key, amount, currency, channel, time) rows, every record approved."""
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    key, amount, currency, channel, time_us = (np.array(c, np.int64) for c in cols)
    n = len(key)
    return Side(key=key, amount=amount, currency=currency.astype(np.int16),
                status=np.zeros(n, np.int8), time_us=time_us, channel=channel.astype(np.int8),
                flags=np.zeros(n, np.int8), texts=_never, counterparties=_never)


def _never(idx: object) -> Any:
    raise AssertionError("the tolerance pass reads no strings")


record = st.tuples(st.integers(0, 12), st.integers(0, 6), st.sampled_from([840, 978]),
                   st.sampled_from([1, 2, 3]), st.integers(0, 6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sw=st.lists(record, max_size=20), net=st.lists(record, max_size=20),
       tol_amount=st.integers(0, 3), tol_time=st.integers(0, 3))
def test_kernels_and_reference_agree_and_stay_within_a_channel(
        sw: list[tuple[int, int, int, int, int]], net: list[tuple[int, int, int, int, int]],
        tol_amount: int, tol_time: int) -> None:
    a, b = _side(sw), _side(net)
    arr_sw, arr_net = _arrays(a), _arrays(b)
    got = exact_match(arr_sw, arr_net)
    tolerance_match(arr_sw, arr_net, got, tol_amount=tol_amount, tol_time_us=tol_time)
    want = reconcile_reference(
        *(RecordLists(x.key.tolist(), x.amount.tolist(), x.currency.tolist(),
                      x.time_us.tolist(), x.status.tolist()) for x in (arr_sw, arr_net)),
        tol_amount=tol_amount, tol_time_us=tol_time)
    assert got.switch_match.tolist() == want.switch_match
    assert got.switch_class.tolist() == want.switch_class
    assert got.network_match.tolist() == want.network_match
    assert got.network_class.tolist() == want.network_class
    tol = got.switch_class == int(BreakClass.MATCHED_TOLERANCE)
    assert (a.channel[tol] == b.channel[got.switch_match[tol]]).all()
    assert (a.currency[tol] == b.currency[got.switch_match[tol]]).all()


def test_the_folded_code_keeps_every_channel_and_currency_apart() -> None:
    rows = [(0, 1, c, ch, 0) for ch in (0, 1, 2, 3, 127) for c in (0, 1, 840, 978, 32767)]
    codes = _arrays(_side(rows)).currency
    assert len(set(codes.tolist())) == len(rows)
    assert codes.min() >= 0 and codes.max() < 2**31


# --------------------------------------------------------------------------- netting


def qr(ref: str, amount: int, t_s: float, merchant: str = "M1") -> Record:
    return rec("qr", ref, amount, "CNY", t_s, merchant)


def test_a_net_row_of_one_payment_is_its_match() -> None:
    switch = [qr("P1", 100, 1.0), qr("P2", 250, 2.0), qr("P3", 70, 2.0, "M2")]
    network = [qr("NET-M1-0001", 350, 10.0), qr("NET-M2-0001", 70, 10.0, "M2")]
    report = match(switch, network)
    assert report.unexplained == 0 and list(report.breaks) == []
    assert report.counts["matched_netted"] == 3 and report.counts["network:matched_netted"] == 2


def test_single_and_several_payment_cycles_of_one_merchant_in_a_row() -> None:
    # Cycles cut every 10 s: one payment, then two, then one again.
    switch = [qr("P1", 100, 1.0), qr("P2", 30, 12.0), qr("P3", 45, 13.0), qr("P4", 9, 21.0)]
    network = [qr("NET-M1-0001", 100, 10.0), qr("NET-M1-0002", 75, 20.0),
               qr("NET-M1-0003", 9, 30.0)]
    report = match(switch, network)
    assert report.unexplained == 0
    assert report.counts["matched_netted"] == 4 and report.counts["network:matched_netted"] == 3


def test_a_net_row_of_one_payment_that_disagrees_is_still_two_breaks() -> None:
    switch = [qr("P1", 100, 1.0)]
    network = [qr("NET-M1-0001", 101, 10.0)]
    assert kinds(switch, network) == ["missing_at_network", "missing_in_switch"]
    # ... and another merchant's row of the same amount is not it either.
    assert kinds(switch, [qr("NET-M2-0001", 100, 10.0, "M2")]) == [
        "missing_at_network", "missing_in_switch"]
