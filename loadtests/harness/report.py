"""Run reports: one self-contained ``index.html`` per run, with plots drawn as inline SVG.

The file opens offline and can be attached to a ticket: no JavaScript, no CDN, no
external fonts or images. Every plot is SVG generated here from the run's per-second
time series:

* throughput, offered vs achieved (requests per second);
* latency percentiles over time (p50, p99, p99.9; log scale);
* errors per second by code;
* breaker state per endpoint as a timeline, when the run has breaker data;

with fault windows shaded on every time plot, then the summary, the verdict table (for
scenarios) and the run's configuration.

Callers (``payswitch load``, scenario runs) build a :class:`ReportData` and call
:func:`write_report`. :func:`rows_from_csv` reads back a load run's ``timeseries.csv``.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Fixed per-column names in the time-series CSV; ``error_<code>`` and ``status_<s>`` vary.
CSV_FIXED = (
    "second", "start_s", "end_s", "offered", "sent", "achieved", "errors",
    "p50_ms", "p99_ms", "p999_ms", "max_ms", "max_lag_ms", "lagged", "dropped",
)


@dataclass
class SecondRow:
    """One 1 s bucket of a run (counts in the bucket; latency of replies received in it)."""

    second: int  # 1-based: bucket k covers [k-1, k) seconds after start
    start_s: float
    end_s: float
    offered: float
    sent: int
    achieved: int
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    max_lag_ms: float = 0.0
    lagged: int = 0
    dropped: int = 0
    #: Error replies (by code) to requests planted on purpose: a subset of ``errors``.
    planted: dict[str, int] = field(default_factory=dict)
    channel_p50_ms: dict[str, float] = field(default_factory=dict)
    channel_p99_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Verdict:
    assertion: str
    expected: str
    measured: str
    passed: bool


BreakerSpan = tuple[str, str, float, float]  # (endpoint, state, start_s, end_s)
FaultWindow = tuple[str, float, float]  # (label, start_s, end_s)


@dataclass
class ReportData:
    title: str
    rows: Sequence[SecondRow]
    summary: Mapping[str, object] = field(default_factory=dict)
    config: Mapping[str, object] = field(default_factory=dict)
    verdicts: Sequence[Verdict | tuple[str, str, str, bool]] | None = None
    breaker_states: Sequence[BreakerSpan] | None = None
    fault_windows: Sequence[FaultWindow] | None = None
    warnings: Sequence[str] = ()
    notes: Sequence[str] = ()
    #: Whole-run latency HdrHistograms: None for all channels, else per channel.
    histograms: Mapping[str | None, Any] = field(default_factory=dict)
    #: The planned length of the load (rates of the bucket after it are not plotted).
    duration_s: float | None = None


# --- SVG plotting ------------------------------------------------------------------------------

WIDTH = 1100
PLOT_H = 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 180, 34, 40
PALETTE = (
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d",
    "#4d7c0f", "#7c2d12", "#475569",
)
STATE_COLOURS = {
    "closed": "#16a34a",
    "open": "#dc2626",
    "half_open": "#f59e0b",
    "half-open": "#f59e0b",
    "forced_open": "#7f1d1d",
    "disabled": "#94a3b8",
}
FAULT_FILL = "#f59e0b"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k steps) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    dashed: bool = False
    width: float = 1.8


class _Frame:
    """Maps data coordinates to pixels for one plot."""

    def __init__(
        self, x_max: float, y_lo: float, y_hi: float, log_y: bool, height: int = PLOT_H
    ) -> None:
        self.x_max = max(x_max, 1e-9)
        self.log_y = log_y
        self.y_lo = y_lo
        self.y_hi = y_hi if y_hi > y_lo else y_lo + 1
        self.left = MARGIN_L
        self.top = MARGIN_T
        self.w = WIDTH - MARGIN_L - MARGIN_R
        self.h = height

    def x(self, value: float) -> float:
        return self.left + min(max(value, 0.0), self.x_max) / self.x_max * self.w

    def y(self, value: float) -> float:
        if self.log_y:
            lo, hi = math.log10(self.y_lo), math.log10(self.y_hi)
            v = math.log10(min(max(value, self.y_lo), self.y_hi))
            frac = (v - lo) / (hi - lo)
        else:
            frac = (min(max(value, self.y_lo), self.y_hi) - self.y_lo) / (self.y_hi - self.y_lo)
        return self.top + self.h - frac * self.h


def _x_axis(frame: _Frame, x_label: str) -> list[str]:
    parts = []
    bottom = frame.top + frame.h
    for tick in nice_ticks(0, frame.x_max, 10):
        px = frame.x(tick)
        parts.append(
            f'<line x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{_fmt(tick)}</text>'
        )
    parts.append(
        f'<text x="{frame.left + frame.w / 2:.1f}" y="{bottom + 34}" text-anchor="middle"'
        f' class="label">{_e(x_label)}</text>'
    )
    parts.append(
        f'<rect x="{frame.left}" y="{frame.top}" width="{frame.w}" height="{frame.h}"'
        ' class="frame"/>'
    )
    return parts


def _y_axis(frame: _Frame, y_label: str) -> list[str]:
    parts = []
    if frame.log_y:
        ticks = []
        exp = math.floor(math.log10(frame.y_lo))
        while 10**exp <= frame.y_hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10**exp
                if frame.y_lo <= v <= frame.y_hi:
                    ticks.append(float(v))
            exp += 1
    else:
        ticks = nice_ticks(frame.y_lo, frame.y_hi, 5)
    right = frame.left + frame.w
    for tick in ticks:
        py = frame.y(tick)
        parts.append(
            f'<line x1="{frame.left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" class="grid"/>'
            f'<text x="{frame.left - 6}" y="{py + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    cy = frame.top + frame.h / 2
    parts.append(
        f'<text x="16" y="{cy:.1f}" transform="rotate(-90 16 {cy:.1f})" text-anchor="middle"'
        f' class="label">{_e(y_label)}</text>'
    )
    return parts


def _fault_shading(frame: _Frame, windows: Sequence[FaultWindow] | None) -> list[str]:
    parts = []
    for label, start, end in windows or ():
        x0, x1 = frame.x(start), frame.x(end)
        parts.append(
            f'<rect x="{x0:.1f}" y="{frame.top}" width="{max(x1 - x0, 1.5):.1f}"'
            f' height="{frame.h}" fill="{FAULT_FILL}" fill-opacity="0.18"'
            f' stroke="{FAULT_FILL}" stroke-opacity="0.6"><title>{_e(label)}: '
            f"{start:g}–{end:g} s</title></rect>"
            f'<text x="{x0 + 3:.1f}" y="{frame.top + 12}" class="fault">{_e(label)}</text>'
        )
    return parts


def _legend(items: Iterable[tuple[str, str, bool]]) -> list[str]:
    parts = []
    x = WIDTH - MARGIN_R + 14
    for i, (name, colour, dashed) in enumerate(items):
        y = MARGIN_T + 8 + i * 18
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}"'
            f' stroke-width="2.5"{dash}/><text x="{x + 30}" y="{y + 4}">{_e(name)}</text>'
        )
    return parts


def line_chart(
    title: str,
    series: Sequence[Series],
    x_max: float,
    y_label: str,
    *,
    x_label: str = "seconds since start",
    log_y: bool = False,
    fault_windows: Sequence[FaultWindow] | None = None,
) -> str:
    """An SVG line chart; x is seconds, series are (x, y) points."""
    values = [y for s in series for y in s.ys if math.isfinite(y)]
    height = PLOT_H + MARGIN_T + MARGIN_B
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}"'
        f' width="{WIDTH}" height="{height}" role="img" aria-label="{_e(title)}">'
        f'<text x="{MARGIN_L}" y="20" class="title">{_e(title)}</text>'
    )
    if not values:
        return head + (
            f'<text x="{WIDTH / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>'
        )
    if log_y:
        positive = [v for v in values if v > 0]
        lo = 10 ** math.floor(math.log10(min(positive))) if positive else 0.01
        hi = 10 ** math.ceil(math.log10(max(positive))) if positive else 1.0
        frame = _Frame(x_max, lo, max(hi, lo * 10), True)
    else:
        top = max(values)
        ticks = nice_ticks(0, top if top > 0 else 1, 5)
        frame = _Frame(x_max, 0.0, max(ticks[-1], top, 1e-9), False)
    parts = [head]
    parts += _fault_shading(frame, fault_windows)
    parts += _x_axis(frame, x_label)
    parts += _y_axis(frame, y_label)
    for s in series:
        points = " ".join(
            f"{frame.x(x):.1f},{frame.y(y):.1f}"
            for x, y in zip(s.xs, s.ys, strict=True)
            if math.isfinite(y) and (not log_y or y > 0)
        )
        if not points:
            continue
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{s.colour}"'
            f' stroke-width="{s.width}"{dash} stroke-linejoin="round"/>'
        )
    parts += _legend((s.name, s.colour, s.dashed) for s in series)
    parts.append("</svg>")
    return "".join(parts)


def breaker_timeline(
    spans: Sequence[BreakerSpan],
    x_max: float,
    fault_windows: Sequence[FaultWindow] | None = None,
) -> str:
    """One row per endpoint, coloured by breaker state over time."""
    endpoints = list(dict.fromkeys(endpoint for endpoint, _, _, _ in spans))
    row_h = 26
    inner_h = max(len(endpoints), 1) * row_h
    height = inner_h + MARGIN_T + MARGIN_B
    frame = _Frame(x_max, 0, 1, False, height=inner_h)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}"'
        f' width="{WIDTH}" height="{height}" role="img" aria-label="breaker state">'
        f'<text x="{MARGIN_L}" y="20" class="title">Breaker state per endpoint</text>'
    ]
    parts += _fault_shading(frame, fault_windows)
    parts += _x_axis(frame, "seconds since start")
    for i, endpoint in enumerate(endpoints):
        y = MARGIN_T + i * row_h
        parts.append(
            f'<text x="{MARGIN_L - 6}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
            f"{_e(endpoint)}</text>"
        )
        for name, state, start, end in spans:
            if name != endpoint:
                continue
            x0, x1 = frame.x(start), frame.x(end)
            colour = STATE_COLOURS.get(state.lower(), "#64748b")
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1.0):.1f}"'
                f' height="{row_h - 8}" fill="{colour}"><title>{_e(endpoint)}: {_e(state)}'
                f" {start:g}–{end:g} s</title></rect>"
            )
    states = list(dict.fromkeys(state for _, state, _, _ in spans))
    parts += _legend((s, STATE_COLOURS.get(s.lower(), "#64748b"), False) for s in states)
    parts.append("</svg>")
    return "".join(parts)


# --- HTML ----------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px; color: #0f172a; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #475569; margin-bottom: 16px; }
svg text { font: 12px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: #334155; }
svg .title { font-size: 14px; font-weight: 600; fill: #0f172a; }
svg .label { fill: #475569; } svg .fault { fill: #92400e; font-size: 11px; }
svg .grid { stroke: #e2e8f0; stroke-width: 1; } svg .frame { fill: none; stroke: #94a3b8; }
table { border-collapse: collapse; margin: 6px 0 12px; }
td, th { border: 1px solid #cbd5e1; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #166534; font-weight: 700; } .fail { color: #b91c1c; font-weight: 700; }
.warn { border: 3px solid #dc2626; background: #fef2f2; color: #991b1b; padding: 10px 14px;
        font-weight: 700; margin: 10px 0; }
.note { color: #475569; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 10px; overflow-x: auto; }
"""


