"""The money audit: compare what clients were told with what the journal holds.

``lost`` counts acknowledged payments whose journal record is missing or says something
else; ``duplicates`` counts payments booked twice (two final records for one idempotency
key or one payment id). Both come from the journal on disk, after the switch stopped.
``unresolved`` counts payments the journal leaves without a final: unknown, an intent with
no outcome at all, or a reversal under way.

``amount_mismatches`` lists acknowledged payments the journal holds for another amount or
currency than the client sent: the amount and currency each client request carried
(:class:`~loadtests.harness.loadgen.Acknowledged`) against the payment in the journal's
intent record of the very payment the client was told about. A payment decided before
anything was sent (a risk decline, no route) has no intent and moved no money: it is
counted in ``amounts_not_booked`` and compared only if its client was told it was approved
(an approval with no booked amount is a mismatch). An acknowledgement that carries no
amount is counted in ``amounts_unknown``: not compared, never taken as matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from loadtests.harness.loadgen import Acknowledged
from switch.journal import read as read_journal
from switch.journal.reader import PaymentHistory
from switch.model import Status

#: How many lost keys and amount mismatches a report keeps by name (the counts are whole).
KEEP: int = 20


class _Booked(msgspec.Struct):
    """The money fields of an intent's ``Payment`` body (the rest is skipped unread)."""

    amount: int
    currency: str


_booked = msgspec.msgpack.Decoder(_Booked).decode


@dataclass(frozen=True, slots=True)
class AmountMismatch:
    """An acknowledged payment the journal booked for another amount or currency."""

    key: str
    payment_id: str
    sent_amount: int
    sent_currency: str
    #: None: the journal holds no amount for it (no intent record).
    journal_amount: int | None
    journal_currency: str

    def __str__(self) -> str:
        journaled = (f"{self.journal_amount} {self.journal_currency}"
                     if self.journal_amount is not None else "no amount (no intent)")
        return (f"{self.payment_id} (key {self.key}): sent {self.sent_amount} "
                f"{self.sent_currency}, journal {journaled}")


@dataclass
class AuditReport:
    acknowledged: int
    lost: int
    duplicates: int
    unresolved: int
    lost_keys: list[str] = field(default_factory=list)
    #: Acknowledged payments whose amount and currency were compared with the journal's.
    amounts_compared: int = 0
    #: Of those, how many the journal holds for another amount or currency.
    amount_mismatches: int = 0
    #: The first :data:`KEEP` of them, by name.
    mismatched: list[AmountMismatch] = field(default_factory=list)
    #: Acknowledged payments decided before any intent (declined, failed): nothing booked.
    amounts_not_booked: int = 0
    #: Acknowledgements recorded without the amount sent: not compared.
    amounts_unknown: int = 0


def audit_journal(path: str | Path, acknowledged: Mapping[str, Acknowledged]) -> AuditReport:
    folded = read_journal(path)  # live and archived records, through the one reader
    latest = {key: h for key, h in folded.by_key().items() if h.result is not None}
    duplicates = folded.duplicates()
    lost_keys: list[str] = []
    payments = folded.payments
    compared = not_booked = unknown_amount = mismatches = 0
    mismatched: list[AmountMismatch] = []
    for key, ack in acknowledged.items():
        found = latest.get(key)
        if ack.payment_id:
            # The payment the client was told about, not merely one of the same key: a key
            # answered as P-1 whose journal holds only a later P-2 lost P-1.
            by_id = payments.get(ack.payment_id)
            found = (by_id if by_id is not None and by_id.result is not None
                     and by_id.idempotency_key == key else None)
        if found is None:
            lost_keys.append(key)
            continue
        # The amount first: a payment told "unknown" was sent, and sent for an amount.
        if ack.amount is None:
            unknown_amount += 1
        elif not found.intent and ack.status != Status.APPROVED.value:
            not_booked += 1  # decided before sending: no amount journaled, no money moved
        else:
            compared += 1
            wrong = _amount_mismatch(key, ack, ack.amount, found)
            if wrong is not None:
                mismatches += 1
                if len(mismatched) < KEEP:
                    mismatched.append(wrong)
        if ack.status == Status.UNKNOWN.value:
            continue  # the client was told "unknown"; any later state is a resolution
        # Told approved, journaled reversed is lost too: no load generator of the harness
        # asks for a reversal (the only legal way out of an approval is an acquirer's 0400),
        # so the switch undid a payment its client was told had been made.
        if not found.finished or found.status != ack.status:
            lost_keys.append(key)
    # Unresolved: every payment without a final, an intent alone included (it was sent,
    # or may have been, and nothing says how it ended), and a reversal under way.
    unresolved = sum(1 for h in folded.payments.values()
                     if not h.finished or h.reopened)
    return AuditReport(len(acknowledged), len(lost_keys), duplicates, unresolved,
                       lost_keys[:KEEP], amounts_compared=compared,
                       amount_mismatches=mismatches, mismatched=mismatched,
                       amounts_not_booked=not_booked, amounts_unknown=unknown_amount)


def _amount_mismatch(key: str, ack: Acknowledged, amount: int,
                     found: PaymentHistory) -> AmountMismatch | None:
    """The mismatch between what the client sent and what the journal's intent of
    ``found`` holds; None when they agree. Decodes only the intent's amount and currency
    (a long run's every payment would otherwise be decoded and kept on its history)."""
    if not found.intent:
        return AmountMismatch(key, found.payment_id, amount, ack.currency, None, "")
    booked = _booked(found.intent)
    if booked.amount == amount and booked.currency == ack.currency:
        return None
    return AmountMismatch(key, found.payment_id, amount, ack.currency, booked.amount,
                          booked.currency)
