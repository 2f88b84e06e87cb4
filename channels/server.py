"""Run the simulated networks: configuration, the TCP machinery they share, the admin API.

`serve_channels(config)` starts every network in `config.networks` under one anyio task group,
plus a small admin HTTP app (Starlette on Hypercorn) on its own port:

* ``GET /faults`` -- the faults active now, every network;
* ``POST /faults`` -- inject one (a JSON `channels.faults.Fault`; offsets count from now);
* ``DELETE /faults/{endpoint}`` -- clear every fault of one network, active and scheduled;
* ``GET /metrics`` -- Prometheus: requests by network and outcome, active faults, latency.

Auth (``[admin.auth]``, see docs/security.md): injecting and clearing faults needs the
operator's bearer token, listing them the auditor's or the operator's; /metrics and
/healthz are open. Every state change is appended to the audit log (JSON lines).

Endpoints are networks: a fault's ``endpoint`` is a network's ``name``. One `FaultTimeline`
holds every network's faults and each network's `Behaviour` asks it by name.

Shared request path (`SimServer`). Each network decodes its own protocol into a `SimRequest`
and hands it to `SimServer.serve_request`, which applies the seeded `Behaviour.plan()` in one
place, in this order: blackhole (swallow: never processed, never answered), refuse (answer
the protocol's "unavailable" at once, nothing processed), the capacity gate (queue, or
refuse when full), the network's decision (the only step that books anything), service
latency, then reset (drop the connection with an RST: the decision stands, the answer is
lost), late (extra delay), malformed (garbage frame instead of the answer) or duplicate
(the answer twice). Endpoint-wide "down" and "flapping" act on connections: a supervisor
closes the listener and resets open connections while the endpoint is down, so new
connections are refused by the kernel, and listens again on the same port when it is up.

Bounds: connections per network, requests in flight per connection (past it: answered
"unavailable" at once), frame size (past it: the connection is closed), and each network's
own books.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from channels.behaviour import Behaviour
from channels.config import ChannelsConfig
from channels.faults import (
    Fault,
    FaultConfigError,
    FaultTimeline,
)
from channels.metrics import ChannelMetrics
from channels.settlement import SettlementWriter
from channels.tcp import SimServer
from switch.serve.http import bind_socket, protect, serve_http

if TYPE_CHECKING:
    from channels.card import CardScheme

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- admin

#: Where the simulators' admin audit log goes unless ``admin.auth.audit_log`` says.
DEFAULT_AUDIT_LOG = "var/channels-admin-audit.jsonl"


#: Largest POST /faults body: one fault is a few hundred bytes.
MAX_FAULT_BODY = 64 * 1024


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes.

    Read chunk by chunk and given up past the bound (``request.body()`` would hold the
    whole of whatever a client sends before anyone could look at its size).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def build_admin_app(runtime: ChannelsRuntime) -> ASGIApp:
    """The admin routes behind bearer-token auth (raises AdminAuthError for bad tokens)."""
    return protect(_admin_routes(runtime), runtime.config.admin.auth, component="channels",
                   default_audit_log=DEFAULT_AUDIT_LOG)


def _admin_routes(runtime: ChannelsRuntime) -> Starlette:
    async def get_faults(request: Request) -> Response:
        now = anyio.current_time()
        active = msgspec.to_builtins(runtime.timeline.describe(now))
        for status in active:
            if status["remaining_s"] is not None and not math.isfinite(status["remaining_s"]):
                status["remaining_s"] = None
        return JSONResponse({"faults": active})

    async def post_fault(request: Request) -> Response:
        body = await _bounded_body(request, MAX_FAULT_BODY)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            fault = msgspec.json.decode(body, type=Fault)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return JSONResponse({"error": f"fault: {exc}"}, status_code=400)
        if fault.endpoint not in runtime.networks:
            return JSONResponse(
                {"error": f"fault.endpoint: no network named {fault.endpoint!r}",
                 "networks": sorted(runtime.networks)}, status_code=404)
        try:
            fault_id = runtime.timeline.inject(fault, anyio.current_time())
        except FaultConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        runtime.refresh_fault_gauge()
        log.info("fault %d injected: %s on %s", fault_id, fault.kind, fault.endpoint)
        return JSONResponse({"id": fault_id}, status_code=201)

    async def delete_faults(request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        if endpoint not in runtime.networks:
            return JSONResponse({"error": f"no network named {endpoint!r}"}, status_code=404)
        cleared = runtime.timeline.clear_endpoint(endpoint)
        runtime.refresh_fault_gauge()
        log.info("faults cleared on %s: %s", endpoint, cleared)
        return JSONResponse({"cleared": cleared})

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        runtime.refresh_fault_gauge()
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "networks": runtime.ports})

    return Starlette(routes=[
        Route("/faults", get_faults, methods=["GET"]),
        Route("/faults", post_fault, methods=["POST"]),
        Route("/faults/{endpoint}", delete_faults, methods=["DELETE"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


# --------------------------------------------------------------------------- runtime

class ChannelsRuntime:
    """Every simulated network of one configuration, their shared fault timeline and metrics.

    Created inside the event loop (the timeline's origin is ``anyio.current_time()``).
    Tests reach the simulators' books through `networks` and `card_schemes`.
    """

    def __init__(self, config: ChannelsConfig) -> None:
        from channels.card import CardNetwork, CardScheme
        from channels.qr import QrNetwork
        from channels.swift import SwiftNetwork

        self.config = config
        now = anyio.current_time()
        faults = [fault for net in config.networks for fault in net.faults]
        self.timeline = FaultTimeline(faults, origin=now)
        self.metrics = ChannelMetrics([net.name for net in config.networks])
        self.card_schemes: dict[str, CardScheme] = {
            spec.name: CardScheme(spec) for spec in config.card_schemes}
        self.networks: dict[str, SimServer] = {}
        for net in config.networks:
            behaviour = Behaviour(net.behaviour, net.seed, endpoint=net.name,
                                  faults=self.timeline)
            server: SimServer
            if net.kind == "card":
                assert net.scheme is not None
                server = CardNetwork(net, behaviour, self.metrics, self.card_schemes[net.scheme])
            elif net.kind == "swift":
                server = SwiftNetwork(net, behaviour, self.metrics, origin=now)
            else:
                server = QrNetwork(net, behaviour, self.metrics)
            self.networks[net.name] = server
        self.ports: dict[str, int] = {}
        self.admin_port = 0
        self.settlement: SettlementWriter | None = None
        self._shutdown = anyio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def refresh_fault_gauge(self) -> None:
        now = anyio.current_time()
        counts = dict.fromkeys(self.networks, 0)
        for status in self.timeline.describe(now):
            if status.endpoint in counts:
                counts[status.endpoint] += 1
        for name, count in counts.items():
            self.metrics.active_faults.labels(name).set(count)

    def ready_document(self) -> dict[str, object]:
        doc: dict[str, object] = {
            name: {"port": port, "kind": self.networks[name].spec.kind}
            for name, port in self.ports.items()
        }
        doc["admin_port"] = self.admin_port
        return doc

    async def run(self, *, ready_file: str | None = None,
                  task_status: anyio.abc.TaskStatus[ChannelsRuntime] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        admin_stop = anyio.Event()
        # Claimed before a port is bound: a second simulator pointed at the same
        # directory stops here, before it could replace the first one's files.
        settlement: SettlementWriter | None = None
        if self.config.settlement.enabled:
            settlement = SettlementWriter(self, self.config.settlement)
            self.settlement = settlement
        try:
            await self._serve(settlement, admin_stop, ready_file, task_status)
        finally:
            if settlement is not None:
                settlement.close()

    async def _serve(self, settlement: SettlementWriter | None, admin_stop: anyio.Event,
                     ready_file: str | None,
                     task_status: anyio.abc.TaskStatus[ChannelsRuntime]) -> None:
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as nets:
                for name, server in self.networks.items():
                    self.ports[name] = await nets.start(server.serve)
                admin = self.config.admin
                if admin.enabled:
                    sock = bind_socket(admin.host, admin.port)
                    self.admin_port = sock.getsockname()[1]
                    # In the outer group, stopped by its own trigger: Hypercorn is never
                    # cancelled mid-shutdown.
                    outer.start_soon(serve_http, build_admin_app(self), sock, admin_stop.wait)
                if settlement is not None:
                    nets.start_soon(settlement.run)
                if ready_file:
                    _write_ready_file(ready_file, self.ready_document())
                log.info("channels ready: %s", json.dumps(self.ready_document()))
                task_status.started(self)
                await self._shutdown.wait()
                if settlement is not None:
                    settlement.cut()  # the last, partial cycle: nothing final goes unreported
                nets.cancel_scope.cancel()
            admin_stop.set()


async def serve_channels(
    config: ChannelsConfig,
    *,
    ready_file: str | None = None,
    task_status: anyio.abc.TaskStatus[ChannelsRuntime] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run every network of ``config`` (and the admin app) until the runtime is shut down.

    ``task_status`` receives the `ChannelsRuntime` once every port is bound: its ``ports``
    and ``admin_port`` say where, and ``request_shutdown()`` stops it.
    """
    runtime = ChannelsRuntime(config)
    await runtime.run(ready_file=ready_file, task_status=task_status)


def _write_ready_file(path: str, document: dict[str, object]) -> None:
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(target)  # atomic: readers never see half a file
