"""A repeat (0401/0421) of a reversal accepted before a restart: start-up recovery handed
the reopened payment to the resolver, FrontCore's memory of the reversals under way
died with the process, and the idempotency index still answers the approval until the
resolver is done.

The repeat was claimed as a new reversal: while the shell read the intent, the resolver
reversed the payment with the issuer and journaled ``reversed``; the repeat then
journaled the intent again (reopening the payment after its final) and handed it to the
resolver once more, which could send one more 0400 and journal a second final, and the
next start-up found the payment reopened and sent yet another. A repeat of a reversal
the resolver holds is one under way: 00 (13 for another amount), nothing journaled or
submitted again; and an intent after a final with nothing to undo reopens nothing.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from switch.adapters.base import NetworkReply
from switch.journal import FINAL, JournalRecord, fold, replay
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Payment, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import (
    ResolutionConfig,
    ResolutionPolicy,
    ResolutionQueue,
    first_endpoint,
    recover,
)
from switch.routing.router import Router
from switch.serve.engine import Engine
from switch.serve.frontcore import FrontCore
from tests.test_journal_retention_window import DAY_S, NOW_US, _add, _open
from tests.test_journal_retention_window import _payment as _journal_payment

pytestmark = pytest.mark.anyio

KEY = "kP-1"
ROUTE = SimpleNamespace(network="card", timeout_s=1.0)
ROUTER = SimpleNamespace(target=lambda p: SimpleNamespace(endpoints=["card"]),
                         route=lambda endpoint, target: ROUTE)


class _SqliteJournal:
    """The journal's write, into the journal file itself (what the next start replays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: list[JournalRecord] = []

    def add(self, record: JournalRecord) -> None:
        db = sqlite3.connect(self.path)
        with db:
            db.execute(INSERT, to_row(record))
        db.close()

    async def write(self, record: JournalRecord, on_full: object) -> None:
        self.written.append(record)
        self.add(record)


class _Resolver:
    """The live Resolver's submit, onto a real ResolutionQueue (no tasks: the test runs
    its attempt where the race needs it)."""

    def __init__(self, queue: ResolutionQueue) -> None:
        self.queue = queue
        self.submitted: list[str] = []

    def submit(self, payment: Payment, digest: bytes, route: Any,
               status: Status = Status.UNKNOWN, elapsed_s: float = 0.0) -> None:
        self.submitted.append(payment.payment_id)
        self.queue.submit(payment, digest, route, status, elapsed_s, 0.0)


def _restarted(tmp_path: Path, policies: ResolutionConfig | None = None
               ) -> tuple[Path, IdempotencyIndex, _Resolver, Result]:
    """P-1 approved, its reversal accepted (the intent journaled again), the switch
    killed before the resolver journaled ``reversed``; then started: replayed and
    recovered, as app.py does."""
    path = tmp_path / "journal.db"
    db = _open(path)
    approved = _add(db, "P-1", NOW_US)
    db.execute(INSERT, to_row(JournalRecord.intent(_journal_payment("P-1"), b"h",
                                                   NOW_US + 10)))
    db.commit()
    recovered = replay(db)
    db.close()
    assert [(u.payment.payment_id, u.reopened) for u in recovered.unfinished] == [("P-1", True)]
    index = IdempotencyIndex(retention_s=DAY_S, max_keys=10)
    metrics = SwitchMetrics()
    resolver = _Resolver(ResolutionQueue(index=index, metrics=metrics, policies=policies))
    recover(recovered, index=index, resolver=resolver, standin=None,  # type: ignore[arg-type]
            router=cast(Router, ROUTER), metrics=metrics, now=1.0, wall_us=NOW_US + 20,
            retention_s=float(DAY_S), resolve_endpoint=first_endpoint)
    entry = index.get(KEY)
    assert entry is not None and entry.result == approved  # the answer until it is done
    assert resolver.submitted == ["P-1"] and resolver.queue.holds("P-1")
    resolver.submitted.clear()
    return path, index, resolver, approved


def _front(path: Path, index: IdempotencyIndex, resolver: _Resolver
           ) -> tuple[FrontCore, _SqliteJournal]:
    journal = _SqliteJournal(path)
    pipeline = SimpleNamespace(index=index, router=ROUTER, journal=journal, standin=None,
                               clock=SimpleNamespace(wall_us=lambda: NOW_US + 30),
                               resolver=resolver)
    return FrontCore(cast(Engine, pipeline), str(path), resolving=resolver.queue), journal


def _resolve(resolver: _Resolver, journal: _SqliteJournal) -> None:
    """The resolver's attempt answers: the issuer reversed P-1; journaled, then counted."""
    queue = resolver.queue
    job = queue.pop_due(math.inf)
    assert job is not None and job.payment.payment_id == "P-1"
    result = queue.outcome(job, NetworkReply("reversed", "00"))
    journal.add(JournalRecord.outcome(FINAL, job.payment, result, job.digest, NOW_US + 40))
    queue.finished(job, result)


async def test_a_repeat_racing_the_resolver_after_a_restart_journals_and_submits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, index, resolver, _ = _restarted(tmp_path)
    front, journal = _front(path, index, resolver)
    read_intent = front._intent

    async def intent_while_the_resolver_finishes(pid: str) -> Any:
        # The shell's await on the intent's read: the resolver's answer lands meanwhile.
        _resolve(resolver, journal)
        return await read_intent(pid)

    monkeypatch.setattr(front, "_intent", intent_while_the_resolver_finishes)
    assert await front.reverse(KEY, amount=1250) == "00"  # 0401: the one under way
    assert journal.written == [] and resolver.submitted == []
    assert await front.reverse(KEY, amount=1251) == "13"  # not the original's amount
    assert journal.written == [] and resolver.submitted == []
    _resolve(resolver, journal)  # the resolver is done: reversed, once
    assert await front.reverse(KEY, amount=1250) == "00"  # nothing left to undo
    assert journal.written == [] and resolver.submitted == []
    front.close()
    db = sqlite3.connect(path)
    try:
        h = fold(db).payments["P-1"]
        assert h.finished and not h.reopened and h.finals == 1
        assert h.result is not None and h.result.status is Status.REVERSED
        assert replay(db).unfinished == []  # the next start sends no more 0400s
    finally:
        db.close()


async def test_a_repeat_of_a_recovered_reversal_escalated_to_an_operator_is_00(
        tmp_path: Path) -> None:
    """Escalated, the payment is still the resolver's (the next start tries again): a
    repeat journals nothing more, and one of another amount is 13 (the escalated list
    keeps the amount: without it such a repeat was 00 for a partial reversal)."""
    one_try = ResolutionConfig(card=ResolutionPolicy(max_attempts=1))
    path, index, resolver, _ = _restarted(tmp_path, one_try)
    job = resolver.queue.pop_due(math.inf)
    assert job is not None
    resolver.queue.no_answer(job, 10.0)
    assert resolver.queue.escalated == 1 and resolver.queue.holds("P-1")
    front, journal = _front(path, index, resolver)
    assert await front.reverse(KEY, amount=1250) == "00"
    assert await front.reverse(KEY, amount=1251) == "13"
    assert journal.written == [] and resolver.submitted == []
    front.close()
