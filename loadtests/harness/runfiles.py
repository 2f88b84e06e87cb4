"""Read a load run's outputs back: summary.json, timeseries.csv and latency.hlog.

What ``payswitch report compare`` and ``payswitch report merge`` start from. The
histograms come from the HdrHistogram log, so anything computed from them (a merged
percentile, a percentile the summary did not list) is exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtests.harness.hlog import LogInterval, read_log, total_of
from loadtests.harness.timeseries import SecondRow, rows_from_csv


class RunFilesError(ValueError):
    """A directory that is not a readable load run; the message is one line."""


@dataclass
class LoadedRun:
    path: Path
    summary: dict[str, Any]
    rows: list[SecondRow]
    #: Wall-clock start of the run (seconds since the epoch), from the log's StartTime.
    start_wall: float
    intervals: list[LogInterval]
    histogram: HdrHistogram
    channel_histograms: dict[str, HdrHistogram] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def histograms(self) -> dict[str | None, HdrHistogram]:
        out: dict[str | None, HdrHistogram] = {None: self.histogram}
        out.update(self.channel_histograms)
        return out

    @property
    def duration_s(self) -> float:
        run = self.summary.get("run", {})
        return float(run.get("interrupted_at_s") or run.get("duration_s") or 0.0)


def load_run(path: str | Path) -> LoadedRun:
    """A run directory written by ``payswitch load`` (or by ``report merge``)."""
    directory = Path(path)
    if not directory.is_dir():
        raise RunFilesError(f"{directory}: not a directory")
    files = {name: directory / name for name in ("summary.json", "timeseries.csv",
                                                 "latency.hlog")}
    missing = [name for name, f in files.items() if not f.is_file()]
    if missing:
        raise RunFilesError(
            f"{directory}: not a load run directory (missing {', '.join(missing)})"
        )
    try:
        summary = json.loads(files["summary.json"].read_text())
        rows = rows_from_csv(files["timeseries.csv"])
        header, intervals = read_log(files["latency.hlog"])
    except (OSError, ValueError, KeyError) as exc:
        raise RunFilesError(f"{directory}: unreadable run output: {exc}") from None
    if not isinstance(summary, dict) or "totals" not in summary:
        raise RunFilesError(f"{directory}/summary.json: not a load run summary (no totals)")
    tags = sorted({i.tag for i in intervals if i.tag is not None})
    return LoadedRun(
        path=directory,
        summary=summary,
        rows=rows,
        start_wall=header.start_wall or float(summary.get("run", {}).get("start_wall", 0.0)),
        intervals=intervals,
        histogram=total_of(intervals),
        channel_histograms={tag: total_of(intervals, tag) for tag in tags},
    )
