"""Circuit breaker per endpoint: stop sending to an endpoint that is failing, and find out
cheaply when it has recovered.

States (the classic three, as in resilience4j):

* ``closed`` -- traffic flows; every result is recorded in a sliding window. The breaker
  opens when, with at least ``min_calls`` calls in the window, the failure ratio reaches
  ``failure_ratio`` or the slow-call ratio (calls taking ``slow_call_s`` or more, whatever
  their result) reaches ``slow_call_ratio``; or, at once, after ``consecutive_failures``
  failures in a row (a dead endpoint is caught in a handful of calls, without waiting for
  the window to fill -- that is what bounds the failover time).
* ``open`` -- nothing is sent for ``open_s``; the caller fails over to the next endpoint.
* ``half_open`` -- at most ``half_open_probes`` real calls are let through (``allow``
  reserves one each). The first failure re-opens the breaker; when every probe has
  answered, it closes unless the probes' slow-call ratio reaches ``slow_call_ratio``. A
  reserved probe that never reports back within ``probe_timeout_s`` counts as failed, so a
  caller that lost a result cannot wedge the breaker half-open forever. Late results of
  calls sent before the half-open period (told apart by ``now - duration_s``) are ignored:
  they say nothing about the endpoint since it was opened.

Active health probes (0800 echo for cards, a cheap status call elsewhere) come in through
:meth:`CircuitBreaker.record_probe` and are kept apart from real traffic, because an echo
that works says little about authorizations that fail:

* closed: ``probe_failures`` failed probes in a row open the breaker -- this is what
  notices a dead endpoint on a quiet switch with no traffic to fail;
* open: a failed probe restarts the open period (no point probing with real payments
  yet); a successful one moves to half-open at once instead of waiting out ``open_s``;
* half-open: a failed probe re-opens; a successful one changes nothing (real probes decide).

Time is a parameter (``now``, from anyio's clock), so the breaker runs the same under a
mock clock; times that go backwards (two tasks reporting out of order) are clamped.
Memory is bounded: the count window is a fixed ring, the time window a fixed set of
buckets, and the transition history a bounded deque.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec

#: Transitions kept per breaker for the live view; older ones are only counted.
HISTORY: Final = 64
MAX_WINDOW_CALLS: Final = 100_000
MAX_WINDOW_BUCKETS: Final = 600
#: Clock-skew allowance when telling a half-open probe from an older call (see
#: ``CircuitBreaker._started_before_half_open``).
STALE_SLACK_S: Final = 0.05


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: Gauge values (a number per state, for ``payswitch_breaker_state``).
STATE_CODE: Final[dict[BreakerState, int]] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Ratio = Annotated[float, msgspec.Meta(gt=0, le=1)]


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Thresholds of one endpoint's breaker (the defaults suit a card endpoint)."""

    #: count: the last ``window_calls`` calls; time: calls in the last ``window_s`` seconds.
    window: Literal["count", "time"] = "count"
    window_calls: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW_CALLS)] = 100
    window_s: Seconds = 10.0
    #: The time window is kept as this many buckets (memory and cost per call are bounded
    #: by it; calls age out one bucket at a time).
    window_buckets: Annotated[int, msgspec.Meta(ge=2, le=MAX_WINDOW_BUCKETS)] = 10
    #: No ratio is judged on fewer calls than this (two failures out of three is noise).
    min_calls: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW_CALLS)] = 20
    failure_ratio: Ratio = 0.5
    slow_call_s: Seconds = 1.0
    #: 1.0 means "only when every call is slow"; lower it to trip on slowness.
    slow_call_ratio: Ratio = 1.0
    #: Failures in a row that open the breaker at once; 0 turns the rule off.
    consecutive_failures: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 5
    open_s: Seconds = 5.0
    half_open_probes: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    probe_timeout_s: Seconds = 10.0
    #: Failed active probes in a row that open a closed breaker; 0 turns the rule off.
    probe_failures: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3

    def __post_init__(self) -> None:
        # msgspec turns this into a ValidationError naming the struct's path.
        if self.window == "count" and self.min_calls > self.window_calls:
            raise ValueError(
                f"min_calls ({self.min_calls}) exceeds window_calls ({self.window_calls}):"
                " the ratio rules could never fire"
            )


TransitionHook = Callable[[str, BreakerState, BreakerState], None]

_FAIL: Final = 1
_SLOW: Final = 2


class _CountWindow:
    """The last ``size`` calls as a ring of flag bytes, with running counts."""

    __slots__ = ("_calls", "_failures", "_next", "_ring", "_slow")

    def __init__(self, size: int) -> None:
        assert 1 <= size <= MAX_WINDOW_CALLS
        self._ring = bytearray(size)
        self._next = 0
        self._calls = self._failures = self._slow = 0

    def add(self, now: float, flags: int) -> None:
        ring = self._ring
        if self._calls == len(ring):
            old = ring[self._next]
            self._failures -= old & _FAIL
            self._slow -= (old & _SLOW) >> 1
        else:
            self._calls += 1
        ring[self._next] = flags
        self._failures += flags & _FAIL
        self._slow += (flags & _SLOW) >> 1
        self._next = (self._next + 1) % len(ring)

    def totals(self, now: float) -> tuple[int, int, int]:
        return self._calls, self._failures, self._slow

    def clear(self) -> None:
        self._ring[:] = bytes(len(self._ring))
        self._next = 0
        self._calls = self._failures = self._slow = 0


