"""Run the simulated networks: configuration, the TCP machinery they share, the admin API.

`serve_channels(config)` starts every network in `config.networks` under one anyio task group,
plus a small admin HTTP app (Starlette on Hypercorn) on its own port:

* ``GET /faults`` -- the faults active now, every network;
* ``POST /faults`` -- inject one (a JSON `channels.faults.Fault`; offsets count from now);
* ``DELETE /faults/{endpoint}`` -- clear every fault of one network, active and scheduled;
* ``GET /metrics`` -- Prometheus: requests by network and outcome, active faults, latency.

Endpoints are networks: a fault's ``endpoint`` is a network's ``name``. One `FaultTimeline`
holds every network's faults and each network's `Behaviour` asks it by name.

Shared request path (`SimServer`). Each network decodes its own protocol into a `SimRequest`
and hands it to `SimServer.serve_request`, which applies the seeded `Behaviour.plan()` in one
place, in this order: blackhole (swallow: never processed, never answered), refuse (answer
the protocol's "unavailable" at once, nothing processed), the capacity gate (queue, or
refuse when full), the network's decision (the only step that books anything), service
latency, then reset (drop the connection with an RST: the decision stands, the answer is
lost), late (extra delay), malformed (garbage frame instead of the answer) or duplicate
(the answer twice). Endpoint-wide "down" and "flapping" act on connections: a supervisor
closes the listener and resets open connections while the endpoint is down, so new
connections are refused by the kernel, and listens again on the same port when it is up.

Bounds: connections per network, requests in flight per connection (past it: answered
"unavailable" at once), frame size (past it: the connection is closed), and each network's
own books.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import struct
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal, Protocol

import anyio
import anyio.abc
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.behaviour import Behaviour, BehaviourConfig, CapacityExceeded, RequestPlan
from channels.faults import (
    Fault,
    FaultConfigError,
    FaultTimeline,
    validate_fault_schedule,
)
from channels.settlement import SettlementSpec, SettlementWriter
from switch.admin import bind_socket, serve_http

if TYPE_CHECKING:
    from channels.card import CardScheme

log = logging.getLogger(__name__)

__all__ = [
    "AdminSpec",
    "BankSpec",
    "CardAccountSpec",
    "CardSchemeSpec",
    "ChannelMetrics",
    "ChannelsConfig",
    "ChannelsConfigError",
    "ChannelsRuntime",
    "IssuerSpec",
    "NetworkSpec",
    "QrSpec",
    "SimConnection",
    "SimRequest",
    "SimServer",
    "SwiftSpec",
    "load_config",
    "parse_config",
    "serve_channels",
]

# --------------------------------------------------------------------------- configuration

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Minor = Annotated[int, msgspec.Meta(ge=0, le=10**15)]
Yymm = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}(0[1-9]|1[0-2])$")]
Bin = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,11}$")]
BicCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$")]
Corridor = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}-[A-Z]{2}$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]

#: Name reserved in the ready file for the admin port.
RESERVED_NAMES: Final = frozenset({"admin_port"})


class ChannelsConfigError(ValueError):
    """The channels configuration cannot be used; the message names the key path."""


class CardAccountSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A card account stated outright (tests, demos); others are generated from the seed."""

    pan: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{12,19}$")]
    balance: Minor
    #: Largest single authorization; above it the answer is 61.
    limit: Annotated[int, msgspec.Meta(ge=1, le=10**15)] = 10**12
    expiry: Yymm = "3012"
    status: Literal["active", "blocked"] = "active"


class IssuerSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: Name
    bins: Annotated[list[Bin], msgspec.Meta(min_length=1, max_length=256)]
    balance_min: Minor = 10_000
    balance_max: Minor = 10_000_000
    txn_limit: Annotated[int, msgspec.Meta(ge=1, le=10**15)] = 5_000_000
    #: Shares of generated PANs in range that are not issued (14), blocked (05), expired (54).
    unissued_rate: Rate = 0.0
    blocked_rate: Rate = 0.0
    expired_rate: Rate = 0.0
    accounts: Annotated[list[CardAccountSpec], msgspec.Meta(max_length=100_000)] = (
        msgspec.field(default_factory=list))


class CardSchemeSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Issuers and their card accounts; card networks naming this scheme share its ledger."""

    name: Name
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

    bic: BicCode
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=600_000)] = 2.0
    via: BicCode | None = None
    closed_accounts: list[str] = msgspec.field(default_factory=list)
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
    name: Name
    kind: Literal["card", "swift", "qr"]
    host: str = "127.0.0.1"
    port: Port = 0
    seed: Annotated[int, msgspec.Meta(ge=0)] = 1
    behaviour: BehaviourConfig = msgspec.field(default_factory=BehaviourConfig)
    faults: Annotated[list[Fault], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list)
    #: kind "card": the card scheme (issuers, ledger) behind this endpoint.
    scheme: Name | None = None
    swift: SwiftSpec | None = None
    qr: QrSpec | None = None
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_in_flight_per_connection: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    #: How often down/flapping faults are checked against the listener.
    fault_poll_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.02


class AdminSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 0


class ChannelsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    networks: Annotated[list[NetworkSpec], msgspec.Meta(min_length=1, max_length=64)]
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
        raise ChannelsConfigError(str(exc)) from None
    return _check(config)


def parse_config(text: str) -> ChannelsConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ChannelsConfigError(f"not valid TOML: {exc}") from None
    return _convert(data)


def load_config(path: str | Path) -> ChannelsConfig:
    return parse_config(Path(path).read_text())


def config_from_dict(obj: object) -> ChannelsConfig:
    """For tests and tools that build the configuration in code."""
    return _convert(obj)


# --------------------------------------------------------------------------- metrics

OUTCOMES: Final = (
    "approved", "declined", "error", "status", "reversal", "advice", "other", "refused",
    "blackhole", "overloaded", "reset", "malformed", "duplicate", "late", "bad_request",
)
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)


class ChannelMetrics:
    """The simulators' Prometheus metrics, in their own registry."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "channels_requests", "Requests handled by a simulated network, by outcome or fault.",
            ["network", "outcome"], registry=self.registry)
        self.active_faults = Gauge(
            "channels_active_faults", "Faults active now on a simulated network.",
            ["network"], registry=self.registry)
        self.latency = Histogram(
            "channels_latency_seconds",
            "Delay a simulated network applied before answering (service + late).",
            ["network"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.connections = Gauge(
            "channels_connections", "Open connections per simulated network.",
            ["network"], registry=self.registry)
        # Bound label children once: .labels() costs ~4x an inc().
        self._requests = {
            (net, outcome): self.requests.labels(net, outcome)
            for net in networks for outcome in OUTCOMES
        }
        self._latency = {net: self.latency.labels(net) for net in networks}
        self._connections = {net: self.connections.labels(net) for net in networks}
        for net in networks:
            self.active_faults.labels(net).set(0)

    def count(self, network: str, outcome: str) -> None:
        child = self._requests.get((network, outcome))
        if child is None:
            child = self._requests[(network, outcome)] = self.requests.labels(network, outcome)
        child.inc()

    def observe(self, network: str, seconds: float) -> None:
        self._latency[network].observe(seconds)

    def set_connections(self, network: str, count: int) -> None:
        self._connections[network].set(count)


# --------------------------------------------------------------------------- shared server

_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class FrameSplitter(Protocol):
    def feed(self, data: bytes) -> Sequence[bytes | memoryview]: ...


class SimConnection:
    """One client connection to a simulated network."""

    __slots__ = ("_lock", "alive", "id", "in_flight", "scope", "stream")

    def __init__(self, conn_id: int, stream: anyio.abc.ByteStream) -> None:
        self.id = conn_id
        self.stream = stream
        self._lock = anyio.Lock()
        self.alive = True
        self.in_flight = 0
        self.scope: anyio.CancelScope | None = None

    async def send(self, data: bytes) -> bool:
        """Write one frame; False if the connection is gone (the answer is lost)."""
        if not self.alive:
            return False
        try:
            async with self._lock:
                await self.stream.send(data)
        except _CLOSED:
            self.alive = False
            return False
        return True

    def close(self) -> None:
        self.alive = False
        if self.scope is not None:
            self.scope.cancel()

    def reset(self) -> None:
        """Drop the connection with an RST (SO_LINGER 0), cancelling what is in flight on it."""
        with contextlib.suppress(Exception):
            raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


class SimRequest(ABC):
    """One request as a network understands it; `SimServer.serve_request` drives it."""

    #: The fault scope key: a PAN (card), "DE-FR:BNPAFRPP" (SWIFT), a merchant id (QR).
    route_key: str = ""
    #: Latency the network adds on top of the behaviour's (e.g. correspondent hops).
    extra_latency_s: float = 0.0
    #: Set by decide()/reject(): the metrics outcome label.
    outcome: str = "other"

    def admit(self) -> None:  # noqa: B027 - optional hook
        """Called on arrival, unless swallowed: e.g. book the reference as pending."""

    def abandon(self) -> None:  # noqa: B027 - optional hook
        """Called if admitted but cancelled before decide(): undo admit()."""

    @abstractmethod
    def decide(self, technical_error: str | None) -> bytes | None:
        """The network's decision (books it) and the answer's payload."""

    @abstractmethod
    def reject(self, code: str) -> bytes | None:
        """Answer "unavailable" (`code` is ISO 8583's technical vocabulary) without processing."""


class SimServer(ABC):
    """The TCP face shared by the three simulated networks."""

    def __init__(self, spec: NetworkSpec, behaviour: Behaviour, metrics: ChannelMetrics) -> None:
        self.spec = spec
        self.name = spec.name
        self.behaviour = behaviour
        self.metrics = metrics
        self.port: int = spec.port
        self._conns: dict[int, SimConnection] = {}
        self._next_conn = 0
        self.refused_connections = 0
        self.bad_frames = 0

    # --- protocol hooks ------------------------------------------------------------------

    @abstractmethod
    def new_splitter(self) -> FrameSplitter: ...

    @abstractmethod
    def frame(self, payload: bytes) -> bytes: ...

    @abstractmethod
    def garbage(self) -> bytes:
        """A payload the client's decoder must reject (the "malformed" fault)."""

    @abstractmethod
    def parse(self, conn: SimConnection, payload: bytes) -> SimRequest | bytes | None:
        """A request to serve, an immediate answer (network management: only a blackhole
        stops it), or None (nothing to answer; the network counts why)."""

    async def background(self) -> None:
        """Network-specific background work (e.g. settlement), run while serving."""
        await anyio.sleep_forever()

    # --- serving -------------------------------------------------------------------------

    def connection(self, conn_id: int) -> SimConnection | None:
        return self._conns.get(conn_id)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        spec = self.spec
        first = await anyio.create_tcp_listener(local_host=spec.host, local_port=spec.port)
        self.port = first.extra(anyio.abc.SocketAttribute.local_port)
        listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = first
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.background)
            accept_scope: anyio.CancelScope | None = None
            task_status.started(self.port)
            try:
                while True:
                    state = self.behaviour.connection_state(anyio.current_time())
                    if state == "down":
                        if accept_scope is not None:
                            accept_scope.cancel()  # _accept closes its listener on the way out
                            accept_scope = listener = None
                            log.info("%s: down; listener closed", self.name)
                        elif listener is not None:
                            await listener.aclose()
                            listener = None
                        for conn in list(self._conns.values()):
                            conn.reset()
                    else:
                        if listener is None:
                            try:
                                listener = await anyio.create_tcp_listener(
                                    local_host=spec.host, local_port=self.port)
                                log.info("%s: up; listening on %d", self.name, self.port)
                            except OSError as exc:  # the old socket may not be closed yet
                                log.debug("%s: cannot listen again yet: %s", self.name, exc)
                        if listener is not None and accept_scope is None:
                            accept_scope = anyio.CancelScope()
                            tg.start_soon(self._accept, listener, tg, accept_scope)
                    await anyio.sleep(spec.fault_poll_s)
            finally:
                if accept_scope is None and listener is not None:
                    with anyio.CancelScope(shield=True):
                        await listener.aclose()
                tg.cancel_scope.cancel()

    async def _accept(self, listener: anyio.abc.Listener[anyio.abc.SocketStream],
                      tg: anyio.abc.TaskGroup, scope: anyio.CancelScope) -> None:
        """Accept until ``scope`` is cancelled, then close ``listener``."""
        with scope:
            try:
                # Connection handlers go to ``tg``: closing the listener does not cut them.
                await listener.serve(self._connection, task_group=tg)
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        if len(self._conns) >= self.spec.max_connections:
            self.refused_connections += 1
            log.warning("%s: %d connections already; closing a new one",
                        self.name, self.spec.max_connections)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        self._next_conn += 1
        conn = SimConnection(self._next_conn, stream)
        self._conns[conn.id] = conn
        self.metrics.set_connections(self.name, len(self._conns))
        try:
            async with anyio.create_task_group() as tg:
                conn.scope = tg.cancel_scope
                await self._read(conn, tg)
                # EOF: requests already received still run to their decision, as a real
                # network processes what reached it; only their answers are lost.
        finally:
            conn.alive = False
            del self._conns[conn.id]
            self.metrics.set_connections(self.name, len(self._conns))
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, conn: SimConnection, tg: anyio.abc.TaskGroup) -> None:
        splitter = self.new_splitter()
        limit = self.spec.max_in_flight_per_connection
        while True:
            try:
                data = await conn.stream.receive(65536)
            except _CLOSED:
                return
            try:
                frames = splitter.feed(data)
            except Exception as exc:  # the splitter's own error: cannot re-sync the stream
                self.bad_frames += 1
                self.metrics.count(self.name, "bad_request")
                log.info("%s: framing error, closing connection %d: %s", self.name, conn.id, exc)
                conn.close()
                return
            for payload in frames:
                if conn.in_flight >= limit:
                    await self._overloaded(conn, bytes(payload))
                    continue
                conn.in_flight += 1
                tg.start_soon(self._request, conn, bytes(payload))

    async def _overloaded(self, conn: SimConnection, payload: bytes) -> None:
        item = self.parse(conn, payload)
        if isinstance(item, SimRequest):
            self.metrics.count(self.name, "overloaded")
            answer = item.reject("91")
            if answer is not None:
                await conn.send(self.frame(answer))

    async def _request(self, conn: SimConnection, payload: bytes) -> None:
        try:
            item = self.parse(conn, payload)
            if item is None:
                self.metrics.count(self.name, "bad_request")
            elif isinstance(item, bytes):
                if self.behaviour.connection_state(anyio.current_time()) == "blackhole":
                    self.metrics.count(self.name, "blackhole")
                    return
                await conn.send(self.frame(item))
            else:
                await self.serve_request(conn, item)
        except Exception:
            log.exception("%s: error serving a request", self.name)
            self.metrics.count(self.name, "error")
        finally:
            conn.in_flight -= 1

    async def serve_request(self, conn: SimConnection, request: SimRequest) -> None:
        """Apply the seeded plan to one request; see the module docstring for the order."""
        name, metrics = self.name, self.metrics
        plan: RequestPlan = self.behaviour.plan(anyio.current_time(), request.route_key)
        if plan.action == "blackhole":
            metrics.count(name, "blackhole")
            return
        if plan.action == "refuse":
            metrics.count(name, "refused")
            answer = request.reject(self.behaviour.config.errors.unavailable_code)
            if answer is not None:
                await conn.send(self.frame(answer))
            return
        request.admit()
        decided = False
        delay = plan.latency_s + request.extra_latency_s
        try:
            try:
                async with self.behaviour.capacity():
                    answer = request.decide(plan.technical_error)
                    decided = True
                    await anyio.sleep(delay)
            except CapacityExceeded:
                metrics.count(name, "overloaded")
                answer = request.reject("91")
                decided = True
                if answer is not None:
                    await conn.send(self.frame(answer))
                return
        finally:
            if not decided:
                request.abandon()
        metrics.count(name, request.outcome)
        if plan.action == "reset":
            metrics.count(name, "reset")
            conn.reset()
            return
        if answer is None:
            return
        if plan.late_delay_s > 0:
            metrics.count(name, "late")
            await anyio.sleep(plan.late_delay_s)
        metrics.observe(name, delay + plan.late_delay_s)
        if plan.malformed:
            metrics.count(name, "malformed")
            await conn.send(self.frame(self.garbage()))
            return
        data = self.frame(answer)
        await conn.send(data)
        if plan.duplicate:
            metrics.count(name, "duplicate")
            await conn.send(data)


