"""The simulators' own Prometheus metrics, one registry per process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# --------------------------------------------------------------------------- metrics

OUTCOMES: Final = (
    "approved", "declined", "error", "status", "reversal", "advice", "other", "refused",
    "blackhole", "overloaded", "reset", "malformed", "duplicate", "late", "bad_request",
)
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)


class ChannelMetrics:
    """The simulators' Prometheus metrics, in their own registry."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "channels_requests", "Requests handled by a simulated network, by outcome or fault.",
            ["network", "outcome"], registry=self.registry)
        self.active_faults = Gauge(
            "channels_active_faults", "Faults active now on a simulated network.",
            ["network"], registry=self.registry)
        self.latency = Histogram(
            "channels_latency_seconds",
            "Delay a simulated network applied before answering (service + late).",
            ["network"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.connections = Gauge(
            "channels_connections", "Open connections per simulated network.",
            ["network"], registry=self.registry)
        self.settlements_pending = Gauge(
            "channels_settlements_pending",
            "Payments a simulated network accepted and has yet to settle (SWIFT's ACSC "
            "comes its settlement delay later); 0 once the last one settled.",
            ["network"], registry=self.registry)
        # Bound label children once: .labels() costs ~4x an inc().
        self._requests = {
            (net, outcome): self.requests.labels(net, outcome)
            for net in networks for outcome in OUTCOMES
        }
        self._latency = {net: self.latency.labels(net) for net in networks}
        self._connections = {net: self.connections.labels(net) for net in networks}
        for net in networks:
            self.active_faults.labels(net).set(0)

    def count(self, network: str, outcome: str) -> None:
        child = self._requests.get((network, outcome))
        if child is None:
            child = self._requests[(network, outcome)] = self.requests.labels(network, outcome)
        child.inc()

    def observe(self, network: str, seconds: float) -> None:
        self._latency[network].observe(seconds)

    def set_connections(self, network: str, count: int) -> None:
        self._connections[network].set(count)
