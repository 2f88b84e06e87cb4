"""The decisions of an acquirer's reversal (switch/payment/reversal.py), without I/O.

FrontCore.reverse (the live doors) and the simulator's acquirer (switch/sim/acquirer.py)
run these same steps; the doors' own tests (tests/test_iso8583_door*.py,
tests/test_standin_reversal.py) hold the shell's answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from switch.model import Payment, Result, Status
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.reversal import NO_ORIGINAL, Plan, Reversals
from switch.routing.router import NoRoute
from tests.payments import card_payment
from tests.test_core import make_rig


class _Router:
    def __init__(self, routable: bool = True) -> None:
        self.routable = routable

    def target(self, payment: Payment) -> Any:
        if not self.routable:
            raise NoRoute("no target")

        class Target:
            endpoints = ("card-a",)

        return Target()

    def route(self, endpoint: str, target: Any) -> Any:
        return ("route", endpoint)


class _StandIn:
    def __init__(self) -> None:
        self.withdrawn: list[str] = []

    def withdraw(self, payment_id: str) -> bool:
        self.withdrawn.append(payment_id)
        return True


def _index_with(key: str, result: Result | None) -> IdempotencyIndex:
    index = IdempotencyIndex(retention_s=3600, max_keys=100)
    index.begin(key, b"h", 0.0)
    if result is not None:
        index.complete(key, result)
    return index


def _payment(key: str = "k1", amount: int = 1250) -> Payment:
    return make_rig().core._new_payment(card_payment(key, amount=amount), 0.0)


def _approved(pid: str, *, stood_in: bool = False) -> Result:
    return Result(pid, Status.APPROVED, "00", "ref", stood_in=stood_in)


def _one_approval() -> tuple[Payment, str, Result, IdempotencyIndex, Reversals]:
    """An approved payment under key k1, in an index, and no reversal yet."""
    payment = _payment()
    result = _approved(payment.payment_id)
    return payment, payment.payment_id, result, _index_with("k1", result), Reversals()


def test_no_such_original_is_25_and_in_flight_is_its_entry() -> None:
    index = _index_with("k1", None)
    reversals = Reversals()
    assert reversals.lookup(index, "nope") == NO_ORIGINAL == "25"
    entry = reversals.lookup(index, "k1")
    assert not isinstance(entry, str) and entry.result is None
    # Still no result after the shell's wait: 91, the acquirer repeats; nothing claimed.
    assert reversals.admit(index, "k1", None) == "91"
    assert reversals.under_way == {}


@pytest.mark.parametrize("status", [Status.DECLINED, Status.FAILED, Status.REVERSED,
                                    Status.UNKNOWN])
def test_nothing_to_undo_is_00_and_claims_nothing(status: Status) -> None:
    result = Result("P1", status, "05")
    index = _index_with("k1", result)
    reversals = Reversals()
    assert reversals.admit(index, "k1", result) == "00"
    assert reversals.under_way == {}


def test_an_approval_is_claimed_once_and_a_repeat_is_00_once_handed_over() -> None:
    payment, pid, result, index, reversals = _one_approval()
    assert reversals.admit(index, "k1", result) is None
    assert reversals.under_way == {pid: "k1"} and reversals.deciding("k1")
    assert reversals.plan(pid, (payment, b"d"), None, _Router()) != "00"  # type: ignore[arg-type]
    reversals.handed_over(pid)
    assert not reversals.deciding("k1")
    assert reversals.admit(index, "k1", result) == "00"  # 0401: under way, not twice
    assert reversals.admit(index, "k1", result, payment.amount) == "00"
    assert reversals.admit(index, "k1", result, payment.amount + 1) == "13"


def test_a_repeat_while_the_first_is_being_decided_is_91_never_00() -> None:
    """Found by review: the claim is taken before two awaits (the intent's read and its
    write). A 0401 meanwhile was 00; if the first then failed (a full journal: 91; another
    amount: 13; a crash before its intent was durable), the acquirer held a 00 for a
    reversal nobody made, and stopped repeating it."""
    payment, pid, result, index, reversals = _one_approval()
    assert reversals.admit(index, "k1", result) is None
    assert reversals.admit(index, "k1", result) == "91"  # the repeat: try again later
    assert reversals.plan(pid, (payment, b"d"), None, _Router()) != "00"  # type: ignore[arg-type]
    assert reversals.admit(index, "k1", result) == "91"  # intent being written
    reversals.release(pid)  # the journal refused the first's intent: answered 91
    assert reversals.under_way == {} and not reversals.deciding("k1")
    assert reversals.admit(index, "k1", result) is None  # the repeat now claims it


def test_the_bound_answers_91_after_a_sweep_that_frees_nothing() -> None:
    reversals = Reversals(max_in_flight=1)
    first, second = _approved("P1"), _approved("P2")
    index = _index_with("k1", first)
    index.begin("k2", b"h", 0.0)
    index.complete("k2", second)
    assert reversals.admit(index, "k1", first) is None
    assert reversals.admit(index, "k2", second) == "91"
    # Being decided, the first is never swept; handed over, then finished by the resolver
    # (the index holds reversed), it is.
    index.complete("k1", Result("P1", Status.REVERSED, "00"))
    assert reversals.admit(index, "k2", second) == "91"
    reversals.plan("P1", (_payment(), b"d"), None, _Router())  # type: ignore[arg-type]
    reversals.handed_over("P1")
    index.complete("k1", Result("P1", Status.REVERSED, "00"))
    assert reversals.admit(index, "k2", second) is None
    assert reversals.under_way == {"P2": "k2"}


def test_plan_answers_and_releases_or_plans() -> None:
    payment, pid, result, index, reversals = _one_approval()
    cases: list[tuple[Any, int | None, bool, str]] = [
        (None, None, True, "00"),  # approved without reaching a network: nothing held
        ((payment, b"d"), 1, True, "13"),  # not the original's amount
        ((payment, b"d"), None, False, "91"),  # no route
    ]
    for found, amount, routable, answer in cases:
        assert reversals.admit(index, "k1", result) is None
        assert reversals.plan(pid, found, amount, _Router(routable)) == answer  # type: ignore[arg-type]
        assert reversals.under_way == {}, answer
    assert reversals.admit(index, "k1", result) is None
    plan = reversals.plan(pid, (payment, b"d"), 1250, _Router())  # type: ignore[arg-type]
    assert plan == Plan(payment, b"d", ("route", "card-a"))  # type: ignore[arg-type]
    assert reversals.under_way == {pid: "k1"}  # kept until the resolver finishes
    reversals.release(pid)  # the journal refused its intent
    assert reversals.under_way == {}


def test_only_a_stand_in_approval_withdraws_its_advice() -> None:
    reversals = Reversals()
    standin = _StandIn()
    assert not reversals.withdraw_advice(_approved("P1"), standin)  # type: ignore[arg-type]
    assert not reversals.withdraw_advice(_approved("P2", stood_in=True), None)
    assert reversals.withdraw_advice(_approved("P3", stood_in=True), standin)  # type: ignore[arg-type]
    assert standin.withdrawn == ["P3"]


def test_a_key_reused_while_an_old_claim_is_decided_keeps_each_mark_its_own() -> None:
    """Deciding marks were a set of keys: the index may let a key go and a new payment
    reuse it while the old payment's reversal is still decided; releasing one claim then
    cleared the other's mark, and a refill could take a payment still being decided."""
    reversals = Reversals()
    old, new = _approved("P-old"), _approved("P-new")
    assert reversals.admit(_index_with("k1", old), "k1", old) is None
    assert reversals.admit(_index_with("k1", new), "k1", new) is None
    reversals.release("P-old")
    assert reversals.deciding("k1")  # P-new's claim is still being decided
    reversals.release("P-new")
    assert not reversals.deciding("k1") and reversals.under_way == {}


