"""Reconciliation end to end: every break class from a planted discrepancy, found exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from switch.backoffice.recon.classes import Record
from switch.backoffice.recon.reconcile import load_switch_side, match
from switch.backoffice.recon.sides import load_network_side
from tests.sims.test_settlement import run_switch_over_simulators


def rec(
    ref: str,
    amount: int = 1000,
    currency: str = "USD",
    status: str = "approved",
    t: int = 1_000_000,
    channel: str = "card",
) -> Record:
    return Record(channel, ref, amount, currency, status, t, "x")


def test_clean_data_has_no_breaks() -> None:
    switch = [rec(f"R{i}", 100 + i) for i in range(50)] + [rec("D1", status="declined")]
    network = [rec(f"R{i}", 100 + i) for i in range(50)]
    report = match(switch, network)
    assert report.breaks == []
    assert report.counts == {"matched": 50, "expected_absent": 1}


def test_every_break_class_is_found() -> None:
    switch = [
        rec("OK"),
        rec("MISSING"),  # not at the network
        rec("AMOUNT", 1000),  # network says 1100
        rec("CURRENCY", currency="USD"),  # network says EUR
        rec("FAILED", status="failed"),  # network settled it anyway
        rec("DUP"),  # network lists it twice
        rec("LATE", t=0),  # settled two days later
        rec("FEE", 10_000, t=5_000_000),  # reference garbled, 10 minor units fee
    ]
    network = [
        rec("OK"),
        rec("AMOUNT", 1100),
        rec("CURRENCY", currency="EUR"),
        rec("FAILED"),
        rec("DUP"),
        rec("DUP"),
        rec("LATE", t=2 * 86_400_000_000),
        rec("GHOST", 777, t=9_000_000_000),  # unknown to the switch
        rec("REV", status="reversed"),  # reversal of nothing we approved
        rec("FEE-X", 9_990, t=5_500_000),
    ]
    report = match(switch, network, tol_amount=10, tol_time_us=1_000_000, late_after_s=86_400)
    kinds = Counter(b.kind for b in report.breaks)
    assert kinds == Counter(
        {
            "missing_at_network": 1,
            "amount_mismatch": 1,
            "currency_mismatch": 1,
            "status_mismatch": 1,
            "duplicate": 1,
            "late_settlement": 1,
            "missing_in_switch": 1,
            "orphan_reversal": 1,
        }
    )
    refs = {b.kind: (b.switch or b.network).reference for b in report.breaks}  # type: ignore[union-attr]
    assert refs["missing_at_network"] == "MISSING" and refs["missing_in_switch"] == "GHOST"
    assert report.counts["matched_tolerance"] == 1  # FEE matched within tolerance: no break
    assert all(b.action for b in report.breaks)


@pytest.mark.anyio
async def test_planted_discrepancies_are_found_exactly(tmp_path: Path) -> None:
    journal, files = await run_switch_over_simulators(tmp_path, 0.1)
    planted = [d for p in files.glob("*.discrepancies.json") for d in json.loads(p.read_text())]
    report = match(load_switch_side(journal), load_network_side(files))
    found = {(b.kind, (b.switch or b.network).reference) for b in report.breaks}  # type: ignore[union-attr]
    expected_class = {
        "missing": "missing_at_network",
        "amount_off": "amount_mismatch",
        "duplicated": "duplicate",
        "unknown_reference": "missing_in_switch",
    }
    assert found == {(expected_class[d["kind"]], d["reference"]) for d in planted}
    assert len(planted) > 10


def test_cli_exit_codes_and_bad_file(tmp_path: Path) -> None:
    import anyio

    journal, files = anyio.run(run_switch_over_simulators, tmp_path, 0.0)
    cmd = [
        sys.executable,
        "-m",
        "switch.cli.main",
        "reconcile",
        "--journal",
        str(journal),
        "--files",
        str(files),
        "--out",
        str(tmp_path / "out"),
    ]
    clean = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "reconciliation clean" in clean.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["clean"] is True and (tmp_path / "out" / "summary.html").exists()
    clr = next(files.glob("*.clr"))
    lines = clr.read_text().splitlines()
    clr.write_text("\n".join(lines[:-1]) + "\n")  # truncated: the trailer is gone
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert f"{clr}:" in bad.stderr and "T trailer" in bad.stderr


def test_stand_in_exposure_and_late_settlement_are_explained_breaks() -> None:
    def standin(ref: str, advice: str) -> Record:
        return Record("card", ref, 100, "USD", "approved", 1, "P-" + ref, "", stood_in=True,
                      advice=advice)

    # Only R1 has the evidence: the issuer refused its advice (on record in the journal).
    # R4's advice was delivered and R5's is still pending: missing is a real break.
    switch = [standin("R1", "refused"), rec("R2", t=0), rec("R3"),
              standin("R4", "delivered"), standin("R5", "")]
    network = [rec("R2", t=2 * 86_400_000_000)]
    report = match(switch, network, late_after_s=86_400)
    kinds = Counter(b.kind for b in report.breaks)
    assert kinds == Counter({"standin_exposure": 1, "late_settlement": 1,
                             "missing_at_network": 3})
    assert {b.switch.reference for b in report.breaks  # type: ignore[union-attr]
            if b.kind == "missing_at_network"} == {"R3", "R4", "R5"}
    assert report.unexplained == 3  # R3, R4, R5: nobody can account for them


def test_netting_allows_a_payment_journaled_just_after_the_cut() -> None:
    """The network cut its cycle at 3.0 s; P3 settled before the cut but the switch
    journaled its answer 0.2 s after it. Still one clean net per cycle, no break (a strict
    cut made 5 false breaks here, and made the switch-over-simulators test flaky under
    load)."""
    def qr(ref: str, amount: int, t: int) -> Record:
        return Record("qr", ref, amount, "CNY", "approved", t, "x", "M1")

    switch = [qr("P1", 100, 1_000_000), qr("P2", 250, 2_000_000), qr("P3", 40, 3_200_000),
              qr("P4", 7, 4_000_000), qr("P5", 1_000, 5_000_000)]
    network = [qr("NET-M1-1", 390, 3_000_000), qr("NET-M1-2", 1_007, 6_000_000)]
    report = match(switch, network)
    assert report.breaks == []
    assert report.counts["matched_netted"] == 5
    assert report.counts["network:matched_netted"] == 2
    strict = match(switch, network, tol_time_us=0)  # no skew allowed: the cut is sharp
    assert len(strict.breaks) == 7


def test_many_to_one_netted_entries_match_the_payments_they_cover() -> None:
    def qr(ref: str, amount: int, t: int, merchant: str = "M1", status: str = "approved",
           source: str = "x") -> Record:
        return Record("qr", ref, amount, "CNY", status, t, source, merchant)

    switch = [qr("P1", 100, 1), qr("P2", 250, 2), qr("P3", 50, 3, merchant="M2"),
              qr("P4", 70, 4, merchant="M2"), qr("P5", 500, 11), qr("P6", 5, 12),
              qr("P7", 9, 5, status="declined")]
    network = [qr("NET-M1-1", 350, 10), qr("NET-M2-1", 120, 10, merchant="M2"),
               qr("NET-M1-2", 999, 20)]  # the second M1 cycle does not add up
    report = match(switch, network)
    assert report.counts["matched_netted"] == 4
    assert report.counts["network:matched_netted"] == 2
    kinds = Counter(b.kind for b in report.breaks)
    assert kinds == Counter({"missing_at_network": 2, "missing_in_switch": 1})
    assert {b.switch.reference for b in report.breaks if b.switch} == {"P5", "P6"}


@pytest.mark.anyio
async def test_reconciliation_is_clean_when_the_qr_scheme_nets_by_merchant(
    tmp_path: Path,
) -> None:
    # One cycle for the whole run (the final cut at shutdown): with 0.5 s cycles a loaded
    # box spread the payments over so many cuts that no merchant had two in one of them,
    # and nothing was netted many-to-one.
    journal, files = await run_switch_over_simulators(tmp_path, 0.0, net_qr=True,
                                                      cycle_s=60.0)
    assert any(line.startswith("NET-") for p in files.glob("qr-*.csv")
               for line in p.read_text().splitlines())
    report = match(load_switch_side(journal), load_network_side(files))
    assert report.breaks == []
    # Merchants with two or more payments in a cycle are netted many-to-one; a net of a
    # single payment equals it and is paired by the tolerance pass.
    assert report.counts.get("matched_netted", 0) > 0
