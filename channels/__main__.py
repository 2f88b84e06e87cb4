"""``python -m channels serve --config FILE [--ready-file PATH]``: run the simulated networks.

Runs on asyncio with uvloop. SIGINT/SIGTERM stop it cleanly. The ready file (JSON, written
atomically once every port is bound) maps each network's name to ``{"port": .., "kind": ..}``
and holds ``"admin_port"``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial

import anyio

from channels.config import ChannelsConfig, ChannelsConfigError, load_config
from switch.serve.http import AdminAuthError, load_tokens


async def _serve(config: ChannelsConfig, ready_file: str | None) -> None:
    # Here, not at the top: `payswitch serve` imports this module for port_free(), and
    # the simulators' server brings polars, pyarrow and lxml (settlement files) with it.
    from channels.server import serve_channels

    # The signals are taken before the ready file is written: taken after, a SIGTERM
    # that followed the ready file closely killed the simulators outright (exit -15, no
    # last settlement cut) instead of stopping them in order.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            runtime = await tg.start(partial(serve_channels, config, ready_file=ready_file))
            async for signum in signals:
                logging.getLogger("channels").info("signal %d: shutting down", signum)
                runtime.request_shutdown()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m channels",
                                     description="Simulated card, SWIFT and QR networks.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run every network in a config file")
    serve.add_argument("--config", required=True, help="channels TOML file")
    serve.add_argument("--ready-file", help="write bound ports here (JSON) once listening")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        load_tokens(config.admin.auth)  # an unreadable token file stops start-up here
    except (ChannelsConfigError, AdminAuthError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"Error: {args.config}: {exc}", file=sys.stderr)
        return 2
    busy = busy_ports_message(config, preflight=True)
    if busy is not None:
        print(f"Error: {args.config}: {busy}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(_serve, config, args.ready_file, backend="asyncio",
                      backend_options={"use_uvloop": True})
    except Exception as exc:
        from channels.settlement import SettlementDirInUse  # here: see _serve

        in_use = find_exception(exc, lambda e: isinstance(e, SettlementDirInUse))
        if in_use is not None:
            print(f"Error: {args.config}: {in_use}", file=sys.stderr)
            return 2
        if not address_in_use(exc):
            raise
        print(f"Error: {args.config}: {busy_ports_message(config)}", file=sys.stderr)
        return 2
    return 0


def find_exception(exc: BaseException,
                   matches: Callable[[BaseException], bool]) -> BaseException | None:
    """``exc`` itself or the first exception grouped in it that ``matches``."""
    if matches(exc):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, matches)
            if found is not None:
                return found
    return None


def address_in_use(exc: BaseException) -> bool:
    """Whether ``exc`` (or any exception grouped in it) is EADDRINUSE."""
    return find_exception(
        exc, lambda e: isinstance(e, OSError) and e.errno == errno.EADDRINUSE) is not None


def busy_ports_message(config: ChannelsConfig, preflight: bool = False) -> str | None:
    """Name the configured ports that something else holds, and what to do.

    ``preflight``: None when every port is free (checked before start-up, so a busy port
    stops it before a single log line).
    """
    wanted = [(f"networks[{i}].port ({net.name})", net.host, net.port)
              for i, net in enumerate(config.networks)]
    if config.admin.enabled:
        wanted.append(("admin.port", config.admin.host, config.admin.port))
    busy = [f"{key} = {port} on {host}" for key, host, port in wanted
            if port and not port_free(host, port)]
    if preflight and not busy:
        return None
    which = ", ".join(busy) if busy else "a configured port"
    return (f"{which}: address already in use; stop the process holding it (another "
            "`payswitch channels serve`?) or set the port to a free one (0 picks one)")


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
