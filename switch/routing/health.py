"""Endpoint health, sans-IO: latency and success signals, demotions, and the order in
which a target's endpoints are tried (strategies, breakers)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

import msgspec

from switch.routing.breaker import BreakerConfig, CircuitBreaker, TransitionHook
from switch.routing.table import Target
from switch.routing.tablespec import LeastLatency, Priority, Sticky, SuccessRate, Weighted

MAX_ATTEMPTS_CEILING: Final = 5
MAX_BUCKETS: Final = 600
#: (target, endpoint) demotion entries kept; targets x endpoints is far below this.
MAX_DEMOTIONS: Final = 200_000
MAX_ENDPOINTS: Final = 10_000

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]



# --------------------------------------------------------------------------- signals


class EwmaLatency:
    """Exponentially weighted moving average of one endpoint's latency, in seconds.

    ``value = alpha * sample + (1 - alpha) * value``: with alpha 0.2 the last ~10 calls
    carry nearly all the weight, so a slowdown shows within a few calls while one
    outlier does not reorder endpoints. Per-sample, not per-second, weighting keeps it
    deterministic when many samples share one ``now``.
    """

    __slots__ = ("alpha", "samples", "value")

    def __init__(self, alpha: float = 0.2) -> None:
        assert 0 < alpha <= 1, alpha
        self.alpha = alpha
        self.value: float | None = None
        self.samples = 0

    def observe(self, duration_s: float) -> None:
        assert duration_s >= 0 and math.isfinite(duration_s), duration_s
        if self.value is None:
            self.value = duration_s
        else:
            self.value += self.alpha * (duration_s - self.value)
        self.samples += 1


class SuccessWindow:
    """Calls and successes of one endpoint over the last ``window_s``, in time buckets."""

    __slots__ = ("_calls", "_epoch", "_last", "_ok", "_width")

    def __init__(self, window_s: float = 60.0, buckets: int = 12) -> None:
        assert window_s > 0 and 2 <= buckets <= MAX_BUCKETS
        self._last = -math.inf
        self._width = window_s / buckets
        self._epoch = [-1] * buckets
        self._calls = [0] * buckets
        self._ok = [0] * buckets

    def record(self, now: float, ok: bool) -> None:
        now = self._last = max(now, self._last)  # clamped, as in RetryBudget
        epoch = math.floor(now / self._width)
        i = epoch % len(self._epoch)
        if self._epoch[i] != epoch:
            self._epoch[i] = epoch
            self._calls[i] = self._ok[i] = 0
        self._calls[i] += 1
        self._ok[i] += ok

    def totals(self, now: float, since: float = -math.inf) -> tuple[int, int]:
        """(calls, successes) in the window, counting only buckets that start at or after
        ``since`` (a re-admitted endpoint is judged on its calls since re-admission)."""
        current = math.floor(max(now, self._last) / self._width)
        oldest = current - len(self._epoch) + 1
        calls = ok = 0
        for i, epoch in enumerate(self._epoch):
            if epoch >= oldest and epoch * self._width >= since:
                calls += self._calls[i]
                ok += self._ok[i]
        return calls, ok


class Demotions:
    """Which (target, endpoint) pairs the success-rate strategy has demoted, and until when.

    One float per pair: while ``now < until`` the pair is demoted; afterwards it is
    re-admitted and judged only on calls from ``until`` on -- a clean slate, without
    wiping the endpoint's shared statistics that other targets read.
    """

    __slots__ = ("_until", "demotions")

    def __init__(self) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self.demotions = 0  # times a pair was demoted (a counter for metrics)

    def is_demoted(
        self, target: str, endpoint: str, now: float, stats: SuccessWindow, rule: SuccessRate
    ) -> bool:
        key = (target, endpoint)
        until = self._until.get(key, -math.inf)
        if now < until:
            return True
        calls, ok = stats.totals(now, since=until)
        if calls >= rule.min_calls and ok / calls < rule.demote_below:
            if len(self._until) >= MAX_DEMOTIONS and not self._make_room(now):
                return False  # bound reached by live demotions: judge by rate alone
            self._until[key] = now + rule.retry_later_s
            self.demotions += 1
            return True
        return False

    def since(self, target: str, endpoint: str) -> float:
        """From when the pair's calls count (its re-admission time; -inf if never demoted)."""
        return self._until.get((target, endpoint), -math.inf)

    def _make_room(self, now: float) -> bool:
        """Drop re-admitted pairs (they lose only their clean-slate mark); True if room.

        Reached only if route tables reloaded many times with ever new target names:
        targets x endpoints of one table stays far below the bound.
        """
        self._until = {k: u for k, u in self._until.items() if u > now}
        return len(self._until) < MAX_DEMOTIONS


# --------------------------------------------------------------------------- selection


