"""The network links' writer and reader (switch/adapters/links.py), on a stream we hold.

Found by reviewing the adapters, which the deterministic simulator replaces with stubs:
each test here failed on the code before its fix.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
import anyio.abc
import pytest

from switch.adapters.iso8583 import CardAdapter
from switch.adapters.links import MAX_QUEUED_FRAMES, Link, Written
from switch.adapters.qr import QrAdapter
from switch.adapters.specs import CardAdapterConfig, QrAdapterConfig
from switch.protocols import iso8583
from switch.protocols.errors import CodecError, FramingError
from switch.protocols.framing import FrameDecoder, FrameTooLarge, frame
from switch.protocols.qrapi import QrReply, decode_request, encode
from tests.sims.test_card import qr_payment

pytestmark = pytest.mark.anyio


class HeldStream:
    """A peer that takes each write only when the test lets it (``release``)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gate = anyio.Event()

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.written.append(data)

    def release(self) -> None:
        self.gate.set()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


class Owner:
    gone = False


def nothing() -> None:
    pass


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


@asynccontextmanager
async def held_link(max_queued: int = MAX_QUEUED_FRAMES
                    ) -> AsyncIterator[tuple[Link, HeldStream]]:
    """A link (bounded at ``max_queued`` frames) whose writer is held inside its first
    write (``EARLIER``) until the test releases the stream; the body queues what must wait
    behind it."""
    stream = HeldStream()
    link = Link(0, stream, send_timeout_s=5.0, max_queued=max_queued)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.write_queued)
        link.send_nowait(b"EARLIER", nothing, Owner())
        await anyio.sleep(0.01)  # the writer is now inside the held write
        yield link, stream
        tg.cancel_scope.cancel()


async def test_an_inquiry_never_overtakes_a_request_queued_before_it() -> None:
    # The core queues a request behind earlier traffic; the resolver then asks about
    # something on the same link. The wire must carry them in that order.
    async with held_link() as (link, stream), anyio.create_task_group() as tg:
        link.send_nowait(b"REQUEST", nothing, Owner())
        tg.start_soon(link.send, b"INQUIRY")
        await anyio.sleep(0.01)
        stream.release()
        await wait_until(lambda: len(b"".join(stream.written)) == 21)
    assert b"".join(stream.written) == b"EARLIERREQUESTINQUIRY"


async def test_a_request_given_up_before_it_left_is_never_written() -> None:
    given_up = Owner()
    async with held_link() as (link, stream):
        link.send_nowait(b"TIMEDOUT", nothing, given_up)
        link.send_nowait(b"OTHER", nothing, Owner())
        given_up.gone = True  # the core's timeout: cancel(token) abandons its waiter
        stream.release()
        await wait_until(lambda: b"OTHER" in b"".join(stream.written))
    assert b"".join(stream.written) == b"EARLIEROTHER"


async def test_an_exchange_cancelled_while_queued_is_withdrawn() -> None:
    async with held_link() as (link, stream):
        with anyio.move_on_after(0.01):
            await link.send(b"REVERSAL")
        link.send_nowait(b"LATER", nothing, Owner())
        stream.release()
        await wait_until(lambda: b"LATER" in b"".join(stream.written))
    assert b"".join(stream.written) == b"EARLIERLATER"


class StuckStream(HeldStream):
    """A peer that stopped reading: no write ever completes."""

    async def send(self, data: bytes) -> None:
        self.written.append(data)
        await anyio.sleep_forever()