# --------------------------------------------------------------------------- admin

def build_admin_app(runtime: ChannelsRuntime) -> Starlette:
    async def get_faults(request: Request) -> Response:
        now = anyio.current_time()
        active = msgspec.to_builtins(runtime.timeline.describe(now))
        for status in active:
            if status["remaining_s"] is not None and not math.isfinite(status["remaining_s"]):
                status["remaining_s"] = None
        return JSONResponse({"faults": active})

    async def post_fault(request: Request) -> Response:
        body = await request.body()
        if len(body) > 64 * 1024:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            fault = msgspec.json.decode(body, type=Fault)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return JSONResponse({"error": f"fault: {exc}"}, status_code=400)
        if fault.endpoint not in runtime.networks:
            return JSONResponse(
                {"error": f"fault.endpoint: no network named {fault.endpoint!r}",
                 "networks": sorted(runtime.networks)}, status_code=404)
        try:
            fault_id = runtime.timeline.inject(fault, anyio.current_time())
        except FaultConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        runtime.refresh_fault_gauge()
        log.info("fault %d injected: %s on %s", fault_id, fault.kind, fault.endpoint)
        return JSONResponse({"id": fault_id}, status_code=201)

    async def delete_faults(request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        if endpoint not in runtime.networks:
            return JSONResponse({"error": f"no network named {endpoint!r}"}, status_code=404)
        cleared = runtime.timeline.clear_endpoint(endpoint)
        runtime.refresh_fault_gauge()
        log.info("faults cleared on %s: %s", endpoint, cleared)
        return JSONResponse({"cleared": cleared})

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        runtime.refresh_fault_gauge()
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "networks": runtime.ports})

    return Starlette(routes=[
        Route("/faults", get_faults, methods=["GET"]),
        Route("/faults", post_fault, methods=["POST"]),
        Route("/faults/{endpoint}", delete_faults, methods=["DELETE"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


# --------------------------------------------------------------------------- runtime

class ChannelsRuntime:
    """Every simulated network of one configuration, their shared fault timeline and metrics.

    Created inside the event loop (the timeline's origin is ``anyio.current_time()``).
    Tests reach the simulators' books through `networks` and `card_schemes`.
    """

    def __init__(self, config: ChannelsConfig) -> None:
        from channels.card import CardNetwork, CardScheme
        from channels.qr import QrNetwork
        from channels.swift import SwiftNetwork

        self.config = config
        now = anyio.current_time()
        faults = [fault for net in config.networks for fault in net.faults]
        self.timeline = FaultTimeline(faults, origin=now)
        self.metrics = ChannelMetrics([net.name for net in config.networks])
        self.card_schemes: dict[str, CardScheme] = {
            spec.name: CardScheme(spec) for spec in config.card_schemes}
        self.networks: dict[str, SimServer] = {}
        for net in config.networks:
            behaviour = Behaviour(net.behaviour, net.seed, endpoint=net.name,
                                  faults=self.timeline)
            server: SimServer
            if net.kind == "card":
                assert net.scheme is not None
                server = CardNetwork(net, behaviour, self.metrics, self.card_schemes[net.scheme])
            elif net.kind == "swift":
                server = SwiftNetwork(net, behaviour, self.metrics, origin=now)
            else:
                server = QrNetwork(net, behaviour, self.metrics)
            self.networks[net.name] = server
        self.ports: dict[str, int] = {}
        self.admin_port = 0
        self.settlement: SettlementWriter | None = None
        self._shutdown = anyio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def refresh_fault_gauge(self) -> None:
        now = anyio.current_time()
        counts = dict.fromkeys(self.networks, 0)
        for status in self.timeline.describe(now):
            if status.endpoint in counts:
                counts[status.endpoint] += 1
        for name, count in counts.items():
            self.metrics.active_faults.labels(name).set(count)

    def ready_document(self) -> dict[str, object]:
        doc: dict[str, object] = {
            name: {"port": port, "kind": self.networks[name].spec.kind}
            for name, port in self.ports.items()
        }
        doc["admin_port"] = self.admin_port
        return doc

    async def run(self, *, ready_file: str | None = None,
                  task_status: anyio.abc.TaskStatus[ChannelsRuntime] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        admin_stop = anyio.Event()
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as nets:
                for name, server in self.networks.items():
                    self.ports[name] = await nets.start(server.serve)
                admin = self.config.admin
                if admin.enabled:
                    sock = bind_socket(admin.host, admin.port)
                    self.admin_port = sock.getsockname()[1]
                    # In the outer group, stopped by its own trigger: Hypercorn is never
                    # cancelled mid-shutdown.
                    outer.start_soon(serve_http, build_admin_app(self), sock, admin_stop.wait)
                settlement: SettlementWriter | None = None
                if self.config.settlement.enabled:
                    settlement = SettlementWriter(self, self.config.settlement)
                    self.settlement = settlement
                    nets.start_soon(settlement.run)
                if ready_file:
                    _write_ready_file(ready_file, self.ready_document())
                log.info("channels ready: %s", json.dumps(self.ready_document()))
                task_status.started(self)
                await self._shutdown.wait()
                if settlement is not None:
                    settlement.cut()  # the last, partial cycle: nothing final goes unreported
                nets.cancel_scope.cancel()
            admin_stop.set()


async def serve_channels(
    config: ChannelsConfig,
    *,
    ready_file: str | None = None,
    task_status: anyio.abc.TaskStatus[ChannelsRuntime] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run every network of ``config`` (and the admin app) until the runtime is shut down.

    ``task_status`` receives the `ChannelsRuntime` once every port is bound: its ``ports``
    and ``admin_port`` say where, and ``request_shutdown()`` stops it.
    """
    runtime = ChannelsRuntime(config)
    await runtime.run(ready_file=ready_file, task_status=task_status)


def _write_ready_file(path: str, document: dict[str, object]) -> None:
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(target)  # atomic: readers never see half a file
