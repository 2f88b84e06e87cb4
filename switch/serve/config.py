"""Switch configuration: a TOML file decoded straight into msgspec Structs.

Every struct forbids unknown fields and every number carries its bounds, so a typo, a
wrong type or an out-of-range value stops start-up with a message naming the key path
(``journal.mode: Expected `'sync' | 'group' | 'off'`, got `'fast'```). A switch that
starts with a silently ignored setting is worse than one that refuses to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from switch.adapters.fakenet import StandInNetworkConfig
from switch.adapters.specs import (
    CardAdapterConfig,
    NetworkAdapterSpec,
    QrAdapterConfig,
    SwiftAdapterConfig,
)
from switch.bounds import Port, PositiveSeconds
from switch.currency import CURRENCIES
from switch.model import CHANNELS, Channel
from switch.payment.resolver import ResolutionConfig
from switch.payment.risk import RiskConfig
from switch.payment.standin import StandInConfig
from switch.protocols.framing import MAX_FRAME_BYTES_CEILING
from switch.routing.resilience import ResilienceConfig
from switch.routing.router import ChannelRoute
from switch.tomlio import convert, parse_toml, read_text


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path."""


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where clients connect, and the bounds that keep the switch responsive under load."""

    #: Address the payment port listens on.
    host: str = "127.0.0.1"
    #: Payment port (length-prefixed msgpack); 0 picks a free one (see --ready-file).
    port: Port = 7100
    #: Event loop: asyncio with uvloop, or trio (`serve --backend` overrides).
    backend: Literal["asyncio", "trio"] = "asyncio"
    #: Client connections at once; past it, a new one is refused with `overloaded`.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1024
    #: Largest request frame; a larger one closes that connection (`frame_too_large`).
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256, le=MAX_FRAME_BYTES_CEILING)] = 65536
    #: Bytes read per socket read; every complete frame in them is parsed.
    read_bytes: Annotated[int, msgspec.Meta(ge=65536, le=4 * 1024 * 1024)] = 65536
    #: Unanswered requests per connection; past it, `overloaded`.
    max_in_flight_per_connection: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512
    #: Unanswered requests over all connections; past it, `overloaded`.
    max_in_flight_total: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    #: An admitted payment still waiting this long for a worker (the switch is CPU-bound)
    #: is refused as overloaded before anything is journaled: admitted latency stays
    #: bounded under overload instead of rising for everyone.
    max_queue_delay_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.2
    #: Graceful shutdown waits this long for in-flight payments before cancelling them.
    drain_timeout_s: PositiveSeconds = 10.0


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The admin HTTP port: /metrics, /healthz, /readyz, /routes/reload."""

    #: Serve the admin port at all.
    enabled: bool = True
    #: Off replaces every metric with a no-op: only for measuring what metrics cost.
    metrics: bool = True
    #: Address the admin port listens on.
    host: str = "127.0.0.1"
    #: Admin HTTP port (dashboards/prometheus/prometheus.yml scrapes 7180); 0 picks one.
    port: Port = 7180


class Iso8583DoorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ISO 8583 acquirer interface (docs/iso8583-acquirer.md); off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 7110
    #: Bitmap encoding: 16 ASCII hex characters (jPOS ISO87APackager) or 8 raw bytes.
    bitmap: Literal["ascii", "binary"] = "ascii"
    #: Data elements whose values make a payment's idempotency key, in order.
    key_fields: Annotated[list[Literal[7, 11, 12, 13, 32, 37, 41, 42]],
                          msgspec.Meta(min_length=1, max_length=6)] = msgspec.field(
        default_factory=lambda: [32, 41, 11, 7])
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    #: ISO 8583 frames carry a 2-byte length: at most 65535 bytes.
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=64, le=65535)] = 8192
    read_bytes: Annotated[int, msgspec.Meta(ge=4096, le=4 * 1024 * 1024)] = 65536
    max_in_flight_per_connection: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512
    max_in_flight_total: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096


class HttpApiConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The HTTP/JSON payments API (docs/http-api.md); off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 7120
    #: The ASGI server, chosen by bench/bench_http.py (see bench/RESULTS.md). It runs on
    #: the switch's own event loop; on the trio backend Hypercorn is used whatever this says.
    server: Literal["uvicorn", "hypercorn", "granian"] = "uvicorn"
    #: Request bodies above this are refused with 413 before they are parsed.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=256, le=1024 * 1024)] = 16384
    #: Payments in flight through this API; past it, 503 problem+json with Retry-After.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1024


class JournalConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The SQLite (WAL) journal: every payment step, durable before the client hears back."""

    #: The journal file, created if missing and replayed at start-up.
    path: str = "var/journal.db"
    #: sync: one fsync per record; group: one per batch (default); off: no waiting, no
    #: fsync -- acknowledged payments can be lost, for pure-speed experiments only.
    mode: Literal["sync", "group", "off"] = "group"
    #: Records written per commit at most.
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 8192
    #: group mode: wait this long for more records before each commit (0: commit at
    #: once). Fewer, larger commits cost less CPU per payment; adds up to this latency.
    commit_window_s: Annotated[float, msgspec.Meta(ge=0, le=0.05)] = 0.0
    #: Records waiting for the writer; past this, new payments are shed as overloaded.
    max_pending: Annotated[int, msgspec.Meta(ge=1, le=4_000_000)] = 262144


class IdempotencyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Idempotency keys: the same key and body get the stored result; another body is refused."""

    #: How long a completed key is remembered.
    retention_s: PositiveSeconds = 86400.0
    #: Keys remembered at most; the oldest completed ones are forgotten first.
    max_keys: Annotated[int, msgspec.Meta(ge=1, le=50_000_000)] = 2_000_000


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the route table comes from."""

    #: A route table (TOML, see examples/routes.toml). Without one, each [[routes]] entry
    #: becomes a one-endpoint target for its channel.
    table: str | None = None
    #: How often the table file is checked for changes (hot reload); 0 turns it off.
    reload_check_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Secrets."""

    #: Key for PAN tokens and idempotency body hashes. The default is for demos only.
    token_key: Annotated[str, msgspec.Meta(min_length=16, max_length=128)] = (
        "payswitch-demo-key-change-me"
    )


class SwitchConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole file. Every section is optional."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    iso8583: Iso8583DoorConfig = msgspec.field(default_factory=Iso8583DoorConfig)
    http: HttpApiConfig = msgspec.field(default_factory=HttpApiConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    idempotency: IdempotencyConfig = msgspec.field(default_factory=IdempotencyConfig)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    #: In-process stand-in networks (no sockets): the default when nothing else is named.
    networks: list[StandInNetworkConfig] = msgspec.field(default_factory=list)
    #: The simulated networks over TCP (``payswitch channels serve``), by kind.
    channel_networks: list[NetworkAdapterSpec] = msgspec.field(default_factory=list)
    #: One network per channel, when no route table (`routing.table`) is used.
    routes: list[ChannelRoute] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    standin: StandInConfig = msgspec.field(default_factory=StandInConfig)
    resolution: ResolutionConfig = msgspec.field(default_factory=ResolutionConfig)
    #: Seeds every random choice (stand-in networks, jitter): same seed, same outcomes.
    seed: int = 1


def channel_of(spec: NetworkAdapterSpec) -> Channel:
    """The channel a network adapter serves: its ``kind`` tag."""
    if isinstance(spec, CardAdapterConfig):
        return "card"
    if isinstance(spec, SwiftAdapterConfig):
        return "swift"
    assert isinstance(spec, QrAdapterConfig)
    return "qr"


def _check_cross_references(cfg: SwitchConfig) -> None:
    """Rules msgspec cannot express: references between sections, known currencies."""
    for i, limit in enumerate(cfg.risk.amount_limits):
        if limit.currency not in CURRENCIES:
            raise ConfigError(
                f"risk.amount_limits[{i}].currency: unknown currency {limit.currency!r}"
            )
    for code in cfg.risk.fx_to_cny:
        if code not in CURRENCIES:
            raise ConfigError(f"risk.fx_to_cny.{code}: unknown currency")
    if "CNY" not in cfg.risk.fx_to_cny:
        raise ConfigError("risk.fx_to_cny.CNY: required (the AML threshold is in CNY)")
    serves: dict[str, Channel] = {}
    for section, entries in (
        ("networks", [(n.name, n.channel) for n in cfg.networks]),
        ("channel_networks", [(n.name, channel_of(n)) for n in cfg.channel_networks]),
    ):
        for i, (name, channel) in enumerate(entries):
            if name in serves:
                raise ConfigError(f"{section}[{i}].name: duplicate network name {name!r}")
            serves[name] = channel
    routed: set[str] = set()
    for i, route in enumerate(cfg.routes):
        if route.network not in serves:
            raise ConfigError(f"routes[{i}].network: no network named {route.network!r}")
        if route.channel in routed:
            raise ConfigError(f"routes[{i}].channel: a route for {route.channel!r} already exists")
        if serves[route.network] != route.channel:
            raise ConfigError(
                f"routes[{i}].network: network {route.network!r} serves "
                f"{serves[route.network]!r}, not {route.channel!r}"
            )
        routed.add(route.channel)
    missing = [c for c in CHANNELS if c not in routed]
    if cfg.routes and missing and cfg.routing.table is None:
        raise ConfigError(f"routes: no route for channel(s) {', '.join(missing)}")
    for section, names in (("resilience.breakers", cfg.resilience.breakers),
                           ("resilience.admission.overrides", cfg.resilience.admission.overrides)):
        for name in names:
            if name not in serves:
                raise ConfigError(f"{section}.{name}: no network named {name!r}")


def parse_config(text: str, source: str = "<config>") -> SwitchConfig:
    cfg = convert(parse_toml(text, source, ConfigError), SwitchConfig, source, ConfigError)
    try:
        _check_cross_references(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return cfg


def load_config(path: str | Path) -> SwitchConfig:
    return with_defaults(parse_config(read_text(path, ConfigError), str(path)))


def with_defaults(cfg: SwitchConfig) -> SwitchConfig:
    """Fill in one stand-in network and route per channel when the file names none."""
    if cfg.routes or cfg.routing.table is not None or cfg.channel_networks:
        return cfg
    networks = [
        StandInNetworkConfig(name=f"standin-{ch}", channel=ch, seed=cfg.seed + i)
        for i, ch in enumerate(CHANNELS)
    ]
    routes = [ChannelRoute(channel=ch, network=f"standin-{ch}") for ch in CHANNELS]
    return msgspec.structs.replace(cfg, networks=networks, routes=routes)
