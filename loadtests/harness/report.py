"""Run reports: one self-contained ``index.html`` per run, with plots drawn as inline SVG.

The file opens offline and can be attached to a ticket: no JavaScript, no CDN, no
external fonts or images (charts: loadtests/harness/svgplot.py). From the top:

* warnings (generator behind schedule, requests shed, failures) and the verdict
  (thresholds or scenario assertions);
* the summary as tables: requests, outcomes (planted errors marked as such), latency
  percentiles overall and per channel, outcomes per channel;
* throughput, offered vs achieved; outcomes per second (every status and error code);
* latency percentiles over time, p99 per channel over time, and the percentile
  distribution from the whole-run HdrHistograms;
* breaker state per endpoint and fault windows (scenarios), shaded on every time plot;
* the generator's own figures, the environment (host, CPU, cores, git revision, versions,
  wall-clock start) and the configuration.

Rates are per second of *load*: a bucket cut short by the end of the run is divided by
its active length, and the drain after the last send is not drawn as a rate (no cliff).

Callers (``payswitch load``, scenario runs, ``payswitch report merge``) build a
:class:`ReportData` and call :func:`write_report`. The per-second rows and their CSV are
loadtests/harness/timeseries.py.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtests.harness.svgplot import (
    PALETTE,
    BreakerSpan,
    FaultWindow,
    Series,
    breaker_timeline,
    line_chart,
    percentile_chart,
    stacked_chart,
)
from loadtests.harness.timeseries import SecondRow

STATUS_ORDER = ("approved", "declined", "reversed", "failed", "unknown")
OUTCOME_COLOURS = {
    "approved": "#16a34a", "declined": "#f59e0b", "reversed": "#0891b2", "failed": "#dc2626",
    "unknown": "#9333ea", "overloaded": "#7f1d1d", "unavailable": "#be185d",
    "no_reply": "#000000", "not sent (overrun)": "#475569",
}
PLANTED_COLOURS = ("#94a3b8", "#cbd5e1", "#64748b")
LATENCY_PERCENTILES = ("p50", "p90", "p99", "p99.9", "p99.99", "max", "mean")
#: Buckets whose load-time is shorter than this are not drawn as rates.
MIN_RATE_SPAN_S = 0.05
#: Buckets shorter than this are not drawn as reply rates.
MIN_REPLY_SPAN_S = 0.25


@dataclass
class Verdict:
    assertion: str
    expected: str
    measured: str
    passed: bool


@dataclass
class ReportData:
    title: str
    rows: Sequence[SecondRow]
    summary: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    verdicts: Sequence[Verdict | tuple[str, str, str, bool]] | None = None
    breaker_states: Sequence[BreakerSpan] | None = None
    fault_windows: Sequence[FaultWindow] | None = None
    warnings: Sequence[str] = ()
    notes: Sequence[str] = ()
    #: Whole-run latency HdrHistograms: None for all channels, else per channel.
    histograms: Mapping[str | None, Any] = field(default_factory=dict)
    #: The planned length of the load (the drain after it is not drawn as a rate).
    duration_s: float | None = None


# --- HTML ----------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px; color: #0f172a; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #475569; margin-bottom: 16px; }
svg text { font: 12px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: #334155; }
svg .title { font-size: 14px; font-weight: 600; fill: #0f172a; }
svg .label { fill: #475569; } svg .fault { fill: #92400e; font-size: 11px; }
svg .grid { stroke: #e2e8f0; stroke-width: 1; } svg .frame { fill: none; stroke: #94a3b8; }
table { border-collapse: collapse; margin: 6px 0 12px; }
td, th { border: 1px solid #cbd5e1; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; } td.num, th.num { text-align: right;
  font-variant-numeric: tabular-nums; }
table.inner td, table.inner th { padding: 2px 8px; }
.pass { color: #166534; font-weight: 700; } .fail { color: #b91c1c; font-weight: 700; }
.warn { border: 3px solid #dc2626; background: #fef2f2; color: #991b1b; padding: 10px 14px;
        font-weight: 700; margin: 10px 0; }
.planted { color: #64748b; font-style: italic; }
.note { color: #475569; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 10px; overflow-x: auto; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _human(key: object) -> str:
    """``achieved_rate`` → ``achieved rate`` (keys read as words, never dotted paths)."""
    return str(key).replace("_", " ")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "—"
    if isinstance(value, list | tuple) and all(not isinstance(v, Mapping) for v in value):
        return ", ".join(_value(v) for v in value) or "—"
    return str(value)


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def readable_table(data: Mapping[str, Any]) -> str:
    """Any mapping as a two-column table; nested mappings and lists of mappings nest."""
    cells = []
    for key, value in data.items():
        cls = ' class="num"' if _is_num(value) else ""
        cells.append(f"<tr><th>{_e(_human(key))}</th><td{cls}>{_cell(value)}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _cell(value: object) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "—"
        return readable_table(value).replace("<table>", '<table class="inner">', 1)
    if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{_e(_human(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(
                f"<td{' class=num' if _is_num(v.get(c)) else ''}>{_e(_value(v.get(c)))}</td>"
                for c in columns
            ) + "</tr>"
            for v in value
        )
        return f'<table class="inner"><tr>{head}</tr>{body}</table>'
    return _e(_value(value))


_NUMERIC = re.compile(r"^[0-9,.%—-]+$")


def _grid(header: Sequence[str], rows: Sequence[Sequence[object]], first_th: bool = True) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    out = [f"<table><tr>{head}</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == 0 and first_th:
                cells.append(f"<th>{cell}</th>")  # already escaped HTML
            else:
                numeric = _is_num(cell) or (isinstance(cell, str) and _NUMERIC.match(cell))
                cls = ' class="num"' if numeric else ""
                cells.append(f"<td{cls}>{_e(_value(cell)) if _is_num(cell) else cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _share(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "—"


def _verdict_table(verdicts: Sequence[Verdict | tuple[str, str, str, bool]]) -> str:
    rows = []
    for v in verdicts:
        verdict = v if isinstance(v, Verdict) else Verdict(*v)
        mark = '<td class="pass">PASS</td>' if verdict.passed else '<td class="fail">FAIL</td>'
        rows.append(
            f"<tr><td>{_e(verdict.assertion)}</td><td>{_e(verdict.expected)}</td>"
            f"<td>{_e(verdict.measured)}</td>{mark}</tr>"
        )
    return (
        "<table><tr><th>assertion</th><th>expected</th><th>measured</th><th>result</th></tr>"
        + "".join(rows)
        + "</table>"
    )


#: Summary keys drawn by their own sections (the rest go to "Other figures").
_OWN_SECTIONS = {"run", "environment", "totals", "latency_ms", "latency_by_channel_ms",
                 "generator", "by_channel", "processes", "files", "failures", "warnings",
                 "thresholds", "verdict", "verdicts"}


def _requests_table(totals: Mapping[str, Any]) -> str:
    planted_sent = totals.get("planted_sent", {})
    sent = f"{totals.get('sent', 0):,} payments"
    if totals.get("malformed_sent"):
        sent += f" + {totals['malformed_sent']:,} malformed frames (planted)"
    if planted_sent.get("invalid"):
        sent += f"; {planted_sent['invalid']:,} invalid payments planted among them"
    rows: list[tuple[str, str]] = [
        ("offered (the schedule)",
         f"{totals.get('offered', 0):,} ({totals.get('offered_rate', 0.0):,.1f}/s)"),
        ("sent", sent),
        ("replies",
         f"{totals.get('replies', 0):,} ({totals.get('achieved_rate', 0.0):,.1f}/s achieved)"),
        ("replays (idempotent duplicates)", f"{totals.get('replays', 0):,}"),
    ]
    missing = [
        (label, int(totals.get(key, 0)))
        for key, label in (("unanswered", "no reply before the drain timeout"),
                           ("connection_lost", "connection lost"),
                           ("dropped_overrun", "not sent (too many outstanding)"))
    ]
    for label, n in missing:
        if n:
            rows.append((label, f"{n:,}"))
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + (
        "</table>"
    )


def _outcomes_table(totals: Mapping[str, Any]) -> str:
    statuses = totals.get("statuses", {})
    errors = totals.get("errors", {})
    planted = totals.get("planted_errors", {})
    answered = sum(statuses.values()) + sum(errors.values())
    rows: list[list[object]] = []
    for status in [*STATUS_ORDER, *sorted(set(statuses) - set(STATUS_ORDER))]:
        if status in statuses:
            n = statuses[status]
            rows.append([_e(status), n, _share(n, answered), "payment status"])
    for code, n in sorted(errors.items()):
        note = "error reply"
        p = planted.get(code, 0)
        if p:
            note = (f'<span class="planted">{p:,} planted on purpose by the workload'
                    + (f", {n - p:,} not" if n > p else "") + "</span>")
        elif code in ("no_reply", "connection_lost", "not_sent_overrun"):
            note = "no answer"
        rows.append([_e(code), n, _share(n, answered), note])
    return _grid(["outcome", "count", "share", "note"], rows)


def _latency_table(summary: Mapping[str, Any]) -> str:
    rows: list[list[object]] = []
    scopes = [("all channels", summary.get("latency_ms", {}))]
    scopes += list(summary.get("latency_by_channel_ms", {}).items())
    for name, figures in scopes:
        if not figures:
            continue
        rows.append([_e(name), figures.get("count", 0),
                     *(f"{float(figures.get(k, 0.0)):,.3f}" for k in LATENCY_PERCENTILES)])
    # Requests never answered are in the count too, at the time they waited: a lower bound.
    return _grid(["scope", "requests timed", *LATENCY_PERCENTILES], rows)


def _by_channel_table(by_channel: Mapping[str, int]) -> str:
    table: dict[str, dict[str, int]] = {}
    for key, n in by_channel.items():
        channel, _, status = key.partition("/")
        table.setdefault(channel, {})[status] = n
    statuses = [s for s in STATUS_ORDER if any(s in v for v in table.values())]
    statuses += sorted({s for v in table.values() for s in v} - set(statuses))
    rows = [[_e(ch), *(v.get(s, 0) for s in statuses)] for ch, v in sorted(table.items())]
    return _grid(["channel", *statuses], rows)


def _generator_table(gen: Mapping[str, Any], processes: Sequence[Mapping[str, Any]]) -> str:
    behind = gen.get("behind_schedule")
    rows = [
        ("behind schedule", ("YES" if behind else "no")
         + (f" ({gen.get('behind_seconds', 0)} second(s))" if behind else "")),
        (f"requests sent > {gen.get('lag_warn_ms', 10):g} ms late", f"{gen.get('lagged', 0):,}"),
        ("max lag behind schedule", f"{gen.get('max_lag_ms', 0.0):,.1f} ms"),
        ("generator CPU", f"{gen.get('cpu_s', 0.0):,.2f} s "
         f"({gen.get('replies_per_cpu_s', 0.0):,.0f} replies per CPU-second)"),
    ]
    out = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    out += "</table>"
    if processes:
        out += "<h3>Generator processes</h3>" + _cell(list(processes))
    return out


def _environment_table(env: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    rows = [
        ("started (UTC)", env.get("started_utc", "—")),
        ("host", env.get("host", "—")),
        ("OS", env.get("os", "—")),
        ("CPU", env.get("cpu", "—")),
        ("cores", f"{env.get('cores', '—')} ({env.get('cores_usable', '—')} usable by the run)"),
        ("load average at the end", _value(env.get("load_average", []))),
        ("git revision", env.get("git_revision", "—")),
        ("Python", env.get("python", "—")),
        ("versions", versions or "—"),
    ]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + (
        "</table>"
    )


def offered_rows(
    rows: Sequence[SecondRow], duration_s: float | None
) -> list[tuple[SecondRow, float]]:
    """Rows with their seconds of *load* (for offered rates): a bucket cut short by the end
    of the schedule counts only its share; buckets after it (the drain) offered nothing
    and are left out instead of drawn as a drop to zero."""
    out = []
    for r in rows:
        end = r.end_s if duration_s is None else min(r.end_s, duration_s)
        span = end - r.start_s
        if span >= MIN_RATE_SPAN_S:
            out.append((r, span))
    return out


def reply_rows(rows: Sequence[SecondRow]) -> list[tuple[SecondRow, float]]:
    """Rows with their wall-clock length (for reply rates: replies keep arriving after the
    last send). A sliver of a bucket (the end of a short drain) is left out: a handful of
    replies over a few ms is no rate."""
    return [(r, r.end_s - r.start_s) for r in rows if r.end_s - r.start_s >= MIN_REPLY_SPAN_S]


def _outcome_layers(rated: Sequence[tuple[SecondRow, float]]) -> list[Layer]:
    """Per-second outcome rates: statuses, real errors by code, planted errors, not sent."""
    statuses = sorted({s for r, _ in rated for s in r.statuses},
                      key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s))
    codes = sorted({c for r, _ in rated for c, n in r.errors.items()
                    if n > r.planted.get(c, 0)})
    planted = sorted({c for r, _ in rated for c in r.planted})
    layers: list[Layer] = []
    for i, status in enumerate(statuses):
        colour = OUTCOME_COLOURS.get(status, PALETTE[i % len(PALETTE)])
        layers.append((status, [r.statuses.get(status, 0) / span for r, span in rated],
                       colour))
    for i, code in enumerate(codes):
        colour = OUTCOME_COLOURS.get(code, PALETTE[(i + 3) % len(PALETTE)])
        layers.append((f"error: {code}",
                       [(r.errors.get(code, 0) - r.planted.get(code, 0)) / span
                        for r, span in rated], colour))
    if any(r.dropped for r, _ in rated):
        layers.append(("not sent (overrun)", [r.dropped / span for r, span in rated],
                       OUTCOME_COLOURS["not sent (overrun)"]))
    for i, code in enumerate(planted):
        layers.append((f"{code} (planted)",
                       [r.planted.get(code, 0) / span for r, span in rated],
                       PLANTED_COLOURS[i % len(PLANTED_COLOURS)]))
    return layers


Curve = tuple[str, list[tuple[float, float]], str]
Layer = tuple[str, list[float], str]


def _distribution_curves(histograms: Mapping[str | None, Any]) -> list[Curve]:
    from loadtests.harness.hlog import percentile_points

    curves = []
    if histograms.get(None) is not None:
        curves.append(("all channels", percentile_points(histograms[None]), "#0f172a"))
    channels = sorted(k for k in histograms if k is not None)
    for i, channel in enumerate(channels):
        curves.append(
            (channel, percentile_points(histograms[channel]), PALETTE[i % len(PALETTE)])
        )
    return [c for c in curves if c[1]]


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string (no external references)."""
    rows = list(data.rows)
    windows = list(data.fault_windows or ())
    spans = list(data.breaker_states or ())
    summary = data.summary
    x_max = max(
        [r.end_s for r in rows] + [end for _, _, end in windows] + [s[3] for s in spans]
        + [data.duration_s or 0.0, 1.0]
    )
    offered = offered_rows(rows, data.duration_s)
    oxs = [r.start_s + span / 2 for r, span in offered]
    rated = reply_rows(rows)
    rxs = [r.start_s + span / 2 for r, span in rated]
    xs = [(r.start_s + r.end_s) / 2 for r in rows]
    throughput = line_chart(
        "Throughput: offered vs achieved",
        [
            Series("offered", oxs, [r.offered / span for r, span in offered], "#64748b",
                   dashed=True),
            Series("achieved", rxs, [r.achieved / span for r, span in rated], PALETTE[0]),
        ],
        x_max,
        "requests / s",
        fault_windows=windows,
    )
    layers = _outcome_layers(rated)
    outcomes = stacked_chart("Outcomes per second: statuses and errors by code", rxs, layers,
                             x_max, "replies / s", fault_windows=windows)
    others = [(name, ys, colour) for name, ys, colour in layers if name != "approved"]
    errors = line_chart(
        "Errors by code and statuses other than approved, per second",
        [Series(name, rxs, ys, colour) for name, ys, colour in others]
        or [Series("errors", rxs, [0.0 for _ in rxs], PALETTE[1])],
        x_max, "replies / s", fault_windows=windows,
    )
    latency = line_chart(
        "Latency percentiles (from intended send time)",
        [
            Series("p50", xs, [r.p50_ms for r in rows], PALETTE[2]),
            Series("p99", xs, [r.p99_ms for r in rows], PALETTE[4]),
            Series("p99.9", xs, [r.p999_ms for r in rows], PALETTE[1]),
        ],
        x_max,
        "ms (log scale)",
        log_y=True,
        fault_windows=windows,
    )
    channels = sorted({ch for r in rows for ch in r.channel_p99_ms})
    per_channel = line_chart(
        "p99 latency per channel",
        [Series(ch, xs, [r.channel_p99_ms.get(ch, 0.0) for r in rows],
                PALETTE[i % len(PALETTE)])
         for i, ch in enumerate(channels)],
        x_max, "ms (log scale)", log_y=True, fault_windows=windows,
    ) if channels else ""
    curves = _distribution_curves(data.histograms)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(data.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(data.title)}</h1>",
        '<div class="sub">payswitch run report · self-contained · latency measured from each'
        " request's intended send time</div>",
    ]
    env = summary.get("environment")
    if env:
        parts.append(f'<div class="sub">started {_e(env.get("started_utc", "?"))} on '
                     f'{_e(env.get("host", "?"))} ({_e(env.get("cores", "?"))} cores, '
                     f'{_e(env.get("cpu", "?"))}), revision {_e(env.get("git_revision", "?"))}'
                     "</div>")
    parts += [f'<div class="warn">{_e(w)}</div>' for w in data.warnings]
    if data.verdicts:
        failed = sum(
            1 for v in data.verdicts if not (v.passed if isinstance(v, Verdict) else v[3])
        )
        outcome = (
            '<span class="pass">PASS</span>'
            if not failed
            else f'<span class="fail">FAIL ({failed} assertion(s))</span>'
        )
        parts += [f"<h2>Verdict: {outcome}</h2>", _verdict_table(data.verdicts)]
    totals = summary.get("totals")
    if totals:
        parts += ["<h2>Summary</h2>", '<div class="cols"><div><h3>Requests</h3>',
                  _requests_table(totals), "</div><div><h3>Outcomes</h3>",
                  _outcomes_table(totals), "</div></div>"]
        if summary.get("latency_ms"):
            parts += ["<h3>Latency, ms from intended send time (whole run, HdrHistogram)</h3>",
                      _latency_table(summary)]
        if summary.get("by_channel"):
            parts += ["<h3>Payment statuses per channel</h3>",
                      _by_channel_table(summary["by_channel"])]
    parts += ["<h2>Throughput</h2>", throughput, "<h2>Outcomes</h2>", outcomes, errors]
    parts += ["<h2>Latency</h2>", latency]
    if per_channel:
        parts.append(per_channel)
    if curves:
        parts.append(percentile_chart("Latency by percentile (whole run, HdrHistogram)", curves))
    if spans:
        parts += ["<h2>Breakers</h2>", breaker_timeline(spans, x_max, windows)]
    if windows:
        parts.append("<h2>Fault windows</h2><table><tr><th>fault</th><th>from s</th>"
                     "<th>to s</th></tr>")
        parts += [
            f"<tr><td>{_e(label)}</td><td class='num'>{start:g}</td>"
            f"<td class='num'>{end:g}</td></tr>"
            for label, start, end in windows
        ]
        parts.append("</table>")
    other = {k: v for k, v in summary.items() if k not in _OWN_SECTIONS}
    if not totals and summary:
        parts += ["<h2>Summary</h2>", readable_table(summary)]
    elif other:
        parts += ["<h2>Other figures</h2>", readable_table(other)]
    if summary.get("generator"):
        parts += ["<h2>Generator</h2>",
                  _generator_table(summary["generator"], summary.get("processes", []))]
    if env:
        parts += ["<h2>Environment</h2>", _environment_table(env)]
    parts += [f'<p class="note">{_e(n)}</p>' for n in data.notes]
    if data.config:
        parts += [
            "<h2>Configuration</h2>",
            f"<pre>{_e(json.dumps(data.config, indent=2, default=str))}</pre>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, data: ReportData) -> Path:
    """``index.html`` in ``out_dir``. A caller that passes no histograms or warnings (a
    scenario) still gets the percentile distribution from the run's ``latency.hlog`` there
    and the warnings its summary carries."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hlog = out / "latency.hlog"
    if not data.histograms and hlog.is_file():
        from loadtests.harness.hlog import read_log, total_of

        _, intervals = read_log(hlog)
        tags = sorted({i.tag for i in intervals if i.tag is not None})
        data = replace(data, histograms={None: total_of(intervals)}
                       | {tag: total_of(intervals, tag) for tag in tags})
    if not data.warnings and data.summary.get("warnings"):
        data = replace(data, warnings=list(data.summary["warnings"]))
    path = out / "index.html"
    path.write_text(render_report(data), encoding="utf-8")
    return path
