"""Deterministic simulation throughput: a simulated hour, seeds per hour, and a long campaign.

Run from the repository root::

    .venv/bin/python bench/bench_simulate.py --quick            # a smoke run, prints only
    .venv/bin/python bench/bench_simulate.py --write            # the figures -> RESULTS.md
    .venv/bin/python bench/bench_simulate.py --campaign 10000 --duration 10 --faults 40
    .venv/bin/python bench/bench_simulate.py --campaign 100 --duration 600 --faults 20 \
        --section simulate-campaign-long   # long seeds: backlogs of repeated crashes
    .venv/bin/python bench/bench_simulate.py --campaign 100 --duration 600 --faults 40 \
        --section simulate-campaign-hard   # backlogs past the resolver's 10,000
    .venv/bin/python bench/bench_simulate.py --campaign 2000 --duration 60 --faults 4 \
        --vary-config --section simulate-campaign-varied   # settings drawn per seed

Figures (issue 13):

* one simulated hour at 200 payments/s with the seed's fault timeline, in one process:
  wall time and CPU time (on a shared 2-core box the CPU time is the honest "one core"
  figure: the wall clock also counts other people's processes);
* seeds per hour with 10 simulated minutes each, over ``--processes`` processes;
* a campaign: as many seeds as asked, each a fresh fault schedule; every failing seed is
  printed with its replay command, and the failures are counted per invariant.

Writes the "simulate" section of bench/RESULTS.md only with ``--write``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import markdown_table, write_section
from switch.sim.campaign import SeedOutcome, Summary, print_summary, run_campaign
from switch.sim.simulation import SimOptions, simulate


def one_hour(duration_s: float, rate: float, seed: int, crashes: bool) -> dict[str, Any]:
    logging.getLogger("switch").setLevel(logging.ERROR)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = simulate(SimOptions(seed=seed, duration_s=duration_s, rate=rate, intensity=1.0,
                                 crashes=crashes, disk=crashes))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"{duration_s:g} simulated s at {rate:g}/s (seed {seed}, crashes {crashes}): "
          f"{result.payments} payments, {result.faults} faults, wall {wall:.1f} s, "
          f"cpu {cpu:.1f} s, {result.sim_seconds / cpu:.0f}x real time per core, "
          f"{len(result.violations)} invariant failures; trace {result.trace_hash}", flush=True)
    for line in result.schedule:
        print(f"  {line}")
    by_invariant = Counter(v.invariant for v in result.violations)
    print("  invariant failures: " + (", ".join(f"{k} x{n}" for k, n in sorted(
        by_invariant.items())) or "none"))
    for v in result.violations[:5]:
        print(f"  {v}")
    return {"sim_s": result.sim_seconds, "wall_s": wall, "cpu_s": cpu,
            "payments": result.payments, "faults": result.faults,
            "failures": len(result.violations),
            "by_invariant": ", ".join(f"{k} x{n}" for k, n in sorted(by_invariant.items())),
            "us_per_payment": cpu / max(1, result.payments) * 1e6}


def campaign(seeds: int, first: int, duration_s: float, rate: float, intensity: float,
             processes: int, crashes: bool, vary_config: bool = False) -> Summary:
    template = SimOptions(seed=0, duration_s=duration_s, rate=rate, intensity=intensity,
                          crashes=crashes, disk=crashes, vary_config=vary_config)
    done = [0, 0]
    started = time.perf_counter()

    def progress(outcome: SeedOutcome) -> None:
        done[0] += 1
        done[1] += bool(outcome.violations)
        if done[0] % 25 == 0:
            print(f"[{time.perf_counter() - started:7.0f} s] {done[0]} seeds, {done[1]} failing",
                  flush=True)

    summary = run_campaign(range(first, first + seeds), template, processes, sys.stdout,
                           on_seed=progress)
    print_summary(summary, sys.stdout)
    return summary


#: Each campaign's RESULTS.md section, and its title.
CAMPAIGN_SECTIONS: Final = {
    "simulate-campaign": "Deterministic simulation: a campaign of random fault schedules",
    "simulate-campaign-long": "Deterministic simulation: a campaign of long seeds (crash "
                              "backlogs)",
    "simulate-campaign-hard": "Deterministic simulation: long seeds at twice the intensity "
                              "(backlogs past the resolver's bound)",
    "simulate-campaign-varied": "Deterministic simulation: settings drawn from each seed "
                                "(swarm testing)",
}


def write_campaign(summary: Summary, args: argparse.Namespace, load0: float,
                   load1: float) -> None:
    """The campaign's figures -> the "simulate-campaign" section (with --write only)."""
    failures = ", ".join(f"{k} in {v} seeds" for k, v in sorted(summary.by_invariant.items()))
    seeds = f"{args.first_seed}..{args.first_seed + args.campaign - 1}"
    rows = [
        ("seeds (each its own fault schedule)", f"{summary.seeds} ({seeds})"),
        ("per seed", f"{args.duration:g} simulated s of load at {args.rate:g}/s, fault "
                     f"intensity {args.faults:g}, crashes {not args.no_crashes}, then the "
                     "drain until every unknown is resolved"
                     + ("; the switch's settings drawn from the seed (--vary-config)"
                        if args.vary_config else "")),
        ("payments / faults injected", f"{summary.payments} / {summary.faults}"),
        ("simulated hours", f"{summary.sim_seconds / 3600:.1f}"),
        ("failing seeds", f"{len(summary.failed)}" + (f" ({failures})" if failures else "")),
        ("cpu / wall", f"{summary.cpu_seconds:.0f} s cpu, {summary.wall_seconds:.0f} s wall "
                       f"({args.processes} process(es); load average {load0:.1f} at start, "
                       f"{load1:.1f} at the end)"),
    ]
    body = markdown_table(("campaign", "value"), rows)
    if summary.failed:
        body += "\n\nFailing seeds: " + ", ".join(str(o.seed) for o in summary.failed[:50])
    long = args.section != "simulate-campaign"
    write_section(args.section, CAMPAIGN_SECTIONS[args.section], body,
                  f"bench/bench_simulate.py --campaign {args.campaign} --duration "
                  f"{args.duration:g} --faults {args.faults:g}"
                  + (" --vary-config" if args.vary_config else "")
                  + (f" --section {args.section}" if long else ""), args.write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="minutes, not an hour")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--campaign", type=int, default=0, metavar="SEEDS",
                        help="run a campaign of this many seeds instead")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=600.0,
                        help="campaign: simulated seconds per seed")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--faults", type=float, default=1.0, help="campaign: intensity")
    parser.add_argument("--no-crashes", action="store_true")
    parser.add_argument("--vary-config", action="store_true",
                        help="campaign: draw the switch's settings from each seed")
    parser.add_argument("--section", default="simulate-campaign",
                        choices=tuple(CAMPAIGN_SECTIONS),
                        help="campaign: the RESULTS.md section to write (the 10,000 short "
                             "seeds, long ones, or long ones at twice the intensity)")
    args = parser.parse_args()
    crashes = not args.no_crashes
    if args.campaign:
        load0 = os.getloadavg()[0]
        summary = campaign(args.campaign, args.first_seed, args.duration, args.rate,
                           args.faults, args.processes, crashes, args.vary_config)
        write_campaign(summary, args, load0, os.getloadavg()[0])
        sys.exit(1 if summary.failed else 0)

    hour_s = 300.0 if args.quick else 3600.0
    load0 = os.getloadavg()[0]
    hour = one_hour(hour_s, 200.0, 1, crashes)
    load1 = os.getloadavg()[0]
    per_seed_s = 60.0 if args.quick else 600.0
    n = args.processes * (1 if args.quick else 3)
    sink = io.StringIO()
    template = SimOptions(seed=0, duration_s=per_seed_s, rate=200.0, intensity=1.0,
                          crashes=crashes, disk=crashes)
    summary = run_campaign(range(1, n + 1), template, args.processes, sink)
    print(sink.getvalue(), end="")
    print_summary(summary, sys.stdout)
    load2 = os.getloadavg()[0]
    seeds_per_hour = summary.seeds / summary.wall_seconds * 3600.0
    # On a shared box the wall clock counts other people's work too: the cpu figure says
    # what the two cores would do if they were ours.
    cpu_per_seed = summary.cpu_seconds / max(1, summary.seeds)
    seeds_per_hour_cpu = (os.cpu_count() or 1) * 3600.0 / cpu_per_seed
    hour_equiv = hour["cpu_s"] * 3600.0 / hour_s
    print(f"one simulated hour: {hour_equiv:.0f} s cpu; seeds/hour "
          f"({per_seed_s / 60:g} simulated min each, {args.processes} processes): "
          f"{seeds_per_hour:.0f} measured on the wall clock, {seeds_per_hour_cpu:.0f} from "
          f"{cpu_per_seed:.1f} s cpu per seed on {os.cpu_count()} cores")
    failed = ", ".join(f"{k} in {v}" for k, v in sorted(summary.by_invariant.items())) or "none"
    rows = [
        ("one simulated hour at 200/s, fault timeline, one process",
         f"{hour_s:g} s of load ({hour['sim_s']:.0f} s with the drain), "
         f"{hour['payments']:.0f} payments, {hour['faults']:.0f} faults"
         + ("" if hour_s == 3600 else ", scaled to 1 h"),
         f"{hour_equiv:.0f} s cpu ({hour['wall_s'] * 3600.0 / hour_s:.0f} s wall)",
         "<= 60 s", f"{hour['us_per_payment']:.0f} us cpu per payment; load average {load0:.1f} at "
         f"start, {load1:.1f} at the end; invariant failures: "
         f"{hour['by_invariant'] or 'none'}"),
        (f"seeds per hour ({per_seed_s / 60:g} simulated min each)",
         f"{summary.seeds} seeds, {args.processes} processes",
         f"{seeds_per_hour_cpu:.0f} seeds/h from cpu ({cpu_per_seed:.1f} s per seed); "
         f"{seeds_per_hour:.0f} seeds/h on the wall clock", "report",
         f"load average {load2:.1f} at the end; failing seeds: {len(summary.failed)}"
         f" ({failed})"),
    ]
    body = markdown_table(("figure", "run", "measured", "target", "notes"), rows)
    body += (
        "\n\nCPU time is the one-core figure: this box is shared, so wall time also counts\n"
        "other processes. Each seed runs its own fault schedule (network faults, crashes,\n"
        "disk stalls, fsync failures, full disks) and every invariant of switch/sim.\n")
    write_section("simulate", "Deterministic simulation", body, "bench/bench_simulate.py",
                  args.write)


if __name__ == "__main__":
    main()