def _flatten(data: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _flatten(value, path + ".")
        else:
            rows.append((path, value))
    return rows


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def _kv_table(data: Mapping[str, object]) -> str:
    cells = []
    for key, value in _flatten(data):
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        cls = ' class="num"' if numeric else ""
        cells.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(_value(value))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


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


def _mid(row: SecondRow) -> float:
    return (row.start_s + row.end_s) / 2


def _per_s(count: float, row: SecondRow) -> float:
    return count / max(row.end_s - row.start_s, 1e-3)


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string (no external references)."""
    rows = list(data.rows)
    windows = list(data.fault_windows or ())
    spans = list(data.breaker_states or ())
    x_max = max(
        [r.end_s for r in rows] + [end for _, _, end in windows] + [s[3] for s in spans] + [1.0]
    )
    xs = [_mid(r) for r in rows]
    throughput = line_chart(
        "Throughput: offered vs achieved",
        [
            Series("offered", xs, [_per_s(r.offered, r) for r in rows], "#64748b", dashed=True),
            Series("achieved", xs, [_per_s(r.achieved, r) for r in rows], PALETTE[0]),
        ],
        x_max,
        "requests / s",
        fault_windows=windows,
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
    codes = sorted({code for r in rows for code in r.errors})
    error_series = [
        Series(code, xs, [_per_s(r.errors.get(code, 0), r) for r in rows], PALETTE[i % 10])
        for i, code in enumerate(codes)
    ]
    if not error_series:
        error_series = [Series("errors", xs, [0.0 for _ in rows], PALETTE[1])]
    errors = line_chart(
        "Errors by code", error_series, x_max, "errors / s", fault_windows=windows
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(data.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(data.title)}</h1>",
        '<div class="sub">payswitch run report · self-contained · latency measured from each'
        " request's intended send time</div>",
    ]
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
    parts += ["<h2>Throughput</h2>", throughput, "<h2>Latency</h2>", latency]
    parts += ["<h2>Errors</h2>", errors]
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
    if data.summary:
        parts += ["<h2>Summary</h2>", _kv_table(data.summary)]
    parts += [f'<p class="note">{_e(n)}</p>' for n in data.notes]
    if data.config:
        parts += [
            "<h2>Configuration</h2>",
            f"<pre>{_e(json.dumps(data.config, indent=2, default=str))}</pre>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, data: ReportData) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render_report(data), encoding="utf-8")
    return path


# --- time series CSV -----------------------------------------------------------------------


def write_csv(path: str | Path, rows: Sequence[SecondRow]) -> None:
    """One row per second: fixed columns, then ``error_<code>``, ``status_<status>``,
    ``planted_<code>`` (the planted share of ``error_<code>``) and per channel
    ``p50_ms_<channel>``, ``p99_ms_<channel>``."""
    codes = sorted({code for r in rows for code in r.errors})
    statuses = sorted({s for r in rows for s in r.statuses})
    planted = sorted({code for r in rows for code in r.planted})
    channels = sorted({ch for r in rows for ch in r.channel_p99_ms})
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [*CSV_FIXED, *(f"error_{c}" for c in codes), *(f"status_{s}" for s in statuses),
             *(f"planted_{c}" for c in planted), *(f"p50_ms_{ch}" for ch in channels),
             *(f"p99_ms_{ch}" for ch in channels)]
        )
        for r in rows:
            writer.writerow(
                [
                    r.second, f"{r.start_s:.3f}", f"{r.end_s:.3f}", f"{r.offered:.1f}", r.sent,
                    r.achieved, sum(r.errors.values()), f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
                    f"{r.p999_ms:.3f}", f"{r.max_ms:.3f}", f"{r.max_lag_ms:.3f}", r.lagged,
                    r.dropped,
                    *(r.errors.get(c, 0) for c in codes),
                    *(r.statuses.get(s, 0) for s in statuses),
                    *(r.planted.get(c, 0) for c in planted),
                    *(f"{r.channel_p50_ms.get(ch, 0.0):.3f}" for ch in channels),
                    *(f"{r.channel_p99_ms.get(ch, 0.0):.3f}" for ch in channels),
                ]
            )


def rows_from_csv(path: str | Path) -> list[SecondRow]:
    """Read back :func:`write_csv` output (e.g. to re-render a report)."""
    rows = []
    with Path(path).open(newline="") as f:
        for rec in csv.DictReader(f):
            rows.append(
                SecondRow(
                    second=int(rec["second"]),
                    start_s=float(rec["start_s"]),
                    end_s=float(rec["end_s"]),
                    offered=float(rec["offered"]),
                    sent=int(rec["sent"]),
                    achieved=int(rec["achieved"]),
                    errors=_prefixed(rec, "error_", int),
                    statuses=_prefixed(rec, "status_", int),
                    p50_ms=float(rec["p50_ms"]),
                    p99_ms=float(rec["p99_ms"]),
                    p999_ms=float(rec["p999_ms"]),
                    max_ms=float(rec["max_ms"]),
                    max_lag_ms=float(rec["max_lag_ms"]),
                    lagged=int(rec["lagged"]),
                    dropped=int(rec["dropped"]),
                    planted=_prefixed(rec, "planted_", int),
                    channel_p50_ms=_prefixed(rec, "p50_ms_", float),
                    channel_p99_ms=_prefixed(rec, "p99_ms_", float),
                )
            )
    return rows


def _prefixed(rec: Mapping[str, str], prefix: str, kind: Callable[[str], T]) -> dict[str, T]:
    """The columns named ``<prefix><name>`` of one CSV record (empty cells skipped)."""
    return {k[len(prefix):]: kind(v) for k, v in rec.items() if k.startswith(prefix) and v}
