"""Hostile and unlucky input against a running switch (issue 11, defects 1-3).

Each test sends what once ended the process and then checks the same connection (or a
new one) is still served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from loadtests.harness.client import SwitchClient
from switch.adapters.fakenet import StandInNetwork
from switch.journal import encode_payment, encode_result, open_database
from switch.journal.store import INSERT
from switch.model import Result, Status
from switch.protocols.wire import ErrorReply, Reply, frame
from tests.conftest import RunningSwitch, make_config, start_switch
from tests.payments import card_payment
from tests.test_validation_codecs import _unencodable_payment, with_card

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


async def test_unicode_digits_in_a_card_payment_are_refused_not_fatal(
    running_switch: RunningSwitch,
) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:
        for i, fields in enumerate([{"expiry": "28¹²"}, {"expiry": "٢٨١٢"}, {"mcc": "٥٩٩٩"},
                                    {"terminal_id": "TÉRM0001"}, {"merchant_id": "MÜ"}]):
            request = with_card(**fields)
            reply = await client.pay(msgspec.structs.replace(request, idempotency_key=f"u{i}"))
            assert isinstance(reply, ErrorReply) and reply.code == "invalid", reply
            assert reply.message.startswith(f"payment.card.{next(iter(fields))}:")
        reply = await client.pay(card_payment("after-unicode"))
        assert isinstance(reply, Reply), reply


async def test_a_poison_advice_in_the_journal_is_quarantined_and_the_switch_serves(
    tmp_path: Path,
) -> None:
    """A stood-in approval whose 0120 cannot be encoded (journaled before validation got
    strict) ended the switch 0.8 s after every start. Now it is quarantined, counted, and
    the switch keeps serving."""
    poison = msgspec.structs.replace(
        _unencodable_payment(), payment_id="P0-1", idempotency_key="poison-1")
    result = Result("P0-1", Status.APPROVED, "00", "S12345", "card", stood_in=True)
    _journal(tmp_path, [("P0-1", "poison-1", kind, "approved", b"h" * 16, record, 1)
                        for kind, record in (("intent", encode_payment(poison)),
                                             ("final", encode_result(result)))])
    async with _switch_over_a_card_simulator(tmp_path) as (switch, _sims):
        standin = switch.app.standin
        assert standin is not None
        with anyio.fail_after(10):
            while standin.quarantined == 0:
                await anyio.sleep(0.02)
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            reply = await client.pay(card_payment("after-poison"))
            assert isinstance(reply, Reply) and reply.result.status == "approved", reply
        assert switch.app.readiness() == (True, "ok")
        metrics = switch.app.metrics.registry.get_sample_value(
            "payswitch_quarantined_records_total", {"kind": "advice"})
        assert metrics == 1.0
        assert standin.pending == 0
        switch.app.request_shutdown()


async def test_a_poison_resolution_in_the_journal_is_quarantined_not_retried(
    tmp_path: Path,
) -> None:
    """A crash-recovered card payment whose 0400 cannot be encoded was retried on the
    resolution schedule (150 attempts, each a logged traceback, for ten minutes). Now it
    is quarantined at once: counted, handed to an operator, still unknown in the journal,
    and the switch serves."""
    poison = msgspec.structs.replace(
        _unencodable_payment(), payment_id="P0-2", idempotency_key="poison-2")
    # Sent, then the crash: no final.
    _journal(tmp_path, [("P0-2", "poison-2", "intent", "sent", b"h" * 16,
                         encode_payment(poison), 1)])
    async with _switch_over_a_card_simulator(tmp_path) as (switch, sims):
        registry = switch.app.metrics.registry

        def quarantined() -> float | None:
            return registry.get_sample_value(
                "payswitch_quarantined_records_total", {"kind": "resolution"})

        with anyio.fail_after(10):
            while not quarantined():
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)  # ten times the first retry delay: none may come
        assert quarantined() == 1.0
        assert registry.get_sample_value("payswitch_unresolved_payments") == 1.0
        assert registry.get_sample_value("payswitch_unresolved_escalated_payments") == 1.0
        assert sims.adapters["card"].reversals_sent == 0
        async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
            reply = await client.pay(card_payment("after-poison-resolution"))
            assert isinstance(reply, Reply) and reply.result.status == "approved", reply
        switch.app.request_shutdown()


def _journal(tmp_path: Path, rows: list[tuple[object, ...]]) -> None:
    """A journal holding ``rows``, as an earlier run left it."""
    db = open_database(tmp_path / "journal.db", "group")
    with db:
        db.executemany(INSERT, rows)
    db.close()


@asynccontextmanager
async def _switch_over_a_card_simulator(tmp_path: Path) -> AsyncIterator[tuple[RunningSwitch, Any]]:
    """The switch on ``tmp_path``'s journal, its card network a real simulated issuer over
    TCP (where a poison record fails to encode), the others in-process."""
    from tests.sims.test_card import config, network, running

    routes = "".join(f'[[networks]]\nname = "{ch}"\nchannel = "{ch}"\n'
                     f'[[routes]]\nchannel = "{ch}"\nnetwork = "{ch}"\ntimeout_s = 1.0\n'
                     for ch in ("card", "swift", "qr"))
    async with running(config(network("card", "card"))) as sims, \
            anyio.create_task_group() as tg:
        cfg = make_config(tmp_path, routes)
        adapters: dict[str, object] = {n.name: StandInNetwork(n) for n in cfg.networks}
        adapters["card"] = sims.adapters["card"]
        yield await start_switch(tg, cfg, adapters), sims
