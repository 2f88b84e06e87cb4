"""``payswitch report merge``: several generator runs (machines) as one run, exactly.

Runs that drove one target together (``payswitch load`` on several machines, each with a
share of the rate) each write their own outputs. Merging them:

* latency: every interval HdrHistogram of every run's log is added into the merged run's
  histograms, overall and per channel. HdrHistogram addition is exact, so the merged
  percentiles *are* the percentiles of all samples together: never an average of
  percentiles (what Locust's rounding and k6's per-runner summaries cannot give);
* time series: the runs are aligned on the wall clock. Second *k* of the merged run holds
  every run's bucket that started nearest to *k − 1* seconds after the earliest start;
  counts are summed, and the per-second percentiles are recomputed from that second's
  merged interval histograms;
* totals are summed; the generator was behind schedule if any run's was.

The result is a run directory like any other (summary.json, timeseries.csv, latency.hlog,
index.html), so it can be compared, merged again, or checked with thresholds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtests.harness.hlog import LogWriter, max_ms, new_histogram, pct_ms
from loadtests.harness.runfiles import LoadedRun, RunFilesError, load_run
from loadtests.harness.runoutputs import (
    apply_thresholds,
    latency_figures,
    row_is_behind,
    write_outputs,
)
from loadtests.harness.thresholds import Threshold, ThresholdResult
from loadtests.harness.timeseries import SecondRow


@dataclass
class _Bucket:
    rows: list[SecondRow] = field(default_factory=list)
    hists: dict[str, HdrHistogram] = field(default_factory=dict)  # per channel
    total: HdrHistogram = field(default_factory=new_histogram)
    length_s: float = 0.0


@dataclass
class MergeResult:
    out_dir: Path
    summary: dict[str, Any]
    runs: list[LoadedRun]
    thresholds: list[ThresholdResult]


def _sum_counts(dicts: Sequence[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(sorted(total.items()))


def merge_runs(
    dirs: Sequence[str | Path], out_dir: Path, thresholds: Sequence[Threshold] = ()
) -> MergeResult:
    resolved = [Path(d).resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise RunFilesError("the same run directory is given twice: merging it would count "
                            "its samples twice")
    if len(resolved) < 2:
        raise RunFilesError("give at least two run directories to merge")
    runs = [load_run(d) for d in dirs]
    t0 = min(r.start_wall for r in runs)
    buckets: dict[int, _Bucket] = {}

    def bucket_of(offset_s: float) -> _Bucket:
        k = math.floor(offset_s + 0.5) + 1  # nearest whole second, 1-based
        return buckets.setdefault(k, _Bucket())

    for run in runs:
        shift = run.start_wall - t0
        fold = _drain_folder(run)
        for row in run.rows:
            start = fold(row.start_s)
            b = bucket_of(shift + start)
            b.rows.append(row)
            if start == row.start_s:
                b.length_s = max(b.length_s, min(row.end_s, run.duration_s or row.end_s) - start)
        for interval in run.intervals:
            b = bucket_of(shift + fold(interval.start_wall - run.start_wall))
            if interval.tag is None:
                b.total.add(interval.histogram)
            else:
                hist = b.hists.setdefault(interval.tag, new_histogram())
                hist.add(interval.histogram)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[SecondRow] = []
    total = new_histogram()
    channel_totals: dict[str, HdrHistogram] = {}
    with (out_dir / "latency.hlog").open("w") as f:
        log = LogWriter(f, t0, f"payswitch report merge of {len(runs)} runs: "
                        + ", ".join(r.name for r in runs))
        for k in range(1, max(buckets, default=0) + 1):
            b = buckets.get(k) or _Bucket()  # a second no run covered: zero, not a line
            start, end = float(k - 1), float(k - 1) + (b.length_s or 1.0)
            log.interval(b.total, start, end)
            for channel, hist in sorted(b.hists.items()):
                log.interval(hist, start, end, tag=channel)
                channel_totals.setdefault(channel, new_histogram()).add(hist)
            total.add(b.total)
            rows.append(_merged_row(k, start, end, b))
    summary = _merged_summary(runs, rows, total, channel_totals, t0)
    histograms: dict[str | None, HdrHistogram] = {None: total}
    histograms.update(channel_totals)
    results = apply_thresholds(summary, thresholds, histograms)
    write_outputs(out_dir, summary, rows, histograms,
                  {"merged_from": [str(r.path) for r in runs]},
                  title=f"payswitch load — {len(runs)} runs merged ({out_dir.name})")
    return MergeResult(out_dir, summary, runs, results)


def _drain_folder(run: LoadedRun) -> Callable[[float], float]:
    """Maps a bucket's start to where it merges: the drain bucket after the load (replies to
    the last second's requests) joins the last second of load, so it is no rate spike."""
    duration = run.duration_s
    load_starts = [r.start_s for r in run.rows if not duration or r.start_s < duration - 1e-6]
    last = max(load_starts, default=0.0)

    def fold(start_s: float) -> float:
        if duration and start_s >= duration - 1e-6 and load_starts:
            return last
        # buckets start on whole seconds; a start read from the log is in whole ms
        return float(round(start_s))

    return fold


def _merged_row(k: int, start: float, end: float, b: _Bucket) -> SecondRow:
    rows = b.rows
    return SecondRow(
        second=k,
        start_s=start,
        end_s=end,
        offered=sum(r.offered for r in rows),
        sent=sum(r.sent for r in rows),
        achieved=sum(r.achieved for r in rows),
        errors=_sum_counts([r.errors for r in rows]),
        statuses=_sum_counts([r.statuses for r in rows]),
        p50_ms=pct_ms(b.total, 50),
        p99_ms=pct_ms(b.total, 99),
        p999_ms=pct_ms(b.total, 99.9),
        max_ms=max_ms(b.total),
        max_lag_ms=max((r.max_lag_ms for r in rows), default=0.0),
        lagged=sum(r.lagged for r in rows),
        dropped=sum(r.dropped for r in rows),
        planted=_sum_counts([r.planted for r in rows]),
        channel_p50_ms={ch: pct_ms(h, 50) for ch, h in sorted(b.hists.items())},
        channel_p99_ms={ch: pct_ms(h, 99) for ch, h in sorted(b.hists.items())},
    )


