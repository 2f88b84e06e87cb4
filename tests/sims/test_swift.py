"""SWIFT-style simulator through the switch's pacs.008/pacs.028 adapter."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from channels.swift import SwiftNetwork
from switch.adapters.base import NetworkReply
from switch.adapters.swift import credit_transfer
from switch.protocols import iso20022
from switch.protocols.framing import frame
from tests.sims.test_card import (
    FAST,
    config,
    network,
    raw_exchange,
    running,
    swift_payment,
    uetr,
    wait_for,
)

pytestmark = pytest.mark.anyio

BANKS: list[dict[str, Any]] = [
    {"bic": "DEUTDEFF", "latency_ms": 0.5},
    {"bic": "BNPAFRPP", "latency_ms": 0.5, "closed_accounts": ["FR7630006000011234567890189"],
     "unknown_accounts": ["GHOST-ACCOUNT"]},
    {"bic": "CHASUS33", "latency_ms": 20.0},
    {"bic": "HSBCHKHH", "latency_ms": 20.0, "via": "CHASUS33"},
    {"bic": "NORKKPPY", "latency_ms": 0.5},
]


def swift_net(**swift: Any) -> dict[str, Any]:
    spec = {"banks": BANKS, "settlement_delay_s": 0.15, "forbidden_corridors": ["DE-KP"],
            "debtor_balances": {"DE-POOR-ACCOUNT": 5_000}, **swift}
    return network("swift", "swift", swift=spec)


def server(sims: Any) -> SwiftNetwork:
    net = sims.server("swift")
    assert isinstance(net, SwiftNetwork)
    return net


async def test_accepted_then_settled_after_the_delay_and_pacs028_answers() -> None:
    async with running(config(swift_net())) as sims:
        adapter, net = sims.swift(), server(sims)
        payment = swift_payment(1)
        reply = await adapter.authorize(payment)
        assert reply == NetworkReply("approved", "00", uetr(1))
        assert net.book[uetr(1)].status == "ACCP"
        assert adapter.last_status[uetr(1)] == "ACCP"
        assert (await adapter.resolve(payment)).outcome == "approved"  # ACCP, still unsettled
        await wait_for(lambda: adapter.settlements == 1)
        assert net.book[uetr(1)].status == "ACSC"
        assert adapter.last_status[uetr(1)] == "ACSC"
        assert (await adapter.resolve(payment)).outcome == "approved"
        assert adapter.last_status[uetr(1)] == "ACSC"
        assert net.settled_total == net.debited_total == 100_000
        assert net.credited_by_bank == {"BNPAFRPP": 100_000}
        assert (adapter.unmatched, adapter.duplicates, adapter.late) == (0, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"payee": "GHOST-ACCOUNT"}, ("declined", "14", "RJCT:AC01")),
        ({"payee": "FR7630006000011234567890189"}, ("declined", "14", "RJCT:AC04")),
        ({"payer": "DE-POOR-ACCOUNT"}, ("declined", "51", "RJCT:AM04")),
        ({"creditor_agent": "NORKKPPY"}, ("declined", "57", "RJCT:AG01")),
        ({"creditor_agent": "UNKNGB2L"}, ("declined", "57", "RJCT:AG01")),
        ({"currency": "SEK"}, ("failed", "96", "RJCT:FF01")),
    ],
    ids=["AC01", "AC04", "AM04", "AG01-corridor", "AG01-unknown-bic", "FF01-currency"],
)
async def test_rejections_by_rule_map_onto_the_switch_scale(
    kwargs: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    async with running(config(swift_net())) as sims:
        reply = await sims.swift().authorize(swift_payment(2, **kwargs))
        assert (reply.outcome, reply.reason, reply.network_ref) == expected
        assert server(sims).debited_total == 0
        # The rejection is booked: a status inquiry gives the same answer.
        assert await sims.swift().resolve(swift_payment(2, **kwargs)) == reply


async def test_status_inquiry_about_a_payment_never_received_fails_it() -> None:
    async with running(config(swift_net())) as sims:
        reply = await sims.swift().resolve(swift_payment(3))
        assert reply == NetworkReply("failed", "91", "RJCT:NOOR")


async def test_a_pacs008_overtaken_by_its_inquiry_is_never_booked() -> None:
    # The switch fails a payment on RJCT NOOR: booked afterwards, the debtor would be
    # debited for a payment the switch failed (the inquiry went on another connection).
    async with running(config(swift_net())) as sims:
        adapter, net = sims.swift(), server(sims)
        assert (await adapter.resolve(swift_payment(5))).network_ref == "RJCT:NOOR"
        late = await adapter.authorize(swift_payment(5))
        assert (late.outcome, late.network_ref) == ("failed", "RJCT:NOOR")
        assert net.debited_total == 0 and uetr(5) not in net.book
        assert (await adapter.resolve(swift_payment(5))).network_ref == "RJCT:NOOR"


async def test_inquiries_about_unknown_uetrs_take_no_room_from_payments() -> None:
    # Every health probe asks about a UETR never sent: fences counted against
    # max_payments used it up, and real payments were then refused as technical errors.
    async with running(config(swift_net(max_payments=1))) as sims:
        adapter, net = sims.swift(), server(sims)
        for n in range(7, 10):
            with anyio.fail_after(10):  # an inquiry answered PDNG is asked again for ever
                assert (await adapter.resolve(swift_payment(n))).network_ref == "RJCT:NOOR"
        assert (await adapter.authorize(swift_payment(6))).outcome == "approved"
        assert len(net.fenced) == 3 and list(net.book) == [uetr(6)]


async def test_same_uetr_twice_is_booked_once() -> None:
    async with running(config(swift_net())) as sims:
        adapter, net = sims.swift(), server(sims)
        assert (await adapter.authorize(swift_payment(4))).outcome == "approved"
        assert (await adapter.authorize(swift_payment(4))).outcome == "approved"
        assert net.debited_total == 100_000
        assert len(net.book) == 1


async def test_every_hop_adds_its_latency() -> None:
    async with running(config(swift_net())) as sims:
        adapter, net = sims.swift(), server(sims)
        # HSBCHKHH (20 ms) is reached via CHASUS33 (20 ms); the direct banks take 0.5 ms.
        assert net.hops_latency_s("HSBCHKHH") == pytest.approx(0.040)
        assert net.hops_latency_s("BNPAFRPP") == pytest.approx(0.0005)
        start = anyio.current_time()
        reply = await adapter.authorize(swift_payment(6, creditor_agent="HSBCHKHH",
                                                      currency="USD"))
        two_hops = anyio.current_time() - start
        assert reply.outcome == "approved"
        # A lower bound only: the network sleeps the route's latency, so no load can make
        # the answer come sooner (an upper bound on the direct route raced a loaded box).
        assert two_hops >= 0.039


async def test_payment_after_the_cutoff_settles_in_the_next_cycle() -> None:
    # A 1 s cycle, sent just past its 0.1 s cut-off: the call has 0.7 s before the next
    # cycle begins (a 0.3 s cycle left it 0.15 s, which a loaded box could overrun).
    async with running(config(swift_net(cycle_s=1.0, cutoff_s=0.1,
                                        settlement_delay_s=0.02))) as sims:
        adapter, net = sims.swift(), server(sims)
        origin = net.origin
        await wait_for(lambda: 0.15 < (anyio.current_time() - origin) % 1.0 < 0.3,
                       timeout=3.0)
        accepted_at = anyio.current_time()
        assert (await adapter.authorize(swift_payment(7))).outcome == "approved"
        record = net.book[uetr(7)]
        next_cycle = origin + ((accepted_at - origin) // 1.0 + 1) * 1.0
        assert record.settles_at == pytest.approx(next_cycle + 0.02)
        assert record.status == "ACCP"
        await wait_for(lambda: net.book[uetr(7)].status == "ACSC", timeout=3.0)
        assert anyio.current_time() >= next_cycle


async def test_unreadable_pacs008_gets_ff01_when_its_uetr_can_be_found() -> None:
    async with running(config(swift_net())) as sims:
        document = iso20022.encode_pacs008(credit_transfer(swift_payment(8)))
        broken = document.replace(b"<ChrgBr>SHAR</ChrgBr>", b"<ChrgBr>NOPE</ChrgBr>")
        [answer] = await raw_exchange(sims.runtime.ports["swift"], frame(broken), header=4)
        report = iso20022.decode_pacs002(answer)
        assert (report.status, report.reason, report.orgnl_uetr) == ("RJCT", "FF01", uetr(8))
        assert server(sims).book == {}


async def test_technical_errors_are_rjct_ms03_and_fail_without_booking_money() -> None:
    behaviour = {**FAST, "errors": {"technical_error_rate": 1.0, "codes": {"91": 1.0}}}
    cfg = config(network("swift", "swift", behaviour=behaviour, swift={"banks": BANKS}))
    async with running(cfg) as sims:
        reply = await sims.swift().authorize(swift_payment(9))
        assert reply == NetworkReply("failed", "91", "RJCT:MS03")
        assert server(sims).debited_total == 0
        # Status inquiries are never faked by technical errors: the book says RJCT.
        assert (await sims.swift().resolve(swift_payment(9))).outcome == "failed"
