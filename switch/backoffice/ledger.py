"""Double-entry ledger and clearing, in the journal's database.

Every approved payment becomes one *transfer*: a debit of the paying participant's
account and a credit of the receiving one, same amount, same currency, so postings per
currency always sum to zero (checked by :func:`check_invariants`).

Two-phase for cards, as TigerBeetle models it: an approved authorization is a *pending*
transfer (a hold); clearing *posts* it; a reversal *voids* it. SWIFT and QR transfers are
posted at once (the network confirmed the money moved).

A posted transfer is never edited: a reversal that comes after posting (APPROVED ->
REVERSED is legal; a card's 0400 can land after clearing captured its hold, and SWIFT and
QR are posted at once) books a *compensating* transfer, payee back to payer, same amount
and currency, unsettled so the next cycle settles it. Its id is the payment's with
``REVERSAL_SUFFIX``, so posting the same journal twice books it once.

Who pays whom:
* card:  issuer scheme (the network route)     -> merchant (the payee account)
* SWIFT: debtor agent (BIC)                     -> creditor agent (BIC)
* QR:    QR scheme (the network route)          -> merchant (the payee account)

Clearing (:func:`settle`) captures pending card holds, assigns every unsettled posted
transfer to a new cycle, and computes each participant's settlement position: netted
(multilateral netting: one amount per participant, summing to zero) or gross (one
instruction per transfer), per currency -- by default CNY net and USD gross, as the seed
documents describe. The ledger is built from the journal after the fact
(:func:`post_from_journal`), so it costs the payment hot path nothing.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain
from typing import Final, Literal

from switch.journal import Fold, fold
from switch.journal.records import FINAL
from switch.model import Payment, Status

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ledger_accounts (
    id INTEGER PRIMARY KEY,
    participant TEXT NOT NULL,
    role TEXT NOT NULL,
    currency TEXT NOT NULL,
    UNIQUE (participant, role, currency)
);
CREATE TABLE IF NOT EXISTS ledger_transfers (
    id INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL UNIQUE,
    debit_account INTEGER NOT NULL REFERENCES ledger_accounts(id),
    credit_account INTEGER NOT NULL REFERENCES ledger_accounts(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'posted', 'voided')),
    cycle INTEGER
);
CREATE TABLE IF NOT EXISTS ledger_cycles (
    cycle INTEGER PRIMARY KEY,
    closed_at_us INTEGER NOT NULL,
    transfers INTEGER NOT NULL
);
"""

Mode = Literal["net", "gross"]
DEFAULT_MODES: Final[dict[str, Mode]] = {"CNY": "net", "USD": "gross"}


#: Suffix of a compensating transfer's id (payment ids are ``P<boot>-<seq>``: no colon).
REVERSAL_SUFFIX: Final = ":rev"


@dataclass
class PostingSummary:
    pending: int = 0
    posted: int = 0
    voided: int = 0
    reversed: int = 0  # compensating transfers booked for reversals after posting


@dataclass
class Position:
    participant: str
    role: str
    currency: str
    amount: int  # > 0: receives; < 0: pays


@dataclass
class SettlementReport:
    cycle: int
    captured: int
    transfers: int
    net: list[Position] = field(default_factory=list)
    gross: list[tuple[str, str, int, str]] = field(default_factory=list)  # payer, payee, amt, ccy


