"""A non-ASCII idempotency key is one key through the HTTP and the msgpack doors.

The msgpack door's key is a str, UTF-8 on the wire. The HTTP door took the
``Idempotency-Key`` header as Starlette hands it, decoded as latin-1: a client sending the
key "café-注文" as UTF-8 (what curl, browsers and HAProxy pass on) was booked under
"cafÃ©-æ³¨æ\x96\x87", so the same key and body sent through the other door was a second
payment, and another body was no conflict. The HTTP key is the header's bytes read as
UTF-8 now, strictly: a header that is not UTF-8 names no key a msgpack client could send,
and is refused with 400 naming the header (the msgpack door refuses such a string as a
``malformed`` frame). Both doors count the key's length in characters after decoding
(tests/test_idempotency_key_length.py).

Under asyncio the HTTP door runs on uvicorn (httptools), under trio on Hypercorn (h11):
both hand the app the header's raw bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from switch import reasons
from switch.model import MAX_KEY_CHARS, PaymentRequest
from switch.protocols.payments_json import PaymentBody, to_request
from switch.protocols.wire import (
    ErrorReply,
    FrameDecoder,
    Pay,
    Query,
    Reply,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    frame,
)
from switch.serve.http_api import idempotency_key
from tests.conftest import RunningSwitch, make_config, start_switch

pytestmark = pytest.mark.anyio

BODY: dict[str, Any] = {
    "channel": "card", "amount": 1250, "currency": "USD",
    "payer": {"account": "ACCT000001"}, "payee": {"account": "MERCH00001"},
    "card": {"pan": "4111111111111111", "expiry": "2812"},
}
OTHER_BODY = {**BODY, "amount": 999}


def payment(key: str, body: dict[str, Any]) -> PaymentRequest:
    """The msgpack door's payment for ``body``: the request the HTTP door makes of it."""
    return to_request(msgspec.convert(body, PaymentBody), key)


async def http_post(switch: RunningSwitch, raw_key: bytes,
                    body: dict[str, Any]) -> httpx.Response:
    """POST with the key's raw bytes in the header, as curl sends a UTF-8 key."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{switch.endpoints.http_port}",
                                 timeout=30) as client:
        return await client.post("/v1/payments", content=json.dumps(body).encode(),
                                 headers=[(b"Idempotency-Key", raw_key),
                                          (b"Content-Type", b"application/json")])


async def msgpack(switch: RunningSwitch, request: Request | bytes) -> Response:
    """One request (or a raw frame payload) over the msgpack door, and its reply."""
    data = frame(request) if isinstance(request, bytes) else encode_request(request)
    async with await anyio.connect_tcp("127.0.0.1", switch.endpoints.port) as stream:
        await stream.send(data)
        decoder = FrameDecoder()
        with anyio.fail_after(10):
            while True:
                frames = decoder.feed(await stream.receive())
                if frames:
                    return decode_response(frames[0])


KEYS = ["café-注文-1", "ключ-🙂", "é" * MAX_KEY_CHARS]


async def test_a_utf8_key_sent_over_http_first_is_the_same_key_over_msgpack(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        for n, key in enumerate(KEYS):
            first = await http_post(switch, key.encode(), BODY)
            assert first.status_code == 201, first.text
            booked = first.json()
            assert booked["idempotency_key"] == key  # not its latin-1 reading
            # The same key and body through the other door: the stored result.
            replay = await msgpack(switch, Pay(10 + n, payment(key, BODY)))
            assert isinstance(replay, Reply), replay
            assert replay.replay
            assert replay.result.payment_id == booked["payment_id"]
            # Another body under the same key: refused, as over HTTP.
            conflict = await msgpack(switch, Pay(20 + n, payment(key, OTHER_BODY)))
            assert isinstance(conflict, ErrorReply), conflict
            assert conflict.code == reasons.E_IDEMPOTENCY_CONFLICT
            # A query by the key finds it too.
            found = await msgpack(switch, Query(30 + n, key))
            assert isinstance(found, Reply), found
            assert found.result.payment_id == booked["payment_id"]
        switch.app.request_shutdown()


async def test_a_key_sent_over_msgpack_first_is_the_same_key_over_http(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        for n, key in enumerate(KEYS):
            first = await msgpack(switch, Pay(n, payment(key, BODY)))
            assert isinstance(first, Reply) and not first.replay, first
            replay = await http_post(switch, key.encode(), BODY)
            assert replay.status_code == 201, replay.text
            assert replay.headers.get("idempotent-replayed") == "true"
            assert replay.json()["payment_id"] == first.result.payment_id
            assert replay.json()["idempotency_key"] == key
            conflict = await http_post(switch, key.encode(), OTHER_BODY)
            assert conflict.status_code == 422, conflict.text
            assert conflict.json()["code"] == reasons.E_IDEMPOTENCY_CONFLICT
        switch.app.request_shutdown()


async def test_a_key_that_is_not_utf8_is_refused_by_both_doors(tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    raw = "café".encode("latin-1")  # b"caf\xe9": not UTF-8
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        answer = await http_post(switch, raw, BODY)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["type"].endswith("/idempotency-key-invalid")
        assert problem["detail"] == ("Idempotency-Key is not UTF-8 text (byte 3: 0xe9); "
                                     "send the key as UTF-8")
        # Nothing was booked under its latin-1 reading.
        assert switch.app.front is not None
        assert switch.app.front.stored("café") is None
        # The msgpack door cannot carry such a key at all: a str must be UTF-8.
        pay = msgspec.msgpack.encode(Pay(1, payment("cafX", BODY))).replace(b"cafX", raw)
        refused = await msgpack(switch, pay)
        assert isinstance(refused, ErrorReply), refused
        assert refused.code == reasons.E_MALFORMED
        switch.app.request_shutdown()


@pytest.mark.parametrize("key", ["order-1", "café-注文-1", "🙂" * MAX_KEY_CHARS])
def test_the_http_key_is_the_msgpack_key_of_the_same_text(key: str) -> None:
    assert idempotency_key(key.encode()) == (key, "")
    decoded = decode_request(msgspec.msgpack.encode(Query(1, key)))
    assert isinstance(decoded, Query) and decoded.idempotency_key == key


@pytest.mark.parametrize(("raw", "why"), [
    (b"\xff", "Idempotency-Key is not UTF-8 text (byte 0: 0xff); send the key as UTF-8"),
    ("a-é".encode()[:-1], "Idempotency-Key is not UTF-8 text (byte 2: 0xc3); send the key "
                           "as UTF-8"),
    (b"\xed\xa0\x80", "Idempotency-Key is not UTF-8 text (byte 0: 0xed); send the key as "
                      "UTF-8"),  # an encoded surrogate
    ("é".encode() * (MAX_KEY_CHARS + 1),
     f"Idempotency-Key is longer than {MAX_KEY_CHARS} characters"),
    (b"iso:x", "Idempotency-Key may not begin with 'iso:': the ISO 8583 door's keys do"),
])
def test_a_refused_header_is_named_with_its_rule(raw: bytes, why: str) -> None:
    assert idempotency_key(raw) == ("", why)
