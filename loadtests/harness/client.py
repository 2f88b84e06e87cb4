"""An async client for the switch protocol, with pipelining.

Requests get increasing ids; one reader task matches replies to waiters by id, so any
number of requests (up to ``max_pending``) can be outstanding on one connection and the
replies may arrive in any order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from switch.model import PaymentRequest
from switch.protocols.wire import (
    FrameDecoder,
    Pay,
    Ping,
    Query,
    Request,
    Response,
    decode_response,
    encode_request,
)


class _Waiter:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.response: Response | None = None


class SwitchClient:
    def __init__(self, stream: anyio.abc.ByteStream, max_pending: int = 4096) -> None:
        self._stream = stream
        self._next_id = 0
        self._waiters: dict[int, _Waiter] = {}
        self._limit = anyio.Semaphore(max_pending)
        self._send_lock = anyio.Lock()  # one writer at a time on the stream
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, host: str, port: int, **kwargs: Any) -> AsyncIterator[SwitchClient]:
        stream = await anyio.connect_tcp(host, port)
        async with cls.over(stream, **kwargs) as client:
            yield client

    @classmethod
    @asynccontextmanager
    async def over(cls, stream: anyio.abc.ByteStream, **kwargs: Any) -> AsyncIterator[SwitchClient]:
        client = cls(stream, **kwargs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read_loop)
            try:
                yield client
            finally:
                # Closing the stream ends the reader on its own. Cancelling the task
                # group here instead would swallow an exception raised by the body.
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(16 * 1024 * 1024)
        try:
            while True:
                data = await self._stream.receive(65536)
                for payload in decoder.feed(data):
                    response = decode_response(payload)
                    waiter = (
                        self._waiters.pop(response.id, None) if response.id is not None else None
                    )
                    if waiter is not None:
                        waiter.response = response
                        waiter.event.set()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()

    async def request(self, build: Any) -> Response:
        """Send ``build(id)`` and wait for its reply. Raises ConnectionError if closed."""
        async with self._limit:
            if self._closed:
                # The reader is gone: nothing would ever answer (a send into a socket the
                # peer closed can still succeed once).
                raise ConnectionError("connection closed")
            self._next_id += 1
            request_id = self._next_id
            waiter = _Waiter()
            self._waiters[request_id] = waiter
            message: Request = build(request_id)
            try:
                async with self._send_lock:
                    await self._stream.send(encode_request(message))
                await waiter.event.wait()
            finally:
                self._waiters.pop(request_id, None)
            if waiter.response is None:
                raise ConnectionError("connection closed before the reply")
            return waiter.response

    async def pay(self, payment: PaymentRequest) -> Response:
        return await self.request(lambda rid: Pay(rid, payment))

    async def query(self, idempotency_key: str) -> Response:
        return await self.request(lambda rid: Query(rid, idempotency_key))

    async def ping(self) -> Response:
        return await self.request(lambda rid: Ping(rid))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: for tests of malformed and oversized frames."""
        async with self._send_lock:
            await self._stream.send(data)
