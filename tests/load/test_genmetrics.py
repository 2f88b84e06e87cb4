"""The generator's own Prometheus metrics: exact buckets from merged HdrHistograms, valid
exposition (promtool), and every name listed in the module's documentation."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.harness import genmetrics
from loadtests.harness.genmetrics import METRIC_NAMES, GeneratorMetrics
from loadtests.harness.hlog import cumulative_counts, new_histogram
from loadtests.harness.timeseries import SecondRow
from switch.observability.metrics import LATENCY_BUCKETS


def _samples(metrics: GeneratorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _feed(metrics: GeneratorMetrics) -> dict[str, list[int]]:
    """Two seconds from two processes' merged intervals; returns the latencies (µs)."""
    values = {"card": [300, 900, 1000, 1001, 2400, 2600, 49_000, 52_000, 2_000_000],
              "qr": [700, 8_000, 31_000_000]}
    for second in (1, 2):
        hists = {}
        for channel, vs in values.items():
            h = new_histogram()
            for v in vs:
                h.record_value(v)
            hists[channel] = h
        row = SecondRow(second=second, start_s=second - 1, end_s=second, offered=500.0,
                        sent=501, achieved=12, statuses={"approved": 9, "declined": 1},
                        errors={"invalid": 2, "overloaded": 3}, planted={"invalid": 2},
                        lagged=7 if second == 2 else 0, max_lag_ms=80.0 if second == 2 else 1.0,
                        dropped=1)
        metrics.on_second(row, hists, row.planted)
    return values


def test_counters_gauges_and_exact_latency_buckets() -> None:
    metrics = GeneratorMetrics(run_tag="Labc", target="127.0.0.1:7100")
    values = _feed(metrics)
    s = _samples(metrics)
    p = "payswitch_loadgen_"
    assert s[(p + "offered_requests_total", ())] == 1000.0
    assert s[(p + "sent_requests_total", ())] == 1002
    assert s[(p + "replies_total", ())] == 24
    assert s[(p + "payments_total", (("status", "approved"),))] == 18
    assert s[(p + "errors_total", (("code", "invalid"), ("planted", "true")))] == 4
    assert s[(p + "errors_total", (("code", "overloaded"), ("planted", "false")))] == 6
    assert s[(p + "errors_total", (("code", "not_sent_overrun"), ("planted", "false")))] == 2
    assert (p + "errors_total", (("code", "invalid"), ("planted", "false"))) not in s
    assert s[(p + "late_requests_total", ())] == 7
    assert s[(p + "lag_max_seconds", ())] == pytest.approx(0.080)
    assert s[(p + "behind_schedule", ())] == 1
    assert s[(p + "run_info", (("run_tag", "Labc"), ("target", "127.0.0.1:7100")))] == 1
    # buckets: every sample counted once per second, at the first bound >= its value
    for channel, vs in values.items():
        for bound in LATENCY_BUCKETS:
            expected = 2 * sum(1 for v in vs if v <= bound * 1_000_000)
            key = (p + "latency_seconds_bucket", (("channel", channel), ("le", repr(bound))))
            assert s[key] == expected, (channel, bound)
        assert s[(p + "latency_seconds_count", (("channel", channel),))] == 2 * len(vs)
    # exactly the bounds (µs) the switch uses, so both sides of the wire compare
    assert cumulative_counts(new_histogram(), [500, 1000]) == [0, 0]


def test_every_metric_is_documented_and_exposed() -> None:
    metrics = GeneratorMetrics()
    _feed(metrics)
    text = generate_latest(metrics.registry).decode()
    exposed = {f.name for f in text_string_to_metric_families(text)}
    # the parser drops _total from counter family names
    assert {n.removesuffix("_total") for n in METRIC_NAMES} == exposed
    doc = genmetrics.__doc__ or ""
    for name in METRIC_NAMES:
        assert f"``{name.removeprefix('payswitch_loadgen_').split('{')[0]}" in doc, name


def test_exposition_passes_promtool_and_is_served() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("`promtool` is not installed: run dashboards/install-prometheus.sh",
                    pytrace=False)
    metrics = GeneratorMetrics(run_tag="Lx", target="h:1")
    _feed(metrics)
    port = metrics.serve(0, "127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        metrics.close()
    assert "payswitch_loadgen_latency_seconds_bucket" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
