"""A msgpack client for a sharded cluster: it routes each key to its owner, follows
``moved`` redirects and caches the shard map, as Redis Cluster clients do.

On connect it asks the seed address for the map (``shards``); a standalone switch answers
an empty map and everything goes to the seed. A key is sent to its owner
(switch/protocols/shardmap.py). If a worker answers ``moved`` (the client's map was
missing or stale), the client takes the map from the owner it names and resends there,
at most ``max_redirects`` times. An owner that cannot be reached is answered here with an
``unavailable`` error naming the shard, not an exception: its shard is down until its
worker restarts, and the caller retries the same key later.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc

from loadtests.harness.client import SwitchClient
from switch import reasons
from switch.model import PaymentRequest
from switch.protocols.shardmap import ShardMap, join_address, shard_of, split_address
from switch.protocols.wire import (
    ErrorReply,
    Moved,
    Pay,
    Query,
    Response,
    ShardMapReply,
    Shards,
)

MAX_REDIRECTS: Final = 3
_GONE: Final = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                anyio.EndOfStream)


class ClusterClient:
    def __init__(self, seed: str, tg: anyio.abc.TaskGroup, *, discover: bool = True,
                 max_redirects: int = MAX_REDIRECTS, **client_args: Any) -> None:
        self.seed = seed
        self._tg = tg
        self._streams: list[anyio.abc.ByteStream] = []
        self._discover = discover
        self.max_redirects = max_redirects
        self._client_args = client_args
        self._clients: dict[str, SwitchClient] = {}
        self._connecting: dict[str, anyio.Lock] = {}
        self.map = ShardMap()
        #: Redirects followed and maps fetched: how often the cache was missing or stale.
        self.redirects = 0
        self.map_fetches = 0

    @classmethod
    @asynccontextmanager
    async def connect(cls, host: str, port: int, **kwargs: Any) -> AsyncIterator[ClusterClient]:
        async with anyio.create_task_group() as tg:
            client = cls(join_address(host, port), tg, **kwargs)
            try:
                if client._discover:
                    await client.refresh_map(client.seed)
                yield client
            finally:
                # Closing the streams ends every reader task, so the group exits.
                with anyio.CancelScope(shield=True):
                    for stream in client._streams:
                        await stream.aclose()

    async def _client(self, address: str) -> SwitchClient:
        client = self._clients.get(address)
        if client is not None and not client._closed:
            return client
        lock = self._connecting.setdefault(address, anyio.Lock())
        async with lock:
            client = self._clients.get(address)
            if client is None or client._closed:
                host, port = split_address(address)
                stream = await anyio.connect_tcp(host, port)
                self._streams.append(stream)
                client = SwitchClient(stream, **self._client_args)
                self._tg.start_soon(client._read_loop)
                self._clients[address] = client
        return client

    async def refresh_map(self, address: str) -> None:
        """Take the shard map from ``address`` (the seed, or an owner named by ``moved``)."""
        client = await self._client(address)
        reply = await client.request(Shards)
        if isinstance(reply, ShardMapReply):
            self.map = ShardMap(reply.addresses)
            self.map_fetches += 1

    def owner_address(self, key: str) -> tuple[int, str]:
        if not self.map.addresses:
            return 0, self.seed
        owner = shard_of(key, len(self.map.addresses))
        return owner, self.map.addresses[owner]

    async def _send(self, key: str, build: Any) -> Response:
        shard, address = self.owner_address(key)
        for _ in range(self.max_redirects + 1):
            try:
                client = await self._client(address)
                response: Response = await client.request(build)
            except _GONE as exc:  # refused, reset, closed: the owner's worker is down
                self._forget(address)
                return ErrorReply(None, reasons.E_UNAVAILABLE,
                                  f"shard {shard} ({address}) is unavailable: "
                                  f"{exc or type(exc).__name__}")
            if not isinstance(response, Moved):
                return response
            self.redirects += 1
            shard, address = response.shard, response.address
            with contextlib.suppress(OSError):
                await self.refresh_map(address)
        return ErrorReply(None, reasons.E_MOVED,
                          f"{key!r}: more than {self.max_redirects} redirects")

    def _forget(self, address: str) -> None:
        # A later request reconnects (the worker restarted); the stream is closed at exit.
        self._clients.pop(address, None)

    async def pay(self, payment: PaymentRequest) -> Response:
        return await self._send(payment.idempotency_key, lambda rid: Pay(rid, payment))

    async def query(self, idempotency_key: str) -> Response:
        return await self._send(idempotency_key, lambda rid: Query(rid, idempotency_key))

