"""Switch configuration: a TOML file decoded straight into msgspec Structs.

Every struct forbids unknown fields and every number carries its bounds, so a typo, a
wrong type or an out-of-range value stops start-up with a message naming the key path
(``journal.mode: Expected `'sync' | 'group' | 'off'`, got `'fast'```). A switch that
starts with a silently ignored setting is worse than one that refuses to start.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from switch.adapters.fakenet import StandInNetworkConfig
from switch.adapters.specs import (
    CardAdapterConfig,
    NetworkAdapterSpec,
    QrAdapterConfig,
    SwiftAdapterConfig,
)
from switch.bounds import Port, PositiveSeconds
from switch.currency import CURRENCIES, format_amount
from switch.fielderrors import describe_validation_error
from switch.model import CHANNELS, Channel
from switch.payment.resolver import ResolutionConfig, ResolutionPolicy
from switch.payment.risk import RiskConfig
from switch.payment.standin import (
    MAJOR_AMOUNT_PATTERN,
    OLD_KEYS,
    MinorLimits,
    StandInConfig,
    StandInLimits,
)
from switch.protocols.framing import MAX_FRAME_BYTES_CEILING
from switch.protocols.shardmap import (
    ADDRESS_PATTERN,
    MAX_ADDRESS_CHARS,
    MAX_SHARDS,
    Address,
    ShardMap,
)
from switch.routing.breaker import BreakerConfig
from switch.routing.resilience import ResilienceConfig
from switch.routing.router import ChannelRoute
from switch.serve.http import AdminAuthConfig
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
    #: Connections from one source address; past it, refused as overloaded.
    max_connections_per_source: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 512
    #: A connection that sends no complete frame within this is closed.
    handshake_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    #: A connection with nothing read and nothing in flight for this long is closed.
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    #: Replies buffered for a client that does not read them; past it, disconnected.
    max_reply_buffer_bytes: Annotated[int, msgspec.Meta(ge=65536, le=1 << 30)] = 8 << 20
    #: Largest request frame; a larger one closes that connection (`frame_too_large`).
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256, le=MAX_FRAME_BYTES_CEILING)] = 65536
    #: Bytes read per socket read; every complete frame in them is parsed.
    read_bytes: Annotated[int, msgspec.Meta(ge=65536, le=4 * 1024 * 1024)] = 65536
    #: Unanswered requests per connection; frames already read past it are refused
    #: `overloaded`, and the connection is not read again until replies make room.
    max_in_flight_per_connection: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512
    #: Unanswered requests over all connections; past it (or past the adaptive limit
    #: below it, steered by event-loop lag), `overloaded`.
    max_in_flight_total: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    #: While the event loop runs this far behind (its smoothed lag: how long bytes read
    #: now waited for it), every new payment is refused as overloaded before anything is
    #: journaled: admitted latency stays bounded instead of rising for everyone.
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
    #: Bearer tokens (operator, auditor) for the admin API and its audit log; the audit
    #: log defaults to admin-audit.jsonl beside the journal. See docs/security.md.
    auth: AdminAuthConfig = msgspec.field(default_factory=AdminAuthConfig)


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
    #: Acquirer connections at once. At the limit the longest-idle connection with
    #: nothing in flight is closed to make room; if none is idle, the new one is closed.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    #: Connections from one source address; past it, the new one is closed.
    max_connections_per_source: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 128
    #: A connection that sends no complete frame (a zero-length keep-alive counts)
    #: within this is closed.
    handshake_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    #: A connection with nothing read and nothing in flight for this long is closed.
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    #: Answers buffered for a peer that does not read them; past it, disconnected.
    max_reply_buffer_bytes: Annotated[int, msgspec.Meta(ge=65536, le=1 << 30)] = 8 << 20
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


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """This switch as one worker of a sharded cluster (docs/cluster.md); empty: standalone.

    ``shard`` and ``shards`` are usually written by `payswitch serve --workers N` or
    applied from a cluster layout (`payswitch serve --cluster layout.json --shard I`), not
    by hand; ``split_limits`` is set in the config every worker reads.
    """

    #: The shard this worker owns (0-based).
    shard: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SHARDS)] = 0
    #: Every shard's msgpack address (host:port), in shard order; this worker's own is
    #: ``shards[shard]``. A key is owned by shard crc32(key) mod len(shards); a payment
    #: for a key owned elsewhere is answered `moved` (msgpack) or 421 (HTTP).
    shards: Annotated[list[Address], msgspec.Meta(max_length=MAX_SHARDS)] = msgspec.field(
        default_factory=list)
    #: Every shard's HTTP door (host:port), in shard order, "" for a shard without one:
    #: what a 421 `moved` names (the msgpack address in `shards` is no HTTP door).
    #: Written from the cluster layout like `shards`; empty, or a shard missing or "":
    #: the 421 says the owner's HTTP address is not known.
    http_shards: Annotated[list[Annotated[str, msgspec.Meta(
        max_length=MAX_ADDRESS_CHARS, pattern=rf"\A(?:{ADDRESS_PATTERN[2:-2]})?\Z")]],
        msgspec.Meta(max_length=MAX_SHARDS)] = msgspec.field(default_factory=list)
    #: Each of N workers enforces 1/N (rounded down) of the cumulative per-card,
    #: per-payer and per-issuer limits -- risk.velocity.max_count and
    #: max_amount_cny_minor, each currency's standin.limits per_card_max and per_issuer_max -- so
    #: together they never pass the configured limit (docs/cluster.md); a limit that
    #: would become 0 is refused at start. False: each worker enforces the whole limit,
    #: which is up to N times looser for the cluster.
    split_limits: bool = True

    @property
    def map(self) -> ShardMap:
        return ShardMap(self.shards)

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1


class JournalConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The SQLite (WAL) journal: every payment step, durable before the client hears back."""

    #: The journal file, created if missing and replayed at start-up.
    path: str = "var/journal.db"
    #: sync: one fsync per record; group: one per batch (default); off: no waiting, no
    #: fsync -- acknowledged payments can be lost, for pure-speed experiments only.
    mode: Literal["sync", "group", "off"] = "group"
    #: Who commits. loop: the event loop's own thread, once per loop step for every
    #: record of that step (as Redis's appendfsync always): no thread hand-off, 10-23%
    #: less CPU per payment and about half the p99 at 8,000-10,000/s (measured side by
    #: side on 2 cores), but while the disk is slow the whole loop waits with it (a
    #: commit that holds it for a second is logged while it lasts). thread:
    #: a writer thread commits while the loop goes on reading, refusing and serving
    #: metrics; each commit then costs two cross-thread wake-ups.
    writer: Literal["loop", "thread"] = "loop"
    #: Records written per commit at most.
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 8192
    #: group mode with writer = "thread": after each commit, let records gather this
    #: long before the next one (0: the next commit starts at once). Fewer, larger
    #: commits cost less CPU per payment; adds up to this latency. Measured at 0.002
    #: (bench/bench_rates.py): a third less CPU per payment at 1,000/s, a sixth at
    #: 4,000/s, for ~2 ms on the median.
    commit_window_s: Annotated[float, msgspec.Meta(ge=0, le=0.05)] = 0.0
    #: Records waiting for the writer; past this, new payments are shed as overloaded.
    max_pending: Annotated[int, msgspec.Meta(ge=1, le=4_000_000)] = 262144
    #: ``payswitch serve`` refuses to start with less free space than this (MiB) on the
    #: journal's filesystem: a journal that cannot commit stops the switch (fail-stop).
    min_free_mb: Annotated[int, msgspec.Meta(ge=0, le=1_048_576)] = 64


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


