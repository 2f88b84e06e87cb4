"""The ``payswitch`` command line.

Each subcommand is a thin shell over a module that does the work, so everything the CLI
can do is also callable (and tested) from Python.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import click
from rich.console import Console

from switch.cli.backoffice import reconcile, settle
from switch.cli.cluster import cluster
from switch.cli.errors import OneLineUsageGroup, UserError, one_line, require_utf8
from switch.cli.fault import fault
from switch.cli.load import load
from switch.cli.report import report
from switch.cli.simulate import simulate

if TYPE_CHECKING:
    from switch.serve.config import SwitchConfig

# The switch's configuration, and with it most of the switch, is imported by the commands
# that start one: half a second that `payswitch --help` and every other command need not pay.


@click.group(cls=OneLineUsageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="payswitch", prog_name="payswitch")
def main() -> None:
    """payswitch: a payment switch simulator and load-test harness.

    Routes card (ISO 8583), SWIFT (ISO 20022) and QR (EMVCo) payments to simulated
    networks, journals every step durably, and never loses or double-books money.

    Start with `payswitch demo`.
    """


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Switch configuration (TOML). Defaults apply to every key left out.",
)
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default=None,
    help="Event loop: asyncio with uvloop (fast default) or trio.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write {host, port, admin_port, pid} as JSON here once ready to serve.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="json",
    show_default=True,
    type=click.Choice(["json", "text"]),
    help="JSON lines (with payment_id fields) or plain text; card numbers masked in both.",
)
@click.option(
    "--demo",
    is_flag=True,
    default=False,
    help="A throwaway setup: without a configured token key, generate a random one in "
    "token.key beside the journal (kept for that work dir).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Run N switch processes, one per shard of the idempotency key space, each with "
    "its own ports (configured port + i, or free ports for 0) and journal "
    "(shard-<i>/ under --cluster-dir); restart any that exits. See docs/cluster.md.",
)
@click.option(
    "--cluster-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --workers: where the layout, Prometheus targets, logs and shard journals "
    "go [default: the journal's directory].",
)
@click.option(
    "--restart-delay",
    type=click.FloatRange(0, 600),
    default=1.0,
    show_default=True,
    help="With --workers: seconds before a worker that exited is started again.",
)
@click.option(
    "--cluster",
    "layout_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Run one worker of the cluster this layout (JSON) describes; needs --shard.",
)
@click.option("--shard", "shards", type=click.IntRange(0, 1023), multiple=True,
              help="With --cluster: the shard this worker owns. Repeated: supervise this "
              "node's workers of a layout spread over several nodes (one per shard).")
def serve(
    config_path: str | None,
    backend: str | None,
    ready_file: str | None,
    log_level: str,
    log_format: str,
    demo: bool,
    workers: int | None,
    cluster_dir: str | None,
    restart_delay: float,
    layout_path: str | None,
    shards: tuple[int, ...],
) -> None:
    """Run the switch until SIGTERM or SIGINT, then drain and flush the journal.

    Payments are served on [server] host:port; /metrics, /healthz and /readyz on
    [admin] host:port. The token key comes from $PAYSWITCH_TOKEN_KEY or
    [security] token_key_file; without one, serve refuses to start unless --demo.

    With --workers N, N worker processes share the key space by shard (docs/cluster.md);
    put HAProxy in front of their HTTP doors with `payswitch cluster haproxy-config`.
    """
    from switch.adapters.trace import TraceStoreError
    from switch.observability import logs
    from switch.serve.config import (
        ConfigError,
        SwitchConfig,
        check_free_space,
        load_config,
        resolve_token_key,
        with_defaults,
    )
    from switch.serve.http import AdminAuthError, load_tokens

    logs.configure(log_level, log_format)
    if (layout_path is None) != (not shards):
        raise click.UsageError("--cluster and --shard go together")
    if workers is not None and layout_path is not None:
        raise click.UsageError("--workers starts a whole cluster; --cluster/--shard run one "
                               "worker of a layout: choose one")
    if workers is None and (cluster_dir is not None):
        raise click.UsageError("--cluster-dir: only with --workers")
    if config_path:
        require_utf8(config_path, "--config")
    # Where the doors' ports (and the msgpack door's host) come from with --cluster: the
    # layout, not the config; errors name it.
    origin = (layout_path, shards[0]) if layout_path is not None else None
    try:
        config = load_config(config_path) if config_path else with_defaults(SwitchConfig())
        if layout_path is not None and len(shards) > 1:
            sys.exit(_serve_node(config, config_path, layout_path, shards, restart_delay,
                                 ready_file, backend, log_level, log_format, demo))
        if layout_path is not None:
            from switch.cluster.layout import apply, load_layout

            config = apply(config, load_layout(layout_path), shards[0])
            if demo:
                # A lone worker of a layout made a throwaway key of its own beside its
                # journal: its PAN tokens and body hashes agreed with no other worker's.
                raise ConfigError(_DEMO_IN_A_CLUSTER.format(env=config.security.token_key_env))
        if workers is not None:
            sys.exit(_serve_cluster(config, config_path, workers, cluster_dir, restart_delay,
                                    ready_file, backend, log_level, log_format, demo))
        config = resolve_token_key(config, demo=demo)
        load_tokens(config.admin.auth)  # an unreadable token file stops start-up here
        check_free_space(config)
    except (ConfigError, AdminAuthError) as exc:
        raise UserError(str(exc)) from None
    chosen = backend or config.server.backend
    _refuse_unusable_hosts(config_path, config, origin)
    _refuse_busy_ports(config_path, config, layout=origin)
    from switch.serve.app import SwitchApp

    app = SwitchApp(config)

    async def main_task() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        logging.getLogger("switch").info("shutdown requested: draining")
                        app.request_shutdown()
                        return

            tg.start_soon(on_signal)
            await app.run(ready_file=ready_file)
            tg.cancel_scope.cancel()

    options = {"use_uvloop": True} if chosen == "asyncio" else {}
    from switch.journal.store import GIL_SWITCH_INTERVAL_S

    # The journal's commit thread must get the GIL back quickly while the loop is busy.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        anyio.run(main_task, backend=chosen, backend_options=options)
    except BaseException as exc:
        from channels.__main__ import address_in_use

        if isinstance(exc, Exception) and address_in_use(exc):
            _refuse_busy_ports(config_path, config, always=True, layout=origin)
        mistake = _found_in(exc, (ConfigError, TraceStoreError))
        if mistake is not None:
            # A file of the user's that start-up cannot use (a damaged trace-number
            # sidecar, a route table): one line naming it, as before the loop started.
            raise UserError(str(mistake)) from None
        cause = _storage_failure(exc)
        if cause is None:
            raise
        # Fail-stop on the journal's storage (disk full, I/O error): one line with the
        # real cause and the file, then leave at once. Leftover threads (a commit stuck
        # in SQLite) must not keep a half-dead process around with its admin port closed.
        journal = config.journal.path
        logging.getLogger("switch").critical("fail-stop: journal storage failed: %s: %s",
                                             journal, cause)
        click.echo(f"Error: fail-stop: journal storage failed: {journal}: {cause}", err=True)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)


_DEMO_IN_A_CLUSTER: Final = (
    "--demo: the nodes of one cluster must share one token key (PAN tokens and body hashes "
    "agree across journals): set ${env} or security.token_key_file")


def _serve_node(config: SwitchConfig, config_path: str | None, layout_path: str,
                shards: tuple[int, ...], restart_delay: float, ready_file: str | None,
                backend: str | None, log_level: str, log_format: str, demo: bool) -> int:
    """``serve --cluster layout.json --shard I --shard J ...``: this node's workers of a
    layout shared by several nodes, supervised like ``--workers``."""
    from pathlib import Path

    from switch.cluster.layout import apply, load_layout
    from switch.cluster.supervisor import Supervisor, run
    from switch.serve.config import ConfigError, resolve_token_key
    from switch.serve.http import load_tokens

    if demo:
        raise ConfigError(_DEMO_IN_A_CLUSTER.format(env=config.security.token_key_env))
    layout = load_layout(layout_path)
    if len(set(shards)) != len(shards):
        raise ConfigError("--shard: a shard is named twice")
    for shard in shards:
        apply(config, layout, shard)  # refuses a shard outside the layout
    config = resolve_token_key(config, demo=demo)
    load_tokens(config.admin.auth)
    env = dict(os.environ)
    if config.security.token_key_file is None:
        env[config.security.token_key_env] = config.security.token_key
    run_dir = Path(layout_path).resolve().parent
    args = ["--log-level", log_level, "--log-format", log_format]
    if backend:
        args += ["--backend", backend]
    supervisor = Supervisor(layout, run_dir, config_path=config_path, serve_args=args, env=env,
                            restart_delay_s=restart_delay, shards=shards,
                            layout_path=layout_path)
    return run(supervisor, ready_file=ready_file)


def _serve_cluster(config: SwitchConfig, config_path: str | None, workers: int,
                   cluster_dir: str | None, restart_delay: float, ready_file: str | None,
                   backend: str | None, log_level: str, log_format: str, demo: bool) -> int:
    """``serve --workers N``: plan the layout, supervise the workers (switch/cluster)."""
    from pathlib import Path

    from switch.cluster.layout import apply, plan
    from switch.cluster.supervisor import Supervisor, run
    from switch.serve.config import check_free_space, resolve_token_key
    from switch.serve.http import load_tokens

    config = resolve_token_key(config, demo=demo)
    load_tokens(config.admin.auth)
    check_free_space(config)
    layout = plan(config, workers, cluster_dir)
    for w in layout.workers:
        _refuse_busy_ports(config_path, apply(config, layout, w.shard), planned=(config, w.shard))
    env = dict(os.environ)
    if config.security.token_key_file is None:
        # One key for every shard: PAN tokens and body hashes agree across journals.
        env[config.security.token_key_env] = config.security.token_key
    run_dir = Path(cluster_dir) if cluster_dir else Path(config.journal.path).parent
    args = ["--log-level", log_level, "--log-format", log_format]
    if backend:
        args += ["--backend", backend]
    supervisor = Supervisor(layout, run_dir, config_path=config_path, serve_args=args, env=env,
                            restart_delay_s=restart_delay)
    return run(supervisor, ready_file=ready_file)


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _storage_failure(exc: BaseException) -> BaseException | None:
    """The SQLite or OS error inside ``exc`` (an exception group, a chain), if any."""
    import sqlite3

    return _found(exc, lambda e: isinstance(e, sqlite3.Error) or (
        isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS))


def _found_in(exc: BaseException, kinds: tuple[type[BaseException], ...]
              ) -> BaseException | None:
    """An exception of ``kinds`` inside ``exc`` (an exception group, a chain), if any."""
    return _found(exc, lambda e: isinstance(e, kinds))


def _found(exc: BaseException, wanted: Callable[[BaseException], bool]
           ) -> BaseException | None:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if wanted(current):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return None


def _doors(config: SwitchConfig) -> list[tuple[str, str, int, bool]]:
    """(key, host, port, enabled) of every listening door."""
    return [("server", config.server.host, config.server.port, True),
            ("admin", config.admin.host, config.admin.port, config.admin.enabled),
            ("iso8583", config.iso8583.host, config.iso8583.port, config.iso8583.enabled),
            ("http", config.http.host, config.http.port, config.http.enabled)]


#: The layout's field for each door's port (``serve --cluster``: the layout's ports).
_LAYOUT_PORT = {"server": "port", "admin": "admin_port", "http": "http_port",
                "iso8583": "iso8583_port"}


def _host_key(config_path: str | None, key: str, layout: tuple[str, int] | None) -> str:
    """``file: key`` of a door's host: the layout's worker for the msgpack door with
    ``--cluster``, else the config."""
    if layout is not None and key == "server":
        return f"{layout[0]}: workers[{layout[1]}].host"
    return f"{config_path or 'default config'}: {key}.host"


def _refuse_unusable_hosts(config_path: str | None, config: SwitchConfig,
                           layout: tuple[str, int] | None = None) -> None:
    """Stop with one line naming a door's host that does not resolve or is no address of
    this machine (start-up would fail on it with a traceback; with a fixed port, the
    busy-port check would call it "already in use"). ``layout``: (layout file, shard) of
    ``serve --cluster``."""
    import socket

    for key, host, _port, used in _doors(config):
        if not used:
            continue
        try:
            infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            raise UserError(f"{_host_key(config_path, key, layout)} = {host!r}: "
                            f"cannot resolve it ({why}); use an address of this machine, "
                            "e.g. 127.0.0.1 or 0.0.0.0") from None
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind((address[0], 0, *address[2:]))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    continue  # anything else is the busy-port check's or start-up's
                raise UserError(f"{_host_key(config_path, key, layout)} = {host!r}: "
                                f"{exc.strerror}: not an address of this machine; use one "
                                "of its addresses, e.g. 127.0.0.1 or 0.0.0.0") from None


def _refuse_busy_ports(config_path: str | None, config: SwitchConfig, always: bool = False,
                       layout: tuple[str, int] | None = None,
                       planned: tuple[SwitchConfig, int] | None = None) -> None:
    """Stop with one line naming each port something else already holds, where the user
    set it: ``layout`` (layout file, shard) of ``serve --cluster``, whose ports are the
    layout's; ``planned`` (the config, worker) of ``serve --workers``, whose ports are the
    config's plus the worker's number."""
    from channels.__main__ import port_free

    busy = []
    for key, host, port, used in _doors(config):
        if not used or not port or port_free(host, port):
            continue
        if layout is not None:
            name = f"workers[{layout[1]}].{_LAYOUT_PORT[key]} = {port}"
        elif planned is not None:
            base, worker = planned
            name = f"{key}.port = {getattr(base, key).port} (worker {worker}: {port})"
        else:
            name = f"{key}.port = {port}"
        busy.append(f"{name} on {host}")
    if busy or always:
        where = layout[0] if layout is not None else config_path or "default config"
        fix = ("give the worker a free port in the layout" if layout is not None
               else "set the port to a free one (0 picks one)")
        raise UserError(
            f"{where}: {', '.join(busy) or 'a configured port'}: address already in use; "
            f"stop the process holding it (another `payswitch serve`?) or {fix}"
        )


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(1, 3600),
    default=None,
    help="Seconds of load [default: 15; with --scenario, the scenario's].",
)
@click.option(
    "--rate",
    type=click.FloatRange(1, 200_000),
    default=None,
    help="Offered payments per second (open loop). Default: calibrated on this machine by "
    "a short ramp (half the highest rate it serves healthily); with --scenario, the "
    "scenario's.",
)
@click.option("--connections", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="The switch's event loop.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to keep the journal, config and settlement files (default: a new temp "
    "dir). An earlier run's journal and files there are replaced; one demo at a time.",
)
@click.option(
    "--networks",
    type=click.Choice(["sim", "standin"]),
    default="sim",
    show_default=True,
    help="sim: the card/SWIFT/QR simulators as their own process, over TCP; "
    "standin: in-process stand-ins (no sockets).",
)
@click.option(
    "--discrepancies",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of settlement records the simulators plant wrong, for reconciliation.",
)
@click.option(
    "--scenario",
    "scenario_name",
    default=None,
    help="Run a scenario from loadtests/scenarios instead, e.g. primary-outage "
    "(card-primary-outage.toml).",
)
def demo(
    duration: float | None,
    rate: float | None,
    connections: int,
    seed: int,
    backend: str,
    workdir: str | None,
    networks: str,
    discrepancies: float,
    scenario_name: str | None,
) -> None:
    """Start a switch with its networks, drive an open-loop load, audit the journal.

    With the simulators (default), inject a fault from another terminal while it runs,
    e.g. `payswitch fault card-primary blackhole --for 10s`: the live view and the summary
    show it. Ends with a summary: accepted/approved/declined/failed counts per channel,
    `lost` (acknowledged payments missing from the journal) and `duplicates` (booked
    twice), both measured from the journal on disk, plus throughput and p50/p99/p99.9.

    Without --rate, a short calibration ramp picks the rate (half the highest rate this
    machine serves healthily just now) and says why. Ctrl-C stops the load, then the demo
    in order (drain, journal flush, audit, partial summary, work dir) with exit code 130.
    """
    console = Console(soft_wrap=True)  # summary lines stay whole when piped to a file
    if scenario_name is not None:
        from loadtests.harness.scenario import ROOT, run_scenario

        library = ROOT / "loadtests" / "scenarios"
        path = library / f"{scenario_name}.toml"
        if not path.exists():
            path = library / f"card-{scenario_name}.toml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in library.glob("*.toml")))
            raise click.BadParameter(f"no scenario {scenario_name!r} in loadtests/scenarios "
                                     f"(known: {known})", param_hint="--scenario")
        ignored = [name for name, value in (("--networks", networks != "sim"),
                                            ("--discrepancies", discrepancies > 0),
                                            ("--workdir", workdir is not None)) if value]
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)}: not used with --scenario (the "
                                   "scenario file says what runs; --duration and --rate "
                                   "override it)")
        sys.exit(run_scenario(path, console, duration_s=duration, rate=rate))
    from loadtests.harness.demo import run_demo

    sys.exit(
        run_demo(
            duration if duration is not None else 15.0, rate, connections, seed, backend,
            workdir, console, networks, discrepancies,
        )
    )


@main.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    help="A switch's admin /metrics URL [default: http://127.0.0.1:7180/metrics]; repeat "
    "it for the workers of a cluster.",
)
@click.option(
    "--cluster",
    "layout_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A cluster's layout.json (from `serve --workers N`): every worker's /metrics.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between scrapes; rates are over this interval.",
)
@click.option("--once", is_flag=True, help="Print one frame (two scrapes) and exit.")
def top(urls: tuple[str, ...], layout_path: str | None, interval: float, once: bool) -> None:
    """Live terminal view of a running switch: TPS, latency, networks, rejections.

    Reads the switch's /metrics, so it works wherever Prometheus would. For a cluster, it
    adds the workers up and breaks each one out (shard, ready or DOWN, payments/s, p99).
    """
    import time

    import httpx
    from rich.live import Live
    from rich.text import Text

    from loadtests.harness.top import Scrape, render, render_cluster, scrape

    targets = list(urls)
    for url in targets:
        _check_metrics_url(url)
    if layout_path is not None:
        from switch.cluster.layout import load_layout
        from switch.serve.config import ConfigError

        try:
            layout = load_layout(layout_path)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        targets += [f"http://{w.admin_address}/metrics" for w in layout.workers]
    if not targets:
        targets = ["http://127.0.0.1:7180/metrics"]

    def read(url: str) -> Scrape:
        """One scrape, or ``_Unreadable`` saying why (down, an error status, not metrics)."""
        try:
            return scrape(url, client)
        except httpx.HTTPStatusError as exc:
            answer = exc.response
            raise _Unreadable(f"cannot read {url}: HTTP {answer.status_code} "
                              f"{answer.reason_phrase}") from None
        except httpx.HTTPError as exc:
            raise _Unreadable(f"cannot read {url}: {exc}") from None
        except ValueError as exc:  # the page is not Prometheus' text format
            raise _Unreadable(f"{url}: not Prometheus metrics ({exc}); is it a switch's "
                              "admin /metrics URL?") from None

    def read_all() -> list[Scrape | None]:
        out: list[Scrape | None] = []
        for url in targets:
            try:
                out.append(read(url))
            except _Unreadable:
                out.append(None)
        return out

    def raise_for_status(response: httpx.Response) -> None:
        response.raise_for_status()  # a 404 page is no metrics: an error, not a parse

    console = Console()
    with httpx.Client(event_hooks={"response": [raise_for_status]}) as client:
        if len(targets) > 1:
            previous_all = read_all()
            if all(s is None for s in previous_all):
                raise click.ClickException(f"cannot read any of {', '.join(targets)}")

            def frame_all() -> Any:
                nonlocal previous_all
                current = read_all()
                # A worker restarted between the scrapes has counters back near 0: leave
                # it out of this frame's rates (shown DOWN) instead of negative rates.
                before = [None if n is not None and o is not None and counters_reset(n, o)
                          else o for n, o in zip(current, previous_all, strict=True)]
                view = render_cluster(current, before, targets)
                previous_all = current
                return view

            if once:
                time.sleep(interval)
                console.print(frame_all())
                return
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    live.update(frame_all())
        url = targets[0]
        try:
            first = read(url)
        except _Unreadable as exc:
            raise click.ClickException(one_line(str(exc))) from None
        if once:
            time.sleep(interval)
            try:
                current = read(url)
                if counters_reset(current, first):  # restarted: rates from a new pair
                    first = current
                    time.sleep(interval)
                    current = read(url)
            except _Unreadable as exc:
                raise click.ClickException(one_line(str(exc))) from None
            console.print(render(current, first))
            return
        previous: Scrape | None = first
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                try:
                    current = read(url)
                except _Unreadable as exc:
                    # The switch went away (restart, crash): say so and keep trying.
                    live.update(Text(f"{exc}; retrying every {interval:g} s"))
                    previous = None
                    continue
                if previous is not None and counters_reset(current, previous):
                    live.update(Text(f"{url}: the switch restarted (counters reset); "
                                     "rates resume at the next scrape"))
                elif previous is not None:
                    live.update(render(current, previous))
                previous = current


def counters_reset(new: Any, old: Any) -> bool:
    """True if a counter went down between two scrapes of one process: it restarted, and
    deltas would be negative rates (PromQL's ``rate()`` treats this as a reset too)."""
    for name, series in new.samples.items():
        if not name.endswith(("_total", "_count", "_bucket")):
            continue
        before = old.samples.get(name, {})
        if any(value < before.get(labels, 0.0) for labels, value in series.items()):
            return True
    return False


class _Unreadable(Exception):
    """A /metrics URL that gave no metrics this time; the message says why."""


def _check_metrics_url(url: str) -> None:
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise click.BadParameter(f"{url!r}: not a URL ({exc})", param_hint="--url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(f"{url!r}: expected an http(s) URL such as "
                                 "http://127.0.0.1:7180/metrics", param_hint="--url")


@main.group()
def channels() -> None:
    """The simulated card (ISO 8583), SWIFT (ISO 20022) and QR (EMVCo) networks."""


@channels.command("serve")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Channels configuration (TOML), e.g. examples/channels.toml.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write each network's bound port (and the admin port) here as JSON.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def channels_serve(config_path: str, ready_file: str | None, log_level: str) -> None:
    """Run every simulated network in the config, each on its own port, until SIGTERM.

    Faults are scheduled in the config or injected at runtime with `payswitch fault`.
    """
    from channels.__main__ import main as channels_main

    require_utf8(config_path, "--config")
    sys.exit(
        channels_main(
            [
                "serve",
                "--config",
                config_path,
                "--log-level",
                log_level,
                *(["--ready-file", ready_file] if ready_file else []),
            ]
        )
    )


@main.group()
def scenario() -> None:
    """Fault scenarios with SLO assertions and a pass/fail verdict."""


@scenario.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", "out_base", default="reports", show_default=True,
              help="Reports go to OUT/<timestamp>-<name>/.")
def scenario_run(file: str, out_base: str) -> None:
    """Run a scenario: simulators, switch, load, fault timeline, then the verdict.

    Exit 0 only if every assertion passed; 1 if any failed (the table says which);
    2 if the scenario file is invalid (the message names the key path).
    """
    from loadtests.harness.scenario import run_scenario

    require_utf8(file, "FILE")
    sys.exit(run_scenario(file, Console(soft_wrap=True), out_base))


@scenario.command("list")
def scenario_list() -> None:
    """The scenario library in loadtests/scenarios/, one line each."""
    import tomllib

    from loadtests.harness.scenario import ROOT

    for path in sorted((ROOT / "loadtests" / "scenarios").glob("*.toml")):
        data = tomllib.loads(path.read_text())
        click.echo(f"{path.relative_to(ROOT)}: {data.get('description', '')}")


main.add_command(fault)
main.add_command(cluster)
main.add_command(reconcile)
main.add_command(settle)
main.add_command(load)
main.add_command(report)
main.add_command(simulate)

if __name__ == "__main__":
    main()
