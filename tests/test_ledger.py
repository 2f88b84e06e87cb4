"""Ledger: balanced postings, two-phase card holds, clearing with net and gross settlement."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from switch.backoffice.ledger import balances, check_invariants, post_from_journal, settle
from switch.journal import encode_payment, encode_result, open_database, replay
from switch.model import CardRef, Party, Payment, QrRef, Result, Status, SwiftRef


def _payment(pid: str, channel: str, amount: int, currency: str, payee: str = "M1") -> Payment:
    refs: dict[str, object] = {}
    if channel == "card":
        refs["card"] = CardRef("tok", "1111", "411111", "2812", "T1", "M1", "5999", "1", "R1")
    elif channel == "swift":
        refs["swift"] = SwiftRef("DEUTDEFF", "BNPAFRPP", "u-" + pid, "e2e")
    else:
        refs["qr"] = QrRef("000201", pid)
    return Payment(pid, "k" + pid, channel, amount, currency, Party("A1"), Party(payee),  # type: ignore[arg-type]
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **refs)  # type: ignore[arg-type]


def journal_with(tmp_path: Path, rows: list[tuple[Payment, list[Status]]]) -> sqlite3.Connection:
    db = open_database(tmp_path / "j.db", "group")
    replay(db)
    for payment, statuses in rows:
        db.execute("INSERT INTO journal (payment_id, idempotency_key, kind, status, body_hash,"
                   " record, at_us) VALUES (?, ?, 'intent', 'sent', x'00', ?, 0)",
                   (payment.payment_id, payment.idempotency_key, encode_payment(payment)))
        for status in statuses:
            db.execute("INSERT INTO journal (payment_id, idempotency_key, kind, status,"
                       " body_hash, record, at_us) VALUES (?, ?, 'final', ?, x'00', ?, 0)",
                       (payment.payment_id, payment.idempotency_key, status.value,
                        encode_result(Result(payment.payment_id, status, "00",
                                             route=payment.channel + "-net"))))
    return db


def test_card_hold_then_capture_and_reversal_voids(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [
        (_payment("P1", "card", 1000, "USD"), [Status.APPROVED]),
        (_payment("P2", "card", 500, "USD"), [Status.APPROVED]),
        (_payment("P3", "card", 700, "USD"), [Status.DECLINED]),
    ])
    first = post_from_journal(db)
    assert (first.pending, first.posted) == (2, 0)
    assert balances(db) == {}  # holds are not posted balances
    check_invariants(db)
    # P2 is reversed after approval: its hold is voided, never captured.
    db.execute("INSERT INTO journal (payment_id, idempotency_key, kind, status, body_hash,"
               " record, at_us) VALUES ('P2', 'kP2', 'final', 'reversed', x'00', ?, 0)",
               (encode_result(Result("P2", Status.REVERSED, "00")),))
    assert post_from_journal(db).voided == 1
    assert post_from_journal(db).voided == 0  # idempotent
    report = settle(db, 1)
    assert report.captured == 1 and report.transfers == 1
    assert sorted(b for b in balances(db).values()) == [-1000, 1000]
    check_invariants(db)


def test_net_positions_sum_to_zero_and_usd_is_gross(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        rows.append((_payment(f"Q{i}", "qr", 100 + i, "CNY", payee=f"M{i % 4}"),
                     [Status.APPROVED]))
        rows.append((_payment(f"S{i}", "swift", 1000 + i, "EUR"), [Status.APPROVED]))
        rows.append((_payment(f"C{i}", "card", 50 + i, "USD"), [Status.APPROVED]))
    db = journal_with(tmp_path, rows)
    post_from_journal(db)
    report = settle(db, 1)
    assert report.transfers == 90
    per_currency: dict[str, int] = defaultdict(int)
    for position in report.net:
        per_currency[position.currency] += position.amount
    assert dict(per_currency) == {"CNY": 0, "EUR": 0}
    assert {p.currency for p in report.net} == {"CNY", "EUR"}
    assert len(report.gross) == 30 and {g[3] for g in report.gross} == {"USD"}
    merchants = {p.participant: p.amount for p in report.net if p.role == "merchant"}
    assert sum(merchants.values()) == sum(100 + i for i in range(30))
    # A second cycle has nothing new to settle.
    assert settle(db, 2).transfers == 0
    check_invariants(db)


def test_invariant_check_catches_an_unbalanced_ledger(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [(_payment("Q1", "qr", 100, "CNY"), [Status.APPROVED])])
    post_from_journal(db)
    # Corrupt one side: a transfer whose credit account is in another currency.
    db.execute("INSERT INTO ledger_accounts (participant, role, currency)"
               " VALUES ('X', 'merchant', 'EUR')")
    db.execute("UPDATE ledger_transfers SET credit_account = (SELECT id FROM ledger_accounts"
               " WHERE participant = 'X')")
    with pytest.raises(AssertionError, match="sum to"):
        check_invariants(db)


def test_settlement_mode_per_channel_overrides_per_currency(tmp_path: Path) -> None:
    db = journal_with(tmp_path, [
        (_payment("Q1", "qr", 100, "CNY"), [Status.APPROVED]),
        (_payment("C1", "card", 300, "CNY"), [Status.APPROVED]),
    ])
    post_from_journal(db)
    report = settle(db, 1, {"qr:CNY": "gross"})  # CNY stays net for cards
    assert [g[2:] for g in report.gross] == [(100, "CNY")]
    assert sum(p.amount for p in report.net) == 0 and {p.amount for p in report.net} == {300, -300}