class _Resolving:
    """The resolver's queue as the decisions ask it (ResolutionQueue.holds & co.)."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {}  # payment id -> amount, queued or in flight
        self.escalated: set[str] = set()

    def holds(self, payment_id: str) -> bool:
        return payment_id in self.jobs or payment_id in self.escalated

    def amount_held(self, payment_id: str) -> int | None:
        return self.jobs.get(payment_id)

    def escalated_now(self, payment_id: str) -> bool:
        return payment_id in self.escalated


def test_a_repeat_of_a_reversal_the_resolver_holds_is_00_or_13_and_claims_nothing() -> None:
    """A reversal accepted before a restart: recovery handed the reopened approval to the
    resolver, and this process's claims are empty. Claimed again, its intent was
    journaled while the resolver reversed the payment: after its final, reopening it,
    and handed over again (tests/test_reversal_recovered.py)."""
    payment, pid, result, index, reversals = _one_approval()
    resolving = _Resolving()
    resolving.jobs[pid] = payment.amount
    assert reversals.admit(index, "k1", result, None, resolving) == "00"
    assert reversals.admit(index, "k1", result, payment.amount, resolving) == "00"
    assert reversals.admit(index, "k1", result, payment.amount + 1, resolving) == "13"
    del resolving.jobs[pid]
    resolving.escalated.add(pid)  # handed to an operator: still the resolver's
    assert reversals.admit(index, "k1", result, payment.amount + 1, resolving) == "00"
    assert reversals.under_way == {} and not reversals.deciding("k1")


def test_plan_lets_go_of_a_claim_finished_or_taken_while_its_intent_was_read() -> None:
    """Defence in depth: the intent's read is awaited; if the resolver took the payment or
    finished it meanwhile, its intent is not journaled again (it would follow the final)."""
    payment, pid, result, index, reversals = _one_approval()
    resolving = _Resolving()
    assert reversals.admit(index, "k1", result, None, resolving) is None
    resolving.jobs[pid] = payment.amount  # taken meanwhile
    assert reversals.plan(pid, (payment, b"d"), None, _Router(), index,  # type: ignore[arg-type]
                          resolving) == "00"
    assert reversals.under_way == {} and not reversals.deciding("k1")
    resolving.jobs.clear()
    assert reversals.admit(index, "k1", result, None, resolving) is None
    index.complete("k1", Result(pid, Status.REVERSED, "00"))  # finished meanwhile
    assert reversals.plan(pid, (payment, b"d"), None, _Router(), index,  # type: ignore[arg-type]
                          resolving) == "00"
    assert reversals.under_way == {}
    index.complete("k1", result)  # still the approval: planned as before
    assert reversals.admit(index, "k1", result, None, resolving) is None
    assert isinstance(reversals.plan(pid, (payment, b"d"), None, _Router(),  # type: ignore[arg-type]
                                     index, resolving), Plan)


def test_at_the_bound_a_reversal_the_resolver_escalated_gives_its_claim_back() -> None:
    """An escalated reversal stays approved in the index until a restart: its claim was
    kept that long, and a long issuer outage filled the bound (every new reversal 91).
    Swept at the bound, a repeat of it is still 00: the resolver holds it."""
    reversals, resolving = Reversals(max_in_flight=1), _Resolving()
    first, second = _approved("P1"), _approved("P2")
    index = _index_with("k1", first)
    index.begin("k2", b"h", 0.0)
    index.complete("k2", second)
    assert reversals.admit(index, "k1", first, None, resolving) is None
    reversals.plan("P1", (_payment(), b"d"), None, _Router())  # type: ignore[arg-type]
    reversals.handed_over("P1")
    resolving.jobs["P1"] = 1250
    assert reversals.admit(index, "k2", second, None, resolving) == "91"  # still queued
    del resolving.jobs["P1"]
    resolving.escalated.add("P1")
    assert reversals.admit(index, "k2", second, None, resolving) is None
    assert reversals.under_way == {"P2": "k2"}
    assert reversals.admit(index, "k1", first, 1250, resolving) == "00"
