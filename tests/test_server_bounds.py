"""The server's bounds over TCP: backpressure, silent and idle connections, per-source
limits, idle eviction at the connection limit, a client that never reads, and the
adaptive admission limit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from loadtests.harness.client import SwitchClient
from switch.adapters.base import ReplySink
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.model import Payment
from switch.protocols.wire import ErrorReply, Pay, Ping, Reply, encode_request, frame
from switch.serve.server import ADMISSION_FLOOR, Admission
from tests.conftest import make_config, start_switch
from tests.payments import card_payment
from tests.test_switch import _read_replies, stand_ins

pytestmark = pytest.mark.anyio


async def _closed_by_server(stream: anyio.abc.ByteStream, within_s: float) -> bytes:
    data = b""
    with anyio.fail_after(within_s):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data


class _HeldCard(StandInNetwork):
    """A card network that holds every request it is sent until the test lets them go:
    the test, not the box's speed, decides when the first replies come back."""

    def __init__(self) -> None:
        super().__init__(StandInNetworkConfig("standin-card", "card", latency_median_ms=0,
                                              decline_rate=0, error_rate=0))
        self.held: list[tuple[int, Payment, ReplySink]] = []
        self.holding = True

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        if self.holding:
            self.held.append((token, payment, deliver))
        else:
            super().start(token, payment, deliver)

    def release(self) -> None:
        self.holding = False
        for token, payment, deliver in self.held:
            super().start(token, payment, deliver)
        self.held.clear()


async def _until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    with anyio.fail_after(within_s):
        while not condition():
            await anyio.sleep(0.001)


async def test_a_connection_at_its_bound_is_not_read_until_replies_make_room(
        tmp_path: Path) -> None:
    # No refusal for loop lag: on a loaded box that would refuse the second wave for a
    # reason other than the one under test.
    config = make_config(tmp_path, server="max_in_flight_per_connection = 4\n"
                                          "max_queue_delay_s = 60")
    card = _HeldCard()
    adapters: dict[str, object] = {**stand_ins(config), "standin-card": card}
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)
        server = switch.app.server
        assert server is not None
        stream = await anyio.connect_tcp("127.0.0.1", switch.endpoints.port)
        first = b"".join(encode_request(Pay(i, card_payment(f"bp-{i}", payer=f"A{i}")))
                         for i in range(4))
        await stream.send(first)
        await _until(lambda: len(card.held) == 4)
        (conn,) = server._open
        await _until(lambda: conn.room is not None)  # at its bound: the server stops reading
        second = b"".join(encode_request(Pay(i, card_payment(f"bp-{i}", payer=f"A{i}")))
                          for i in range(4, 8))
        await stream.send(second)
        for _ in range(20):  # every task gets its turns; the reader must stay parked
            await anyio.lowlevel.checkpoint()
        assert conn.in_flight == 4 and conn.room is not None and len(card.held) == 4
        card.release()
        replies = await _read_replies(stream, 8)
        await stream.aclose()
        # Held back in the socket, not refused: all eight approved, in two waves.
        assert all(isinstance(r, Reply) and r.result.status == "approved" for r in replies)
        assert sorted(r.id for r in replies[:4]) == [0, 1, 2, 3]  # type: ignore[type-var]
        switch.app.request_shutdown()


#: A pay frame nested 5,000 deep, and one whose ``op`` is invalid UTF-8.
_TOO_DEEP = b"\x82\xa2op\xa3pay\xa1x" + b"\x91" * 5_000 + b"\xc0"
_BAD_UTF8 = b"\x81\xa2op\xa2\xff\xfe"


@pytest.mark.parametrize("hostile", [_TOO_DEEP, _BAD_UTF8], ids=["deep", "bad-utf8"])
async def test_a_hostile_frame_read_while_shedding_is_malformed_not_a_crash(
        tmp_path: Path, hostile: bytes) -> None:
    # The connection is at its bound when the frame is read, so the server peeks at its
    # head to refuse it cheaply: that peek once let these two end the whole switch.
    config = make_config(tmp_path, server="max_in_flight_per_connection = 1\n"
                                          "max_frame_bytes = 1048576\nmax_queue_delay_s = 60")
    card = _HeldCard()
    adapters: dict[str, object] = {**stand_ins(config), "standin-card": card}
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)
        port = switch.endpoints.port
        hostile_client = await anyio.connect_tcp("127.0.0.1", port)
        await hostile_client.send(encode_request(Pay(1, card_payment("shed-1")))
                                  + frame(hostile))
        (answer,) = await _read_replies(hostile_client, 1)
        assert isinstance(answer, ErrorReply) and answer.code == "malformed", answer
        card.release()
        neighbour = await anyio.connect_tcp("127.0.0.1", port)
        await neighbour.send(encode_request(Pay(2, card_payment("shed-2", payer="B2"))))
        (reply,) = await _read_replies(neighbour, 1)
        assert isinstance(reply, Reply) and reply.result.status == "approved"
        await hostile_client.aclose()
        await neighbour.aclose()
        switch.app.request_shutdown()


async def test_a_key_in_the_iso8583_doors_namespace_is_refused(tmp_path: Path) -> None:
    # Such a key could take an acquirer's payment's place, and its 0400 reverse it.
    config = make_config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, stand_ins(config))
        stream = await anyio.connect_tcp("127.0.0.1", switch.endpoints.port)
        await stream.send(encode_request(Pay(1, card_payment("iso:412345:T1:000001:1"))))
        (answer,) = await _read_replies(stream, 1)
        assert isinstance(answer, ErrorReply) and answer.code == "invalid", answer
        assert answer.id == 1 and "idempotency_key" in answer.message
        await stream.aclose()
        switch.app.request_shutdown()


