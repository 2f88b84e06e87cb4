"""Start-up vs history: time to ready and RSS of ``payswitch serve`` over a journal with
0, 1M, 10M payments of history (issue 11 defect 8: replay was linear in all history,
12.7 us and 1.86 KB per payment ever booked; 5M took 64 s and 9.4 GB).

Run from the repository root: ``.venv/bin/python bench/bench_replay.py [--sizes 0,1000000]``.
With ``--write``, records the "replay" section of bench/RESULTS.md.

Each journal holds:
* history: ``H`` finished card payments (intent + final) booked 30 days ago, i.e. past the
  idempotency window. The retention step (``switch.journal.archive.Compactor``) moves such
  payments to the archive while the switch runs. Up to ``--via-retention`` payments, the
  history is written to the live journal and the Compactor moves it (timed: "archive
  rate"); above that it is written straight into the archive, where retention would
  have left it, so the run takes minutes rather than hours;
* a live window, the same for every size: ``--window`` finished payments booked an hour
  ago (inside the 24 h idempotency window) and 100 payments still open (sent, no answer).

Then ``payswitch serve`` starts over it (a real process, default config, in-process fake
networks), and we record the time from spawn to its ready file, and its RSS (VmRSS)
and peak RSS (VmHWM) once ready. The 50M figure is extrapolated from the slope between
the two largest sizes measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from bench.results import markdown_table, write_section
from loadtests.harness.processes import start_switch, stop_switch
from switch.journal import FINAL, Compactor, JournalRecord, open_database
from switch.journal.archive import attach_archive
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import CardRef, Party, Payment, Result, Status, tokenize_pan

DAY_US = 86_400 * 1_000_000
BATCH = 50_000
CONFIG = """\
seed = 1
[server]
port = 0
[admin]
enabled = false
[journal]
path = "{journal}"
mode = "group"
"""

_TEMPLATE = Payment(
    "P0-0", "k0", "card", 1234, "USD", Party("ACCT-1"), Party("MERCHANT-1"),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    card=CardRef(tokenize_pan("4111111111111111", b"bench"), "1111", "411111", "2812",
                 "T0000001", "M00000000000001", "5999", "000001", "000000000001"),
)


def _rows(first: int, count: int, at_us: int, *, finished: bool = True
          ) -> list[tuple[str, str, str, str, bytes, bytes, int]]:
    rows = []
    for i in range(first, first + count):
        pid = f"P0-{i}"
        payment = msgspec.structs.replace(_TEMPLATE, payment_id=pid, idempotency_key=f"k{i}")
        rows.append(to_row(JournalRecord.intent(payment, b"h" * 16, at_us + i)))
        if finished:
            result = Result(pid, Status.APPROVED, "00", "A12345", "standin-card")
            rows.append(to_row(JournalRecord.outcome(FINAL, payment, result, b"h" * 16,
                                                     at_us + i + 1)))
    return rows


def _fill(db: sqlite3.Connection, table: str, first: int, count: int, at_us: int,
          *, finished: bool = True) -> None:
    insert = INSERT.replace("INTO journal", f"INTO {table}", 1)
    for start in range(first, first + count, BATCH):
        n = min(BATCH, first + count - start)
        db.execute("BEGIN")
        db.executemany(insert, _rows(start, n, at_us, finished=finished))
        db.execute("COMMIT")


def build(base: Path, history: int, window: int, via_retention: int) -> dict[str, float]:
    """A journal with ``history`` archived payments and the live window; build figures."""
    journal = base / "journal.db"
    now_us = int(time.time() * 1_000_000)
    db = open_database(journal, "group")
    db.execute("PRAGMA synchronous=OFF")  # building the fixture, not measuring commits
    figures: dict[str, float] = {}
    old_us = now_us - 30 * DAY_US
    if history and history <= via_retention:
        _fill(db, "main.journal", 0, history, old_us)
        _fill(db, "main.journal", history, window, now_us - 3_600_000_000)
        compactor = Compactor(86_400, max_live_payments=2_000_000, max_rows=20_000)
        started = time.perf_counter()
        while compactor.step(db, now_us) or compactor.scanned >= compactor.max_rows:
            pass
        spent = time.perf_counter() - started
        figures["archive_rows_per_s"] = compactor.archived / spent if spent else 0.0
        assert compactor.archived == 2 * history, compactor.archived
    else:
        attach_archive(db, journal)
        _fill(db, "archive.journal", 0, history, old_us)
        _fill(db, "main.journal", history, window, now_us - 3_600_000_000)
    _fill(db, "main.journal", history + window, 100, now_us - 60_000_000, finished=False)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    live = db.execute("SELECT COUNT(*) FROM main.journal").fetchone()[0]
    db.close()
    figures["live_rows"] = live
    figures["bytes"] = sum(p.stat().st_size for p in base.iterdir() if p.is_file())
    return figures


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_once(base: Path) -> tuple[float, float, float, float]:
    """(seconds to ready, CPU seconds to ready, VmRSS MB, VmHWM MB) of ``payswitch serve``
    over ``base``. CPU seconds are what a loaded machine distorts least."""
    config = base / "switch.toml"
    config.write_text(CONFIG.format(journal=base / "journal.db"))
    started = time.perf_counter()
    proc, _ = start_switch(config, base / "ready.json", timeout_s=600)
    ready_s = time.perf_counter() - started
    cpu_s = _cpu_s(proc.pid)
    rss = _status_kb(proc.pid, "VmRSS") / 1024
    hwm = _status_kb(proc.pid, "VmHWM") / 1024
    stop_switch(proc)
    return ready_s, cpu_s, rss, hwm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000000,10000000",
                        help="history sizes (payments), comma-separated")
    parser.add_argument("--window", type=int, default=50_000,
                        help="finished payments inside the idempotency window")
    parser.add_argument("--via-retention", type=int, default=1_000_000,
                        help="largest history moved by the Compactor (timed)")
    parser.add_argument("--dir", default=None, help="where to build (default: a temp dir)")
    parser.add_argument("--write", action="store_true",
                        help="record the \"replay\" section of bench/RESULTS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    measured: list[tuple[int, float, float]] = []
    for size in sizes:
        base = Path(tempfile.mkdtemp(prefix=f"replay-{size}-", dir=args.dir))
        try:
            t0 = time.perf_counter()
            built = build(base, size, args.window, args.via_retention)
            build_s = time.perf_counter() - t0
            runs = [start_once(base) for _ in range(2)]  # 2nd: a warm page cache
            ready_s, cpu_s, rss, hwm = min(runs)
            measured.append((size, cpu_s, rss))
            archived = (f"{built['archive_rows_per_s'] / 1000:.0f}k rows/s"
                        if "archive_rows_per_s" in built else "written directly")
            rows.append([f"{size:,}", f"{built['live_rows']:,.0f}",
                         f"{built['bytes'] / 2**30:.2f}", archived,
                         f"{runs[0][0]:.2f} / {ready_s:.2f}", f"{cpu_s:.2f}", f"{rss:.0f}",
                         f"{hwm:.0f}"])
            print(f"history {size:,}: built in {build_s:.0f} s, ready {runs[0][0]:.2f} s cold,"
                  f" {ready_s:.2f} s warm, CPU {cpu_s:.2f} s, RSS {rss:.0f} MB"
                  f" (peak {hwm:.0f} MB), load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if len(measured) >= 2:
        (s1, t1, r1), (s2, t2, r2) = measured[-2], measured[-1]
        # Linear through the two largest sizes; a negative slope is noise: read it as flat.
        slope_t = max(0.0, (t2 - t1) / (s2 - s1)) if s2 != s1 else 0.0
        slope_r = max(0.0, (r2 - r1) / (s2 - s1)) if s2 != s1 else 0.0
        size50 = 50_000_000
        rows.append([f"{size50:,} (extrapolated)", "same", "", "", "",
                     f"{t2 + slope_t * (size50 - s2):.2f}", f"{r2 + slope_r * (size50 - s2):.0f}",
                     ""])
    table = markdown_table(
        ["history (payments)", "live rows", "journal + archive GiB", "archived by",
         "ready s, wall (1st / best)", "CPU s to ready", "RSS MB", "peak RSS MB"], rows)
    print(table)
    body = (
        f"{table}\n\nLive window in every row: {args.window:,} finished payments inside the"
        " 24 h idempotency window and 100 open ones. History is archived (retention"
        " moves finished payments past the window; up to"
        f" {args.via_retention:,} it was moved by the Compactor, timed as 'archived by')."
        " Ready = spawn of `payswitch serve` to its ready file (imports, numba warm-up,"
        " replay of the live journal, index restore); RSS once ready. Start-up reads only"
        " the live journal, so it is flat in history; it grows with the live window"
        " (bounded by `idempotency.max_keys`). Wall times depend on the machine's load"
        f" (load average {os.getloadavg()[0]:.0f} on {os.cpu_count()} cores at the end of this"
        " run); CPU seconds of the serve process are the steadier measure, and the 50M row"
        " extrapolates them. Before (issue 11): 12.7 µs and 1.86 KB per payment of history"
        " (1M: 14 s, 2.0 GB; 5M: 64 s, 9.4 GB)."
    )
    write_section("replay", "Start-up vs journal history (replay)", body,
                  "bench/bench_replay.py", write=args.write)


if __name__ == "__main__":
    main()
