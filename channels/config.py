"""The simulators' configuration (TOML → msgspec); errors name the key path."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from channels.behaviour import BehaviourConfig
from channels.faults import (
    Fault,
    FaultConfigError,
    validate_fault_schedule,
)
from switch.fielderrors import describe_validation_error
from switch.serve.http import AdminAuthConfig

log = logging.getLogger(__name__)


class SettlementSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Settlement files, written at every cut-off (and a last one at shutdown)."""

    #: Write settlement files at all.
    enabled: bool = True
    #: Where the files go (relative to the directory the simulators run in). One
    #: simulator process at a time: it locks the directory, and a restarted one continues
    #: the cycle numbers after the files already there instead of replacing them.
    out_dir: str = "var/settlement"
    #: Seconds between cut-offs (from start-up); a final cut is made at shutdown.
    cycle_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 10.0
    #: Share of records planted wrong, for reconciliation to find.
    discrepancy_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: The QR scheme nets each merchant's payments of a cycle into one entry
    #: (reference ``NET-<merchant>-<cycle>``): reconciliation must match many to one.
    net_qr_by_merchant: bool = False
    #: Seeds which records are planted wrong.
    seed: int = 1
    #: Keep the networks' books in ``out_dir`` (channels/books.py), so a restarted
    #: simulator still knows what it authorized, settled, fenced and cleared.
    books_on_disk: bool = True


# --------------------------------------------------------------------------- configuration

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Minor = Annotated[int, msgspec.Meta(ge=0, le=10**15)]
Yymm = Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{2}(0[1-9]|1[0-2])\Z")]
Bin = Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{1,11}\Z")]
BicCode = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?\Z")]
Corridor = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{2}-[A-Z]{2}\Z")]
Currency = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{3}\Z")]

#: Name reserved in the ready file for the admin port.
RESERVED_NAMES: Final = frozenset({"admin_port"})


class ChannelsConfigError(ValueError):
    """The channels configuration cannot be used; the message names the key path."""


class CardAccountSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A card account stated outright (tests, demos); others are generated from the seed."""

    pan: Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{12,19}\Z")]
    balance: Minor
    #: Largest single authorization; above it the answer is 61.
    limit: Annotated[int, msgspec.Meta(ge=1, le=10**15)] = 10**12
    expiry: Yymm = "3012"
    status: Literal["active", "blocked"] = "active"


class IssuerSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A card issuer: its BIN prefixes and how its generated accounts look."""

    #: Names the issuer in settlement files and logs.
    name: Name
    #: Card-number prefixes this issuer owns.
    bins: Annotated[list[Bin], msgspec.Meta(min_length=1, max_length=256)]
    #: Generated accounts' balance, at least (minor units).
    balance_min: Minor = 10_000
    #: Generated accounts' balance, at most.
    balance_max: Minor = 10_000_000
    #: Largest single authorization; above it, 61.
    txn_limit: Annotated[int, msgspec.Meta(ge=1, le=10**15)] = 5_000_000
    #: Shares of generated PANs in range that are not issued (14), blocked (05), expired (54).
    unissued_rate: Rate = 0.0
    blocked_rate: Rate = 0.0
    expired_rate: Rate = 0.0
    #: Accounts stated outright.
    accounts: Annotated[list[CardAccountSpec], msgspec.Meta(max_length=100_000)] = (
        msgspec.field(default_factory=list))

    def __post_init__(self) -> None:
        if self.balance_max < self.balance_min:
            raise ValueError(f"balance_max ({self.balance_max}) is below balance_min "
                             f"({self.balance_min})")


class CardSchemeSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Issuers and their card accounts; card networks naming this scheme share its ledger."""

    #: What card networks' `scheme` refers to.
    name: Name
    #: Seeds the generated accounts.
    seed: Annotated[int, msgspec.Meta(ge=0)] = 1
    #: The issuers' "today" (YYMM) for expiry checks: the simulator reads no wall clock.
    business_month: Yymm = "2601"
    #: A 0100 with a STAN + terminal seen within this window is answered 94.
    duplicate_window_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    #: Bounds: accounts materialised, authorization records kept. Past them: 96.
    max_accounts: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 2_000_000
    max_records: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 4_000_000
    max_recent_stans: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 1_000_000
    issuers: Annotated[list[IssuerSpec], msgspec.Meta(min_length=1, max_length=256)]


class BankSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A correspondent bank. ``via`` names the bank it is reached through (one more hop)."""

    #: The bank's BIC.
    bic: BicCode
    #: Extra latency for a payment through this bank.
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=600_000)] = 2.0
    via: BicCode | None = None
    #: Creditor accounts answered AC04 (closed).
    closed_accounts: list[str] = msgspec.field(default_factory=list)
    #: Creditor accounts answered AC01 (unknown).
    unknown_accounts: list[str] = msgspec.field(default_factory=list)


