"""Admin HTTP on its own port: /metrics, /healthz, /readyz (Starlette on Hypercorn).

Kept off the payment port so a flood of payments cannot starve monitoring, and so the
payment protocol stays binary-only. Hypercorn runs on whichever backend the switch uses.

/healthz answers whether the process is alive; /readyz whether it should get traffic
(journal replayed and healthy, not draining) -- the distinction load balancers need.

Those three are open (``[admin.auth] open_paths``); ``POST /routes/reload`` needs the
operator's bearer token and is written to the audit log (``switch.serve.http.AdminAuth``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

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
from starlette.types import ASGIApp

from switch.serve.http import AdminAuthConfig, protect

ReadinessCheck = Callable[[], tuple[bool, str]]


def build_app(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    reload_routes: Callable[[], Awaitable[tuple[bool, str]]] | None = None,
    *,
    auth: AdminAuthConfig | None = None,
    audit_log: str | Path = "var/admin-audit.jsonl",
) -> ASGIApp:
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

    app = Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/routes/reload", routes_reload, methods=["POST"]),
        ]
    )
    return protect(app, auth or AdminAuthConfig(), component="switch",
                   default_audit_log=audit_log)
