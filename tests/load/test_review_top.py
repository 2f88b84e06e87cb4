"""Review: ``loadtests/harness/top.py`` across a restarted switch, and on error pages.

A counter that went down between two scrapes means the process restarted: PromQL's
``rate()`` takes the new value as the increase. ``_delta`` subtracted blindly and showed
negative payments/s; ``scrape`` parsed whatever page it got, a 404 or 503 included."""

from __future__ import annotations

import httpx
import pytest
from rich.console import Console

from loadtests.harness.top import (
    Scrape,
    _delta,
    counters_reset,
    render,
    render_cluster,
    scrape,
    scrape_all,
    since,
)

CARD = (("channel", "card"), ("status", "approved"))
LE = "payswitch_payment_duration_seconds_bucket"


def _scrape(at: float, approved: float, buckets: dict[str, float] | None = None) -> Scrape:
    s = Scrape(at)
    s.samples["payswitch_payments_total"] = {CARD: approved}
    s.samples["payswitch_ready"] = {(): 1.0}
    if buckets is not None:
        s.samples[LE] = {(("channel", "card"), ("le", le)): v for le, v in buckets.items()}
    return s


def _text(group: object) -> str:
    console = Console(width=200, record=True)
    console.print(group)
    return console.export_text()


def test_a_counter_that_went_down_counts_its_new_value() -> None:
    assert _delta(_scrape(1, 30), _scrape(0, 1000), "payswitch_payments_total") == {CARD: 30}
    assert _delta(_scrape(1, 1030), _scrape(0, 1000), "payswitch_payments_total") == {CARD: 30}


def test_a_restart_rebases_every_counter_of_the_process() -> None:
    # Before: 100 payments, all in the 0.01 s bucket. After a restart: 150, in 0.1 s. Per
    # series the 0.01 bucket went down but +Inf did not; taken one by one they would mix
    # two processes' histograms. The whole process restarted: every counter counts anew.
    old = _scrape(0, 100, {"0.01": 100, "0.1": 100, "+Inf": 100})
    new = _scrape(1, 150, {"0.01": 0, "0.1": 150, "+Inf": 150})
    assert counters_reset(new, old) and not counters_reset(old, old)
    base = since(new, old)
    assert _delta(new, base, LE) == {(("channel", "card"), ("le", le)): v
                                     for le, v in {"0.01": 0, "0.1": 150, "+Inf": 150}.items()}
    assert base.get("payswitch_ready") == {(): 1.0}  # gauges kept
    assert since(new, _scrape(0, 100)) is not old  # a copy, never the caller's scrape mutated
    assert old.samples["payswitch_payments_total"] == {CARD: 100}


def test_a_series_that_vanished_is_a_restart_too() -> None:
    old = _scrape(0, 5)
    old.samples["payswitch_failovers_total"] = {(("from_endpoint", "a"),): 3.0}
    assert counters_reset(_scrape(1, 9), old)


def test_render_across_a_restart_shows_no_negative_rate() -> None:
    text = _text(render(_scrape(1, 30), _scrape(0, 1000)))
    assert "-970" not in text and "30/s" in text


def test_cluster_totals_add_each_workers_own_increase() -> None:
    # Worker 0 restarted (1000 -> 10), worker 1 went 0 -> 20: the cluster made 30, not
    # 30 - 1000, nor the 30 "new value" of a sum that went down.
    new = [_scrape(1, 10), _scrape(1, 20)]
    old = [_scrape(0, 1000), _scrape(0, 0)]
    text = _text(render_cluster(new, old, ["http://a/metrics", "http://b/metrics"]))
    assert "-990" not in text and "-970" not in text
    overview = text.split("networks")[0]
    assert "card" in overview and "30/s" in overview


def _client(status: int, body: str) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(status, text=body)))


def test_scrape_refuses_an_error_status() -> None:
    metrics = "# TYPE payswitch_ready gauge\npayswitch_ready 1\n"
    with _client(503, metrics) as client, pytest.raises(httpx.HTTPStatusError):
        scrape("http://switch/metrics", client)
    with _client(200, metrics) as client:
        assert scrape("http://switch/metrics", client).get("payswitch_ready") == {(): 1.0}


def test_scrape_all_reads_an_error_page_or_a_non_metrics_page_as_down() -> None:
    with _client(404, "<html>not found</html>") as client:
        assert scrape_all(["http://a/metrics"], client) == [None]
    with _client(200, "hello") as client:
        assert scrape_all(["http://a/metrics"], client) == [None]
