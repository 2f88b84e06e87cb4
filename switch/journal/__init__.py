"""The journal: the switch's durable record of every payment (SQLite WAL, group commit).

Write-ahead ``intent`` before anything is sent, ``final``/``unknown`` after, ``advice`` for
card stand-in (``records``); start-up replays it into the idempotency index and the
unfinished payments (``reader``); finished payments past the idempotency window move to an
archive the reader still reads (``archive``). Nothing outside this package writes SQL against the
journal table: readers fold it through ``switch.journal.reader``.
"""

from switch.journal.archive import Compactor, attach_archive
from switch.journal.reader import (
    FinalRecord,
    Fold,
    PaymentHistory,
    PendingAdvice,
    Recovered,
    UnfinishedPayment,
    bodies_by_seq,
    by_seq,
    count_duplicates,
    final_results,
    fold,
    open_readonly,
    read,
    replay,
)
from switch.journal.records import (
    ADVICE,
    FINAL,
    INTENT,
    KINDS,
    UNKNOWN,
    JournalRecord,
    OnFull,
    RecordKind,
    encode_payment,
    encode_result,
)
from switch.journal.store import (
    Journal,
    JournalFailed,
    JournalFull,
    JournalMetrics,
    Retention,
    open_database,
)

__all__ = [
    "ADVICE",
    "FINAL",
    "INTENT",
    "KINDS",
    "UNKNOWN",
    "Compactor",
    "FinalRecord",
    "Fold",
    "Journal",
    "JournalFailed",
    "JournalFull",
    "JournalMetrics",
    "JournalRecord",
    "OnFull",
    "PaymentHistory",
    "PendingAdvice",
    "RecordKind",
    "Recovered",
    "Retention",
    "UnfinishedPayment",
    "attach_archive",
    "bodies_by_seq",
    "by_seq",
    "count_duplicates",
    "encode_payment",
    "encode_result",
    "final_results",
    "fold",
    "open_database",
    "open_readonly",
    "read",
    "replay",
]