async def test_silent_and_idle_connections_are_closed(tmp_path: Path) -> None:
    config = make_config(tmp_path, server="handshake_timeout_s = 0.3\nidle_timeout_s = 0.6")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        silent = await anyio.connect_tcp("127.0.0.1", switch.endpoints.port)
        await _closed_by_server(silent, within_s=3)
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            assert isinstance(await client.pay(card_payment("idle-1")), Reply)
            await anyio.sleep(2.0)  # idle: the server hangs up
            with pytest.raises(Exception):  # noqa: B017 - any failure: the link is gone
                with anyio.fail_after(3):
                    await client.ping()
        switch.app.request_shutdown()


async def test_connections_per_source_are_bounded(tmp_path: Path) -> None:
    config = make_config(tmp_path, server="max_connections_per_source = 2")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        port = switch.endpoints.port
        keep = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        for stream in keep:
            await stream.send(encode_request(Ping(1)))
        extra = await anyio.connect_tcp("127.0.0.1", port)
        data = await _closed_by_server(extra, within_s=3)
        assert b"overloaded" in data and b"max_connections_per_source=2" in data
        for stream in keep:
            await stream.aclose()
        switch.app.request_shutdown()


async def test_idle_sockets_cannot_lock_new_clients_out(tmp_path: Path) -> None:
    config = make_config(tmp_path, server="max_connections = 3")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        port = switch.endpoints.port
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        await anyio.sleep(0.1)
        async with SwitchClient.connect("127.0.0.1", port) as client:
            reply = await client.pay(card_payment("after-idle"))
            assert isinstance(reply, Reply), reply
        for stream in idle:
            await stream.aclose()
        switch.app.request_shutdown()


class _NeverReads(anyio.abc.ByteStream):
    """A client that sends requests and never reads: every send of ours blocks."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.closed = anyio.Event()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._data:
            chunk, self._data = self._data[:max_bytes], self._data[max_bytes:]
            return chunk
        await self.closed.wait()
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        await anyio.sleep_forever()

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_client_that_never_reads_is_disconnected(tmp_path: Path) -> None:
    config = make_config(tmp_path, server="max_reply_buffer_bytes = 65536")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        server = switch.app.server
        assert server is not None
        pings = b"".join(encode_request(Ping(i)) for i in range(20_000))
        stream = _NeverReads(pings)
        with anyio.fail_after(10):
            await server.handle_connection(stream)
        assert stream.closed.is_set() and server.connections == 0
        switch.app.request_shutdown()


def test_admission_shrinks_on_sustained_lag_and_grows_back() -> None:
    admission = Admission(4096)
    for _ in range(3):
        admission.observe(0.002, 3000)  # short hiccups: nothing changes
    assert admission.limit == 4096
    for _ in range(40):
        admission.observe(0.050, 3000)
    assert admission.limit == ADMISSION_FLOOR and admission.shrinks > 0
    for _ in range(200):
        admission.observe(0.0, 10)
    assert admission.limit == 4096


def test_admission_shrinks_from_what_is_in_flight_not_from_the_ceiling() -> None:
    # The onset of overload: the limit is still the ceiling, 1,200 payments are in flight
    # and the loop lags. The first shrink must stop admitting now (below what is in
    # flight), not after ten more samples of a quarter off 4,096 each.
    admission = Admission(4096)
    admission.observe(0.050, 1200)
    assert admission.limit == 900
    admission.observe(0.050, 1000)  # still more in flight than the limit: from the limit
    assert admission.limit == 675
    admission.observe(0.050, 100)
    assert admission.limit == ADMISSION_FLOOR  # never below the floor


async def test_payments_past_the_adaptive_limit_are_refused_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    adapters = {n.name: StandInNetwork(n) for n in config.networks}
    adapters["standin-card"] = StandInNetwork(StandInNetworkConfig(
        "standin-card", "card", latency_median_ms=300, latency_sigma=0, decline_rate=0,
        error_rate=0))
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        server = switch.app.server
        assert server is not None
        server.admission.ceiling = server.admission.limit = server.admission.floor = 3
        stream = await anyio.connect_tcp("127.0.0.1", switch.endpoints.port)
        await stream.send(b"".join(
            encode_request(Pay(i, card_payment(f"ad-{i}", payer=f"A{i}"))) for i in range(5)))
        replies = await _read_replies(stream, 5)
        await stream.aclose()
        refused = [r for r in replies if isinstance(r, ErrorReply)]
        assert [r.code for r in refused] == ["overloaded"] * 2
        assert "adaptive limit 3" in refused[0].message
        switch.app.request_shutdown()


@pytest.mark.parametrize(("in_flight", "samples"), [(0, 20), (3, 200)])
def test_the_lag_probe_wakes_an_idle_switch_ten_times_less_often(in_flight: int,
                                                                 samples: int) -> None:
    """200 wake-ups a second cost an idle switch 4.5% of a core on a VM; with nothing in
    flight there is nothing to steer. Counted in one virtual second (trio's MockClock)."""
    import trio
    import trio.testing

    from switch.serve.server import Server

    observed: list[tuple[float, int]] = []
    server = SimpleNamespace(engine=SimpleNamespace(measure=trio.current_time),
                             admission=SimpleNamespace(
                                 observe=lambda lag, n: observed.append((lag, n))),
                             in_flight=in_flight, _lag=0.0)

    async def one_second() -> None:
        with trio.move_on_after(1.0 - 1e-9):
            await Server._watch_lag(server)  # type: ignore[arg-type]

    trio.run(one_second, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(observed) == samples - 1  # the last sleep ends at the second itself
    assert all(n == in_flight and abs(lag) < 1e-9 for lag, n in observed)
