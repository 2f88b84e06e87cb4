"""Many seeds in parallel processes, one summary; and scenario files run in virtual time.

A campaign is a list of seeds, each an independent :func:`~switch.sim.simulation.simulate`
run; processes share nothing, so ``--processes`` changes the wall time and nothing else.
A failing seed is printed with the one-line command that replays it with a readable
trace of the payment whose invariant broke.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from switch import reasons
from switch.sim.schedule import Schedule
from switch.sim.simulation import WALL0, SimOptions, SimResult, simulate


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    seed: int
    sim_seconds: float
    wall_seconds: float
    payments: int
    faults: int
    trace_hash: str
    violations: tuple[str, ...]  # "invariant|subject|detail"
    cpu_seconds: float = 0.0


@dataclass
class Summary:
    seeds: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    payments: int = 0
    faults: int = 0
    failed: list[SeedOutcome] = field(default_factory=list)
    by_invariant: Counter[str] = field(default_factory=Counter)

    @property
    def speedup(self) -> float:
        return self.sim_seconds / self.wall_seconds if self.wall_seconds else 0.0


def quiet() -> None:
    """The simulated switch's own log off, errors included: breaker transitions log at
    warning, thousands per simulated hour, and the errors a fault schedule causes (the
    resolver full after repeated crashes, escalations) once per boot: 228 lines over
    10 seeds at intensity 40. The invariants are the verdict; what the switch got wrong
    shows there, with its seed and trace."""
    logging.getLogger("switch").setLevel(logging.CRITICAL + 1)
    logging.getLogger("channels").setLevel(logging.CRITICAL + 1)


def run_seed(options: SimOptions) -> SeedOutcome:
    quiet()
    result = simulate(options)
    return SeedOutcome(result.seed, result.sim_seconds, result.wall_seconds, result.payments,
                       result.faults, result.trace_hash,
                       tuple(f"{v.invariant}|{v.subject}|{v}" for v in result.violations),
                       result.cpu_seconds)


def replay_command(outcome: SeedOutcome, options: SimOptions) -> str:
    subject = outcome.violations[0].split("|", 2)[1] if outcome.violations else ""
    return (f"payswitch simulate --seed {outcome.seed} --duration {options.duration_s:g}s "
            f"--rate {options.rate:g} --faults {options.intensity:g}"
            + ("" if options.crashes else " --no-crashes")
            + (" --vary-config" if options.vary_config else "")
            + (f" --trace {subject}" if subject else ""))


def run_campaign(seeds: Iterable[int], template: SimOptions, processes: int,
                 out: TextIO, on_seed: Callable[[SeedOutcome], None] | None = None) -> Summary:
    """Run every seed (``template`` with its seed replaced); print failing seeds as they end."""
    jobs = [SimOptions(**{**template.__dict__, "seed": s}) for s in seeds]
    summary = Summary()
    started = time.perf_counter()  # bench: wall time of the campaign
    if processes <= 1:
        outcomes: Iterable[SeedOutcome] = map(run_seed, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(processes, initializer=quiet)
        outcomes = pool.imap_unordered(run_seed, jobs, chunksize=1)
    try:
        for outcome in outcomes:
            summary.seeds += 1
            summary.sim_seconds += outcome.sim_seconds
            summary.cpu_seconds += outcome.cpu_seconds
            summary.payments += outcome.payments
            summary.faults += outcome.faults
            if outcome.violations:
                summary.failed.append(outcome)
                names = {v.split("|", 1)[0] for v in outcome.violations}
                summary.by_invariant.update(names)
                first = outcome.violations[0].split("|", 2)[2]
                print(f"seed {outcome.seed} FAILED: {', '.join(sorted(names))}\n  {first}\n"
                      f"  replay: {replay_command(outcome, template)}", file=out, flush=True)
            if on_seed is not None:
                on_seed(outcome)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    summary.wall_seconds = time.perf_counter() - started  # bench: as above
    summary.failed.sort(key=lambda o: o.seed)
    return summary


def print_summary(summary: Summary, out: TextIO) -> None:
    failures = sum(summary.by_invariant.values())
    print(f"seeds run:          {summary.seeds}", file=out)
    print(f"simulated hours:    {summary.sim_seconds / 3600:.2f}", file=out)
    print(f"payments:           {summary.payments}", file=out)
    print(f"faults injected:    {summary.faults}", file=out)
    print(f"failing seeds:      {len(summary.failed)}", file=out)
    print(f"invariant failures: {failures}"
          + (" (" + ", ".join(f"{k} in {v} seeds" for k, v in sorted(summary.by_invariant.items()))
             + ")" if failures else ""), file=out)
    print(f"wall time:          {summary.wall_seconds:.1f} s "
          f"({summary.cpu_seconds:.1f} s cpu over all processes)", file=out)
    per_core = summary.sim_seconds / summary.cpu_seconds if summary.cpu_seconds else 0.0
    print(f"speed-up:           {summary.speedup:.0f}x real time "
          f"({per_core:.0f}x per core-second of cpu)", file=out)


def print_seed(result: SimResult, options: SimOptions, out: TextIO) -> None:
    speedup = result.sim_seconds / max(result.wall_seconds, 1e-9)
    print(f"seed {result.seed}: {result.sim_seconds:.1f} simulated s in "
          f"{result.wall_seconds:.2f} s ({speedup:.0f}x), {result.payments} payments, "
          f"{result.faults} faults", file=out)
    print(f"trace hash: {result.trace_hash}", file=out)
    print("counters: " + ", ".join(f"{k}={v}" for k, v in result.counters.items()), file=out)
    print("fault schedule:", file=out)
    for line in result.schedule:
        print(f"  {line}", file=out)
    if result.violations:
        names = Counter(v.invariant for v in result.violations)
        print("invariant failures: " + ", ".join(f"{k} x{n}" for k, n in sorted(names.items())),
              file=out)
        for v in result.violations[:10]:
            print(f"  {v}", file=out)
        outcome = SeedOutcome(result.seed, 0, 0, 0, 0, "",
                              tuple(f"{v.invariant}|{v.subject}|{v}" for v in result.violations))
        print(f"replay: {replay_command(outcome, options)}", file=out)
    else:
        print("invariants: all held", file=out)
    if result.trace:
        print(f"trace of {options.trace_key}:", file=out)
        for line in result.trace:
            print(f"  {line}", file=out)
    elif options.trace_key is not None:
        print(f"trace of {options.trace_key}: no payment with this id or idempotency key in "
              f"seed {result.seed}'s run (an invariant failure names the payments to trace)",
              file=out)


# --------------------------------------------------------------------------- scenarios


def run_scenario_file(path: str | Path, out: TextIO) -> int:
    """A scenario file of the library, in virtual time: the same verdict table."""
    from rich.console import Console

    from loadtests.harness.scenario import (
        ScenarioError,
        _print_verdicts,
        _verdicts,
        load_scenario,
        traces,
    )

    try:
        prepared = load_scenario(path)
    except ScenarioError as exc:
        print(f"invalid scenario: {exc}", file=out)
        return 2
    sc = prepared.scenario
    rate = sc.load.rate if sc.load.rate is not None else 300.0
    quiet()
    with tempfile.TemporaryDirectory(prefix="payswitch-sim-") as tmp:
        journal = os.path.join(tmp, "journal.db")
        options = SimOptions(seed=sc.seed, duration_s=sc.duration_s, rate=rate,
                             shape=prepared.shape,
                             schedule=Schedule(sc.duration_s, tuple(prepared.faults), ()),
                             db_path=journal, drain_s=600.0)
        result = simulate(options)
        trs = traces(Path(journal))
    console = Console(file=out, soft_wrap=True)
    console.print(f"[bold]scenario {sc.name}[/] in virtual time: {sc.description}")
    lat = sorted(result.latencies)
    # As the live generator's summary gives them: the latency's count (none: the rows
    # fail as nothing measured, not pass at 0 ms) and the refusals, never journaled, that
    # availability counts as bad.
    summary: dict[str, Any] = {
        "latency_ms": {"count": len(lat), "p99": _pct(lat, 0.99) * 1000 if lat else None,
                       "p99.9": _pct(lat, 0.999) * 1000 if lat else None},
        "totals": {"errors": {code: result.counters.get("refused_" + code, 0)
                              for code in (reasons.E_OVERLOADED, reasons.E_UNAVAILABLE)}}}
    money = {"money-conserved", "advice-lost", "booked-twice", "terminal-once"}
    audit = SimpleNamespace(
        lost=sum(1 for v in result.violations if v.invariant == "ack-lost"),
        duplicates=sum(1 for v in result.violations if v.invariant == "booked-twice"))
    clean = not any(v.invariant in money for v in result.violations)
    verdicts = _verdicts(sc, prepared.faults, trs, WALL0, summary, audit, clean, None, 0)
    _print_verdicts(console, verdicts)
    print(f"{result.payments} payments, {result.sim_seconds:.0f} simulated s in "
          f"{result.wall_seconds:.1f} s; trace hash {result.trace_hash}", file=out)
    for v in result.violations[:10]:
        print(f"invariant failed: {v}", file=out)
    passed = all(v.passed for v in verdicts) and not result.violations
    print("PASS" if passed else "FAIL", file=out)
    return 0 if passed else 1


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --------------------------------------------------------------------------- shrinking


def shrink(options: SimOptions, invariant: str, out: TextIO) -> Schedule:
    """A smaller fault schedule on which ``invariant`` still fails: drop one fault, crash or
    disk fault at a time and keep every drop after which it still fails (greedy, to a
    fixed point; each try is a whole run of the seed, so this is for short seeds)."""
    from dataclasses import replace

    from switch.sim.schedule import draw_schedule

    quiet()
    current = options.schedule or draw_schedule(options.seed, options.duration_s,
                                                options.intensity, crashes=options.crashes,
                                                disk=options.disk)

    def fails(schedule: Schedule) -> bool:
        trial = SimOptions(**{**options.__dict__, "schedule": schedule, "trace_key": None})
        return any(v.invariant == invariant for v in simulate(trial).violations)

    changed = True
    while changed:
        changed = False
        for field_name in ("faults", "crashes", "disk"):
            items = getattr(current, field_name)
            for i in range(len(items)):
                candidate = replace(current, **{field_name: items[:i] + items[i + 1:]})
                if fails(candidate):
                    print(f"  dropped {field_name}[{i}]: still fails", file=out, flush=True)
                    current, changed = candidate, True
                    break
            if changed:
                break
    return current