def _default_banks() -> list[BankSpec]:
    return [
        BankSpec(bic="DEUTDEFF", latency_ms=2.0),
        BankSpec(bic="BNPAFRPP", latency_ms=2.0),
        BankSpec(bic="CHASUS33", latency_ms=3.0),
        BankSpec(bic="BARCGB22", latency_ms=2.0),
        BankSpec(bic="HSBCGB2L", latency_ms=3.0),  # the default workload's USD corridor
        BankSpec(bic="HSBCHKHH", latency_ms=4.0, via="CHASUS33"),
        BankSpec(bic="ICBKCNBJ", latency_ms=5.0, via="HSBCHKHH"),
    ]


class SwiftSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The SWIFT-style network: correspondents, corridors, settlement timing."""

    #: Correspondent banks; a payment to a BIC not listed is refused.
    banks: Annotated[list[BankSpec], msgspec.Meta(min_length=1, max_length=10_000)] = (
        msgspec.field(default_factory=_default_banks))
    #: ACSC follows ACCP after this long (for a payment made before the cut-off).
    settlement_delay_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 2.0
    #: Settlement cycles start every ``cycle_s`` from start-up; payments accepted later than
    #: ``cutoff_s`` into a cycle settle in the next one.
    cycle_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    cutoff_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 50.0
    #: Debtor-country-creditor-country pairs refused with AG01, e.g. "DE-KP".
    forbidden_corridors: list[Corridor] = msgspec.field(default_factory=list)
    #: Currencies accepted; others are refused.
    currencies: Annotated[list[Currency], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["EUR", "USD", "GBP", "CHF", "JPY", "CNY", "HKD"])
    debtor_balance_min: Minor = 100_000_000
    debtor_balance_max: Minor = 10_000_000_000
    debtor_balances: dict[str, Minor] = msgspec.field(default_factory=dict)
    unknown_account_rate: Rate = 0.0
    closed_account_rate: Rate = 0.0
    max_payments: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 2_000_000
    max_accounts: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 2_000_000

    def __post_init__(self) -> None:
        if self.cutoff_s > self.cycle_s:
            raise ValueError(f"cutoff_s ({self.cutoff_s:g}) is after cycle_s ({self.cycle_s:g})")
        if self.debtor_balance_max < self.debtor_balance_min:
            raise ValueError("debtor_balance_max is below debtor_balance_min")


class QrSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The QR scheme: its id in merchant QR codes and its merchants."""

    #: Globally unique id (template sub-tag 00) of this scheme in merchant QR codes.
    gui: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "com.payswitch.qr"
    #: Merchants "M0000000" .. f"M{merchants - 1:07d}" exist.
    merchants: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 1000
    closed_merchant_rate: Rate = 0.0
    closed_merchants: list[str] = msgspec.field(default_factory=list)
    max_amount_minor: Annotated[int, msgspec.Meta(ge=1, le=10**15)] = 5_000_000
    max_payments: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 2_000_000
    lenient_lengths: bool = False


class NetworkSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One simulated network endpoint, on its own port."""

    #: Unique; what the switch's `[[channel_networks]]`, routes and faults call it.
    name: Name
    #: The protocol it speaks: ISO 8583 (card), pacs.008/002/028 (swift) or the QR API.
    kind: Literal["card", "swift", "qr"]
    #: Address it listens on.
    host: str = "127.0.0.1"
    #: Port it listens on; 0 picks a free one (written to --ready-file).
    port: Port = 0
    #: Seeds its latency and error draws: same seed, same behaviour.
    seed: Annotated[int, msgspec.Meta(ge=0)] = 1
    #: Latency, capacity and error mix.
    behaviour: BehaviourConfig = msgspec.field(default_factory=BehaviourConfig)
    #: Scheduled faults, `start_s` counted from start-up.
    faults: Annotated[list[Fault], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list)
    #: kind "card": the card scheme (issuers, ledger) behind this endpoint.
    scheme: Name | None = None
    #: kind "swift": banks, corridors, settlement timing.
    swift: SwiftSpec | None = None
    #: kind "qr": the scheme's merchants and limits.
    qr: QrSpec | None = None
    #: Client connections at once.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    #: Unanswered requests per connection.
    max_in_flight_per_connection: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    #: How often down/flapping faults are checked against the listener.
    fault_poll_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.02


class AdminSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The admin HTTP API: GET/POST /faults, DELETE /faults/{endpoint}, /metrics."""

    #: Serve the admin API at all (`payswitch fault` needs it).
    enabled: bool = True
    #: Address it listens on.
    host: str = "127.0.0.1"
    #: Port (`payswitch fault --admin` defaults to 7280); 0 picks one.
    port: Port = 0
    #: Bearer tokens for /faults (operator: inject and clear; auditor: list) and the audit
    #: log of every change (default var/channels-admin-audit.jsonl). See docs/security.md.
    auth: AdminAuthConfig = msgspec.field(default_factory=AdminAuthConfig)


class ChannelsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The whole file."""

    #: The network endpoints.
    networks: Annotated[list[NetworkSpec], msgspec.Meta(min_length=1, max_length=64)]
    #: Card schemes (issuers and accounts) behind card networks.
    card_schemes: Annotated[list[CardSchemeSpec], msgspec.Meta(max_length=64)] = (
        msgspec.field(default_factory=list))
    admin: AdminSpec = msgspec.field(default_factory=AdminSpec)
    settlement: SettlementSpec = msgspec.field(default_factory=SettlementSpec)


def _check(config: ChannelsConfig) -> ChannelsConfig:
    names = [net.name for net in config.networks]
    schemes = {scheme.name for scheme in config.card_schemes}
    if len(schemes) != len(config.card_schemes):
        raise ChannelsConfigError("card_schemes: names must be unique")
    all_faults: list[Fault] = []
    for i, net in enumerate(config.networks):
        path = f"networks[{i}]"
        if net.name in RESERVED_NAMES:
            raise ChannelsConfigError(f"{path}.name: {net.name!r} is reserved")
        if names.count(net.name) > 1:
            raise ChannelsConfigError(f"{path}.name: {net.name!r} is used twice")
        if net.kind == "card":
            if net.scheme is None:
                raise ChannelsConfigError(f"{path}.scheme: a card network needs a card scheme")
            if net.scheme not in schemes:
                raise ChannelsConfigError(f"{path}.scheme: no card_schemes entry {net.scheme!r}")
        elif net.scheme is not None:
            raise ChannelsConfigError(f"{path}.scheme: only card networks have a scheme")
        if net.swift is not None and net.kind != "swift":
            raise ChannelsConfigError(f"{path}.swift: only for kind 'swift'")
        if net.qr is not None and net.kind != "qr":
            raise ChannelsConfigError(f"{path}.qr: only for kind 'qr'")
        if net.swift is not None:
            _check_banks(net.swift, f"{path}.swift")
        try:
            validate_fault_schedule(net.faults, f"{path}.faults")
        except FaultConfigError as exc:
            raise ChannelsConfigError(str(exc)) from None
        for j, fault in enumerate(net.faults):
            if fault.endpoint not in names:
                raise ChannelsConfigError(
                    f"{path}.faults[{j}].endpoint: no network named {fault.endpoint!r}")
        all_faults.extend(net.faults)
    try:
        validate_fault_schedule(all_faults, "faults")
    except FaultConfigError as exc:
        raise ChannelsConfigError(str(exc)) from None
    return config


#: Longest correspondent chain: every hop adds latency, and a cycle would never end.
MAX_HOPS: Final = 8


def _check_banks(spec: SwiftSpec, path: str) -> None:
    by_bic = {bank.bic: bank for bank in spec.banks}
    if len(by_bic) != len(spec.banks):
        raise ChannelsConfigError(f"{path}.banks: BICs must be unique")
    for i, bank in enumerate(spec.banks):
        hops, current = 0, bank
        while current.via is not None:
            nxt = by_bic.get(current.via)
            if nxt is None:
                raise ChannelsConfigError(f"{path}.banks[{i}].via: unknown BIC {current.via!r}")
            hops += 1
            if hops > MAX_HOPS:
                raise ChannelsConfigError(
                    f"{path}.banks[{i}].via: more than {MAX_HOPS} hops (a cycle?)")
            current = nxt


def _convert(obj: object) -> ChannelsConfig:
    try:
        config = msgspec.convert(obj, type=ChannelsConfig)
    except msgspec.ValidationError as exc:
        raise ChannelsConfigError(describe_validation_error(exc, ChannelsConfig)) from None
    return _check(config)


def parse_config(text: str) -> ChannelsConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ChannelsConfigError(f"not valid TOML: {exc}") from None
    return _convert(data)


def load_config(path: str | Path) -> ChannelsConfig:
    """Read and check a channels config; errors read ``FILE: key.path: problem``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ChannelsConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_config(text)
    except ChannelsConfigError as exc:
        raise ChannelsConfigError(f"{path}: {exc}") from None


def config_from_dict(obj: object) -> ChannelsConfig:
    """For tests and tools that build the configuration in code."""
    return _convert(obj)
