"""Fault model shared by the simulated networks (card, SWIFT, QR).

A fault is a declarative statement about one endpoint during one time window: "issuer-a refuses
connections from t=30 s for 60 s", "BINs 4111… get 30 % technical errors". Scenarios schedule
faults ahead of time; operators inject and clear them at runtime through the admin API. Both end
up in one `FaultTimeline`, which a simulator asks once per request (`active()`) what applies right
now. That question is on the hot path, so the timeline indexes windows by endpoint and answers
with a small immutable summary (`ActiveFaults`) instead of the list of faults.

Everything here is sans-IO and clock-free: callers pass `now` (from `anyio.current_time()`), so
the same scenario runs in real time or under trio's MockClock, and the answer depends only on
`now` and the schedule. Per-request coin flips ("is this one of the 30 %?") are NOT made here:
`ActiveFaults` carries rates, and the caller flips coins with its own seeded generator (see
`channels.behaviour.Behaviour`), so the global `random` never leaks into outcomes.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "CONTRADICTORY_KINDS",
    "FAULT_KINDS",
    "MAX_FAULTS",
    "NO_FAULTS",
    "ActiveFaults",
    "Fault",
    "FaultConfigError",
    "FaultConflictError",
    "FaultKind",
    "FaultStatus",
    "FaultTimeline",
    "TooManyFaultsError",
    "convert_faults",
    "decode_faults_json",
    "validate_fault_schedule",
]

# ---------------------------------------------------------------------------------------------
# Bounds. Every number a scenario or an operator can give has one, so a typo ("duration_s":
# 1e300, "factor": 1e9) is rejected at load time instead of turning into an overflow, an
# infinite sleep or a simulator that never answers.
# ---------------------------------------------------------------------------------------------

#: Scheduled + runtime-injected faults that may be held at once (expired ones do not count).
MAX_FAULTS: Final = 256
#: Longest timeline offset / window, seconds (~115 days: longer than any soak test).
MAX_TIMELINE_S: Final = 1e7
#: Largest single slow-down factor, and the cap on the product of overlapping ones.
MAX_FACTOR: Final = 1000.0
MAX_COMBINED_FACTOR: Final = 1e6
#: Longest flapping period and longest "late" extra delay, seconds.
MAX_PERIOD_S: Final = 86_400.0
MAX_DELAY_S: Final = 3_600.0
#: Route-key prefixes per fault, and the length of one prefix (a BIN range, a corridor id).
MAX_MATCH_PREFIXES: Final = 64
MAX_PREFIX_LEN: Final = 64
MAX_ENDPOINT_LEN: Final = 128

FaultKind = Literal[
    "down",  # connections refused
    "blackhole",  # connections accepted, requests never answered
    "slow",  # latency multiplied by `factor`
    "error_burst",  # `rate` of requests answered with a technical error
    "flapping",  # alternates up/down every period_s / 2
    "partial",  # matched route keys unavailable behind a live endpoint (answered "91")
    "reset",  # connection reset mid-flight with probability `rate`
    "malformed",  # `rate` of responses are malformed bytes
    "duplicate",  # `rate` of responses are sent twice
    "late",  # `rate` of responses delayed by an extra `delay_s`
]
FAULT_KINDS: Final[tuple[str, ...]] = FaultKind.__args__  # type: ignore[attr-defined]

#: Kinds that each state what the endpoint does with a request as a whole (refuse it, swallow
#: it, alternate, answer "unavailable"). Two *different* ones overlapping in time on the same
#: endpoint and the same match cannot both be true, so a schedule holding them is a mistake.
CONTRADICTORY_KINDS: Final = frozenset({"down", "blackhole", "flapping", "partial"})

# Which optional parameter each kind needs; anything else given is rejected too, because a
# "factor" on an error_burst is a misunderstanding that would otherwise be silently ignored.
_REQUIRED_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "down": (),
    "blackhole": (),
    "slow": ("factor",),
    "error_burst": ("rate",),
    "flapping": ("period_s",),
    "partial": ("match",),
    "reset": ("rate",),
    "malformed": ("rate",),
    "duplicate": ("rate",),
    "late": ("rate", "delay_s"),
}
_OPTIONAL_PARAMS: Final[dict[str, tuple[str, ...]]] = {"flapping": ("start_down",)}
_KIND_PARAMS: Final = ("factor", "rate", "period_s", "start_down", "delay_s")

_Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMELINE_S)]
_Duration = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMELINE_S)]
_Factor = Annotated[float, msgspec.Meta(ge=1, le=MAX_FACTOR)]
_Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
_Period = Annotated[float, msgspec.Meta(gt=0, le=MAX_PERIOD_S)]
_Delay = Annotated[float, msgspec.Meta(gt=0, le=MAX_DELAY_S)]
_Endpoint = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ENDPOINT_LEN)]
_Prefix = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PREFIX_LEN)]
_Match = Annotated[tuple[_Prefix, ...], msgspec.Meta(max_length=MAX_MATCH_PREFIXES)]

# Human wording for bound violations, keyed by field: msgspec's "Expected `float` <= 1.0" is
# correct but reads like a type error; a scenario author wants the allowed range.
_FIELD_HINTS: Final[dict[str, str]] = {
    "start_s": f"must be within [0, {MAX_TIMELINE_S:g}] seconds",
    "duration_s": f"must be > 0 and <= {MAX_TIMELINE_S:g} seconds (or null: until cleared)",
    "factor": f"must be within [1, {MAX_FACTOR:g}]",
    "rate": "must be within [0, 1]",
    "period_s": f"must be > 0 and <= {MAX_PERIOD_S:g} seconds",
    "delay_s": f"must be > 0 and <= {MAX_DELAY_S:g} seconds",
    "endpoint": f"must be 1..{MAX_ENDPOINT_LEN} characters",
    "match": f"at most {MAX_MATCH_PREFIXES} prefixes, each 1..{MAX_PREFIX_LEN} characters",
    "kind": "must be one of: " + ", ".join(FAULT_KINDS),
}
_BOUND_WORDS: Final = re.compile(r"(>=|<=|>|<|length|Invalid enum value)")
_AT_PATH: Final = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


class FaultConfigError(ValueError):
    """A fault (or schedule of faults) is invalid. `path` names the offending field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class FaultConflictError(FaultConfigError):
    """Two faults contradict each other.

    For a schedule, `first` and `second` are the indices of both faults. For a runtime
    injection, `first` is the id of the live fault in the way and `second` is -1 (the rejected
    fault never got an id).
    """

    def __init__(self, path: str, problem: str, first: int, second: int) -> None:
        super().__init__(path, problem)
        self.first = first
        self.second = second


