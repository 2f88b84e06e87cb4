"""Seeded synthetic payments for the demo, the load generator and the Locust files.

Same seed, same sequence of requests. Two ways in:

* :class:`Workload` is the demo's fixed mix: three channels, lognormal amounts, a small
  pool of hot cards and accounts (so velocity rules bite), a share of duplicate
  submissions (idempotency) and a share of requests that break validation.
* :class:`WorkloadSpec` (a TOML file, see ``loadtests/workloads/``) is the full model and
  :class:`SpecWorkload` draws from it: channel mix, lognormal amounts per channel and
  currency, Zipf-skewed hot cards/accounts/merchants, SWIFT corridors, and shares of
  duplicates, malformed frames, invalid payments and risk-breaking payments.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Generic, TypeVar

import msgspec

from switch.currency import CURRENCIES, numeric_code
from switch.model import (
    CHANNELS,
    CardData,
    Channel,
    Party,
    PaymentRequest,
    QrData,
    SwiftData,
    luhn_ok,
)
from switch.protocols.emvqr import crc16
from switch.tomlio import convert, parse_toml, read_text

T = TypeVar("T")


def _luhn_complete(prefix: str) -> str:
    """``prefix`` and its Luhn check digit: the one digit that makes the sum a multiple of
    10 (it is not doubled, so it is what the sum with a 0 there lacks; one pass, not ten:
    building a workload's 5,000 cards was an eighth of a short simulated seed)."""
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = ord(ch) - 48
        if i % 2 == 0:  # doubled: the check digit will be position 0
            d *= 2
            if d > 9:
                d -= 9
        total += d
    pan = f"{prefix}{-total % 10}"
    assert luhn_ok(pan), pan
    return pan


@functools.lru_cache(maxsize=4096)
def _qr_payload(merchant: int, amount: str | None, currency_numeric: int = 156) -> str:
    """A syntactically valid EMVCo merchant QR (CRC-16/CCITT-FALSE), built inline.

    Cached: a pure function of a few hundred merchants. The CRC is the codec's
    (binascii's, in C): computed bit by bit in Python it took a million instructions per
    merchant, the first 500 QR payments of every simulator process half a billion (5% of
    a simulated minute's CPU)."""

    def tlv(tag: str, value: str) -> str:
        return f"{tag}{len(value):02d}{value}"

    body = (
        tlv("00", "01")
        + tlv("01", "12" if amount else "11")
        + tlv("26", tlv("00", "com.payswitch.qr") + tlv("01", f"M{merchant:07d}"))
        + tlv("52", "5812")
        + tlv("53", f"{currency_numeric:03d}")
        + (tlv("54", amount) if amount else "")
        + tlv("58", "CN")
        + tlv("59", f"MERCHANT {merchant}")
        + tlv("60", "SHANGHAI")
        + "6304"
    )
    return body + f"{crc16(body.encode()):04X}"


@dataclass(frozen=True)
class WorkloadMix:
    card_share: float = 0.6
    swift_share: float = 0.2
    duplicate_share: float = 0.01
    invalid_share: float = 0.005
    cards: int = 5000
    accounts: int = 5000


#: The demo mix's median amounts (minor units), as lognormvariate takes them.
_LOG_5000, _LOG_500000, _LOG_3000 = math.log(5000), math.log(500_000), math.log(3000)


class Workload:
    def __init__(self, seed: int, mix: WorkloadMix | None = None, key_prefix: str = "k") -> None:
        self.mix = mix or WorkloadMix()
        self._rng = random.Random(seed)
        self._prefix = f"{key_prefix}{seed}-"
        self._count = 0
        self._recent: list[PaymentRequest] = []
        rng = random.Random(seed ^ 0x5EED)
        self._pans = [
            _luhn_complete(f"4{rng.randrange(10**14):014d}") for _ in range(self.mix.cards)
        ]
        # Parties are immutable and few (accounts x 1,000 merchants): each made once and
        # shared by every request naming it, instead of formatted and built per request.
        self._payers: dict[int, Party] = {}
        self._payees: dict[int, Party] = {}
        # Likewise the card details (frozen) per card, and the QR data per merchant.
        self._cards: dict[int, CardData] = {}
        self._qrs: dict[int, QrData] = {}

    def next(self) -> tuple[PaymentRequest, str]:
        """The next request and its kind: "new", "duplicate" or "invalid"."""
        rng, mix = self._rng, self.mix
        draw = rng.random()
        if self._recent and draw < mix.duplicate_share:
            return rng.choice(self._recent), "duplicate"
        self._count += 1
        key = f"{self._prefix}{self._count}"
        channel_draw = rng.random()
        # Zipf-ish skew: a few cards/accounts take much of the traffic (the draw inline,
        # not a method: the simulator makes 200 requests a simulated second).
        accounts = mix.accounts
        n = min(accounts - 1, int(accounts * rng.random() ** 2))
        payer = self._payers.get(n)
        if payer is None:
            payer = self._payers[n] = Party(f"ACCT{n:06d}", "Payer")
        n = rng.randrange(1000)
        payee = self._payees.get(n)
        if payee is None:
            payee = self._payees[n] = Party(f"MERCH{n:05d}", "Payee")
        if channel_draw < mix.card_share:
            cards = mix.cards
            n = min(cards - 1, int(cards * rng.random() ** 2))
            card = self._cards.get(n)
            if card is None:
                card = self._cards[n] = CardData(pan=self._pans[n], expiry="2812")
            amount = max(1, int(rng.lognormvariate(_LOG_5000, 1.0)))
            request = PaymentRequest(key, "card", amount, "USD", payer, payee, card=card)
        elif channel_draw < mix.card_share + mix.swift_share:
            amount = max(1, int(rng.lognormvariate(_LOG_500000, 1.2)))
            request = PaymentRequest(
                key,
                "swift",
                amount,
                "EUR",
                payer,
                payee,
                swift=SwiftData("DEUTDEFF", "BNPAFRPP", end_to_end_id=key),
            )
        else:
            amount = max(1, int(rng.lognormvariate(_LOG_3000, 0.8)))
            n = rng.randrange(500)
            qr = self._qrs.get(n)
            if qr is None:
                qr = self._qrs[n] = QrData(_qr_payload(n, None))
            request = PaymentRequest(key, "qr", amount, "CNY", payer, payee, qr=qr)
        if draw < mix.duplicate_share + mix.invalid_share:
            # Breaks validation: a Luhn-failing card number (or a card on a non-card payment).
            bad = CardData(pan="4111111111111112", expiry="2812")
            request = PaymentRequest(key, "card", request.amount, "USD", payer, payee, card=bad)
            return request, "invalid"
        if len(self._recent) < 256:
            self._recent.append(request)
        else:
            self._recent[rng.randrange(256)] = request
        return request, "new"


# --- the workload model, defined in TOML ---------------------------------------------------
#
# ``Workload`` above is the demo's fixed mix. ``WorkloadSpec`` is the full model, shared by
# ``payswitch load`` and the Locust files: a channel mix, lognormal amounts per channel and
# currency, Zipf-skewed hot cards/accounts/merchants, SWIFT corridors, and shares of
# duplicates, malformed frames, invalid payments and payments that break risk rules.
# Every struct forbids unknown keys, so a typo in a workload file names its key path.

Weight = Annotated[float, msgspec.Meta(ge=0, le=1e6)]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
BicCode = Annotated[str, msgspec.Meta(min_length=8, max_length=11)]
CurrencyAlpha = Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
#: Pools are materialised lazily, but their Zipf CDF is a list of this many floats.
MAX_POOL = 1_000_000
#: A duplicate re-sends one of this many recent payments.
RECENT_POOL = 256


class WorkloadError(Exception):
    """The workload file cannot be used; the message names the key path."""


class AmountSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Lognormal amounts in one currency: ``median_minor`` is e^mu, ``sigma`` the spread."""

    currency: CurrencyAlpha
    median_minor: Annotated[int, msgspec.Meta(ge=1, le=10**12)]
    sigma: Annotated[float, msgspec.Meta(ge=0, le=4)] = 1.0
    weight: Weight = 1.0


class ChannelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    #: Relative share of the channel in the mix (normalised over the three channels).
    weight: Weight = 1.0
    #: Amount distributions, one per currency, picked by weight. Empty: the default.
    amounts: list[AmountSpec] = msgspec.field(default_factory=list)


_DEFAULT_AMOUNTS: dict[str, list[AmountSpec]] = {
    "card": [AmountSpec("USD", 5_000, 1.0, 3.0), AmountSpec("EUR", 4_000, 1.0, 1.0)],
    "swift": [AmountSpec("EUR", 500_000, 1.2, 3.0), AmountSpec("USD", 400_000, 1.2, 2.0)],
    "qr": [AmountSpec("CNY", 3_000, 0.8, 1.0)],
}


class ChannelsSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The channel mix and each channel's amounts."""

    card: ChannelSpec = msgspec.field(default_factory=lambda: ChannelSpec(weight=0.6))
    swift: ChannelSpec = msgspec.field(default_factory=lambda: ChannelSpec(weight=0.2))
    qr: ChannelSpec = msgspec.field(default_factory=lambda: ChannelSpec(weight=0.2))


class KeyPool(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``pool`` distinct keys; rank k is drawn with probability ∝ 1 / k^exponent."""

    pool: Annotated[int, msgspec.Meta(ge=1, le=MAX_POOL)]
    exponent: Annotated[float, msgspec.Meta(ge=0, le=4)] = 1.0


class HotKeysSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Default skew: the hottest card or account takes ~0.8% of all payments, so at a
    # few thousand payments/s a handful of keys trip velocity rules, not half the traffic.
    cards: KeyPool = msgspec.field(default_factory=lambda: KeyPool(20_000, 0.6))
    accounts: KeyPool = msgspec.field(default_factory=lambda: KeyPool(20_000, 0.6))
    merchants: KeyPool = msgspec.field(default_factory=lambda: KeyPool(2000, 0.8))


class Corridor(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A SWIFT corridor: debtor agent → creditor agent, in one currency."""

    #: Debtor agent.
    debtor_bic: BicCode
    #: Creditor agent.
    creditor_bic: BicCode
    #: Settlement currency.
    currency: CurrencyAlpha
    #: Relative share among corridors.
    weight: Weight = 1.0


_DEFAULT_CORRIDORS = [
    Corridor("DEUTDEFF", "BNPAFRPP", "EUR", 3.0),
    Corridor("CHASUS33", "HSBCGB2L", "USD", 2.0),
    Corridor("BNPAFRPP", "CHASUS33", "USD", 1.0),
]


class SharesSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Shares of all submissions (the rest are ordinary new payments); sum at most 1."""

    #: Re-send a recent payment: same idempotency key, same body (an idempotent replay).
    duplicate: Share = 0.01
    #: A raw garbage frame (not msgpack): the switch answers ``malformed``.
    malformed: Share = 0.001
    #: A well-formed payment that fails validation (a Luhn-failing card number).
    invalid: Share = 0.005
    #: An amount above a risk limit (see ``risk.over_limit``).
    over_limit: Share = 0.002
    #: A payer account on the switch's blocklist (see ``risk.blocked_accounts``).
    blocklisted: Share = 0.002


class OverLimitSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    channel: Channel
    currency: CurrencyAlpha
    amount_minor: Annotated[int, msgspec.Meta(ge=1, le=10**15)]


class RiskTargetsSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the switch's risk config blocks, so risk-breaking payments really break it."""

    blocked_accounts: list[Annotated[str, msgspec.Meta(min_length=1, max_length=34)]] = (
        msgspec.field(default_factory=lambda: ["ACCT-BLOCKED-1"])
    )
    over_limit: list[OverLimitSpec] = msgspec.field(
        default_factory=lambda: [OverLimitSpec("card", "USD", 2_000_000)]
    )


class WorkloadSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole file; every section is optional."""

    #: Default seed; ``payswitch load --seed`` overrides it.
    seed: int = 1
    channels: ChannelsSpec = msgspec.field(default_factory=ChannelsSpec)
    hot_keys: HotKeysSpec = msgspec.field(default_factory=HotKeysSpec)
    shares: SharesSpec = msgspec.field(default_factory=SharesSpec)
    #: SWIFT corridors, drawn by weight.
    corridors: list[Corridor] = msgspec.field(default_factory=lambda: list(_DEFAULT_CORRIDORS))
    risk: RiskTargetsSpec = msgspec.field(default_factory=RiskTargetsSpec)

    def channel(self, name: Channel) -> ChannelSpec:
        spec: ChannelSpec = getattr(self.channels, name)
        return spec

    def amounts(self, name: Channel) -> list[AmountSpec]:
        return self.channel(name).amounts or _DEFAULT_AMOUNTS[name]

    def channel_shares(self) -> dict[Channel, float]:
        """Each channel's share of the mix, normalised to sum to 1."""
        weights = {ch: self.channel(ch).weight for ch in CHANNELS}
        total = sum(weights.values())
        return {ch: w / total for ch, w in weights.items()}


def _is_bic(bic: str) -> bool:
    return len(bic) in (8, 11) and bic[:6].isalpha() and bic.isupper() and bic[6:].isalnum()


def check_workload(spec: WorkloadSpec) -> None:
    """Rules msgspec types cannot express; raises :class:`WorkloadError` naming the key."""
    if sum(spec.channel(ch).weight for ch in CHANNELS) <= 0:
        raise WorkloadError("channels: every channel weight is 0; nothing to send")
    for ch in CHANNELS:
        amounts = spec.channel(ch).amounts
        for i, amount in enumerate(amounts):
            if amount.currency not in CURRENCIES:
                raise WorkloadError(
                    f"channels.{ch}.amounts[{i}].currency: unknown currency {amount.currency!r}"
                )
        if amounts and sum(a.weight for a in amounts) <= 0:
            raise WorkloadError(f"channels.{ch}.amounts: every weight is 0")
    shares = spec.shares
    total = sum(msgspec.structs.astuple(shares))
    if total > 1.0 + 1e-9:
        raise WorkloadError(f"shares: the shares add up to {total:g}, more than 1")
    swift_currencies = {a.currency for a in spec.amounts("swift")}
    for i, corridor in enumerate(spec.corridors):
        for key in ("debtor_bic", "creditor_bic"):
            if not _is_bic(getattr(corridor, key)):
                raise WorkloadError(
                    f"corridors[{i}].{key}: not a BIC (8 or 11 upper-case characters)"
                )
        if corridor.currency not in swift_currencies:
            raise WorkloadError(
                f"corridors[{i}].currency: no amount distribution for {corridor.currency!r}"
                " in channels.swift.amounts"
            )
    if spec.channel("swift").weight > 0:
        if not spec.corridors:
            raise WorkloadError("corridors: SWIFT has a weight but no corridor is defined")
        if sum(c.weight for c in spec.corridors) <= 0:
            raise WorkloadError("corridors: every weight is 0")
    for i, target in enumerate(spec.risk.over_limit):
        if target.currency not in CURRENCIES:
            raise WorkloadError(
                f"risk.over_limit[{i}].currency: unknown currency {target.currency!r}"
            )
    if shares.over_limit > 0 and not spec.risk.over_limit:
        raise WorkloadError("risk.over_limit: shares.over_limit > 0 needs at least one target")
    if shares.blocklisted > 0 and not spec.risk.blocked_accounts:
        raise WorkloadError(
            "risk.blocked_accounts: shares.blocklisted > 0 needs at least one account"
        )


def parse_workload(text: str, source: str = "<workload>") -> WorkloadSpec:
    return workload_from_dict(parse_toml(text, source, WorkloadError), source)


def workload_from_dict(raw: object, source: str = "<workload>") -> WorkloadSpec:
    """Convert an already-parsed table (e.g. a scenario file's ``[workload]``)."""
    spec = convert(raw, WorkloadSpec, source, WorkloadError)
    try:
        check_workload(spec)
    except WorkloadError as exc:
        raise WorkloadError(f"{source}: {exc}") from exc
    return spec


def load_workload(path: str | Path) -> WorkloadSpec:
    return parse_workload(read_text(path, WorkloadError), str(path))


def workload_from_env(environ: Mapping[str, str]) -> tuple[WorkloadSpec, int]:
    """The workload and run seed a Locust process was given: ``PAYSWITCH_WORKLOAD`` (a TOML
    file; default the built-in mix) and ``PAYSWITCH_SEED`` (default the workload's)."""
    path = environ.get("PAYSWITCH_WORKLOAD")
    spec = load_workload(path) if path else WorkloadSpec()
    return spec, int(environ.get("PAYSWITCH_SEED", spec.seed))


class _Weighted(Generic[T]):
    """Pick items by weight with one uniform draw and a bisection."""

    __slots__ = ("_cum", "_items", "_total")

    def __init__(self, items: list[T], weights: list[float]) -> None:
        assert items and len(items) == len(weights)
        self._items = items
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1]
        assert self._total > 0

    def pick(self, u: float) -> T:
        i = bisect.bisect_right(self._cum, u * self._total)
        return self._items[min(i, len(self._items) - 1)]


class ZipfSampler:
    """Ranks 0..n-1 with P(k) ∝ 1/(k+1)^s: rank 0 is the hottest key. s = 0 is uniform."""

    __slots__ = ("_cum", "_total", "n")

    def __init__(self, n: int, exponent: float) -> None:
        assert 1 <= n <= MAX_POOL and exponent >= 0
        self.n = n
        self._cum = list(itertools.accumulate(float((k + 1) ** -exponent) for k in range(n)))
        self._total = self._cum[-1]

    def rank(self, u: float) -> int:
        return min(bisect.bisect_right(self._cum, u * self._total), self.n - 1)

    def probability(self, k: int) -> float:
        previous = self._cum[k - 1] if k else 0.0
        return (self._cum[k] - previous) / self._total


@functools.lru_cache(maxsize=16)
def zipf_sampler(n: int, exponent: float) -> ZipfSampler:
    """Shared samplers: many workloads (Locust users) draw from the same few pools."""
    return ZipfSampler(n, exponent)


@functools.lru_cache(maxsize=65536)
def _static_qr(merchant: int, currency_numeric: int) -> str:
    return _qr_payload(merchant, None, currency_numeric)


@functools.lru_cache(maxsize=65536)
def _pan_for(pool_seed: int, rank: int) -> str:
    """A Luhn-valid 16-digit PAN, a pure function of (pool seed, rank)."""
    digest = hashlib.blake2b(f"{pool_seed}:{rank}".encode(), digest_size=8).digest()
    body = f"4{int.from_bytes(digest, 'big') % 10**14:014d}"
    total = 0
    for i, ch in enumerate(reversed(body)):  # check digit goes right of these
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def derive_seed(seed: int, *labels: object) -> int:
    """A child seed: distinct per label (e.g. per generator process), stable per seed."""
    text = ":".join(str(x) for x in (seed, *labels))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


#: What ``SpecWorkload.next_item`` returns: a payment, or a raw (malformed) frame payload.
Item = PaymentRequest | bytes
KINDS: tuple[str, ...] = (
    "new", "duplicate", "invalid", "malformed", "over_limit", "blocklisted"
)


class SpecWorkload:
    """Seeded payments from a :class:`WorkloadSpec`.

    ``seed`` drives the draws (give each generator process its own, see :func:`derive_seed`);
    ``pool_seed`` fixes which PANs make up the card pool, so processes that share it share
    the same hot cards. ``key_prefix`` must differ between concurrent generators: it keeps
    their idempotency keys apart.
    """

    def __init__(
        self,
        spec: WorkloadSpec,
        seed: int,
        key_prefix: str = "w",
        pool_seed: int | None = None,
    ) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self._prefix = key_prefix
        self._count = 0
        self._pool_seed = spec.seed if pool_seed is None else pool_seed
        self._recent: dict[Channel | None, list[PaymentRequest]] = {}
        shares = spec.shares
        self._thresholds = list(
            itertools.accumulate(
                (
                    shares.duplicate,
                    shares.malformed,
                    shares.invalid,
                    shares.over_limit,
                    shares.blocklisted,
                )
            )
        )
        self._channels = _Weighted(list(CHANNELS), [spec.channel(ch).weight for ch in CHANNELS])
        self._amounts = {
            ch: _Weighted(spec.amounts(ch), [a.weight for a in spec.amounts(ch)])
            for ch in CHANNELS
        }
        self._swift_amounts = {a.currency: a for a in reversed(spec.amounts("swift"))}
        self._corridors = (
            _Weighted(spec.corridors, [c.weight for c in spec.corridors])
            if spec.corridors and sum(c.weight for c in spec.corridors) > 0
            else None
        )
        keys = spec.hot_keys
        self._cards = zipf_sampler(keys.cards.pool, keys.cards.exponent)
        self._accounts = zipf_sampler(keys.accounts.pool, keys.accounts.exponent)
        self._merchants = zipf_sampler(keys.merchants.pool, keys.merchants.exponent)
        self._over_limit = spec.risk.over_limit
        self._blocked = spec.risk.blocked_accounts

    # -- building blocks -----------------------------------------------------------------

    def pan(self, rank: int) -> str:
        return _pan_for(self._pool_seed, rank)

    def _amount(self, spec: AmountSpec) -> int:
        value = self._rng.lognormvariate(math.log(spec.median_minor), spec.sigma)
        return min(max(1, int(value)), 10**15)

    def _qr_payload(self, merchant: int, currency: str) -> str:
        return _static_qr(merchant, numeric_code(currency))

    def _payment(
        self,
        key: str,
        channel: Channel,
        payer_account: str | None = None,
        amount_currency: tuple[int, str] | None = None,
    ) -> PaymentRequest:
        rng = self._rng
        payer = Party(
            payer_account or f"ACCT{self._accounts.rank(rng.random()):06d}", "Payer"
        )
        merchant = self._merchants.rank(rng.random())
        payee = Party(f"MERCH{merchant:06d}", "Payee")
        if channel == "swift":
            assert self._corridors is not None
            corridor = self._corridors.pick(rng.random())
            amount, currency = amount_currency or (
                self._amount(self._swift_amounts[corridor.currency]),
                corridor.currency,
            )
            swift = SwiftData(corridor.debtor_bic, corridor.creditor_bic, end_to_end_id=key)
            return PaymentRequest(key, "swift", amount, currency, payer, payee, swift=swift)
        spec = self._amounts[channel].pick(rng.random())
        amount, currency = amount_currency or (self._amount(spec), spec.currency)
        if channel == "card":
            card = CardData(
                pan=self.pan(self._cards.rank(rng.random())),
                expiry="2812",
                merchant_id=f"M{merchant:07d}",
            )
            return PaymentRequest(key, "card", amount, currency, payer, payee, card=card)
        qr = QrData(self._qr_payload(merchant, currency))
        return PaymentRequest(key, "qr", amount, currency, payer, payee, qr=qr)

    def _remember(self, request: PaymentRequest, pool: Channel | None) -> None:
        recent = self._recent.setdefault(pool, [])
        if len(recent) < RECENT_POOL:
            recent.append(request)
        else:
            recent[self._rng.randrange(RECENT_POOL)] = request

    # -- public --------------------------------------------------------------------------

    def next_item(self, channel: Channel | None = None) -> tuple[Item, str]:
        """The next submission and its kind (one of :data:`KINDS`).

        A ``malformed`` item is raw bytes: a frame payload that is not msgpack. With
        ``channel`` given (Locust's per-channel users), payments are of that channel only.
        """
        rng = self._rng
        draw = rng.random()
        dup, malformed, invalid, over, blocked = self._thresholds
        recent = self._recent.get(channel)
        if draw < dup and recent:
            return rng.choice(recent), "duplicate"
        if dup <= draw < malformed:
            return b"\xc1" + rng.randbytes(rng.randrange(3, 24)), "malformed"
        self._count += 1
        key = f"{self._prefix}{self._count}"
        ch: Channel = channel or self._channels.pick(rng.random())
        kind = "new"
        if malformed <= draw < invalid:
            payer = Party(f"ACCT{self._accounts.rank(rng.random()):06d}", "Payer")
            bad = CardData(pan="4111111111111112", expiry="2812")
            request = PaymentRequest(
                key, "card", 1000, "USD", payer, Party("MERCH000000"), card=bad
            )
            return request, "invalid"
        if invalid <= draw < over:
            targets = [t for t in self._over_limit if channel is None or t.channel == channel]
            if targets:
                target = targets[rng.randrange(len(targets))]
                request = self._payment(
                    key, target.channel, amount_currency=(target.amount_minor, target.currency)
                )
                return request, "over_limit"
        elif over <= draw < blocked:
            account = self._blocked[rng.randrange(len(self._blocked))]
            return self._payment(key, ch, payer_account=account), "blocklisted"
        request = self._payment(key, ch)
        self._remember(request, channel)
        return request, kind

    def next(self) -> tuple[PaymentRequest, str]:
        """Like :meth:`next_item` but never a malformed frame (for payment-only callers)."""
        while True:
            item, kind = self.next_item()
            if not isinstance(item, bytes):
                return item, kind
