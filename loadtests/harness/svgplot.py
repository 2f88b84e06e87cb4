"""Inline SVG charts for the run reports: no JavaScript, no external fonts or images.

* :func:`line_chart`: series over seconds since start (linear or log y);
* :func:`stacked_chart`: series stacked as areas (outcomes per second);
* :func:`percentile_chart`: HdrHistogram-style percentile distribution, x on the
  ``1 / (1 - p)`` log scale so the tail (99%, 99.9%, 99.99%) gets its room;
* :func:`breaker_timeline`: one coloured row per endpoint.

Margins follow the longest label and legend entry, so no name is cut off.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WIDTH = 1100
PLOT_H = 240
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 180, 34, 40
#: Approximate width of one character of the 12 px chart font (for margins).
CHAR_W = 7.0
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

BreakerSpan = tuple[str, str, float, float]  # (endpoint, state, start_s, end_s)
FaultWindow = tuple[str, float, float]  # (label, start_s, end_s)


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


def fmt_number(value: float) -> str:
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
        self,
        x_max: float,
        y_lo: float,
        y_hi: float,
        log_y: bool,
        height: int = PLOT_H,
        left: float = MARGIN_L,
        right: float = MARGIN_R,
        x_min: float = 0.0,
    ) -> None:
        self.x_min = x_min
        self.x_max = max(x_max, x_min + 1e-9)
        self.log_y = log_y
        self.y_lo = y_lo
        self.y_hi = y_hi if y_hi > y_lo else y_lo + 1
        self.left = left
        self.top = MARGIN_T
        self.w = WIDTH - left - right
        self.h = height

    def x(self, value: float) -> float:
        span = self.x_max - self.x_min
        return self.left + (min(max(value, self.x_min), self.x_max) - self.x_min) / span * self.w

    def y(self, value: float) -> float:
        if self.log_y:
            lo, hi = math.log10(self.y_lo), math.log10(self.y_hi)
            v = math.log10(min(max(value, self.y_lo), self.y_hi))
            frac = (v - lo) / (hi - lo)
        else:
            frac = (min(max(value, self.y_lo), self.y_hi) - self.y_lo) / (self.y_hi - self.y_lo)
        return self.top + self.h - frac * self.h


def _legend_margin(names: Iterable[str]) -> float:
    longest = max((len(n) for n in names), default=0)
    return max(MARGIN_R, 14 + 30 + CHAR_W * longest + 10)


def _x_axis(
    frame: _Frame, x_label: str, ticks: Sequence[tuple[float, str]] | None = None
) -> list[str]:
    parts = []
    bottom = frame.top + frame.h
    if ticks is None:
        ticks = [(t, fmt_number(t)) for t in nice_ticks(frame.x_min, frame.x_max, 10)]
    for tick, text in ticks:
        px = frame.x(tick)
        parts.append(
            f'<line x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{_e(text)}</text>'
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
        decades = math.log10(frame.y_hi / frame.y_lo)
        steps = (1, 2, 5) if decades <= 4 else (1,)  # wide ranges: one label per decade
        while 10**exp <= frame.y_hi * 1.0001:
            for m in steps:
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
            f'<text x="{frame.left - 6}" y="{py + 4:.1f}" text-anchor="end">'
            f"{fmt_number(tick)}</text>"
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


def _legend(items: Iterable[tuple[str, str, bool]], right: float = MARGIN_R,
            filled: bool = False) -> list[str]:
    parts = []
    x = WIDTH - right + 14
    for i, (name, colour, dashed) in enumerate(items):
        y = MARGIN_T + 8 + i * 18
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        mark = (
            f'<rect x="{x}" y="{y - 6}" width="24" height="12" fill="{colour}"/>'
            if filled
            else f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}"'
            f' stroke-width="2.5"{dash}/>'
        )
        parts.append(f'{mark}<text x="{x + 30}" y="{y + 4}">{_e(name)}</text>')
    return parts


def _head(title: str, height: float) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}"'
        f' width="{WIDTH}" height="{height:.0f}" role="img" aria-label="{_e(title)}">'
        f'<text x="{MARGIN_L}" y="20" class="title">{_e(title)}</text>'
    )


def _no_data(title: str) -> str:
    height = PLOT_H + MARGIN_T + MARGIN_B
    return _head(title, height) + (
        f'<text x="{WIDTH / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>'
    )


def _y_frame(values: Sequence[float], x_max: float, log_y: bool, right: float,
             x_min: float = 0.0) -> _Frame:
    if log_y:
        positive = [v for v in values if v > 0]
        lo = 10 ** math.floor(math.log10(min(positive))) if positive else 0.01
        hi = 10 ** math.ceil(math.log10(max(positive))) if positive else 1.0
        return _Frame(x_max, lo, max(hi, lo * 10), True, right=right, x_min=x_min)
    top = max(values)
    ticks = nice_ticks(0, top if top > 0 else 1, 5)
    if len(ticks) > 1 and ticks[-1] < top:  # end on a labelled tick above the highest value
        ticks.append(ticks[-1] + ticks[1] - ticks[0])
    return _Frame(x_max, 0.0, max(ticks[-1], top, 1e-9), False, right=right, x_min=x_min)


def _polylines(frame: _Frame, series: Sequence[Series], log_y: bool) -> list[str]:
    """One polyline per unbroken run of points: a gap (no value, or 0 on a log scale, i.e.
    a second without replies) breaks the line instead of bridging it."""
    parts = []
    for s in series:
        runs: list[list[str]] = [[]]
        for x, y in zip(s.xs, s.ys, strict=True):
            if math.isfinite(y) and (not log_y or y > 0):
                runs[-1].append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
            elif runs[-1]:
                runs.append([])
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        for points in runs:
            if not points:
                continue
            if len(points) == 1:  # a lone point still shows
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{s.colour}"/>')
                continue
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{s.colour}"'
                f' stroke-width="{s.width}"{dash} stroke-linejoin="round"><title>{_e(s.name)}'
                "</title></polyline>"
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
    if not values:
        return _no_data(title)
    right = _legend_margin(s.name for s in series)
    frame = _y_frame(values, x_max, log_y, right)
    parts = [_head(title, PLOT_H + MARGIN_T + MARGIN_B)]
    parts += _fault_shading(frame, fault_windows)
    parts += _x_axis(frame, x_label)
    parts += _y_axis(frame, y_label)
    parts += _polylines(frame, series, log_y)
    parts += _legend(((s.name, s.colour, s.dashed) for s in series), right)
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(
    title: str,
    xs: Sequence[float],
    layers: Sequence[tuple[str, Sequence[float], str]],
    x_max: float,
    y_label: str,
    *,
    fault_windows: Sequence[FaultWindow] | None = None,
) -> str:
    """Areas stacked bottom-up in the order given: ``(name, ys, colour)``."""
    if not xs or not layers:
        return _no_data(title)
    base = [0.0] * len(xs)
    tops = []
    for _, ys, _ in layers:
        top = [b + y for b, y in zip(base, ys, strict=True)]
        tops.append((base, top))
        base = top
    right = _legend_margin(name for name, _, _ in layers)
    frame = _y_frame(base, x_max, False, right)
    parts = [_head(title, PLOT_H + MARGIN_T + MARGIN_B)]
    parts += _x_axis(frame, "seconds since start")
    parts += _y_axis(frame, y_label)
    for (name, ys, colour), (low, high) in zip(layers, tops, strict=True):
        if not any(y > 0 for y in ys):
            continue
        upper = [f"{frame.x(x):.1f},{frame.y(h):.1f}" for x, h in zip(xs, high, strict=True)]
        lower = [
            f"{frame.x(x):.1f},{frame.y(lo):.1f}"
            for x, lo in reversed(list(zip(xs, low, strict=True)))
        ]
        parts.append(
            f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" fill-opacity="0.85"'
            f' stroke="{colour}" stroke-width="0.5"><title>{_e(name)}</title></polygon>'
        )
    parts += _fault_shading(frame, fault_windows)
    parts += _legend(((name, colour, False) for name, _, colour in reversed(layers)), right,
                     filled=True)
    parts.append("</svg>")
    return "".join(parts)


#: Percentile ticks of the distribution plot: (percentile, label).
PCT_TICKS = ((0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%"),
             (99.999, "99.999%"), (99.9999, "99.9999%"))


def pct_x(percentile: float) -> float:
    """The distribution plot's x: log10(1 / (1 - p)), so each extra 9 gets equal room."""
    return math.log10(1.0 / max(1.0 - percentile / 100.0, 1e-9))


