"""Answers a front door owes are never dropped by its connection policy: a connection
whose answers are queued or being written is neither evicted at the connection limit
nor swept as idle; only a peer that has taken no answer for ``idle_timeout_s`` is closed
with answers owed (it is not reading them). Both doors share the policy
(switch/serve/conntable.py): the ISO 8583 door and the msgpack door."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import iso8583
import pytest

from switch.protocols.wire import ErrorReply, FrameDecoder, Ping, Pong, decode_response
from switch.protocols.wire import encode_request as encode_wire
from switch.serve.config import Iso8583DoorConfig
from switch.serve.iso8583_door import Iso8583Door, _Conn
from tests.conftest import make_config, start_switch
from tests.test_iso8583_door import make_spec
from tests.test_server_bounds import _until

pytestmark = pytest.mark.anyio

SPEC = make_spec(False)


def _echo(stan: int) -> bytes:
    raw, _ = iso8583.encode({"t": "0800", "7": "1125101500", "11": f"{stan:06d}",
                             "70": "301"}, SPEC)
    return struct.pack(">H", len(raw)) + bytes(raw)


def _stans(data: bytes) -> list[str]:
    """The DE11 of every framed ISO 8583 answer in ``data``."""
    out = []
    while data:
        (size,) = struct.unpack(">H", data[:2])
        doc, _ = iso8583.decode(bytearray(data[2:2 + size]), SPEC)
        out.append(str(doc["11"]))
        data = data[2 + size:]
    return out


class _SlowReader(anyio.abc.ByteStream):
    """A peer that sends ``data`` once, then only listens; each of our writes completes
    when the test opens ``gate`` (a reader slower than we answer)."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self.gate = anyio.Event()
        self.written = b""
        self.closed = anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._data:
            chunk, self._data = self._data[:max_bytes], self._data[max_bytes:]
            return chunk
        await self.closed.wait()
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        await self.gate.wait()
        self.written += item

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed.set()


class _Rejected(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        return SimpleNamespace(inc=lambda: None)


def _iso_door(**limits: Any) -> Iso8583Door:
    """A door with no core behind it: 0800s are answered inline, nothing else is sent."""
    core = SimpleNamespace(metrics=SimpleNamespace(rejected=_Rejected(), frame_errors=_Rejected()))
    return Iso8583Door(core, Iso8583DoorConfig(**limits))  # type: ignore[arg-type]


def _only_conn(door: Iso8583Door) -> _Conn:
    (conn,) = door._conns.open
    return conn


async def test_iso8583_an_answer_being_written_is_not_evicted_for_a_new_connection() -> None:
    door = _iso_door(max_connections=1)
    peer = _SlowReader(_echo(1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(door.handle_connection, peer)
            await _until(lambda: len(door._conns.open) == 1 and _only_conn(door).sending)
            # Nothing in flight, but the 0810 is inside its write: the connection owes it.
            newcomer = _SlowReader()
            newcomer.gate.set()
            with anyio.move_on_after(2):  # refused at once: the table is full
                await door.handle_connection(newcomer)
            await newcomer.aclose()
            assert door.counts["refused_connection"] == 1, "the owing connection was evicted"
            peer.gate.set()
            await _until(lambda: bool(peer.written))
            assert _stans(peer.written) == ["000001"]
            await peer.aclose()
        assert door.connections == 0


async def test_iso8583_an_answer_still_queued_is_not_evicted_either() -> None:
    door = _iso_door(max_connections=1)
    peer = _SlowReader(_echo(1))
    peer.gate.set()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(door.handle_connection, peer)
            await _until(lambda: bool(peer.written))
            conn = _only_conn(door)
            await _until(lambda: not conn.sending)
            # An answer queued this very moment, before its writer woke: still owed.
            conn.out += _echo(2)
            conn.wakeup.set()
            assert door._conns.refusal("elsewhere") == "max_connections=1"
            await _until(lambda: len(_stans(peer.written)) == 2)
            # Once written, the connection is idle again and makes room as before.
            await _until(lambda: not conn.sending)
            assert door._conns.refusal("elsewhere") == ""
        assert _stans(peer.written) == ["000001", "000002"]


async def test_iso8583_the_sweeper_waits_for_owed_answers_but_not_for_ever() -> None:
    door = _iso_door(idle_timeout_s=30.0)
    peer = _SlowReader(_echo(1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(door.handle_connection, peer)
            await _until(lambda: len(door._conns.open) == 1 and _only_conn(door).sending)
            conn = _only_conn(door)
            now = anyio.current_time()
            conn.last_read = now - 100.0  # the peer sent its last request long ago
            door._conns.sweep(now)
            assert not conn.closing  # its answer is being written: not idle
            # A peer that has taken nothing for idle_timeout_s is not reading: closed, so a
            # slot is never held for ever by answers nobody takes.
            door._conns.sweep(now + 31.0)
            assert conn.closing
        assert peer.written == b"" and door.connections == 0


async def test_msgpack_a_reply_being_written_is_not_evicted_for_a_new_connection(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, server="max_connections = 1")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, config)
            server = switch.app.server
            assert server is not None
            peer = _SlowReader(encode_wire(Ping(7)))
            tg.start_soon(server.handle_connection, peer)
            await _until(lambda: server.connections == 1
                         and next(iter(server._open)).sending)
            newcomer = _SlowReader()
            newcomer.gate.set()
            with anyio.move_on_after(2):  # refused at once: the table is full
                await server.handle_connection(newcomer)
            await newcomer.aclose()
            replies = [decode_response(f) for f in FrameDecoder().feed(newcomer.written)]
            assert len(replies) == 1, "the owing connection was evicted"
            refusal = replies[0]
            assert isinstance(refusal, ErrorReply) and "max_connections=1" in refusal.message
            peer.gate.set()
            await _until(lambda: bool(peer.written))
            assert [decode_response(f) for f in FrameDecoder().feed(peer.written)] == [Pong(7)]
            await peer.aclose()
            await _until(lambda: server.connections == 0)
            switch.app.request_shutdown()


async def test_msgpack_the_sweeper_waits_for_owed_replies_but_not_for_ever(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, server="idle_timeout_s = 30")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, config)
            server = switch.app.server
            assert server is not None
            peer = _SlowReader(encode_wire(Ping(8)))
            tg.start_soon(server.handle_connection, peer)
            await _until(lambda: server.connections == 1
                         and next(iter(server._open)).sending)
            conn = next(iter(server._open))
            now = anyio.current_time()
            conn.last_read = now - 100.0
            server._conns.sweep(now)
            assert not conn.closing
            server._conns.sweep(now + 31.0)
            assert conn.closing
            await _until(lambda: server.connections == 0)
            switch.app.request_shutdown()
