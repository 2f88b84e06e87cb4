"""FrontCore.reverse, the live shell of the reversal decisions (switch/payment/reversal.py):
what happens between its awaits. Found by review of this stop's change; each case is one
the sans-IO decisions alone cannot show."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from switch.payment.idempotency import IdempotencyIndex
from switch.serve.engine import Engine
from switch.serve.frontcore import FrontCore
from tests.test_journal_retention_window import DAY_S, NOW_US, _add, _Journal, _open

pytestmark = pytest.mark.anyio


def _front(tmp_path: Path, journal: Any, submit: Any) -> FrontCore:
    """A FrontCore on a journal holding one approved payment P-1 under key ``k``."""
    path = tmp_path / "journal.db"
    db = _open(path)
    approved = _add(db, "P-1", NOW_US)
    db.close()
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    index.begin("k", b"h", 0.0)
    index.complete("k", approved)
    route = SimpleNamespace(network="card")
    pipeline = SimpleNamespace(
        index=index,
        router=SimpleNamespace(target=lambda p: SimpleNamespace(endpoints=["card"]),
                               route=lambda endpoint, target: route),
        journal=journal, standin=None, clock=SimpleNamespace(wall_us=lambda: NOW_US),
        resolver=SimpleNamespace(submit=submit))
    return FrontCore(cast(Engine, pipeline), str(path))


class _SlowJournal(_Journal):
    def __init__(self) -> None:
        super().__init__()
        self.go = anyio.Event()

    async def write(self, record: Any, on_full: object) -> None:
        await self.go.wait()
        self.written.append(record)


async def test_a_repeat_while_the_intent_is_written_is_91_and_a_cancel_does_not_stop_it(
        tmp_path: Path) -> None:
    journal, submitted = _SlowJournal(), []
    front = _front(tmp_path, journal, lambda p, d, r: submitted.append(p.payment_id))
    answers: dict[str, str] = {}
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                answers["first"] = await front.reverse("k", amount=1250)

        tg.start_soon(first)
        await anyio.sleep(0.05)
        assert front.reversal_deciding("k")  # a refill counts it as waiting, not takes it
        assert await front.reverse("k", amount=1250) == "91"  # never 00 before durable
        scope.cancel()  # the acquirer's connection closed mid-write
        await anyio.sleep(0.01)
        journal.go.set()
    assert answers == {"first": "00"} and submitted == ["P-1"]
    assert not front.reversal_deciding("k")
    assert await front.reverse("k", amount=1250) == "00"  # a repeat of one handed over
    assert await front.reverse("k", amount=1) == "13"
    assert submitted == ["P-1"]  # not reversed twice
    front.close()


async def test_a_submit_that_fails_lets_the_claim_go_so_a_repeat_takes_it_again(
        tmp_path: Path) -> None:
    """The hand-over ran in a finally: a submit that raised left the claim handed over
    with nothing submitted, and every repeat was 00 for a reversal nobody made."""
    submitted: list[str] = []
    calls = [0]

    def submit(payment: Any, digest: bytes, route: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("resolver refused")
        submitted.append(payment.payment_id)

    front = _front(tmp_path, _Journal(), submit)
    with pytest.raises(RuntimeError):
        await front.reverse("k", amount=1250)
    assert front._reversals.under_way == {} and not front.reversal_deciding("k")
    assert await front.reverse("k", amount=1250) == "00"
    assert submitted == ["P-1"]
    front.close()
