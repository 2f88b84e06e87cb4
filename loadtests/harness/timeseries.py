"""A run's time series: one :class:`SecondRow` per 1 s bucket, and its CSV file.

``timeseries.csv`` has fixed columns, then ``error_<code>``, ``status_<status>``,
``planted_<code>`` and per channel ``p50_ms_<channel>`` / ``p99_ms_<channel>`` columns;
:func:`rows_from_csv` reads back exactly what :func:`write_csv` wrote.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

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
