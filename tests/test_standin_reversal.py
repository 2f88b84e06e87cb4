"""A reversal of a stand-in approval withdraws its advice.

The switch approves on an unreachable issuer's behalf (stand-in) and queues an 0120
advice for when the issuer is back. An acquirer's 0400 for that payment was accepted and
handed to the resolver, but the advice stayed queued: the reversal and the advice wait
for the same issuer, in either order, and an advice delivered after the reversal made the
issuer hold the cardholder's money for a payment the acquirer had undone. After a
restart, start-up queued the advice again. Now the advice is withdrawn (its exposure
released), and a start does not queue it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from switch.adapters.fakenet import StandInNetwork
from tests.conftest import start_switch
from tests.test_iso8583_door import auth, reversal
from tests.test_iso8583_door_review import KEY, _card, _config, _connect, _journal
from tests.test_server_bounds import _until

pytestmark = pytest.mark.anyio


async def test_a_reversed_stand_in_approval_is_never_advised(tmp_path: Path) -> None:
    config = _config(tmp_path)
    request, key = auth(500), KEY.format(stan=500)
    other, other_key = auth(510, pan="4012888888881881"), KEY.format(stan=510)
    for boot in (1, 2):
        adapters: dict[str, Any] = {n.name: StandInNetwork(n) for n in config.networks}
        card = _card(adapters)
        card.down = True  # the issuer stays unreachable: every advice waits in the queue
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, config, adapters)
            standin = switch.app.standin
            assert standin is not None
            client = await _connect(switch)
            if boot == 1:
                first = await client.call(request)
                assert first["39"] == "00" and first["38"].startswith("S"), first  # stand-in
                assert (await client.call(other))["39"] == "00"
                assert standin.pending == 2
                exposure = dict(standin._per_card)
                assert (await client.call(reversal(request, 501)))["39"] == "00"
                # Withdrawn: only the other payment's advice waits, and the reversed
                # one's amount no longer counts against its card's stand-in limit.
                assert standin.pending == 1
                assert sum(standin._per_card.values()) == sum(exposure.values()) - 1250
            else:
                # The reversal is still under way (the issuer is down): a start queues
                # the advice of the approval that was not reversed, not the reversed one.
                assert [kind for _, kind, _ in _journal(tmp_path, key)] == [
                    "intent", "final", "intent"]
                await _until(lambda: standin.pending == 1)  # noqa: B023 (this boot's)
                assert [a.payment.idempotency_key for a in standin._queue] == [other_key]
                card.down = False
                await _until(lambda: _journal(tmp_path, key)[-1][2] == "reversed")
            await client.stream.aclose()
            switch.app.request_shutdown()


class _SlowIssuer:
    """An adapter whose advice is on the wire until the test lets it land."""

    name = "card-a"

    def __init__(self) -> None:
        self.on_the_wire = anyio.Event()
        self.land = anyio.Event()
        self.order: list[str] = []

    async def advise(self, payment: Any, auth_code: str) -> str:
        self.on_the_wire.set()
        await self.land.wait()
        self.order.append("advice")
        return "00"


class _Journal:
    async def write(self, record: Any, on_full: Any) -> None:
        return None


async def test_a_reversal_waits_for_the_advice_already_on_the_wire() -> None:
    # The advice was on its way to the issuer when the reversal was accepted: it cannot be
    # recalled, so the reversal must reach the issuer after it (and release its hold),
    # never before (the hold would then stay for a reversed payment).
    from switch.clock import Clock
    from switch.model import Result, Status
    from switch.observability.metrics import SwitchMetrics
    from switch.payment.standin import StandIn, StandInConfig
    from tests.payments import card_payment
    from tests.test_core import make_rig

    issuer = _SlowIssuer()
    standin = StandIn(StandInConfig(), {"card-a": issuer}, _Journal(),  # type: ignore[arg-type]
                      Clock(), SwitchMetrics(), lambda endpoint, now: True)
    rig = make_rig()
    payment = rig.core._new_payment(card_payment("on-the-wire"), 0.0)
    assert standin.decide(payment, "cards") is not None
    standin.advise(payment, Result(payment.payment_id, Status.APPROVED, "00", "S1",
                                   stood_in=True), "cards", ("card-a",), b"d")
    async with anyio.create_task_group() as tg:
        tg.start_soon(standin.run)
        await issuer.on_the_wire.wait()
        assert standin.withdraw(payment.payment_id)  # flagged: it is on the wire

        async def reverse() -> None:
            await standin.settled(payment.payment_id)
            issuer.order.append("reversal")

        tg.start_soon(reverse)
        await anyio.sleep(0.05)
        assert issuer.order == []  # the reversal waits for the advice
        issuer.land.set()
        await _until(lambda: len(issuer.order) == 2)
        assert issuer.order == ["advice", "reversal"]
        assert standin.pending == 0 and sum(standin._per_card.values()) == 0
        tg.cancel_scope.cancel()
