"""Review: the switch-wide gauges count every front door, not only the msgpack one.

``payswitch_open_connections`` ("Client connections open now") and
``payswitch_in_flight_payments`` ("Payments accepted and not yet answered") were fed by
switch/serve/server.py alone: a connection to the ISO 8583 or HTTP door, and a payment
in flight through either, left both at 0.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import anyio
import iso8583
import pytest

from loadtests.harness.client import SwitchClient
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.protocols.wire import Reply
from switch.serve.config import SwitchConfig
from tests.conftest import RunningSwitch, make_config, start_switch
from tests.payments import card_payment
from tests.test_iso8583_door import auth, make_spec

DOORS = """
[iso8583]
enabled = true
port = 0
[http]
enabled = true
port = 0
"""

BODY = json.dumps({
    "channel": "card", "amount": 1250, "currency": "USD",
    "payer": {"account": "ACCT000002", "name": "Payer"},
    "payee": {"account": "MERCH00001", "name": "Payee"},
    "card": {"pan": "4111111111111111", "expiry": "2812"},
}).encode()

#: Every card payment waits this long at the (stand-in) network: long enough to look.
LATENCY_MS = 1500
SPEC = make_spec(False)


def gauge(switch: RunningSwitch, name: str) -> float:
    value = switch.app.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def wait_for(switch: RunningSwitch, name: str, expected: float) -> None:
    seen = -1.0
    with anyio.move_on_after(5):
        while (seen := gauge(switch, name)) != expected:
            await anyio.sleep(0.01)
    assert seen == expected, f"{name}: {seen}, expected {expected}"


def _config(tmp_path: Path) -> tuple[SwitchConfig, dict[str, StandInNetwork]]:
    config = make_config(tmp_path, DOORS)
    adapters = {n.name: StandInNetwork(n) for n in config.networks}
    adapters["standin-card"] = StandInNetwork(StandInNetworkConfig(
        "standin-card", "card", latency_median_ms=LATENCY_MS, latency_sigma=0,
        decline_rate=0, error_rate=0))
    return config, adapters


async def _pay_through_iso_and_http(iso: anyio.abc.SocketStream,
                                     http: anyio.abc.SocketStream) -> None:
    raw, _ = iso8583.encode(auth(1), SPEC)
    await iso.send(struct.pack(">H", len(raw)) + raw)
    await http.send(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nIdempotency-Key: review-h1\r\n"
                    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


async def _answers(iso: anyio.abc.SocketStream, http: anyio.abc.SocketStream) -> None:
    size = struct.unpack(">H", await _exactly(iso, 2))[0]
    answer, _ = iso8583.decode(await _exactly(iso, size), SPEC)
    assert answer["t"] == "0110" and answer["39"] == "00"
    assert b" 201 " in (await http.receive()).split(b"\r\n")[0]


async def test_open_connections_counts_every_door(
    tmp_path: Path, anyio_backend: tuple[str, dict[str, object]]
) -> None:
    config, adapters = _config(tmp_path)
    # Uvicorn (the default server) reports its connections; Hypercorn, which the trio
    # backend runs whatever the config says, has no way to: there only the ISO door's.
    http_counted = int(anyio_backend[0] == "asyncio")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        ends = switch.endpoints
        assert gauge(switch, "payswitch_open_connections") == 0
        iso = await anyio.connect_tcp("127.0.0.1", ends.iso8583_port)
        http = await anyio.connect_tcp("127.0.0.1", ends.http_port)
        try:
            await wait_for(switch, "payswitch_open_connections", 1 + http_counted)
            async with SwitchClient.connect("127.0.0.1", ends.port) as client:
                # The msgpack door's on top of them: one sum over every door.
                await wait_for(switch, "payswitch_open_connections", 2 + http_counted)
                reply = await client.pay(card_payment("review-m1"))
                assert isinstance(reply, Reply)
            await wait_for(switch, "payswitch_open_connections", 1 + http_counted)
        finally:
            await iso.aclose()
            await http.aclose()
        await wait_for(switch, "payswitch_open_connections", 0)
        switch.app.request_shutdown()


async def test_in_flight_payments_counts_every_door(tmp_path: Path) -> None:
    config, adapters = _config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        ends = switch.endpoints
        iso = await anyio.connect_tcp("127.0.0.1", ends.iso8583_port)
        http = await anyio.connect_tcp("127.0.0.1", ends.http_port)
        try:
            await _pay_through_iso_and_http(iso, http)
            await wait_for(switch, "payswitch_in_flight_payments", 2)
            async with (SwitchClient.connect("127.0.0.1", ends.port) as client,
                        anyio.create_task_group() as payer):
                payer.start_soon(client.pay, card_payment("review-m1"))
                await wait_for(switch, "payswitch_in_flight_payments", 3)
            await _answers(iso, http)
            await wait_for(switch, "payswitch_in_flight_payments", 0)
        finally:
            await iso.aclose()
            await http.aclose()
        switch.app.request_shutdown()


async def _exactly(stream: anyio.abc.ByteStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += await stream.receive(n - len(data))
    return data


pytestmark = pytest.mark.anyio
