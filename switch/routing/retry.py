"""Retries, sans-IO: the retry policy (backoff within the deadline), the global retry
budget, and which failures are safe to retry on which channel."""

from __future__ import annotations

import enum
import math
import random
from typing import Annotated, Final

import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply
from switch.model import Channel

MAX_ATTEMPTS_CEILING: Final = 5
MAX_BUCKETS: Final = 600
#: (target, endpoint) demotion entries kept; targets x endpoints is far below this.
MAX_DEMOTIONS: Final = 200_000
MAX_ENDPOINTS: Final = 10_000

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]

#: The least time worth giving a retry or failover attempt. Below it, a network working
#: normally cannot answer (the simulated issuers' default service time is ~20 ms median,
#: ~65 ms at p99; real card networks are slower still), so the attempt would almost surely
#: time out -- and a timeout after sending makes the payment UNKNOWN (a reversal or status
#: inquiry to resolve it), a worse end than the definitive 91 the previous attempt already
#: gave. So a retry whose timeout would fall below this is not made: the payment ends with
#: the last definitive answer (``payswitch_retries_denied_total{reason="deadline"}``).
#: A route whose own ``timeout_s`` is shorter uses that instead (:func:`attempt_floor`).
MIN_ATTEMPT_S: Final = 0.1


def attempt_floor(timeout_s: float) -> float:
    """The least time a retry on a route with per-attempt ``timeout_s`` must be given: an
    attempt given the route's whole timeout is never too short, however short it is."""
    return min(MIN_ATTEMPT_S, timeout_s)


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
