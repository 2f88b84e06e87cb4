"""One idempotency key limit, counted the same way on the HTTP and the msgpack doors.

The limit is ``switch.model.MAX_KEY_CHARS`` characters (docs/http-api.md, the OpenAPI
``maxLength``, the model's ``max_length``). The msgpack door counted characters; the HTTP
door counted the header's bytes (Starlette hands it decoded as latin-1, a character per
byte), so a key of 64 "é" or 64 "注" sent as UTF-8 was taken over msgpack and refused
over HTTP. Now both count characters, of the same text: the HTTP key is the header's
bytes read as UTF-8 (tests/test_idempotency_key_one_key.py), and a header that is not
UTF-8 is refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import msgspec
import msgspec.inspect
import pytest

from switch import reasons
from switch.model import MAX_KEY_CHARS, Party, PaymentRequest, QrData
from switch.observability.metrics import SwitchMetrics
from switch.protocols.payments_json import openapi_document
from switch.protocols.wire import (
    HEADER_BYTES,
    ErrorReply,
    Pay,
    Query,
    decode_request,
    encode_request,
)
from switch.serve.config import HttpApiConfig
from switch.serve.http_api import build_api

pytestmark = pytest.mark.anyio

#: Keys a client writes, and whether they are within the limit.
KEYS = {
    "a" * MAX_KEY_CHARS: True,
    "a" * (MAX_KEY_CHARS + 1): False,
    "é" * MAX_KEY_CHARS: True,  # 128 bytes of UTF-8
    "é" * (MAX_KEY_CHARS + 1): False,
    "注" * MAX_KEY_CHARS: True,  # 192 bytes
    "注" * (MAX_KEY_CHARS + 1): False,
    "🙂" * MAX_KEY_CHARS: True,  # 256 bytes
    "order-" + "ü" * (MAX_KEY_CHARS - 6): True,
}


def _id(key: str) -> str:
    return f"{key[-1]}x{len(key)}"


async def http_verdict(raw: bytes) -> tuple[bool, str]:
    """True when the HTTP door takes the key: an empty body then gets 422 (the key is
    checked before the body is read), a refused key 400."""
    core = SimpleNamespace(metrics=SwitchMetrics())
    app = build_api(core, HttpApiConfig(enabled=True))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://w") as client:
        answer = await client.post("/v1/payments", content=b"{}",
                                   headers=[(b"Idempotency-Key", raw)])
    assert answer.status_code in (400, 422), answer.text
    return answer.status_code == 422, answer.json()["detail"]


def msgpack_verdict(key: str) -> tuple[bool, bool]:
    """Whether the msgpack door takes ``key`` in a pay and in a query."""
    payment = PaymentRequest(key, "qr", 100, "CNY", Party("ACCT000001"), Party("MERCH00001"),
                             qr=QrData("0" * 20))
    pay = decode_request(encode_request(Pay(1, payment))[HEADER_BYTES:])
    query = decode_request(encode_request(Query(2, key))[HEADER_BYTES:])
    for decoded in (pay, query):
        if isinstance(decoded, ErrorReply):
            assert decoded.code == reasons.E_INVALID
            assert f"<= {MAX_KEY_CHARS}" in decoded.message, decoded.message
    return not isinstance(pay, ErrorReply), not isinstance(query, ErrorReply)


@pytest.mark.parametrize("key", list(KEYS), ids=_id)
async def test_http_door_counts_the_keys_characters(key: str) -> None:
    taken, detail = await http_verdict(key.encode())
    assert taken == KEYS[key], detail
    if not taken:
        assert detail == f"Idempotency-Key is longer than {MAX_KEY_CHARS} characters"


@pytest.mark.parametrize("key", list(KEYS), ids=_id)
def test_msgpack_door_counts_the_keys_characters(key: str) -> None:
    assert msgpack_verdict(key) == (KEYS[key], KEYS[key])


@pytest.mark.parametrize("key", list(KEYS), ids=_id)
async def test_the_same_key_gets_the_same_verdict_at_both_doors(key: str) -> None:
    http, _ = await http_verdict(key.encode())
    assert (http, http) == msgpack_verdict(key)


@pytest.mark.parametrize("n", [1, MAX_KEY_CHARS, MAX_KEY_CHARS + 1])
async def test_a_header_that_is_not_utf8_is_refused_whatever_its_length(n: int) -> None:
    taken, detail = await http_verdict(b"\xe9" * n)  # latin-1 "é", not UTF-8
    assert not taken
    assert detail == ("Idempotency-Key is not UTF-8 text (byte 0: 0xe9); "
                      "send the key as UTF-8")


def test_one_limit_everywhere_it_is_stated() -> None:
    from switch.model import IdempotencyKey

    info = msgspec.inspect.type_info(IdempotencyKey)
    assert isinstance(info, msgspec.inspect.StrType)
    assert (info.min_length, info.max_length) == (1, MAX_KEY_CHARS)
    header = openapi_document()["paths"]["/v1/payments"]["post"]["parameters"][0]
    assert header["schema"]["maxLength"] == MAX_KEY_CHARS
    with pytest.raises(msgspec.ValidationError, match=f"length <= {MAX_KEY_CHARS}"):
        msgspec.convert("x" * (MAX_KEY_CHARS + 1), IdempotencyKey)
