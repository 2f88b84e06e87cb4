"""The run report: every section, fault shading and breaker timelines; it renders offline."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from loadtests.harness.hlog import LogWriter, new_histogram
from loadtests.harness.loadgen import Interval
from loadtests.harness.report import (
    ReportData,
    Verdict,
    offered_rows,
    render_report,
    reply_rows,
    write_report,
)
from loadtests.harness.runoutputs import (
    Aggregator,
    RunTotals,
    build_summary,
    environment,
    is_behind,
    run_warnings,
)
from loadtests.harness.shapes import FixedRate
from loadtests.harness.svgplot import CHAR_W, WIDTH, nice_ticks
from loadtests.harness.timeseries import SecondRow, rows_from_csv, write_csv
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


def test_a_partial_last_bucket_is_no_cliff_and_the_drain_is_no_rate() -> None:
    # 4.5 s of 1,000/s: the last bucket holds half a second of load, then the generator
    # closed it when the drain ended (at 4.52 s).
    rows = [SecondRow(second=k, start_s=k - 1, end_s=k, offered=1000, sent=1000, achieved=1000)
            for k in range(1, 5)]
    rows.append(SecondRow(second=5, start_s=4, end_s=4.52, offered=500, sent=500, achieved=510))
    offered = offered_rows(rows, duration_s=4.5)
    assert [r.offered / span for r, span in offered] == [1000.0] * 5
    replies = reply_rows(rows)
    assert [round(r.achieved / span) for r, span in replies] == [1000] * 4 + [981]
    # 5 s exactly: the final bucket is only the drain, 20 ms of it: no rate at all
    rows[4] = SecondRow(second=5, start_s=4, end_s=5, offered=1000, sent=1000, achieved=996)
    rows.append(SecondRow(second=6, start_s=5, end_s=5.02, offered=0, sent=0, achieved=4))
    assert [r.second for r, _ in offered_rows(rows, duration_s=5.0)] == [1, 2, 3, 4, 5]
    assert [r.second for r, _ in reply_rows(rows)] == [1, 2, 3, 4, 5]


def test_long_breaker_and_legend_labels_are_not_cut() -> None:
    name = "card-secondary-issuer-with-a-long-name"
    page = render_report(ReportData(
        title="t", rows=_rows(5), breaker_states=[(name, "half_open", 0, 5)],
    ))
    svg = page[page.index("Breaker state per endpoint"):]
    label = svg[: svg.index(f">{name}</text>")]
    x = float(label[label.rindex('<text x="') + 9:].split('"')[0])
    assert x >= CHAR_W * len(name)  # right-aligned at x: the text starts at x - width >= 0
    legend = svg[: svg.index(">half_open</text>")]
    legend_x = float(legend[legend.rindex('<text x="') + 9:].split('"')[0])
    assert legend_x + CHAR_W * len("half_open") <= WIDTH


def test_load_run_report_has_warnings_on_top_and_every_section(tmp_path: Path) -> None:
    hist = {None: new_histogram(), "card": new_histogram(), "qr": new_histogram()}
    for i in range(1, 2000):
        for key in (None, "card" if i % 3 else "qr"):
            hist[key].record_value(i * 7)
    rows = _rows(40)
    for r in rows:
        r.channel_p99_ms = {"card": r.p99_ms, "qr": r.p99_ms * 1.5}
        r.planted = {"invalid": 3}
        r.errors = {**r.errors, "invalid": 3}
    summary = {
        "totals": {"offered": 10000, "offered_rate": 1000.0, "sent": 9990, "malformed_sent": 10,
                   "replies": 9950, "achieved_rate": 995.0, "replays": 12,
                   "statuses": {"approved": 9000, "declined": 950},
                   "errors": {"invalid": 30, "overloaded": 7000}, "planted_errors": {"invalid": 30},
                   "planted_sent": {"invalid": 30, "malformed": 10}, "dropped_overrun": 0},
        "latency_ms": {"p50": 4.0, "p90": 9.0, "p99": 20.0, "p99.9": 35.0, "p99.99": 40.0,
                       "max": 50.0, "mean": 5.0, "count": 9950},
        "latency_by_channel_ms": {"card": {"p50": 4.0, "p99": 19.0, "count": 6000}},
        "generator": {"behind_schedule": True, "behind_seconds": 2, "lagged": 40,
                      "max_lag_ms": 80.0, "lag_warn_ms": 10.0, "cpu_s": 1.0},
        "run": {"interrupted_at_s": None, "duration_s": 40.0},
        "by_channel": {"card/approved": 6000, "qr/declined": 50},
        "environment": environment(1_795_000_000.0),
    }
    warnings = run_warnings(summary)
    assert warnings[0].startswith("GENERATOR BEHIND SCHEDULE in 2 second(s)")
    assert warnings[1].startswith("MOST REQUESTS WERE SHED: 7,000 of 9,990 payments (70.1%)")
    page = render_report(ReportData(title="load", rows=rows, summary=summary, warnings=warnings,
                                    histograms=hist, duration_s=40.0))
    first_section = page.index("<h2>")
    assert page.index("GENERATOR BEHIND SCHEDULE") < first_section
    assert page.index("MOST REQUESTS WERE SHED") < first_section
    for text in ("p99 latency per channel", "Latency by percentile", "Environment",
                 "30 planted on purpose by the workload", "invalid (planted)",
                 "error: overloaded", "Payment statuses per channel", "git revision",
                 "<th>all channels</th>", "10 malformed frames (planted)"):
        assert text in page, text
    path = write_report(tmp_path / "run", ReportData(
        title="load", rows=rows, summary=summary, warnings=warnings, histograms=hist,
        duration_s=40.0))
    png = tmp_path / "load.png"
    screenshot(path, png, tmp_path / "profile")
    stats = png_stats(png)
    assert stats.distinct_colours > 50 and stats.non_background_share > 0.05, stats


def test_behind_schedule_in_one_second_is_behind_in_the_summary_too() -> None:
    # The terminal warns on any second that is behind; summary.json must agree even
    # when the whole run's share of late requests is below the threshold.
    import io

    agg = Aggregator(1, FixedRate(1000), 20.0, LogWriter(io.StringIO(), 1_795_000_000.0))
    for k in range(1, 21):
        agg.add(0, Interval(index=k, start_s=k - 1, end_s=k, sent=1000, malformed_sent=0,
                            replies=1000, replays=0, statuses={"approved": 1000}, errors={},
                            dropped=0, lagged=5 if k == 7 else 0, max_lag_s=0.02 if k == 7
                            else 0.001, histograms={}))
    agg.finish(0)
    assert agg.behind_seconds == 1
    assert not is_behind(5, 20_000, 0.02)  # the whole run alone would not say so
    totals = RunTotals(
        histogram=new_histogram(), channel_histograms={}, sent=20_000, malformed_sent=0,
        replies=20_000, replays=0, statuses=Counter(), errors=Counter(),
        planted_errors=Counter(), planted_sent=Counter(), by_channel=Counter(), unanswered=0,
        connection_lost=0, dropped=0, lagged=5, max_lag_ms=20.0, elapsed_s=20.0, cpu_s=1.0,
        processes=[],
    )
    summary = build_summary({"interrupted_at_s": None}, totals, 20_000, 20.0,
                            agg.behind_seconds, {}, [])
    assert summary["generator"]["behind_schedule"] is True
    assert summary["generator"]["behind_seconds"] == 1


def test_environment_names_host_cpu_cores_revision_and_versions() -> None:
    import os
    import subprocess

    env = environment(1_795_000_000.0)
    assert env["started_utc"] == "2026-11-18T11:06:40+00:00"
    assert env["cores"] == os.cpu_count() and env["host"] and env["cpu"]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()
    assert env["git_revision"].startswith(head)
    assert set(env["versions"]) >= {"payswitch", "hdrhistogram", "msgspec"}


def test_a_scenario_report_gets_the_distribution_and_warnings_from_the_run(
    tmp_path: Path,
) -> None:
    # scenario.py passes neither histograms nor warnings: they come from the run's files
    hist = new_histogram()
    for v in range(100, 5000, 7):
        hist.record_value(v)
    with (tmp_path / "latency.hlog").open("w") as f:
        log = LogWriter(f, 1_795_000_000.0)
        log.interval(hist, 0, 1)
        log.interval(hist, 0, 1, tag="card")
    summary = {"warnings": ["GENERATOR BEHIND SCHEDULE in 3 second(s): test"], "lost": 0}
    page = write_report(tmp_path, ReportData(title="scenario", rows=_rows(3),
                                             summary=summary)).read_text()
    assert "Latency by percentile" in page and ">card</text>" in page
    assert page.index("GENERATOR BEHIND SCHEDULE") < page.index("<h2>")
