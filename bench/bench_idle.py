"""An idle switch: how much CPU it spends waiting, and how often its event loop wakes.

    .venv/bin/python bench/bench_idle.py            # prints
    .venv/bin/python bench/bench_idle.py --write    # the "idle" section of RESULTS.md
    .venv/bin/python bench/bench_idle.py --against /tmp/old-tree  # side by side with
                                                    # another checkout (git worktree add)

Why it matters: on this VM one wake-up of an idle process costs ~190-260 us of CPU, far
more than the Python it runs (the difference between the two codes' CPU over the
difference in their wake-ups). The event-loop lag probe that steers admission woke the
loop every 5 ms whether or not anything was in flight; it now sleeps 50 ms while nothing
is (switch/serve/server.py, ``LAG_IDLE_PERIOD_S``). ``--against`` a checkout of the
commit before shows the difference in one run.

Each backend's switch (the e2e benchmark's config: group commit, metrics on, stand-in
networks) starts, settles for 2 s, then is read from /proc over ``IDLE_S`` with no client
connected: its process CPU (every thread) and its main thread's voluntary context
switches (each one a sleep that ended in a wake-up).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_rates import read_threads
from bench.e2e import cpu_seconds, start
from bench.results import markdown_table, write_flag, write_section
from loadtests.harness.processes import stop_switch

IDLE_S = 10.0
SETTLE_S = 2.0


def commit_of(tree: Path) -> str:
    """The checkout's commit (short), "+" when its tracked files differ from it."""
    def git(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(tree), *argv], capture_output=True,
                              text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "no git"
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    return head.stdout.strip() + ("+" if dirty else "")


def idle(backend: str, work: Path, tree: Path) -> tuple[float, float]:
    """(% of a core, main-thread wake-ups per second) of an idle switch on ``backend``,
    the code of checkout ``tree``."""
    work.mkdir(parents=True)
    here = Path.cwd()
    os.chdir(tree)  # `python -m` puts the working directory first: that tree's code runs
    try:
        proc, endpoints = start("switch", work, backend)
    finally:
        os.chdir(here)
    pid = endpoints["pid"]
    try:
        time.sleep(SETTLE_S)  # bench: start-up work (imports, replay) is not idling
        cpu0, wakes0, wall0 = cpu_seconds(pid), read_threads(pid).sleeps[pid], time.monotonic()
        time.sleep(IDLE_S)  # bench: the switch idles meanwhile
        cpu1, wakes1, wall1 = cpu_seconds(pid), read_threads(pid).sleeps[pid], time.monotonic()
    finally:
        stop_switch(proc)
    seconds = wall1 - wall0
    return (cpu1 - cpu0) / seconds * 100, (wakes1 - wakes0) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="also measure the checkout in DIR, side by side")
    write_flag(parser)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = {f"{commit_of(here)} (this tree)": here}
    if args.against is not None:
        if not (args.against / "switch" / "cli" / "main.py").is_file():
            parser.error(f"--against {args.against}: not a payswitch checkout")
        trees[f"{commit_of(args.against)} ({args.against})"] = args.against.resolve()
    work = Path(tempfile.mkdtemp(prefix="payswitch-idle-"))
    rows = []
    for backend in ("asyncio", "trio"):
        for n, (label, tree) in enumerate(trees.items()):
            share, wakeups = idle(backend, work / f"{backend}-{n}", tree)
            print(f"{backend} ({label}): {share:.2f}% of a core, {wakeups:.0f} main-thread "
                  "wake-ups/s", flush=True)
            rows.append([backend, label, f"{share:.2f}", f"{wakeups:.0f}"])
    body = (f"An idle switch over {IDLE_S:.0f} s, no client connected (after {SETTLE_S:.0f} s "
            "to settle): process CPU, every thread, and the main thread's wake-ups.\n\n"
            + markdown_table(["backend", "code", "CPU % of a core", "main-thread wake-ups/s"],
                             rows))
    write_section("idle", "An idle switch: CPU and wake-ups", body, "bench/bench_idle.py",
                  args.write)


if __name__ == "__main__":
    main()
