"""Scenarios through the CLI, in subprocesses: validation, a passing run, a failing one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from loadtests.harness.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted((ROOT / "loadtests" / "scenarios").glob("*.toml"))


def scenario(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\ndescription = "test"\n' + body)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "switch.cli.main", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_library_has_six_valid_scenarios_with_descriptions() -> None:
    names = {p.stem for p in LIBRARY}
    assert {"card-primary-outage", "swift-blackhole", "qr-brownout", "retry-storm",
            "spike-3x", "soak"} <= names
    for path in LIBRARY:
        prepared = load_scenario(path)
        assert prepared.scenario.description
        assert tomllib.loads(path.read_text())["assertions"]


@pytest.mark.parametrize(("body", "message"), [
    ('duration_s = 10\n[load]\nrate = 10\n[[faults]]\nkind = "down"\nendpoint = "nope"\n',
     "faults[0].endpoint: unknown endpoint 'nope'"),
    ('duration_s = -5\n[load]\nrate = 10\n', "duration_s: Expected `float` > 0"),
    ('duration_s = 10\n[load]\nrate = 10\n[[faults]]\nkind = "down"\nendpoint = "qr"\n'
     'duration_s = -1\n', "faults[0].duration_s"),
    ('duration_s = 10\n[load]\nrate = 10\n'
     '[[faults]]\nkind = "down"\nendpoint = "qr"\nstart_s = 1\nduration_s = 5\n'
     '[[faults]]\nkind = "blackhole"\nendpoint = "qr"\nstart_s = 2\nduration_s = 5\n',
     "faults[1]: contradicts faults[0]"),
    ('duration_s = 10\n[load]\nrate = 10\n[[faults]]\nkind = "slow"\nendpoint = "qr"\n'
     'start_s = 12\nfactor = 2.0\n', "faults[0].start_s: 12.0 is not before the end"),
    ("duration_s = 10\n[load]\n", "give exactly one of load.rate or load.shape"),
    ("duration_s = 10\n[load]\nrate = 10\n[assertions]\np99_ms = 5\n",
     "assertions.p99_ms: unknown key"),
])
def test_invalid_scenarios_are_rejected_with_the_key_path(tmp_path: Path, body: str,
                                                          message: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(scenario(tmp_path, body))


def test_invalid_scenario_exits_2_before_starting_anything(tmp_path: Path) -> None:
    proc = run("scenario", "run", str(scenario(
        tmp_path, 'duration_s = 10\n[load]\nrate = 10\n[[faults]]\nkind = "down"\n'
        'endpoint = "nope"\n')), "--out", str(tmp_path / "reports"))
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("Error: invalid scenario: ") and "faults[0].endpoint" in line
    assert not (tmp_path / "reports").exists()


def test_short_outage_passes_and_an_impossible_assertion_fails(tmp_path: Path) -> None:
    body = """duration_s = 4
seed = 3
[load]
rate = 150
[[faults]]
kind = "down"
endpoint = "card-primary"
start_s = 1
duration_s = 2
[assertions]
availability_min = 0.95
failover_s_max = 2.0
"""
    ok = run("scenario", "run", str(scenario(tmp_path, body)), "--out", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert "PASS" in ok.stdout and "failover time for faults[0]" in ok.stdout
    (report_dir,) = (tmp_path / "r").iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["verdict"] == "pass" and summary["lost"] == 0
    assert (report_dir / "index.html").stat().st_size > 5000
    assert "card-primary down" in (report_dir / "index.html").read_text()

    # The failing verdict needs no outage: the shortest run that measures a p99.
    impossible = "duration_s = 2\nseed = 3\n[load]\nrate = 150\n[assertions]\np99_ms_max = 0.001\n"
    bad = run("scenario", "run", str(scenario(tmp_path, impossible)), "--out",
              str(tmp_path / "r2"))
    assert bad.returncode == 1
    assert "failed: p99 latency: expected <= 0 ms" in bad.stdout
