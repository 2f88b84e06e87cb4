"""``payswitch top``: a live terminal view of a running switch, read from its /metrics.

For people without Grafana. Every figure is derived from two consecutive scrapes, the way
PromQL's ``rate()`` and ``histogram_quantile()`` would: payments/s from counter deltas,
latency percentiles by interpolating within the histogram bucket that holds the rank.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def get(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})


def scrape(url: str, client: httpx.Client) -> Scrape:
    text = client.get(url, timeout=5.0).text
    result = Scrape(time.monotonic())  # wall clock: a UI sampling another process
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            result.samples.setdefault(sample.name, {})[labels] = sample.value
    return result


def _delta(new: Scrape, old: Scrape, name: str) -> dict[Labels, float]:
    before = old.get(name)
    return {k: v - before.get(k, 0.0) for k, v in new.get(name).items()}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts {le: count}."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            width = count - prev_count
            fraction = 0.0 if width <= 0 else (rank - prev_count) / width
            return prev_bound + (bound - prev_bound) * fraction
        prev_bound, prev_count = bound, count
    return prev_bound


def render(new: Scrape, old: Scrape) -> Group:
    seconds = max(new.at - old.at, 1e-9)
    payments = _delta(new, old, "payswitch_payments_total")
    by_channel: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in payments.items():
        d = dict(labels)
        by_channel[d["channel"]][d["status"]] = value
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for labels, value in _delta(new, old, "payswitch_payment_duration_seconds_bucket").items():
        d = dict(labels)
        buckets[d["channel"]][float(d["le"])] = value

    overview = Table(title="payswitch top", expand=True)
    for column in (
        "channel",
        "payments/s",
        "approved",
        "declined",
        "failed",
        "unknown",
        "p50 ms",
        "p99 ms",
    ):
        overview.add_column(column, justify="right" if column != "channel" else "left")
    for channel in sorted(by_channel):
        counts = by_channel[channel]
        p50, p99 = quantile(0.5, buckets[channel]), quantile(0.99, buckets[channel])
        overview.add_row(
            channel,
            f"{sum(counts.values()) / seconds:.0f}",
            *(
                f"{counts.get(s, 0) / seconds:.0f}/s"
                for s in ("approved", "declined", "failed", "unknown")
            ),
            "-" if p50 is None else f"{p50 * 1000:.2f}",
            "-" if p99 is None else f"{p99 * 1000:.2f}",
        )

    networks = Table(title="networks", expand=True)
    for column in ("network", "breaker", "requests/s", "timeouts/s", "failovers/s", "p99 ms"):
        networks.add_column(column)
    breaker_names = {0: "closed", 1: "half-open", 2: "OPEN"}
    breakers = {dict(k)["endpoint"]: breaker_names.get(int(v), str(v))
                for k, v in new.get("payswitch_breaker_state").items()}
    failovers: dict[str, float] = defaultdict(float)
    for k, v in _delta(new, old, "payswitch_failovers_total").items():
        failovers[dict(k)["from_endpoint"]] += v
    net_buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for labels, value in _delta(new, old, "payswitch_network_duration_seconds_bucket").items():
        d = dict(labels)
        net_buckets[d["network"]][float(d["le"])] = value
    timeouts = {
        dict(k)["network"]: v
        for k, v in _delta(new, old, "payswitch_network_timeouts_total").items()
    }
    for network in sorted(set(net_buckets) | set(breakers)):
        b = net_buckets.get(network, {})
        p99 = quantile(0.99, b)
        networks.add_row(
            network,
            breakers.get(network, "-"),
            f"{b.get(float('inf'), 0) / seconds:.0f}",
            f"{timeouts.get(network, 0) / seconds:.1f}",
            f"{failovers.get(network, 0) / seconds:.1f}",
            "-" if p99 is None else f"{p99 * 1000:.2f}",
        )

    health = Table(title="switch", expand=True)
    for column in (
        "ready",
        "in flight",
        "unresolved",
        "journal pending",
        "connections",
        "rejected/s",
    ):
        health.add_column(column)

    def gauge(name: str) -> float:
        return sum(new.get(name).values())

    rejected = _delta(new, old, "payswitch_rejected_requests_total")
    reasons = ", ".join(f"{dict(k)['reason']}={v / seconds:.0f}" for k, v in rejected.items() if v)
    health.add_row(
        "yes" if gauge("payswitch_ready") == 1 else "NO",
        f"{gauge('payswitch_in_flight_payments'):.0f}",
        f"{gauge('payswitch_unresolved_payments'):.0f}",
        f"{gauge('payswitch_journal_pending_records'):.0f}",
        f"{gauge('payswitch_open_connections'):.0f}",
        reasons or "0",
    )
    return Group(overview, networks, health)
