"""Journal commits with SQLite's own WAL checkpoint inside them, against the journal's
checkpoint thread (switch/journal/checkpointer.py).

    .venv/bin/python bench/bench_checkpoint.py            # prints
    .venv/bin/python bench/bench_checkpoint.py --write    # the "journal-checkpoint" section

SQLite checkpoints in the committing connection, inside the COMMIT that takes the WAL
past ``wal_autocheckpoint`` pages: that commit also copies ~4 MB into the database file
and fsyncs it. With ``journal.writer = "loop"`` the event loop waits for it. Side by side
in one process, alternating, on the switch's own rows (intents and finals, as
bench/bench_journal_gil.py makes them) and its own commit path (``insert_rows`` and the
column chunks, fsync on): commits of 118 rows (the batch measured at 10,000/s) and of 2
rows (a lightly loaded switch), a pause of 2 ms after each (the rest of the loop's work).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_journal_gil import journal_rows
from bench.results import markdown_table, write_flag, write_section
from switch.journal import columns
from switch.journal.checkpointer import WRITER_CHECKPOINT_PAGES, start_beside
from switch.journal.records import Row
from switch.journal.store import insert_rows, open_database

PAUSE_S = 0.002


def run(rows: list[Row], batch: int, commits: int, thread: bool) -> dict[str, float]:
    """Commit ``commits`` batches of ``batch`` rows; commit times and process CPU."""
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as work:
        path = Path(work) / "journal.db"
        db = open_database(path, "group")
        checkpointer = start_beside(db, str(path)) if thread else None
        durations: list[float] = []
        wal_peak = 0
        cpu = time.process_time()
        for i in range(commits):
            start = (i * batch) % max(1, len(rows) - batch)
            chunk = rows[start:start + batch]
            began = time.perf_counter()
            db.execute("BEGIN")
            last = insert_rows(db, chunk)
            columns.append_batch(db, chunk, last_seq=last)
            db.execute("COMMIT")
            durations.append(time.perf_counter() - began)
            if checkpointer is not None:
                checkpointer.committed(len(chunk))
            if i % 16 == 0:
                wal_peak = max(wal_peak, os.path.getsize(f"{path}-wal"))
            time.sleep(PAUSE_S)
        cpu = time.process_time() - cpu
        if checkpointer is not None:
            checkpointer.stop()
        db.close()
    durations.sort()
    n = len(durations)
    return {"p50": durations[n // 2] * 1e3, "p99": durations[int(n * 0.99)] * 1e3,
            "max": durations[-1] * 1e3, "cpu_us": cpu / (commits * batch) * 1e6,
            "wal_mb": wal_peak / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    write_flag(parser)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = journal_rows(20_000)
    table = []
    for batch, commits in ((118, 600), (2, 3000)):
        for round_ in range(args.rounds):
            for thread in (False, True):
                got = run(rows, batch, commits, thread)
                row = [batch, commits, round_ + 1,
                       "checkpoint thread" if thread else "in the commit (SQLite's default)",
                       f"{got['p50']:.2f}", f"{got['p99']:.2f}", f"{got['max']:.2f}",
                       f"{got['cpu_us']:.1f}", f"{got['wal_mb']:.1f}"]
                print("  ".join(str(c) for c in row), flush=True)
                table.append(row)
    body = (
        "Commit time of real journal rows, fsync on, 2 ms between commits; CPU is the "
        "whole process's (the checkpoint thread included) per row.\n\n"
        + markdown_table(["rows per commit", "commits", "round", "checkpoint",
                          "commit p50 ms", "commit p99 ms", "commit max ms",
                          "CPU us per row", "WAL peak MB"], table)
        + f"\n\nThe writer's own checkpoint stays as the bound ({WRITER_CHECKPOINT_PAGES} "
        "pages): the WAL peak shows it holding when the thread cannot catch up. The "
        "thread's CPU is not free: checkpointing every 256 records copies a page that "
        "several commits rewrite once per pass, where SQLite's copied it once per ~4 MB."
    )
    write_section("journal-checkpoint",
                  "Journal commits: WAL checkpoints inside the commit vs a thread of their own",
                  body, "bench/bench_checkpoint.py", args.write)


if __name__ == "__main__":
    main()
