"""The client notices a connection the switch closed between two requests.

The kill -9 campaign ran at a fifth of its rate after the first kill: a request sent
after the reader had already seen the end of the stream waited for a reply that no
reader would ever deliver, until the caller's 10 s timeout.
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from loadtests.harness.client import SwitchClient
from switch.protocols.framing import FrameDecoder
from switch.protocols.wire import Pong, ReplyEncoder, decode_request

pytestmark = pytest.mark.anyio


async def test_a_request_after_the_switch_went_away_fails_at_once() -> None:
    async def one_answer_then_close(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            decoder = FrameDecoder(1 << 16)
            while True:
                frames = decoder.feed(await stream.receive())
                if frames:
                    request = decode_request(frames[0])
                    assert request.id is not None
                    replies = ReplyEncoder()
                    replies.add(Pong(request.id))
                    await stream.send(replies.take())
                    return  # then the connection closes, as a killed switch's does

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, one_answer_then_close)
        async with SwitchClient.connect("127.0.0.1", port) as client:
            await client.ping()
            await anyio.sleep(0.2)  # the close reaches the client's reader meanwhile
            with anyio.fail_after(5), pytest.raises(ConnectionError):
                await client.ping()
        tg.cancel_scope.cancel()
