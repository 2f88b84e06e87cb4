"""HTTP serving helpers: bind a socket first, then serve an ASGI app on it with Hypercorn.

Shared by the switch's admin app and the simulators' admin API (channels/), which is why
they live apart from the switch's own admin routes.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import sniffio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 works and the real port is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_http(
    app: Starlette, sock: socket.socket, shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Serve ``app`` on an already bound socket until ``shutdown()`` returns."""
    config = HypercornConfig()
    # Hypercorn wraps the fd in its own socket object and closes it. Detach ours, or its
    # garbage collection would close the fd again later -- by then possibly reused by
    # another socket.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        await trio_serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        await asyncio_serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
