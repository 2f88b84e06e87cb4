"""Hostile and unlucky input against a running switch (issue 11, defects 1-3).

Each test sends what once ended the process and then checks the same connection (or a
new one) is still served.
"""

from __future__ import annotations

import anyio
import pytest

from loadtests.harness.client import SwitchClient
from switch.protocols.wire import ErrorReply, Reply, frame
from tests.conftest import RunningSwitch
from tests.payments import card_payment

pytestmark = pytest.mark.anyio


async def test_deeply_nested_frame_is_refused_and_the_connection_stays_usable(
    running_switch: RunningSwitch,
) -> None:
    port = running_switch.endpoints.port
    async with SwitchClient.connect("127.0.0.1", port) as client:
        await client.send_raw(frame(b"\x91" * 1000 + b"\xc0"))
        await client.send_raw(frame(b"\x81\xa1x" + b"\x91" * 50_000 + b"\xc0"))
        reply = await client.pay(card_payment("after-deep-nesting"))
        assert isinstance(reply, Reply), reply
    with anyio.fail_after(5):
        async with SwitchClient.connect("127.0.0.1", port) as again:
            assert not isinstance(await again.ping(), ErrorReply)
