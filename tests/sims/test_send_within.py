"""A network's own push (SWIFT's settlement notification) to a peer that stops reading.

The write is bounded, so settlement is never stalled by one peer. A write its timeout cut
may have left part of a frame on the wire: under trio a large frame goes out in chunks, so
the peer would read the next frame's bytes as the rest of the cut one. The connection is
closed instead, and nothing more is written to it.
"""

from __future__ import annotations

import socket

import anyio
import pytest

from channels.tcp import SimConnection

pytestmark = pytest.mark.anyio

#: Far more than a loopback socket's send and receive buffers hold together.
BIG = 32 << 20


async def _pair() -> tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted: list[anyio.abc.SocketStream] = []

    async def accept_one() -> None:
        accepted.append(await listener.listeners[0].accept())  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        tg.start_soon(accept_one)
        client = await anyio.connect_tcp("127.0.0.1", port)
    await listener.aclose()
    # Small buffers: the peer "stops reading" as soon as they are full.
    for stream in (client, accepted[0]):
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    return accepted[0], client


async def test_a_write_cut_by_its_timeout_closes_the_connection() -> None:
    server_side, client = await _pair()
    conn = SimConnection(1, server_side)
    with anyio.fail_after(10):
        sent = await conn.send_within(b"x" * BIG, timeout_s=0.2)
    assert sent is False
    assert not conn.alive, "a connection whose framing is unknown stays in use"
    # Nothing follows the cut frame: the next write is refused, not appended to it.
    assert await conn.send(b"next frame") is False
    await server_side.aclose()
    received = 0
    with anyio.fail_after(10):
        while True:
            try:
                received += len(await client.receive(1 << 20))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    await client.aclose()
    assert received < BIG  # the frame was cut: the peer must not read past it


async def test_a_write_within_its_timeout_keeps_the_connection() -> None:
    server_side, client = await _pair()
    conn = SimConnection(1, server_side)
    assert await conn.send_within(b"frame", timeout_s=5.0) is True
    assert conn.alive
    assert await client.receive(64) == b"frame"
    await server_side.aclose()
    await client.aclose()
