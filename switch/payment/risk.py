"""Risk, first version: amount limits, blocklists, velocity, and the AML flag.

Rules run in a fixed order and the first failing one declines the payment, so a decline
always names one rule. The AML flag never declines: a large payment is legal, it is
reported. Velocity is counted per card token and per payer account over a sliding
window; only payments that pass every other rule count towards it, so a blocked card
cannot exhaust a shared account's velocity.

Bounded memory: a key is forgotten once every event of its window has expired (least
recently seen first), at most ``max_keys`` keys are tracked (past it the least recently
seen is forgotten), and each key holds at most ``max_count`` entries, because one more
than that is already a decline.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import msgspec

from switch import reasons
from switch.bounds import PositiveSeconds
from switch.currency import exponent
from switch.model import Channel, Payment, tokenize_pan


class AmountLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A per-payment amount cap for one channel and currency; above it, declined 61."""

    channel: Channel
    currency: str
    max_minor: Annotated[int, msgspec.Meta(ge=1)]


class VelocityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per card (token) or payer account, within a sliding window; past a limit, declined."""

    #: The sliding window.
    window_s: PositiveSeconds = 60.0
    #: Payments per key within the window.
    max_count: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 30
    #: Summed in CNY-equivalent minor units so one limit covers every currency.
    max_amount_cny_minor: Annotated[int, msgspec.Meta(ge=1)] = 100_000_000
    #: Keys tracked at once; the least recently seen is forgotten past this.
    max_keys: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 1_000_000


class RiskConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Risk rules, checked before routing; a breach is declined without reaching a network."""

    amount_limits: list[AmountLimit] = msgspec.field(default_factory=list)
    velocity: VelocityConfig = msgspec.field(default_factory=VelocityConfig)
    #: Card numbers always declined.
    blocked_pans: list[str] = msgspec.field(default_factory=list)
    #: Payer accounts always declined.
    blocked_accounts: list[str] = msgspec.field(default_factory=list)
    #: Large-amount AML report threshold, in CNY minor units (default 50,000.00 CNY).
    aml_threshold_cny_minor: Annotated[int, msgspec.Meta(ge=1)] = 5_000_000
    #: Units of CNY per one unit of each currency, for AML and velocity equivalence.
    fx_to_cny: dict[str, Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(
        default_factory=lambda: {
            "CNY": 1.0,
            "USD": 7.1,
            "EUR": 7.7,
            "GBP": 9.0,
            "JPY": 0.047,
            "HKD": 0.91,
            "SGD": 5.3,
            "INR": 0.085,
            "KRW": 0.0052,
            "CHF": 8.0,
            "AUD": 4.7,
            "CAD": 5.2,
        }
    )



@dataclass(frozen=True, slots=True)
class RiskDecision:
    reason: str | None  # None: allowed; else the decline reason code
    rule: str  # the rule that declined, "" when allowed
    aml_flag: bool


ALLOW = RiskDecision(None, "", False)
ALLOW_AML = RiskDecision(None, "", True)


class _Window(msgspec.Struct, gc=False):
    """One key's events in the sliding window, oldest first from ``head``.

    Arrays and an untracked Struct, not a deque of (time, weight) tuples: the cyclic
    garbage collector walks every element of every container it tracks, and at 3x
    overload the windows held over a million events, so each full collection (one every
    ~2 s while the heap grew) paused the switch for up to 100 ms, longer as it aged
    (issue 12). The Struct is not tracked; its two arrays are (CPython tracks arrays),
    but the collector visits an array once, never its elements.
    """

    times: array[float] = msgspec.field(default_factory=lambda: array("d"))
    weights: array[int] = msgspec.field(default_factory=lambda: array("q"))
    head: int = 0
    total: int = 0

    @property
    def count(self) -> int:
        return len(self.times) - self.head


#: Copied for each new key's window: copying an empty array is a third of the cost of
#: ``array(typecode)``, and a default_factory lambda per field costs more again (issue 12).
_NO_TIMES: array[float] = array("d")
_NO_WEIGHTS: array[int] = array("q")


class RiskEngine:
    def __init__(self, config: RiskConfig, token_key: bytes) -> None:
        self._limits = {(lim.channel, lim.currency): lim.max_minor for lim in config.amount_limits}
        self._blocked_tokens = frozenset(
            tokenize_pan(pan, token_key) for pan in config.blocked_pans
        )
        self._blocked_accounts = frozenset(config.blocked_accounts)
        self._window_s = config.velocity.window_s
        self._max_count = config.velocity.max_count
        self._max_amount = config.velocity.max_amount_cny_minor
        self._max_keys = config.velocity.max_keys
        self._aml_threshold = config.aml_threshold_cny_minor
        # CNY minor units per one minor unit of each currency, precomputed once.
        self._to_cny_minor = {
            code: rate * 10 ** (2 - exponent(code)) for code, rate in config.fx_to_cny.items()
        }
        #: Least recently used first. An OrderedDict, not a plain dict taken out and put
        #: back: evicting a plain dict's first key scans past every slot freed before it,
        #: measured 8.8 against 1.6 us per new key with a million keys (the collector
        #: visits an OrderedDict's entries, once per key, which costs less).
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def cny_equivalent(self, amount: int, currency: str) -> int | None:
        rate = self._to_cny_minor.get(currency)
        return None if rate is None else int(amount * rate)

    def assess(self, payment: Payment, now: float) -> RiskDecision:
        # Every payment comes here, so the rules are written out inline, with no
        # per-payment list, window method call or property: together they were the
        # payment core's largest single cost (issue 12). Same rules, same order, same
        # decisions as one call per key (tests/test_risk_fast.py runs the two side by side).
        amount, currency = payment.amount, payment.currency
        limits = self._limits
        if limits:  # most configurations set none: no key tuple to build
            limit = limits.get((payment.channel, currency))
            if limit is not None and amount > limit:
                return RiskDecision(reasons.OVER_AMOUNT_LIMIT, "amount_limit", False)
        blocked = self._blocked_accounts
        if blocked and (payment.payer.account in blocked or payment.payee.account in blocked):
            return RiskDecision(reasons.RESTRICTED, "blocklist", False)
        tokens = self._blocked_tokens
        if tokens and payment.card is not None and payment.card.token in tokens:
            return RiskDecision(reasons.RESTRICTED, "blocklist", False)
        rate = self._to_cny_minor.get(currency)  # as cny_equivalent
        cny = None if rate is None else int(amount * rate)
        # A currency without an FX rate is not amount-velocity checked or AML-screened;
        # count velocity still applies. Operators add rates in risk.fx_to_cny.
        weight = 0 if cny is None else cny
        horizon = now - self._window_s
        keys = payment.velocity_keys
        if len(keys) > 2:  # none today (Payment.velocity_keys gives one or two)
            return self._assess_many(keys, weight, horizon, now, cny)
        # Every key's window is fetched (and so marked recently seen) before any decides.
        # The usual case inline, a method call only for a new key or expired events,
        # and no list of windows: one or two keys per payment.
        windows = self._windows
        first = windows.get(keys[0])
        if first is None:
            first = self._new_window(keys[0], horizon, keys)
        else:
            windows.move_to_end(keys[0])  # now the most recently seen
            head = first.head
            if head < len(first.times) and first.times[head] <= horizon:
                self._expire(first, horizon)  # usually not: one comparison
        second = None
        if len(keys) == 2:
            second = windows.get(keys[1])
            if second is None:
                second = self._new_window(keys[1], horizon, keys)
            else:
                windows.move_to_end(keys[1])
                head = second.head
                if head < len(second.times) and second.times[head] <= horizon:
                    self._expire(second, horizon)
        max_count, room = self._max_count, self._max_amount - weight
        # ``total > room`` is ``total + weight > max_amount``: Python ints are exact.
        if len(first.times) - first.head >= max_count:
            return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_count", False)
        if first.total > room:
            return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_amount", False)
        if second is not None:
            if len(second.times) - second.head >= max_count:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_count", False)
            if second.total > room:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_amount", False)
        first.times.append(now)
        first.weights.append(weight)
        first.total += weight
        if second is not None:
            second.times.append(now)
            second.weights.append(weight)
            second.total += weight
        if cny is not None and cny >= self._aml_threshold:
            return ALLOW_AML
        return ALLOW

    def _assess_many(self, keys: tuple[str, ...], weight: int, horizon: float, now: float,
                     cny: int | None) -> RiskDecision:
        """The velocity rules for any number of keys: as :meth:`assess`, only general."""
        windows = [self._window(key, horizon, keys) for key in keys]
        for window in windows:
            if window.count >= self._max_count:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_count", False)
            if window.total + weight > self._max_amount:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_amount", False)
        for window in windows:
            window.times.append(now)
            window.weights.append(weight)
            window.total += weight
        return ALLOW_AML if cny is not None and cny >= self._aml_threshold else ALLOW

    def _window(self, key: str, horizon: float, keep: tuple[str, ...]) -> _Window:
        window = self._windows.get(key)
        if window is None:
            return self._new_window(key, horizon, keep)
        self._windows.move_to_end(key)  # now the most recently seen
        head = window.head
        if head < len(window.times) and window.times[head] <= horizon:
            self._expire(window, horizon)
        return window

    def _new_window(self, key: str, horizon: float, keep: tuple[str, ...]) -> _Window:
        windows = self._windows
        self._forget_expired(horizon, keep)
        window = windows[key] = _Window(_NO_TIMES.__copy__(), _NO_WEIGHTS.__copy__())
        if len(windows) > self._max_keys:
            windows.popitem(last=False)  # the least recently seen key
        assert len(windows) <= self._max_keys  # only a new key adds one
        return window

    @staticmethod
    def _expire(window: _Window, horizon: float) -> None:
        """Drop the events at or before ``horizon`` from the front of ``window``."""
        times, head = window.times, window.head
        end = len(times)
        weights = window.weights
        total = window.total
        while head < end and times[head] <= horizon:
            total -= weights[head]
            head += 1
        window.total = total
        if 2 * head >= end:  # drop the expired half: amortised O(1) per event
            del times[:head]
            del weights[:head]
            head = 0
        window.head = head

    def _forget_expired(self, horizon: float, keep: tuple[str, ...]) -> None:
        """Drop the least recently seen keys while every event of theirs has left the
        window: an expired window decides exactly as a new one (count 0, total 0), so
        forgetting it changes no decision. Without this, every key ever seen stayed until
        ``max_keys`` pushed it out: a million windows (~300 MB, walked by every full
        collection) on a switch whose minute of traffic has a few thousand cards.

        Never a key in ``keep`` (the payment being assessed): its window was just fetched,
        so it is the most recently seen, and every key after it is one of the payment's
        too. Forgotten, its expired window was detached from the index and the payment's
        event went into it, lost: the card's next payment found an empty window and passed
        its velocity limit."""
        windows = self._windows
        while windows:
            key = next(iter(windows))  # the oldest; a third of next(iter(windows.items()))
            if key in keep:
                return
            oldest = windows[key]
            times = oldest.times
            if oldest.head < len(times) and times[-1] > horizon:
                return  # it still counts; so may the keys seen after it
            windows.popitem(last=False)

    @property
    def tracked_keys(self) -> int:
        return len(self._windows)
