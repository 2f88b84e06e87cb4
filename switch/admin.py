"""Admin HTTP on its own port: /metrics, /healthz, /readyz (Starlette on Hypercorn).

Kept off the payment port so a flood of payments cannot starve monitoring, and so the
payment protocol stays binary-only. Hypercorn runs on whichever backend the switch uses.

/healthz answers whether the process is alive; /readyz whether it should get traffic
(journal replayed and healthy, not draining) -- the distinction load balancers need.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import sniffio
from hypercorn.config import Config as HypercornConfig
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadinessCheck = Callable[[], tuple[bool, str]]


def build_app(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    reload_routes: Callable[[], Awaitable[tuple[bool, str]]] | None = None,
) -> Starlette:
    async def metrics(request: Request) -> Response:
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            body = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
            return Response(body, media_type=OPENMETRICS_CONTENT_TYPE)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, detail = readiness()
        return JSONResponse({"ready": ready, "detail": detail}, status_code=200 if ready else 503)

    async def routes_reload(request: Request) -> Response:
        if reload_routes is None:
            return JSONResponse({"ok": False, "detail": "no route table"}, status_code=404)
        ok, detail = await reload_routes()
        return JSONResponse({"ok": ok, "detail": detail}, status_code=200 if ok else 422)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/routes/reload", routes_reload, methods=["POST"]),
        ]
    )


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