class _TimeWindow:
    """Calls in the last ``span_s`` seconds, in ``buckets`` equal buckets.

    A bucket is identified by its epoch (``floor(now / width)``); a bucket whose stored
    epoch is stale is reset before reuse, so nothing needs a timer. The window covers
    between ``span_s - width`` and ``span_s`` of history.
    """

    __slots__ = ("_calls", "_epoch", "_failures", "_slow", "_width")

    def __init__(self, span_s: float, buckets: int) -> None:
        assert span_s > 0 and 2 <= buckets <= MAX_WINDOW_BUCKETS
        self._width = span_s / buckets
        self._epoch = [-1] * buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets

    def add(self, now: float, flags: int) -> None:
        epoch = int(now // self._width)
        i = epoch % len(self._epoch)
        if self._epoch[i] != epoch:
            self._epoch[i] = epoch
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._calls[i] += 1
        self._failures[i] += flags & _FAIL
        self._slow[i] += (flags & _SLOW) >> 1

    def totals(self, now: float) -> tuple[int, int, int]:
        oldest = int(now // self._width) - len(self._epoch) + 1
        calls = failures = slow = 0
        for i, epoch in enumerate(self._epoch):
            if epoch >= oldest:
                calls += self._calls[i]
                failures += self._failures[i]
                slow += self._slow[i]
        return calls, failures, slow

    def clear(self) -> None:
        n = len(self._epoch)
        self._epoch = [-1] * n
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n


class CircuitBreaker:
    """One endpoint's breaker. Not thread-safe: use it from the event loop only."""

    __slots__ = (
        "_consecutive",
        "_half_open_since",
        "_last_now",
        "_open_until",
        "_probe_failures",
        "_probe_times",
        "_probes_done",
        "_probes_reserved",
        "_probes_slow",
        "_window",
        "config",
        "endpoint",
        "history",
        "on_transition",
        "state",
        "transitions",
    )

    def __init__(
        self,
        endpoint: str,
        config: BreakerConfig | None = None,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config if config is not None else BreakerConfig()
        self.on_transition = on_transition
        cfg = self.config
        self._window: _CountWindow | _TimeWindow = (
            _CountWindow(cfg.window_calls)
            if cfg.window == "count"
            else _TimeWindow(cfg.window_s, cfg.window_buckets)
        )
        self.state = BreakerState.CLOSED
        #: Transitions so far; the last HISTORY of them as (now, old, new) in ``history``.
        self.transitions = 0
        self.history: deque[tuple[float, BreakerState, BreakerState]] = deque(maxlen=HISTORY)
        self._last_now = float("-inf")
        self._consecutive = 0
        self._probe_failures = 0
        self._open_until = 0.0
        self._half_open_since = 0.0
        self._probes_reserved = 0
        #: When each reserved probe was let through, oldest first (one per reservation).
        self._probe_times: deque[float] = deque()
        self._probes_done = 0
        self._probes_slow = 0

    # ------------------------------------------------------------------ queries

    def available(self, now: float) -> bool:
        """Would :meth:`allow` let a call through now? Reserves nothing (for selectors)."""
        if self.state is BreakerState.CLOSED:
            return True  # the common case, asked for every payment: no clock needed
        now = max(now, self._last_now)
        if self.state is BreakerState.OPEN:
            return now >= self._open_until
        if self._probes_expired(now):
            return False  # poll() will re-open it: a probe that never reported failed
        return self._probes_reserved < self.config.half_open_probes

    def window_totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the closed-state window, for tests and views."""
        return self._window.totals(max(now, self._last_now))

    # ------------------------------------------------------------------ events

    def poll(self, now: float) -> BreakerState:
        """Apply time-driven moves (open period over; lost probes) and return the state.

        Call it before reading ``state`` for a gauge, or from the active prober.
        """
        now = self._tick(now)
        if self.state is BreakerState.OPEN and now >= self._open_until:
            self._half_open(now)
        elif self.state is BreakerState.HALF_OPEN and self._probes_expired(now):
            self._open(now)  # a probe that never reported is a probe that failed
        return self.state

    def allow(self, now: float) -> bool:
        """May a call go to this endpoint now? In half-open, True reserves a probe slot,
        so the caller must report that call through :meth:`record`."""
        state = self.poll(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probes_reserved < self.config.half_open_probes:
            self._probes_reserved += 1
            self._probe_times.append(self._last_now)
            return True
        return False

    def record(self, now: float, ok: bool, duration_s: float) -> None:
        """Report a real call's result. ``ok`` means the endpoint worked (a business
        decline is ok; NotSent, a timeout or a technical 91/96 is not)."""
        assert duration_s >= 0, duration_s
        now = self._tick(now)
        cfg = self.config
        slow = duration_s >= cfg.slow_call_s
        if self.state is BreakerState.CLOSED:
            self._window.add(now, (0 if ok else _FAIL) | (_SLOW if slow else 0))
            self._consecutive = 0 if ok else self._consecutive + 1
            if self._should_open(now):
                self._open(now)
        elif self.state is BreakerState.HALF_OPEN:
            if self._probes_reserved == 0 or self._started_before_half_open(now, duration_s):
                return  # a call let through before this half-open period: old news
            self._probes_reserved -= 1
            self._probe_times.popleft()
            if not ok:
                self._open(now)
                return
            self._probes_done += 1
            self._probes_slow += slow
            if self._probes_done >= cfg.half_open_probes:
                if self._probes_slow / self._probes_done >= cfg.slow_call_ratio:
                    self._open(now)
                else:
                    self._close(now)
        # OPEN: a late result of a call allowed before opening; nothing to decide.

    def abandon(self, now: float, duration_s: float) -> None:
        """A call let through ``duration_s`` ago will never report: the caller failed, not
        the endpoint. Its probe slot, if it holds one, is free again; nothing is judged.
        (Left alone, the slot would count as a failed probe after ``probe_timeout_s``
        and re-open a breaker on an endpoint that did nothing wrong.)"""
        assert duration_s >= 0, duration_s
        now = self._tick(now)
        if (self.state is BreakerState.HALF_OPEN and self._probes_reserved > 0
                and not self._started_before_half_open(now, duration_s)):
            self._probes_reserved -= 1
            self._probe_times.popleft()
        assert self._probes_reserved >= 0

    def record_probe(self, now: float, ok: bool) -> None:
        """Report an active health probe (echo / status call); see the module docstring."""
        now = self._tick(now)
        cfg = self.config
        if self.state is BreakerState.CLOSED:
            self._probe_failures = 0 if ok else self._probe_failures + 1
            if cfg.probe_failures and self._probe_failures >= cfg.probe_failures:
                self._open(now)
        elif self.state is BreakerState.OPEN:
            if ok:
                self._half_open(now)
            else:
                self._open_until = now + cfg.open_s
        elif not ok:
            self._open(now)

    def force_open(self, now: float) -> None:
        """Open by hand (an operator taking an endpoint out)."""
        self._open(self._tick(now))

    # ------------------------------------------------------------------ internals

    def _tick(self, now: float) -> float:
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def _should_open(self, now: float) -> bool:
        cfg = self.config
        if cfg.consecutive_failures and self._consecutive >= cfg.consecutive_failures:
            return True
        calls, failures, slow = self._window.totals(now)
        if calls < cfg.min_calls:
            return False
        return failures / calls >= cfg.failure_ratio or slow / calls >= cfg.slow_call_ratio

    def _started_before_half_open(self, now: float, duration_s: float) -> bool:
        """Was this call sent before the current half-open period began?

        ``allow`` hands out no ticket, so a result is matched to its period by when the
        call started (``now - duration_s``). Every call from an earlier period started at
        least ``open_s`` before this one began (the breaker was open in between), so a
        slack of up to half of that absorbs the skew between the clock ``now`` comes from
        and the one durations are measured with, without mistaking a real probe.
        """
        slack = min(STALE_SLACK_S, self.config.open_s / 2)
        return now - duration_s < self._half_open_since - slack

    def _probes_expired(self, now: float) -> bool:
        """Has a reserved probe gone ``probe_timeout_s`` without reporting? Timed from when
        it was let through: timed from the half-open start, a probe taken after a quiet
        spell was "lost" at once (the endpoint refused, the breaker re-opened). Reports
        carry no ticket, so each frees the oldest reservation: a lost probe is then found
        no sooner than it should be, never a live one given up early."""
        return (
            self._probes_reserved > 0
            and now - self._probe_times[0] >= self.config.probe_timeout_s
        )

    def _open(self, now: float) -> None:
        self._open_until = now + self.config.open_s
        self._move(now, BreakerState.OPEN)

    def _half_open(self, now: float) -> None:
        self._half_open_since = now
        self._probes_reserved = self._probes_done = self._probes_slow = 0
        self._probe_times.clear()
        self._move(now, BreakerState.HALF_OPEN)

    def _close(self, now: float) -> None:
        # A fresh start: the failures that opened the breaker are not held against the
        # endpoint after it proved itself again.
        self._window.clear()
        self._consecutive = self._probe_failures = 0
        self._move(now, BreakerState.CLOSED)

    def _move(self, now: float, new: BreakerState) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        self.transitions += 1
        self.history.append((now, old, new))
        if self.on_transition is not None:
            self.on_transition(self.endpoint, old, new)
