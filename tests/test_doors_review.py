"""Review of the HTTP and msgpack front doors: three defects a newcomer found.

1. In a cluster the HTTP door's 421 ``moved`` named the owner's *msgpack* address
   (cluster.shards): an HTTP client following it talked HTTP to the msgpack port. It
   names the owner's HTTP door now (cluster.http_shards, filled from the layout), or says
   it is not known; the msgpack door's ``moved`` keeps the msgpack address.
2. The 16 KiB bound on a request's line and headers was counted per socket read by
   uvicorn's protocol only: a 70,000-byte header sent in one write reached the app and
   was answered 422. The app measures the parsed head now: 431 problem+json.
3. ``{"op": "nope"}`` on the msgpack door was answered ``invalid`` and counted as
   invalid, although the metrics catalogue has a reason ``unknown_op`` for it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.abc
import httpx
import msgspec
import pytest

from loadtests.harness.clusterproc import start_cluster, stop_cluster
from switch.cluster.layout import apply, plan
from switch.observability.metrics import SwitchMetrics
from switch.protocols.shardmap import ShardMap, join_address, shard_of
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    Moved,
    Pay,
    Ping,
    Pong,
    decode_request,
    decode_response,
    encode_request,
    frame,
)
from switch.serve.config import HttpApiConfig
from switch.serve.http_api import MAX_HEAD_BYTES, build_api
from tests.conftest import make_config, start_switch
from tests.payments import card_payment

pytestmark = pytest.mark.anyio

BODY = {
    "channel": "card", "amount": 1000, "currency": "USD",
    "payer": {"account": "ACCT000001"}, "payee": {"account": "MERCH00001"},
    "card": {"pan": "4111111111111111", "expiry": "2812"},
}
SHARDS = 3
MSGPACK = [f"127.0.0.1:{7100 + i}" for i in range(SHARDS)]
HTTP = [f"127.0.0.1:{7120 + i}" for i in range(SHARDS)]


def _key_of(shard: int) -> str:
    return next(k for i in range(1000) if shard_of(k := f"review-{i}", SHARDS) == shard)


def _metrics_core() -> SimpleNamespace:
    return SimpleNamespace(metrics=SwitchMetrics())


async def _post_to_shard0(key: str, http_addresses: list[str] | None) -> httpx.Response:
    app = build_api(_metrics_core(), HttpApiConfig(enabled=True),  # type: ignore[arg-type]
                    ShardMap(MSGPACK), 0, http_addresses)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://w") as client:
        return await client.post("/v1/payments", json=BODY, headers={"Idempotency-Key": key})


# --- 1. the HTTP door's 421 names the owner's HTTP door -----------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_421_names_the_owners_http_address_not_its_msgpack_port() -> None:
    answer = await _post_to_shard0(_key_of(2), HTTP)
    assert answer.status_code == 421, answer.text
    problem = answer.json()
    assert problem["code"] == "moved"
    assert answer.headers["content-type"] == "application/problem+json"
    detail = problem["detail"]
    assert "shard 2 of 3" in detail
    assert f"HTTP door is http://{HTTP[2]}" in detail, detail
    # The msgpack port is never offered as the place to send HTTP.
    assert f"http://{MSGPACK[2]}" not in detail
    assert f"({MSGPACK[2]})" not in detail  # the old wording: the bare msgpack address


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("http_addresses", [None, [], [HTTP[0], HTTP[1], ""], HTTP[:2]],
                         ids=["none", "empty", "no-door", "short"])
async def test_http_421_says_so_when_the_owners_http_door_is_unknown(
        http_addresses: list[str] | None) -> None:
    answer = await _post_to_shard0(_key_of(2), http_addresses)
    assert answer.status_code == 421, answer.text
    detail = answer.json()["detail"]
    assert "HTTP door is not known" in detail, detail
    assert "http://" not in detail, detail


def test_a_worker_applied_from_a_layout_knows_every_shards_http_door(tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    layout = plan(config, SHARDS, tmp_path / "cluster")
    for shard in range(SHARDS):
        worker = apply(config, layout, shard)
        assert worker.cluster.shards == [w.address for w in layout.workers]
        assert worker.cluster.http_shards == [join_address(w.host, w.http_port)
                                              for w in layout.workers]
        assert worker.cluster.http_shards != worker.cluster.shards
    # Without an HTTP door, no HTTP address (the 421 then says it is not known).
    plain = make_config(tmp_path)
    assert apply(plain, plan(plain, 2, tmp_path / "c2"), 0).cluster.http_shards == ["", ""]


def _read_frame(sock: socket.socket) -> object:
    decoder = FrameDecoder()
    while True:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        frames = decoder.feed(chunk)
        if frames:
            return decode_response(frames[0])


def test_a_real_cluster_http_421_leads_to_the_owners_http_door(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(f"seed = 11\n[server]\nport = 0\n[admin]\nport = 0\n"
                      f"[http]\nenabled = true\nport = 0\n"
                      f"[journal]\npath = \"{tmp_path / 'journal.db'}\"\n")
    running = start_cluster(config, tmp_path / "cluster", SHARDS)
    try:
        workers = running.layout.workers
        key = _key_of(2)
        w0 = workers[0]
        with httpx.Client(timeout=30) as http:
            wrong = http.post(f"http://{w0.host}:{w0.http_port}/v1/payments", json=BODY,
                              headers={"Idempotency-Key": key})
            assert wrong.status_code == 421, wrong.text
            detail = wrong.json()["detail"]
            owner_url = f"http://{workers[2].host}:{workers[2].http_port}"
            assert f"HTTP door is {owner_url}" in detail, detail
            assert f"http://{workers[2].address}" not in detail
            # Following it: the owner answers over HTTP.
            right = http.post(owner_url + "/v1/payments", json=BODY,
                              headers={"Idempotency-Key": key})
            assert right.status_code == 201, right.text
        # The msgpack door's `moved` keeps naming the msgpack address.
        with socket.create_connection((w0.host, w0.port), timeout=10) as sock:
            sock.sendall(encode_request(Pay(1, card_payment(key=key, amount=1000))))
            moved = _read_frame(sock)
        assert isinstance(moved, Moved), moved
        assert (moved.shard, moved.address) == (2, workers[2].address)
    finally:
        assert stop_cluster(running) == 0


# --- 2. the 16 KiB head bound holds however the head arrives ------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_app_refuses_a_head_above_16_kib_with_431_problem_json() -> None:
    app = build_api(_metrics_core(), HttpApiConfig(enabled=True))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://w") as client:
        big = {"Idempotency-Key": "big-head", "X-Big": "a" * 70_000}
        answer = await client.post("/v1/payments", json=BODY, headers=big)
        assert answer.status_code == 431, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["connection"] == "close"
        problem = answer.json()
        assert problem["status"] == 431
        assert problem["title"] == "Request Header Fields Too Large"
        assert str(MAX_HEAD_BYTES) in problem["detail"]
        # Every route: the bound is the door's, not the payment route's.
        assert (await client.get("/openapi.json", headers=big)).status_code == 431
        # A large head within the bound reaches the route (here: 400, no key).
        within = await client.post("/v1/payments", json=BODY, headers={"X-Big": "a" * 15_000})
        assert within.status_code == 400, within.text


def _exact_head(size: int, key: str) -> bytes:
    """A POST whose request line and headers are exactly ``size`` bytes on the wire."""
    body = json.dumps(BODY).encode()
    head = (f"POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nX-Pad: ").encode()
    pad = size - len(head) - len(b"\r\n\r\n")
    data = head + b"p" * pad + b"\r\n\r\n"
    assert len(data) == size
    return data + body


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write on a new connection; all the server sent until it
    closed the connection."""
    answer = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        with anyio.fail_after(10):
            try:
                while True:
                    answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return answer


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
async def test_a_head_sent_whole_in_one_write_is_bounded_by_the_server_too(
        tmp_path: Path, server: str) -> None:
    config = make_config(tmp_path, f'[http]\nenabled = true\nport = 0\nserver = "{server}"\n')
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        port = switch.endpoints.http_port
        # The newcomer's request: one 70,000-byte header, one write. Refused, whichever
        # layer sees it first (uvicorn's count when it spans reads, Hypercorn's h11, or
        # the app's 431); it never reaches the payment route (which answered 422).
        huge = (b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: huge\r\n"
                b"Content-Type: application/json\r\nX-Big: " + b"a" * 70_000
                + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        answer = await _exchange(port, huge)
        status = answer.split(b" ", 2)[1] if answer else b""
        assert status in (b"400", b"431"), answer[:300]
        # The bound is exact, counted on the head as it was on the wire: 16,384 bytes in
        # one write reach the route, 16,385 are answered 431 problem+json by the app.
        at = await _exchange(port, _exact_head(MAX_HEAD_BYTES, "at-the-bound"))
        assert at.startswith(b"HTTP/1.1 201"), at[:300]
        over = await _exchange(port, _exact_head(MAX_HEAD_BYTES + 1, "over-the-bound"))
        assert over.startswith(b"HTTP/1.1 431"), over[:300]
        head, _, body = over.partition(b"\r\n\r\n")
        assert b"application/problem+json" in head.lower()
        assert f"{MAX_HEAD_BYTES + 1} bytes".encode() in body
        # Nothing was booked for the refused key; the door serves on.
        assert switch.app.front is not None
        assert switch.app.front.stored("over-the-bound") is None
        again = await _exchange(port, _exact_head(1000, "after"))
        assert again.startswith(b"HTTP/1.1 201"), again[:300]
        switch.app.request_shutdown()


# --- 3. an unknown op is unknown_op, in the reply and in the counter -----------------------


def test_an_unknown_op_is_answered_unknown_op() -> None:
    reply = decode_request(msgspec.msgpack.encode({"op": "nope", "id": 3}))
    assert isinstance(reply, ErrorReply)
    assert (reply.code, reply.id) == ("unknown_op", 3)
    assert "'nope'" in reply.message and "pay" in reply.message
    # A known op with a bad field, or an op that is not a string, stays `invalid`.
    assert decode_request(msgspec.msgpack.encode({"op": "pay", "id": 4})).code == "invalid"  # type: ignore[union-attr]
    assert decode_request(msgspec.msgpack.encode({"op": 7, "id": 5})).code == "invalid"  # type: ignore[union-attr]
    assert decode_request(msgspec.msgpack.encode({"id": 6})).code == "invalid"  # type: ignore[union-attr]


def _sample(switch: object, name: str, **labels: str) -> float:
    value = switch.app.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


async def test_an_unknown_op_is_counted_as_unknown_op_not_invalid(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        async with await anyio.connect_tcp("127.0.0.1", switch.endpoints.port) as stream:
            await stream.send(frame(msgspec.msgpack.encode({"op": "nope", "id": 3}))
                              + encode_request(Ping(4)))
            decoder = FrameDecoder()
            replies: list[object] = []
            with anyio.fail_after(10):
                while len(replies) < 2:
                    replies += [decode_response(p) for p in decoder.feed(await stream.receive())]
        error, pong = replies
        assert isinstance(error, ErrorReply) and error.code == "unknown_op", error
        assert isinstance(pong, Pong) and pong.id == 4  # the connection stays usable
        rejected = "payswitch_rejected_requests_total"
        assert _sample(switch, rejected, reason="unknown_op") == 1
        assert _sample(switch, rejected, reason="invalid") == 0
        # A frame that could not be used, of the catalogue's kind "invalid".
        assert _sample(switch, "payswitch_frame_errors_total", kind="invalid") == 1
        switch.app.request_shutdown()


# --- refusals before the core are counted, as the msgpack door counts its own ----------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_http_doors_own_refusals_are_counted_by_reason() -> None:
    # Only body errors, 421 and 503 were counted: a missing or bad key (400), a body too
    # large (413) and a head too large (431) left payswitch_rejected_requests_total flat.
    core = _metrics_core()
    app = build_api(core, HttpApiConfig(enabled=True, max_body_bytes=1024))  # type: ignore[arg-type]
    rejected = core.metrics.rejected
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://w") as client:
        assert (await client.post("/v1/payments", json=BODY)).status_code == 400
        long_key = {"Idempotency-Key": "k" * 65}
        assert (await client.post("/v1/payments", json=BODY, headers=long_key)).status_code == 400
        assert rejected["invalid"].value == 2
        big_body = {"Idempotency-Key": "big-body"}
        answer = await client.post("/v1/payments", content=b"x" * 2048, headers=big_body)
        assert answer.status_code == 413
        big_head = {"Idempotency-Key": "big-head", "X-Big": "a" * 70_000}
        assert (await client.post("/v1/payments", json=BODY, headers=big_head)).status_code == 431
        assert rejected["frame_too_large"].value == 2
