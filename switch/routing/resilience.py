"""Sans-IO resilience decisions: retry, retry budget, retry safety, endpoint selection,
admission. No sockets and no clocks: ``now`` comes from the caller (anyio's clock) and
randomness from a seeded :class:`random.Random`, so the same seed and the same inputs give
the same decisions (invariant 6), under a mock clock as on a real one.

How the pieces fit one payment (the caller's loop, sketched)::

    order = health.select(target, now, rng, sticky_key)       # primary first, then failover
    budget.record_attempt(now)                                 # one per payment
    for attempts_made, endpoint in enumerate(order, 1):
        if not health.breakers[endpoint].allow(now) or not limiter.try_acquire(endpoint):
            continue                                           # next candidate, no send
        ... send under min(target.timeout_s, deadline - now) ...
        limiter.release(endpoint); health.record(endpoint, now, ok, duration)
        kind = classify(reply, not_sent=...)
        if kind is None or not is_safe_to_retry(channel, kind, same_endpoint=False):
            break                                              # answer, or unsafe to retry
        delay = policy.plan_retry(attempts_made, rng, now, deadline, min_attempt_s)
        if delay is None or not budget.try_spend_retry(now):
            break
        await anyio.sleep(delay)
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply
from switch.model import Channel
from switch.routing.breaker import BreakerConfig, CircuitBreaker, TransitionHook
from switch.routing.table import (
    LeastLatency,
    Priority,
    Sticky,
    SuccessRate,
    Target,
    Weighted,
)

#: Retries are capped at 5 attempts in all (the seed documents say 3-5): beyond that a
#: payment is better failed fast than held.
MAX_ATTEMPTS_CEILING: Final = 5
MAX_BUCKETS: Final = 600
#: (target, endpoint) demotion entries kept; targets x endpoints is far below this.
MAX_DEMOTIONS: Final = 200_000
MAX_ENDPOINTS: Final = 10_000

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


# --------------------------------------------------------------------------- retry policy


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How often and how soon to try again. Attempts count the first one."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS_CEILING)] = 3
    base_delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.025
    max_delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5

    def __post_init__(self) -> None:
        if self.base_delay_s > self.max_delay_s:
            raise ValueError(
                f"base_delay_s ({self.base_delay_s}) exceeds max_delay_s ({self.max_delay_s})"
            )

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before the next try, after ``attempt`` retries so far (0 before the first).

        Full jitter, ``uniform(0, min(max_delay_s, base_delay_s * 2**attempt))``: spreading
        retries over the whole interval, rather than around its end, is what keeps many
        clients that failed together from retrying together (AWS "Exponential Backoff And
        Jitter").
        """
        assert 0 <= attempt < 64, attempt
        cap = min(self.max_delay_s, self.base_delay_s * (1 << min(attempt, 40)))
        return rng.uniform(0.0, cap)

    def plan_retry(
        self,
        attempts_made: int,
        rng: random.Random,
        now: float,
        deadline: float,
        min_attempt_s: float = 0.0,
    ) -> float | None:
        """The delay before another attempt, or None when there must not be one.

        None when the attempt cap is reached, or when the delay plus ``min_attempt_s`` (the
        least time worth giving an attempt) would pass the payment's ``deadline``: retries
        never stretch a payment past its end-to-end budget.
        """
        assert 1 <= attempts_made <= MAX_ATTEMPTS_CEILING, attempts_made
        assert min_attempt_s >= 0
        if attempts_made >= self.max_attempts:
            return None
        delay = self.backoff(attempts_made - 1, rng)
        if now + delay + min_attempt_s > deadline:
            return None
        return delay


# --------------------------------------------------------------------------- retry budget


class RetryBudgetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Retries allowed per first attempt over the window (0.1: at most 10% extra load).
    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    window_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 10.0
    buckets: Annotated[int, msgspec.Meta(ge=2, le=MAX_BUCKETS)] = 10
    #: Retries per second allowed regardless of traffic, so a quiet switch can still
    #: retry its occasional failure (Finagle's ``minRetriesPerSec``).
    min_per_s: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 1.0


