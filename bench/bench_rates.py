"""Where a payment's CPU goes as the rate changes: per thread, with its wake-ups.

    .venv/bin/python bench/bench_rates.py --quick    # two rates, prints (~2 minutes)
    .venv/bin/python bench/bench_rates.py --write    # the "rates" section of bench/RESULTS.md

bench/e2e.py shows the switch's CPU per payment falling about tenfold from 500/s to
10,000/s. This script says why, per thread of the switch process:

* first, what one wake-up costs on this machine: a thread that slept and is woken by its
  own timer, by another thread (the journal's hand-off), or by a peer process's write
  (a client's request). A halted virtual CPU is expensive to wake, and the time is
  charged to the threads involved;
* then, for each rate and each journal writer (``journal.writer = "loop"``, the
  default, which commits on the event loop's thread; ``"thread"``, a writer thread; and
  the thread with a 2 ms ``commit_window_s``): the event-loop thread's and the other
  threads' (the journal writer's) CPU per payment and voluntary context switches
  (sleeps) per payment, with p50 and p99.

Each writer runs its own fresh switch (bench/e2e.py's configuration); the rates are
interleaved across writers, so each row is compared with its neighbours measured in the
same minute. Every step has its own seed: a step that reused an earlier step's keys
would be answered from the idempotency index, far cheaper than a payment.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import e2e
from bench.results import markdown_table, write_flag, write_section
from loadtests.harness.processes import stop_switch

#: (journal.writer, journal.commit_window_s): the default first.
WRITERS = (("loop", 0.0), ("thread", 0.0), ("thread", 0.002))
WAKEUPS = 2_000
STEP_S = 8.0


# --------------------------------------------------------------------------- wake-ups


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timer_wakeup_us() -> float:
    """CPU of one 0.5 ms sleep and its wake-up by the thread's own timer."""
    before = _cpu_s()
    for _ in range(WAKEUPS):
        time.sleep(0.0005)
    return (_cpu_s() - before) / WAKEUPS * 1e6


def thread_wakeup_us(timer_us: float) -> float:
    """CPU (both threads) of waking an idle thread through a queue, once a millisecond:
    the journal's hand-off to its writer has this shape."""
    jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def worker() -> None:
        while jobs.get() is not None:
            pass

    thread = threading.Thread(target=worker)
    thread.start()
    before = _cpu_s()
    for i in range(WAKEUPS):
        time.sleep(0.001)
        jobs.put(i)
    jobs.put(None)
    thread.join()
    spent = _cpu_s() - before - timer_us * WAKEUPS / 1e6  # less the sleeper's own
    return max(spent, 0.0) / WAKEUPS * 1e6


