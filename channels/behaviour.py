"""Seeded behaviour model shared by the simulated networks (card, SWIFT, QR).

A simulator asks its `Behaviour` how to treat each request: how long the "issuer" takes, whether
the answer is a technical error, whether a fault refuses, swallows, resets, mangles, duplicates or
delays it. Business declines (insufficient funds, closed account, …) are not decided here: they
belong to each network's rules, and keeping them apart is what lets a fault scenario change the
technical picture without changing which payments the issuer would have approved.

Determinism (invariant 6): every random choice comes from the Behaviour's own
`random.Random(seed)`, and each public sampling call draws a FIXED number of uniforms whatever
the outcome (`sample_latency` 2, `technical_error` 2, `plan` 8). Same seed and same call order
give the same outcomes (the TCP servers plan each request as it is read, in frame order, not
when an event loop gets round to its task); and switching a fault on changes only the
outcomes it affects, not the random stream seen by every later request, so a scenario with
and without a fault can be compared request by request.

Time: nothing here reads a clock. Callers pass `now` (from `anyio.current_time()`); the
capacity gate waits with anyio primitives only, so everything runs under trio's MockClock.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from itertools import accumulate
from statistics import NormalDist
from types import TracebackType
from typing import Annotated, Final, Literal

import anyio
import anyio.lowlevel
import msgspec

from channels.faults import NO_FAULTS, ActiveFaults, FaultTimeline

__all__ = [
    "Behaviour",
    "BehaviourConfig",
    "CapacityConfig",
    "CapacityExceeded",
    "CapacityGate",
    "ConnectionState",
    "EndpointOverride",
    "ErrorMixConfig",
    "GateTicket",
    "LatencyConfig",
    "RequestAction",
    "RequestPlan",
]

#: Endpoints one Behaviour may describe (the default one plus overrides).
MAX_ENDPOINTS: Final = 256
#: Distinct technical error codes in one mix.
MAX_ERROR_CODES: Final = 16
#: |z| cap for the normal draw: keeps a lognormal sample finite and bounded even for u ≈ 0 or 1
#: (|z| > 8 has probability ~1e-15, so the cap never shapes a realistic distribution).
MAX_ABS_Z: Final = 8.0
#: Smallest uniform fed to the inverse CDF: random() may return exactly 0.0.
MIN_UNIFORM: Final = 2.0**-53
#: Draws per call, pinned by tests so that a refactor cannot silently desynchronise seeded streams.
DRAWS_PER_LATENCY: Final = 2
DRAWS_PER_ERROR: Final = 2
DRAWS_PER_PLAN: Final = 8

_STANDARD_NORMAL: Final = NormalDist()

_Code = Annotated[str, msgspec.Meta(pattern=r"\A[0-9A-Z]{1,8}\Z")]
_EndpointName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class LatencyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Service time: lognormal around `median_ms`, plus a heavy tail.

    With probability `tail_prob` a sample is multiplied by `tail_factor` (GC pauses, a slow
    HSM, a cold cache): real issuers' p99.9 sits far above what one lognormal gives. Every
    sample is capped at `max_ms` before fault slow-downs apply, so that a bad configuration
    cannot produce hour-long sleeps.
    """

    median_ms: Annotated[float, msgspec.Meta(gt=0, le=600_000)] = 20.0
    sigma: Annotated[float, msgspec.Meta(ge=0, le=4)] = 0.5
    tail_prob: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    tail_factor: Annotated[float, msgspec.Meta(ge=1, le=1000)] = 1.0
    max_ms: Annotated[float, msgspec.Meta(gt=0, le=3_600_000)] = 60_000.0

    def __post_init__(self) -> None:
        if self.max_ms < self.median_ms:
            raise ValueError(f"max_ms ({self.max_ms:g}) is below median_ms ({self.median_ms:g})")


class CapacityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """At most `max_concurrency` requests in service and `max_queue` waiting; past that, reject.

    The queue is what makes latency grow with load, as at a real issuer; its bound is what
    turns overload into a clear technical error instead of unbounded memory (invariant 5).
    """

    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 256


def _default_codes() -> dict[str, float]:
    return {"91": 1.0, "96": 1.0}


class ErrorMixConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Technical (not business) errors: with `technical_error_rate`, answer one of `codes`.

    Codes use ISO 8583's technical vocabulary ("91" issuer or switch inoperative, "96" system
    malfunction), weighted; each network maps them onto its own (pacs.002 reason, QR status).
    `unavailable_code` answers requests hit by a "partial" fault.
    """

    technical_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    codes: Annotated[
        dict[_Code, Annotated[float, msgspec.Meta(gt=0, le=1e6)]],
        msgspec.Meta(min_length=1, max_length=MAX_ERROR_CODES),
    ] = msgspec.field(default_factory=_default_codes)
    unavailable_code: _Code = "91"


class EndpointOverride(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Per-endpoint replacements for the network-wide defaults (None: use the default)."""

    latency: LatencyConfig | None = None
    capacity: CapacityConfig | None = None
    errors: ErrorMixConfig | None = None


class BehaviourConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Behaviour of one simulated network: defaults plus optional per-endpoint overrides."""

    latency: LatencyConfig = msgspec.field(default_factory=LatencyConfig)
    capacity: CapacityConfig = msgspec.field(default_factory=CapacityConfig)
    errors: ErrorMixConfig = msgspec.field(default_factory=ErrorMixConfig)
    endpoints: Annotated[
        dict[_EndpointName, EndpointOverride], msgspec.Meta(max_length=MAX_ENDPOINTS - 1)
    ] = msgspec.field(default_factory=dict)


class CapacityExceeded(Exception):
    """Both the service slots and the waiting queue are full: answer a technical error now."""

    def __init__(self, name: str, max_concurrency: int, max_queue: int) -> None:
        super().__init__(
            f"capacity exceeded on {name or 'endpoint'!r}: "
            f"{max_concurrency} in service and {max_queue} waiting")
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue


class GateTicket:
    """A place in a `CapacityGate`'s queue; `granted` once the slot is handed over."""

    __slots__ = ("event", "granted", "on_grant")

    def __init__(self, on_grant: Callable[[], None] | None) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.on_grant = on_grant