class RetryBudget:
    """A global cap on retries: over the trailing ``window_s`` seconds, at every retry,

        retries <= ratio * first_attempts + min_per_s * window_s

    so an outage that fails every payment adds at most ``ratio`` load on top of the
    traffic, instead of multiplying it by the attempt count (a retry storm).

    Counts live in ``buckets + 1`` time buckets (bounded memory, no timers). Bucketing is
    made to err on the safe side: first attempts are counted only in buckets wholly or
    partly inside the window (never older), retries in one extra, older bucket (never
    fewer), so the bound above holds exactly, not approximately. Retries also include
    failovers to another endpoint: each is an extra request on the network side.
    """

    __slots__ = ("_epoch", "_firsts", "_last", "_reserve", "_retries", "_width", "config")

    def __init__(self, config: RetryBudgetConfig | None = None) -> None:
        self.config = cfg = config if config is not None else RetryBudgetConfig()
        self._last = -math.inf
        self._width = cfg.window_s / cfg.buckets
        self._reserve = cfg.min_per_s * cfg.window_s
        n = cfg.buckets + 1
        self._epoch = [-1] * n
        self._firsts = [0] * n
        self._retries = [0] * n

    def _slot(self, now: float) -> int:
        # Out-of-order times (tasks reporting late) are clamped: going back could
        # otherwise land on a slot now holding newer counts and wipe them.
        now = self._last = max(now, self._last)
        epoch = math.floor(now / self._width)
        i = epoch % len(self._epoch)
        if self._epoch[i] != epoch:
            self._epoch[i] = epoch
            self._firsts[i] = self._retries[i] = 0
        return i

    def _totals(self, now: float) -> tuple[int, int]:
        current = math.floor(max(now, self._last) / self._width)
        n = self.config.buckets
        firsts = retries = 0
        for i, epoch in enumerate(self._epoch):
            age = current - epoch
            if 0 <= age < n:
                firsts += self._firsts[i]
            if 0 <= age <= n:
                retries += self._retries[i]
        return firsts, retries

    def record_attempt(self, now: float) -> None:
        """Count a payment's first attempt (once per payment, retries excluded)."""
        self._firsts[self._slot(now)] += 1

    def try_spend_retry(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) if it is spent."""
        firsts, retries = self._totals(now)
        if retries + 1 > self.config.ratio * firsts + self._reserve:
            return False
        self._retries[self._slot(now)] += 1
        return True

    def remaining(self, now: float) -> float:
        """Retries still allowed now (for the ``payswitch_retry_budget_remaining`` gauge)."""
        firsts, retries = self._totals(now)
        return max(0.0, self.config.ratio * firsts + self._reserve - retries)


# --------------------------------------------------------------------------- retry safety


class FailureKind(enum.StrEnum):
    """Why an attempt did not produce an answer worth returning; a closed set (metric label)."""

    NOT_SENT = "not_sent"  # never left the switch (connection refused, no link)
    UNKNOWN = "unknown"  # sent, no definitive answer (timeout, reset, 68, 94)
    TECHNICAL = "technical"  # the network answered 91/96: it definitively did not act
    DECLINED = "declined"  # a business answer (05, 51, 14, ...): final


#: Network answers that mean "nothing was done, the network could not process it".
TECHNICAL_REASONS: Final = frozenset({reasons.ISSUER_UNAVAILABLE, reasons.SYSTEM_MALFUNCTION})
#: Answers that leave the original's fate open: 68 (the issuer's answer came too late, the
#: network may have stood in) and 94 (a duplicate: an original exists and may be approved).
UNKNOWN_REASONS: Final = frozenset({reasons.RESPONSE_TOO_LATE, reasons.DUPLICATE_TRANSMISSION})


def classify(reply: NetworkReply | None, *, not_sent: bool = False) -> FailureKind | None:
    """The failure kind of one attempt, or None if it succeeded (approved / reversed).

    ``not_sent``: the adapter raised NotSent. ``reply`` None: sent, and no answer in time.
    """
    if not_sent:
        return FailureKind.NOT_SENT
    if reply is None:
        return FailureKind.UNKNOWN
    if reply.outcome in ("approved", "reversed"):
        return None
    if reply.reason in UNKNOWN_REASONS:
        return FailureKind.UNKNOWN
    if reply.outcome == "failed" and reply.reason in TECHNICAL_REASONS:
        return FailureKind.TECHNICAL
    return FailureKind.DECLINED


def counts_as_healthy(failure: FailureKind | None, reply: NetworkReply | None) -> bool:
    """Does this attempt's result count as a success for the endpoint's breaker?

    Health is "the endpoint answered sensibly", not "the payment succeeded": a business
    decline counts as healthy, and so does 94. A 94 is the issuer, alive, telling us it saw
    this STAN + terminal before; it is UNKNOWN for the *payment* (the original may stand)
    but says nothing against the endpoint, and counting it as a failure opened breakers
    and sent cards to stand-in while the issuer was up (after a restart reused STANs).
    """
    if failure is None or failure is FailureKind.DECLINED:
        return True
    return reply is not None and reply.reason == reasons.DUPLICATE_TRANSMISSION


def is_safe_to_retry(
    channel: Channel, failure: FailureKind, *, same_endpoint: bool, resolved: bool = False
) -> bool:
    """May the payment be sent again (to ``same_endpoint`` or another) without risking
    that the network acts on it twice?

    The rules, and why:

    * ``NOT_SENT`` -- always safe, on any endpoint: the network never saw the request.
    * ``UNKNOWN`` (a timeout or reset after sending, 68, 94) -- never safe until the first
      attempt is proven void, because the network may have acted on it: for a card, until
      the 0400 reversal is acknowledged; for SWIFT, until a pacs.028 status inquiry says
      rejected or never received (re-sending a pacs.008 could pay twice); for QR, until a
      check-status says failed. Pass ``resolved=True`` once that proof is in hand.
      (Resolution is the resolver's job and takes seconds to minutes, so in practice an
      unknown outcome ends the payment's retries and the resolver settles it.)
    * ``TECHNICAL`` (91/96 *answered* by the network) -- the network definitively did
      nothing, so another endpoint may be tried; the same endpoint may not, because it
      just said it cannot process and would most likely say so again (and on some
      networks a 96 is sent after partial processing, so the retry would hit that state).
    * ``DECLINED`` -- never: a business decline is the answer, and retrying it elsewhere
      is shopping for an approval.
    """
    assert channel in ("card", "swift", "qr"), channel
    if failure is FailureKind.NOT_SENT:
        return True
    if failure is FailureKind.UNKNOWN:
        return resolved
    if failure is FailureKind.TECHNICAL:
        return not same_endpoint
    return False


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
    up = [
        e
        for e in target.endpoints
        if breakers is None or e not in breakers or breakers[e].available(now)
    ]
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


# --------------------------------------------------------------------------- admission


class AdmissionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: In-flight requests per endpoint; past it, that endpoint is skipped (failover) and,
    #: if none is left, the payment is shed at once with ``overloaded``.
    per_endpoint: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 512
    #: In-flight requests to all endpoints together.
    total: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 8192
    overrides: dict[str, Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]] = msgspec.field(
        default_factory=dict
    )


class AdmissionLimiter:
    """Bounded in-flight work per endpoint and overall: a full endpoint is refused at once,
    never queued, so overload turns into fast, explicit rejections instead of latency."""

    __slots__ = ("_in_flight", "_limit", "_total", "shed", "total_limit")

    def __init__(self, endpoints: Iterable[str], config: AdmissionConfig | None = None) -> None:
        cfg = config if config is not None else AdmissionConfig()
        names = list(dict.fromkeys(endpoints))
        assert len(names) <= MAX_ENDPOINTS
        self._limit = {e: cfg.overrides.get(e, cfg.per_endpoint) for e in names}
        self._in_flight = dict.fromkeys(names, 0)
        self._total = 0
        self.total_limit = cfg.total
        self.shed = 0  # refusals so far

    def try_acquire(self, endpoint: str) -> bool:
        n = self._in_flight[endpoint]
        if n >= self._limit[endpoint] or self._total >= self.total_limit:
            self.shed += 1
            return False
        self._in_flight[endpoint] = n + 1
        self._total += 1
        return True

    def release(self, endpoint: str) -> None:
        n = self._in_flight[endpoint]
        assert n > 0 and self._total > 0, f"release without acquire on {endpoint!r}"
        self._in_flight[endpoint] = n - 1
        self._total -= 1

    def in_flight(self, endpoint: str | None = None) -> int:
        return self._total if endpoint is None else self._in_flight[endpoint]


# --------------------------------------------------------------------------- config


class ResilienceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retries, the retry budget, breakers, admission and the payment deadline
    (``[resilience]``): everything above in one config section."""

    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    retry_budget: RetryBudgetConfig = msgspec.field(default_factory=RetryBudgetConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    #: Per-endpoint breaker thresholds, replacing ``breaker`` for that endpoint.
    breakers: dict[str, BreakerConfig] = msgspec.field(default_factory=dict)
    admission: AdmissionConfig = msgspec.field(default_factory=AdmissionConfig)
    #: End-to-end budget of one payment, retries included (the seed documents: 3 s).
    payment_deadline_s: Seconds = 3.0
    latency_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    #: A failed call counts at least this long in the latency average (see EndpointHealth).
    failure_latency_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    success_window_s: Seconds = 60.0
    success_buckets: Annotated[int, msgspec.Meta(ge=2, le=MAX_BUCKETS)] = 12
    #: Active health probes (0800 echo for cards, a status call otherwise) per endpoint,
    #: fed to its breaker; 0 turns them off.
    probe_interval_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0
    probe_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
