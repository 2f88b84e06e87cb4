"""The journal's commit thread against a busy event loop: why inserts are multi-row and
the switch's GIL switch interval is 0.5 ms.

    .venv/bin/python bench/bench_journal_gil.py            # prints
    .venv/bin/python bench/bench_journal_gil.py --write    # the "journal-gil" section

The switch commits in a worker thread while the event loop thread runs Python. The
sqlite3 module releases the GIL around every SQLite step and must take it back after;
while the other thread holds it, taking it back waits for that thread to give it up,
which CPython forces only after the switch interval (5 ms by default). So a commit's
time under load grows with the number of SQLite steps it makes, times the interval.

Side by side, in one process: commits of 10, 100 and 1,000 real journal rows with the
commit thread alone, and with a second thread spinning in Python (the event loop of a
saturated switch), for ``executemany`` (one step per row) against
``switch.journal.store.insert_rows`` (multi-row statements), at the default 5 ms switch
interval and at the switch's ``GIL_SWITCH_INTERVAL_S``. Rows are the switch's own: intents
and finals of generated payments, as ``JournalRecord.intent``/``outcome`` make them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import markdown_table, write_flag, write_section
from switch.journal import columns
from switch.journal.records import FINAL, JournalRecord, Row, to_row
from switch.journal.store import GIL_SWITCH_INTERVAL_S, INSERT, insert_rows, open_database
from switch.model import Party, Payment, Result, Status

Insert = Callable[[sqlite3.Connection, list[Row]], object]


def journal_rows(count: int) -> list[Row]:
    """Intent and final rows of ``count // 2`` payments, as the switch writes them."""
    rows: list[Row] = []
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(count // 2):
        payment = Payment(f"P1-{i}", f"key-{i}", "card", 1000 + i, "CNY", Party("payer"),
                          Party("payee"), at)
        rows.append(to_row(JournalRecord.intent(payment, b"h" * 16, i)))
        result = Result(payment.payment_id, Status.APPROVED, "00")
        rows.append(to_row(JournalRecord.outcome(FINAL, payment, result, b"h" * 16, i)))
    return rows


def executemany(db: sqlite3.Connection, rows: list[Row]) -> None:
    db.executemany(INSERT, rows)


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(50))  # pure Python: holds the GIL like a saturated event loop


def commit_ms(insert: Insert, rows: list[Row], batch: int, commits: int, busy: bool
              ) -> tuple[float, float]:
    """Median and worst commit time (ms) of ``commits`` commits of ``batch`` rows."""
    with tempfile.TemporaryDirectory() as work:
        db = open_database(Path(work) / "journal.db", "group")
        stop = threading.Event()
        durations: list[float] = []

        def commit_all() -> None:
            for i in range(commits):
                start = (i * batch) % max(1, len(rows) - batch)
                chunk = rows[start:start + batch]
                began = time.perf_counter()
                db.execute("BEGIN")
                insert(db, chunk)
                columns.append_batch(db, chunk)
                db.execute("COMMIT")
                durations.append(time.perf_counter() - began)

        spinner = threading.Thread(target=_spin, args=(stop,)) if busy else None
        if spinner is not None:
            spinner.start()
        committer = threading.Thread(target=commit_all)
        committer.start()
        committer.join()
        stop.set()
        if spinner is not None:
            spinner.join()
        db.close()
    durations.sort()
    return durations[len(durations) // 2] * 1000, durations[-1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    write_flag(parser)
    args = parser.parse_args()
    rows = journal_rows(4000)
    table = []
    default_interval = sys.getswitchinterval()
    for interval in (default_interval, GIL_SWITCH_INTERVAL_S):
        sys.setswitchinterval(interval)
        for batch in (10, 100, 1000):
            commits = 20 if batch < 1000 else 6
            for name, insert in (("executemany", executemany), ("insert_rows", insert_rows)):
                alone = commit_ms(insert, rows, batch, commits, busy=False)
                busy = commit_ms(insert, rows, batch, commits, busy=True)
                row = [f"{interval * 1000:g} ms", batch, name, f"{alone[0]:.2f}",
                       f"{busy[0]:.2f}", f"{busy[1]:.2f}", f"{busy[0] / alone[0]:.0f}x"]
                print("  ".join(str(c) for c in row), flush=True)
                table.append(row)
    sys.setswitchinterval(default_interval)
    body = (
        "Commit time of real journal rows (intents and finals), the committing thread "
        "alone and beside a thread spinning in Python (a saturated event loop); median "
        "of 20 commits (6 for 1,000 rows), and the worst.\n\n"
        + markdown_table(["switch interval", "rows", "insert", "alone p50 ms",
                          "busy loop p50 ms", "busy loop max ms", "slowdown"], table)
        + "\n\nThe switch uses multi-row inserts and a 0.5 ms interval "
        "(`GIL_SWITCH_INTERVAL_S`, set by `payswitch serve`)."
    )
    write_section("journal-gil", "Journal commits beside a busy event loop (the GIL)", body,
                  "bench/bench_journal_gil.py", args.write)


if __name__ == "__main__":
    main()
