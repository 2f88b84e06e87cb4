"""``payswitch top``: a live terminal view of a running switch, read from its /metrics.

For people without Grafana. Every figure is derived from two consecutive scrapes, the way
PromQL's ``rate()`` and ``histogram_quantile()`` would: payments/s from counter deltas,
latency percentiles by interpolating within the histogram bucket that holds the rank.

A cluster (``--cluster layout.json`` or several ``--url``): every worker is scraped, the
samples are added up (counters and histogram buckets add exactly, as ``sum()`` in PromQL
would), and a table breaks out each worker: its shard, ready or down, payments/s, p99.
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
    """One read of a /metrics page. Raises httpx.HTTPStatusError on an error status (a
    404 or a draining switch's 503 is no metrics) and ValueError on a page that is not
    Prometheus' text format."""
    response = client.get(url, timeout=5.0)
    response.raise_for_status()
    text = response.text
    result = Scrape(time.monotonic())  # wall clock: a UI sampling another process
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            result.samples.setdefault(sample.name, {})[labels] = sample.value
    return result


#: Sample names of counters (and histograms' cumulative counts): they only go up within
#: one process, so one that went down (or vanished) means the process restarted.
COUNTER_SUFFIXES = ("_total", "_count", "_bucket")


def counters_reset(new: Scrape, old: Scrape) -> bool:
    """True if a counter went down or vanished between two scrapes of one process: it
    restarted in between (PromQL's ``rate()`` treats a decrease as a reset too)."""
    for name, before in old.samples.items():
        if not name.endswith(COUNTER_SUFFIXES):
            continue
        series = new.samples.get(name, {})
        for labels, value in before.items():
            now = series.get(labels)
            if now is None or now < value:
                return True
    return False


def since(new: Scrape, old: Scrape) -> Scrape:
    """The scrape to take ``new``'s increases from: ``old``, or -- if the process restarted
    in between -- a copy of it with no counters, so that every counter's increase is its
    new value (what it counted since the restart), as ``rate()`` does for a reset.

    The whole process is rebased, not each series by itself: after a restart, a histogram
    bucket that has already counted past its old value would otherwise be subtracted from
    while its neighbours are not, mixing the two processes' histograms."""
    if not counters_reset(new, old):
        return old
    return Scrape(old.at, {name: dict(series) for name, series in old.samples.items()
                           if not name.endswith(COUNTER_SUFFIXES)})


def _delta(new: Scrape, old: Scrape, name: str) -> dict[Labels, float]:
    """Each series' increase; a series that went down was reset: its increase is its new
    value (PromQL's ``rate()``), never a negative rate."""
    before = old.get(name)
    out: dict[Labels, float] = {}
    for k, v in new.get(name).items():
        b = before.get(k, 0.0)
        out[k] = v - b if v >= b else v
    return out


def histogram_increase(new: Scrape, old: Scrape, name: str) -> dict[float, float]:
    """A histogram's bucket increases between two scrapes, summed over every other label:
    {le: count}, ready for :func:`quantile`."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in _delta(new, old, name).items():
        buckets[float(dict(labels)["le"])] += value
    return dict(buckets)


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


def scrape_all(urls: list[str], client: httpx.Client) -> list[Scrape | None]:
    """One scrape per worker; None for a worker that cannot be read (down, restarting,
    an error status, a page that is not metrics)."""
    out: list[Scrape | None] = []
    for url in urls:
        try:
            out.append(scrape(url, client))
        except (httpx.HTTPError, ValueError):
            out.append(None)
    return out


def merged(scrapes: list[Scrape | None]) -> Scrape:
    """Samples added up over the workers read."""
    present = [s for s in scrapes if s is not None]
    total = Scrape(max((s.at for s in present), default=time.monotonic()))
    for one in present:
        for name, series in one.samples.items():
            into = total.samples.setdefault(name, {})
            for labels, value in series.items():
                into[labels] = into.get(labels, 0.0) + value
    return total


def render_cluster(new: list[Scrape | None], old: list[Scrape | None],
                   urls: list[str]) -> Group:
    """The whole cluster (workers read in both scrapes, added up) and one row per worker.

    Each worker's earlier scrape is rebased on its own (:func:`since`) before the sums: a
    restarted worker then adds what it counted since its restart, where the sum of every
    worker's counters would have gone down, or counted the whole cluster's totals again."""
    both = [(n, since(n, o)) for n, o in zip(new, old, strict=True)
            if n is not None and o is not None]
    whole = render(merged([n for n, _ in both]), merged([o for _, o in both]),
                   workers=len(urls))
    table = Table(title="workers", expand=True)
    for column in ("shard", "metrics", "ready", "payments/s", "p99 ms", "in flight"):
        table.add_column(column)
    for shard, (url, n, o) in enumerate(zip(urls, new, old, strict=True)):
        if n is None or o is None:
            table.add_row(str(shard), url, "DOWN", "-", "-", "-")
            continue
        seconds = max(n.at - o.at, 1e-9)
        o = since(n, o)
        paid = sum(_delta(n, o, "payswitch_payments_total").values())
        p99 = quantile(0.99, histogram_increase(
            n, o, "payswitch_payment_duration_seconds_bucket"))
        ready = sum(n.get("payswitch_ready").values()) == 1
        table.add_row(str(shard), url, "yes" if ready else "NO", f"{paid / seconds:.0f}",
                      "-" if p99 is None else f"{p99 * 1000:.2f}",
                      f"{sum(n.get('payswitch_in_flight_payments').values()):.0f}")
    return Group(*whole.renderables, table)


def render(new: Scrape, old: Scrape, workers: int = 1) -> Group:
    """One frame: rates over the two scrapes of one process (or of sums over workers
    already rebased, as :func:`render_cluster` passes); a restart counts from its start."""
    seconds = max(new.at - old.at, 1e-9)
    old = since(new, old)
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
    ready = gauge("payswitch_ready")
    health.add_row(
        ("yes" if ready == 1 else "NO") if workers == 1 else f"{ready:.0f}/{workers}",
        f"{gauge('payswitch_in_flight_payments'):.0f}",
        f"{gauge('payswitch_unresolved_payments'):.0f}",
        f"{gauge('payswitch_journal_pending_records'):.0f}",
        f"{gauge('payswitch_open_connections'):.0f}",
        reasons or "0",
    )
    return Group(overview, networks, health)