def _merged_summary(
    runs: Sequence[LoadedRun],
    rows: Sequence[SecondRow],
    total: HdrHistogram,
    channel_totals: dict[str, HdrHistogram],
    t0: float,
) -> dict[str, Any]:
    sums = [r.summary for r in runs]
    totals = [s["totals"] for s in sums]
    gens = [s.get("generator", {}) for s in sums]
    duration = max(r.start_wall - t0 + r.duration_s for r in runs)
    elapsed = max(r.start_wall - t0 + float(s["run"].get("elapsed_s", r.duration_s))
                  for r, s in zip(runs, sums, strict=True))
    # As one run's achieved rate: per second of load, or until the last reply if later,
    # never per second of a drain wait (summaries written before last_reply_s existed
    # keep their own elapsed time).
    answering = max(
        r.start_wall - t0 + max(r.duration_s, float(s["run"]["last_reply_s"]))
        if "last_reply_s" in s["run"]
        else r.start_wall - t0 + float(s["run"].get("elapsed_s", r.duration_s))
        for r, s in zip(runs, sums, strict=True)
    )
    # The merged run carries its own last reply, so that merging it again reads the same
    # end of answering as merging its runs directly: merging is associative for the
    # achieved rate. Without it, a merge of merged runs fell back to elapsed_s, which
    # counts the drain wait, and the rate came out several times too low. A run from
    # before last_reply_s stands in with its elapsed time, as above.
    last_reply = max(
        r.start_wall - t0 + float(s["run"].get("last_reply_s",
                                               s["run"].get("elapsed_s", r.duration_s)))
        for r, s in zip(runs, sums, strict=True)
    )
    offered = sum(int(t["offered"]) for t in totals)
    replies = sum(int(t["replies"]) for t in totals)

    def add(key: str) -> int:
        return sum(int(t.get(key, 0)) for t in totals)

    cpu = sum(float(g.get("cpu_s", 0.0)) for g in gens)
    behind_seconds = sum(1 for r in rows if row_is_behind(r))
    return {
        "run": {
            "target": ", ".join(sorted({str(s["run"].get("target", "?")) for s in sums})),
            "duration_s": round(duration, 3),
            "elapsed_s": round(elapsed, 3),
            "last_reply_s": round(last_reply, 3),
            "processes": sum(int(s["run"].get("processes", 1)) for s in sums),
            "connections": sum(int(s["run"].get("connections", 0)) for s in sums),
            "run_tag": ", ".join(str(s["run"].get("run_tag", "?")) for s in sums),
            "start_wall": round(t0, 3),
            "interrupted_at_s": None,
            "merged_from": [str(r.path) for r in runs],
        },
        "environment": sums[0].get("environment", {}),
        "runs": [
            {"directory": str(r.path), "host": s.get("environment", {}).get("host", "?"),
             "started_utc": s.get("environment", {}).get("started_utc", "?"),
             "start_offset_s": round(r.start_wall - t0, 3), "replies": int(s["totals"]["replies"]),
             "p99_ms": s.get("latency_ms", {}).get("p99", 0.0),
             "behind_schedule": bool(s.get("generator", {}).get("behind_schedule", False))}
            for r, s in zip(runs, sums, strict=True)
        ],
        "totals": {
            "offered": offered,
            "offered_rate": round(offered / max(duration, 1e-9), 1),
            "sent": add("sent"),
            "malformed_sent": add("malformed_sent"),
            "replies": replies,
            "achieved_rate": round(replies / max(answering, 1e-9), 1),
            "replays": add("replays"),
            "statuses": _sum_counts([t.get("statuses", {}) for t in totals]),
            "errors": _sum_counts([t.get("errors", {}) for t in totals]),
            "planted_errors": _sum_counts([t.get("planted_errors", {}) for t in totals]),
            "planted_sent": _sum_counts([t.get("planted_sent", {}) for t in totals]),
            "unanswered": add("unanswered"),
            "connection_lost": add("connection_lost"),
            "dropped_overrun": add("dropped_overrun"),
        },
        "latency_ms": latency_figures(total),
        "latency_by_channel_ms": {
            ch: latency_figures(h) for ch, h in sorted(channel_totals.items())
        },
        "generator": {
            "behind_schedule": behind_seconds > 0
            or any(bool(g.get("behind_schedule")) for g in gens),
            "behind_seconds": behind_seconds,
            "lagged": sum(int(g.get("lagged", 0)) for g in gens),
            "lag_warn_ms": gens[0].get("lag_warn_ms", 10.0),
            "max_lag_ms": max(float(g.get("max_lag_ms", 0.0)) for g in gens),
            "cpu_s": round(cpu, 3),
            "replies_per_cpu_s": round(replies / max(cpu, 1e-9), 1),
        },
        "by_channel": _sum_counts([s.get("by_channel", {}) for s in sums]),
        "processes": [
            {"run": r.name, **p} for r, s in zip(runs, sums, strict=True)
            for p in s.get("processes", [])
        ],
        "failures": [f"{r.name}: {f}" for r, s in zip(runs, sums, strict=True)
                     for f in s.get("failures", [])],
        "files": {
            "summary": "summary.json",
            "timeseries": "timeseries.csv",
            "hdr_log": "latency.hlog",
            "report": "index.html",
        },
    }
