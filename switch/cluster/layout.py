"""The cluster layout: which worker owns which shard, where it listens, where it journals.

One JSON file (``layout.json``) describes a whole cluster, on one node or several. Each
worker process reads it with ``payswitch serve --cluster layout.json --shard I``: the base
config gives everything else, the layout gives that worker its ports, its journal and the
shard map (every shard's msgpack address, and its HTTP address for the HTTP door's 421),
so every worker, every HAProxy and every client agree on one map. `payswitch serve
--workers N` plans a layout on this node and runs the workers
(switch/cluster/supervisor.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Final

import msgspec

from switch.bounds import Port
from switch.currency import format_amount
from switch.fielderrors import describe_validation_error
from switch.protocols.shardmap import MAX_SHARDS, ShardMap, join_address
from switch.serve.config import (
    ConfigError,
    SwitchConfig,
    check_worker_limits,
    cluster_limits,
    standin_currency,
)

#: A port a worker's always-on doors are known by (Port also admits 0: "pick one").
ListeningPort = Annotated[int, msgspec.Meta(ge=1, le=65535)]
#: Workers one `serve --workers` starts at most (a 2-core box wants 2; a node, its cores).
MAX_LOCAL_WORKERS = 256


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One worker: the shard it owns, its ports (0: door not enabled) and its journal."""

    shard: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SHARDS)]
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    #: The msgpack door and the admin door are always on, on a port of their own: 0 (a
    #: free port chosen at start) would publish an address no other worker could reach.
    port: ListeningPort
    admin_port: ListeningPort
    journal: Annotated[str, msgspec.Meta(min_length=1)]
    http_port: Port = 0
    iso8583_port: Port = 0

    @property
    def address(self) -> str:
        """The msgpack door as the shard map names it (an IPv6 host in brackets)."""
        return join_address(self.host, self.port)

    @property
    def http_address(self) -> str:
        """The HTTP door as ``host:port`` (as HAProxy's config names it), "" when the
        worker has none: what its cluster's 421 `moved` names, not :attr:`address`."""
        return join_address(self.host, self.http_port) if self.http_port else ""

    @property
    def admin_address(self) -> str:
        """The admin door as ``host:port`` (an IPv6 host in brackets, as a URL wants it)."""
        return join_address(self.host, self.admin_port)


