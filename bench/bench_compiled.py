"""The payment core compiled with mypyc against the same code interpreted, in the simulator.

    .venv/bin/python bench/bench_compiled.py --quick    # 60 simulated s, 2 rounds (~4 min)
    .venv/bin/python bench/bench_compiled.py --write    # the "compiled" section of
                                                        # bench/RESULTS.md

The switch's profile is flat: no function holds more than a few per cent of a payment's
CPU, so tuning one cannot buy the factor issues 12 and 13 ask for. Compiling the hot
modules is the one lever that acts on all of them at once. This script measures it
instead of guessing:

1. copies this tree's ``switch/``, ``channels/``, ``loadtests/`` and ``examples/`` into a temporary
   directory and compiles :data:`COMPILED` there with mypyc (a C compiler and the
   Python headers are on every machine this project runs on);
2. runs the same seed of deterministic simulation (``switch.sim.simulation.simulate``)
   in a fresh interpreter on each tree, alternating, and reads each run's CPU time;
3. checks that both trees give the same trace hash (the compiled code did the same
   thing) and reports CPU per simulated hour for each.

The compiled set is the payment core and what it calls per payment (validation,
idempotency, timers, routing, breakers, health, retry budget, journal records and
columns) and the simulator's world, disk and checks. Left out because mypyc's native
classes refuse them as written: ``msgspec.Struct`` classes with ``msgspec.field``
defaults (switch/payment/risk.py, switch/routing/admission.py), and code that reaches into
an instance's ``__dict__`` (switch/sim/simulation.py, switch/sim/ports.py).

Nothing here changes how the project is built or run: the compiled copy lives in a
temporary directory and is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import markdown_table, write_flag, write_section

ROOT = Path(__file__).resolve().parents[1]
#: What a simulation imports and reads (examples/: its channels and routes).
COPIED = ("switch", "channels", "loadtests", "examples")
COMPILED = (
    "switch/payment/core.py",
    "switch/payment/timers.py",
    "switch/payment/validation.py",
    "switch/payment/idempotency.py",
    "switch/routing/router.py",
    "switch/routing/breaker.py",
    "switch/routing/health.py",
    "switch/routing/retry.py",
    "switch/journal/records.py",
    "switch/journal/columns.py",
    "switch/sim/verify.py",
    "switch/sim/disk.py",
    "switch/sim/networks.py",
)
#: One seed, run in a fresh interpreter whose working directory is the tree to measure
#: (first on sys.path, so its modules -- compiled or not -- are the ones imported).
RUN_ONE = """
import json, logging, sys, time
sys.path.insert(0, "")
logging.getLogger("switch").setLevel(logging.ERROR)
from switch.sim.simulation import SimOptions, simulate
import switch.payment.core as core
cpu = time.process_time()
result = simulate(SimOptions(seed={seed}, duration_s={duration}, rate={rate}, intensity=1.0,
                             crashes=True, disk=True))
print(json.dumps({{"cpu": time.process_time() - cpu, "payments": result.payments,
                  "hash": result.trace_hash, "compiled": not core.__file__.endswith(".py"),
                  "violations": len(result.violations)}}))
"""


def copy_tree(into: Path) -> None:
    for package in COPIED:
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))


def compile_tree(tree: Path) -> float:
    """mypyc the :data:`COMPILED` modules in place; returns the seconds it took."""
    mypyc = Path(sys.executable).with_name("mypyc")
    started = time.perf_counter()
    done = subprocess.run([str(mypyc), *COMPILED], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mypyc failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started


class Run(NamedTuple):
    """One seed's run in one tree, as RUN_ONE prints it."""

    cpu: float
    payments: int
    hash: str
    compiled: bool
    violations: int


def run_one(tree: Path, seed: int, duration: float, rate: float) -> Run:
    code = RUN_ONE.format(seed=seed, duration=duration, rate=rate)
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the simulation failed in {tree}:\n{done.stderr[-3000:]}")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 simulated s, 2 rounds")
    write_flag(parser)
    args = parser.parse_args()
    duration, rounds, rate, seed = (60.0, 2, 200.0, 1) if args.quick else (300.0, 3, 200.0, 1)
    with tempfile.TemporaryDirectory(prefix="compiled-") as scratch:
        plain, compiled = Path(scratch, "interpreted"), Path(scratch, "compiled")
        copy_tree(plain)
        copy_tree(compiled)
        build_s = compile_tree(compiled)
        print(f"mypyc: {len(COMPILED)} modules compiled in {build_s:.0f} s", flush=True)
        runs: dict[str, list[Run]] = {"interpreted": [], "compiled": []}
        for _ in range(rounds):
            for name, tree in (("interpreted", plain), ("compiled", compiled)):
                run = run_one(tree, seed, duration, rate)
                assert run.compiled == (name == "compiled"), (name, run)
                runs[name].append(run)
                print(f"  {name:11s} cpu {run.cpu:6.1f} s  {run.payments} payments  "
                      f"trace {run.hash}", flush=True)
    hashes = {run.hash for group in runs.values() for run in group}
    assert len(hashes) == 1, f"the compiled code did something else: {hashes}"
    rows = []
    best = {name: min(run.cpu for run in group) for name, group in runs.items()}
    for name, group in runs.items():
        cpus = sorted(run.cpu for run in group)
        rows.append([name, ", ".join(f"{c:.1f}" for c in cpus),
                     f"{best[name] * 3600 / duration:.0f}",
                     f"{best[name] / group[0].payments * 1e6:.0f}",
                     f"{best['interpreted'] / best[name]:.2f}x"])
    body = "\n".join([
        f"One seed (seed {seed}, {duration:.0f} simulated s at {rate:.0f}/s, fault "
        f"intensity 1, crashes and disk faults on), {rounds} rounds alternating between "
        f"the two trees, each run in a fresh interpreter; mypyc compiled "
        f"{len(COMPILED)} modules in {build_s:.0f} s. Both trees gave the same trace "
        f"hash ({hashes.pop()}).",
        "",
        markdown_table(["code", "CPU s per run", "CPU s per simulated hour (best)",
                        "CPU us per payment (best)", "speed-up (best vs best)"], rows),
        "",
        "Compiled: " + ", ".join(f"`{module}`" for module in COMPILED) + ".",
    ])
    write_section("compiled", "The hot modules compiled with mypyc vs interpreted (simulator)",
                  body, "bench/bench_compiled.py", args.write)


if __name__ == "__main__":
    main()
