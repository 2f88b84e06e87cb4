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
from typing import TYPE_CHECKING, cast

import anyio
import click
from rich.console import Console

from switch.cli.errors import UserError
from switch.cli.fault import fault
from switch.cli.load import load
from switch.cli.report import report
from switch.serve.config import (
    ConfigError,
    SwitchConfig,
    check_free_space,
    load_config,
    resolve_token_key,
    with_defaults,
)
from switch.serve.http import AdminAuthError, load_tokens

if TYPE_CHECKING:
    from switch.backoffice.recon.reconcile import Progress


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def serve(
    config_path: str | None,
    backend: str | None,
    ready_file: str | None,
    log_level: str,
    log_format: str,
    demo: bool,
) -> None:
    """Run the switch until SIGTERM or SIGINT, then drain and flush the journal.

    Payments are served on [server] host:port; /metrics, /healthz and /readyz on
    [admin] host:port. The token key comes from $PAYSWITCH_TOKEN_KEY or
    [security] token_key_file; without one, serve refuses to start unless --demo.
    """
    from switch.observability import logs

    logs.configure(log_level, log_format)
    try:
        config = load_config(config_path) if config_path else with_defaults(SwitchConfig())
        config = resolve_token_key(config, demo=demo)
        load_tokens(config.admin.auth)  # an unreadable token file stops start-up here
        check_free_space(config)
    except (ConfigError, AdminAuthError) as exc:
        raise UserError(str(exc)) from None
    chosen = backend or config.server.backend
    _refuse_busy_ports(config_path, config)
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
    try:
        anyio.run(main_task, backend=chosen, backend_options=options)
    except BaseException as exc:
        from channels.__main__ import address_in_use

        if isinstance(exc, Exception) and address_in_use(exc):
            _refuse_busy_ports(config_path, config, always=True)
        cause = _storage_failure(exc)
        if cause is None:
            raise
        # Fail-stop on the journal's storage (disk full, I/O error): one line with the
        # real cause, then leave at once. Leftover threads (a commit stuck in SQLite)
        # must not keep a half-dead process around with its admin port already closed.
        logging.getLogger("switch").critical("fail-stop: journal storage failed: %s", cause)
        click.echo(f"payswitch serve: fail-stop: journal storage failed: {cause}", err=True)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _storage_failure(exc: BaseException) -> BaseException | None:
    """The SQLite or OS error inside ``exc`` (an exception group, a chain), if any."""
    import sqlite3

    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) or (
            isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS
        ):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return None


def _refuse_busy_ports(config_path: str | None, config: SwitchConfig, always: bool = False) -> None:
    """Stop with one line naming each configured port something else already holds."""
    from channels.__main__ import port_free

    wanted = [("server.port", config.server.host, config.server.port, True),
              ("admin.port", config.admin.host, config.admin.port, config.admin.enabled),
              ("iso8583.port", config.iso8583.host, config.iso8583.port, config.iso8583.enabled),
              ("http.port", config.http.host, config.http.port, config.http.enabled)]
    busy = [f"{key} = {port} on {host}" for key, host, port, used in wanted
            if used and port and not port_free(host, port)]
    if busy or always:
        raise UserError(
            f"{config_path or 'default config'}: {', '.join(busy) or 'a configured port'}: "
            "address already in use; stop the process holding it (another `payswitch serve`?) "
            "or set the port to a free one (0 picks one)"
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
    help="Where to keep the journal and config (default: a new temp dir).",
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
    default="http://127.0.0.1:7180/metrics",
    show_default=True,
    help="The switch's admin /metrics URL.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between scrapes; rates are over this interval.",
)
@click.option("--once", is_flag=True, help="Print one frame (two scrapes) and exit.")
def top(url: str, interval: float, once: bool) -> None:
    """Live terminal view of a running switch: TPS, latency, networks, rejections.

    Reads the switch's /metrics, so it works wherever Prometheus would.
    """
    import time

    import httpx
    from rich.live import Live

    from loadtests.harness.top import render, scrape

    console = Console()
    with httpx.Client() as client:
        try:
            previous = scrape(url, client)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot read {url}: {exc}") from None
        if once:
            time.sleep(interval)
            console.print(render(scrape(url, client), previous))
            return
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                current = scrape(url, client)
                live.update(render(current, previous))
                previous = current


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


