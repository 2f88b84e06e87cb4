"""The inlined velocity check (issue 12) decides exactly as the version before it.

``_ReferenceEngine`` is RiskEngine as of commit 02d270d, copied verbatim but for names:
one ``_window`` call per key into a list, then the rules. Both run the same random
payments (cards, accounts, currencies with and without an FX rate, blocklists, amount
limits, gaps landing on the window's edge, time standing still or stepping back) and must
give the same decisions, track the same keys in the same least-recently-seen order, and
hold the same count and total in every window.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections import OrderedDict

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from switch import reasons
from switch.model import CardRef, Party, Payment, QrRef, tokenize_pan
from switch.payment.risk import ALLOW, ALLOW_AML, RiskConfig, RiskDecision, RiskEngine

KEY = b"test-key-0123456789"
PANS = [f"4{i:014d}" for i in range(4)]
TOKENS = [tokenize_pan(pan, KEY) for pan in PANS]


class _RefWindow(msgspec.Struct, gc=False):
    times: array[float] = msgspec.field(default_factory=lambda: array("d"))
    weights: array[int] = msgspec.field(default_factory=lambda: array("q"))
    head: int = 0
    total: int = 0

    @property
    def count(self) -> int:
        return len(self.times) - self.head


class _ReferenceEngine:
    """RiskEngine.assess, _window and _forget_expired before the inlining."""

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
        self._to_cny_minor = {
            code: rate * 10 ** (2 - _exponent(code)) for code, rate in config.fx_to_cny.items()
        }
        self._windows: OrderedDict[str, _RefWindow] = OrderedDict()

    def cny_equivalent(self, amount: int, currency: str) -> int | None:
        rate = self._to_cny_minor.get(currency)
        return None if rate is None else int(amount * rate)

    def assess(self, payment: Payment, now: float) -> RiskDecision:
        limit = self._limits.get((payment.channel, payment.currency))
        if limit is not None and payment.amount > limit:
            return RiskDecision(reasons.OVER_AMOUNT_LIMIT, "amount_limit", False)
        if (
            payment.payer.account in self._blocked_accounts
            or payment.payee.account in self._blocked_accounts
            or (payment.card is not None and payment.card.token in self._blocked_tokens)
        ):
            return RiskDecision(reasons.RESTRICTED, "blocklist", False)
        cny = self.cny_equivalent(payment.amount, payment.currency)
        weight = 0 if cny is None else cny
        max_count, max_amount = self._max_count, self._max_amount
        keys = payment.velocity_keys
        windows = [self._window(key, now, keys) for key in keys]
        for window in windows:
            if window.count >= max_count:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_count", False)
            if window.total + weight > max_amount:
                return RiskDecision(reasons.OVER_FREQUENCY_LIMIT, "velocity_amount", False)
        for window in windows:
            window.times.append(now)
            window.weights.append(weight)
            window.total += weight
        if cny is not None and cny >= self._aml_threshold:
            return ALLOW_AML
        return ALLOW

    def _window(self, key: str, now: float, keep: tuple[str, ...]) -> _RefWindow:
        windows = self._windows
        window = windows.get(key)
        horizon = now - self._window_s
        if window is None:
            self._forget_expired(horizon, keep)
            window = windows[key] = _RefWindow()
            if len(windows) > self._max_keys:
                windows.popitem(last=False)
        else:
            windows.move_to_end(key)
        assert len(windows) <= self._max_keys
        times, head = window.times, window.head
        end = len(times)
        if head == end or times[head] > horizon:
            return window
        weights = window.weights
        while head < end and times[head] <= horizon:
            window.total -= weights[head]
            head += 1
        if 2 * head >= end:
            del times[:head]
            del weights[:head]
            head = 0
        window.head = head
        return window

    def _forget_expired(self, horizon: float, keep: tuple[str, ...]) -> None:
        windows = self._windows
        while windows:
            key, oldest = next(iter(windows.items()))
            if key in keep:
                return
            times = oldest.times
            if oldest.head < len(times) and times[-1] > horizon:
                return
            windows.popitem(last=False)


def _exponent(code: str) -> int:
    from switch.currency import exponent

    return exponent(code)


def _payment(kind: int, card: int, account: int, payee: int, units: int,
             currency: str) -> Payment:
    card_ref = qr = None
    if kind == 0:
        pan = PANS[card]
        card_ref = CardRef(TOKENS[card], pan[-4:], pan[:6], "2812", "T1", "M1", "5999")
    else:
        qr = QrRef("000201", "Q1")
    return Payment(
        "P1-1", "k", "card" if kind == 0 else "qr", units * 1000, currency,
        Party(f"A{account}"), Party(f"B{payee}"), dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        card=card_ref, qr=qr,
    )


def _state(windows: OrderedDict[str, object]) -> list[tuple[str, int, int, list[float]]]:
    """Each tracked key, least recently seen first, with its window's count, total, times."""
    out = []
    for key, w in windows.items():
        head = w.head  # type: ignore[attr-defined]
        times = list(w.times[head:])  # type: ignore[attr-defined]
        out.append((key, len(times), w.total, times))  # type: ignore[attr-defined]
    return out


