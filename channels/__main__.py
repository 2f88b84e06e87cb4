"""``python -m channels serve --config FILE [--ready-file PATH]``: run the simulated networks.

Runs on asyncio with uvloop. SIGINT/SIGTERM stop it cleanly. The ready file (JSON, written
atomically once every port is bound) maps each network's name to ``{"port": .., "kind": ..}``
and holds ``"admin_port"``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from functools import partial

import anyio

from channels.config import ChannelsConfig, ChannelsConfigError, load_config
from channels.server import serve_channels
from switch.serve.http import AdminAuthError, load_tokens


async def _serve(config: ChannelsConfig, ready_file: str | None) -> None:
    async with anyio.create_task_group() as tg:
        runtime = await tg.start(partial(serve_channels, config, ready_file=ready_file))
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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
    except (ChannelsConfigError, OSError, AdminAuthError) as exc:
        print(f"channels: {args.config}: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve, config, args.ready_file, backend="asyncio",
                  backend_options={"use_uvloop": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
