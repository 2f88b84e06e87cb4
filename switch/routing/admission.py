"""Admission, sans-IO: in-flight slots per endpoint and in total (past them: overloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final

import msgspec

MAX_ATTEMPTS_CEILING: Final = 5
MAX_BUCKETS: Final = 600
#: (target, endpoint) demotion entries kept; targets x endpoints is far below this.
MAX_DEMOTIONS: Final = 200_000
MAX_ENDPOINTS: Final = 10_000

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]



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