class CapacityGate:
    """Async context manager admitting at most `max_concurrency` holders and `max_queue` waiters.

    `async with gate:` enters service at once if a slot is free, otherwise waits in FIFO order
    (a released slot is handed straight to the oldest waiter, so newcomers cannot barge past
    the queue); with the queue full it raises `CapacityExceeded` without waiting.
    A cancelled waiter leaves the queue; the counters stay exact either way.

    The queue's order is the order of `enter_or_queue()` calls, not the order an event loop
    happens to run the waiting tasks in (trio shuffles each batch of runnable tasks), and a
    waiter's `on_grant` runs inside the `release()` that hands it the slot: so which request
    is served when is a function of arrival order alone (invariant 6).
    """

    __slots__ = (
        "_in_service", "_queue", "admitted_total", "max_concurrency", "max_queue", "name",
        "rejected_total",
    )

    def __init__(self, max_concurrency: int, max_queue: int, *, name: str = "") -> None:
        assert max_concurrency >= 1, "a gate that admits nobody is a misconfiguration"
        assert max_queue >= 0
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        # Events are created per waiter, inside the event loop that waits on them: a gate
        # built at import time or reused by another test run binds to no loop.
        self._queue: deque[GateTicket] = deque()
        self._in_service = 0
        self.admitted_total = 0
        self.rejected_total = 0

    @property
    def in_service(self) -> int:
        return self._in_service

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def enter_or_queue(self, on_grant: Callable[[], None] | None = None) -> GateTicket | None:
        """Synchronously take a free slot (None: in service now), or the last place in the
        queue (a ticket to `wait()` on; `on_grant`, which must not raise, runs when the
        slot is handed over), or raise `CapacityExceeded` with the queue full."""
        if self._in_service < self.max_concurrency:
            assert not self._queue, "a slot is free while requests wait"
            self._in_service += 1
            self.admitted_total += 1
            return None
        if len(self._queue) >= self.max_queue:
            self.rejected_total += 1
            raise CapacityExceeded(self.name, self.max_concurrency, self.max_queue)
        ticket = GateTicket(on_grant)
        self._queue.append(ticket)
        return ticket

    async def wait(self, ticket: GateTicket) -> None:
        """Wait until ``ticket`` holds a slot. Cancelled: it leaves the queue, or, if the
        slot was handed over meanwhile, passes it on (the caller holds nothing)."""
        try:
            await ticket.event.wait()
        except BaseException:
            if ticket.granted:
                self.release()
            else:
                self._queue.remove(ticket)
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool."""
        assert self._in_service > 0
        if self._queue:
            ticket = self._queue.popleft()
            ticket.granted = True
            self.admitted_total += 1
            ticket.event.set()
            if ticket.on_grant is not None:
                ticket.on_grant()
        else:
            self._in_service -= 1

    async def __aenter__(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        ticket = self.enter_or_queue()
        if ticket is not None:
            await self.wait(ticket)
        assert 0 < self._in_service <= self.max_concurrency
        assert 0 <= len(self._queue) <= self.max_queue

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


RequestAction = Literal["refuse", "blackhole", "reset", "respond"]
ConnectionState = Literal["up", "down", "blackhole"]


class RequestPlan(msgspec.Struct, frozen=True):
    """How a simulator treats one request.

    - action "refuse": the endpoint (or the part of it serving this route key) is down;
      "blackhole": never answer; "reset": drop the connection after `latency_s`;
      "respond": answer after `latency_s + late_delay_s`.
    - technical_error: a technical code to answer instead of the network's business decision.
    - malformed / duplicate: send malformed bytes instead of the answer / send it twice.
    - latency_factor: the active "slow" factor (already in `latency_s`), for latency a
      network adds of its own (a SWIFT payment's correspondent hops): slow is slow throughout.
    """

    action: RequestAction
    latency_s: float
    technical_error: str | None = None
    malformed: bool = False
    duplicate: bool = False
    late_delay_s: float = 0.0
    latency_factor: float = 1.0

    @property
    def total_delay_s(self) -> float:
        return self.latency_s + self.late_delay_s


class _Profile:
    """One endpoint's configuration, pre-digested for the per-request path."""

    __slots__ = (
        "capacity", "code_cumulative", "codes", "error_rate", "max_s", "median_s", "sigma",
        "tail_factor", "tail_prob", "unavailable_code",
    )

    def __init__(self, latency: LatencyConfig, capacity: CapacityConfig,
                 errors: ErrorMixConfig) -> None:
        self.median_s = latency.median_ms / 1000.0
        self.sigma = latency.sigma
        self.tail_prob = latency.tail_prob
        self.tail_factor = latency.tail_factor
        self.max_s = latency.max_ms / 1000.0
        self.capacity = capacity
        self.error_rate = errors.technical_error_rate
        # Sorted so the mapping's insertion order (which a config file may not preserve) cannot
        # change which code a given draw selects.
        ordered = sorted(errors.codes.items())
        self.codes = tuple(code for code, _ in ordered)
        self.code_cumulative = tuple(accumulate(weight for _, weight in ordered))
        self.unavailable_code = errors.unavailable_code
        assert self.codes and self.code_cumulative[-1] > 0


class Behaviour:
    """Seeded latency, technical-error and fault decisions for one simulated network.

    `endpoint` names the default endpoint (the network itself for a single-host simulator);
    methods accept `endpoint=` to speak for one of the config's per-endpoint overrides.
    """

    def __init__(self, config: BehaviourConfig, seed: int, *, endpoint: str = "default",
                 faults: FaultTimeline | None = None) -> None:
        assert isinstance(seed, int) and seed >= 0, "seed must be a non-negative int"
        self.config = config
        self.seed = seed
        self.endpoint = endpoint
        self.faults = faults if faults is not None else FaultTimeline()
        self._rng = random.Random(seed)
        self._profiles: dict[str, _Profile] = {
            endpoint: _Profile(config.latency, config.capacity, config.errors)}
        for name, override in config.endpoints.items():
            self._profiles[name] = _Profile(
                override.latency or config.latency,
                override.capacity or config.capacity,
                override.errors or config.errors)
        assert len(self._profiles) <= MAX_ENDPOINTS
        self._gates: dict[str, CapacityGate] = {}

    @property
    def rng(self) -> random.Random:
        """The stream every decision here draws from; pass it to code that shares the order."""
        return self._rng

    def derive_rng(self, label: str) -> random.Random:
        """An independent generator for another concern (e.g. the network's business rules).

        Derived from (seed, label) with a stable hash (not `hash()`, which is salted per
        process), so business outcomes stay reproducible and do not shift when faults change
        how many draws this Behaviour's own stream consumes.
        """
        digest = hashlib.sha256(f"{self.seed}:{label}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _profile(self, endpoint: str | None) -> tuple[str, _Profile]:
        name = self.endpoint if endpoint is None else endpoint
        profile = self._profiles.get(name)
        if profile is None:
            raise KeyError(f"unknown endpoint {name!r}; configure it under 'endpoints'")
        return name, profile

    def capacity(self, endpoint: str | None = None) -> CapacityGate:
        """The capacity gate of `endpoint` (one per endpoint, created on first use)."""
        name, profile = self._profile(endpoint)
        gate = self._gates.get(name)
        if gate is None:
            gate = CapacityGate(profile.capacity.max_concurrency, profile.capacity.max_queue,
                                name=name)
            self._gates[name] = gate
        return gate

    # --- sampling primitives: fixed draw counts (see module docstring) -----------------------

    def _latency(self, profile: _Profile, factor: float) -> float:
        rng = self._rng
        u_body, u_tail = rng.random(), rng.random()
        z = _STANDARD_NORMAL.inv_cdf(max(u_body, MIN_UNIFORM))
        z = min(max(z, -MAX_ABS_Z), MAX_ABS_Z)
        seconds = profile.median_s * math.exp(profile.sigma * z)
        if u_tail < profile.tail_prob:
            seconds *= profile.tail_factor
        seconds = min(seconds, profile.max_s) * factor
        assert 0.0 < seconds < math.inf
        return seconds

    def _error(self, profile: _Profile, fault_rate: float) -> str | None:
        rng = self._rng
        u_hit, u_code = rng.random(), rng.random()
        if u_hit >= max(profile.error_rate, fault_rate):
            return None
        cumulative = profile.code_cumulative
        index = bisect_right(cumulative, u_code * cumulative[-1])
        return profile.codes[min(index, len(profile.codes) - 1)]

    def _active(self, endpoint_name: str, now: float, route_key: str) -> ActiveFaults:
        return self.faults.active(endpoint_name, now, route_key)

    def sample_latency(self, now: float, route_key: str = "", *,
                       endpoint: str | None = None) -> float:
        """Service time in seconds for one request, with active "slow" faults applied."""
        name, profile = self._profile(endpoint)
        return self._latency(profile, self._active(name, now, route_key).latency_factor)

    def technical_error(self, now: float, route_key: str = "", *,
                        endpoint: str | None = None) -> str | None:
        """A technical error code for one request (configured mix or error_burst), or None."""
        name, profile = self._profile(endpoint)
        return self._error(profile, self._active(name, now, route_key).error_rate)

    def plan(self, now: float, route_key: str = "", *, endpoint: str | None = None
             ) -> RequestPlan:
        """Everything a simulator needs to treat one request, from one fault query.

        Always draws `DRAWS_PER_PLAN` uniforms in the same order (latency 2, error 2, reset,
        malformed, duplicate, late), then applies precedence:
        refuse > blackhole > unavailable ("partial") > reset > respond.
        """
        name, profile = self._profile(endpoint)
        active = self.faults.active(name, now, route_key)  # _active, one call less per request
        rng = self._rng
        latency_s = self._latency(profile, active.latency_factor)
        error = self._error(profile, active.error_rate)
        u_reset, u_malformed, u_duplicate, u_late = (
            rng.random(), rng.random(), rng.random(), rng.random())
        if active is NO_FAULTS:
            return RequestPlan("respond", latency_s, technical_error=error)
        if active.is_down:
            return RequestPlan("refuse", 0.0)
        factor = active.latency_factor
        if active.is_blackhole:
            return RequestPlan("blackhole", latency_s, latency_factor=factor)
        if active.unavailable:
            error = profile.unavailable_code
        if u_reset < active.reset_rate:
            return RequestPlan("reset", latency_s, latency_factor=factor)
        return RequestPlan(
            "respond", latency_s, technical_error=error,
            malformed=u_malformed < active.malformed_rate,
            duplicate=u_duplicate < active.duplicate_rate,
            late_delay_s=active.late_delay_s if u_late < active.late_rate else 0.0,
            latency_factor=factor)

    def connection_state(self, now: float, *, endpoint: str | None = None) -> ConnectionState:
        """Whether a new connection should be accepted; draws nothing (faults are on/off here)."""
        name, _ = self._profile(endpoint)
        active = self.faults.active(name, now)
        if active.is_down:
            return "down"
        if active.is_blackhole:
            return "blackhole"
        return "up"
