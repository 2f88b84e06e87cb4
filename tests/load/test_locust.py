"""Locust, always in subprocesses: importing it here would gevent-patch the test process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.load.conftest import ROOT, VENV_BIN

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def locust_binary() -> Path:
    binary = VENV_BIN / "locust"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: .venv/bin/pip install locust (the 'load' extra)")
    return binary


def test_this_process_never_imported_locust() -> None:
    assert "locust" not in sys.modules and "gevent" not in sys.modules


def test_headless_run_against_a_live_switch(live_switch: dict[str, int], tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    env = dict(os.environ, PAYSWITCH_SEED="3")
    result = subprocess.run(
        [str(locust_binary()), "-f", str(LOCUSTFILE), "--headless", "-u", "20", "-r", "20",
         "-t", "5s", "--csv", str(prefix), "--host", f"tcp://127.0.0.1:{live_switch['port']}",
         "--only-summary", "--loglevel", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with Path(f"{prefix}_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    for channel in ("card", "swift", "qr"):
        row = rows[("pay", channel)]
        assert int(row["Request Count"]) > 0
        assert float(row["Average Content Size"]) > 20  # response_length: bytes of the reply
        assert 0 < float(row["Average Response Time"]) < 5000
    card, swift = int(rows[("pay", "card")]["Request Count"]), int(
        rows[("pay", "swift")]["Request Count"]
    )
    assert card > swift  # CardUser weighs 60, SwiftUser 20


SHAPE_PROBE = """
import json, sys
sys.path.insert(0, {here!r})
locust_shapes = __import__("locust_shapes")  # in this subprocess only: it imports locust
out = {{}}
for name in ("step", "spike", "soak"):
    shape = locust_shapes.select(name)()
    ticks = []
    for t in (0, 10, 26, 31, 44, 59, 61, 300, 599, 601):
        shape.get_run_time = lambda t=t: t
        ticks.append(shape.tick())
    out[name] = ticks
print(json.dumps(out))
"""


def test_load_shapes_tick_as_documented() -> None:
    env = dict(os.environ, PAYSWITCH_SHAPE_USERS="60", PAYSWITCH_SHAPE_STEPS="4")
    env.pop("PAYSWITCH_SHAPE_SECONDS", None)
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", SHAPE_PROBE.format(here=str(LOCUSTFILE.parent))],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ticks = json.loads(result.stdout)
    users = {name: [t[0] if t else None for t in values] for name, values in ticks.items()}
    assert users["step"] == [15, 15, 30, 45, 45, 60, None, None, None, None]
    assert users["spike"] == [20, 20, 60, 60, 20, 20, None, None, None, None]
    assert users["soak"] == [60] * 9 + [None]


def test_headless_step_shape_runs(live_switch: dict[str, int], tmp_path: Path) -> None:
    prefix = tmp_path / "step"
    env = dict(os.environ, PAYSWITCH_SHAPE="step", PAYSWITCH_SHAPE_USERS="8",
               PAYSWITCH_SHAPE_SECONDS="3", PAYSWITCH_SHAPE_STEPS="2", PAYSWITCH_WAIT_S="0.01")
    result = subprocess.run(
        [str(locust_binary()), "-f", str(LOCUSTFILE), "--headless", "--csv", str(prefix),
         "--host", f"tcp://127.0.0.1:{live_switch['port']}", "--only-summary",
         "--loglevel", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=90, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with Path(f"{prefix}_stats.csv").open() as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
