"""The money audit: compare what clients were told with what the journal holds.

``lost`` counts acknowledged payments whose journal record is missing or says something
else; ``duplicates`` counts payments booked twice (two final records for one idempotency
key or one payment id). Both come from the journal on disk, after the switch stopped.
``unresolved`` counts payments the journal leaves without a final: unknown, an intent with
no outcome at all, or a reversal under way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.harness.loadgen import Acknowledged
from switch.journal import read as read_journal
from switch.model import Status


@dataclass
class AuditReport:
    acknowledged: int
    lost: int
    duplicates: int
    unresolved: int
    lost_keys: list[str] = field(default_factory=list)


def audit_journal(path: str | Path, acknowledged: Mapping[str, Acknowledged]) -> AuditReport:
    folded = read_journal(path)  # live and archived records, through the one reader
    latest = {key: h for key, h in folded.by_key().items() if h.result is not None}
    duplicates = folded.duplicates()
    lost_keys: list[str] = []
    payments = folded.payments
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
    return AuditReport(len(acknowledged), len(lost_keys), duplicates, unresolved, lost_keys[:20])
