"""One commit's hop to the journal's thread and back: anyio's worker pool vs a thread of
our own that reports through the loop's thread-safe call (switch/loopcalls.py).

    .venv/bin/python bench/bench_thread_hop.py            # prints
    .venv/bin/python bench/bench_thread_hop.py --write    # the "thread-hop" section

Why it matters: at low rates every payment is two commits, each one hop; through
``anyio.to_thread.run_sync`` a hop costs a cancel scope, a future, checkpoints and the
worker pool's queue, and was a large share of the switch's CPU per payment (issue 12).
The job itself is empty, so the figures are the hop alone: process CPU (both threads)
and wall time per round trip, on asyncio+uvloop (the default) and trio.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import markdown_table, write_flag, write_section
from switch.loopcalls import loop_calls

HOPS = 5_000


def _noop() -> None:
    return None


async def _via_anyio() -> None:
    for _ in range(HOPS):
        await anyio.to_thread.run_sync(_noop)


async def _via_own_thread() -> None:
    """The journal's shape: a job queue in, the loop's thread-safe call out."""
    calls = loop_calls()
    jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    done = anyio.Event()
    left = [HOPS]

    def reported() -> None:
        left[0] -= 1
        if left[0]:
            jobs.put(1)
        else:
            done.set()

    def worker() -> None:
        while jobs.get() is not None:
            calls.from_thread(reported)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    jobs.put(1)
    await done.wait()
    jobs.put(None)
    thread.join()


def _measure(backend: str, options: dict[str, object],
             run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    anyio.run(run, backend=backend, backend_options=options)
    return ((time.process_time() - cpu0) / HOPS * 1e6,
            (time.perf_counter() - wall0) / HOPS * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    write_flag(parser)
    write = parser.parse_args().write
    rows = []
    backends: tuple[tuple[str, dict[str, object]], ...] = (
        ("asyncio", {"use_uvloop": True}), ("trio", {}))
    for backend, options in backends:
        for name, run in (("anyio.to_thread.run_sync", _via_anyio),
                          ("own thread + loop call", _via_own_thread)):
            _measure(backend, options, run)  # warm-up
            cpu, wall = min(_measure(backend, options, run) for _ in range(3))
            rows.append((backend, name, f"{cpu:.1f}", f"{wall:.1f}"))
            print(f"{backend:8s} {name:26s} cpu {cpu:6.1f} us  wall {wall:6.1f} us", flush=True)
    body = markdown_table(("backend", "hop", "CPU us per round trip", "wall us per round trip"),
                          rows)
    body += ("\n\nBest of 3 runs of 5,000 empty round trips after a warm-up; CPU counts both "
             "threads. The journal's writer thread uses the second shape. Both shapes cost "
             "more when the other core is busy (the two threads then share one core and "
             "every hop is a context switch): one such run read 77 and 31 us on asyncio.")
    write_section("thread-hop", "A commit's hop to the journal thread and back", body,
                  "bench/bench_thread_hop.py", write)


if __name__ == "__main__":
    main()
