"""Route tables: which endpoints may carry a payment, in which order, by which strategy.

A route table is a TOML document decoded into msgspec Structs, validated as a whole, and
compiled into an immutable :class:`RouteTable`. Hot reload is the caller's job and is
just a reference swap: a payment looks its route up once, keeps the :class:`Target` it got,
and never sees a half-applied table. A table that fails any check is rejected whole
(:class:`RouteTableError`, naming the key path of every problem found), so the switch keeps
running on the old one instead of routing some payments by a table nobody reviewed.

Shape (every target is named once and referenced by rules, so 100,000 BIN ranges share a
handful of targets)::

    [targets.visa]
    scheme = "visa"
    endpoints = ["visa-a", "visa-b"]        # ordered candidates; names must be known
    strategy = "priority"                   # or a table, below
    timeout_s = 2.0

    [targets.split]
    endpoints = ["mc-a", "mc-b"]
    strategy = { kind = "weighted", weights = [3, 1] }   # one weight per endpoint
    # { kind = "least_latency", exploration = 0.02 }
    # { kind = "success_rate", exploration = 0.05, demote_below = 0.8,
    #   retry_later_s = 30, min_calls = 20 }
    # { kind = "sticky", key = "card_token" }            # or "payer_account"

    [card]
    default = "visa"                        # optional: when no range matches
    [[card.ranges]]
    low = "400000"                          # 6-11 digits, inclusive
    high = "499999"
    target = "visa"
    [[card.ranges]]
    prefix = "51234567"                     # shorthand for low = high = prefix
    target = "split"

    [swift]
    default = "corr"
    by_bic = [{ creditor_bic = "BNPAFRPP", target = "corr-fr" }]   # 8 or 11 characters
    by_corridor = [{ debtor_country = "DE", creditor_country = "FR", target = "corr-eu" }]
    by_currency = [{ currency = "USD", target = "corr-us" }]

    [qr]
    default = "qr"
    by_scheme = [{ gui = "com.payswitch.qr", target = "qr" }]
    by_acquirer = [{ acquirer = "ACQ0001", target = "qr-b" }]

Lookup precedence, most specific first:

* card: the BIN range holding the card's prefix, else ``card.default``;
* SWIFT: creditor BIC (11 characters exact, then its first 8), then corridor (debtor
  country -> creditor country, BIC characters 5-6), then currency, then ``swift.default``;
* QR: acquirer (when the caller names one), then the GUI of the first merchant account
  template the table knows, then ``qr.default``.

BIN ranges are 6 to 11 digits and compared at one width, :data:`BIN_WIDTH` (11): a low
bound is padded with 0s, a high bound with 9s, so ``400000..499999`` covers every 11-digit
prefix from 40000000000 to 49999999999, and ranges of different lengths compare as
numbers. Ranges may not overlap: real BIN files nest ranges, but "most specific wins" makes
a table's meaning depend on rules the reader must reconstruct; a flat table says it once.
A payment's key is its ``card.bin`` padded with 0s: the first 8 digits of a PAN of 16 or
more (PCI DSS allows keeping them with the last 4), the first 6 of a shorter one
(:data:`~switch.routing.tablespec.ROUTED_BIN_DIGITS`). A range bound that splits cards
sharing their first 8 digits is refused: the switch cannot tell such cards apart. A
15-digit card is keyed on 6 digits, so among ranges that split its 6-digit BIN it takes
the one holding ``BIN00000``.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import msgspec

from switch.currency import CURRENCIES
from switch.fielderrors import describe_validation_error
from switch.model import Payment
from switch.routing.binindex import BinIndex, BinIndexError
from switch.routing.tablespec import (
    _BY_NAME,
    BIN_WIDTH,
    MAX_QR_SCAN_CHARS,
    MAX_TABLE_CHARS,
    MAX_TARGETS,
    MIN_BIN_DIGITS,
    ROUTED_BIN_DIGITS,
    CardRoutes,
    QrRoutes,
    RouteTableError,
    Sticky,
    Strategy,
    SwiftRoutes,
    TargetName,
    TargetSpec,
    Weighted,
    _TableShape,
)

# --------------------------------------------------------------------------- compiled


class Target(msgspec.Struct, frozen=True):
    """Where a payment may go: ordered candidate endpoints and how to choose among them."""

    name: str
    scheme: str
    endpoints: tuple[str, ...]
    strategy: Strategy
    timeout_s: float


@dataclass(frozen=True, slots=True, eq=False)
class RouteTable:
    """A validated, immutable route table. Build with :func:`load_route_table`.

    Every container is read-only (tuples, ``MappingProxyType``, read-only arrays), so a
    reload can replace the table by assigning one reference, and a payment that looked up
    its target keeps a consistent view for as long as it holds it.
    """

    targets: Mapping[str, Target]
    digest: str  # short hash of the TOML text: which table a log line or metric refers to
    _targets_by_id: tuple[Target, ...]
    _bins: BinIndex
    _card_default: Target | None
    _bic11: Mapping[str, Target]
    _bic8: Mapping[str, Target]
    _corridor: Mapping[str, Target]  # "DEFR"
    _currency: Mapping[str, Target]
    _swift_default: Target | None
    _qr_scheme: Mapping[str, Target]
    _qr_acquirer: Mapping[str, Target]
    _qr_default: Target | None

    @property
    def card_ranges(self) -> int:
        return len(self._bins)

    def lookup(self, payment: Payment, *, acquirer: str | None = None) -> Target | None:
        """The target for ``payment`` by the precedence in the module docstring, or None.

        ``acquirer`` is the sending acquirer's id (known to the caller from the connection
        or request, not carried in :class:`~switch.model.Payment`); it only affects QR.
        """
        if payment.card is not None:
            return self.lookup_card(payment.card.bin)
        if payment.swift is not None:
            return self.lookup_swift(
                payment.swift.debtor_agent, payment.swift.creditor_agent, payment.currency
            )
        if payment.qr is not None:
            return self.lookup_qr(payment.qr.payload, acquirer)
        return None

    def lookup_card(self, pan_prefix: str) -> Target | None:
        """Route by the first 6-11 digits of a card number (more digits are ignored; a
        payment's ``card.bin`` has 6 or 8)."""
        key = bin_key(pan_prefix)
        if key >= 0:
            tid = self._bins.lookup(key)
            if tid >= 0:
                return self._targets_by_id[tid]
        return self._card_default

    def lookup_swift(self, debtor_bic: str, creditor_bic: str, currency: str) -> Target | None:
        target = self._bic11.get(creditor_bic)
        if target is not None:
            return target
        target = self._bic8.get(creditor_bic[:8])
        if target is not None:
            return target
        target = self._corridor.get(debtor_bic[4:6] + creditor_bic[4:6])
        if target is not None:
            return target
        target = self._currency.get(currency)
        if target is not None:
            return target
        return self._swift_default

    def lookup_qr(self, payload: str, acquirer: str | None = None) -> Target | None:
        if acquirer is not None:
            target = self._qr_acquirer.get(acquirer)
            if target is not None:
                return target
        if self._qr_scheme:
            for gui in _qr_guis_cached(payload):
                target = self._qr_scheme.get(gui)
                if target is not None:
                    return target
        return self._qr_default


#: Multiplier that pads an n-digit prefix with zeros to BIN_WIDTH digits.
_PAD: Final[tuple[int, ...]] = tuple(10 ** (BIN_WIDTH - n) for n in range(BIN_WIDTH + 1))


def bin_key(pan_prefix: str) -> int:
    """The 11-digit comparison key of a card prefix (padded with 0s), or -1 if unusable."""
    digits = pan_prefix[:BIN_WIDTH]
    n = len(digits)
    # isascii: str.isdigit and int() also accept other scripts' digits ("٤١١١١١").
    if n < MIN_BIN_DIGITS or not (digits.isascii() and digits.isdigit()):
        return -1
    return int(digits) * _PAD[n]


def qr_guis(payload: str) -> list[str]:
    """GUIs (sub-element 00) of the merchant account templates (IDs 26-51), in order.

    A deliberately small TLV walk rather than the full EMVCo parse: the payload was
    validated on arrival, and routing only needs the template ids. Malformed input ends
    the walk (whatever was found so far is returned); it never raises.
    """
    found: list[str] = []
    n = min(len(payload), MAX_QR_SCAN_CHARS)
    i = 0
    while i + 4 <= n:
        tag, size = payload[i : i + 2], payload[i + 2 : i + 4]
        # isascii: isdigit also accepts "²", which int() refuses (ValueError).
        if not (tag.isascii() and size.isascii() and tag.isdigit() and size.isdigit()):
            break
        end = i + 4 + int(size)
        if end > n:
            break
        if 26 <= int(tag) <= 51:
            value = payload[i + 4 : end]
            j = 0
            while j + 4 <= len(value):
                sub, sub_size = value[j : j + 2], value[j + 2 : j + 4]
                if not (sub_size.isascii() and sub_size.isdigit()):
                    break
                sub_end = j + 4 + int(sub_size)
                if sub == "00":
                    found.append(value[j + 4 : sub_end])
                    break
                j = sub_end
        i = end  # advances by >= 4 every turn: the walk is bounded by n / 4 steps
    return found


@functools.lru_cache(maxsize=4096)
def _qr_guis_cached(payload: str) -> tuple[str, ...]:
    """:func:`qr_guis` for routing: a pure function of the payload, and a merchant's QR
    code is paid many times, so the walk is cached (bounded: the least recent go)."""
    return tuple(qr_guis(payload))


def sticky_key(target: Target, payment: Payment) -> str | None:
    """The key a sticky target hashes on, or None (not sticky, or the payment has none)."""
    strategy = target.strategy
    if not isinstance(strategy, Sticky):
        return None
    if strategy.key == "card_token":
        return payment.card.token if payment.card is not None else None
    return payment.payer.account


# --------------------------------------------------------------------------- loading


def _with_prefix(exc: msgspec.ValidationError, prefix: str) -> str:
    """describe_validation_error, with ``prefix`` prepended to msgspec's key path."""
    text = str(exc)
    if "- at `$" in text:
        text = text.replace("- at `$", f"- at `$.{prefix}", 1)
    else:
        text = f"{text} - at `$.{prefix}`"
    return describe_validation_error(msgspec.ValidationError(text))


def load_route_table(text: str, known_endpoints: Collection[str]) -> RouteTable:
    """Decode, validate and compile a route table; :class:`RouteTableError` if unusable.

    ``known_endpoints`` are the endpoint names the switch can dispatch to (its adapters):
    a table naming any other endpoint would fail payments at dispatch, so it is refused
    here instead, before it replaces a working table.

    Cost: ~2 s for 100,000 card ranges, almost all of it ``tomllib`` (pure Python). A hot
    reload should run it off the event loop (``anyio.to_thread.run_sync``) and then swap
    the reference on the loop.
    """
    if len(text) > MAX_TABLE_CHARS:
        raise RouteTableError([f"table is {len(text)} characters, over {MAX_TABLE_CHARS}"])
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RouteTableError([f"not valid TOML: {exc}"]) from None
    try:
        shape = msgspec.convert(raw, _TableShape)
    except msgspec.ValidationError as exc:
        raise RouteTableError([describe_validation_error(exc)]) from None

    problems: list[str] = []
    known = frozenset(known_endpoints)
    targets = _compile_targets(shape.targets, known, problems)

    def ref(name: str | None, path: str) -> Target | None:
        if name is None:
            return None
        target = targets.get(name)
        # A target that exists but failed its own checks is already reported once.
        if target is None and name not in shape.targets:
            problems.append(f"{path}: unknown target {name!r}")
        return target

    by_id = tuple(targets.values())
    ids = {t.name: i for i, t in enumerate(by_id)}
    bins = _compile_card(shape.card, ids, ref, problems)
    swift_maps = _compile_swift(shape.swift, ref, problems)
    qr_maps = _compile_qr(shape.qr, ref, problems)
    card_default = ref(shape.card.default, "card.default")
    swift_default = ref(shape.swift.default, "swift.default")
    qr_default = ref(shape.qr.default, "qr.default")
    if problems:
        raise RouteTableError(problems)
    assert bins is not None
    return RouteTable(
        targets=MappingProxyType(dict(targets)),
        digest=hashlib.blake2b(text.encode(), digest_size=6).hexdigest(),
        _targets_by_id=by_id,
        _bins=bins,
        _card_default=card_default,
        _bic11=swift_maps[0],
        _bic8=swift_maps[1],
        _corridor=swift_maps[2],
        _currency=swift_maps[3],
        _swift_default=swift_default,
        _qr_scheme=qr_maps[0],
        _qr_acquirer=qr_maps[1],
        _qr_default=qr_default,
    )


def _compile_targets(
    raw: dict[str, dict[str, object]], known: frozenset[str], problems: list[str]
) -> dict[str, Target]:
    if not raw:
        problems.append("targets: at least one target is required")
    if len(raw) > MAX_TARGETS:
        problems.append(f"targets: {len(raw)} targets, over the bound of {MAX_TARGETS}")
        return {}
    out: dict[str, Target] = {}
    for name, body in raw.items():
        # A name with a newline or other control in it must not split the one-line error.
        path = f"targets.{name}" if name.isprintable() else f"targets.{name!r}"
        try:
            msgspec.convert(name, TargetName)
        except msgspec.ValidationError:
            problems.append(f"{path}: a target name is 1-64 of A-Z a-z 0-9 _ . - (not {name!r})")
            continue
        try:
            spec = msgspec.convert(body, TargetSpec)
        except msgspec.ValidationError as exc:
            problems.append(_with_prefix(exc, path))
            continue
        before = len(problems)
        seen: set[str] = set()
        for i, endpoint in enumerate(spec.endpoints):
            if endpoint not in known:
                problems.append(f"{path}.endpoints[{i}]: unknown endpoint {endpoint!r}")
            if endpoint in seen:
                problems.append(f"{path}.endpoints[{i}]: endpoint {endpoint!r} listed twice")
            seen.add(endpoint)
        strategy = _BY_NAME[spec.strategy] if isinstance(spec.strategy, str) else spec.strategy
        if isinstance(strategy, Weighted):
            if len(strategy.weights) != len(spec.endpoints):
                problems.append(
                    f"{path}.strategy.weights: {len(strategy.weights)} weights for "
                    f"{len(spec.endpoints)} endpoints (one weight per endpoint, same order)"
                )
            elif sum(strategy.weights) == 0:
                problems.append(f"{path}.strategy.weights: at least one weight must be > 0")
        if len(problems) == before:
            out[name] = Target(name, spec.scheme, spec.endpoints, strategy, spec.timeout_s)
    return out


def _span(span: tuple[int, int, int]) -> str:
    return f"{span[0]:0{BIN_WIDTH}d}..{span[1]:0{BIN_WIDTH}d}"


def _compile_card(
    card: CardRoutes,
    ids: dict[str, int],
    ref: _Ref,
    problems: list[str],
) -> BinIndex | None:
    spans: list[tuple[int, int, int]] = []
    where: list[int] = []  # position in card.ranges of each span
    for i, rng in enumerate(card.ranges):
        path = f"card.ranges[{i}]"
        if rng.prefix is not None:
            if rng.low is not None or rng.high is not None:
                problems.append(f"{path}: give either prefix or low and high, not both")
                continue
            low_text = high_text = rng.prefix
        elif rng.low is not None and rng.high is not None:
            low_text, high_text = rng.low, rng.high
        else:
            problems.append(f"{path}: needs prefix, or both low and high")
            continue
        # The spec's pattern is re.search, whose "$" also matches before a final newline:
        # "40000\n" got through it and then int() raised a bare ValueError.
        bad = [(field, text) for field, text in (("prefix", rng.prefix), ("low", rng.low),
                                                 ("high", rng.high))
               if text is not None and not (text.isascii() and text.isdigit())]
        if bad:
            field, text = bad[0]
            problems.append(f"{path}.{field}: {text!r} is not 6-11 digits 0-9")
            continue
        low_padded, high_padded = low_text.ljust(BIN_WIDTH, "0"), high_text.ljust(BIN_WIDTH, "9")
        split = [(field, text) for field, text, padded, fill in (
                     ("low" if rng.prefix is None else "prefix", low_text, low_padded, "0"),
                     ("high" if rng.prefix is None else "prefix", high_text, high_padded, "9"))
                 if padded[ROUTED_BIN_DIGITS:].strip(fill)]
        if split:
            field, text = split[0]
            problems.append(f"{path}.{field}: {text} splits cards that share their first "
                            f"{ROUTED_BIN_DIGITS} digits, which is all of a PAN a payment "
                            f"keeps for routing (digits past the {ROUTED_BIN_DIGITS}th must "
                            "be 0s in a low bound, 9s in a high one)")
            continue
        low, high = int(low_padded), int(high_padded)
        if low > high:
            problems.append(f"{path}: low {low_text} is above high {high_text}")
            continue
        target = ref(rng.target, f"{path}.target")
        if target is None:
            continue
        spans.append((low, high, ids[target.name]))
        where.append(i)
    # Overlaps, reported by key path (BinIndex.build would only say "range k"). Each range
    # is compared with the earlier-starting range that reaches furthest, so a range that
    # swallows several others is named against each of them.
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    reach = -1  # index into spans of the furthest-reaching range so far
    for b in order:
        if reach >= 0 and spans[b][0] <= spans[reach][1]:
            problems.append(
                f"card.ranges[{where[b]}]: {_span(spans[b])} overlaps "
                f"card.ranges[{where[reach]}] ({_span(spans[reach])})"
            )
        if reach < 0 or spans[b][1] > spans[reach][1]:
            reach = b
    if problems:
        return None
    try:
        return BinIndex.build(spans)
    except BinIndexError as exc:  # pragma: no cover - the checks above are stricter
        problems.append(f"card.ranges: {exc}")
        return None


#: Resolves a target name at a key path, recording a problem if there is no such target.
_Ref = Callable[[str | None, str], Target | None]
_Maps4 = tuple[
    Mapping[str, Target], Mapping[str, Target], Mapping[str, Target], Mapping[str, Target]
]


def _unique(
    keyed: list[tuple[str, str, Target | None]], problems: list[str]
) -> Mapping[str, Target]:
    """key -> target for (key, path, target) rules; a key given twice is a problem."""
    out: dict[str, Target] = {}
    first: dict[str, str] = {}
    for key, path, target in keyed:
        if key in first:
            problems.append(f"{path}: {key!r} is already routed by {first[key]}")
            continue
        first[key] = path
        if target is not None:
            out[key] = target
    return MappingProxyType(out)


def _compile_swift(swift: SwiftRoutes, ref: _Ref, problems: list[str]) -> _Maps4:
    bic11: list[tuple[str, str, Target | None]] = []
    bic8: list[tuple[str, str, Target | None]] = []
    for i, rule in enumerate(swift.by_bic):
        path = f"swift.by_bic[{i}].creditor_bic"
        target = ref(rule.target, f"swift.by_bic[{i}].target")
        (bic11 if len(rule.creditor_bic) == 11 else bic8).append((rule.creditor_bic, path, target))
    corridors = [
        (
            r.debtor_country + r.creditor_country,
            f"swift.by_corridor[{i}]",
            ref(r.target, f"swift.by_corridor[{i}].target"),
        )
        for i, r in enumerate(swift.by_corridor)
    ]
    currencies: list[tuple[str, str, Target | None]] = []
    for i, cur in enumerate(swift.by_currency):
        path = f"swift.by_currency[{i}].currency"
        if cur.currency not in CURRENCIES:
            problems.append(f"{path}: unknown currency {cur.currency!r}")
            continue
        currencies.append((cur.currency, path, ref(cur.target, f"swift.by_currency[{i}].target")))
    return (
        _unique(bic11, problems),
        _unique(bic8, problems),
        _unique(corridors, problems),
        _unique(currencies, problems),
    )


def _compile_qr(
    qr: QrRoutes, ref: _Ref, problems: list[str]
) -> tuple[Mapping[str, Target], Mapping[str, Target]]:
    schemes = [
        (r.gui, f"qr.by_scheme[{i}].gui", ref(r.target, f"qr.by_scheme[{i}].target"))
        for i, r in enumerate(qr.by_scheme)
    ]
    acquirers = [
        (r.acquirer, f"qr.by_acquirer[{i}].acquirer", ref(r.target, f"qr.by_acquirer[{i}].target"))
        for i, r in enumerate(qr.by_acquirer)
    ]
    return _unique(schemes, problems), _unique(acquirers, problems)