def _rendezvous(key: str, endpoint: str) -> int:
    """Highest-random-weight score: stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{key}\x00{endpoint}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def select_endpoints(
    target: Target,
    *,
    now: float,
    rng: random.Random,
    breakers: Mapping[str, CircuitBreaker] | None = None,
    latency: Mapping[str, EwmaLatency] | None = None,
    success: Mapping[str, SuccessWindow] | None = None,
    demotions: Demotions | None = None,
    sticky_key: str | None = None,
) -> list[str]:
    """Endpoints to try, in order: the first is the primary choice, the rest the failover
    order. Endpoints whose breaker would refuse a call now are left out (an empty list
    means every endpoint is out: fail the payment, or stand in).

    An endpoint missing from a mapping counts as healthy with no statistics. The result
    depends only on the arguments and the rng's state, so a seeded rng replays it.
    """
    if breakers is None:
        up = list(target.endpoints)
    else:  # one lookup per endpoint: this runs for every payment
        up = [e for e in target.endpoints
              if (breaker := breakers.get(e)) is None or breaker.available(now)]
    if len(up) <= 1:
        return up
    strategy = target.strategy
    if isinstance(strategy, Priority):
        return up
    if isinstance(strategy, Weighted):
        weight = dict(zip(target.endpoints, strategy.weights, strict=True))
        total = sum(weight[e] for e in up)
        if total == 0:
            return up  # only standbys are left: listed order
        draw = rng.random() * total
        first = next(e for e in reversed(up) if weight[e] > 0)  # if rounding runs past the end
        for e in up:
            draw -= weight[e]
            if draw < 0 and weight[e] > 0:
                first = e
                break
        return [first, *(e for e in up if e != first)]
    if isinstance(strategy, LeastLatency):
        position = {e: i for i, e in enumerate(up)}

        def latency_key(e: str) -> tuple[float, int]:
            ewma = latency.get(e) if latency is not None else None
            # Never measured: first, so that it gets measured.
            value = -1.0 if ewma is None or ewma.value is None else ewma.value
            return value, position[e]

        order = sorted(up, key=latency_key)
        if strategy.exploration > 0 and rng.random() < strategy.exploration:
            pick = order[1 + rng.randrange(len(order) - 1)]
            order.remove(pick)
            order.insert(0, pick)
        return order
    if isinstance(strategy, SuccessRate):
        return _by_success_rate(target, strategy, up, now, rng, success, demotions)
    if isinstance(strategy, Sticky):
        if sticky_key is None:
            return up
        key = sticky_key
        return sorted(up, key=lambda e: _rendezvous(key, e), reverse=True)
    raise AssertionError(f"unhandled strategy {strategy!r}")


#: Statistics of an endpoint nobody recorded: never written to.
_NO_STATS: Final = SuccessWindow()


def _by_success_rate(
    target: Target,
    rule: SuccessRate,
    up: list[str],
    now: float,
    rng: random.Random,
    success: Mapping[str, SuccessWindow] | None,
    demotions: Demotions | None,
) -> list[str]:
    empty = _NO_STATS
    good: list[tuple[float, int, str]] = []
    demoted: list[str] = []
    for i, e in enumerate(up):
        stats = success.get(e, empty) if success is not None else empty
        if demotions is not None and demotions.is_demoted(target.name, e, now, stats, rule):
            demoted.append(e)
            continue
        since = demotions.since(target.name, e) if demotions is not None else -math.inf
        calls, ok = stats.totals(now, since)
        # Too few calls to judge: optimistic (rate 1.0), so a new endpoint gets traffic.
        rate = ok / calls if calls >= rule.min_calls else 1.0
        good.append((-rate, i, e))
    order = [e for _, _, e in sorted(good)] + demoted
    if demoted and good and rule.exploration > 0 and rng.random() < rule.exploration:
        pick = demoted[rng.randrange(len(demoted))]
        order.remove(pick)
        order.insert(0, pick)
    return order


class EndpointHealth:
    """Every per-endpoint signal the strategies read, kept in one place for the caller:
    a breaker, an EWMA latency and a success window per endpoint, plus demotions.

    ``record`` after every real call feeds all three; ``select`` runs the target's strategy
    over them. Endpoints are fixed at construction (the switch's adapters): a route table
    reload changes targets, not this.
    """

    def __init__(
        self,
        endpoints: Iterable[str],
        *,
        breaker: BreakerConfig | None = None,
        breaker_overrides: Mapping[str, BreakerConfig] | None = None,
        on_transition: TransitionHook | None = None,
        latency_alpha: float = 0.2,
        failure_latency_s: float = 1.0,
        success_window_s: float = 60.0,
        success_buckets: int = 12,
    ) -> None:
        names = list(dict.fromkeys(endpoints))
        assert 0 < len(names) <= MAX_ENDPOINTS, len(names)
        overrides = breaker_overrides or {}
        self.breakers: dict[str, CircuitBreaker] = {
            e: CircuitBreaker(e, overrides.get(e, breaker), on_transition) for e in names
        }
        self.latency: dict[str, EwmaLatency] = {e: EwmaLatency(latency_alpha) for e in names}
        self.success: dict[str, SuccessWindow] = {
            e: SuccessWindow(success_window_s, success_buckets) for e in names
        }
        self.demotions = Demotions()
        assert failure_latency_s >= 0
        self.failure_latency_s = failure_latency_s

    def record(self, endpoint: str, now: float, ok: bool, duration_s: float) -> None:
        """A real call's result: ``ok`` means the endpoint worked (see CircuitBreaker.record).

        A failure enters the latency average as at least ``failure_latency_s``: an endpoint
        that fails fast (connection refused in 0.1 ms) must not look like the fastest one
        to the least-latency strategy while its breaker has not tripped yet.
        """
        self.breakers[endpoint].record(now, ok, duration_s)
        self.latency[endpoint].observe(
            duration_s if ok else max(duration_s, self.failure_latency_s)
        )
        self.success[endpoint].record(now, ok)

    def select(
        self, target: Target, now: float, rng: random.Random, sticky_key: str | None = None
    ) -> list[str]:
        return select_endpoints(
            target,
            now=now,
            rng=rng,
            breakers=self.breakers,
            latency=self.latency,
            success=self.success,
            demotions=self.demotions,
            sticky_key=sticky_key,
        )
