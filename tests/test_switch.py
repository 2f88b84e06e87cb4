"""The switch end to end over TCP, in-process, on asyncio+uvloop and trio."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from loadtests.harness.client import SwitchClient
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.journal import count_duplicates, final_results
from switch.protocols.wire import ErrorReply, Pay, Pong, Reply, encode_request, frame
from switch.serve.config import SwitchConfig
from tests.conftest import RunningSwitch, make_config, start_switch
from tests.payments import card_payment, qr_payment, swift_payment

pytestmark = pytest.mark.anyio


def stand_ins(config: SwitchConfig, card_latency_ms: float | None = None
              ) -> dict[str, StandInNetwork]:
    """The config's stand-in networks; optionally a deterministic card network answering
    every payment approved after exactly ``card_latency_ms``."""
    adapters = {n.name: StandInNetwork(n) for n in config.networks}
    if card_latency_ms is not None:
        adapters["standin-card"] = StandInNetwork(StandInNetworkConfig(
            "standin-card", "card", latency_median_ms=card_latency_ms, latency_sigma=0,
            decline_rate=0, error_rate=0))
    return adapters


async def test_payments_on_every_channel_get_results(running_switch: RunningSwitch) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        for request in (card_payment(), swift_payment(), qr_payment()):
            reply = await client.pay(request)
            assert isinstance(reply, Reply), reply
            assert reply.result.status in {"approved", "declined", "failed"}
            assert not reply.replay
        assert isinstance(await client.ping(), Pong)


async def test_same_key_same_body_replays_the_stored_result(running_switch: RunningSwitch) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        first = await client.pay(card_payment("idem-1"))
        second = await client.pay(card_payment("idem-1"))
        assert isinstance(first, Reply) and isinstance(second, Reply)
        assert second.replay and second.result == first.result
        conflict = await client.pay(card_payment("idem-1", amount=999))
        assert isinstance(conflict, ErrorReply)
        assert conflict.code == "idempotency_conflict" and "idem-1" in conflict.message


async def test_concurrent_duplicates_are_processed_once(running_switch: RunningSwitch) -> None:
    results: list[Reply] = []
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:

        async def send() -> None:
            reply = await client.pay(card_payment("concurrent-1"))
            assert isinstance(reply, Reply)
            results.append(reply)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(send)
    assert len({r.result.payment_id for r in results}) == 1
    assert sum(not r.replay for r in results) == 1
    # And the network saw it once: no double booking on its side either.
    network = running_switch.app.adapters["standin-card"]
    assert network.booked_twice == 0  # type: ignore[attr-defined]


async def test_pipelined_requests_all_answered(running_switch: RunningSwitch) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        replies: dict[str, Reply] = {}

        async def pay(i: int) -> None:
            reply = await client.pay(card_payment(f"pipe-{i}", payer=f"ACCT{i:06d}"))
            assert isinstance(reply, Reply)
            replies[reply.result.payment_id] = reply

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(pay, i)
    assert len(replies) == 200


async def test_invalid_frame_gets_field_error_and_connection_survives(
    running_switch: RunningSwitch,
) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        body = msgspec.to_builtins(card_payment("bad-1"))
        body["amount"] = -1
        bad = await client.request(lambda rid: _RawPay(rid, body))
        assert isinstance(bad, ErrorReply) and bad.message == "payment.amount: Expected `int` >= 1"
        ok = await client.pay(card_payment("good-after-bad"))
        assert isinstance(ok, Reply)


class _RawPay(msgspec.Struct, tag="pay", tag_field="op"):
    id: int
    payment: dict[str, object]


async def test_oversized_frame_closes_only_that_connection(running_switch: RunningSwitch) -> None:
    port = running_switch.endpoints.port
    async with SwitchClient.connect("127.0.0.1", port) as bystander:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send((10 * 1024 * 1024).to_bytes(4, "big"))
        data = b""
        with anyio.fail_after(5):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        await stream.aclose()
        assert b"frame_too_large" in data and b"max_frame_bytes=65536" in data
        assert isinstance(await bystander.pay(card_payment("bystander")), Reply)


async def test_in_flight_limit_per_connection_rejects_with_code(tmp_path: Path) -> None:
    config = make_config(tmp_path, server="max_in_flight_per_connection = 4")
    adapters = stand_ins(config, card_latency_ms=200)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        stream = await anyio.connect_tcp("127.0.0.1", switch.endpoints.port)
        batch = b"".join(
            encode_request(Pay(i, card_payment(f"lim-{i}", payer=f"A{i}"))) for i in range(10)
        )
        await stream.send(batch)
        replies = await _read_replies(stream, 10)
        await stream.aclose()
        codes = sorted(r.code if isinstance(r, ErrorReply) else r.result.status for r in replies)
        assert codes.count("overloaded") == 6 and codes.count("approved") == 4
        switch.app.request_shutdown()


async def _read_replies(stream: anyio.abc.ByteStream, n: int) -> list[Reply | ErrorReply]:
    from switch.protocols.wire import FrameDecoder, decode_response

    decoder = FrameDecoder()
    out: list[Reply | ErrorReply] = []
    with anyio.fail_after(10):
        while len(out) < n:
            for payload in decoder.feed(await stream.receive()):
                response = decode_response(payload)
                assert isinstance(response, (Reply, ErrorReply))
                out.append(response)
    return out


async def test_timeout_makes_outcome_unknown_then_reversal_resolves_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, "")
    config = msgspec.structs.replace(
        config,
        routes=[
            msgspec.structs.replace(r, timeout_s=0.05) if r.channel == "card" else r
            for r in config.routes
        ],
    )
    adapters = stand_ins(config, card_latency_ms=500)
    slow = adapters["standin-card"]
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            reply = await client.pay(card_payment("slow-1"))
            assert isinstance(reply, Reply) and reply.result.status == "unknown"
            assert reply.result.reason == "68"
            with anyio.fail_after(10):
                while True:
                    current = await client.query("slow-1")
                    if isinstance(current, Reply) and current.result.status != "unknown":
                        break
                    await anyio.sleep(0.02)
            assert current.result.status == "reversed"
        # The issuer's hold was voided: the stand-in holds no approval for this key.
        assert slow.approvals_by_key["slow-1"] == 0 and slow.reversals == 1
        switch.app.request_shutdown()
    db = sqlite3.connect(tmp_path / "journal.db")
    assert final_results(db)["slow-1"].status == "reversed"
    assert count_duplicates(db) == 0


async def test_network_refusing_before_send_fails_cleanly(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    adapters = stand_ins(config)
    adapters["standin-qr"].down = True
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            reply = await client.pay(qr_payment())
            assert isinstance(reply, Reply)
            assert (reply.result.status, reply.result.reason) == ("failed", "91")
        switch.app.request_shutdown()


async def test_graceful_shutdown_drains_in_flight_payments(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    adapters = stand_ins(config, card_latency_ms=300)
    replies: list[object] = []
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:

            async def pay(i: int) -> None:
                replies.append(await client.pay(card_payment(f"drain-{i}", payer=f"A{i}")))

            card = adapters["standin-card"]
            async with anyio.create_task_group() as senders:
                for i in range(20):
                    senders.start_soon(pay, i)
                # Shut down once all 20 are at the network (each answered 300 ms later):
                # a fixed sleep raced a loaded machine, shutting down before some arrived.
                with anyio.fail_after(10):
                    while len(card.approvals_by_key) < 20:
                        await anyio.sleep(0.005)
                assert not replies, "all 20 are in flight when the shutdown starts"
                switch.app.request_shutdown()
    assert len(replies) == 20 and all(isinstance(r, Reply) for r in replies)
    assert len(final_results(sqlite3.connect(tmp_path / "journal.db"))) == 20


async def test_admin_endpoints(running_switch: RunningSwitch) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        await client.pay(card_payment("metrics-1"))
    base = f"http://127.0.0.1:{running_switch.endpoints.admin_port}"
    async with httpx.AsyncClient() as http:
        metrics = await http.get(f"{base}/metrics")
        assert metrics.status_code == 200
        assert 'payswitch_payments_total{channel="card",status="approved"} 1.0' in metrics.text
        assert "payswitch_journal_commit_seconds_bucket" in metrics.text
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True


async def test_bad_length_prefix_garbage_is_malformed_not_fatal(
    running_switch: RunningSwitch,
) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        await client.send_raw(frame(b"\xc1\xff\x00"))
        reply = await client.pay(card_payment("after-garbage"))
        assert isinstance(reply, Reply)


async def test_slow_payment_carries_its_id_as_an_exemplar(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    adapters = stand_ins(config, card_latency_ms=30)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config, adapters)  # type: ignore[arg-type]
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            reply = await client.pay(card_payment("slow-exemplar"))
            assert isinstance(reply, Reply)
        base = f"http://127.0.0.1:{switch.endpoints.admin_port}"
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{base}/metrics",
                                   headers={"Accept": "application/openmetrics-text"})).text
        switch.app.request_shutdown()
    exemplar_lines = [line for line in text.splitlines()
                      if line.startswith("payswitch_payment_duration_seconds_bucket")
                      and "# {" in line]
    assert exemplar_lines and all(
        f'payment_id="{reply.result.payment_id}"' in line for line in exemplar_lines)
