"""Every fault kind, observed from the switch's side, and the money invariant under each.

A batch of card, SWIFT and QR payments runs concurrently while one fault is active on all
three networks, each payment the way the pipeline and resolver treat it: authorize under a
timeout (NotSent -> failed; cancelled after sending -> unknown); once the fault is cleared,
every unknown payment is resolved (reversal / pacs.028 / check-status) until it answers.

Then: every payment has exactly one outcome, and each simulator's books agree with it -- a
hold (card), a debit (SWIFT) or a credit (QR) exists exactly for the payments the adapter
saw approved, once, and for no other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from channels.qr import QrNetwork
from channels.swift import SwiftNetwork
from switch.adapters.base import NetworkReply, NotSent
from switch.model import Payment
from switch.serve.http import admin_headers
from tests.sims.test_card import (
    ROOT,
    Sims,
    card_payment,
    config,
    example_config_file,
    network,
    qr_code,
    qr_payment,
    running,
    swift_payment,
    uetr,
    wait_for,
)

pytestmark = pytest.mark.anyio

#: The switch-side timeout per fault kind: short where no answer can come (so the test
#: does not wait in vain), generous where one should (a busy machine must not turn an
#: answer into a timeout and fail the test for the wrong reason).
TIMEOUTS_S: dict[str, float] = {"blackhole": 0.1, "reset": 0.1, "malformed": 0.1,
                                "late": 0.1, "flapping": 0.2}
DEFAULT_TIMEOUT_S = 1.0
BATCH = 8
Result = tuple[str, NetworkReply]  # (path: answered | not_sent | resolved, reply)


async def settle(adapter: Any, payment: Payment, timeout: float,
                 authorized: Callable[[], None], cleared: anyio.Event) -> Result:
    """One payment as pipeline + resolver handle it."""
    reply: NetworkReply | None = None
    try:
        with anyio.move_on_after(timeout):
            reply = await adapter.authorize(payment)
    except NotSent:
        authorized()
        return "not_sent", NetworkReply("failed", "91")
    authorized()
    if reply is not None:
        return "answered", reply
    await cleared.wait()
    with anyio.fail_after(5):
        while True:
            resolved: NetworkReply | None = None
            try:
                with anyio.move_on_after(1.0):
                    resolved = await adapter.resolve(payment)
            except NotSent:
                pass
            if resolved is not None:
                return "resolved", resolved
            await anyio.sleep(0.02)


def batch_payments() -> dict[str, list[Payment]]:
    card = [card_payment(100 + i, 100 + i, token=f"card{i % 3}",
                         bin="411111" if i % 2 else "422222") for i in range(BATCH)]
    swift = [swift_payment(200 + i, 10_000 + i,
                           creditor_agent="BNPAFRPP" if i % 2 else "BARCGB22")
             for i in range(BATCH)]
    qr = [qr_payment(300 + i, 1000 + i, qr_code("M0000007" if i % 2 else "M0000042"))
          for i in range(BATCH)]
    return {"card": card, "swift": swift, "qr": qr}


#: The fault's parameters, and for "partial", each network's match (a BIN, a corridor, a
#: merchant id prefix): the odd-numbered payments of each batch fall inside it.
FAULTS: dict[str, dict[str, Any]] = {
    "down": {},
    "blackhole": {},
    "reset": {"rate": 1.0},
    "malformed": {"rate": 1.0},
    "duplicate": {"rate": 1.0},
    "late": {"rate": 1.0, "delay_s": 0.4},
    "error_burst": {"rate": 0.5},
    "flapping": {"period_s": 0.1, "start_down": True},
    "slow": {"factor": 3.0},
    "partial": {},
}
PARTIAL_MATCH = {"card": ["4111"], "swift": ["DE-FR"], "qr": ["M0000007"]}


def three_networks(**card_extra: Any) -> dict[str, Any]:
    return config(network("card", "card", **card_extra), network("swift", "swift"),
                  network("qr", "qr"))


async def run_batch(sims: Sims, kind: str) -> dict[str, dict[str, Result]]:
    for name in ("card", "swift", "qr"):
        params = dict(FAULTS[kind])
        if kind == "partial":
            params["match"] = PARTIAL_MATCH[name]
        sims.inject(kind, name, **params)
    adapters: dict[str, Any] = {"card": sims.card(), "swift": sims.swift(), "qr": sims.qr()}
    if kind == "down":
        await wait_for(lambda: all(a.pool.ready_links == 0 for a in adapters.values()))
    payments = batch_payments()
    total = sum(len(batch) for batch in payments.values())
    pending = total
    all_authorized = anyio.Event()
    cleared = anyio.Event()

    def authorized() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_authorized.set()

    results: dict[str, dict[str, Result]] = {name: {} for name in payments}

    async def one(name: str, payment: Payment) -> None:
        timeout = TIMEOUTS_S.get(kind, DEFAULT_TIMEOUT_S)
        outcome = await settle(adapters[name], payment, timeout, authorized, cleared)
        assert payment.payment_id not in results[name], "two outcomes for one payment"
        results[name][payment.payment_id] = outcome

    async with anyio.create_task_group() as tg:
        for name, batch in payments.items():
            for payment in batch:
                tg.start_soon(one, name, payment)
        await all_authorized.wait()
        for name in payments:
            sims.clear(name)
        cleared.set()
    assert {name: len(r) for name, r in results.items()} == {n: BATCH for n in payments}
    check_money(sims, payments, results)
    return results


def check_money(sims: Sims, payments: dict[str, list[Payment]],
                results: dict[str, dict[str, Result]]) -> None:
    scheme = sims.scheme
    approved_total = 0
    for payment in payments["card"]:
        _, reply = results["card"][payment.payment_id]
        assert payment.card is not None
        held = scheme.active_hold((payment.card.stan, "TERM0001", "0115100000"))
        assert held == (payment.amount if reply.outcome == "approved" else 0), (payment, reply)
        approved_total += held
    scheme.check_ledger()
    assert sum(acct.held for acct in scheme.accounts.values()) == approved_total

    swift = sims.server("swift")
    assert isinstance(swift, SwiftNetwork)
    debited = 0
    for payment in payments["swift"]:
        _, reply = results["swift"][payment.payment_id]
        record = swift.book.get(uetr(int(payment.payment_id.removeprefix("P1-"))))
        booked = record is not None and record.status in ("ACCP", "ACSP", "ACSC")
        assert booked == (reply.outcome == "approved"), (payment.payment_id, reply, record)
        debited += payment.amount if booked else 0
    assert swift.debited_total == debited

    qr = sims.server("qr")
    assert isinstance(qr, QrNetwork)
    credited = 0
    for payment in payments["qr"]:
        _, reply = results["qr"][payment.payment_id]
        entry = qr.book.get(payment.payment_id)
        paid = entry is not None and entry.status == "approved"
        assert paid == (reply.outcome == "approved"), (payment.payment_id, reply, entry)
        credited += payment.amount if paid else 0
    assert sum(qr.credited.values()) == credited


def paths(results: dict[str, dict[str, Result]], name: str) -> set[str]:
    return {path for path, _ in results[name].values()}


@pytest.mark.parametrize("kind", list(FAULTS))
async def test_each_fault_ends_every_payment_once_and_books_agree(kind: str) -> None:
    async with running(three_networks()) as sims:
        results = await run_batch(sims, kind)
        adapters: dict[str, Any] = {"card": sims.card(), "swift": sims.swift(), "qr": sims.qr()}
        every = {name: paths(results, name) for name in adapters}
        if kind == "down":
            assert every == {name: {"not_sent"} for name in adapters}
        elif kind in ("blackhole", "reset", "malformed", "late"):
            # Sent, never (usefully) answered: unknown, then resolved once cleared.
            # (Requests written after a reset killed their connection are NotSent.)
            for name in adapters:
                assert "resolved" in every[name] and every[name] <= {"resolved", "not_sent"}
        elif kind in ("duplicate", "slow", "error_burst", "partial"):
            assert every == {name: {"answered"} for name in adapters}
        if kind in ("blackhole", "reset", "malformed", "late"):
            for path, reply in results["card"].values():
                if path == "resolved":
                    assert reply.outcome == "reversed"
        if kind == "malformed":
            assert all(adapter.malformed >= 1 for adapter in adapters.values())
        if kind == "duplicate":
            await wait_for(lambda: all(a.duplicates >= 1 for a in adapters.values()))
        if kind == "late":
            # SWIFT and QR resolve on the payment's own key, so a late answer may complete
            # the status inquiry instead (the same truth); a reversal has its own key.
            await wait_for(lambda: adapters["card"].late >= 1)
        if kind == "error_burst":
            failed = {reply.reason for _, reply in results["card"].values()
                      if reply.outcome == "failed"}
            assert failed and failed <= {"91", "96"}
        if kind == "partial":
            for name in adapters:
                for pid, (_, reply) in results[name].items():
                    inside = int(pid.removeprefix("P1-")) % 2 == 1
                    assert (reply.outcome == "failed") == inside, (name, pid, reply)
                    if inside:
                        assert reply.reason == "91"
        # Stray answers are counted, never raised, never double-book (checked above); no
        # payment waiter is left behind (the card adapter's may hold an echo in flight).
        assert sims.swift().in_flight == sims.qr().in_flight == 0
        assert sims.card().in_flight <= sims.card().config.connections


async def test_blackhole_cleared_lets_resolve_settle_a_timed_out_authorization() -> None:
    async with running(three_networks()) as sims:
        card = sims.card()
        payment = card_payment(400, 777)
        sims.inject("blackhole", "card")
        with anyio.move_on_after(0.1) as scope:
            await card.authorize(payment)
        assert scope.cancelled_caught
        # While blackholed, the echo goes unanswered and the links are dropped.
        await wait_for(lambda: card.pool.ready_links == 0)
        with pytest.raises(NotSent):
            await card.authorize(card_payment(401))
        sims.clear("card")
        await wait_for(lambda: card.pool.ready_links == 2)
        assert await card.resolve(payment) == NetworkReply("reversed", "00", "010000000400")
        sims.scheme.check_ledger()


async def test_down_refuses_connections_and_recovery_reconnects() -> None:
    async with running(three_networks()) as sims:
        qr = sims.qr()
        sims.inject("down", "qr", duration_s=0.2)
        await wait_for(lambda: qr.pool.ready_links == 0)
        with pytest.raises(NotSent):
            await qr.authorize(qr_payment(500))
        await wait_for(lambda: qr.pool.connect_failures >= 1)  # refused by the kernel
        await wait_for(lambda: qr.pool.ready_links == 2, timeout=3)
        assert (await qr.authorize(qr_payment(501))).outcome == "approved"


async def test_late_answer_is_counted_and_dropped_never_changing_the_outcome() -> None:
    async with running(three_networks()) as sims:
        swift = sims.swift()
        sims.inject("late", "swift", rate=1.0, delay_s=0.1)
        payment = swift_payment(600)
        with anyio.move_on_after(0.03) as scope:
            await swift.authorize(payment)
        assert scope.cancelled_caught
        await wait_for(lambda: swift.late == 1)
        assert (swift.unmatched, swift.duplicates) == (0, 0)
        sims.clear("swift")
        assert (await swift.resolve(payment)).outcome == "approved"


async def test_fault_sequence_is_reproducible_with_the_same_seed() -> None:
    async def outcome_sequence() -> list[tuple[str, str]]:
        noisy = {"latency": {"median_ms": 1.0, "sigma": 0.2, "max_ms": 20.0},
                 "errors": {"technical_error_rate": 0.3}}
        cfg = config(network("card", "card", seed=9, behaviour=noisy),
                     network("swift", "swift", seed=9, behaviour=noisy),
                     network("qr", "qr", seed=9, behaviour=noisy))
        async with running(cfg) as sims:
            sims.inject("error_burst", "card", rate=0.5, match=["4111"])
            sequence: list[tuple[str, str]] = []
            for i in range(12):
                for adapter, payment in ((sims.card(), card_payment(700 + i, 50, bin="411111")),
                                         (sims.swift(), swift_payment(700 + i)),
                                         (sims.qr(), qr_payment(700 + i))):
                    reply = await adapter.authorize(payment)
                    sequence.append((reply.outcome, reply.reason))
            return sequence

    first, second = await outcome_sequence(), await outcome_sequence()
    assert first == second
    assert {"approved", "failed"} <= {outcome for outcome, _ in first}


async def test_admin_api_injects_lists_clears_and_exports_metrics() -> None:
    cfg = three_networks()
    cfg["admin"] = {"enabled": True}
    async with running(cfg) as sims:
        base = f"http://127.0.0.1:{sims.runtime.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5, headers=admin_headers()) as http:
            created = await http.post("/faults", json={
                "kind": "error_burst", "endpoint": "card", "rate": 1.0, "duration_s": 30})
            assert created.status_code == 201, created.text
            listed = (await http.get("/faults")).json()["faults"]
            assert [(f["kind"], f["endpoint"]) for f in listed] == [("error_burst", "card")]
            assert (await sims.card().authorize(card_payment(800))).outcome == "failed"
            bad = await http.post("/faults", json={"kind": "slow", "endpoint": "card"})
            assert bad.status_code == 400 and "factor" in bad.json()["error"]
            unknown = await http.post("/faults", json={"kind": "down", "endpoint": "mars"})
            assert unknown.status_code == 404
            metrics = (await http.get("/metrics")).text
            assert 'channels_active_faults{network="card"} 1.0' in metrics
            assert 'channels_requests_total{network="card",outcome="error"} 1.0' in metrics
            assert "channels_latency_seconds_bucket" in metrics
            cleared = (await http.delete("/faults/card")).json()["cleared"]
            assert cleared == [created.json()["id"]]
            assert (await http.get("/faults")).json()["faults"] == []
            assert (await sims.card().authorize(card_payment(801))).outcome == "approved"


def test_cli_serves_the_config_writes_the_ready_file_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    cfg = example_config_file(tmp_path, tmp_path / "settlement")
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "channels", "serve", "--config", str(cfg),
         "--ready-file", str(ready), "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.025)
        assert ready.exists(), proc.stderr.read().decode() if proc.stderr else ""
        doc = json.loads(ready.read_text())
        assert set(doc) == {"card-primary", "card-secondary", "swift", "qr", "admin_port"}
        assert doc["card-primary"]["kind"] == "card" and doc["card-primary"]["port"] > 0
        fault = msgspec.json.encode({"kind": "blackhole", "endpoint": "card-primary",
                                     "duration_s": 10})
        reply = httpx.post(f"http://127.0.0.1:{doc['admin_port']}/faults", content=fault,
                           headers=admin_headers())
        assert reply.status_code == 201
        faults = httpx.get(f"http://127.0.0.1:{doc['admin_port']}/faults",
                           headers=admin_headers("auditor")).json()["faults"]
        assert faults[0]["kind"] == "blackhole"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""


async def test_switch_pipeline_and_resolver_over_the_simulators(tmp_path: Path) -> None:
    """The real pipeline with these adapters: approvals, and a blackholed card payment that
    goes unknown and is reversed by the resolver once the fault is cleared."""
    from loadtests.harness.client import SwitchClient
    from switch.protocols.wire import Reply
    from tests.conftest import make_config, start_switch
    from tests.payments import card_payment as card_request
    from tests.payments import qr_payment as qr_request
    from tests.payments import swift_payment as swift_request

    routes = "".join(
        f'[[networks]]\nname = "{ch}"\nchannel = "{ch}"\n'
        f'[[routes]]\nchannel = "{ch}"\nnetwork = "{ch}"\ntimeout_s = 0.3\n'
        for ch in ("card", "swift", "qr"))
    async with running(three_networks()) as sims, anyio.create_task_group() as tg:
        switch = await start_switch(tg, make_config(tmp_path, routes), sims.adapters)
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            for request in (card_request("e2e-1"), swift_request("e2e-2"), qr_request("e2e-3")):
                reply = await client.pay(request)
                assert isinstance(reply, Reply) and reply.result.status == "approved", reply
            sims.inject("blackhole", "card", duration_s=0.5)
            reply = await client.pay(card_request("e2e-4", amount=4321))
            assert isinstance(reply, Reply) and reply.result.status == "unknown"
            status = "unknown"
            with anyio.fail_after(8):
                while status == "unknown":
                    await anyio.sleep(0.05)
                    final = await client.query("e2e-4")
                    assert isinstance(final, Reply), final
                    status = final.result.status
            assert status == "reversed"
        # Only the approved e2e-1 still holds money; e2e-4's hold was reversed.
        assert sum(acct.held for acct in sims.scheme.accounts.values()) == 1000
        switch.app.request_shutdown()
