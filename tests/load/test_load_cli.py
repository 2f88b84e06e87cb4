"""``payswitch load`` end to end: a short multi-process run against a live switch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from loadtests.harness.hlog import read_log, total_of
from switch.cli.load import load
from tests.load.conftest import ROOT, screenshot
from tests.load.pngcheck import png_stats


@pytest.fixture(scope="module")
def load_run(live_switch: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("load") / "run"
    command = [
        sys.executable, "-m", "switch.cli.load",
        "--port", str(live_switch["port"]),
        "--shape", "kind=steps,rates=300/600,step_s=1.5",
        "--processes", "2",
        "--connections", "4",
        "--seed", "5",
        "--out", str(out),
    ]
    env = dict(os.environ, COLUMNS="120")
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "latency (from intended send time): p50" in result.stdout
    assert f"outputs: {out}/" in result.stdout
    return out


def test_summary_json(load_run: Path) -> None:
    summary = json.loads((load_run / "summary.json").read_text())
    totals = summary["totals"]
    assert totals["offered"] == 300 * 1.5 + 600 * 1.5
    assert totals["sent"] + totals["malformed_sent"] == totals["offered"]
    assert totals["replies"] == totals["sent"] > 1200
    assert totals["statuses"]["approved"] > 0
    assert summary["latency_ms"]["count"] == totals["replies"]
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["latency_ms"]["p99"] <= summary["latency_ms"]["p99.9"]
    assert len(summary["processes"]) == 2
    assert sum(p["sent"] for p in summary["processes"]) == totals["sent"]
    assert abs(summary["processes"][0]["sent"] - summary["processes"][1]["sent"]) <= 20
    assert summary["run"]["shape"]["kind"] == "steps"
    assert isinstance(summary["generator"]["behind_schedule"], bool)
    assert summary["failures"] == []


def test_csv_time_series_in_one_second_buckets(load_run: Path) -> None:
    with (load_run / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3
    for column in ("second", "offered", "achieved", "errors", "p50_ms", "p99_ms", "p999_ms"):
        assert column in rows[0]
    assert [float(r["offered"]) for r in rows[:3]] == [300.0, 450.0, 600.0]
    assert [int(r["second"]) for r in rows] == list(range(1, len(rows) + 1))
    summary = json.loads((load_run / "summary.json").read_text())
    assert sum(int(r["achieved"]) for r in rows) == summary["totals"]["replies"]
    assert sum(float(r["offered"]) for r in rows) == summary["totals"]["offered"]
    assert float(rows[1]["p99_ms"]) > 0


def test_hdr_log_holds_every_reply(load_run: Path) -> None:
    # hdrh's own reader (what other tools use): untagged lines are all channels together,
    # Tag=<channel> lines the same samples per channel.
    reader = HistogramLogReader(str(load_run / "latency.hlog"), HdrHistogram(1, 120_000_000, 3))
    total, intervals = 0, 0
    by_tag: dict[str, int] = {}
    while (hist := reader.get_next_interval_histogram()) is not None:
        tag = hist.get_tag()
        if tag is None:
            total += hist.get_total_count()
            intervals += 1
        else:
            by_tag[tag] = by_tag.get(tag, 0) + hist.get_total_count()
    summary = json.loads((load_run / "summary.json").read_text())
    assert intervals >= 3
    assert total == summary["totals"]["replies"]
    assert reader.get_start_time_sec() > 1_600_000_000
    per_channel = summary["latency_by_channel_ms"]
    assert by_tag == {ch: figures["count"] for ch, figures in per_channel.items()}
    assert set(by_tag) == {"card", "swift", "qr"}
    # our reader gives the same exact total, with percentiles equal to the summary's
    _, logged = read_log(load_run / "latency.hlog")
    merged = total_of(logged)
    assert merged.get_total_count() == total
    assert round(merged.get_value_at_percentile(99) / 1000, 3) == summary["latency_ms"]["p99"]


def test_report_is_self_contained_and_renders(load_run: Path, tmp_path: Path) -> None:
    page = (load_run / "index.html").read_text()
    assert page.count("<svg") >= 3
    for external in ("<script", "<link", "src=", "@import", "url("):
        assert external not in page
    assert "https://" not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http://") == 0
    png = tmp_path / "report.png"
    screenshot(load_run / "index.html", png, tmp_path / "profile")
    stats = png_stats(png)
    assert (stats.width, stats.height) == (1200, 2000)
    assert stats.distinct_colours > 50, stats
    assert stats.non_background_share > 0.03, stats


def test_a_blank_page_fails_the_render_check(tmp_path: Path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    png = tmp_path / "blank.png"
    screenshot(blank, png, tmp_path / "profile")
    stats = png_stats(png)
    assert stats.distinct_colours <= 2 and stats.non_background_share < 0.001


def test_cli_rejects_bad_input_naming_the_key(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "w.toml"
    bad.write_text("[hot_keys.cards]\npool = 0\n")
    result = runner.invoke(load, ["--workload", str(bad)])
    assert result.exit_code == 2
    assert "hot_keys.cards.pool: Expected `int` >= 1" in result.output
    result = runner.invoke(load, ["--shape", "kind=ramp,from_rate=1,to_rate=-3,ramp_s=2"])
    assert result.exit_code == 2 and "to_rate: Expected `float` >= 0" in result.output
    result = runner.invoke(load, ["--rate", "5", "--shape", "kind=fixed,rate=5"])
    assert result.exit_code == 2 and "not both" in result.output
    shape = tmp_path / "shape.toml"
    shape.write_text('[shape]\nkind = "spike"\nbase_rate = 5\nspike_rate = 9\nat_s = 1\n')
    result = runner.invoke(load, ["--shape", str(shape)])
    assert result.exit_code == 2 and "spike_s" in result.output


def test_cli_fails_clearly_without_a_switch(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(
        load, ["--port", str(port), "--rate", "10", "--duration", "1", "--processes", "1",
               "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "process 0: OSError" in result.output and f"127.0.0.1:{port}" in result.output
