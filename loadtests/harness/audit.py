"""The money audit: compare what clients were told with what the journal holds.

``lost`` counts acknowledged payments whose journal record is missing or says something
else; ``duplicates`` counts payments booked twice (two final records for one idempotency
key or one payment id). Both come from the journal on disk, after the switch stopped.
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
    for key, ack in acknowledged.items():
        found = latest.get(key)
        if found is None:
            lost_keys.append(key)
            continue
        if ack.status == Status.UNKNOWN.value:
            continue  # the client was told "unknown"; any later state is a resolution
        status = found.status
        if not found.finished or (
            status != ack.status
            and not (ack.status == Status.APPROVED.value and status == Status.REVERSED.value)
        ):
            lost_keys.append(key)
    unresolved = sum(1 for h in latest.values() if not h.finished)
    return AuditReport(len(acknowledged), len(lost_keys), duplicates, unresolved, lost_keys[:20])
