"""A link's write queue has an explicit bound: past it a frame is refused as NotSent
(certainly never left, so the core fails over) instead of the queue growing while the
link's writer is held by a peer that does not read."""

from __future__ import annotations

import functools

import anyio
import pytest

from switch.adapters.base import NotSent
from switch.adapters.links import Correlator, Link, PooledAdapter, exchange
from switch.adapters.specs import CardAdapterConfig
from tests.sims.test_links import HeldStream, Owner, held_link, nothing, wait_until

pytestmark = pytest.mark.anyio


def test_a_link_has_an_explicit_default_bound() -> None:
    from switch.adapters.links import MAX_QUEUED_FRAMES

    link = Link(0, HeldStream(), send_timeout_s=1.0)  # type: ignore[arg-type]
    assert link.max_queued == MAX_QUEUED_FRAMES >= 1


async def test_a_flood_of_answers_to_the_networks_requests_stays_bounded() -> None:
    # The 0810s a card link owes the host's echoes are nobody's request in flight: the
    # correlator's bound never saw them. A host echoing a link whose writer is held grew
    # its queue without limit; past the bound they are refused (the host asks again).
    stream = HeldStream()
    link = Link(0, stream, send_timeout_s=0.2)  # type: ignore[arg-type]  # the flood below never awaits: held
    bound = CardAdapterConfig(name="card", port=1).max_in_flight
    refused = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.write_queued)
        link.send_nowait(b"EARLIER", nothing, Owner())
        await anyio.sleep(0.01)  # the writer is now inside the held write
        for _ in range(bound + 1000):
            try:
                link.send_nowait(b"0810", nothing, Owner())
            except NotSent:
                refused += 1
        assert len(link._queue) <= bound
        tg.cancel_scope.cancel()
    assert refused == 1000


async def test_frames_past_the_bound_are_refused_not_sent() -> None:
    async with held_link(max_queued=3) as (link, stream):
        never_left: list[str] = []
        for name in ("A", "B", "C"):
            link.send_nowait(name.encode(), functools.partial(never_left.append, name),
                             Owner())
        with pytest.raises(NotSent, match="3 frames already queued"):
            link.send_nowait(b"D", lambda: never_left.append("D"), Owner())
        # An exchange (the resolver's inquiry) is refused the same way, and its waiter
        # is forgotten: nothing waits for an answer to a frame that never left.
        correlator: Correlator[str, str] = Correlator("card", max_pending=10)
        with pytest.raises(NotSent):
            await exchange(link, correlator, "inquiry", b"E")
        assert correlator.pending == 0
        assert link.queued == 3
        stream.release()
        await wait_until(lambda: b"C" in b"".join(stream.written))
    assert b"".join(stream.written) == b"EARLIERABC"
    assert never_left == []  # the refused frames were refused, not reported later


async def test_frames_given_up_make_room_at_the_bound() -> None:
    # Frames whose owner gave up (the core's timeout) are never written; at the bound they
    # are dropped from the queue rather than counted against the live ones.
    async with held_link(max_queued=2) as (link, stream):
        given_up = Owner()
        link.send_nowait(b"TIMEDOUT", nothing, given_up)
        link.send_nowait(b"KEPT", nothing, Owner())
        given_up.gone = True
        link.send_nowait(b"NEXT", nothing, Owner())
        assert link.queued == 2
        stream.release()
        await wait_until(lambda: b"NEXT" in b"".join(stream.written))
    assert b"".join(stream.written) == b"EARLIERKEPTNEXT"


class _HeldAdapter(PooledAdapter):
    """Just enough of an adapter around one held link, to send as the core does."""

    def __init__(self, link: Link) -> None:
        self.config = CardAdapterConfig(name="card", port=1, max_in_flight=100)
        self._correlator = Correlator("card", max_pending=100)

        class _Pool:
            def pick(self) -> Link:
                return link

        self._pool = _Pool()  # type: ignore[assignment]


async def test_the_core_is_told_not_sent_and_nothing_is_left_behind() -> None:
    async with held_link(max_queued=2) as (link, stream):
        adapter = _HeldAdapter(link)
        delivered: list[object] = []
        adapter._start_exchange("k1", b"P1", 1, delivered.extend, lambda v: None)
        adapter._start_exchange("k2", b"P2", 2, delivered.extend, lambda v: None)
        with pytest.raises(NotSent, match="already queued"):
            adapter._start_exchange("k3", b"P3", 3, delivered.extend, lambda v: None)
        # The refused request holds no waiter: the core may send it elsewhere at once.
        assert adapter.in_flight == 2 and 3 not in adapter._token_waiters()
        assert not adapter._correlator.waiting("k3")
        stream.release()
        await wait_until(lambda: b"P2" in b"".join(stream.written))
    assert b"".join(stream.written) == b"EARLIERP1P2"


def test_pools_take_their_bound_from_the_adapters_in_flight_bound() -> None:
    from switch.adapters.iso8583 import CardAdapter

    adapter = CardAdapter(CardAdapterConfig(name="card", port=1, max_in_flight=77))
    assert adapter.pool.max_queued == 77