STEP = st.tuples(
    st.integers(0, 1),  # card (two keys) or QR (the account's key only)
    st.integers(0, 3),  # card
    st.integers(0, 5),  # payer account
    st.integers(0, 2),  # payee account (B2 is blocked in some configs)
    st.integers(1, 9),  # amount, thousands of minor units
    st.sampled_from(["USD", "USD", "CNY", "JPY", "XAU"]),  # XAU: no FX rate
    st.sampled_from([0, 0, 250, 1_000, 2_500, 5_000, 10_000, -500]),  # gap, ms
)
CONFIG = st.fixed_dictionaries({
    "velocity": st.fixed_dictionaries({
        "window_s": st.sampled_from([1, 10]),
        "max_count": st.integers(1, 6),
        "max_amount_cny_minor": st.sampled_from([14_000, 21_000, 30_000, 150_000, 10**12]),
        "max_keys": st.integers(1, 8),
    }),
    "fx_to_cny": st.just({"USD": 7.0, "CNY": 1.0, "JPY": 0.05}),
    "blocked_accounts": st.sampled_from([[], ["A5"], ["B2", "A4"]]),
    "blocked_pans": st.sampled_from([[], [PANS[3]]]),
    "amount_limits": st.sampled_from(
        [[], [{"channel": "card", "currency": "USD", "max_minor": 8000}]]
    ),
    "aml_threshold_cny_minor": st.sampled_from([1, 20_000, 5_000_000]),
})


@given(CONFIG, st.lists(STEP, max_size=200))
@settings(max_examples=300, deadline=None)
def test_assess_decides_as_the_reference(config: dict[str, object],
                                         steps: list[tuple[int, int, int, int, int, str, int]]
                                         ) -> None:
    cfg = msgspec.convert(config, RiskConfig)
    fast, reference = RiskEngine(cfg, KEY), _ReferenceEngine(cfg, KEY)
    now = 0.0
    for kind, card, account, payee, units, currency, gap_ms in steps:
        now += gap_ms / 1000
        p = _payment(kind, card, account, payee, units, currency)
        assert fast.assess(p, now) == reference.assess(p, now)
        assert _state(fast._windows) == _state(reference._windows)  # type: ignore[arg-type]
    assert fast.tracked_keys == len(reference._windows)


def test_assess_many_keys_decides_as_the_reference() -> None:
    """The general path (more than two keys; Payment gives at most two today)."""

    class ThreeKeys(Payment, frozen=True):
        @property
        def velocity_keys(self) -> tuple[str, ...]:
            return (*super().velocity_keys, "payee:" + self.payee.account)

    cfg = msgspec.convert({"velocity": {"window_s": 10, "max_count": 3,
                                        "max_amount_cny_minor": 150_000, "max_keys": 5}},
                          RiskConfig)
    fast, reference = RiskEngine(cfg, KEY), _ReferenceEngine(cfg, KEY)
    for i in range(200):
        base = _payment(0, i % 3, i % 4, i % 2, 1 + i % 9, "USD")
        p = ThreeKeys(**msgspec.structs.asdict(base))
        now = i * 0.7
        assert fast.assess(p, now) == reference.assess(p, now)
        assert _state(fast._windows) == _state(reference._windows)  # type: ignore[arg-type]
