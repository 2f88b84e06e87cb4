"""Sans-IO resilience decisions: retry, retry budget, retry safety, endpoint selection,
admission. No sockets and no clocks: ``now`` comes from the caller (anyio's clock) and
randomness from a seeded :class:`random.Random`, so the same seed and the same inputs give
the same decisions (invariant 6), under a mock clock as on a real one.

How the pieces fit one payment (the caller's loop, sketched)::

    order = health.select(target, now, rng, sticky_key)       # primary first, then failover
    budget.record_attempt(now)                                 # one per payment
    for attempts_made, endpoint in enumerate(order, 1):
        if not limiter.try_acquire(endpoint):
            continue                                           # next candidate, no send
        if not health.breakers[endpoint].allow(now):           # last: a probe slot taken
            limiter.release(endpoint)                          # must be reported back
            continue
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

from typing import Annotated

import msgspec

from switch.routing.admission import AdmissionConfig
from switch.routing.breaker import BreakerConfig
from switch.routing.retry import (
    MAX_BUCKETS,
    RetryBudgetConfig,
    RetryPolicy,
    Seconds,
)

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