def open_ledger(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def _account(db: sqlite3.Connection, participant: str, role: str, currency: str) -> int:
    db.execute("INSERT OR IGNORE INTO ledger_accounts (participant, role, currency)"
               " VALUES (?, ?, ?)", (participant, role, currency))
    row = db.execute("SELECT id FROM ledger_accounts WHERE participant = ? AND role = ?"
                     " AND currency = ?", (participant, role, currency)).fetchone()
    return int(row[0])


def _parties(payment: Payment, route: str) -> tuple[tuple[str, str], tuple[str, str]]:
    if payment.card is not None:
        return (route or "card-issuer", "issuer"), (payment.payee.account, "merchant")
    if payment.swift is not None:
        return ((payment.swift.debtor_agent, "correspondent"),
                (payment.swift.creditor_agent, "correspondent"))
    return (route or "qr-scheme", "qr_scheme"), (payment.payee.account, "merchant")


def post_from_journal(db: sqlite3.Connection, folded: Fold | None = None) -> PostingSummary:
    """Bring the ledger up to date with the journal's final results (idempotent).
    ``folded``: the journal already folded, when the caller has it (the simulator)."""
    open_ledger(db)
    histories = (folded if folded is not None else fold(db)).payments.values()
    summary = PostingSummary()
    # Read once, not per payment: transfers already posted, and account ids (the
    # simulator posts a whole run's journal after every seed; SQL per payment was most
    # of it).
    existing: dict[str, str] = dict(db.execute("SELECT payment_id, state FROM ledger_transfers"))
    accounts: dict[tuple[str, str, str], int] = {
        (p, r, c): i for i, p, r, c in db.execute(
            "SELECT id, participant, role, currency FROM ledger_accounts")}

    def account(participant: str, role: str, currency: str) -> int:
        key = (participant, role, currency)
        found = accounts.get(key)
        if found is None:
            found = accounts[key] = _account(db, participant, role, currency)
        return found

    voided: list[tuple[str]] = []
    compensations: list[tuple[str, str]] = []  # (compensation id, original payment id)
    inserts: list[tuple[str, int, int, int, str, str, str]] = []
    approved, reversed_ = Status.APPROVED, Status.REVERSED
    db.execute("BEGIN")
    try:
        for history in histories:
            result = history.result
            if history.outcome_kind != FINAL or result is None or not history.intent:
                continue  # open, or declined by risk before any intent: no money moved
            pid = history.payment_id
            state = existing.get(pid)
            status = result.status
            if state is not None:
                if status is reversed_ and state == "pending":
                    voided.append((pid,))
                    existing[pid] = "voided"
                    summary.voided += 1
                elif status is reversed_ and state == "posted":
                    # The money moved (or is in a closed cycle): undo it with a new
                    # transfer rather than by editing a posting a cycle may have settled.
                    rev = pid + REVERSAL_SUFFIX
                    if rev not in existing:
                        compensations.append((rev, pid))
                        existing[rev] = "posted"
                        summary.reversed += 1
                continue
            if status is not approved:
                continue
            payment = history.payment
            assert payment is not None  # it has an intent
            (payer, payer_role), (payee, payee_role) = _parties(payment, result.route)
            currency = payment.currency
            # Ids start at 1: a miss is None, and only a miss goes to SQL.
            debit = accounts.get((payer, payer_role, currency)) or account(
                payer, payer_role, currency)
            credit = accounts.get((payee, payee_role, currency)) or account(
                payee, payee_role, currency)
            state = "pending" if payment.channel == "card" else "posted"
            existing[pid] = state
            inserts.append((pid, debit, credit, payment.amount, currency,
                            payment.channel, state))
            if state == "pending":
                summary.pending += 1
            else:
                summary.posted += 1
        db.executemany("UPDATE ledger_transfers SET state = 'voided' WHERE payment_id = ?",
                       voided)
        # Copied from the original row in SQL: its accounts are what must be undone, even
        # if the payment's parties would map to other accounts today (a renamed route).
        db.executemany(
            "INSERT INTO ledger_transfers (payment_id, debit_account, credit_account, amount,"
            " currency, channel, state) SELECT ?, credit_account, debit_account, amount,"
            " currency, channel, 'posted' FROM ledger_transfers WHERE payment_id = ?",
            compensations)
        _insert_transfers(db, inserts)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return summary


#: Transfers per INSERT statement (7 parameters each; SQLite allows 32,766 since 3.32).
TRANSFERS_PER_INSERT: Final = 256
_INSERT_TRANSFERS: Final = ("INSERT INTO ledger_transfers (payment_id, debit_account,"
                            " credit_account, amount, currency, channel, state) VALUES ")


def _insert_transfers(db: sqlite3.Connection,
                      rows: list[tuple[str, int, int, int, str, str, str]]) -> None:
    """Insert ``rows`` in order, many per statement: executemany steps SQLite once per
    row, and at the simulator's 400k transfers per run that took twice as long."""
    full = f"{_INSERT_TRANSFERS}{','.join(['(?,?,?,?,?,?,?)'] * TRANSFERS_PER_INSERT)}"
    for start in range(0, len(rows), TRANSFERS_PER_INSERT):
        chunk = rows[start:start + TRANSFERS_PER_INSERT]
        sql = full if len(chunk) == TRANSFERS_PER_INSERT else (
            f"{_INSERT_TRANSFERS}{','.join(['(?,?,?,?,?,?,?)'] * len(chunk))}")
        db.execute(sql, list(chain.from_iterable(chunk)))  # a third less than a listcomp


def balances(db: sqlite3.Connection, *, include_pending: bool = False) -> dict[int, int]:
    """Each account's balance (credits minus debits), by account id."""
    states = ("posted", "pending") if include_pending else ("posted",)
    marks = ",".join("?" * len(states))
    # Summed by SQLite, not row by row in Python: the simulator checks a whole run's
    # ledger (400k transfers in its simulated hour) at the end of every seed.
    return {account: int(total) for account, total in db.execute(
        f"SELECT account, SUM(delta) FROM ("
        f" SELECT debit_account AS account, -amount AS delta FROM ledger_transfers"
        f" WHERE state IN ({marks})"
        f" UNION ALL SELECT credit_account, amount FROM ledger_transfers"
        f" WHERE state IN ({marks})) GROUP BY account ORDER BY account", states + states)}


_BOTH_BALANCES: Final = (
    "SELECT account, SUM(CASE WHEN state = 'posted' THEN delta END), SUM(delta) FROM ("
    " SELECT debit_account AS account, -amount AS delta, state FROM ledger_transfers"
    " WHERE state IN ('posted', 'pending')"
    " UNION ALL SELECT credit_account, amount, state FROM ledger_transfers"
    " WHERE state IN ('posted', 'pending')) GROUP BY account ORDER BY account")


def check_invariants(db: sqlite3.Connection) -> None:
    """Postings per currency sum to zero; no merchant account is below zero."""
    currency_of = dict(db.execute("SELECT id, currency FROM ledger_accounts"))
    role_of = dict(db.execute("SELECT id, role FROM ledger_accounts"))
    # Both balances (posted, and with pending) in one pass over the transfers, as
    # balances() gives each: asked for one at a time, the simulator's end-of-run check read
    # a whole run's ledger twice. An account with pending transfers only has no posted
    # balance (NULL), as balances() leaves it out.
    posted: dict[int, int] = {}
    with_pending: dict[int, int] = {}
    for account, posted_total, total in db.execute(_BOTH_BALANCES):
        if posted_total is not None:
            posted[account] = int(posted_total)
        with_pending[account] = int(total)
    for by_account in (posted, with_pending):
        per_currency: dict[str, int] = defaultdict(int)
        for account, balance in by_account.items():
            per_currency[currency_of[account]] += balance
            if role_of[account] == "merchant":
                assert balance >= 0, f"merchant account {account} below zero: {balance}"
        for currency, total in per_currency.items():
            assert total == 0, f"postings in {currency} sum to {total}, not 0"


def settle(db: sqlite3.Connection, closed_at_us: int,
           modes: dict[str, Mode] | None = None, default_mode: Mode = "net") -> SettlementReport:
    """Close a clearing cycle: capture holds, then net or gross positions.

    ``modes`` maps ``"CCY"`` or ``"channel:CCY"`` (more specific) to net or gross.
    """
    modes = {**DEFAULT_MODES, **(modes or {})}
    open_ledger(db)
    db.execute("BEGIN")
    try:
        captured = db.execute("UPDATE ledger_transfers SET state = 'posted'"
                              " WHERE state = 'pending'").rowcount
        row = db.execute("SELECT COALESCE(MAX(cycle), 0) + 1 FROM ledger_cycles").fetchone()
        cycle = int(row[0])
        count = db.execute("UPDATE ledger_transfers SET cycle = ? WHERE state = 'posted'"
                           " AND cycle IS NULL", (cycle,)).rowcount
        db.execute("INSERT INTO ledger_cycles (cycle, closed_at_us, transfers) VALUES (?, ?, ?)",
                   (cycle, closed_at_us, count))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    report = SettlementReport(cycle, captured, count)
    accounts = {i: (p, r, c) for i, p, r, c in db.execute(
        "SELECT id, participant, role, currency FROM ledger_accounts")}
    net: dict[int, int] = defaultdict(int)
    mode_of: dict[tuple[str, str], Mode] = {}  # a few pairs, looked up for every transfer
    for debit, credit, amount, currency, channel in db.execute(
            "SELECT debit_account, credit_account, amount, currency, channel"
            " FROM ledger_transfers WHERE cycle = ? ORDER BY id", (cycle,)):
        mode = mode_of.get((channel, currency))
        if mode is None:
            # "channel:CCY" overrides "CCY", which overrides the default.
            mode = mode_of[(channel, currency)] = modes.get(
                f"{channel}:{currency}", modes.get(currency, default_mode))
        if mode == "gross":
            report.gross.append((accounts[debit][0], accounts[credit][0], amount, currency))
        else:
            net[debit] -= amount
            net[credit] += amount
    report.net = [Position(*accounts[a], amount) for a, amount in sorted(net.items()) if amount]
    return report


@dataclass
class CounterpartyPosition:
    """One counterparty in one currency for a cycle: what it pays, receives, and nets."""

    counterparty: str
    role: str
    pays: int  # minor units, >= 0
    receives: int  # minor units, >= 0
    instructions: int = 0  # gross transfers it takes part in (0 for netted currencies)

    @property
    def net(self) -> int:
        return self.receives - self.pays


@dataclass
class CurrencyPositions:
    currency: str
    exponent: int
    mode: str  # "net", "gross" or "net+gross" (per-channel modes can mix)
    positions: list[CounterpartyPosition]

    @property
    def total(self) -> int:
        """Sum of net positions: zero when the books balance."""
        return sum(p.net for p in self.positions)


def merge_summaries(summaries: list[PostingSummary]) -> PostingSummary:
    return PostingSummary(sum(s.pending for s in summaries), sum(s.posted for s in summaries),
                          sum(s.voided for s in summaries), sum(s.reversed for s in summaries))


def merge_reports(reports: list[SettlementReport]) -> SettlementReport:
    """One cycle closed on every shard of a cluster, as one report: each shard's ledger
    lives in its own journal, and positions add up (net amounts per participant, role and
    currency summed; gross instructions listed together). ``cycle`` is the highest."""
    if len(reports) == 1:
        return reports[0]
    net: dict[tuple[str, str, str], int] = defaultdict(int)
    for report in reports:
        for p in report.net:
            net[(p.participant, p.role, p.currency)] += p.amount
    return SettlementReport(
        max((r.cycle for r in reports), default=0),
        sum(r.captured for r in reports), sum(r.transfers for r in reports),
        [Position(*k, amount) for k, amount in sorted(net.items()) if amount],
        [g for r in reports for g in r.gross])


def positions_by_currency(report: SettlementReport) -> list[CurrencyPositions]:
    """Positions per currency and counterparty, currencies sorted by code and
    counterparties by net position (largest receiver first, largest payer last)."""
    from switch.currency import CURRENCIES

    table: dict[str, dict[tuple[str, str], CounterpartyPosition]] = defaultdict(dict)
    modes: dict[str, set[str]] = defaultdict(set)
    for p in report.net:
        pos = table[p.currency].setdefault((p.participant, p.role),
                                           CounterpartyPosition(p.participant, p.role, 0, 0))
        if p.amount > 0:
            pos.receives += p.amount
        else:
            pos.pays -= p.amount
        modes[p.currency].add("net")
    for payer, payee, amount, currency in report.gross:
        for who, pays in ((payer, True), (payee, False)):
            pos = table[currency].setdefault((who, ""), CounterpartyPosition(who, "", 0, 0))
            if pays:
                pos.pays += amount
            else:
                pos.receives += amount
            pos.instructions += 1
        modes[currency].add("gross")
    out = []
    for currency in sorted(table):
        rows = sorted(table[currency].values(), key=lambda p: (-p.net, p.counterparty, p.role))
        out.append(CurrencyPositions(currency, CURRENCIES.get(currency, (0, 2))[1],
                                     "+".join(sorted(modes[currency])), rows))
    return out


def format_major(minor: int, exponent: int) -> str:
    """12345, 2 -> "123.45"; exact (integer arithmetic), with the sign and no separators."""
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}" + (f".{frac:0{exponent}d}" if exponent else "")
