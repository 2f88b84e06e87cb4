"""A real cluster: `payswitch serve --workers 3` behind a real HAProxy.

Repeated keys through every entry point (HTTP via HAProxy, msgpack through the
map-caching client, msgpack sent to the wrong worker and redirected, HTTP straight to a
wrong worker): each key is booked exactly once, on the shard that owns it, and every
answer for a key names the same payment.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import (
    Cluster,
    audit_cluster,
    free_port,
    start_cluster,
    start_haproxy_for,
    stop_cluster,
    stop_haproxy,
)
from switch.protocols.shardmap import shard_of, split_address
from switch.protocols.wire import Moved, Reply
from tests.payments import card_payment

CONFIG = """
seed = 11
[server]
port = 0
[admin]
port = 0
[http]
enabled = true
port = 0
[journal]
path = "{journal}"
"""

BODY = {
    "channel": "card", "amount": 1000, "currency": "USD",
    "payer": {"account": "ACCT000001"}, "payee": {"account": "MERCH00001"},
    "card": {"pan": "4111111111111111", "expiry": "2812"},
}


@contextmanager
def behind_haproxy(tmp_path: Path, restart_delay_s: float, *,
                   clean_stop: bool) -> Iterator[tuple[Cluster, str]]:
    """Three workers of CONFIG behind a real HAProxy: the cluster and HAProxy's URL.
    ``clean_stop``: every worker must exit 0 at the end (not after a kill -9 test)."""
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 3, restart_delay_s=restart_delay_s)
    port = free_port()
    haproxy = start_haproxy_for(running, port)
    try:
        yield running, f"http://127.0.0.1:{port}"
    finally:
        stop_haproxy(haproxy)
        code = stop_cluster(running)
        assert code == 0 or not clean_stop, code


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    with behind_haproxy(tmp_path, 4.0, clean_stop=True) as running:
        yield running


def test_shard_function_is_crc32_mod_n() -> None:
    # The function HAProxy's `crc32,mod(N)` computes; the live test checks HAProxy agrees.
    assert shard_of("k-1", 3) == zlib.crc32(b"k-1") % 3
    assert shard_of("anything", 1) == 0
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"key-{i}", 3)] += 1
    assert min(counts) > 800  # spread over every shard


def post(client: httpx.Client, url: str, key: str) -> httpx.Response:
    return client.post(url + "/v1/payments", json=BODY, headers={"Idempotency-Key": key})


def test_repeated_keys_through_every_entry_point_are_booked_once(
        cluster: tuple[Cluster, str]) -> None:
    running, front = cluster
    layout = running.layout
    keys = [f"order-{i}" for i in range(240)]
    owners = {k: shard_of(k, 3) for k in keys}
    assert set(owners.values()) == {0, 1, 2}
    answers: dict[str, set[str]] = {k: set() for k in keys}
    rng = random.Random(5)

    # 1. HTTP through HAProxy, each key twice (the second is a replay).
    with httpx.Client(timeout=30) as http:
        for key in keys[:120]:
            first = post(http, front, key)
            assert first.status_code == 201, first.text
            again = post(http, front, key)
            assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
            answers[key] |= {first.json()["payment_id"], again.json()["payment_id"]}
        # HTTP straight to a worker that does not own the key: 421 naming the owner.
        key = next(k for k in keys if owners[k] != 0)
        direct = f"http://{layout.workers[0].host}:{layout.workers[0].http_port}"
        wrong = post(http, direct, key)
        assert wrong.status_code == 421, wrong.text
        assert wrong.json()["code"] == "moved"
        assert layout.workers[owners[key]].address in wrong.json()["detail"]

    async def msgpack() -> dict[str, Any]:
        seen: dict[str, Any] = {"redirects": 0}
        w0 = layout.workers[0]
        # 2. msgpack through the client that fetches and caches the map, every key, in
        #    shuffled order and concurrently (half of them already booked over HTTP).
        async with ClusterClient.connect(w0.host, w0.port) as smart:
            assert smart.map.addresses == layout.shard_map.addresses
            order = keys + keys[::3]
            rng.shuffle(order)

            async def one(key: str) -> None:
                reply = await smart.pay(card_payment(key=key, amount=1000))
                assert isinstance(reply, Reply), reply
                answers[key].add(reply.result.payment_id)

            async with anyio.create_task_group() as tg:
                for key in order:
                    tg.start_soon(one, key)
            assert smart.redirects == 0
        # 3. msgpack from a client that knows no map and always starts at worker 0: a key
        #    owned elsewhere is answered `moved`; the client follows and caches the map.
        async with ClusterClient.connect(w0.host, w0.port, discover=False) as naive:
            for key in keys[::2]:
                reply = await naive.pay(card_payment(key=key, amount=1000))
                assert isinstance(reply, Reply), reply
                answers[key].add(reply.result.payment_id)
            seen["redirects"] = naive.redirects
            seen["map"] = list(naive.map.addresses)
            # A query for a key owned elsewhere is redirected the same way.
            reply = await naive.query(keys[1])
            assert isinstance(reply, Reply) and reply.replay
        # The raw protocol: worker 0 answers `moved` for a key it does not own.
        from loadtests.harness.client import SwitchClient

        key = next(k for k in keys if owners[k] == 2)
        async with SwitchClient.connect(w0.host, w0.port) as raw:
            moved = await raw.pay(card_payment(key=key))
        assert isinstance(moved, Moved), moved
        assert (moved.shard, moved.shards) == (2, 3)
        assert split_address(moved.address) == (layout.workers[2].host, layout.workers[2].port)
        return seen

    seen = anyio.run(msgpack)
    # The naive client was redirected once at most per owner other than 0, then cached.
    assert 1 <= seen["redirects"] <= 2
    assert seen["map"] == layout.shard_map.addresses

    # Every entry point gave one answer per key: one payment each.
    assert all(len(ids) == 1 for ids in answers.values()), {
        k: v for k, v in answers.items() if len(v) != 1}
    # GET /v1/payments/{id} through HAProxy reaches the shard that booked it: the id
    # names the shard (boot * N + shard), whichever door the payment came in by.
    with httpx.Client(timeout=30) as http:
        for key in keys[::7]:
            (pid,) = answers[key]
            found = http.get(f"{front}/v1/payments/{pid}")
            assert found.status_code == 200, (key, pid, found.text)
            assert (found.json()["payment_id"], found.json()["idempotency_key"]) == (pid, key)
    running_state = dict(running.state)
    stop_cluster(running)
    audit = audit_cluster(layout, {k: next(iter(v)) for k, v in answers.items()})
    assert audit.finals == len(keys)
    assert audit.duplicates_within == 0 and audit.duplicates_across == 0
    assert audit.lost_keys == [] and audit.misplaced == 0
    assert len(running_state["workers"]) == 3


def test_workers_of_one_cluster_never_share_a_stan() -> None:
    from switch.adapters.trace import MemoryTraceStore, ShardTraceNumbers

    seen: dict[int, int] = {}
    for shard in range(3):
        trace = ShardTraceNumbers(MemoryTraceStore(), shard=shard, shards=3, block=50)
        for _ in range(400_000):  # past the slice's end: it wraps inside the slice
            n = trace.next()
            assert seen.setdefault(n, shard) == shard, (n, shard)
    assert len(seen) == 3 * (999_999 // 3)


@pytest.mark.parametrize("shards", [2, 4, 5])
@pytest.mark.parametrize("max_value", [999_999, 10**12 - 1], ids=["stan", "rrn"])
def test_a_worker_never_repeats_a_number_across_the_wrap(shards: int, max_value: int) -> None:
    # When shards does not divide the cycle, its tail mapped onto the slice's first
    # numbers, which came again right after the wrap: ..., 499999, 1, 1, 2.
    from switch.adapters.trace import MemoryTraceStore, ShardTraceNumbers

    trace = ShardTraceNumbers(MemoryTraceStore(max_value - 4), shard=0, shards=shards,
                              max_value=max_value)
    got = [trace.next() for _ in range(12)]
    assert len(set(got)) == len(got), got
    assert all(1 <= n <= max_value // shards for n in got), got


def test_payment_ids_are_numbered_apart_per_shard() -> None:
    from switch.serve.app import _boot_identity

    ids = {_boot_identity(boot, shard, 3) for boot in range(1, 50) for shard in range(3)}
    assert len(ids) == 49 * 3
    assert _boot_identity(7, 0, 1) == 7  # standalone: unchanged