@pytest.mark.parametrize("queued", [1, 2, 5])
async def test_frames_that_never_left_are_not_sent_however_many(queued: int) -> None:
    # A write holds the link on a peer that stopped reading; its send timeout kills the
    # link. What queued behind it never left, alone or batched: each is told so, and the
    # core fails its payment over (it was "sent, outcome unknown" when batched).
    stream = StuckStream()
    link = Link(0, stream, send_timeout_s=0.1)  # type: ignore[arg-type]
    reported: list[int] = []
    outcome: list[bool] = []

    async def held_write() -> None:
        outcome.append(await link.send(b"ECHO"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(link.write_queued)
        tg.start_soon(held_write)
        await anyio.sleep(0.01)
        for i in range(queued):
            link.send_nowait(b"PAY", functools.partial(reported.append, i), Owner())
        await wait_until(lambda: len(reported) == queued)
        tg.cancel_scope.cancel()
    assert stream.written == [b"ECHO"]
    assert outcome == [False]  # it began, then timed out: its outcome is unknown
    assert sorted(reported) == list(range(queued))


async def test_a_written_report_says_what_became_of_the_frame() -> None:
    written = Written()
    assert written.outcome is None and not written.event.is_set()
    written.never_left()
    assert written.outcome is None and written.event.is_set()


def test_a_bad_prefix_keeps_the_frames_before_it() -> None:
    good = frame(b"answer-1") + frame(b"answer-2")
    with pytest.raises(FrameTooLarge) as caught:
        FrameDecoder(1024).feed(good + b"\xff\xff\xff\xff")
    assert [bytes(f) for f in caught.value.frames_before] == [b"answer-1", b"answer-2"]
    decoder = iso8583.FrameDecoder(max_frame_size=64)
    with pytest.raises(FramingError) as iso_caught:
        decoder.feed(b"\x00\x02ok" + b"\xff\xff")
    assert iso_caught.value.frames_before == [b"ok"]
    with pytest.raises(CodecError):
        decoder.feed(b"\x00\x02ok")  # the stream stays broken


async def frames_of(stream: anyio.abc.SocketStream, decoder: FrameDecoder | iso8583.FrameDecoder
                    ) -> AsyncIterator[bytes | memoryview]:
    """A test peer's view of what the adapter sends: every frame, until it hangs up."""
    async with stream:
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            for f in decoder.feed(data):
                yield f


async def test_an_answer_before_a_bad_prefix_in_the_same_read_is_delivered() -> None:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        async for f in frames_of(stream, FrameDecoder()):
            request = decode_request(bytes(f))
            answer = frame(encode(QrReply(ref=request.ref, status="approved", scheme_ref="S1")))
            await stream.send(answer + b"\xff\xff\xff\xff")  # then garbage

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    adapter = QrAdapter(QrAdapterConfig(name="qr", port=port, connections=1))
    reply = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        await tg.start(adapter.run)
        with anyio.move_on_after(5.0):
            reply = await adapter.authorize(qr_payment(1))
        framing_errors = adapter.pool.framing_errors
        await adapter.aclose()
        tg.cancel_scope.cancel()
    assert reply is not None and reply.outcome == "approved"
    assert framing_errors == 1  # and the link was still dropped: it cannot re-sync


async def test_a_peer_that_accepts_and_drops_at_once_is_redialled_with_backoff() -> None:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    adapter = QrAdapter(QrAdapterConfig(name="qr", port=port, connections=1,
                                        reconnect_initial_s=0.05, reconnect_max_s=0.8))
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        await tg.start(adapter.run)
        await anyio.sleep(1.5)
        connects = adapter.pool.connects
        await adapter.aclose()
        tg.cancel_scope.cancel()
    # Backoff 0.05, 0.1, 0.2, 0.4, 0.8 (with jitter: half to all of it) allows at most 7
    # dials in 1.5 s; reset after every accepted connect, it was about 20.
    assert 2 <= connects <= 8, connects


async def test_the_hosts_echo_is_answered_0810_on_its_link() -> None:
    answered = anyio.Event()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async for f in frames_of(stream, iso8583.FrameDecoder()):
            message = iso8583.decode(f)
            if message.mti == "0800":  # our sign-on: answer, then echo-test us
                await stream.send(iso8583.frame(iso8583.encode(
                    iso8583.response(message, "00"))))
                if message.fields.get(70) == "001":
                    echo = iso8583.network_request(
                        "301", stan=777001, transmitted_at=datetime.now(UTC))
                    await stream.send(iso8583.frame(iso8583.encode(echo)))
            elif message.mti == "0810" and message.fields.get(11) == "777001":
                assert message.fields.get(39) == "00"
                answered.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    adapter = CardAdapter(CardAdapterConfig(name="card", port=port, connections=1,
                                            echo_interval_s=60))
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        await tg.start(adapter.run)
        with anyio.fail_after(5):
            await answered.wait()
        assert adapter.network_requests == 1
        assert adapter.unmatched == 0  # never taken for an answer
        await adapter.aclose()
        tg.cancel_scope.cancel()
