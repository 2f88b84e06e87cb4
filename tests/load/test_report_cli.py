"""End to end against a live switch: thresholds' exit codes, the generator's /metrics while
it runs, and `payswitch report merge` / `compare` on two real runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtests.harness.hlog import new_histogram, read_log, total_of
from tests.load.conftest import ROOT, screenshot
from tests.load.pngcheck import png_stats

ENV = dict(os.environ, COLUMNS="120")


def _payswitch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "switch.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(
    live_switch: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """Run A fails a threshold and serves its metrics (scraped while it runs); run B passes."""
    base = tmp_path_factory.mktemp("report-cli")
    port = str(live_switch["port"])
    a, b = base / "a", base / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "switch.cli", "load", "--port", port, "--rate", "300",
         "--duration", "3", "--processes", "2", "--connections", "4", "--out", str(a),
         "--metrics-port", "0", "--metrics-host", "127.0.0.1",
         "--threshold", "p99<1ms", "--threshold", "errors<50%"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines = []
    scraped = ""
    for line in proc.stdout:
        lines.append(line)
        match = re.search(r"generator metrics: http://127.0.0.1:(\d+)/metrics", line)
        if match:
            url = f"http://127.0.0.1:{match[1]}/metrics"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                scraped = httpx.get(url, timeout=5).text
                if re.search(r"^payswitch_loadgen_replies_total [1-9]", scraped, re.M):
                    break
                time.sleep(0.2)
            break
    lines += proc.stdout.readlines()
    code_a = proc.wait(timeout=120)
    result_b = _payswitch("load", "--port", port, "--rate", "200", "--duration", "2",
                          "--processes", "1", "--connections", "2", "--out", str(b),
                          "--threshold", "p99<60s", "--threshold", "rps>=10")
    return {"a": a, "b": b, "code_a": code_a, "out_a": "".join(lines), "scraped": scraped,
            "result_b": result_b, "base": base}


def test_a_failed_threshold_exits_1_naming_it(runs: dict[str, object]) -> None:
    out = str(runs["out_a"])
    assert runs["code_a"] == 1, out[-3000:]
    assert "FAIL  p99<1ms: measured" in out
    assert "pass  errors<50%" in out
    assert "Error: threshold(s) failed: p99<1ms (measured" in out
    summary = json.loads((Path(str(runs["a"])) / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    assert [t["passed"] for t in summary["thresholds"]] == [False, True]
    page = (Path(str(runs["a"])) / "index.html").read_text()
    assert "threshold p99&lt;1ms" in page and "THRESHOLDS FAILED: p99&lt;1ms" in page


def test_passing_thresholds_exit_0(runs: dict[str, object]) -> None:
    result = runs["result_b"]
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "thresholds: pass (2)" in result.stdout


def test_generator_metrics_while_it_runs(runs: dict[str, object]) -> None:
    text = str(runs["scraped"])
    for name in ("offered_requests_total", "sent_requests_total", "replies_total",
                 "payments_total", 'latency_seconds_bucket{channel="card",le="+Inf"}',
                 "lag_max_seconds", "run_info"):
        assert "payswitch_loadgen_" + name in text, name


def test_merge_of_two_real_runs_is_exact(runs: dict[str, object]) -> None:
    a, b, base = Path(str(runs["a"])), Path(str(runs["b"])), Path(str(runs["base"]))
    out = base / "merged"
    result = _payswitch("report", "merge", str(a), str(b), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    both = new_histogram()
    for d in (a, b):
        both.add(total_of(read_log(d / "latency.hlog")[1]))
    merged = json.loads((out / "summary.json").read_text())
    count = sum(json.loads((d / "summary.json").read_text())["totals"]["replies"]
                for d in (a, b))
    assert merged["latency_ms"]["count"] == both.get_total_count() == count
    for p in (50, 90, 99, 99.9, 99.99):
        assert merged["latency_ms"][f"p{p:g}"] == round(both.get_value_at_percentile(p) / 1000, 3)
    assert f"merged 2 runs: {count:,} replies" in result.stdout


def test_compare_two_runs(runs: dict[str, object], tmp_path: Path) -> None:
    a, b = str(runs["a"]), str(runs["b"])
    page = tmp_path / "compare.html"
    result = _payswitch("report", "compare", a, b, "--out", str(page))
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in ("offered rate", "achieved rate", "p99.9", "errors (not planted)",
                   "card p99", "B − A"):
        assert figure in result.stdout, figure
    assert f"comparison: {page}" in result.stdout
    html = page.read_text()
    assert "<script" not in html and html.count("<svg") == 3
    png = tmp_path / "compare.png"
    screenshot(page, png, tmp_path / "profile")
    stats = png_stats(png)
    assert stats.distinct_colours > 50 and stats.non_background_share > 0.03, stats
    bad = _payswitch("report", "compare", a, str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"Error: {tmp_path}: not a load run directory (missing " \
        "summary.json, timeseries.csv, latency.hlog)"


@pytest.mark.parametrize("argv", [["report", "--help"], ["report", "merge", "--help"],
                                  ["load", "--help"]])
def test_report_and_load_help_do_not_load_numba(argv: list[str]) -> None:
    code = (
        "import runpy, sys, atexit\n"
        "atexit.register(lambda: print('LOADED', 'numba' in sys.modules, file=sys.stderr))\n"
        f"sys.argv = ['payswitch', *{argv!r}]\n"
        "runpy.run_module('switch.cli', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert "LOADED False" in result.stderr, result.stderr[-2000:]
