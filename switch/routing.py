"""Routing, first version: one route per channel, each to one network adapter.

The routing issue replaces this with BIN-range, corridor and scheme tables and
strategies; the pipeline only ever asks :meth:`Router.route` for a :class:`Route`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from switch.adapters.base import ChannelAdapter
from switch.config import ChannelRoute
from switch.model import Channel, Payment


@dataclass(frozen=True, slots=True)
class Route:
    network: str
    adapter: ChannelAdapter
    timeout_s: float


class NoRoute(LookupError):
    pass


class Router:
    def __init__(self, routes: list[ChannelRoute], adapters: Mapping[str, ChannelAdapter]) -> None:
        self._by_channel: dict[Channel, Route] = {
            r.channel: Route(r.network, adapters[r.network], r.timeout_s) for r in routes
        }

    def route(self, payment: Payment) -> Route:
        route = self._by_channel.get(payment.channel)
        if route is None:
            raise NoRoute(f"no route for channel {payment.channel!r}")
        return route
