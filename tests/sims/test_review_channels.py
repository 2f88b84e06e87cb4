"""Reviewed defects of the simulated networks, each reproduced before it was fixed."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from channels.qr import QrNetwork
from channels.swift import SwiftNetwork
from switch.adapters.swift import credit_transfer
from switch.protocols import iso8583, iso20022
from switch.protocols.framing import frame
from switch.protocols.qrapi import QrCheckStatus, QrPayRequest, decode_reply, encode
from tests.sims.test_card import (
    AT,
    config,
    network,
    qr_code,
    raw_exchange,
    running,
    swift_payment,
)

pytestmark = pytest.mark.anyio

CONSTANT: dict[str, Any] = {"latency": {"median_ms": 40.0, "sigma": 0.0, "max_ms": 100.0}}


def qr_net(**extra: Any) -> dict[str, Any]:
    return network("qr", "qr", qr={"merchants": 100, "max_amount_minor": 1_000_000}, **extra)


def qr_server(sims: Any) -> QrNetwork:
    net = sims.server("qr")
    assert isinstance(net, QrNetwork)
    return net


def pay(ref: str, merchant: str = "M0000007", amount: int = 2500) -> bytes:
    return frame(encode(QrPayRequest(ref=ref, payload=qr_code(merchant), currency="CNY",
                                     amount=amount)))


async def exchange_in_steps(port: int, chunks: list[bytes], answers: int, header: int = 4,
                            pause_s: float = 0.01, timeout: float = 2.0) -> list[bytes]:
    """Send ``chunks`` on one connection ``pause_s`` apart; read ``answers`` frames back."""
    return await raw_exchange(port, chunks, header, answers, timeout, pause_s)


# --------------------------------------------------------------------------- QR


async def test_qr_a_duplicate_queued_behind_its_original_is_answered_its_decision() -> None:
    # One service slot: C holds it, A (ref R) and its duplicate B (ref R) queue behind it.
    # A is decided (approved) before B's turn; B must say so, not the "pending" it saw
    # when it arrived.
    cfg = config(qr_net(behaviour={**CONSTANT,
                                   "capacity": {"max_concurrency": 1, "max_queue": 8}}))
    async with running(cfg) as sims:
        answers = [decode_reply(a) for a in await exchange_in_steps(
            sims.runtime.ports["qr"], [pay("C-1", "M0000008"), pay("R-1") + pay("R-1")],
            answers=3)]
        by_ref = sorted((a.ref, a.status) for a in answers)
        assert by_ref == [("C-1", "approved"), ("R-1", "approved"), ("R-1", "approved")]
        assert qr_server(sims).credited == {"M0000008": 2500, "M0000007": 2500}


async def test_qr_a_refused_resend_of_an_approved_reference_never_reads_failed() -> None:
    async with running(config(qr_net())) as sims:
        port, net = sims.runtime.ports["qr"], qr_server(sims)
        [first] = await raw_exchange(port, pay("R-2"), header=4)
        assert decode_reply(first).status == "approved"
        sims.inject("down", "qr", match=["M0000007"])  # this merchant's payments refused
        [again] = await raw_exchange(port, pay("R-2"), header=4)
        assert decode_reply(again).status == "approved", decode_reply(again)
        # A new reference is still refused, and not booked.
        [fresh] = await raw_exchange(port, pay("R-3"), header=4)
        assert decode_reply(fresh).status == "failed"
        assert "R-3" not in net.book
        [status] = await raw_exchange(port, frame(encode(QrCheckStatus("R-2"))), header=4)
        assert decode_reply(status).status == "approved"


async def test_qr_past_the_in_flight_bound_a_booked_reference_keeps_its_status() -> None:
    cfg = config(qr_net(behaviour=CONSTANT, max_in_flight_per_connection=1))
    async with running(cfg) as sims:
        port = sims.runtime.ports["qr"]
        [first] = await raw_exchange(port, pay("R-4"), header=4)
        assert decode_reply(first).status == "approved"
        # The first request fills the connection's bound; the resend behind it is overloaded.
        answers = [decode_reply(a) for a in await raw_exchange(
            port, pay("R-5") + pay("R-4"), header=4, answers=2)]
        assert sorted((a.ref, a.status) for a in answers) == [
            ("R-4", "approved"), ("R-5", "approved")]


# --------------------------------------------------------------------------- SWIFT

SWIFT_BANKS: list[dict[str, Any]] = [
    {"bic": "DEUTDEFF", "latency_ms": 0.5}, {"bic": "BNPAFRPP", "latency_ms": 0.5}]


def swift_net(**extra: Any) -> dict[str, Any]:
    return network("swift", "swift", swift={"banks": SWIFT_BANKS, "settlement_delay_s": 60},
                   **extra)


def pacs008(n: int) -> bytes:
    ct = credit_transfer(swift_payment(n))
    return frame(iso20022.encode_pacs008(ct))


def status_of(answer: bytes) -> tuple[str, str | None]:
    report = iso20022.decode(answer)
    assert isinstance(report, iso20022.StatusReport)
    return report.status, report.reason


async def test_swift_a_refused_resend_of_an_accepted_uetr_is_not_answered_rjct() -> None:
    async with running(config(swift_net())) as sims:
        port = sims.runtime.ports["swift"]
        [first] = await raw_exchange(port, pacs008(1), header=4)
        assert status_of(first) == ("ACCP", None)
        sims.inject("down", "swift", match=["DE-FR"])
        [again] = await raw_exchange(port, pacs008(1), header=4)
        assert status_of(again) == ("ACCP", None)
        net = sims.server("swift")
        assert isinstance(net, SwiftNetwork)
        assert net.book[swift_payment(1).swift.uetr].status == "ACCP"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- framing


async def test_requests_before_a_bad_length_prefix_in_the_same_read_are_served() -> None:
    # Whether frames share a read with a broken prefix is up to TCP segmentation; what
    # arrived intact before it is served either way, then the connection is closed.
    async with running(config(network("card", "card"))) as sims:
        port, server = sims.runtime.ports["card"], sims.server("card")
        adapters_links = set(server._conns)
        echo = iso8583.network_request("301", stan=7, transmitted_at=AT)
        data = iso8583.frame(iso8583.encode(echo)) + b"\xff\xff" + b"x" * 64
        [answer] = await raw_exchange(port, data)
        reply = iso8583.decode(answer)
        assert (reply.mti, reply.fields[11]) == ("0810", "000007")
        await anyio.sleep(0.05)
        assert server.bad_frames == 1
        assert set(server._conns) == adapters_links  # closed once it had answered


# --------------------------------------------------------------------------- admin API


async def test_admin_post_faults_refuses_a_huge_body_without_buffering_it() -> None:
    from types import SimpleNamespace

    from channels.server import _admin_routes

    app = _admin_routes(SimpleNamespace())  # type: ignore[arg-type]
    chunk, chunks = b"x" * 65536, 512  # 32 MiB offered, far past the 64 KiB bound
    consumed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if consumed >= chunks:
            return {"type": "http.disconnect"}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < chunks}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/faults", "raw_path": b"/faults",
             "root_path": "", "scheme": "http", "query_string": b"", "headers": [],
             "server": ("127.0.0.1", 7280), "client": ("127.0.0.1", 5000),
             "http_version": "1.1", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert consumed <= 2, f"read {consumed} chunks ({consumed * 64} KiB) before refusing"


# --------------------------------------------------------------------------- determinism


def auth_0100(stan: int, pan: str = "4111111111111111", amount: int = 100) -> bytes:
    msg = iso8583.IsoMessage("0100", {
        2: pan, 3: "000000", 4: f"{amount:012d}", 7: "0115100000", 11: f"{stan:06d}",
        41: "TERMX001", 49: "840"})
    return iso8583.frame(iso8583.encode(msg))


async def pipelined_codes(seed: int, behaviour: dict[str, Any], amount: int = 100,
                          count: int = 40) -> list[tuple[str, str]]:
    pan = "4111111111111111"
    scheme = {"name": "paynet", "seed": 3, "issuers": [{
        "name": "alpha", "bins": ["41"], "accounts": [{"pan": pan, "balance": 10 * amount}]}]}
    cfg = config(network("card", "card", seed=seed, behaviour=behaviour), scheme=scheme)
    async with running(cfg) as sims:
        data = b"".join(auth_0100(n, pan, amount) for n in range(1, count + 1))
        answers = await raw_exchange(sims.runtime.ports["card"], data, answers=count)
    return sorted((m.fields[11], m.fields[39]) for m in map(iso8583.decode, answers))


async def test_pipelined_requests_get_the_same_seeded_fates_on_every_run() -> None:
    # One write, forty 0100s: each STAN's technical error (or not) must be the seed's,
    # not the order in which the event loop ran their tasks (trio shuffles that order).
    behaviour = {"latency": {"median_ms": 1.0, "sigma": 0.2, "max_ms": 20.0},
                 "errors": {"technical_error_rate": 0.5}}
    first = await pipelined_codes(5, behaviour)
    assert {code for _, code in first} >= {"00", "91"}
    for _ in range(3):
        assert await pipelined_codes(5, behaviour) == first


async def test_queued_requests_are_decided_in_arrival_order() -> None:
    # Ten approvals' worth of balance, forty 0100s queued behind one service slot: the first
    # ten STANs to arrive are approved, the rest declined 51, on every run.
    behaviour = {"latency": {"median_ms": 1.0, "sigma": 0.0, "max_ms": 20.0},
                 "capacity": {"max_concurrency": 1, "max_queue": 64}}
    expected = [(f"{n:06d}", "00" if n <= 10 else "51") for n in range(1, 41)]
    for _ in range(5):  # a shuffled order shows on about one run in two
        assert await pipelined_codes(5, behaviour) == expected


# --------------------------------------------------------------------------- network management


async def test_an_echo_past_the_in_flight_bound_is_still_answered() -> None:
    # Network management is answered at once, whatever the connection's backlog: an echo
    # dropped under load would read to the acquirer as a dead link.
    slow = {"latency": {"median_ms": 200.0, "sigma": 0.0, "max_ms": 1000.0}}
    cfg = config(network("card", "card", behaviour=slow, max_in_flight_per_connection=1))
    async with running(cfg) as sims:
        echo = iso8583.network_request("301", stan=8, transmitted_at=AT)
        data = auth_0100(1) + iso8583.frame(iso8583.encode(echo))
        answers = [iso8583.decode(a) for a in await raw_exchange(
            sims.runtime.ports["card"], data, answers=2)]
        assert sorted((m.mti, m.fields[11]) for m in answers) == [
            ("0110", "000001"), ("0810", "000008")]
        assert answers[0].mti == "0810"  # at once, not after the 0110


# --------------------------------------------------------------------------- slow


async def test_slow_multiplies_the_correspondents_latency_too() -> None:
    # Two hops of 100 ms (debtor's and creditor's banks) and 1 ms of service: a network
    # "slow" by 5 must take about 1 s, not the 0.2 s of its correspondents plus 5 ms.
    banks = [{"bic": "DEUTDEFF", "latency_ms": 100.0}, {"bic": "BNPAFRPP", "latency_ms": 100.0}]
    quick = {"latency": {"median_ms": 1.0, "sigma": 0.0, "max_ms": 10.0}}
    cfg = config(network("swift", "swift", behaviour=quick,
                         swift={"banks": banks, "settlement_delay_s": 60}))
    async with running(cfg) as sims:
        port = sims.runtime.ports["swift"]
        start = anyio.current_time()
        [answer] = await raw_exchange(port, pacs008(1), header=4, timeout=5.0)
        assert status_of(answer)[0] == "ACCP"
        assert 0.2 <= anyio.current_time() - start < 0.9
        sims.inject("slow", "swift", factor=5.0)
        start = anyio.current_time()
        [answer] = await raw_exchange(port, pacs008(2), header=4, timeout=5.0)
        assert status_of(answer)[0] == "ACCP"
        assert anyio.current_time() - start >= 1.0


# --------------------------------------------------------------------------- QR amounts


@pytest.mark.parametrize("amount", ["0", "0.00"])
async def test_qr_a_dynamic_code_for_nothing_is_not_approved(amount: str) -> None:
    # A payer's amount must be at least 1 (QrPayRequest); a dynamic QR fixing 0 was
    # approved, booking and settling a payment of nothing.
    async with running(config(qr_net())) as sims:
        request = QrPayRequest(ref="Z-1", payload=qr_code("M0000007", amount=amount),
                               currency="CNY")
        [answer] = await raw_exchange(sims.runtime.ports["qr"], frame(encode(request)),
                                      header=4)
        reply = decode_reply(answer)
        assert (reply.status, reply.reason.split(":")[0]) == ("declined", "INVALID_QR")
        assert qr_server(sims).credited == {}
