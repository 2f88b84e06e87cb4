"""``payswitch report merge``: merged percentiles equal one HdrHistogram of all samples, exactly."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from loadtests.harness.hlog import LogWriter, new_histogram, read_log, total_of
from loadtests.harness.merge import merge_runs
from loadtests.harness.runfiles import RunFilesError, load_run
from loadtests.harness.runoutputs import RunTotals, build_summary, latency_figures
from loadtests.harness.timeseries import SecondRow, rows_from_csv, write_csv
from switch.cli.report import report

CHANNELS = ("card", "qr", "swift")
PERCENTILES = (0.0, 1.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 99.999, 100.0)


def _fake_run(
    directory: Path, start_wall: float, seconds: int, rate: int, seed: int,
    all_samples: dict[str, list[int]],
) -> None:
    """A run directory as `payswitch load` writes it, from known latency samples (µs)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    rows = []
    total = new_histogram()
    per_channel = {ch: new_histogram() for ch in CHANNELS}
    with (directory / "latency.hlog").open("w") as f:
        log = LogWriter(f, start_wall, "test")
        for k in range(1, seconds + 1):
            second = {ch: new_histogram() for ch in CHANNELS}
            for _ in range(rate):
                ch = rng.choice(CHANNELS)
                # a long tail: lognormal around 3 ms, some seconds-long outliers
                value = min(int(rng.lognormvariate(8.0, 1.0 + seed * 0.3)), 100_000_000)
                value = max(value, 1)
                second[ch].record_value(value)
                all_samples[ch].append(value)
            interval = new_histogram()
            for ch, h in second.items():
                interval.add(h)
                per_channel[ch].add(h)
            log.interval(interval, k - 1, k)
            for ch, h in second.items():
                log.interval(h, k - 1, k, tag=ch)
            total.add(interval)
            rows.append(SecondRow(second=k, start_s=k - 1, end_s=k, offered=rate, sent=rate,
                                  achieved=rate, statuses={"approved": rate}))
    write_csv(directory / "timeseries.csv", rows)
    totals = RunTotals(
        histogram=total, channel_histograms=per_channel, sent=rate * seconds, malformed_sent=0,
        replies=rate * seconds, replays=0, statuses=Counter(approved=rate * seconds),
        errors=Counter(), planted_errors=Counter(), planted_sent=Counter(),
        by_channel=Counter(), unanswered=0, connection_lost=0, dropped=0, lagged=0,
        max_lag_ms=1.0, elapsed_s=float(seconds), cpu_s=1.0, processes=[],
    )
    run = {"target": "127.0.0.1:7100", "duration_s": float(seconds), "elapsed_s": float(seconds),
           "processes": 1, "connections": 4, "run_tag": f"L{seed}", "interrupted_at_s": None,
           "start_wall": start_wall}
    summary = build_summary(run, totals, rate * seconds, float(seconds), 0,
                            {"host": f"gen-{seed}"}, [])
    (directory / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path, dict[str, list[int]]]:
    samples: dict[str, list[int]] = {ch: [] for ch in CHANNELS}
    a, b = tmp_path / "gen-a", tmp_path / "gen-b"
    _fake_run(a, 1_800_000_000.0, 5, 400, 1, samples)
    _fake_run(b, 1_800_000_000.4, 6, 250, 2, samples)  # another machine, 0.4 s later
    return a, b, samples


def _one_histogram(values: list[int]):  # type: ignore[no-untyped-def]
    hist = new_histogram()
    for v in values:
        hist.record_value(v)
    return hist


def test_merged_percentiles_equal_one_histogram_of_all_samples(
    two_runs: tuple[Path, Path, dict[str, list[int]]], tmp_path: Path
) -> None:
    a, b, samples = two_runs
    result = merge_runs([a, b], tmp_path / "merged")
    everything = _one_histogram([v for vs in samples.values() for v in vs])
    merged = load_run(result.out_dir)
    assert merged.histogram.get_total_count() == 5 * 400 + 6 * 250
    for p in PERCENTILES:
        assert merged.histogram.get_value_at_percentile(p) == everything.get_value_at_percentile(p)
    assert merged.histogram.get_max_value() == everything.get_max_value()
    assert merged.histogram.get_min_value() == everything.get_min_value()
    # ... and so are the figures in the merged summary.json, per channel too
    assert result.summary["latency_ms"] == latency_figures(everything)
    for ch in CHANNELS:
        assert result.summary["latency_by_channel_ms"][ch] == latency_figures(
            _one_histogram(samples[ch])
        )
    # averaging the two runs' p99 (what merged dashboards often do) would not be exact
    p99s = [load_run(d).summary["latency_ms"]["p99"] for d in (a, b)]
    assert sum(p99s) / 2 != result.summary["latency_ms"]["p99"]


def test_merged_time_series_is_aligned_and_summed(
    two_runs: tuple[Path, Path, dict[str, list[int]]], tmp_path: Path
) -> None:
    a, b, _ = two_runs
    out = tmp_path / "merged"
    merge_runs([a, b], out)
    rows = rows_from_csv(out / "timeseries.csv")
    # b started 0.4 s after a: its second k lands in merged second k (nearest whole second)
    assert [r.achieved for r in rows] == [650] * 5 + [250]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(r.achieved for r in rows) == summary["totals"]["replies"] == 3500
    assert [run["host"] for run in summary["runs"]] == ["gen-1", "gen-2"]
    # the merged log holds the same samples: untagged = all, tagged = per channel
    _, intervals = read_log(out / "latency.hlog")
    assert total_of(intervals).get_total_count() == 3500
    assert sum(total_of(intervals, ch).get_total_count() for ch in CHANNELS) == 3500
    # each merged second's p99 is that second's merged histogram's, not an average
    second_one = new_histogram()
    for run in (load_run(a), load_run(b)):
        second_one.add(next(i.histogram for i in run.intervals if i.tag is None))
    assert rows[0].p99_ms == second_one.get_value_at_percentile(99) / 1000.0
    assert (out / "index.html").read_text().count("<svg") >= 5


def test_merge_cli_and_its_errors(
    two_runs: tuple[Path, Path, dict[str, list[int]]], tmp_path: Path
) -> None:
    a, b, _ = two_runs
    runner = CliRunner()
    result = runner.invoke(report, ["merge", str(a), str(b), "--out", str(tmp_path / "m"),
                                    "--threshold", "p99<1us"])
    assert result.exit_code == 1, result.output
    assert "merged 2 runs: 3,500 replies" in result.output
    assert "threshold(s) failed: p99<1us" in result.output
    for args, says in (
        ([str(a), str(a)], "the same run directory is given twice"),
        ([str(a)], "at least two run directories"),
        ([str(a), str(tmp_path)], "not a load run directory (missing summary.json"),
        ([str(a), str(tmp_path / "nope")], "not a directory"),
        ([str(a), str(b), "--threshold", "p99<"], "--threshold: threshold 'p99<'"),
    ):
        result = runner.invoke(report, ["merge", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("\n") == 1 and says in result.output, result.output
    with pytest.raises(RunFilesError):
        load_run(tmp_path / "x")
