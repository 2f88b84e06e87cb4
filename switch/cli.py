"""The ``payswitch`` command line.

Each subcommand is a thin shell over a module that does the work, so everything the CLI
can do is also callable (and tested) from Python.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio
import click
from rich.console import Console

from switch.cli_fault import fault
from switch.config import ConfigError, SwitchConfig, load_config, with_defaults


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def serve(
    config_path: str | None,
    backend: str | None,
    ready_file: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the switch until SIGTERM or SIGINT, then drain and flush the journal.

    Payments are served on [server] host:port; /metrics, /healthz and /readyz on
    [admin] host:port.
    """
    from switch import logs

    logs.configure(log_level, log_format)
    try:
        config = load_config(config_path) if config_path else with_defaults(SwitchConfig())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    chosen = backend or config.server.backend
    from switch.app import SwitchApp

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
    anyio.run(main_task, backend=chosen, backend_options=options)


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(1, 3600),
    default=15.0,
    show_default=True,
    help="Seconds of load.",
)
@click.option(
    "--rate",
    type=click.FloatRange(1, 200_000),
    default=2000.0,
    show_default=True,
    help="Offered payments per second (open loop).",
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
def demo(
    duration: float,
    rate: float,
    connections: int,
    seed: int,
    backend: str,
    workdir: str | None,
    networks: str,
) -> None:
    """Start a switch with its networks, drive an open-loop load, audit the journal.

    With the simulators (default), inject a fault from another terminal while it runs,
    e.g. `payswitch fault card-primary blackhole --for 10s`: the live view and the summary
    show it. Ends with a summary: accepted/approved/declined/failed counts per channel,
    `lost` (acknowledged payments missing from the journal) and `duplicates` (booked
    twice), both measured from the journal on disk, plus throughput and p50/p99/p99.9.
    """
    from switch.demo import run_demo

    console = Console(soft_wrap=True)  # summary lines stay whole when piped to a file
    sys.exit(run_demo(duration, rate, connections, seed, backend, workdir, console, networks))


@main.command()
@click.option("--url", default="http://127.0.0.1:7180/metrics", show_default=True,
              help="The switch's admin /metrics URL.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between scrapes; rates are over this interval.")
@click.option("--once", is_flag=True, help="Print one frame (two scrapes) and exit.")
def top(url: str, interval: float, once: bool) -> None:
    """Live terminal view of a running switch: TPS, latency, networks, rejections.

    Reads the switch's /metrics, so it works wherever Prometheus would.
    """
    import time

    import httpx
    from rich.live import Live

    from switch.top import render, scrape

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
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Channels configuration (TOML), e.g. examples/channels.toml.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write each network's bound port (and the admin port) here as JSON.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def channels_serve(config_path: str, ready_file: str | None, log_level: str) -> None:
    """Run every simulated network in the config, each on its own port, until SIGTERM.

    Faults are scheduled in the config or injected at runtime with `payswitch fault`.
    """
    from channels.__main__ import main as channels_main

    sys.exit(channels_main(["serve", "--config", config_path, "--log-level", log_level,
                            *(["--ready-file", ready_file] if ready_file else [])]))


main.add_command(fault)

if __name__ == "__main__":
    main()
