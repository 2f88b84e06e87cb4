"""The money audit: compare what clients were told with what the journal holds.

``lost`` counts acknowledged payments whose journal record is missing or says something
else; ``duplicates`` counts payments booked twice (two final records for one idempotency
key or one payment id). Both come from the journal on disk, after the switch stopped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from loadtests.harness.loadgen import Acknowledged
from switch.journal import count_duplicates
from switch.model import Result, Status

_result_decoder = msgspec.msgpack.Decoder(Result)


@dataclass
class AuditReport:
    acknowledged: int
    lost: int
    duplicates: int
    unresolved: int
    lost_keys: list[str] = field(default_factory=list)


def audit_journal(path: str | Path, acknowledged: Mapping[str, Acknowledged]) -> AuditReport:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        latest: dict[str, tuple[str, str]] = {}
        for key, kind, record in db.execute(
            "SELECT idempotency_key, kind, record FROM journal"
            " WHERE kind IN ('final', 'unknown') ORDER BY seq"
        ):
            result = _result_decoder.decode(record)
            latest[key] = (kind, result.status.value)
        duplicates = count_duplicates(db)
    finally:
        db.close()
    lost_keys: list[str] = []
    for key, ack in acknowledged.items():
        found = latest.get(key)
        if found is None:
            lost_keys.append(key)
            continue
        kind, status = found
        if ack.status == Status.UNKNOWN.value:
            continue  # the client was told "unknown"; any later state is a resolution
        if kind != "final" or (
            status != ack.status
            and not (ack.status == Status.APPROVED.value and status == Status.REVERSED.value)
        ):
            lost_keys.append(key)
    unresolved = sum(1 for kind, _ in latest.values() if kind == "unknown")
    return AuditReport(len(acknowledged), len(lost_keys), duplicates, unresolved, lost_keys[:20])
