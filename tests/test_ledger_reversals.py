"""Ledger: a reversal that comes after the transfer was posted is undone by a compensating
transfer (a card's 0400 after clearing captured its hold; SWIFT and QR, posted at once)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from switch.backoffice.ledger import (
    REVERSAL_SUFFIX,
    PostingSummary,
    balances,
    check_invariants,
    merge_summaries,
    post_from_journal,
    settle,
)
from switch.journal import encode_result
from switch.model import Result, Status
from tests.test_ledger import _payment, journal_with


def _reverse(db: sqlite3.Connection, pid: str) -> None:
    """Journal the final 'reversed' the resolver writes after APPROVED (a legal move)."""
    db.execute("INSERT INTO journal (payment_id, idempotency_key, kind, status, body_hash,"
               " record, at_us) VALUES (?, ?, 'final', 'reversed', x'00', ?, 0)",
               (pid, "k" + pid, encode_result(Result(pid, Status.REVERSED, "00"))))


def _participant_balances(db: sqlite3.Connection) -> dict[tuple[str, str, str], int]:
    names = {i: (p, r, c) for i, p, r, c in db.execute(
        "SELECT id, participant, role, currency FROM ledger_accounts")}
    return {names[a]: b for a, b in balances(db).items()}


def _transfers(db: sqlite3.Connection) -> list[tuple[str, str, int | None]]:
    return list(db.execute("SELECT payment_id, state, cycle FROM ledger_transfers ORDER BY id"))


def test_card_reversed_after_clearing_is_compensated_in_the_next_cycle(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [
        (_payment("P1", "card", 1000, "CNY"), [Status.APPROVED]),
        (_payment("P2", "card", 400, "CNY"), [Status.APPROVED]),
    ])
    post_from_journal(db)
    first = settle(db, 1)
    assert (first.captured, first.transfers) == (2, 2)
    _reverse(db, "P1")  # the 0400 lands after the cut-off
    summary = post_from_journal(db)
    assert summary == PostingSummary(reversed=1)
    check_invariants(db)
    # Only P2's money is still with the merchant.
    assert _participant_balances(db) == {("card-net", "issuer", "CNY"): -400,
                                         ("M1", "merchant", "CNY"): 400}
    second = settle(db, 2)
    assert (second.captured, second.transfers) == (0, 1)
    # CNY is netted: the merchant pays the 1000 back, the issuer receives it.
    assert sorted((p.participant, p.amount) for p in second.net) == [
        ("M1", -1000), ("card-net", 1000)]
    assert _transfers(db) == [("P1", "posted", 1), ("P2", "posted", 1),
                              ("P1" + REVERSAL_SUFFIX, "posted", 2)]
    check_invariants(db)


def test_qr_and_swift_reversed_after_posting_are_compensated(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [
        (_payment("Q1", "qr", 500, "CNY"), [Status.APPROVED]),
        (_payment("S1", "swift", 7000, "USD"), [Status.APPROVED]),
    ])
    assert post_from_journal(db) == PostingSummary(posted=2)
    _reverse(db, "Q1")
    _reverse(db, "S1")
    assert post_from_journal(db) == PostingSummary(reversed=2)
    assert set(_participant_balances(db).values()) == {0}
    check_invariants(db)
    # Reversed within the cycle: the netted QR pair cancels out, and USD (gross) carries
    # the SWIFT transfer and its return as two instructions.
    report = settle(db, 1)
    assert report.transfers == 4
    assert report.net == []
    assert sorted(report.gross) == [("BNPAFRPP", "DEUTDEFF", 7000, "USD"),
                                    ("DEUTDEFF", "BNPAFRPP", 7000, "USD")]


def test_posting_the_same_journal_again_books_the_compensation_once(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [(_payment("Q1", "qr", 500, "CNY"), [Status.APPROVED])])
    post_from_journal(db)
    _reverse(db, "Q1")
    runs = [post_from_journal(db) for _ in range(3)]
    assert runs == [PostingSummary(reversed=1), PostingSummary(), PostingSummary()]
    assert merge_summaries(runs) == PostingSummary(reversed=1)
    settle(db, 1)
    assert post_from_journal(db) == PostingSummary()  # and once settled, still nothing new
    assert [pid for pid, _, _ in _transfers(db)] == ["Q1", "Q1" + REVERSAL_SUFFIX]
    check_invariants(db)


def test_a_payment_reversed_before_its_first_posting_books_nothing(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [
        (_payment("Q1", "qr", 500, "CNY"), [Status.APPROVED, Status.REVERSED]),
        (_payment("C1", "card", 300, "USD"), [Status.APPROVED, Status.REVERSED]),
    ])
    assert post_from_journal(db) == PostingSummary()
    assert _transfers(db) == []


def test_payswitch_settle_reports_the_compensation(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [(_payment("P1", "card", 1234, "CNY"), [Status.APPROVED])])
    post_from_journal(db)
    settle(db, 1)
    _reverse(db, "P1")
    db.close()
    run = subprocess.run([sys.executable, "-m", "switch.cli", "settle", "--journal",
                          str(tmp_path / "j.db"), "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(run.stdout)
    assert report["transfers"] == 1 and report["holds_captured"] == 0
    assert report["ledger"]["reversed"] == 1
    [cny] = report["currencies"]
    assert cny["currency"] == "CNY" and cny["total"] == "0.00"
    assert {(p["counterparty"], p["net_minor"]) for p in cny["positions"]} == {
        ("card-net", 1234), ("M1", -1234)}
