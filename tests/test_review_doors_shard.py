"""Review: every entry point maps an Idempotency-Key to the shard HAProxy routes it to.

HAProxy routes ``POST /v1/payments`` by ``req.fhdr(Idempotency-Key,1),crc32,mod(N)``: the
CRC-32 of the header's raw bytes. Starlette hands the worker the header decoded as
latin-1, and the worker's ownership check re-encoded it as UTF-8, so for any non-ASCII
key it hashed other bytes than HAProxy did: HAProxy sent the payment to its shard and
that worker answered 421 ``moved``. The msgpack door and the cluster client hash the
key's UTF-8 bytes, which are the header's raw bytes when a client sends the same key as
UTF-8, so they already agree with HAProxy; the ISO 8583 door hashes nothing (affinity by
connection, keys of its own under the ``iso:`` prefix). A header that is not UTF-8 is
refused (400) by every worker: the HTTP key is the header's bytes read as UTF-8.
"""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import httpx
import pytest

from switch.observability.metrics import SwitchMetrics
from switch.protocols.shardmap import ShardMap, shard_of
from switch.serve.config import HttpApiConfig
from switch.serve.http_api import build_api

SHARDS = 3
MAP = ShardMap([f"127.0.0.1:{7000 + i}" for i in range(SHARDS)])


def haproxy_shard(raw: bytes) -> int:
    """What HAProxy's ``crc32,mod(N)`` computes over the header's bytes."""
    return zlib.crc32(raw) % SHARDS


#: Raw header values whose latin-1-decoded, UTF-8-re-encoded form hashes elsewhere (two
#: of every kind): UTF-8 keys, what a client sending "café" puts on the wire, and keys
#: that are not UTF-8 at all (HAProxy hashes those bytes too).
def _differing(candidates: list[bytes]) -> list[bytes]:
    return [raw for raw in candidates
            if haproxy_shard(raw) != zlib.crc32(raw.decode("latin-1").encode()) % SHARDS][:2]


RAW_KEYS = (_differing([f"café-{i:04d}".encode() for i in range(20)])
            + _differing([f"注文-{i}".encode() for i in range(20)])
            + _differing([f"order-\xe9-{i}".encode("latin-1") for i in range(20)]))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_the_keys_tell_the_two_hashes_apart() -> None:
    assert len(RAW_KEYS) == 6  # else the tests below would prove nothing


@pytest.mark.parametrize("raw", RAW_KEYS, ids=lambda r: r.hex())
async def test_http_worker_owns_what_haproxy_routes_to_it(raw: bytes) -> None:
    owner = haproxy_shard(raw)
    core = SimpleNamespace(metrics=SwitchMetrics())
    verdicts = {}
    for shard in range(SHARDS):
        app = build_api(core, HttpApiConfig(enabled=True), MAP, shard)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
            # The ownership check comes before the body is read: an owner answers the
            # empty body 422, any other worker 421.
            answer = await client.post("/v1/payments", content=b"{}",
                                       headers=[(b"Idempotency-Key", raw)])
        verdicts[shard] = answer.status_code
    if not _is_utf8(raw):
        # Not UTF-8: no key a msgpack client could send; refused by every worker alike
        # (400, before any ownership check), never moved.
        assert set(verdicts.values()) == {400}, verdicts
        return
    assert verdicts[owner] != 421, verdicts
    assert [s for s, status in verdicts.items() if status != 421] == [owner], verdicts


@pytest.mark.parametrize("raw", [r for r in RAW_KEYS if _is_utf8(r)], ids=lambda r: r.hex())
def test_msgpack_door_and_cluster_client_agree_with_haproxy(raw: bytes) -> None:
    # A msgpack key is a str, sent as UTF-8; the same key over HTTP is those bytes.
    key = raw.decode()
    assert shard_of(key, SHARDS) == haproxy_shard(raw)
    assert MAP.owner(key) == haproxy_shard(raw)  # the cluster client's and loadgen's map


pytestmark = pytest.mark.anyio
