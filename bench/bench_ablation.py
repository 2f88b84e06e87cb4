"""What a payment's CPU is made of: the switch with one part at a time taken out.

    .venv/bin/python bench/bench_ablation.py --quick    # one rate, short steps (~3 minutes)
    .venv/bin/python bench/bench_ablation.py --write    # the "ablation" section of
                                                        # bench/RESULTS.md

bench/e2e.py gives one CPU-per-payment figure for the whole switch and one for a bare
framed echo. A profile of the switch is flat (no function holds more than a few per cent),
so it cannot say which *part* costs what. This script answers by taking parts out, each
variant its own fresh switch in bench/e2e.py's configuration, side by side at the same
offered rates:

* ``full``: bench/e2e.py's switch (group-commit journal with fsync, in-process networks
  answering after a 1 ms median, metrics on);
* ``no fsync wait``: ``journal.mode = "off"``: rows are still written, but nothing is
  fsynced and no payment waits for a commit;
* ``networks at once``: the in-process networks answer with no latency (no timer);
* ``no metrics``: ``admin.metrics = false``;
* ``all three out``: what is left is the payment logic (validate, dedupe, risk, route,
  attempt plan, journal rows, reply) on the server's transport;
* ``echo``: bench/echo_server.py on the same transport, the floor.

The rates are interleaved across the variants (each row is compared with its neighbours
measured in the same minute) and every step has its own seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import e2e
from bench.results import markdown_table, write_flag, write_section
from loadtests.harness.processes import stop_switch

FSYNC_ON = 'mode = "group"'
FSYNC_OFF = 'mode = "off"'
LATENCY_ON = "latency_median_ms = 1.0"
LATENCY_OFF = "latency_median_ms = 0.0"


def _no_fsync(config: str) -> str:
    assert FSYNC_ON in config, "bench/e2e.py's configuration changed"
    return config.replace(FSYNC_ON, FSYNC_OFF)


def _networks_at_once(config: str) -> str:
    assert config.count(LATENCY_ON) == 3, "bench/e2e.py's configuration changed"
    return config.replace(LATENCY_ON, LATENCY_OFF)


#: Variant name -> (metrics on, the change to bench/e2e.py's configuration).
VARIANTS: dict[str, tuple[bool, Callable[[str], str]]] = {
    "full": (True, lambda config: config),
    "no fsync wait": (True, _no_fsync),
    "networks at once": (True, _networks_at_once),
    "no metrics": (False, lambda config: config),
    "all three out": (False, lambda config: _networks_at_once(_no_fsync(config))),
}


def run_variant(name: str, rate: float, duration: float, seed: int, work: Path) -> e2e.Step:
    """One fresh server (a switch variant, or the echo), warmed up, then one step."""
    if name == "echo":
        proc, endpoints = e2e.start("echo", work)
    else:
        metrics, change = VARIANTS[name]
        proc, endpoints = e2e.start_configured("switch", work, metrics=metrics, change=change)
    try:
        e2e.run_step(name, endpoints["pid"], endpoints["port"], 500, 2, seed=seed + 500)
        return e2e.run_step(name, endpoints["pid"], endpoints["port"], rate, duration, seed)
    finally:
        stop_switch(proc)


def _row(step: e2e.Step, full: e2e.Step, echo: e2e.Step) -> list[object]:
    cpu = step.cpu_us_per_payment
    vs_full = "" if step is full else f"{100 * (cpu / full.cpu_us_per_payment - 1):+.0f}%"
    return [step.target, f"{step.rate:.0f}", f"{step.processed:.0f}", f"{step.p50_ms:.2f}",
            f"{step.p99_ms:.2f}", f"{cpu:.1f}", vs_full,
            f"{cpu / echo.cpu_us_per_payment:.1f}x", step.shed,
            "yes" if step.kept_schedule else f"no ({step.lagged} late)"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one rate, 4 s steps")
    write_flag(parser)
    args = parser.parse_args()
    rates = [3000.0] if args.quick else [2000.0, 5000.0]
    duration = 4.0 if args.quick else 8.0
    names = [*VARIANTS, "echo"]
    load_before = os.getloadavg()[0]
    rows: list[list[object]] = []
    for r, rate in enumerate(rates):
        steps: dict[str, e2e.Step] = {}
        for v, name in enumerate(names):
            with tempfile.TemporaryDirectory(prefix="ablation-") as work:
                step = run_variant(name, rate, duration, seed=1000 + 10 * r + v,
                                   work=Path(work))
            steps[name] = step
            print(f"  {name:18s} {rate:6.0f}/s  cpu {step.cpu_us_per_payment:7.1f} us/payment"
                  f"  p50 {step.p50_ms:6.2f}  p99 {step.p99_ms:7.2f} ms  shed {step.shed}",
                  flush=True)
        for name in names:
            rows.append(_row(steps[name], steps["full"], steps["echo"]))
    body = "\n".join([
        f"Each variant its own fresh switch (bench/e2e.py's configuration, one part taken "
        f"out), {duration:.0f} s per step after a 2 s warm-up at 500/s, rates interleaved; "
        "CPU is the server process's per payment processed (refusals excluded). "
        f"Load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f}.",
        "",
        markdown_table(
            ["variant", "offered /s", "processed /s", "p50 ms", "p99 ms",
             "CPU us/payment", "vs full", "vs echo", "shed", "generator kept schedule"],
            rows),
        "",
        "*vs full*: the variant's CPU per payment against the full switch's at the same "
        "rate (negative: what the part taken out cost). Fewer commits or timers to wait "
        "for also means fewer payments per wake-up, so a part taken out can cost CPU "
        "instead. What the three parts leave (*all three out*) is the payment logic on "
        "its transport; its distance to *echo* is what a faster core would have to take "
        "out.",
    ])
    write_section("ablation", "What a payment's CPU is made of: parts taken out",
                  body, "bench/bench_ablation.py", args.write)


if __name__ == "__main__":
    main()
