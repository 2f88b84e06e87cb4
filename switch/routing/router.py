"""Routing: which endpoints a payment may go to, in what order, and whether each is healthy.

The :class:`Router` holds the live :class:`~switch.routing.table.RouteTable` (immutable, so a hot
reload is one reference swap: a payment keeps the target it looked up), and everything
the attempt plan in :mod:`switch.payment.core` consults: per-endpoint breakers,
latency and success signals (:class:`~switch.routing.resilience.EndpointHealth`), admission
limits, the global retry budget and the retry policy. All decisions are sans-IO
(:mod:`switch.routing.table`, :mod:`switch.routing.breaker`,
:mod:`switch.routing.resilience`); this module wires them to adapters and metrics.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from switch.adapters.base import ChannelAdapter
from switch.bounds import PositiveSeconds
from switch.model import Channel, Payment
from switch.observability.metrics import SwitchMetrics
from switch.routing.admission import AdmissionLimiter
from switch.routing.breaker import STATE_CODE, BreakerState
from switch.routing.health import EndpointHealth
from switch.routing.resilience import ResilienceConfig
from switch.routing.retry import RetryBudget
from switch.routing.table import RouteTable, Target, load_route_table, sticky_key
from switch.routing.tablespec import RouteTableError
from switch.tomlio import not_utf8


class ChannelRoute(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """All payments of one channel go to one network."""

    #: The channel routed here.
    channel: Channel
    #: A network `name` from `[[networks]]` or `[[channel_networks]]` serving that channel.
    network: str
    #: Per attempt.
    timeout_s: PositiveSeconds = 2.0


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint chosen for one attempt (what the resolver needs to settle it later)."""

    network: str
    adapter: ChannelAdapter
    timeout_s: float


class NoRoute(LookupError):
    pass


def table_from_routes(routes: list[ChannelRoute]) -> str:
    """The route table equivalent of the simple ``[[routes]]`` list: one target each."""
    lines = []
    for r in routes:
        lines += [f'[targets."{r.channel}"]', f'endpoints = ["{r.network}"]',
                  f"timeout_s = {r.timeout_s}", ""]
    for r in routes:
        lines += [f"[{r.channel}]", f'default = "{r.channel}"', ""]
    return "\n".join(lines)


class Router:
    def __init__(
        self,
        table: RouteTable,
        adapters: Mapping[str, ChannelAdapter],
        config: ResilienceConfig,
        metrics: SwitchMetrics,
        seed: int,
    ) -> None:
        self.table = table
        self.adapters = dict(adapters)
        self.config = config
        self.metrics = metrics
        self.health = EndpointHealth(
            self.adapters,
            breaker=config.breaker,
            breaker_overrides=config.breakers,
            on_transition=self._on_transition,
            latency_alpha=config.latency_alpha,
            failure_latency_s=config.failure_latency_s,
            success_window_s=config.success_window_s,
            success_buckets=config.success_buckets,
        )
        self.limiter = AdmissionLimiter(self.adapters, config.admission)
        self.budget = RetryBudget(config.retry_budget)
        self.policy = config.retry
        self.rng = random.Random(seed)
        for name in self.adapters:
            metrics.breaker_state[name].set(STATE_CODE[BreakerState.CLOSED])

    def target(self, payment: Payment) -> Target:
        target = self.table.lookup(payment)
        if target is None:
            raise NoRoute(f"no route for {payment.channel} payment {payment.payment_id}")
        return target

    def candidates(self, target: Target, payment: Payment, now: float) -> list[str]:
        """Endpoints to try, in order: the strategy's choice first, failover after."""
        return self.health.select(target, now, self.rng, sticky_key(target, payment))

    def route(self, endpoint: str, target: Target) -> Route:
        return Route(endpoint, self.adapters[endpoint], target.timeout_s)

    def reload(self, text: str) -> RouteTable:
        """Validate a new table whole and swap it in; the old one stays on any problem."""
        try:
            table = load_route_table(text, self.adapters)
        except RouteTableError:
            self.metrics.route_reloads["rejected"].inc()
            raise
        self.table = table
        self.metrics.route_reloads["ok"].inc()
        log.info("route table %s loaded: %d targets, %d card ranges", table.digest,
                 len(table.targets), table.card_ranges)
        return table

    def _on_transition(self, endpoint: str, old: BreakerState, new: BreakerState) -> None:
        self.metrics.breaker_state[endpoint].set(STATE_CODE[new])
        self.metrics.breaker_transitions[(endpoint, old.value, new.value)].inc()
        log.warning("breaker %s: %s -> %s", endpoint, old.value, new.value)

    def refresh_gauges(self, now: float) -> None:
        """Breakers move from open to half-open with time alone: poll them for the gauge."""
        for name, breaker in self.health.breakers.items():
            self.metrics.breaker_state[name].set(STATE_CODE[breaker.poll(now)])
        self.metrics.retry_budget_remaining.set(self.budget.remaining(now))


def load_table(config_routes: list[ChannelRoute], table_path: str | None,
               endpoints: Mapping[str, object]) -> RouteTable:
    if table_path is None:
        return load_route_table(table_from_routes(config_routes), endpoints)
    return load_route_table(read_table_text(table_path), endpoints)


def read_table_text(path: str | Path) -> str:
    """A route table file's text. OSError as the OS said it; a file that is not UTF-8 is
    a RouteTableError naming its line (start-up and hot reload both read it here)."""
    data = Path(path).read_bytes()
    problem = not_utf8(data)
    if problem is not None:
        raise RouteTableError([f"{path}:{problem}"])
    return data.decode("utf-8")
