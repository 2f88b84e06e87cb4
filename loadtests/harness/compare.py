"""``payswitch report compare A B``: two load runs side by side.

Percentiles come from each run's HdrHistogram log (exact, any percentile), throughput
and outcome shares from the summaries. Every figure has a direction (lower latency is
better, a higher achieved rate is better), so each difference reads as better, worse or
within :data:`SAME_WITHIN` of the baseline. The terminal gets a table; the HTML page adds
the two percentile distributions and the two time series on shared axes.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtests.harness.hlog import max_ms, pct_ms, percentile_points
from loadtests.harness.report import CSS
from loadtests.harness.runfiles import LoadedRun
from loadtests.harness.svgplot import Series, line_chart, percentile_chart
from loadtests.harness.thresholds import outcome_counts

#: A relative difference smaller than this reads as "same" (run-to-run noise).
SAME_WITHIN = 0.05
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


@dataclass
class Row:
    figure: str
    a: float
    b: float
    unit: str
    #: None: an input or a count, neither better nor worse.
    lower_is_better: bool | None

    @property
    def diff(self) -> float:
        return self.b - self.a

    @property
    def rel(self) -> float | None:
        return None if self.a == 0 else self.diff / self.a

    @property
    def change(self) -> str:
        if self.lower_is_better is None:
            return "—"
        if self.a == self.b:
            return "same"
        rel = self.rel
        if rel is not None and abs(rel) < SAME_WITHIN:
            return "same"
        worse = (self.diff > 0) == self.lower_is_better
        return "worse" if worse else "better"

    def cells(self) -> tuple[str, str, str, str, str]:
        rel = self.rel
        return (
            self.figure,
            _fmt(self.a, self.unit),
            _fmt(self.b, self.unit),
            f"{'+' if self.diff >= 0 else ''}{_fmt(self.diff, self.unit)}"
            + ("" if rel is None else f" ({rel * 100:+.1f}%)"),
            self.change,
        )


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.3f}%"
    if unit == "ms":
        return f"{value:,.3f} ms"
    if unit == "/s":
        return f"{value:,.1f}/s"
    return f"{value:,.0f}"


def _share(run: LoadedRun, key: str) -> float:
    totals = run.summary["totals"]
    requests = max(int(totals["sent"]) + int(totals.get("dropped_overrun", 0)), 1)
    return outcome_counts(run.summary)[key] / requests


def _achieved_share(totals: dict[str, float]) -> float:
    return float(totals["achieved_rate"]) / max(float(totals["offered_rate"]), 1e-9)


def compare_rows(a: LoadedRun, b: LoadedRun) -> list[Row]:
    ta, tb = a.summary["totals"], b.summary["totals"]
    rows = [
        Row("offered rate", float(ta["offered_rate"]), float(tb["offered_rate"]), "/s", None),
        Row("achieved rate", float(ta["achieved_rate"]), float(tb["achieved_rate"]), "/s",
            None),
        Row("achieved / offered", _achieved_share(ta), _achieved_share(tb), "%", False),
        Row("replies", float(ta["replies"]), float(tb["replies"]), "", None),
    ]
    for p in PERCENTILES:
        rows.append(Row(f"p{p:g}", pct_ms(a.histogram, p), pct_ms(b.histogram, p), "ms", True))
    rows.append(Row("max", max_ms(a.histogram), max_ms(b.histogram), "ms", True))
    for key, label in (("errors", "errors (not planted)"), ("failed", "failed or unknown"),
                       ("shed", "shed (overloaded)")):
        rows.append(Row(label, _share(a, key), _share(b, key), "%", True))
    rows.append(Row("generator max lag", float(a.summary["generator"]["max_lag_ms"]),
                    float(b.summary["generator"]["max_lag_ms"]), "ms", True))
    for channel in sorted(set(a.channel_histograms) | set(b.channel_histograms)):
        ha, hb = a.channel_histograms.get(channel), b.channel_histograms.get(channel)
        for p in (50.0, 99.0):
            rows.append(Row(f"{channel} p{p:g}", pct_ms(ha, p) if ha else 0.0,
                            pct_ms(hb, p) if hb else 0.0, "ms", True))
    return rows


def print_comparison(a: LoadedRun, b: LoadedRun, rows: Sequence[Row], console: Console) -> None:
    table = Table(title=f"A: {a.path}\nB: {b.path}", title_justify="left")
    for column, justify in (("figure", "left"), ("A", "right"), ("B", "right"),
                            ("B − A", "right"), ("change", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    styles = {"worse": "bold red", "better": "green", "same": "", "—": ""}
    for row in rows:
        table.add_row(*row.cells(), style=styles[row.change] or None)
    console.print(table)
    worse = [r.figure for r in rows if r.change == "worse"]
    console.print(f"B is worse than A on: {', '.join(worse)}" if worse
                  else "B is not worse than A on any figure (beyond "
                  f"{SAME_WITHIN * 100:.0f}% noise)", highlight=False)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_comparison(a: LoadedRun, b: LoadedRun, rows: Sequence[Row]) -> str:
    colour = {"worse": "fail", "better": "pass", "same": "", "—": ""}
    body = "".join(
        "<tr>" + "".join(
            f"<td{' class=num' if 0 < i < 4 else ''}>{_e(c)}</td>" for i, c in
            enumerate(row.cells()[:4])
        ) + f'<td class="{colour[row.change]}">{row.change}</td></tr>'
        for row in rows
    )
    curves = [("A: " + a.name, percentile_points(a.histogram), "#2563eb"),
              ("B: " + b.name, percentile_points(b.histogram), "#dc2626")]
    x_max = max([r.end_s for r in a.rows] + [r.end_s for r in b.rows] + [1.0])

    def series(run: LoadedRun, label: str, colour: str, attr: str) -> Series:
        rows_ = [r for r in run.rows if r.end_s - r.start_s >= 0.05]
        xs = [(r.start_s + r.end_s) / 2 for r in rows_]
        if attr == "achieved":
            ys = [r.achieved / (r.end_s - r.start_s) for r in rows_]
        else:
            ys = [float(getattr(r, attr)) for r in rows_]
        return Series(f"{label}: {run.name}", xs, ys, colour)

    throughput = line_chart("Achieved throughput", [series(a, "A", "#2563eb", "achieved"),
                                                    series(b, "B", "#dc2626", "achieved")],
                            x_max, "replies / s")
    p99 = line_chart("p99 latency per second", [series(a, "A", "#2563eb", "p99_ms"),
                                                series(b, "B", "#dc2626", "p99_ms")],
                     x_max, "ms (log scale)", log_y=True)

    def describe(label: str, run: LoadedRun) -> str:
        env = run.summary.get("environment", {})
        return (f"<tr><th>{label}</th><td>{_e(run.path)}</td><td>{_e(env.get('started_utc', '?'))}"
                f"</td><td>{_e(env.get('host', '?'))}</td>"
                f"<td>{_e(env.get('git_revision', '?'))}</td></tr>")

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")  # wall: when compared
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>compare {_e(a.name)} vs {_e(b.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>payswitch load: {_e(a.name)} (A) vs {_e(b.name)} (B)</h1>",
        f'<div class="sub">compared {now} · latency from intended send time, percentiles '
        "from each run's HdrHistogram log · change beyond "
        f"{SAME_WITHIN * 100:.0f}% of A reads as better or worse</div>",
        "<table><tr><th></th><th>run</th><th>started (UTC)</th><th>host</th>"
        "<th>git revision</th></tr>", describe("A", a), describe("B", b), "</table>",
        "<h2>Figures</h2><table><tr><th>figure</th><th>A</th><th>B</th><th>B − A</th>"
        f"<th>change</th></tr>{body}</table>",
        "<h2>Latency by percentile</h2>",
        percentile_chart("Latency by percentile (whole run, HdrHistogram)", curves),
        "<h2>Over time</h2>", throughput, p99,
        "</body></html>",
    ])


def write_comparison(a: LoadedRun, b: LoadedRun, rows: Sequence[Row], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_comparison(a, b, rows), encoding="utf-8")
    return out
