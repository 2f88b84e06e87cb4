"""The journal: the switch's durable record of every payment (SQLite WAL, group commit).

Write-ahead ``intent`` before anything is sent, ``final``/``unknown`` after, ``advice`` for
card stand-in; start-up replays it into the idempotency index and the unfinished payments.
Nothing outside this package writes SQL against the journal table.
"""

from switch.journal.store import (
    FinalRecord,
    Journal,
    JournalFailed,
    JournalFull,
    JournalMetrics,
    PendingAdvice,
    Recovered,
    UnfinishedPayment,
    count_duplicates,
    encode_payment,
    encode_result,
    final_results,
    open_database,
    replay,
)

__all__ = [
    "FinalRecord",
    "Journal",
    "JournalFailed",
    "JournalFull",
    "JournalMetrics",
    "PendingAdvice",
    "Recovered",
    "UnfinishedPayment",
    "count_duplicates",
    "encode_payment",
    "encode_result",
    "final_results",
    "open_database",
    "replay",
]