class TooManyFaultsError(FaultConfigError):
    """The timeline already holds `MAX_FAULTS` live faults (invariant 5: every list is bounded)."""


class Fault(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One fault on one endpoint during one window.

    `start_s` is an offset: from the timeline origin for scheduled faults, from `now` for
    runtime-injected ones. `duration_s=None` keeps the fault until it is cleared.
    `match` scopes the fault to route keys (BIN ranges, corridors, QR scheme ids) starting with
    one of the prefixes; without it the fault covers the whole endpoint.

    msgspec enforces the per-field bounds when decoding; `validate()` re-applies them to
    instances built in Python (msgspec does not check on `__init__`) and adds the rules that
    span fields (what each kind requires).
    """

    #: What goes wrong (see the table of kinds).
    kind: FaultKind
    #: The network's `name`.
    endpoint: _Endpoint
    #: Seconds after the start (of the run, or of now when injected).
    start_s: _Seconds = 0.0
    #: How long; none: until cleared.
    duration_s: _Duration | None = None
    #: slow: latency multiplier.
    factor: _Factor | None = None
    #: error_burst, reset, malformed, duplicate, late: share of requests, 0..1.
    rate: _Rate | None = None
    #: flapping: a full down+up period.
    period_s: _Period | None = None
    #: flapping: begin with the down half.
    start_down: bool | None = None
    #: late: extra delay.
    delay_s: _Delay | None = None
    #: A list of route-key prefixes the fault is limited to; omitted: the whole endpoint.
    match: _Match | None = None

    def validate(self, path: str = "fault") -> None:
        """Raise `FaultConfigError` naming `path.<field>` if this fault is unusable."""
        try:
            msgspec.convert(msgspec.to_builtins(self), type=Fault)
        except msgspec.ValidationError as exc:
            raise _translate(exc, path) from None
        required = _REQUIRED_PARAMS[self.kind]
        allowed = required + _OPTIONAL_PARAMS.get(self.kind, ())
        for name in required:
            if getattr(self, name) is None:
                raise FaultConfigError(f"{path}.{name}", f"required for kind {self.kind!r}")
        for name in _KIND_PARAMS:
            if name not in allowed and getattr(self, name) is not None:
                raise FaultConfigError(f"{path}.{name}", f"not used by kind {self.kind!r}")
        if self.match is not None and len(self.match) == 0:
            # An empty list would match nothing; the author almost certainly meant "all", which
            # is spelt by omitting the field. Refuse rather than guess.
            raise FaultConfigError(f"{path}.match", "must not be empty (omit it to match all)")

    @property
    def end_s(self) -> float:
        """Offset at which the window closes (`inf` when it lasts until cleared)."""
        return math.inf if self.duration_s is None else self.start_s + self.duration_s


def _translate(exc: msgspec.ValidationError, root: str) -> FaultConfigError:
    """Rewrite msgspec's "... - at `$[2].rate`" into "faults[2].rate: must be within [0, 1]"."""
    parsed = _AT_PATH.match(str(exc))
    assert parsed is not None  # the pattern accepts any string
    message, sub_path = parsed["msg"], parsed["path"] or ""
    missing = _MISSING.match(message)
    if missing is not None:
        return FaultConfigError(f"{root}{sub_path}.{missing['field']}", "required")
    field = sub_path.rsplit(".", 1)[-1] if "." in sub_path else ""
    field = field.split("[", 1)[0]
    hint = _FIELD_HINTS.get(field)
    if hint is not None and _BOUND_WORDS.search(message):
        return FaultConfigError(f"{root}{sub_path}", f"{hint} ({message})")
    return FaultConfigError(f"{root}{sub_path}", message[:1].lower() + message[1:])


def _scopes_equal(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return frozenset(a) == frozenset(b)


def _contradiction(
    a: Fault, a_window: tuple[float, float], b: Fault, b_window: tuple[float, float]
) -> str | None:
    """Why `a` and `b` cannot both hold, or None.

    The rule is deliberately narrow (same endpoint, same match, overlapping windows, two
    different whole-request kinds): wider overlaps such as an endpoint-wide "down" over a
    BIN-scoped "partial" are legitimate scenarios, resolved by precedence at query time.
    """
    if a.endpoint != b.endpoint or a.kind == b.kind:
        return None
    if a.kind not in CONTRADICTORY_KINDS or b.kind not in CONTRADICTORY_KINDS:
        return None
    if not _scopes_equal(a.match, b.match):
        return None
    begin, end = max(a_window[0], b_window[0]), min(a_window[1], b_window[1])
    if begin >= end:
        return None
    return (f"{a.kind!r} and {b.kind!r} overlap on endpoint {a.endpoint!r} "
            f"for the same route keys during [{begin:g}, {end:g}) s")


def validate_fault_schedule(faults: Sequence[Fault], root: str = "faults") -> None:
    """Validate every fault and reject contradictory overlaps, naming the indices involved."""
    if len(faults) > MAX_FAULTS:
        raise TooManyFaultsError(root, f"at most {MAX_FAULTS} faults (got {len(faults)})")
    for index, fault in enumerate(faults):
        fault.validate(f"{root}[{index}]")
    # Quadratic, but bounded by MAX_FAULTS² / 2 ≈ 33k cheap checks and done once at load time.
    windows = [(f.start_s, f.end_s) for f in faults]
    for j, later in enumerate(faults):
        for i in range(j):
            why = _contradiction(faults[i], windows[i], later, windows[j])
            if why is not None:
                raise FaultConflictError(f"{root}[{j}]", f"contradicts {root}[{i}]: {why}", i, j)


def decode_faults_json(data: bytes | str, root: str = "faults") -> list[Fault]:
    """Decode a JSON array of faults and validate it as a schedule."""
    try:
        faults = msgspec.json.decode(data, type=list[Fault])
    except msgspec.ValidationError as exc:
        raise _translate(exc, root) from None
    validate_fault_schedule(faults, root)
    return faults


def convert_faults(obj: object, root: str = "faults") -> list[Fault]:
    """Convert already-parsed data (from TOML, YAML, a request body) into a validated schedule."""
    try:
        faults = msgspec.convert(obj, type=list[Fault])
    except msgspec.ValidationError as exc:
        raise _translate(exc, root) from None
    validate_fault_schedule(faults, root)
    return faults


class ActiveFaults(msgspec.Struct, frozen=True):
    """What applies to one endpoint (and route key) at one instant.

    Overlapping compatible faults combine: slow factors multiply (capped at
    `MAX_COMBINED_FACTOR`), rates take the maximum (two 30 % bursts are still a 30 % burst,
    not 51 %), late delays take the maximum. Flags follow the precedence a simulator should
    apply: is_down > is_blackhole > unavailable > reset > a (possibly erroneous) answer.

    For a connection-level query (`route_key=""`) only endpoint-wide faults count; a scoped
    fault reports is_down / is_blackhole for the matching requests only, and the simulator
    answers those the way its protocol reports an unreachable issuer or corridor.
    """

    is_down: bool = False
    is_blackhole: bool = False
    unavailable: bool = False
    latency_factor: float = 1.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    late_delay_s: float = 0.0

    @property
    def is_clear(self) -> bool:
        return self == NO_FAULTS


#: The answer for the common case; shared so the hot path allocates nothing when healthy.
NO_FAULTS: Final = ActiveFaults()


class FaultStatus(msgspec.Struct, frozen=True):
    """One currently active fault, for the admin API, dashboards and logs."""

    id: int
    kind: FaultKind
    endpoint: str
    match: tuple[str, ...] | None
    remaining_s: float | None  # None: until cleared
    detail: str  # the kind's parameters, e.g. "factor=3" or "down phase"


class _Window:
    """A fault placed on the absolute clock: [begin, end)."""

    __slots__ = ("begin", "end", "fault", "id")

    def __init__(self, fault_id: int, fault: Fault, begin: float) -> None:
        self.id = fault_id
        self.fault = fault
        self.begin = begin
        self.end = begin + fault.duration_s if fault.duration_s is not None else math.inf

    def flapping_down(self, now: float) -> bool:
        """Down during alternating half-periods; the first half is down iff `start_down`."""
        period = self.fault.period_s
        assert period is not None and period > 0
        half_periods = int((now - self.begin) // (period / 2))
        return (half_periods % 2 == 0) == bool(self.fault.start_down)


def _union(windows: Iterable[_Window]) -> tuple[list[float], list[float]]:
    """The union of ``windows`` as sorted, disjoint [start, end) spans: (starts, ends)."""
    starts: list[float] = []
    ends: list[float] = []
    for begin, end in sorted((w.begin, w.end) for w in windows):
        if ends and begin <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(begin)
            ends.append(end)
    return starts, ends


def _matches(match: tuple[str, ...] | None, route_key: str) -> bool:
    if match is None:
        return True
    # An empty key is a connection-level question: scoped faults never apply to it.
    return bool(route_key) and route_key.startswith(match)


class FaultTimeline:
    """Scheduled and runtime-injected faults, queried per request.

    `origin` is the absolute time (`anyio.current_time()`) the scenario's offsets count from.
    Windows are indexed by endpoint, so `active()` scans only the (few) faults of one endpoint
    and returns the shared `NO_FAULTS` when none applies.
    """

    def __init__(self, faults: Sequence[Fault] = (), *, origin: float = 0.0,
                 max_faults: int = MAX_FAULTS) -> None:
        assert 1 <= max_faults <= MAX_FAULTS, "max_faults outside [1, MAX_FAULTS]"
        assert math.isfinite(origin), "origin must be a finite clock reading"
        if len(faults) > max_faults:
            raise TooManyFaultsError("faults", f"at most {max_faults} faults (got {len(faults)})")
        validate_fault_schedule(faults)
        self.origin = origin
        self.max_faults = max_faults
        self._next_id = 1
        self._by_endpoint: dict[str, list[_Window]] = {}
        #: Per endpoint, the union of its windows as sorted disjoint [start, end) spans
        #: (starts, ends), built on first use and dropped whenever a window comes or goes:
        #: outside every span no fault applies, found by one bisect instead of a look at
        #: every window (a long simulated run holds dozens, past and future, per endpoint).
        self._spans: dict[str, tuple[list[float], list[float]]] = {}
        for fault in faults:
            self._insert(fault, origin + fault.start_s)

    def __len__(self) -> int:
        return sum(len(windows) for windows in self._by_endpoint.values())

    def _insert(self, fault: Fault, begin: float) -> int:
        fault_id = self._next_id
        self._next_id += 1
        self._spans.clear()
        self._by_endpoint.setdefault(fault.endpoint, []).append(_Window(fault_id, fault, begin))
        assert len(self) <= self.max_faults
        return fault_id

    def _windows(self) -> Iterable[_Window]:
        for windows in self._by_endpoint.values():
            yield from windows

    def inject(self, fault: Fault, now: float) -> int:
        """Add a fault starting at `now + fault.start_s`; return its id for `clear()`.

        Expired windows are dropped first so that a long soak with many short injections does
        not hit the bound; live ones count, and past `max_faults` the injection is refused.
        """
        fault.validate("fault")
        self.prune(now)
        if len(self) >= self.max_faults:
            raise TooManyFaultsError(
                "fault", f"timeline already holds {self.max_faults} faults; clear some first")
        new = _Window(-1, fault, now + fault.start_s)
        for other in self._by_endpoint.get(fault.endpoint, ()):
            why = _contradiction(other.fault, (other.begin, other.end), fault, (new.begin, new.end))
            if why is not None:
                raise FaultConflictError(
                    "fault", f"contradicts active fault id {other.id}: {why}", other.id, -1)
        return self._insert(fault, new.begin)

    def clear(self, fault_id: int) -> bool:
        """Remove one fault (active or scheduled). Returns whether it existed."""
        for endpoint, windows in self._by_endpoint.items():
            for index, window in enumerate(windows):
                if window.id == fault_id:
                    self._spans.clear()
                    del windows[index]
                    if not windows:
                        del self._by_endpoint[endpoint]
                    return True
        return False

    def clear_endpoint(self, endpoint: str) -> list[int]:
        """Remove every fault of `endpoint`, active and scheduled; return the removed ids.

        Scheduled ones go too: "clear the faults on issuer-a" should leave it healthy, not
        healthy until the next scheduled window opens behind the operator's back.
        """
        self._spans.clear()
        windows = self._by_endpoint.pop(endpoint, [])
        return [window.id for window in windows]

    def prune(self, now: float) -> int:
        """Forget windows that have closed; returns how many were dropped."""
        dropped = 0
        self._spans.clear()
        for endpoint in list(self._by_endpoint):
            windows = self._by_endpoint[endpoint]
            kept = [window for window in windows if window.end > now]
            dropped += len(windows) - len(kept)
            if kept:
                self._by_endpoint[endpoint] = kept
            else:
                del self._by_endpoint[endpoint]
        return dropped

    def active(self, endpoint: str, now: float, route_key: str = "") -> ActiveFaults:
        """Summarise the faults that apply to `endpoint` (and `route_key`) at `now`."""
        windows = self._by_endpoint.get(endpoint)
        if not windows:
            return NO_FAULTS
        spans = self._spans.get(endpoint)
        if spans is None:
            spans = self._spans[endpoint] = _union(windows)
        starts, ends = spans
        i = bisect_right(starts, now) - 1
        if i < 0 or not now < ends[i]:
            return NO_FAULTS  # inside no window of this endpoint
        is_down = is_blackhole = unavailable = False
        factor = 1.0
        error_rate = reset_rate = malformed_rate = duplicate_rate = late_rate = late_delay = 0.0
        hit = False
        for window in windows:
            if not (window.begin <= now < window.end):
                continue
            fault = window.fault
            if not _matches(fault.match, route_key):
                continue
            kind = fault.kind
            if kind == "flapping":
                if not window.flapping_down(now):
                    continue
                is_down = True
            elif kind == "down":
                is_down = True
            elif kind == "blackhole":
                is_blackhole = True
            elif kind == "partial":
                unavailable = True
            elif kind == "slow":
                assert fault.factor is not None
                factor = min(factor * fault.factor, MAX_COMBINED_FACTOR)
            elif kind == "error_burst":
                assert fault.rate is not None
                error_rate = max(error_rate, fault.rate)
            elif kind == "reset":
                assert fault.rate is not None
                reset_rate = max(reset_rate, fault.rate)
            elif kind == "malformed":
                assert fault.rate is not None
                malformed_rate = max(malformed_rate, fault.rate)
            elif kind == "duplicate":
                assert fault.rate is not None
                duplicate_rate = max(duplicate_rate, fault.rate)
            else:
                assert kind == "late", kind
                assert fault.rate is not None and fault.delay_s is not None
                late_rate = max(late_rate, fault.rate)
                late_delay = max(late_delay, fault.delay_s)
            hit = True
        if not hit:
            return NO_FAULTS
        return ActiveFaults(
            is_down=is_down, is_blackhole=is_blackhole, unavailable=unavailable,
            latency_factor=factor, error_rate=error_rate, reset_rate=reset_rate,
            malformed_rate=malformed_rate, duplicate_rate=duplicate_rate,
            late_rate=late_rate, late_delay_s=late_delay,
        )

    def describe(self, now: float) -> list[FaultStatus]:
        """Faults whose window contains `now`, ordered by id (oldest first)."""
        statuses = []
        for window in self._windows():
            if not (window.begin <= now < window.end):
                continue
            fault = window.fault
            remaining = None if math.isinf(window.end) else window.end - now
            statuses.append(FaultStatus(
                id=window.id, kind=fault.kind, endpoint=fault.endpoint, match=fault.match,
                remaining_s=remaining, detail=_detail(window, now)))
        statuses.sort(key=lambda status: status.id)
        return statuses


def _detail(window: _Window, now: float) -> str:
    fault = window.fault
    if fault.kind == "flapping":
        phase = "down" if window.flapping_down(now) else "up"
        return f"period_s={fault.period_s:g}, {phase} phase"
    parts = [f"{name}={getattr(fault, name):g}" for name in ("factor", "rate", "delay_s")
             if getattr(fault, name) is not None]
    return ", ".join(parts)
