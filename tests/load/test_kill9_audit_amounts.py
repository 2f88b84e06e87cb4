"""The kill -9 campaign's own audit (loadtests/chaos/kill9.py) compares amounts too.

Its SQL audit is independent of the switch's audit code on purpose; it compared statuses
and payment ids only, so a journal that booked a payment for another amount or currency
than the client sent passed it."""

from __future__ import annotations

from pathlib import Path

from loadtests.chaos.kill9 import Ack, Campaign, audit
from tests.load.test_audit_amounts import _journal


def _campaign(*acks: tuple[str, str, int, str]) -> Campaign:
    c = Campaign(port=0)
    for pid, status, amount, currency in acks:
        c.acks["k" + pid] = Ack(pid, status, 0.0, amount, currency)
    return c


def test_an_amount_or_currency_other_than_sent_is_counted_and_named(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {"P-1": (1000, "EUR"), "P-2": (1100, "EUR"),
                                           "P-3": (1000, "USD")})
    c = _campaign(("P-1", "approved", 1000, "EUR"), ("P-2", "approved", 1000, "EUR"),
                  ("P-3", "approved", 1000, "EUR"))
    figures = audit(journal, tmp_path / "settlement", c)
    assert figures["amounts_not_as_sent"] == 2
    assert figures["examples"]["amounts_not_as_sent"] == ["kP-2", "kP-3"]
    assert figures["lost"] == 0  # booked, but for the wrong amount: its own count


def test_as_sent_passes_and_a_decline_before_any_intent_is_not_compared(
        tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {"P-1": (1000, "EUR"), "P-2": None})
    c = _campaign(("P-1", "approved", 1000, "EUR"), ("P-2", "declined", 5, "EUR"))
    assert audit(journal, tmp_path / "settlement", c)["amounts_not_as_sent"] == 0


def test_an_approval_no_settlement_file_clears_is_counted(tmp_path: Path) -> None:
    """A network that forgot what it approved (a simulator killed without its books on
    disk) clears nothing of it: the campaign's audit must say so, by reference."""
    from switch.journal.records import FINAL, JournalRecord, to_row
    from switch.journal.store import INSERT, open_database
    from switch.model import Result, Status
    from switch.protocols.settlement_files import SettlementEntry, encode_camt053
    from tests.sims.test_card import swift_payment, uetr

    db = open_database(tmp_path / "j.db", "group")
    rows = []
    for n in (1, 2):
        payment = swift_payment(n)
        rows += [to_row(JournalRecord.intent(payment, b"h", n)),
                 to_row(JournalRecord.outcome(FINAL, payment, Result(
                     payment.payment_id, Status.APPROVED, "00"), b"h", n + 10))]
    db.executemany(INSERT, rows)
    db.close()
    settlement = tmp_path / "settlement"
    settlement.mkdir()
    (settlement / "swift-0001.xml").write_bytes(encode_camt053(
        "swift-1", "NOSTRO", 1, [SettlementEntry(uetr(1), "E2E-1", 100_000, "EUR", "settled",
                                                 1)]))
    figures = audit(tmp_path / "j.db", settlement, Campaign(port=0))
    assert figures["approved_never_settled"] == 1
    assert figures["examples"]["approved_never_settled"] == [uetr(2)]
