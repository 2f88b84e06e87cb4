"""Route tables as written: the TOML shape (targets, card ranges, SWIFT and QR rules),
the endpoint strategies, and their bounds. Plain msgspec structs; compiling them into a
lookup is :mod:`switch.routing.table`."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

#: Every BIN bound and key is compared as an integer of this many digits.
BIN_WIDTH: Final = 11
MIN_BIN_DIGITS: Final = 6
#: PAN digits a payment keeps for routing (``CardRef.bin``): the first 8 of a PAN of 16
#: digits or more, which PCI DSS allows with the last 4 (ISO/IEC 7812 IINs are 8 digits
#: since 2017); the first 6 of a shorter one. A range bound may not tell apart cards that
#: agree on these digits.
ROUTED_BIN_DIGITS: Final = 8
#: Candidate endpoints per target: failover beyond a handful only adds latency.
MAX_ENDPOINTS_PER_TARGET: Final = 16
MAX_TARGETS: Final = 10_000
MAX_CARD_RANGES: Final = 1_000_000
MAX_RULES: Final = 100_000
#: A route table bigger than this is a mistake (100,000 ranges take ~7 MB of TOML).
MAX_TABLE_CHARS: Final = 256 * 1024 * 1024
#: Problems listed in one rejection; more are counted, not listed.
MAX_REPORTED_PROBLEMS: Final = 20
#: A QR payload is at most 512 characters (switch.model.QrPayload); the GUI scan stops there.
MAX_QR_SCAN_CHARS: Final = 4096

TargetName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
]
EndpointName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
BinDigits = Annotated[
    str, msgspec.Meta(min_length=MIN_BIN_DIGITS, max_length=BIN_WIDTH, pattern=r"\A[0-9]+\Z")
]
Country = Annotated[str, msgspec.Meta(min_length=2, max_length=2, pattern=r"\A[A-Z]{2}\Z")]
Bic = Annotated[
    str,
    msgspec.Meta(min_length=8, max_length=11, pattern=r"\A[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?\Z"),
]
Share = Annotated[float, msgspec.Meta(ge=0, le=0.5)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]


class RouteTableError(ValueError):
    """The table cannot be used; nothing of it was applied. ``problems`` name key paths."""

    def __init__(self, problems: list[str]) -> None:
        assert problems
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        text = "route table rejected: " + "; ".join(shown)
        if more:
            text += f" (and {more} more)"
        super().__init__(text)
        self.problems = problems


# --------------------------------------------------------------------------- strategies


class _Strategy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class Priority(_Strategy, frozen=True, tag="priority"):
    """Always the first healthy endpoint in the listed order; the rest are failover."""


class Weighted(_Strategy, frozen=True, tag="weighted"):
    """Primary drawn in proportion to ``weights`` (one per endpoint, same order); failover
    follows the listed order. A weight of 0 makes a standby that only takes failover."""

    weights: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=0, le=1_000_000)], ...],
        msgspec.Meta(min_length=1, max_length=MAX_ENDPOINTS_PER_TARGET),
    ]


class LeastLatency(_Strategy, frozen=True, tag="least_latency"):
    """Lowest EWMA latency first. ``exploration`` is the share of payments sent to another
    endpoint first, so a once-slow endpoint gets measured again instead of starving."""

    exploration: Share = 0.02


class SuccessRate(_Strategy, frozen=True, tag="success_rate"):
    """Highest recent success rate first (Hyperswitch-style dynamic routing).

    An endpoint below ``demote_below`` (judged once it has ``min_calls`` calls in the
    window) is demoted to the back of the order; with probability ``exploration`` a
    demoted endpoint still goes first, so its rate can recover, and after
    ``retry_later_s`` it is re-admitted with a clean slate.
    """

    exploration: Share = 0.05
    demote_below: Ratio = 0.8
    retry_later_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 30.0
    min_calls: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20


class Sticky(_Strategy, frozen=True, tag="sticky"):
    """Same key, same endpoint (rendezvous hashing): only a failed endpoint's keys move."""

    key: Literal["card_token", "payer_account"] = "card_token"


Strategy = Priority | Weighted | LeastLatency | SuccessRate | Sticky
StrategyName = Literal["priority", "least_latency", "success_rate", "sticky"]
_BY_NAME: Final[dict[str, Strategy]] = {
    "priority": Priority(),
    "least_latency": LeastLatency(),
    "success_rate": SuccessRate(),
    "sticky": Sticky(),
}


# --------------------------------------------------------------------------- TOML shape


class TargetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named target: endpoints in failover order, how to pick among them, a timeout."""

    #: Network names, in failover order.
    endpoints: Annotated[
        tuple[EndpointName, ...], msgspec.Meta(min_length=1, max_length=MAX_ENDPOINTS_PER_TARGET)
    ]
    #: Card scheme name, for documentation and metrics.
    scheme: Annotated[str, msgspec.Meta(max_length=32)] = ""
    #: Which endpoint goes first: a name, or a table with `kind` and its keys.
    strategy: StrategyName | Strategy = "priority"
    #: Per attempt. Capped well below a network's own stand-in timeout (10 s POS).
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0


class CardRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A BIN range to a target: `low` and `high` (same length), or a `prefix`."""

    #: A target name from `[targets]`.
    target: TargetName
    #: First BIN of the range (inclusive).
    low: BinDigits | None = None
    #: Last BIN of the range (inclusive).
    high: BinDigits | None = None
    #: Every card number starting with these digits.
    prefix: BinDigits | None = None


class CardRoutes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Card payments, by the card number's BIN: the range holding it, else ``default``."""

    #: Target for a card no range matches (none: refused, no route).
    default: TargetName | None = None
    #: BIN ranges (6-11 digits, compared padded to 11, none splitting an 8-digit BIN);
    #: ranges may not overlap.
    ranges: Annotated[tuple[CardRange, ...], msgspec.Meta(max_length=MAX_CARD_RANGES)] = ()


class BicRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Payments to one creditor agent (BIC)."""

    creditor_bic: Bic
    target: TargetName


class CorridorRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Payments from one country to another (the agents' BIC countries)."""

    debtor_country: Country
    creditor_country: Country
    target: TargetName


class CurrencyRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Payments in one currency."""

    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    target: TargetName


class SwiftRoutes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """SWIFT payments: by creditor BIC, then corridor, then currency, then `default`."""

    #: Target when no rule matches (none: refused, no route).
    default: TargetName | None = None
    by_bic: Annotated[tuple[BicRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()
    by_corridor: Annotated[tuple[CorridorRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()
    by_currency: Annotated[tuple[CurrencyRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()


class SchemeRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """QR payments whose merchant template names this scheme (its globally unique id)."""

    gui: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    target: TargetName


class AcquirerRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """QR payments from one acquirer."""

    acquirer: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    target: TargetName


class QrRoutes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """QR payments: by acquirer (when the caller names one), then scheme, then `default`."""

    #: Target when no rule matches (none: refused, no route).
    default: TargetName | None = None
    by_scheme: Annotated[tuple[SchemeRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()
    by_acquirer: Annotated[tuple[AcquirerRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()


class _TableShape(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole route table file."""

    # Targets stay loosely typed here and are converted one by one: msgspec reports a
    # problem inside a dict value as ``targets[...]``, and an operator needs the name.
    #: Named targets, `[targets.NAME]`; rules refer to them by NAME.
    targets: dict[str, dict[str, object]]
    card: CardRoutes = msgspec.field(default_factory=CardRoutes)
    swift: SwiftRoutes = msgspec.field(default_factory=SwiftRoutes)
    qr: QrRoutes = msgspec.field(default_factory=QrRoutes)
