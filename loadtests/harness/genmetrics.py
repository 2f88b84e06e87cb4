"""The load generator's own Prometheus metrics (``payswitch load --metrics-port``).

The switch's /metrics shows its side of the wire; these show the client's: what was
offered and sent, what came back and how late, and whether the generator itself kept its
schedule. They are served by the parent process of a run from the per-second intervals
it merges from every generator process, so one scrape target covers the whole run and
the latency histogram comes from HdrHistograms added exactly across processes (never
from averaged percentiles). A second closes about a second after it ends; a scrape sees
the run up to the last closed second.

Metrics (``payswitch_loadgen_`` prefix; counters carry ``_total``):

==================================== ========= ===================================================
name                                 type      meaning
==================================== ========= ===================================================
``offered_requests_total``           counter   requests due by the rate shape's schedule
``sent_requests_total``              counter   requests actually sent (planted malformed frames too)
``replies_total``                    counter   replies received (achieved rate: ``rate()`` of it)
``payments_total{status}``           counter   replies by payment status (approved, declined, ...)
``errors_total{code,planted}``       counter   error replies by code; ``planted="true"`` for the
                                               invalid/malformed requests the workload plants on
                                               purpose; ``not_sent_overrun`` for requests not sent
``late_requests_total``              counter   requests sent more than 10 ms after their due time
``lag_max_seconds``                  gauge     the largest lag behind schedule in the last second
``behind_schedule``                  gauge     1 while the last closed second was behind schedule
``latency_seconds{channel}``         histogram latency from the intended send time, per channel
                                               (the switch's latency buckets, so both sides compare)
``run_info{run_tag,target}``         gauge     1; the run's tag and target
==================================== ========= ===================================================
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from loadtests.harness.hlog import cumulative_counts, new_histogram
from loadtests.harness.runoutputs import row_is_behind
from loadtests.harness.timeseries import SecondRow
from switch.observability.metrics import LATENCY_BUCKETS

PREFIX = "payswitch_loadgen_"
METRIC_NAMES = tuple(
    PREFIX + name
    for name in (
        "offered_requests_total", "sent_requests_total", "replies_total", "payments_total",
        "errors_total", "late_requests_total", "lag_max_seconds", "behind_schedule",
        "latency_seconds", "run_info",
    )
)
_BOUNDS_US = [round(b * 1_000_000) for b in LATENCY_BUCKETS]


class GeneratorMetrics(Collector):
    """A :class:`~loadtests.harness.runoutputs.MetricsSink` that Prometheus can scrape."""

    def __init__(self, run_tag: str = "", target: str = "") -> None:
        self.run_tag = run_tag
        self.target = target
        self._lock = threading.Lock()
        self.offered = 0.0
        self.sent = 0
        self.replies = 0
        self.late = 0
        self.lag_max_s = 0.0
        self.behind = 0
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, HdrHistogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None

    # -- the sink ------------------------------------------------------------------------------

    def on_second(
        self, row: SecondRow, channel_hists: Mapping[str, HdrHistogram], planted: Mapping[str, int]
    ) -> None:
        with self._lock:
            self.offered += row.offered
            self.sent += row.sent
            self.replies += row.achieved
            self.late += row.lagged
            self.lag_max_s = row.max_lag_ms / 1000.0
            self.behind = int(row_is_behind(row))
            self.statuses.update(row.statuses)
            for code, n in row.errors.items():
                mine = min(planted.get(code, 0), n)
                if mine:
                    self.errors[(code, "true")] += mine
                if n - mine:
                    self.errors[(code, "false")] += n - mine
            if row.dropped:
                self.errors[("not_sent_overrun", "false")] += row.dropped
            for channel, hist in channel_hists.items():
                total = self.latency.get(channel)
                if total is None:
                    total = self.latency[channel] = new_histogram()
                total.add(hist)

    # -- the collector --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield _counter("offered_requests", "Requests due by the rate shape's schedule.",
                           self.offered)
            yield _counter("sent_requests", "Requests sent (planted malformed frames too).",
                           self.sent)
            yield _counter("replies", "Replies received.", self.replies)
            payments = CounterMetricFamily(PREFIX + "payments", "Replies by payment status.",
                                           labels=["status"])
            for status, n in sorted(self.statuses.items()):
                payments.add_metric([status], n)
            yield payments
            errors = CounterMetricFamily(
                PREFIX + "errors",
                "Error replies by code; planted: answers to requests the workload planted "
                "on purpose.", labels=["code", "planted"],
            )
            for (code, planted), n in sorted(self.errors.items()):
                errors.add_metric([code, planted], n)
            yield errors
            yield _counter("late_requests", "Requests sent more than 10 ms after their due time.",
                           self.late)
            yield GaugeMetricFamily(PREFIX + "lag_max_seconds",
                                    "Largest lag behind schedule in the last closed second.",
                                    value=self.lag_max_s)
            yield GaugeMetricFamily(PREFIX + "behind_schedule",
                                    "1 while the last closed second was behind schedule.",
                                    value=self.behind)
            latency = HistogramMetricFamily(
                PREFIX + "latency_seconds",
                "Latency from the intended send time, merged exactly from every generator "
                "process's HdrHistograms.", labels=["channel"],
            )
            for channel, hist in sorted(self.latency.items()):
                counts = cumulative_counts(hist, _BOUNDS_US)
                count = hist.get_total_count()
                buckets = [(_le(b), float(c)) for b, c in zip(LATENCY_BUCKETS, counts, strict=True)]
                buckets.append(("+Inf", float(count)))
                latency.add_metric([channel], buckets,
                                   sum_value=hist.get_mean_value() * count / 1e6 if count else 0.0)
            yield latency
            info = GaugeMetricFamily(PREFIX + "run_info", "The run's tag and target.",
                                     labels=["run_tag", "target"])
            info.add_metric([self.run_tag, self.target], 1)
            yield info

    # -- serving --------------------------------------------------------------------------------

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics on ``port`` (0: any free port) in a thread; returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _le(bound: float) -> str:
    return repr(float(bound))
