"""QR scheme simulator through the switch's QR adapter."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from channels.fence import Fence
from channels.qr import QrNetwork
from switch.adapters.base import NetworkReply
from switch.protocols.framing import frame
from switch.protocols.qrapi import QrCheckStatus, QrPayRequest, decode_reply, encode
from tests.sims.test_card import config, network, qr_code, qr_payment, raw_exchange, running

pytestmark = pytest.mark.anyio


def qr_net(**qr: Any) -> dict[str, Any]:
    return network("qr", "qr", qr={"merchants": 100, "closed_merchants": ["M0000013"],
                                   "max_amount_minor": 1_000_000, **qr})


def server(sims: Any) -> QrNetwork:
    net = sims.server("qr")
    assert isinstance(net, QrNetwork)
    return net


async def test_static_qr_takes_the_payers_amount_and_check_status_agrees() -> None:
    async with running(config(qr_net())) as sims:
        adapter, net = sims.qr(), server(sims)
        payment = qr_payment(1, 2500, qr_code("M0000007"))
        reply = await adapter.authorize(payment)
        assert reply.outcome == "approved" and reply.reason == "00"
        assert len(reply.network_ref) == 16
        assert net.credited == {"M0000007": 2500}
        assert await adapter.resolve(payment) == reply


async def test_dynamic_qr_fixes_the_amount() -> None:
    async with running(config(qr_net())) as sims:
        adapter, net = sims.qr(), server(sims)
        dynamic = qr_code("M0000008", amount="25.00")
        assert (await adapter.authorize(qr_payment(2, 2500, dynamic))).outcome == "approved"
        mismatch = await adapter.authorize(qr_payment(3, 2400, dynamic))
        assert mismatch == NetworkReply("declined", "05", "QR:AMOUNT_MISMATCH")
        assert net.credited == {"M0000008": 2500}


async def test_static_qr_without_a_payer_amount_is_refused() -> None:
    async with running(config(qr_net())) as sims:
        request = QrPayRequest(ref="raw-1", payload=qr_code(), currency="CNY")
        [answer] = await raw_exchange(sims.runtime.ports["qr"], frame(encode(request)),
                                      header=4)
        reply = decode_reply(answer)
        assert (reply.ref, reply.status, reply.reason) == ("raw-1", "declined", "AMOUNT_REQUIRED")
        # A dynamic QR needs no payer amount.
        request = QrPayRequest(ref="raw-2", payload=qr_code(amount="9.99"), currency="CNY")
        [answer] = await raw_exchange(sims.runtime.ports["qr"], frame(encode(request)),
                                      header=4)
        assert decode_reply(answer).status == "approved"
        assert server(sims).amounts["raw-2"] == 999


@pytest.mark.parametrize(
    ("payment_args", "expected"),
    [
        ({"payload": qr_code()[:-4] + "0000"}, ("declined", "14", "QR:INVALID_QR")),
        ({"payload": qr_code("M0000500")}, ("declined", "14", "QR:UNKNOWN_MERCHANT")),
        ({"payload": qr_code(gui="com.other.scheme")}, ("declined", "14", "QR:UNKNOWN_MERCHANT")),
        ({"payload": qr_code("M0000013")}, ("declined", "57", "QR:MERCHANT_CLOSED")),
        ({"payload": qr_code(), "currency": "USD"}, ("declined", "57", "QR:CURRENCY_MISMATCH")),
        ({"amount": 2_000_000}, ("declined", "61", "QR:OVER_LIMIT")),
    ],
    ids=["bad-crc", "unknown-merchant", "other-scheme", "closed", "currency", "over-limit"],
)
async def test_declines_by_rule(payment_args: dict[str, Any],
                                expected: tuple[str, str, str]) -> None:
    async with running(config(qr_net())) as sims:
        reply = await sims.qr().authorize(qr_payment(4, **payment_args))
        assert (reply.outcome, reply.reason, reply.network_ref) == expected
        assert server(sims).credited == {}
        assert await sims.qr().resolve(qr_payment(4, **payment_args)) == reply


async def test_check_status_of_an_unknown_reference_fails_it() -> None:
    async with running(config(qr_net())) as sims:
        reply = await sims.qr().resolve(qr_payment(5))
        assert reply == NetworkReply("failed", "91", "QR:NOT_FOUND")
        [answer] = await raw_exchange(sims.runtime.ports["qr"],
                                      frame(encode(QrCheckStatus("nope"))), header=4)
        assert decode_reply(answer).status == "not_found"


async def test_a_pay_request_overtaken_by_its_check_status_is_never_paid() -> None:
    # The switch fails a payment on not_found: paid afterwards, the merchant would be
    # credited for a payment the switch failed (the check went on another connection).
    async with running(config(qr_net())) as sims:
        adapter, net = sims.qr(), server(sims)
        assert await adapter.resolve(qr_payment(7)) == NetworkReply("failed", "91",
                                                                    "QR:NOT_FOUND")
        late = await adapter.authorize(qr_payment(7))
        assert late == NetworkReply("failed", "91", "QR:NOT_FOUND")
        assert net.credited == {} and net.amounts == {}
        assert await adapter.resolve(qr_payment(7)) == late


async def test_inquiries_about_unknown_refs_take_no_room_from_payments() -> None:
    # Every health probe asks about a ref never sent: fences kept in the book filled it,
    # and real payments were then refused as technical errors.
    async with running(config(qr_net(max_payments=1))) as sims:
        adapter, net = sims.qr(), server(sims)
        for i in range(3):
            [answer] = await raw_exchange(sims.runtime.ports["qr"],
                                          frame(encode(QrCheckStatus(f"probe-{i}"))), header=4)
            assert decode_reply(answer).status == "not_found"
        assert (await adapter.authorize(qr_payment(8))).outcome == "approved"
        assert len(net.fenced) == 3 and list(net.book) == ["P1-8"]


async def test_same_reference_twice_is_paid_once() -> None:
    async with running(config(qr_net())) as sims:
        adapter, net = sims.qr(), server(sims)
        first = await adapter.authorize(qr_payment(6))
        second = await adapter.authorize(qr_payment(6))
        assert first == second and first.outcome == "approved"
        assert net.credited == {"M0000007": 2500}


async def test_undecodable_request_is_dropped_and_the_connection_survives() -> None:
    async with running(config(qr_net())) as sims:
        data = frame(b"\xc1 not msgpack") + frame(msgspec.msgpack.encode({"op": "what"}))
        data += frame(encode(QrCheckStatus("after-garbage")))
        [answer] = await raw_exchange(sims.runtime.ports["qr"], data, header=4)
        assert decode_reply(answer).ref == "after-garbage"
        assert server(sims).malformed_requests == 2


def test_the_fence_is_bounded_and_forgets_the_oldest_first() -> None:
    fence = Fence(bound=3)
    for ref in ("a", "b", "c", "a", "d"):
        fence.add(ref)
    assert len(fence) == 3 and "a" not in fence and all(r in fence for r in "bcd")
