"""HdrHistograms of latency and their interval log (the ``.hlog`` files of a load run).

Every histogram of a run has the same configuration (:func:`new_histogram`: microseconds,
1 µs .. 120 s, 3 significant digits), so adding histograms is exact: the sum of the
interval histograms of several processes or machines *is* the histogram of all their
samples, and its percentiles are the percentiles of all samples, never an average.

The log follows HdrHistogram's interval log format 1.3 (what HistogramLogAnalyzer and
``HistogramLogProcessor`` read): ``#[StartTime: ...]`` and ``#[BaseTime: ...]`` headers,
then one line per interval, ``start,length,max,payload`` with times in seconds from the
base time. Per-channel intervals are the same lines prefixed ``Tag=<channel>,``; untagged
lines hold all channels together. :func:`read_log` reads it back exactly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from hdrh.histogram import HdrHistogram

HIST_MAX_US = 120_000_000
LOG_FORMAT = "1.3"
_START = re.compile(r"#\[StartTime: *([\d.]+)")
_BASE = re.compile(r"#\[BaseTime: *([\d.]+)")


def new_histogram() -> HdrHistogram:
    """Latency in microseconds, 1 µs .. 120 s, 3 significant digits."""
    return HdrHistogram(1, HIST_MAX_US, 3)


def pct_ms(hist: HdrHistogram, p: float) -> float:
    """The ``p``-th percentile in milliseconds (0 for an empty histogram)."""
    return hist.get_value_at_percentile(p) / 1000.0 if hist.get_total_count() else 0.0


def max_ms(hist: HdrHistogram) -> float:
    return hist.get_max_value() / 1000.0 if hist.get_total_count() else 0.0


class LogWriter:
    """Writes the interval log; the caller stamps intervals in seconds from ``start``."""

    def __init__(self, out: TextIO, start_wall: float, comment: str = "") -> None:
        self.out = out
        # Start and base time in the same whole milliseconds as the interval stamps: a
        # reader skips an interval whose offset from StartTime comes out negative.
        self.start_ms = int(start_wall * 1000.0)
        start_s = self.start_ms / 1000.0
        iso = dt.datetime.fromtimestamp(start_s, dt.UTC).isoformat()
        out.write(f"#[Histogram log format version {LOG_FORMAT}]\n")
        out.write(f"#[StartTime: {start_s:.3f} (seconds since epoch), {iso}]\n")
        out.write(f"#[BaseTime: {start_s:.3f} (seconds since epoch)]\n")
        if comment:
            out.write(f"#[{comment}]\n")
        out.write('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n')

    def interval(
        self, hist: HdrHistogram, start_s: float, end_s: float, tag: str | None = None
    ) -> None:
        """One interval: ``start_s``/``end_s`` in seconds after the log's start time."""
        prefix = f"Tag={tag}," if tag else ""
        self.out.write(
            f"{prefix}{start_s:.3f},{max(end_s - start_s, 0.0):.3f},"
            f"{max_ms(hist):.3f},{hist.encode().decode()}\n"
        )


@dataclass
class LogInterval:
    tag: str | None
    #: Absolute start, seconds since the epoch.
    start_wall: float
    length_s: float
    histogram: HdrHistogram


@dataclass
class LogHeader:
    start_wall: float
    base_wall: float


def read_log(path: str | Path) -> tuple[LogHeader, list[LogInterval]]:
    """Every interval of a log, tagged or not, with absolute start times."""
    header = LogHeader(0.0, 0.0)
    intervals = list(_intervals(Path(path), header))
    return header, intervals


def _intervals(path: Path, header: LogHeader) -> Iterator[LogInterval]:
    with path.open() as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('"'):
                continue
            if line.startswith("#"):
                if m := _START.match(line):
                    header.start_wall = float(m.group(1))
                elif m := _BASE.match(line):
                    header.base_wall = float(m.group(1))
                continue
            tag = None
            if line.startswith("Tag="):
                tag, _, line = line[4:].partition(",")
            fields = line.split(",")
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: not an interval line")
            hist = HdrHistogram.decode(fields[3].encode())
            yield LogInterval(tag, header.base_wall + float(fields[0]), float(fields[1]), hist)


def total_of(intervals: list[LogInterval], tag: str | None = None) -> HdrHistogram:
    """The exact sum of the intervals with ``tag`` (None: the untagged, all channels)."""
    total = new_histogram()
    for interval in intervals:
        if interval.tag == tag:
            total.add(interval.histogram)
    return total


# --- Prometheus buckets from a histogram -------------------------------------------------------

_INDEX_VALUES: np.ndarray | None = None


def _index_values() -> np.ndarray:
    """The value (lowest equivalent, µs) of every counts index of :func:`new_histogram`."""
    global _INDEX_VALUES
    if _INDEX_VALUES is None:
        h = new_histogram()
        _INDEX_VALUES = np.array(
            [h.get_value_from_index(i) for i in range(h.counts_len)], dtype=np.int64
        )
    return _INDEX_VALUES


def cumulative_counts(hist: HdrHistogram, bounds_us: list[int]) -> list[int]:
    """Samples at or below each bound (µs), as Prometheus histogram buckets count them.

    A sample counts in bucket ``le`` when its HdrHistogram value (the lowest value of its
    equivalence range: exact below 2,048 µs, within 0.1% above) is at most ``le``.
    """
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len].astype(np.int64)
    values = _index_values()
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(counts[order])
    sorted_values = values[order]
    out = []
    for bound in bounds_us:
        i = int(np.searchsorted(sorted_values, bound, side="right"))
        out.append(int(cum[i - 1]) if i > 0 else 0)
    return out


def percentile_points(hist: HdrHistogram, steps_per_nine: int = 20) -> list[tuple[float, float]]:
    """(percentile, ms) pairs for a percentile distribution plot, up to the max value.

    Even steps of log10(1 / (1 - p)), as HdrHistogram's own plots space them, until the
    tail holds a single sample (1 / count); then the max.
    """
    count = hist.get_total_count()
    if not count:
        return []
    end = math.log10(count) if count > 1 else 0.0
    points = []
    steps = int(end * steps_per_nine)
    for i in range(steps + 1):
        p = 100.0 * (1.0 - 10 ** (-i / steps_per_nine))
        points.append((p, pct_ms(hist, p)))
    points.append((100.0 * (1.0 - 10 ** (-end)) if count > 1 else 0.0, max_ms(hist)))
    return points
