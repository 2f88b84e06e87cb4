"""Crash durability: kill -9 the switch mid-load, restart it on the same journal.

Every payment that got a reply must be in the journal with the same result, none may be
booked twice, and a retry with the same idempotency key must return the original result.
This is the invariant the whole journal design exists for, so it is tested against a real
process and a real SIGKILL, not a simulated one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import anyio
import pytest

from loadtests.harness.client import SwitchClient
from loadtests.harness.processes import start_switch, stop_switch
from loadtests.harness.workload import Workload
from switch.journal import count_duplicates, final_results
from switch.model import PaymentRequest, Result
from switch.protocols.wire import FrameDecoder, Pay, Reply, decode_response, encode_request

CONFIG = """
seed = 7
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
mode = "{mode}"
"""


async def _load_until_killed(
    port: int, pid: int, requests: list[PaymentRequest], acked: dict[str, Result]
) -> int:
    """Send ``requests`` over 4 connections; SIGKILL the switch part-way. Returns sent."""
    streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(4)]
    sent = 0

    async def receive(stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                for payload in decoder.feed(await stream.receive()):
                    response = decode_response(payload)
                    if isinstance(response, Reply):
                        acked[requests[response.id].idempotency_key] = response.result
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return

    async def kill_after_progress() -> None:
        # Kill once replies are flowing (not at a fixed time: CI machines are noisy).
        with anyio.fail_after(60):
            # 150: a sync-mode journal (one fsync per record) answers ~100/s on a slow disk,
            # and the core sheds the rest at once, so 300 may come only after the last send.
            while len(acked) < 150:
                await anyio.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    async with anyio.create_task_group() as tg:
        for stream in streams:
            tg.start_soon(receive, stream)
        tg.start_soon(kill_after_progress)
        try:
            for i, request in enumerate(requests):
                await streams[i % 4].send(encode_request(Pay(i, request)))
                sent += 1
                if i % 25 == 24:
                    await anyio.sleep(0.01)  # ~2500/s offered (8 s): payments are in flight
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        with anyio.move_on_after(2):
            await anyio.sleep(2)
        tg.cancel_scope.cancel()
    for stream in streams:
        await stream.aclose()
    return sent


def _unfinished(db: sqlite3.Connection) -> int:
    return int(
        db.execute(
            "SELECT COUNT(*) FROM (SELECT payment_id FROM journal GROUP BY payment_id"
            " HAVING SUM(kind = 'final') = 0)"
        ).fetchone()[0]
    )


async def _wait_until_all_final(journal: Path) -> None:
    with anyio.fail_after(60):
        while True:
            db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
            try:
                if _unfinished(db) == 0:
                    return
            finally:
                db.close()
            await anyio.sleep(0.1)


@pytest.mark.parametrize("mode", ["group", "sync"])
def test_kill_9_mid_load_loses_nothing_and_books_nothing_twice(tmp_path: Path, mode: str) -> None:
    journal = tmp_path / "journal.db"
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=journal, mode=mode))
    workload = Workload(seed=11)
    requests = [
        request for request, kind in (workload.next() for _ in range(20000)) if kind == "new"
    ]
    acked: dict[str, Result] = {}

    proc, endpoints = start_switch(config, tmp_path / "ready.json")
    try:
        sent = anyio.run(_load_until_killed, endpoints["port"], endpoints["pid"], requests, acked)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) > 100, "the kill should land mid-load, after some replies"
    assert sent > len(acked), "some payments should have been in flight at the kill"
    assert sent < len(requests), "the kill should land before the load ends"

    # Restart on the same journal: recovery resolves what was in flight.
    proc, endpoints = start_switch(config, tmp_path / "ready.json")
    try:
        db = sqlite3.connect(journal)
        journaled = final_results(db)
        for key, result in acked.items():
            if result.status == "unknown":
                continue  # told "unknown": any resolution is consistent
            assert key in journaled, f"acknowledged payment {key} lost"
            assert journaled[key] == result, f"{key}: journal differs from the reply"
        assert count_duplicates(db) == 0

        async def retry() -> None:
            async with SwitchClient.connect("127.0.0.1", endpoints["port"]) as client:
                by_key = {r.idempotency_key: r for r in requests}
                for key in list(acked)[:200]:
                    reply = await client.pay(by_key[key])
                    assert isinstance(reply, Reply), reply
                    assert reply.replay, f"{key} was processed again after restart"
                    if acked[key].status != "unknown":
                        assert reply.result == acked[key]
                # Payments sent but never answered: a retry settles them exactly once.
                unanswered = [
                    r for r in requests[: len(requests) // 2] if r.idempotency_key not in acked
                ][:50]
                for request in unanswered:
                    first = await client.pay(request)
                    again = await client.pay(request)
                    assert isinstance(first, Reply) and isinstance(again, Reply)
                    assert again.replay and again.result.payment_id == first.result.payment_id

        anyio.run(retry)
        # Recovery resolves every payment that was in flight at the kill.
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_wait_until_all_final, journal)
    finally:
        assert stop_switch(proc) == 0
    db = sqlite3.connect(journal)
    assert count_duplicates(db) == 0
    assert _unfinished(db) == 0, "recovery left payments without a final state"
