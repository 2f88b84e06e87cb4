"""Review: a key whose payment is unknown (being resolved) is not forgotten for room."""

from __future__ import annotations

from switch.model import Result, Status
from switch.payment.idempotency import IdempotencyIndex
from tests.payments import card_payment
from tests.test_core import APPROVED, make_rig, result_of


def test_a_retry_of_an_unknown_payment_is_never_booked_afresh_after_eviction() -> None:
    """A timeout after sending answers "unknown" and hands the payment to the resolver; a
    client then retries its key to learn the outcome. The index held the unknown as a
    completed entry, first in line for eviction when ``max_keys`` is reached (2M keys:
    ~200 s at 10k/s, while a QR check-status waits 90 s before its first try), so the
    retry began a new payment and sent it again -- the payment's fate was still open."""
    rig = make_rig()
    rig.core.index.max_keys = 2
    rig.pay(card_payment("slow", payer="P1"))
    rig.commit()
    rig.advance(0.5)  # the attempt times out: unknown
    rig.commit()
    assert result_of(rig.only_reply()) == ("unknown", "68")
    for i in range(3):  # other payments come and go
        rig.inbox.responses.clear()
        rig.pay(card_payment(f"other-{i}", payer=f"Q{i}"))
        rig.commit()
        rig.answer(APPROVED)
        rig.commit()
        assert result_of(rig.only_reply()) == ("approved", "00")
    rig.inbox.responses.clear()
    sent = len(rig.network.sent)
    rig.pay(card_payment("slow", payer="P1"))  # the client asks again
    assert len(rig.network.sent) == sent and rig.journal.kinds().count("intent") == 4
    assert result_of(rig.only_reply()) == ("unknown", "68")  # the state it is in


def test_unknown_entries_are_kept_while_completed_ones_make_room() -> None:
    index = IdempotencyIndex(retention_s=3600, max_keys=2)
    index.begin("u", b"h", 0)
    index.complete("u", Result("P1", Status.UNKNOWN, "68"))
    for i in range(5):
        index.begin(f"k{i}", b"h", 1 + i)
        index.complete(f"k{i}", Result(f"P{i}", Status.APPROVED, "00"))
    assert "u" in index and len(index) <= 3
    # Resolved, it is an ordinary completed key again: the next room is made with it.
    index.complete("u", Result("P1", Status.REVERSED, "00"))
    index.begin("k9", b"h", 10)
    index.complete("k9", Result("P9", Status.APPROVED, "00"))
    index.begin("k10", b"h", 11)
    assert "u" not in index and len(index) <= 2
    # Retention still applies to an unknown key: past it, the retry window is over.
    index.begin("u2", b"h", 20)
    index.complete("u2", Result("P2", Status.UNKNOWN, "68"))
    index.begin("late", b"h", 20 + 3601)
    assert "u2" not in index


def test_keys_of_unknown_payments_have_a_bound_past_which_new_payments_are_refused() -> None:
    """Kept, not forgotten, the keys of unknown payments would grow without end through a
    long outage; past twice ``max_keys`` a new payment is refused ``overloaded`` (a
    retry later) instead, and the keys make room again as their payments resolve."""
    rig = make_rig()
    rig.core.index.max_keys = 2
    for i in range(4):  # four timeouts after sending: four unknown keys
        rig.pay(card_payment(f"slow-{i}", payer=f"P{i}"))
        rig.commit()
        rig.advance(0.5)
        rig.commit()
    assert len(rig.core.index) == 4 and not rig.core.index.has_room()
    rig.inbox.responses.clear()
    sent = len(rig.network.sent)
    rig.pay(card_payment("new", payer="N1"))
    (refused,) = rig.inbox.responses
    assert refused.code == "overloaded" and len(rig.network.sent) == sent  # type: ignore[union-attr]
    assert "new" not in rig.core.index
    # One resolves (the resolver settles it): its key is an ordinary completed one again.
    rig.core.index.complete("slow-0", Result("P1-1", Status.REVERSED, "00"))
    rig.core.index.begin("probe", b"h", rig.now)  # any new key: eviction runs
    rig.core.index.abandon("probe")
    assert rig.core.index.has_room()