class ClusterLayout(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every worker of a cluster, in shard order (worker i owns shard i)."""

    workers: Annotated[list[WorkerSpec], msgspec.Meta(min_length=1, max_length=MAX_SHARDS)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                      pattern=r"\A[A-Za-z0-9_.-]+\Z")] = "payswitch"
    #: The limits every worker must enforce alike, by key path (``cluster_limits``):
    #: written by :func:`plan`, checked by :func:`apply`. Each worker computes its share
    #: from its own config, so a node whose config said otherwise used to enforce its
    #: own limits unnoticed. A layout written by hand may leave it out (no check). Values
    #: stay int (layouts of every version load): the currencies stood in are those its
    #: ``standin.limits.<CUR>.*_minor`` keys name, stand-in amounts in minor units.
    limits: dict[str, int] | None = None

    @property
    def shard_map(self) -> ShardMap:
        return ShardMap([w.address for w in self.workers])

    @property
    def http_addresses(self) -> list[str]:
        """Every shard's HTTP door, in shard order ("" for a shard without one)."""
        return [w.http_address for w in self.workers]

    @property
    def journals(self) -> list[str]:
        return [w.journal for w in self.workers]


#: Where a free port is looked for first (see :func:`free_port`): from here up to the
#: kernel's ephemeral range.
LOW_PORTS_FROM: Final = 20_000
#: Candidates tried there before leaving the choice to the kernel.
LOW_PORT_TRIES: Final = 200
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _binds(family: socket.AddressFamily, host: str, port: int) -> int | None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def free_port(host: str, taken: set[int]) -> int:
    """A port free now for a worker that binds it a second or two later, after its imports;
    added to ``taken``, which it is never one of.

    Below the kernel's ephemeral range first: a port the kernel picked (bind to 0) was
    back in its pool the moment it was closed, and an outgoing connection from any process
    on the host could be given it before the worker bound it. The worker then died with
    "address already in use" and the cluster did not start (seen in a CI run). Below the
    range only another listener choosing that very port can take it. Where that range is
    full, the kernel chooses.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = range(LOW_PORTS_FROM, max(LOW_PORTS_FROM, _ephemeral_start()))
    # From a place that differs between processes, so that two clusters planned at once
    # on one host do not walk the same ports in the same order.
    start = os.getpid() * 7919 % len(low) if low else 0
    for i in range(min(len(low), LOW_PORT_TRIES)):
        port = low[(start + i) % len(low)]
        if port not in taken and _binds(family, host, port) is not None:
            taken.add(port)
            return port
    for _ in range(LOW_PORT_TRIES):
        port = _binds(family, host, 0) or 0
        if port and port not in taken:
            taken.add(port)
            return port
    raise ConfigError(f"{host}: found no free port for a worker")


def plan(config: SwitchConfig, workers: int, directory: str | Path | None = None,
         name: str = "payswitch") -> ClusterLayout:
    """A layout for ``workers`` workers on this node, derived from one switch config.

    Ports: a configured port P becomes P, P+1, ... P+N-1 (refused if two doors' ranges
    overlap); port 0 picks a free port per worker now. Journals: ``shard-<i>/<name of
    journal.path>`` under ``directory`` (default: the journal's own directory).
    """
    if not 1 <= workers <= MAX_LOCAL_WORKERS:
        raise ConfigError(f"--workers: {workers} is outside 1..{MAX_LOCAL_WORKERS}")
    journal = Path(config.journal.path)
    base = Path(directory) if directory is not None else journal.parent
    doors = [("server.port", config.server.host, config.server.port, True),
             ("admin.port", config.admin.host, config.admin.port, True),
             ("http.port", config.http.host, config.http.port, config.http.enabled),
             ("iso8583.port", config.iso8583.host, config.iso8583.port, config.iso8583.enabled)]
    ranges = [(key, port) for key, _, port, used in doors if used and port]
    for i, (key, port) in enumerate(ranges):
        if port + workers - 1 > 65535:
            raise ConfigError(f"{key}: {port}+{workers - 1} workers passes port 65535")
        for other, other_port in ranges[i + 1:]:
            if abs(port - other_port) < workers:
                raise ConfigError(
                    f"{key} = {port} and {other} = {other_port}: with {workers} workers each "
                    f"takes {workers} consecutive ports and the ranges overlap; move one, or "
                    "set it to 0 (free ports)")
    specs: list[WorkerSpec] = []
    taken: set[int] = set()  # closed again at once: the next pick must not find it free
    for shard in range(workers):
        ports = [(0 if not used else port + shard if port else free_port(host, taken))
                 for _, host, port, used in doors]
        specs.append(WorkerSpec(shard=shard, host=config.server.host, port=ports[0],
                                admin_port=ports[1], http_port=ports[2], iso8583_port=ports[3],
                                journal=str(base / f"shard-{shard}" / journal.name)))
    return ClusterLayout(specs, name, limits=cluster_limits(config))


def apply(config: SwitchConfig, layout: ClusterLayout, shard: int) -> SwitchConfig:
    """``config`` as worker ``shard`` of ``layout`` runs it."""
    if not 0 <= shard < len(layout.workers):
        raise ConfigError(f"--shard: {shard} is not a shard of the layout "
                          f"(0..{len(layout.workers) - 1})")
    w = layout.workers[shard]
    if w.shard != shard:
        raise ConfigError(f"layout: workers[{shard}].shard is {w.shard}; workers must be "
                          "listed in shard order")
    _check_same_limits(config, layout)
    r = msgspec.structs.replace
    applied = r(config,
                server=r(config.server, host=w.host, port=w.port),
                admin=r(config.admin, port=w.admin_port, enabled=True),
                http=r(config.http, port=w.http_port, enabled=w.http_port != 0),
                iso8583=r(config.iso8583, port=w.iso8583_port, enabled=w.iso8583_port != 0),
                journal=r(config.journal, path=w.journal),
                # The config's own [cluster] settings (split_limits) hold for every worker.
                # The HTTP door's 421 names the owner's HTTP address, the msgpack door's
                # `moved` its msgpack address: the worker is given both maps.
                cluster=r(config.cluster, shard=shard, shards=layout.shard_map.addresses,
                          http_shards=layout.http_addresses))
    # The shard count is known only now: `serve --workers N` and `--cluster/--shard` apply
    # every worker's layout before starting one, so a limit that splits to 0 stops them
    # there, one line, exit 2.
    check_worker_limits(applied)
    return applied


#: The end of every refusal of a node whose limits are not the layout's.
_SAME_LIMITS: Final = ("every worker of a cluster must enforce the same limits: give every "
                       "node the same config, or plan the layout again (docs/cluster.md)")
#: The stand-in keys of a layout planned before stand-in limits were per currency: raw
#: minor units, one amount whatever the currency (20000: 200.00 USD, 20000 JPY).
OLD_STANDIN_KEYS: Final = ("standin.per_card_max_minor", "standin.per_issuer_max_minor")


def _check_same_limits(config: SwitchConfig, layout: ClusterLayout) -> None:
    """Refuse (ConfigError, one line) a config whose cluster limits are not those the
    layout was planned with: naming the first key that differs, or the currencies stood
    in when a currency has limits on one side only (the currencies a layout stands in are
    those its ``standin.limits.<CUR>.*`` keys name: none if it names none). A layout
    planned before stand-in limits were per currency is refused: plan it again. Keys this
    version does not know are left alone, and so are the config's keys the layout does
    not name, stand-in keys excepted."""
    planned = layout.limits
    if planned is None:
        return
    old = [key for key in OLD_STANDIN_KEYS if key in planned]
    if old:
        raise ConfigError(
            f"cluster layout: limits.{old[0]}: the layout was planned with stand-in limits "
            "in raw minor units, before stand-in limits were per currency, and cannot say "
            "what this config's per-currency limits should be; plan the layout again "
            "(payswitch serve --config <config> --workers N writes layout.json under "
            "--cluster-dir; docs/cluster.md)")
    mine = cluster_limits(config)
    for key, value in mine.items():
        was = planned.get(key)
        if standin_currency(key) is None and was is not None and was != value:
            raise ConfigError(f"{key}: {_shown(key, value)} in this config, but the cluster "
                              f"layout was planned with {_shown(key, was)}; {_SAME_LIMITS}")
    codes, planned_codes = _currencies(mine), _currencies(planned)
    if codes != planned_codes:
        raise ConfigError(f"standin.limits: this config stands in {_listed(codes)}, but the "
                          f"cluster layout was planned to stand in {_listed(planned_codes)}; "
                          f"{_SAME_LIMITS}")
    for key, value in mine.items():
        code = standin_currency(key)
        if code is None or planned.get(key) == value:
            continue
        was = planned.get(key)
        where = key.removesuffix("_minor")  # the config's key; the value in major units
        assert where != key and code in codes, key
        planned_text = ("without it" if was is None
                        else f"with {format_amount(was, code)}")
        raise ConfigError(f"{where}: {format_amount(value, code)} in this config, but the "
                          f"cluster layout was planned {planned_text}; {_SAME_LIMITS}")


def _currencies(limits: dict[str, int]) -> set[str]:
    """The currencies stood in that a :func:`cluster_limits` mapping names."""
    return {code for key in limits if (code := standin_currency(key)) is not None}


def _listed(codes: set[str]) -> str:
    return ", ".join(sorted(codes)) or "no currency"


def _shown(key: str, value: int) -> str:
    return str(bool(value)).lower() if key == "cluster.split_limits" else str(value)


def load_layout(path: str | Path) -> ClusterLayout:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster layout: {exc.strerror}") from None
    try:
        layout = msgspec.json.decode(data, type=ClusterLayout)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc, ClusterLayout)}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not a cluster layout (JSON): {exc}") from None
    for i, w in enumerate(layout.workers):
        if w.shard != i:
            raise ConfigError(f"{path}: workers[{i}].shard is {w.shard}; workers must be "
                              "listed in shard order")
    return layout


def save_layout(layout: ClusterLayout, path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(layout)) + b"\n")
    tmp.replace(target)