#: Bounds on a token key, in characters.
TOKEN_KEY_MIN, TOKEN_KEY_MAX = 16, 1024
#: Where ``payswitch serve --demo`` keeps the random key it generates: beside the journal,
#: so a work dir keeps one key across restarts (idempotency and tokens stay stable).
DEMO_KEY_NAME = "token.key"


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the token key comes from. The key itself never lives in a config file.

    The token key makes PAN tokens and idempotency body hashes (keyed BLAKE2b). Anyone
    holding it can recover a PAN from its token by trying the ~10^9 PANs of a BIN and last
    four, so it is read from a file (``token_key_file``, first) or from the environment
    variable named by ``token_key_env``. See docs/security.md for rotation.
    """

    #: A file holding the key (16-1,024 characters; readable by the switch's user only).
    token_key_file: str | None = None
    #: The environment variable holding the key when no file is named.
    token_key_env: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = (
        "PAYSWITCH_TOKEN_KEY"
    )
    #: Filled in at start from the file or the variable; setting it in a file is refused.
    token_key: str = ""


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
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
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


#: The limits a cluster splits between its workers, by key path: cumulative per card,
#: payer or issuer, and a customer's payments spread over every shard. Besides these,
#: each currency's stand-in ``per_card_max`` and ``per_issuer_max`` (:func:`_standin_paths`).
SPLIT_LIMITS: Final = (
    "risk.velocity.max_count",
    "risk.velocity.max_amount_cny_minor",
)
#: The stand-in limits a cluster splits, per currency.
STANDIN_SPLIT: Final = ("per_card_max", "per_issuer_max")


#: What every stand-in key of :func:`cluster_limits` starts with, the currency after it:
#: the currencies a layout was planned to stand in are those its keys name.
STANDIN_KEY_PREFIX: Final = "standin.limits."


def _standin_paths(standin: StandInConfig) -> dict[str, int]:
    """Each currency's split stand-in limits in minor units, by key path plus ``_minor``
    (``standin.limits.USD.per_card_max_minor``: the value is in minor units)."""
    out: dict[str, int] = {}
    for code, minor in sorted(_standin_minor(standin).items()):
        out[f"{STANDIN_KEY_PREFIX}{code}.per_card_max_minor"] = minor.per_card
        out[f"{STANDIN_KEY_PREFIX}{code}.per_issuer_max_minor"] = minor.per_issuer
    assert len(out) == len(STANDIN_SPLIT) * len(standin.limits)
    assert all(standin_currency(key) in standin.limits for key in out)
    return out


def standin_currency(key: str) -> str | None:
    """The currency a key of :func:`cluster_limits` is a stand-in limit of ("USD" for
    ``standin.limits.USD.per_card_max_minor``); None for any other key."""
    if not key.startswith(STANDIN_KEY_PREFIX):
        return None
    code, dot, _ = key.removeprefix(STANDIN_KEY_PREFIX).partition(".")
    return code if dot and code else None


def _standin_minor(standin: StandInConfig) -> dict[str, MinorLimits]:
    try:
        return standin.minor_limits()
    except ValueError as exc:
        raise ConfigError(f"standin.{exc}") from None


def worker_limits(risk: RiskConfig, standin: StandInConfig, shards: int,
                  split: bool) -> tuple[RiskConfig, StandInConfig]:
    """The risk and stand-in limits one worker of a ``shards``-worker cluster enforces.

    Workers share no state, and a card's or payer's payments land on every shard (keys
    are spread by crc32), so each worker counting against the whole limit let a cluster
    approve up to N times the limit. With ``split``, each enforces ``limit // N`` of
    every limit in :data:`SPLIT_LIMITS`: the workers' sum is at most the limit. The
    price: a customer whose keys happen to concentrate on one shard is declined before
    reaching the configured limit. Per-payment limits, blocklists, the AML threshold,
    the window and the memory bounds (max_keys, queues) stay as configured: they are not
    sums over payments. A share that would be 0 of a limit above 0 would decline every
    such payment, which is never what the operator meant: refused (ConfigError, one
    line). Standalone (``shards`` 0 or 1) or ``split`` off: unchanged.
    """
    if shards <= 1 or not split:
        return risk, standin

    def share(path: str, limit: int, show: Callable[[int], str] = str) -> int:
        part = limit // shards
        if part == 0 and limit > 0:
            raise ConfigError(
                f"{path}: {show(limit)} split over {shards} workers is {show(0)} per worker "
                f"(cluster.split_limits); raise it to at least {show(shards)}, or set "
                f"cluster.split_limits = false (each worker then enforces the whole "
                f"limit, up to {shards} times looser for the cluster)")
        return part

    def share_major(path: str, code: str, limit: int) -> str:
        """``limit`` (``code``'s minor units) split, as a major-unit decimal string."""
        def show(minor: int) -> str:
            return f'"{format_amount(minor, code)}"'
        part = format_amount(share(path, limit, show), code)
        assert part.count(".") <= 1 and limit >= 0, (path, part)
        return part

    count_path, amount_path = SPLIT_LIMITS
    replace = msgspec.structs.replace
    velocity = risk.velocity
    velocity = replace(
        velocity,
        max_count=share(count_path, velocity.max_count),
        max_amount_cny_minor=share(amount_path, velocity.max_amount_cny_minor))
    limits = {}
    for code, minor in _standin_minor(standin).items():
        path = f"{STANDIN_KEY_PREFIX}{code}"
        limits[code] = replace(
            standin.limits[code],
            per_card_max=share_major(f"{path}.per_card_max", code, minor.per_card),
            per_issuer_max=share_major(f"{path}.per_issuer_max", code, minor.per_issuer))
    assert set(limits) == set(standin.limits), "every currency's limits are split"
    return replace(risk, velocity=velocity), replace(standin, limits=limits)


def cluster_limits(cfg: SwitchConfig) -> dict[str, int]:
    """What every worker of a cluster must agree on, by key path: whether the cumulative
    limits are split (``cluster.split_limits``, 1 or 0) and each limit in
    :data:`SPLIT_LIMITS` and each currency's stand-in limits (:func:`_standin_paths`) as
    configured (before the split). A layout planned from this
    config keeps them (``switch.cluster.layout``), so a node started with other limits
    is refused instead of quietly enforcing its own."""
    values = {
        "cluster.split_limits": int(cfg.cluster.split_limits),
        "risk.velocity.max_count": cfg.risk.velocity.max_count,
        "risk.velocity.max_amount_cny_minor": cfg.risk.velocity.max_amount_cny_minor,
        **_standin_paths(cfg.standin),
    }
    assert set(SPLIT_LIMITS) < set(values), "every split limit is compared"
    return values


def check_worker_limits(cfg: SwitchConfig) -> None:
    """Refuse (ConfigError) a cluster config whose split limits would be 0 per worker."""
    worker_limits(cfg.risk, cfg.standin, len(cfg.cluster.shards), cfg.cluster.split_limits)


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
    _standin_minor(cfg.standin)  # known currencies, no more decimals than each has
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
    if cfg.cluster.shards and cfg.cluster.shard >= len(cfg.cluster.shards):
        raise ConfigError(f"cluster.shard: {cfg.cluster.shard} is not a shard of "
                          f"cluster.shards (0..{len(cfg.cluster.shards) - 1})")
    check_worker_limits(cfg)
    if cfg.journal.writer == "loop" and cfg.journal.commit_window_s:
        raise ConfigError('journal.commit_window_s: a commit window needs journal.writer = '
                          '"thread" (the loop commits once per loop step, never waits)')
    for section, names in (("resilience.breakers", cfg.resilience.breakers),
                           ("resilience.admission.overrides", cfg.resilience.admission.overrides)):
        for name in names:
            if name not in serves:
                raise ConfigError(f"{section}.{name}: no network named {name!r}")


def parse_config(text: str, source: str = "<config>") -> SwitchConfig:
    raw = parse_toml(text, source, ConfigError)
    security = raw.get("security")
    if isinstance(security, dict) and "token_key" in security:
        raise ConfigError(
            f"{source}: security.token_key: a key never lives in a config file; put it in "
            "the file named by security.token_key_file or in the environment variable "
            "named by security.token_key_env (default PAYSWITCH_TOKEN_KEY)"
        )
    _check_standin_raw(raw.get("standin"), source)
    cfg = convert(raw, SwitchConfig, source, ConfigError)
    try:
        _check_cross_references(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return cfg


def _check_standin_raw(standin: object, source: str) -> None:
    """Refuse, naming the key and the new form, the stand-in limits of old (raw minor
    units, whatever the currency) and a limit written as a number instead of a string."""
    if not isinstance(standin, dict):
        return
    for old in OLD_KEYS:
        if old in standin:
            raise ConfigError(_old_key_error(f"{source}: standin.{old}", old))
    limits = standin.get("limits")
    if not isinstance(limits, dict):
        return
    fields = StandInLimits.__struct_fields__
    for code, table in limits.items():
        where = f"{source}: standin.limits.{code}"
        for key, value in table.items() if isinstance(table, dict) else ():
            # The key first: "write it as a string" about a key that does not exist
            # (``per_card_max_minor = 100``) sent the operator to a second refusal, and
            # "100" would have been 100 dollars where 100 cents were meant.
            if key in OLD_KEYS:
                raise ConfigError(_old_key_error(f"{where}.{key}", key))
            if key not in fields:
                raise ConfigError(f"{where}.{key}: unknown key (known keys: "
                                  f"{', '.join(fields)})")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ConfigError(
                    f"{where}.{key}: write the amount in major units as a decimal string, "
                    f"e.g. \"{value}\" (a number could lose cents)")
            if isinstance(value, str) and not re.match(MAJOR_AMOUNT_PATTERN, value):
                raise ConfigError(
                    f"{where}.{key}: {value!r} is not an amount in major units: digits, "
                    f"at most 3 decimals, no sign or separators (e.g. \"250.00\")")
        # Converted here, one table at a time: msgspec's own path would say
        # ``standin.limits[...]``, not which currency.
        try:
            msgspec.convert(table, StandInLimits)
        except msgspec.ValidationError as exc:
            described = describe_validation_error(exc, StandInLimits)
            text = str(exc)  # "key: ..." when it names a key in the table
            at_key = " - at `$" in text or text.startswith("Object contains unknown field")
            raise ConfigError(f"{where}{'.' if at_key else ': '}{described}") from None


def _old_key_error(where: str, old: str) -> str:
    """The refusal of a stand-in limit in raw minor units (:data:`OLD_KEYS`), ``where``
    naming it (with the source), whether at ``[standin]`` or in a currency's table."""
    return (f"{where}: raw minor units are not one amount across currencies (20000 is "
            f"200.00 USD but 20000 JPY); state the limit per currency in major units, "
            f"e.g. [standin.limits.USD] {OLD_KEYS[old]} = \"500.00\"")


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


def config_warnings(cfg: SwitchConfig) -> list[str]:
    """Settings that are legal but almost surely not what the operator meant: one line
    each, naming the key path and why. Pure; never an error (a config that loads still
    loads): ``payswitch serve`` logs each as a warning once at start (switch/serve/app.py).

    * A card endpoint's breaker that opens on one failed call or one failed health probe,
      with stand-in on: after one everyday 96 from an issuer that is otherwise answering,
      the switch approves that endpoint's card payments itself for the breaker's open
      period (core.py ``_outcome``: nothing reached, no endpoint up).
    * ``idempotency.retention_s`` below a channel's ``resolution.*.within_s``: a key
      whose payment is still being resolved is forgotten once past retention
      (idempotency.py ``_evict``), and a client's retry with it is booked afresh.
    * ``resolution.*.first_after_s`` not below ``within_s`` (with ``max_attempts`` > 1): a
      live unknown payment is asked once, then handed to an operator (resolver.py
      ``no_answer``); the attempts configured are never made.
    """
    cfg = with_defaults(cfg)  # the stand-in networks serve would add are breakers too
    return [*_standin_breaker_warnings(cfg), *_resolution_warnings(cfg)]


def _standin_breaker_warnings(cfg: SwitchConfig) -> list[str]:
    standin = cfg.standin
    if not (standin.enabled and standin.limits):  # no limits: nothing is ever stood in
        return []
    res = cfg.resilience
    card = [n.name for n in cfg.networks if n.channel == "card"]
    card += [n.name for n in cfg.channel_networks if channel_of(n) == "card"]
    applied: list[tuple[str, BreakerConfig, list[str]]] = []
    if on_default := [name for name in card if name not in res.breakers]:
        applied.append(("resilience.breaker", res.breaker, on_default))
    applied += [(f"resilience.breakers.{name}", res.breakers[name], [name])
                for name in card if name in res.breakers]
    out = []
    for path, breaker, endpoints in applied:
        # The rules of CircuitBreaker._should_open and record_probe that open on one
        # failure whatever the traffic. A count window whose ratio one failure among
        # window_calls calls reaches does so at every fill from min_calls up. (A time
        # window's calls depend on the traffic: one failure trips it only while quiet.)
        trips: list[tuple[str, str]] = []
        if breaker.consecutive_failures == 1:
            trips.append(("consecutive_failures", "= 1: one failed call (an everyday 96)"))
        ratio = breaker.failure_ratio
        if breaker.window == "count" and 1 / breaker.window_calls >= ratio:
            trips.append(("failure_ratio", f"= {ratio:g} with window_calls = "
                          f"{breaker.window_calls}: one failed call in the window"))
        if breaker.probe_failures == 1 and res.probe_interval_s > 0:
            trips.append(("probe_failures", "= 1: one failed health probe (echo)"))
        for key, what in trips:
            out.append(
                f"{path}.{key} {what} opens the breaker of card endpoint(s) "
                f"{', '.join(endpoints)}; with stand-in on (standin.enabled), a target left "
                f"with no endpoint up is then stood in (its card payments approved by the "
                f"switch itself) for the open period (open_s = {breaker.open_s:g} s) while "
                f"its issuer may well be answering")
    return out


def _resolution_warnings(cfg: SwitchConfig) -> list[str]:
    out = []
    retention_s = cfg.idempotency.retention_s
    for channel in CHANNELS:
        policy: ResolutionPolicy = getattr(cfg.resolution, channel)
        path = f"resolution.{channel}"
        if retention_s < policy.within_s:
            out.append(
                f"idempotency.retention_s = {retention_s:g} s is shorter than "
                f"{path}.within_s = {policy.within_s:g} s: the key of a {channel} payment "
                f"whose outcome is unknown can be forgotten while the resolver still "
                f"chases it, and a client's retry with that key is booked as a new payment")
        if policy.max_attempts > 1 and policy.first_after_s >= policy.within_s:
            out.append(
                f"{path}.first_after_s = {policy.first_after_s:g} s is not below "
                f"{path}.within_s = {policy.within_s:g} s: an unknown {channel} payment is "
                f"asked once and, without an answer, handed to an operator; "
                f"{path}.max_attempts = {policy.max_attempts} is never reached")
    return out


def check_free_space(
    cfg: SwitchConfig, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
) -> None:
    """Refuse (ConfigError, one line) when the journal's filesystem is (nearly) full."""
    directory = Path(cfg.journal.path).resolve().parent
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the journal's directory is created at start
    try:
        st = statvfs(str(probe))
    except OSError as exc:
        raise ConfigError(f"journal.path: cannot inspect {probe}: {exc.strerror}") from None
    free_mb = st.f_bavail * st.f_frsize / 2**20
    if free_mb < cfg.journal.min_free_mb:
        raise ConfigError(
            f"journal.path: {directory} has {free_mb:.1f} MiB free, below "
            f"journal.min_free_mb={cfg.journal.min_free_mb}: the journal could not commit "
            "(database or disk is full); free space or move the journal"
        )


def audit_log_path(cfg: SwitchConfig) -> Path:
    """Where the switch's admin audit log goes: configured, or beside the journal."""
    return Path(cfg.admin.auth.audit_log or Path(cfg.journal.path).parent / "admin-audit.jsonl")


def resolve_token_key(
    cfg: SwitchConfig, *, demo: bool = False, environ: Mapping[str, str] | None = None
) -> SwitchConfig:
    """``cfg`` with its token key read from ``security.token_key_file`` or the environment.

    Without either, a switch refuses to start (ConfigError, one line) unless ``demo``:
    then a random key is generated once per work dir, in ``token.key`` beside the journal
    (mode 0600), and reused by later starts of the same work dir.
    """
    sec = cfg.security
    env = os.environ if environ is None else environ
    if sec.token_key_file is not None:
        path = Path(sec.token_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"security.token_key_file: cannot read {path}: {reason}") from None
        source = f"security.token_key_file ({path})"
    elif env.get(sec.token_key_env):
        key = env[sec.token_key_env].strip()
        source = f"${sec.token_key_env}"
    elif demo:
        path = Path(cfg.journal.path).parent / DEMO_KEY_NAME
        key = _demo_key(path)
        source = f"demo key {path}"
    else:
        raise ConfigError(
            f"security: no token key: set ${sec.token_key_env} or security.token_key_file "
            "(or run with --demo for a throwaway key)"
        )
    if not TOKEN_KEY_MIN <= len(key) <= TOKEN_KEY_MAX:
        raise ConfigError(
            f"{source}: the token key must be {TOKEN_KEY_MIN}..{TOKEN_KEY_MAX} characters, "
            f"got {len(key)}"
        )
    return msgspec.structs.replace(cfg, security=msgspec.structs.replace(sec, token_key=key))


def _demo_key(path: Path) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"demo key {path}: cannot read: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"demo key {path}: cannot create: {exc.strerror}") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key
