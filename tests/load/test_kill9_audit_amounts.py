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