def percentile_chart(
    title: str,
    curves: Sequence[tuple[str, Sequence[tuple[float, float]], str]],
) -> str:
    """Latency (y, ms) at each percentile (x, log scale of the tail): ``(name, pts, colour)``.

    Points are (percentile, ms), e.g. from :func:`loadtests.harness.hlog.percentile_points`.
    """
    points = [(p, v) for _, pts, _ in curves for p, v in pts]
    if not points:
        return _no_data(title)
    x_hi = max(pct_x(p) for p, _ in points)
    ticks = [(pct_x(p), label) for p, label in PCT_TICKS if pct_x(p) <= x_hi + 1e-9]
    values = [v for _, v in points]
    positive = [v for v in values if v > 0]
    log_y = bool(positive) and max(positive) / min(positive) > 20
    right = _legend_margin(name for name, _, _ in curves)
    frame = _y_frame(values, max(x_hi, 1.0), log_y, right)
    parts = [_head(title, PLOT_H + MARGIN_T + MARGIN_B)]
    parts += _x_axis(frame, "percentile (log scale of the tail)", ticks)
    parts += _y_axis(frame, "ms (log scale)" if log_y else "ms")
    series = [
        Series(name, [pct_x(p) for p, _ in pts], [v for _, v in pts], colour,
               width=2.4 if i == 0 else 1.6)
        for i, (name, pts, colour) in enumerate(curves)
    ]
    parts += _polylines(frame, series, log_y)
    parts += _legend(((s.name, s.colour, False) for s in series), right)
    parts.append("</svg>")
    return "".join(parts)


def breaker_timeline(
    spans: Sequence[BreakerSpan],
    x_max: float,
    fault_windows: Sequence[FaultWindow] | None = None,
) -> str:
    """One row per endpoint, coloured by breaker state over time."""
    endpoints = list(dict.fromkeys(endpoint for endpoint, _, _, _ in spans))
    states = list(dict.fromkeys(state for _, state, _, _ in spans))
    row_h = 26
    inner_h = max(len(endpoints), len(states), 1) * row_h
    height = inner_h + MARGIN_T + MARGIN_B
    left = max(MARGIN_L, 12 + CHAR_W * max((len(e) for e in endpoints), default=0))
    right = _legend_margin(states)
    frame = _Frame(x_max, 0, 1, False, height=inner_h, left=left, right=right)
    parts = [_head("Breaker state per endpoint", height)]
    parts += _fault_shading(frame, fault_windows)
    parts += _x_axis(frame, "seconds since start")
    for i, endpoint in enumerate(endpoints):
        y = MARGIN_T + i * row_h
        parts.append(
            f'<text x="{left - 6:.1f}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
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
    parts += _legend(((s, STATE_COLOURS.get(s.lower(), "#64748b"), False) for s in states),
                     right)
    parts.append("</svg>")
    return "".join(parts)
