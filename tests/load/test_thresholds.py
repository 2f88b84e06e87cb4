"""k6-style thresholds: parsing (one-line errors), evaluation on a run's summary, exit codes."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from loadtests.harness.hlog import new_histogram
from loadtests.harness.thresholds import (
    ThresholdError,
    evaluate,
    parse_threshold,
    parse_thresholds,
)
from switch.cli.load import load


def _summary() -> dict[str, Any]:
    return {
        "totals": {
            "offered": 10_000, "offered_rate": 1000.0, "sent": 9_990, "replies": 9_990,
            "achieved_rate": 990.0, "dropped_overrun": 10,
            "statuses": {"approved": 9_800, "declined": 100, "failed": 40, "unknown": 10},
            "errors": {"invalid": 30, "overloaded": 9, "malformed": 1},
            "planted_errors": {"invalid": 25, "malformed": 1},
        },
        "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": 12.5, "p99.9": 40.0, "max": 80.0,
                       "mean": 2.6, "count": 9_990},
        "latency_by_channel_ms": {"card": {"p99": 20.0, "max": 81.0}},
        "generator": {"max_lag_ms": 3.5},
    }


@pytest.mark.parametrize(
    ("text", "metric", "op", "value", "share", "channel"),
    [
        ("p99<50ms", "p99", "<", 50.0, False, None),
        ("p99.9 <= 0.2s", "p99.9", "<=", 200.0, False, None),
        ("p95<800us", "p95", "<", 0.8, False, None),
        ("p99<50", "p99", "<", 50.0, False, None),  # k6 style: ms by default
        ("errors<0.1%", "errors", "<", 0.001, True, None),
        ("errors<=3", "errors", "<=", 3.0, False, None),
        ("rps>=900", "rps", ">=", 900.0, False, None),
        ("rps>95%", "rps", ">", 0.95, True, None),
        ("card:p99<20ms", "p99", "<", 20.0, False, "card"),
        ("lag<50ms", "lag", "<", 50.0, False, None),
    ],
)
def test_parse(text: str, metric: str, op: str, value: float, share: bool,
               channel: str | None) -> None:
    t = parse_threshold(text)
    assert (t.metric, t.op, t.value, t.share, t.channel) == (
        metric, op, pytest.approx(value), share, channel
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("p99<<1", "expected [CHANNEL:]METRIC OP VALUE"),
        ("p99", "expected [CHANNEL:]METRIC OP VALUE"),
        ("latency<5ms", "unknown metric 'latency'"),
        ("p99<5parsecs", "latency unit must be ms, us or s"),
        ("errors<5ms", "errors takes a % or a count"),
        ("p0<1ms", "between p0 and p100"),
        ("card:errors<1%", "only latency metrics take a channel"),
    ],
)
def test_malformed_thresholds_say_why_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ThresholdError) as info:
        parse_threshold(text)
    assert says in str(info.value) and text in str(info.value)
    assert "\n" not in str(info.value)


def test_evaluate_against_the_summary() -> None:
    summary = _summary()
    results = evaluate(parse_thresholds([
        "p99<50ms", "p99<10ms", "errors<0.1%", "errors<0.2%", "failed<=0.5%", "shed<10",
        "rps>=990", "rps>=99.5%", "card:p99<=20ms", "lag<1ms", "max<80ms", "mean<3ms",
    ]), summary)
    verdict = {r.threshold.text: r.passed for r in results}
    assert verdict == {
        "p99<50ms": True, "p99<10ms": False,
        # 30 + 9 + 1 error replies, 26 of them planted: 14 real of 10,000 requests = 0.14%
        "errors<0.1%": False, "errors<0.2%": True,
        "failed<=0.5%": True,  # 40 failed + 10 unknown = 0.5%
        "shed<10": True, "rps>=990": True, "rps>=99.5%": False, "card:p99<=20ms": True,
        "lag<1ms": False, "max<80ms": False, "mean<3ms": True,
    }
    errors = next(r for r in results if r.threshold.text == "errors<0.1%")
    assert errors.measured == pytest.approx(14 / 10_000)
    assert "14 of 10,000" in errors.measured_text


def test_any_percentile_comes_exactly_from_the_histogram() -> None:
    hist = new_histogram()
    for v in range(1, 1001):
        hist.record_value(v * 10)  # 10 µs .. 10 ms
    (result,) = evaluate([parse_threshold("p95<9.6ms")], _summary(), {None: hist})
    assert result.measured == hist.get_value_at_percentile(95) / 1000.0 and result.passed
    # a threshold that cannot be measured fails, saying why (never a traceback after a run)
    missing, no_channel = evaluate(parse_thresholds(["p95<1ms", "qr:p99<1ms"]), _summary())
    assert not missing.passed and "p95 not in the summary" in missing.measured_text
    assert not no_channel.passed and "no replies on channel 'qr'" in no_channel.measured_text


def test_cli_malformed_threshold_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(load, ["--threshold", "p99<50ms", "--threshold", "p99<<1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --threshold: threshold 'p99<<1': expected [CHANNEL:]METRIC OP VALUE, e.g. "
        "'p99<50ms', 'errors<0.1%', 'rps>=900', 'card:p99.9<=100ms'"
    ]