def peer_wakeup_us() -> float:
    """CPU of one wake-up by a peer process's write (a client's request): this process
    waits in select, reads one byte and answers one; the peer writes once a millisecond."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the peer
        ours.close()
        for _ in range(WAKEUPS):
            time.sleep(0.001)
            theirs.send(b"x")
            theirs.recv(1)
        os._exit(0)
    theirs.close()
    import select

    before = _cpu_s()
    for _ in range(WAKEUPS):
        select.select([ours], [], [])
        ours.recv(1)
        ours.send(b"y")
    spent = _cpu_s() - before
    os.waitpid(pid, 0)
    ours.close()
    return spent / WAKEUPS * 1e6


# --------------------------------------------------------------------------- the switch


@dataclass(frozen=True)
class Threads:
    """Per-thread CPU seconds and voluntary context switches of one process."""

    cpu_s: dict[int, float]
    sleeps: dict[int, int]


def read_threads(pid: int) -> Threads:
    cpu: dict[int, float] = {}
    sleeps: dict[int, int] = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        base = Path(f"/proc/{pid}/task/{name}")
        try:
            fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
            status = (base / "status").read_text()
        except FileNotFoundError:  # a thread that ended between listdir and the read
            continue
        tid = int(name)
        cpu[tid] = (int(fields[11]) + int(fields[12])) / e2e.TICKS
        sleeps[tid] = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return Threads(cpu, sleeps)


@dataclass(frozen=True)
class Row:
    writer: str
    step: e2e.Step
    loop_us: float
    others_us: float
    loop_sleeps: float
    others_sleeps: float


def measure(writer: str, pid: int, port: int, rate: float, seed: int) -> Row:
    step = e2e.run_step("switch", pid, port, rate, STEP_S, seed,
                        probe=lambda: read_threads(pid))
    assert step.probed is not None
    before, after = step.probed
    payments = max(step.processed * STEP_S, 1.0)

    def per_payment(values_after: dict[int, float] | dict[int, int],
                    values_before: dict[int, float] | dict[int, int], loop: bool) -> float:
        total = sum(v - values_before.get(tid, 0) for tid, v in values_after.items()
                    if (tid == pid) == loop)
        return total / payments

    return Row(writer, step,
               per_payment(after.cpu_s, before.cpu_s, True) * 1e6,
               per_payment(after.cpu_s, before.cpu_s, False) * 1e6,
               per_payment(after.sleeps, before.sleeps, True),
               per_payment(after.sleeps, before.sleeps, False))


def label(writer: str, window_s: float) -> str:
    return writer + (f" + {window_s * 1000:.0f} ms window" if window_s else "")


def start(writer: str, window_s: float,
          work: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    name = f"switch-{writer}-{window_s}"
    return e2e.start_configured(name, work, change=lambda config: config.replace(
        'mode = "group"',
        f'mode = "group"\nwriter = "{writer}"\ncommit_window_s = {window_s}'))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two rates only")
    write_flag(parser)
    args = parser.parse_args()
    rates = [1000.0, 4000.0] if args.quick else [500.0, 1000.0, 2000.0, 4000.0, 8000.0]

    timer_us = timer_wakeup_us()
    wakeups = {"its own timer (0.5 ms sleep)": timer_us,
               "another thread (a queue hand-off)": thread_wakeup_us(timer_us),
               "a peer process's write (select, read, answer)": peer_wakeup_us()}
    for what, us in wakeups.items():
        print(f"one wake-up by {what}: {us:.1f} us CPU", flush=True)

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="payswitch-rates-"))
    seeds = itertools.count(31_000)
    switches = {label(w, s): start(w, s, work) for w, s in WRITERS}
    rows: list[Row] = []
    try:
        for rate in rates:
            for writer, (_, endpoints) in switches.items():
                row = measure(writer, endpoints["pid"], endpoints["port"], rate, next(seeds))
                rows.append(row)
                print(f"{writer:22s} {rate:6.0f}/s  p50 {row.step.p50_ms:6.2f}"
                      f"  p99 {row.step.p99_ms:7.2f} ms  CPU {row.step.cpu_us_per_payment:6.1f}"
                      f" us/payment: loop {row.loop_us:6.1f}, others {row.others_us:6.1f}; "
                      f"sleeps/payment loop {row.loop_sleeps:.2f}, others "
                      f"{row.others_sleeps:.2f}", flush=True)
    finally:
        for proc, _ in switches.values():
            stop_switch(proc)
    load_end = os.getloadavg()[0]

    wake_table = markdown_table(["one wake-up, woken by", "CPU us"],
                                [[what, f"{us:.1f}"] for what, us in wakeups.items()])
    table = markdown_table(
        ["journal writer", "offered /s", "processed /s", "p50 ms", "p99 ms",
         "CPU us/payment (process)", "loop thread us", "other threads us",
         "loop sleeps /payment", "other threads' sleeps /payment"],
        [[r.writer, f"{r.step.rate:.0f}", f"{r.step.processed:.0f}",
          f"{r.step.p50_ms:.2f}", f"{r.step.p99_ms:.2f}", f"{r.step.cpu_us_per_payment:.0f}",
          f"{r.loop_us:.0f}", f"{r.others_us:.0f}", f"{r.loop_sleeps:.2f}",
          f"{r.others_sleeps:.2f}"] for r in rows])
    body = (
        f"{wake_table}\n\n"
        f"Each writer its own fresh switch (bench/e2e.py's configuration), {STEP_S:.0f} s "
        "per step, rates interleaved across writers, a new seed per step. CPU per payment "
        "processed; *sleeps* are voluntary context switches (the thread blocked and had "
        "to be woken). The other threads are the journal writer's (the only busy one with "
        "the thread writer) and idle helpers. "
        f"Load average (1 min) at start {load_start:.1f}, at end "
        f"{load_end:.1f}.\n\n{table}\n"
    )
    write_section("rates", "CPU per payment by rate, per thread, and what a wake-up costs",
                  body, "bench/bench_rates.py", args.write)


if __name__ == "__main__":
    main()