@main.command()
@click.option(
    "--journal",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The switch's journal (SQLite).",
)
@click.option(
    "--files",
    "files_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Directory of settlement files (.clr, .xml, .csv).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write breaks.csv, summary.json, summary.html (default: <files>/recon).",
)
@click.option(
    "--tol-amount",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Amount tolerance (minor units) for the second, tolerance pass.",
)
@click.option(
    "--tol-time",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Time window (seconds) for the tolerance pass.",
)
@click.option(
    "--late-after",
    type=click.FloatRange(0),
    default=86400.0,
    show_default=True,
    help="A match settled more than this many seconds after approval is late.",
)
def reconcile(
    journal: str,
    files_dir: str,
    out_dir: str | None,
    tol_amount: int,
    tol_time: float,
    late_after: float,
) -> None:
    """Reconcile the journal against the networks' settlement files.

    Exact match on each channel's reference (RRN, UETR, QR reference), then a tolerance
    pass on amount and time; every break is classified with both sides and a suggested
    action. Exit 0 when clean, 1 with unexplained breaks, 2 when an input is unusable
    (the message names the file, line and field) or there is nothing to reconcile.
    """
    from pathlib import Path

    from switch.backoffice.recon.reconcile import run
    from switch.protocols.settlement_files import SettlementFileError

    check_journal(journal)
    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        with _ReconProgress(err) as progress:
            report, paths = run(
                Path(journal), Path(files_dir),
                Path(out_dir) if out_dir else Path(files_dir) / "recon",
                tol_amount=tol_amount, tol_time_us=int(tol_time * 1e6),
                late_after_s=late_after, progress=cast("Progress", progress))
    except SettlementFileError as exc:
        raise UserError(str(exc)) from None
    console.print(
        f"switch records: {report.switch_records:,}, network records: "
        f"{report.network_records:,}", highlight=False)
    for kind, count in sorted(report.counts.items()):
        console.print(f"  {kind}: {count:,}", highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if report.unexplained == 0:
        explained = len(report.breaks)
        console.print("reconciliation clean" + (
            f" ({explained} explained breaks: stand-in exposure or late settlement, "
            "listed in breaks.csv)" if explained else ""))
    else:
        console.print(f"[red]{report.unexplained:,} unexplained breaks[/] (largest first):")
        for b in report.breaks[:20]:
            side = b.switch or b.network
            assert side is not None
            console.print(
                f"  {b.kind}: {side.channel} {side.reference} {side.amount} {side.currency}",
                highlight=False,
            )
    figures = ", ".join(f"{name} {f['wall_s']:.2f} s" for name, f in report.phases.items())
    console.print(f"phases: {figures}", highlight=False)
    console.print(f"outputs: {paths['csv']}, {paths['json']}, {paths['html']}")
    sys.exit(0 if report.unexplained == 0 else 1)


class _ReconProgress:
    """A rich progress bar per phase, drawn only when stderr is a terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: object | None = None
        self._task: object | None = None

    def __enter__(self) -> _ReconProgress:
        if self._console.is_terminal:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            bar = Progress(SpinnerColumn(), TextColumn("{task.description:<13}"), BarColumn(),
                           TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(),
                           console=self._console, transient=True)
            bar.start()
            self._bar = bar
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]

    def start(self, phase: str, total: float | None) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(phase, total=total)  # type: ignore[attr-defined]

    def advance(self, amount: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)  # type: ignore[attr-defined]

    def done(self) -> None:
        if self._bar is not None and self._task is not None:
            task = self._task
            self._bar.update(task, completed=self._bar.tasks[-1].total or 1,  # type: ignore[attr-defined]
                             total=self._bar.tasks[-1].total or 1)  # type: ignore[attr-defined]
            self._task = None


@main.command()
@click.option(
    "--journal",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The switch's journal (SQLite); the ledger lives in the same database.",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    metavar="[CHANNEL:]CCY=net|gross",
    help="Settlement per currency, or per channel and currency (qr:CNY=gross); "
    "default CNY=net, USD=gross, others net.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the settlement report here as JSON.",
)
@click.option("--json", "as_json", is_flag=True,
              help="Print the positions as JSON (amounts in major units and minor units).")
def settle(journal: str, modes: tuple[str, ...], out_file: str | None, as_json: bool) -> None:
    """Close a clearing cycle: post the ledger from the journal, capture card holds,
    and print each participant's settlement position (net) or instructions (gross)."""
    import json
    import sqlite3
    import time
    from pathlib import Path

    import msgspec

    from switch.backoffice.ledger import (
        Mode,
        check_invariants,
        format_major,
        positions_by_currency,
        post_from_journal,
    )
    from switch.backoffice.ledger import settle as close_cycle

    chosen: dict[str, Mode] = {}
    for item in modes:
        key, _, mode = item.partition("=")
        channel, _, currency = key.rpartition(":")
        if mode not in ("net", "gross") or len(currency) != 3 or channel not in (
            "", "card", "swift", "qr"
        ):
            raise click.BadParameter(
                f"{item!r}: expected [channel:]CCY=net or =gross", param_hint="--mode"
            )
        chosen[f"{channel}:{currency.upper()}" if channel else currency.upper()] = (
            "net" if mode == "net" else "gross"
        )
    check_journal(journal)
    db = sqlite3.connect(journal, isolation_level=None)
    try:
        posted = post_from_journal(db)
        report = close_cycle(db, int(time.time() * 1_000_000), chosen)  # wall timestamp
        check_invariants(db)
    finally:
        db.close()
    by_currency = positions_by_currency(report)
    if as_json:
        click.echo(json.dumps({
            "cycle": report.cycle, "transfers": report.transfers,
            "holds_captured": report.captured,
            "ledger": {"posted": posted.posted, "pending_holds": posted.pending,
                       "voided": posted.voided},
            "currencies": [{
                "currency": c.currency, "exponent": c.exponent, "mode": c.mode,
                "total": format_major(c.total, c.exponent),
                "positions": [{
                    "counterparty": p.counterparty, "role": p.role,
                    "pays": format_major(p.pays, c.exponent),
                    "receives": format_major(p.receives, c.exponent),
                    "net": format_major(p.net, c.exponent), "net_minor": p.net,
                    "instructions": p.instructions} for p in c.positions],
            } for c in by_currency],
        }, indent=2))
    else:
        from rich import box
        from rich.table import Table

        # Piped output keeps whole numbers: wide enough, never truncated.
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        console.print(
            f"ledger: {posted.posted} posted, {posted.pending} pending holds, "
            f"{posted.voided} voided; cycle {report.cycle}: {report.transfers} transfers "
            f"({report.captured} holds captured)"
        )
        for c in by_currency:
            table = Table(title=f"{c.currency} ({c.mode}; {len(c.positions)} counterparties; "
                          f"sum {format_major(c.total, c.exponent)})", title_justify="left",
                          box=box.SIMPLE_HEAD)
            for name, justify in (("counterparty", "left"), ("role", "left"),
                                  ("pays", "right"), ("receives", "right"),
                                  ("net", "right"), ("instructions", "right")):
                table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
            for p in c.positions:
                table.add_row(p.counterparty, p.role, _grouped_major(p.pays, c.exponent),
                              _grouped_major(p.receives, c.exponent),
                              _grouped_major(p.net, c.exponent, signed=True),
                              str(p.instructions) if p.instructions else "")
            console.print(table)
        console.print("ledger invariants hold: postings per currency sum to zero")
    if out_file:
        Path(out_file).write_text(json.dumps(msgspec.to_builtins(report), indent=2))


def check_journal(path: str) -> None:
    """Refuse, in one line, a file that is not a switch journal (before any work)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.execute("SELECT payment_id, kind, record FROM journal LIMIT 1").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise UserError(
            f"{path}: not a payswitch journal ({exc}); pass the journal.db a switch wrote "
            "(journal.path in its config, or the path `payswitch demo` prints)"
        ) from None


def _grouped_major(minor: int, exponent: int, signed: bool = False) -> str:
    """Major units with thousands separators, exact: 123456789, 2 -> "1,234,567.89"."""
    from switch.backoffice.ledger import format_major

    text = format_major(abs(minor), exponent)
    whole, _, frac = text.partition(".")
    sign = ("+" if minor > 0 and signed else "") + ("-" if minor < 0 else "")
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")


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
main.add_command(load)
main.add_command(report)

if __name__ == "__main__":
    main()
