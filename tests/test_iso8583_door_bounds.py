"""The ISO 8583 door's connection bounds: a peer that never reads its answers, silent and
idle connections, idle eviction at the connection limit, and the per-source limit.

The same bounds as the msgpack server's (tests/test_server_bounds.py), through the
logic both doors share (switch/serve/conntable.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import anyio.abc
import iso8583
import pytest

from switch.serve.config import Iso8583DoorConfig, SwitchConfig
from switch.serve.iso8583_door import Iso8583Door
from tests.conftest import make_config, start_switch
from tests.test_iso8583_door import make_spec
from tests.test_server_bounds import _closed_by_server, _NeverReads, _until

pytestmark = pytest.mark.anyio

SPEC = make_spec(False)


def _echo(stan: int) -> bytes:
    """A framed 0800 echo test: answered at once, outside the in-flight bound."""
    raw, _ = iso8583.encode({"t": "0800", "7": "1125101500", "11": f"{stan:06d}",
                             "70": "301"}, SPEC)
    return struct.pack(">H", len(raw)) + bytes(raw)


def _config(tmp_path: Path, door: str) -> SwitchConfig:
    return make_config(tmp_path, f"[iso8583]\nenabled = true\nport = 0\n{door}\n")


def _door(switch_door: Iso8583Door | None) -> Iso8583Door:
    assert switch_door is not None
    return switch_door


async def _exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return data


async def _answered(stream: anyio.abc.ByteStream, stan: int) -> bool:
    """Send an echo and read its 0810; False if the door closed the connection instead."""
    try:
        await stream.send(_echo(stan))
        with anyio.fail_after(5):
            (size,) = struct.unpack(">H", await _exactly(stream, 2))
            data = await _exactly(stream, size)
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    doc, _ = iso8583.decode(bytearray(data), SPEC)
    return doc["t"] == "0810" and doc["11"] == f"{stan:06d}" and doc["39"] == "00"


def test_the_bounds_default_like_the_msgpack_doors() -> None:
    cfg = Iso8583DoorConfig()
    assert cfg.max_reply_buffer_bytes == 8 << 20
    assert (cfg.handshake_timeout_s, cfg.idle_timeout_s) == (10.0, 300.0)
    assert cfg.max_connections_per_source <= cfg.max_connections


async def test_a_peer_that_never_reads_is_disconnected(tmp_path: Path) -> None:
    # 20,000 echoes answer with ~1.2 MB, far past a 64 KiB bound; the peer's window is full
    # from the first write, so every answer after it would stay buffered.
    config = _config(tmp_path, "max_reply_buffer_bytes = 65536")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        door = _door(switch.app.iso_door)
        stream = _NeverReads(b"".join(_echo(i) for i in range(20_000)))
        with anyio.fail_after(10):
            await door.handle_connection(stream)
        assert stream.closed.is_set() and door.connections == 0
        assert door.counts["reply_buffer_full"] == 1  # closed, and said so, once
        # Its neighbours are not disturbed: a new acquirer is answered.
        acquirer = await anyio.connect_tcp("127.0.0.1", switch.endpoints.iso8583_port)
        assert await _answered(acquirer, 1)
        await acquirer.aclose()
        switch.app.request_shutdown()


async def test_silent_and_idle_connections_are_closed(tmp_path: Path) -> None:
    config = _config(tmp_path, "handshake_timeout_s = 0.3\nidle_timeout_s = 0.6")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        port = switch.endpoints.iso8583_port
        silent = await anyio.connect_tcp("127.0.0.1", port)
        await _closed_by_server(silent, within_s=3)
        acquirer = await anyio.connect_tcp("127.0.0.1", port)
        assert await _answered(acquirer, 2)
        await _closed_by_server(acquirer, within_s=3)  # then idle: the door hangs up
        await silent.aclose()
        await acquirer.aclose()
        switch.app.request_shutdown()


async def test_a_keep_alive_counts_as_the_first_frame(tmp_path: Path) -> None:
    config = _config(tmp_path, "handshake_timeout_s = 0.3\nidle_timeout_s = 30")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        door = _door(switch.app.iso_door)
        stream = await anyio.connect_tcp("127.0.0.1", switch.endpoints.iso8583_port)
        await stream.send(b"\x00\x00")  # a zero-length frame, as some hosts keep alive
        await anyio.sleep(1.2)  # past the handshake timeout, two sweeps and more
        assert door.connections == 1
        assert await _answered(stream, 3)
        await stream.aclose()
        switch.app.request_shutdown()


async def test_idle_sockets_cannot_lock_acquirers_out(tmp_path: Path) -> None:
    config = _config(tmp_path, "max_connections = 2")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        door = _door(switch.app.iso_door)
        port = switch.endpoints.iso8583_port
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        await _until(lambda: door.connections == 2)
        acquirer = await anyio.connect_tcp("127.0.0.1", port)
        assert await _answered(acquirer, 4)
        # An idle one was closed to make room: the acquirer was not refused.
        await _until(lambda: door.connections == 2)
        assert door.counts["refused_connection"] == 0
        for stream in [*idle, acquirer]:
            await stream.aclose()
        switch.app.request_shutdown()


async def test_connections_per_source_are_bounded(tmp_path: Path) -> None:
    config = _config(tmp_path, "max_connections_per_source = 2")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        door = _door(switch.app.iso_door)
        port = switch.endpoints.iso8583_port
        keep = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        for i, stream in enumerate(keep):
            assert await _answered(stream, 10 + i)
        extra = await anyio.connect_tcp("127.0.0.1", port)
        assert await _closed_by_server(extra, within_s=3) == b""
        assert door.counts["refused_connection"] == 1 and door.connections == 2
        for stream in [*keep, extra]:
            await stream.aclose()
        switch.app.request_shutdown()


class _HeldStream:
    """A peer that takes a write only when the test lets it."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.written = b""

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.written += data


async def test_the_drain_waits_until_every_queued_answer_is_sent() -> None:
    # The connections are cancelled right after the drain: an answer still queued then
    # was lost at shutdown, though its payment was journaled.
    from types import SimpleNamespace

    from switch.serve.iso8583_door import _Conn

    door = Iso8583Door(SimpleNamespace(), Iso8583DoorConfig())  # type: ignore[arg-type]
    stream = _HeldStream()
    conn = _Conn(stream, "local", 0.0)  # type: ignore[arg-type]
    door._conns.add(conn)
    conn.out += b"the last answer"
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.write_loop)
        await anyio.sleep(0.01)  # the writer is inside its send
        drained = False

        async def drain() -> None:
            nonlocal drained
            drained = await door.drain(5.0)

        tg.start_soon(drain)
        await anyio.sleep(0.05)
        assert not drained and conn.sending
        stream.gate.set()
        await _until(lambda: drained)
        tg.cancel_scope.cancel()
    assert stream.written == b"the last answer"
