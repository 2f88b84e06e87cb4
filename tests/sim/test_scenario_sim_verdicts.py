"""`payswitch simulate --scenario`: the verdict rows see what the live run's rows see.

The simulator's summary gave the verdicts no latency count and no refusals: a run with no
latency read p99 0 ms and passed, and requests refused as overloaded (never journaled)
were left out of availability, which the live verdict counts as bad (docs/metrics.md).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

import switch.sim.campaign as campaign
from switch.sim.simulation import SimResult

SCENARIO = """
name = "tiny"
description = "a few payments"
duration_s = 2
seed = 3

[load]
rate = 5

[assertions]
availability_min = 0.5
p99_ms_max = 1000
"""


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: int,
         latencies: bool) -> str:
    real = campaign.simulate

    def simulate(options: Any) -> SimResult:
        result = real(options)
        if not latencies:
            result.latencies.clear()
        result.counters["refused_overloaded"] = refused
        return result

    monkeypatch.setattr(campaign, "simulate", simulate)
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    out = io.StringIO()
    campaign.run_scenario_file(path, out)
    return out.getvalue()


def test_a_run_with_no_latency_fails_its_latency_row(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    text = _run(tmp_path, monkeypatch, refused=0, latencies=False)
    row = next(line for line in text.splitlines() if "p99 latency" in line)
    assert "nothing measured" in row and "FAIL" in row, text
    assert text.rstrip().endswith("FAIL")


def test_refusals_count_against_availability_in_virtual_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _run(tmp_path, monkeypatch, refused=1000, latencies=True)
    failed = [line for line in text.splitlines() if line.startswith("failed: ")]
    assert failed and "availability over the run" in failed[0], text
    assert failed[0].endswith("1000 refused)"), failed


def test_the_same_run_without_refusals_passes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    text = _run(tmp_path, monkeypatch, refused=0, latencies=True)
    assert text.rstrip().endswith("PASS"), text
