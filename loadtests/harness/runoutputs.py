"""What a load run writes: per-second aggregation, summary.json, the CSV, the HdrHistogram
log, the report, and the end-of-run summary on the terminal.

:class:`Aggregator` merges the generator processes' one-second intervals (exactly: the
interval HdrHistograms are added, never their percentiles averaged), writes each second to
the interval log as it closes, and feeds the generator's own Prometheus metrics.
:func:`finish_run` builds ``summary.json`` (with the run's environment, its warnings and
the thresholds' verdict) and the report. The orchestration (processes, queue, live view)
is loadtests/harness/loadrun.py.

One rule for "behind schedule" everywhere: a second is behind when more than
:data:`BEHIND_SHARE` of its requests left over ``LAG_WARN_S`` late or any left more than
:data:`BEHIND_MAX_LAG_S` late; the run is behind when any second was (the live warning
fires on the same test) or the whole run is.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.panel import Panel

from loadtests.harness.hlog import LogWriter, max_ms, new_histogram, pct_ms
from loadtests.harness.loadgen import LAG_WARN_S, Interval
from loadtests.harness.report import ReportData, Verdict, write_report
from loadtests.harness.shapes import RateShape
from loadtests.harness.thresholds import Threshold, ThresholdResult, evaluate
from loadtests.harness.timeseries import SecondRow, write_csv

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
#: "Behind schedule" (the loud warning): more than this share of requests left over
#: LAG_WARN_S late, or any request later than BEHIND_MAX_LAG_S. A lone scheduler hiccup of
#: a few ms is counted and shown in the figures, but does not cry wolf.
BEHIND_SHARE = 0.001
BEHIND_MAX_LAG_S = 0.050
#: Shed share above which the report warns; above one half it says "most".
SHED_WARN_SHARE = 0.01
REPO_ROOT = Path(__file__).resolve().parents[2]


def is_behind(lagged: int, sent: int, max_lag_s: float) -> bool:
    return lagged > BEHIND_SHARE * max(sent, 1) or max_lag_s > BEHIND_MAX_LAG_S


def behind_message(lagged: int, max_lag_ms: float, sent: int, seconds: int = 0) -> str:
    share = 100.0 * lagged / max(sent, 1)
    when = f" in {seconds} second(s) of the run" if seconds else ""
    return (
        f"GENERATOR BEHIND SCHEDULE{when}: {lagged:,} requests ({share:.1f}%) left more than "
        f"{LAG_WARN_S * 1000:.0f} ms late, max lag {max_lag_ms:.1f} ms. The target saw less "
        "than the offered rate; latencies include the lag. Add --processes or lower the rate."
    )


def shed_message(shed: int, requests: int, offered_rate: float, achieved_rate: float) -> str:
    share = shed / max(requests, 1)
    most = "MOST REQUESTS WERE SHED" if share > 0.5 else "REQUESTS SHED"
    return (
        f"{most}: {shed:,} of {requests:,} payments ({share * 100:.1f}%) were refused as "
        f"'overloaded': the switch is saturated at {offered_rate:,.0f}/s offered "
        f"({achieved_rate:,.0f}/s answered). Lower --rate, or find the saturation point with "
        "--shape 'kind=ramp,from_rate=100,to_rate=...,ramp_s=60'."
    )


class MetricsSink(Protocol):
    """Where closed seconds go besides the files (the generator's Prometheus metrics)."""

    def on_second(
        self, row: SecondRow, channel_hists: Mapping[str, HdrHistogram], planted: Mapping[str, int]
    ) -> None: ...


# --- aggregation --------------------------------------------------------------------------------


@dataclass
class _Second:
    start_s: float
    end_s: float
    hists: dict[str, HdrHistogram] = field(default_factory=dict)
    sent: int = 0
    malformed_sent: int = 0
    replies: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    planted: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    lagged: int = 0
    max_lag_s: float = 0.0

    def add(self, interval: Interval) -> None:
        for channel, encoded in interval.histograms.items():
            hist = self.hists.get(channel)
            if hist is None:
                hist = self.hists[channel] = new_histogram()
            hist.decode_and_add(encoded)
        self.end_s = max(self.end_s, interval.end_s)
        self.sent += interval.sent
        self.malformed_sent += interval.malformed_sent
        self.replies += interval.replies
        self.statuses.update(interval.statuses)
        self.errors.update(interval.errors)
        self.planted.update(interval.planted_errors)
        self.dropped += interval.dropped
        self.lagged += interval.lagged
        self.max_lag_s = max(self.max_lag_s, interval.max_lag_s)


class Aggregator:
    """Merges the processes' intervals second by second; writes the HDR log as they close.

    Second *k* closes once every process has reported it or finished. Only open seconds
    hold histograms, so memory stays bounded however long the run.
    """

    def __init__(
        self,
        processes: int,
        shape: RateShape,
        duration_s: float,
        hdr_log: LogWriter,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.processes = processes
        self.shape = shape
        self.duration_s = duration_s
        self.total_offered = int(shape.cumulative(duration_s) + 1e-6)
        self.hdr_log = hdr_log
        self.start_ms = hdr_log.start_ms
        self.metrics = metrics
        self.open: dict[int, _Second] = {}
        self.last_index = [0] * processes
        self.finished = [False] * processes
        self.closed_upto = 0
        self.rows: list[SecondRow] = []
        self.running = new_histogram()
        self.errors: Counter[str] = Counter()
        #: The share of ``errors`` that answered requests planted on purpose.
        self.planted: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.sent = 0
        self.replies = 0
        self.lagged = 0
        self.max_lag_s = 0.0
        #: Seconds that were behind schedule (the live warning's test, kept for the summary).
        self.behind_seconds = 0

    def offered_in(self, start_s: float, end_s: float) -> float:
        cum = self.shape.cumulative
        limit = self.total_offered
        return max(0.0, min(cum(end_s), limit) - min(cum(start_s), limit))

    def add(self, process: int, interval: Interval) -> None:
        second = self.open.get(interval.index)
        if second is None:
            second = self.open[interval.index] = _Second(interval.start_s, interval.end_s)
        second.add(interval)
        self.last_index[process] = interval.index
        self._close_ready()

    def finish(self, process: int) -> None:
        self.finished[process] = True
        self._close_ready()

    def _close_ready(self) -> None:
        pending = [self.last_index[p] for p in range(self.processes) if not self.finished[p]]
        upto = min(pending) if pending else max(self.open, default=self.closed_upto)
        for index in sorted(k for k in self.open if k <= upto):
            self._close(index, self.open.pop(index))
        self.closed_upto = max(self.closed_upto, upto)

    def _close(self, index: int, s: _Second) -> None:
        hist = new_histogram()
        for channel_hist in s.hists.values():
            hist.add(channel_hist)
        self.hdr_log.interval(hist, s.start_s, s.end_s)
        for channel, channel_hist in sorted(s.hists.items()):
            self.hdr_log.interval(channel_hist, s.start_s, s.end_s, tag=channel)
        row = SecondRow(
            second=index,
            start_s=s.start_s,
            end_s=s.end_s,
            offered=self.offered_in(s.start_s, s.end_s),
            sent=s.sent + s.malformed_sent,
            achieved=s.replies,
            errors=dict(s.errors),
            statuses=dict(s.statuses),
            p50_ms=pct_ms(hist, 50),
            p99_ms=pct_ms(hist, 99),
            p999_ms=pct_ms(hist, 99.9),
            max_ms=max_ms(hist),
            max_lag_ms=s.max_lag_s * 1000.0,
            lagged=s.lagged,
            dropped=s.dropped,
            planted=dict(s.planted),
            channel_p50_ms={ch: pct_ms(h, 50) for ch, h in sorted(s.hists.items())},
            channel_p99_ms={ch: pct_ms(h, 99) for ch, h in sorted(s.hists.items())},
        )
        self.rows.append(row)
        self.running.add(hist)
        self.errors.update(s.errors)
        self.planted.update(s.planted)
        self.statuses.update(s.statuses)
        self.sent += row.sent
        self.replies += s.replies
        self.lagged += s.lagged
        self.max_lag_s = max(self.max_lag_s, s.max_lag_s)
        if row_is_behind(row):
            self.behind_seconds += 1
        if self.metrics is not None:
            self.metrics.on_second(row, s.hists, s.planted)


def row_is_behind(row: SecondRow) -> bool:
    return is_behind(row.lagged, row.sent, row.max_lag_ms / 1000)


# --- environment ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return rev + (" (with uncommitted changes)" if dirty else "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(start_wall: float) -> dict[str, Any]:
    """Where and when the run ran: enough to tell two runs' conditions apart on a ticket."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "started_utc": dt.datetime.fromtimestamp(start_wall, dt.UTC).isoformat(
            timespec="seconds"
        ),
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
        else [],
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("payswitch", "hdrhistogram", "msgspec", "anyio", "uvloop")
        },
    }


# --- summary and outputs ---------------------------------------------------------------------


def latency_figures(hist: HdrHistogram) -> dict[str, float | int]:
    count = hist.get_total_count()
    return {f"p{p:g}": round(pct_ms(hist, p), 3) for p in PERCENTILES} | {
        "max": round(max_ms(hist), 3),
        "mean": round(hist.get_mean_value() / 1000.0, 3) if count else 0.0,
        "count": count,
    }


def run_warnings(summary: Mapping[str, Any]) -> list[str]:
    """The loud lines at the top of the report and the end of the terminal output."""
    totals, gen, run = summary["totals"], summary["generator"], summary["run"]
    warnings = []
    if run.get("interrupted_at_s") is not None:
        warnings.append(f"interrupted by the user at {run['interrupted_at_s']:.1f} s")
    if gen["behind_schedule"]:
        warnings.append(behind_message(gen["lagged"], gen["max_lag_ms"], totals["sent"],
                                       gen.get("behind_seconds", 0)))
    shed = int(totals["errors"].get("overloaded", 0))
    requests = int(totals["sent"]) + int(totals.get("dropped_overrun", 0))
    if shed > SHED_WARN_SHARE * max(requests, 1):
        warnings.append(shed_message(shed, requests, totals["offered_rate"],
                                     totals["achieved_rate"]))
    if summary.get("failures"):
        warnings.append("generator failures: " + "; ".join(summary["failures"]))
    if totals.get("dropped_overrun"):
        warnings.append(f"{totals['dropped_overrun']:,} requests not sent: too many outstanding "
                        "per connection")
    failed = [t for t in summary.get("thresholds", []) if not t["passed"]]
    if failed:
        warnings.append("THRESHOLDS FAILED: " + "; ".join(
            f"{t['threshold']} (measured {t['measured']})" for t in failed))
    return warnings


@dataclass
class RunTotals:
    """What the processes reported at the end, summed (histograms added exactly)."""

    histogram: HdrHistogram
    channel_histograms: dict[str, HdrHistogram]
    sent: int
    malformed_sent: int
    replies: int
    replays: int
    statuses: Counter[str]
    errors: Counter[str]
    planted_errors: Counter[str]
    planted_sent: Counter[str]
    by_channel: Counter[str]
    unanswered: int
    connection_lost: int
    dropped: int
    lagged: int
    max_lag_ms: float
    elapsed_s: float
    cpu_s: float
    processes: list[dict[str, Any]]
    #: Seconds from the start to the last reply of any process (0: no replies).
    last_reply_s: float = 0.0
    #: Latency of the payments answered with a result, refusals left out ("admitted");
    #: None where it was not kept (runs merged from files).
    admitted: HdrHistogram | None = None


def build_summary(
    run: dict[str, Any],
    totals: RunTotals,
    offered: int,
    offered_seconds: float,
    behind_seconds: int,
    env: dict[str, Any],
    failures: Sequence[str],
) -> dict[str, Any]:
    errors = Counter(totals.errors)
    if totals.unanswered:
        errors["no_reply"] += totals.unanswered
    if totals.connection_lost:
        errors["connection_lost"] += totals.connection_lost
    if totals.dropped:
        errors["not_sent_overrun"] += totals.dropped
    behind = behind_seconds > 0 or is_behind(totals.lagged, totals.sent, totals.max_lag_ms / 1000)
    # Replies per second of the load, or until the last reply if they came later: never
    # per second of a drain spent waiting for replies that never came.
    answering_s = max(offered_seconds, totals.last_reply_s)
    return {
        "run": run,
        "environment": env,
        "totals": {
            "offered": offered,
            "offered_rate": round(offered / max(offered_seconds, 1e-9), 1),
            "sent": totals.sent,
            "malformed_sent": totals.malformed_sent,
            "replies": totals.replies,
            "achieved_rate": round(totals.replies / max(answering_s, 1e-9), 1),
            "replays": totals.replays,
            "statuses": dict(sorted(totals.statuses.items())),
            "errors": dict(sorted(errors.items())),
            "planted_errors": dict(sorted(totals.planted_errors.items())),
            "planted_sent": dict(sorted(totals.planted_sent.items())),
            "unanswered": totals.unanswered,
            "connection_lost": totals.connection_lost,
            "dropped_overrun": totals.dropped,
        },
        "latency_ms": latency_figures(totals.histogram),
        "latency_by_channel_ms": {
            ch: latency_figures(h) for ch, h in sorted(totals.channel_histograms.items())
        },
        # Instant refusals (overloaded, shed at once) pull latency_ms down under shedding:
        # this is the latency of what was answered with a result.
        **({"latency_admitted_ms": latency_figures(totals.admitted)}
           if totals.admitted is not None else {}),
        "generator": {
            "behind_schedule": behind,
            "behind_seconds": behind_seconds,
            "lagged": totals.lagged,
            "lag_warn_ms": LAG_WARN_S * 1000,
            "max_lag_ms": round(totals.max_lag_ms, 3),
            "cpu_s": round(totals.cpu_s, 3),
            "replies_per_cpu_s": round(totals.replies / max(totals.cpu_s, 1e-9), 1),
        },
        "by_channel": dict(sorted(totals.by_channel.items())),
        "processes": totals.processes,
        "failures": list(failures),
        "files": {
            "summary": "summary.json",
            "timeseries": "timeseries.csv",
            "hdr_log": "latency.hlog",
            "report": "index.html",
        },
    }


def apply_thresholds(
    summary: dict[str, Any],
    thresholds: Sequence[Threshold],
    histograms: Mapping[str | None, HdrHistogram],
) -> list[ThresholdResult]:
    results = evaluate(thresholds, summary, histograms)
    if thresholds:
        summary["thresholds"] = [
            {"threshold": r.threshold.text, "limit": r.threshold.describe_limit(),
             "measured": r.measured_text, "passed": r.passed}
            for r in results
        ]
        summary["verdict"] = "pass" if all(r.passed for r in results) else "fail"
    return results


def write_outputs(
    out_dir: Path,
    summary: dict[str, Any],
    rows: Sequence[SecondRow],
    histograms: Mapping[str | None, HdrHistogram],
    config: Mapping[str, Any],
    title: str | None = None,
) -> list[str]:
    """summary.json, timeseries.csv and index.html; returns the run's warnings."""
    warnings = run_warnings(summary)
    summary["warnings"] = warnings
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(out_dir / "timeseries.csv", rows)
    verdicts = [
        Verdict(f"threshold {t['threshold']}", t["limit"], t["measured"], t["passed"])
        for t in summary.get("thresholds", [])
    ]
    write_report(
        out_dir,
        ReportData(
            title=title or f"payswitch load — {out_dir.name}",
            rows=rows,
            summary=summary,
            config=config or summary["run"],
            verdicts=verdicts or None,
            warnings=warnings,
            histograms=dict(histograms),
            # A merged run's buckets already end where each run's load ended.
            duration_s=None if summary["run"].get("merged_from") else float(
                summary["run"].get("interrupted_at_s") or summary["run"]["duration_s"]),
            notes=[
                "Offered is the rate shape's schedule; achieved counts replies received in "
                "each second. Latency is measured from each request's intended send time "
                "(no coordinated omission); the generator's timer granularity is 1 ms. "
                "Percentiles come from HdrHistograms merged exactly across generator "
                "processes (3 significant digits). Requests never answered (no_reply, "
                "connection_lost) are in them too, at what they had waited when the "
                "generator gave up on them: a lower bound.",
            ],
        ),
    )
    return warnings


def print_summary(
    summary: Mapping[str, Any],
    out_dir: Path,
    console: Console,
    warnings: Sequence[str],
    results: Sequence[ThresholdResult] = (),
) -> None:
    totals, latency, gen = summary["totals"], summary["latency_ms"], summary["generator"]
    console.print()
    console.print(
        f"offered: {totals['offered']:,} ({totals['offered_rate']:,.0f}/s)  sent: "
        f"{totals['sent']:,} (+{totals['malformed_sent']:,} malformed frames)  replies: "
        f"{totals['replies']:,} ({totals['achieved_rate']:,.0f}/s)",
        highlight=False,
    )
    console.print(
        f"latency (from intended send time): p50 {latency['p50']:.2f} ms, p90 "
        f"{latency['p90']:.2f} ms, p99 {latency['p99']:.2f} ms, p99.9 {latency['p99.9']:.2f}"
        f" ms, max {latency['max']:.2f} ms",
        highlight=False,
    )
    admitted = summary.get("latency_admitted_ms")
    if admitted and admitted.get("count", 0) < latency.get("count", 0):
        console.print(
            f"  answered with a result ({admitted['count']:,}; refusals left out): p50 "
            f"{admitted['p50']:.2f} ms, p99 {admitted['p99']:.2f} ms, p99.9 "
            f"{admitted['p99.9']:.2f} ms",
            highlight=False,
        )
    never = int(totals.get("unanswered", 0)) + int(totals.get("connection_lost", 0))
    if never:
        console.print(
            f"  including {never:,} requests never answered, at what they had waited when "
            "given up on (a lower bound)",
            highlight=False,
        )
    for channel, figures in summary.get("latency_by_channel_ms", {}).items():
        console.print(
            f"  {channel}: p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms, p99.9 "
            f"{figures['p99.9']:.2f} ms ({figures['count']:,} replies)",
            highlight=False,
        )
    console.print(f"statuses: {totals['statuses']}", highlight=False)
    planted = totals.get("planted_errors", {})
    console.print(f"errors by code: {totals['errors'] or 0}"
                  + (f" (planted on purpose: {planted})" if planted else ""), highlight=False)
    console.print(
        f"generator: {gen['lagged']:,} requests sent > {gen['lag_warn_ms']:.0f} ms late, max lag "
        f"{gen['max_lag_ms']:.1f} ms; cpu {gen['cpu_s']:.2f} s, "
        f"{gen['replies_per_cpu_s']:,.0f} replies per CPU-second",
        highlight=False,
    )
    for warning in warnings:
        if console.is_terminal:
            console.print(Panel(warning, style="bold white on red", title="WARNING"))
        else:
            console.print(f"WARNING: {warning}", style="bold red", highlight=False)
    console.print(f"outputs: {out_dir}/ (summary.json, timeseries.csv, latency.hlog, index.html)")
    if results:
        for result in results:
            console.print(result.line(), style=None if result.passed else "bold red",
                          highlight=False)
        failed = [r.threshold.text for r in results if not r.passed]
        console.print(
            f"thresholds: FAIL ({', '.join(failed)})" if failed
            else f"thresholds: pass ({len(results)})",
            style="bold red" if failed else "bold green", highlight=False,
        )
