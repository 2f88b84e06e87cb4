"""The HTTP/JSON payments API: a thin Starlette shell over the same core as every door.

- ``POST /v1/payments`` with ``Idempotency-Key`` (IETF httpapi draft semantics: a replay
  returns the stored result, marked ``Idempotent-Replayed: true``; the same key with a
  different body gets 422). Missing key: 400. The core decides all of it: the key is
  the payment's idempotency key, the body hash is the core's. The key is the header's
  bytes read as UTF-8 (bytes that are not UTF-8: 400), 1-64 characters
  (``MAX_KEY_CHARS``), so a key is the same key through this door and the msgpack
  door (:func:`idempotency_key`). A non-ASCII key journaled before that change, under
  the header's latin-1 reading, is still matched while the index holds it.
- ``GET /v1/payments/{payment_id}``: the latest journaled result.
- ``GET /openapi.json``: the document, generated from the message types and checked in
  as docs/openapi.json (a test keeps them equal).

In a cluster, a payment whose key another worker owns (switch/protocols/shardmap.py) is
answered 421 Misdirected Request, code ``moved``, naming the owner's shard and HTTP
address (``cluster.http_shards``, from the layout; its msgpack address only labelled as
such: an HTTP client sent there would speak HTTP to the msgpack port), before anything is
journaled: HAProxy routes by the same map, so this only happens to a client that bypasses
it.

Errors are RFC 9457 problem+json; field errors carry JSON pointers (``/card/pan``).

Bounds: body size (``max_body_bytes``, 413 before parsing), payments in flight
(``max_in_flight``, 503 with Retry-After), connections (the ASGI server's own limit), a
request's line and headers (``MAX_HEAD_BYTES``): the app refuses a head above it with 431
problem+json and closes the connection (:class:`HeadBound`, whatever the server and
however the bytes arrived), and under uvicorn the protocol also stops reading a head that
grows past it over several reads (400, connection closed: httptools has no limit of its
own, and one header grew the switch by 300 MB). The protocol's count alone missed a head
that arrived whole in one read: a 70,000-byte header reached the app.

The server runs on the switch's own event loop, on its own port, beside the msgspec TCP
server; which ASGI server was chosen by measurement (bench/bench_http.py,
bench/RESULTS.md): uvicorn with httptools by default, Hypercorn on trio (uvicorn is
asyncio-only).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import sniffio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from switch import reasons
from switch.model import MAX_KEY_CHARS
from switch.protocols.iso8583_acquirer import KEY_PREFIX as ISO_KEY_PREFIX
from switch.protocols.payments_json import (
    PROBLEM_BASE,
    PROBLEM_JSON,
    FieldError,
    Problem,
    decode_body,
    json_pointer,
    openapi_document,
    resource_of,
    to_request,
)
from switch.protocols.shardmap import ShardMap, shard_of_bytes
from switch.serve.config import HttpApiConfig
from switch.serve.frontcore import FrontCore

log = logging.getLogger(__name__)

#: A request's line and headers, at most (h11's and Hypercorn's default, too).
MAX_HEAD_BYTES: Final = 16 * 1024

_json: Final = msgspec.json.Encoder()
_REFUSAL_STATUS: Final = {
    reasons.E_IDEMPOTENCY_CONFLICT: 422,
    reasons.E_INVALID: 422,
    reasons.E_OVERLOADED: 503,
    reasons.E_SHUTTING_DOWN: 503,
    reasons.E_UNAVAILABLE: 503,
}
_TITLES: Final = {
    400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 421: "Misdirected Request",
    422: "Unprocessable Content", 431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def problem(status: int, kind: str, detail: str, *, errors: list[FieldError] | None = None,
            code: str = "", instance: str = "") -> Response:
    body = Problem(type=PROBLEM_BASE + kind, title=_TITLES.get(status, "Error"), status=status,
                   detail=detail, instance=instance, errors=errors or [], code=code)
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(_json.encode(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


def idempotency_key(raw: bytes) -> tuple[str, str]:
    """``(key, "")`` from an ``Idempotency-Key`` header's raw bytes, or ``("", why)``
    when the header is refused (a 400's detail, naming the header and the rule).

    The key is the header's bytes read as UTF-8, strictly: the msgpack door's key is a
    str that travels as UTF-8, so a client sending the key "café" through either door
    sends the same bytes, and it is one key (one payment, one shard: HAProxy and
    :func:`switch.protocols.shardmap.shard_of` hash those bytes). Starlette hands the
    header decoded as latin-1, and that reading was the key: "café" over HTTP was the key
    "cafÃ©", another payment than "café" over msgpack. Bytes that are not UTF-8 name no
    key a msgpack client could send, so they are refused. The length is counted in
    characters (code points) after decoding, as msgspec counts the msgpack door's
    (``switch.model.MAX_KEY_CHARS``)."""
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", (f"Idempotency-Key is not UTF-8 text (byte {exc.start}: "
                    f"0x{raw[exc.start]:02x}); send the key as UTF-8")
    if len(key) > MAX_KEY_CHARS:
        return "", f"Idempotency-Key is longer than {MAX_KEY_CHARS} characters"
    if key.startswith(ISO_KEY_PREFIX):
        return "", (f"Idempotency-Key may not begin with {ISO_KEY_PREFIX!r}: the ISO 8583 "
                    "door's keys do")
    return key, ""


def head_bytes(scope: Scope) -> int:
    """The bytes of a request's line and headers as HTTP/1.1 writes them (``METHOD
    target HTTP/1.1``, ``name: value`` per header, each line and the blank line after
    them ending in CRLF), from the ASGI scope: what the server parsed, whatever reads
    it arrived in."""
    target = scope.get("raw_path") or scope.get("path", "/").encode("utf-8", "replace")
    query = scope.get("query_string") or b""
    line = (len(scope.get("method", "")) + 1 + len(target) + (1 + len(query) if query else 0)
            + len(" HTTP/") + len(scope.get("http_version", "1.1")) + 2)
    return line + sum(len(name) + 2 + len(value) + 2 for name, value in scope["headers"]) + 2


class HeadBound:
    """ASGI middleware: a request whose line and headers (:func:`head_bytes`) pass
    ``MAX_HEAD_BYTES`` is answered 431 problem+json, connection closed, before any route
    runs. The server's own bounds depend on how the bytes arrive (uvicorn's counts per
    read; h11's applies to a head still incomplete): this one does not."""

    def __init__(self, app: ASGIApp, count: Callable[[], None] | None = None) -> None:
        self.app = app
        self.count = count  # payswitch_rejected_requests_total{reason="frame_too_large"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = head_bytes(scope)
            if size > MAX_HEAD_BYTES:
                log.warning("HTTP request head of %d bytes, above %d: refused with 431",
                            size, MAX_HEAD_BYTES)
                if self.count is not None:
                    self.count()
                response = problem(
                    431, "request-head-too-large",
                    f"the request line and headers are {size} bytes, above the limit of "
                    f"{MAX_HEAD_BYTES} bytes (16 KiB)")
                # The rest of what this client sends is not read: close the connection.
                response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HttpConnections:
    """The HTTP door's open connections, for ``payswitch_open_connections`` (read at scrape
    time with the other doors'). Uvicorn's protocol counts them; Hypercorn and Granian
    have no hook for it, so under them this stays 0."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


def moved_detail(owner: int, shards: int, shard: int, msgpack_address: str,
                 http_addresses: list[str]) -> str:
    """The 421's detail: the owner's HTTP door first (an HTTP client goes there), or that
    it is not known; its msgpack door only labelled as such."""
    http = http_addresses[owner] if owner < len(http_addresses) else ""
    where = (f"its HTTP door is http://{http}" if http else
             "its HTTP door is not known to this worker (cluster.http_shards names none)")
    return (f"Idempotency-Key belongs to shard {owner} of {shards} ({where}; its msgpack "
            f"door, not HTTP, is {msgpack_address}), not to this worker (shard {shard}); "
            "send it through the cluster's HAProxy")


def build_api(core: FrontCore, config: HttpApiConfig, shard_map: ShardMap | None = None,
              shard: int = 0, http_addresses: list[str] | None = None) -> Starlette:
    """The app of one worker; in a cluster (``shard_map`` of more than one shard) it
    answers keys another shard owns 421, naming the owner's address in
    ``http_addresses`` (the HTTP doors in shard order, "" for none)."""
    state = {"in_flight": 0}
    addresses = shard_map.addresses if shard_map is not None else []
    shards = len(addresses)
    http_doors = list(http_addresses or [])
    document = _json.encode(openapi_document())

    rejected = core.metrics.rejected

    def refused(status: int, kind: str, detail: str, reason: str) -> Response:
        """A refusal before the core sees the payment, counted in
        ``payswitch_rejected_requests_total`` as the msgpack door counts its own (a body
        too large is its frame too large)."""
        rejected[reason].inc()
        return problem(status, kind, detail)

    async def create_payment(request: Request) -> Response:
        header = request.headers.get("idempotency-key")
        if not header:
            return refused(400, "idempotency-key-missing",
                           "the Idempotency-Key header is required", reasons.E_INVALID)
        # Starlette read the header's bytes as latin-1, which gives them back exactly.
        raw = header.encode("latin-1")
        key, why = idempotency_key(raw)
        if why:
            return refused(400, "idempotency-key-invalid", why, reasons.E_INVALID)
        if shards > 1:
            # HAProxy hashed the header's bytes: the key's UTF-8, as shard_of hashes it.
            owner = shard_of_bytes(raw, shards)
            if owner != shard:
                core.metrics.rejected[reasons.E_MOVED].inc()
                return problem(421, "moved", moved_detail(owner, shards, shard,
                                                          addresses[owner], http_doors),
                               code=reasons.E_MOVED)
        declared = request.headers.get("content-length")
        too_large = f"body exceeds http.max_body_bytes={config.max_body_bytes}"
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            return refused(413, "body-too-large", too_large, reasons.E_FRAME_TOO_LARGE)
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > config.max_body_bytes:
                return refused(413, "body-too-large", too_large, reasons.E_FRAME_TOO_LARGE)
        body, error = decode_body(data)
        if body is None:
            assert error is not None
            status = 400 if not error.pointer and error.detail.startswith("not valid") else 422
            core.metrics.rejected[reasons.E_MALFORMED if status == 400 else reasons.E_INVALID].inc()
            return problem(status, "invalid-body", f"{error.pointer or 'body'}: {error.detail}",
                           errors=[error])
        if state["in_flight"] >= config.max_in_flight:
            core.metrics.rejected[reasons.E_OVERLOADED].inc()
            return problem(503, "overloaded", f"http.max_in_flight={config.max_in_flight} "
                           "reached", code=reasons.E_OVERLOADED)
        if not key.isascii() and not core.indexed(key) and core.indexed(header):
            # Upgrade: before the door read the key as UTF-8 it keyed a payment by
            # Starlette's latin-1 reading of the header, ``header`` itself ("café" sent as
            # UTF-8 was journaled as "cafÃ©"), and start-up restores the index with those
            # keys. A client retrying such a payment now sends the same bytes: answer it
            # under the key it was booked by (a replay, or a conflict for another body),
            # not book it twice. Only for a non-ASCII key (an ASCII one reads the same both
            # ways): two dict lookups at most, the second only on a miss; it lasts while
            # the index still remembers old keys (the idempotency window). The UTF-8 key
            # wins if both are held. The shard is the same: both hashed these bytes.
            key = header
        state["in_flight"] += 1
        try:
            outcome = await core.submit(to_request(body, key))
        finally:
            state["in_flight"] -= 1
        if outcome.result is None:
            code = outcome.error_code
            status = _REFUSAL_STATUS.get(code, 500)
            errors = None
            if code == reasons.E_INVALID and ":" in outcome.error_message:
                path, _, detail = outcome.error_message.partition(":")
                errors = [FieldError(json_pointer(path), detail.strip())]
            kind = code.replace("_", "-")
            return problem(status, kind, outcome.error_message, errors=errors, code=code)
        resource = resource_of(outcome.result, key)
        headers = {"Location": f"/v1/payments/{resource.payment_id}"}
        if outcome.replay:
            headers["Idempotent-Replayed"] = "true"
        return Response(_json.encode(resource), status_code=201,
                        media_type="application/json", headers=headers)

    async def get_payment(request: Request) -> Response:
        payment_id = request.path_params["payment_id"]
        found = await core.find(payment_id) if len(payment_id) <= 64 else None
        if found is None:
            return problem(404, "not-found", f"no journaled result for {payment_id!r}",
                           instance=f"/v1/payments/{payment_id}")
        result, key = found
        return Response(_json.encode(resource_of(result, key)), media_type="application/json")

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    return Starlette(routes=[
        Route("/v1/payments", create_payment, methods=["POST"]),
        Route("/v1/payments/{payment_id}", get_payment, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ], middleware=[Middleware(HeadBound, count=rejected[reasons.E_FRAME_TOO_LARGE].inc)])


async def serve_api(app: Starlette, sock: socket.socket, server: str, max_connections: int,
                    shutdown: Callable[[], Awaitable[None]],
                    connections: HttpConnections | None = None) -> None:
    """Serve ``app`` on a bound socket with the chosen ASGI server until ``shutdown()``;
    uvicorn counts its open connections in ``connections``."""
    on_asyncio = sniffio.current_async_library() == "asyncio"
    if server == "uvicorn" and on_asyncio:
        await _serve_uvicorn(app, sock, max_connections, shutdown,
                             connections if connections is not None else HttpConnections())
        return
    if server == "granian" and on_asyncio:
        await _serve_granian(app, sock, shutdown)
        return
    from switch.serve.http import serve_http

    await serve_http(app, sock, shutdown)


async def _serve_uvicorn(app: Starlette, sock: socket.socket, max_connections: int,
                         shutdown: Callable[[], Awaitable[None]],
                         connections: HttpConnections) -> None:
    import asyncio
    import contextlib

    import uvicorn

    class _Server(uvicorn.Server):
        # The switch owns the process's signals; uvicorn must not take them over.
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    config = uvicorn.Config(app, http=_bounded_httptools(connections), loop="none", lifespan="off",
                            access_log=False, log_level="warning", proxy_headers=False,
                            server_header=False, date_header=False,
                            limit_concurrency=max_connections, timeout_graceful_shutdown=1)
    server = _Server(config)

    async def stop() -> None:
        await shutdown()
        server.should_exit = True

    watcher = asyncio.ensure_future(stop())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()


def _bounded_httptools(connections: HttpConnections) -> type:
    """uvicorn's httptools protocol with a bound on a request's head: httptools gathers a
    header's value whole before it hands it over, however long, so the bytes are counted
    as they arrive, from the end of the previous message (or the connection's start)
    until the headers are complete (past the bound by at most one read). It counts its
    open connections in ``connections`` too."""
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(HttpToolsProtocol):
        _head_bytes = 0
        _in_head = True  # a new connection's first bytes are a request head

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            connections.open += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            connections.open -= 1
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            # Checked after the read is parsed: a read that completes the head may carry
            # a body beyond the bound, which is max_body_bytes' business.
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                log.warning("HTTP request head above %d bytes: connection closed",
                            MAX_HEAD_BYTES)
                self._in_head = False
                self.send_400_response(
                    f"request line and headers above {MAX_HEAD_BYTES} bytes")

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # pipelined: the next head

    return BoundedHttpTools


async def _serve_granian(app: Starlette, sock: socket.socket,
                         shutdown: Callable[[], Awaitable[None]]) -> None:
    """Granian's embedded server (experimental upstream) on this loop: it binds by
    address, so the socket bound for the port number is closed and rebound by Granian."""
    import asyncio

    from granian.constants import Interfaces
    from granian.server.embed import Server as GranianServer

    host, port = sock.getsockname()[:2]
    sock.close()
    server = GranianServer(app, address=host, port=port, interface=Interfaces.ASGINL,
                           runtime_threads=1, log_enabled=False, websockets=False)

    async def stop() -> None:
        await shutdown()
        server.stop()  # type: ignore[no-untyped-call]

    watcher = asyncio.ensure_future(stop())
    try:
        await server.serve()
    finally:
        watcher.cancel()
