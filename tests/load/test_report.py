"""The run report: every section, fault shading and breaker timelines; it renders offline."""

from __future__ import annotations

from pathlib import Path

from loadtests.harness.report import (
    ReportData,
    SecondRow,
    Verdict,
    render_report,
    rows_from_csv,
    write_csv,
    write_report,
)
from loadtests.harness.svgplot import nice_ticks
from tests.load.conftest import screenshot
from tests.load.pngcheck import png_stats


def _rows(n: int = 60) -> list[SecondRow]:
    rows = []
    for k in range(1, n + 1):
        fault = 20 <= k < 35
        rows.append(
            SecondRow(
                second=k, start_s=k - 1, end_s=k, offered=1000, sent=1000,
                achieved=700 if fault else 995,
                errors={"overloaded": 120, "unavailable": 30} if fault else {"invalid": 3},
                statuses={"approved": 900, "declined": 95},
                p50_ms=4.0 + (40 if fault else 0), p99_ms=20.0 + (400 if fault else 0),
                p999_ms=35.0 + (900 if fault else 0), max_ms=50.0, max_lag_ms=1.0,
            )
        )
    return rows


def _data() -> ReportData:
    return ReportData(
        title="scenario: card primary outage",
        rows=_rows(),
        summary={"totals": {"offered": 60000, "replies": 57000}, "latency_ms": {"p99": 412.5}},
        config={"scenario": "card-primary-outage", "faults": [{"at_s": 20, "for_s": 15}]},
        verdicts=[
            Verdict("availability during the outage", ">= 99%", "99.4%", True),
            ("p99.9 within 1 s", "<= 1000 ms", "1210 ms", False),
        ],
        breaker_states=[
            ("card-primary", "closed", 0, 21), ("card-primary", "open", 21, 33),
            ("card-primary", "half_open", 33, 35), ("card-primary", "closed", 35, 60),
            ("card-secondary", "closed", 0, 60),
        ],
        fault_windows=[("card primary down", 20, 35), ("swift blackhole", 45, 50)],
        warnings=["GENERATOR BEHIND SCHEDULE: test warning"],
    )


def test_every_section_is_there() -> None:
    page = render_report(_data())
    for text in ("Throughput: offered vs achieved", "Latency percentiles", "Errors by code",
                 "Breaker state per endpoint", "card-primary", "card-secondary",
                 "Verdict:", "FAIL (1 assertion(s))", "p99.9 within 1 s",
                 "card primary down", "swift blackhole", "Configuration",
                 "card-primary-outage", "GENERATOR BEHIND SCHEDULE", "Outcomes per second",
                 "overloaded", "unavailable"):
        assert text in page, text
    # no dotted key paths: nested summaries read as words in nested tables
    assert "totals.offered" not in page and "<th>offered (the schedule)</th>" in page
    # both fault windows shaded on each of the five time plots
    assert page.count('fill="#f59e0b" fill-opacity="0.18"') == 2 * 5
    assert "<script" not in page and "href=" not in page


def test_text_is_escaped() -> None:
    data = ReportData(title="<b>x</b>", rows=_rows(3), summary={"a<": "<script>"})
    page = render_report(data)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page


def test_empty_run_still_renders() -> None:
    page = render_report(ReportData(title="empty", rows=[]))
    assert page.count("no data") == 4


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = _rows(5)
    write_csv(tmp_path / "t.csv", rows)
    back = rows_from_csv(tmp_path / "t.csv")
    assert [r.errors for r in back] == [r.errors for r in rows]
    assert [r.achieved for r in back] == [r.achieved for r in rows]
    assert back[0].p99_ms == rows[0].p99_ms


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1000, 5) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0, 7, 5) == [0, 2, 4, 6]


def test_full_report_renders_in_chromium(tmp_path: Path) -> None:
    path = write_report(tmp_path / "run", _data())
    png = tmp_path / "full.png"
    screenshot(path, png, tmp_path / "profile")
    stats = png_stats(png)
    assert stats.distinct_colours > 50, stats
    assert stats.non_background_share > 0.05, stats
