"""Load generator vs Locust: requests/s per core against the same bare framed echo server.

    python bench/bench_loadgen.py            # ~1.5 minutes
    python bench/bench_loadgen.py --quick    # ~40 s

In one run, against one bench/echo_server.py process (same transport and framing as the
switch, no pipeline), with the same workload (loadtests/workloads/bench.toml):

* Locust, headless, one process, our locustfile's TCP client, many users, no wait time;
* ``payswitch load``'s generator (loadtests/harness/loadgen.py) in one process: flat out (offered
  far above what it can send), at Locust's achieved rate, and a sweep for the highest
  rate it keeps on schedule.

"Per core" is requests answered per CPU-second of the load process (user + system, from
the process itself, measured from when load starts to when it ends: imports and Locust's
spawning excluded). That normalises away who else was using the 2 cores: the echo server
takes one; when it saturates first, a tool's wall-clock rate understates it, its CPU cost
per request does not.

With ``--write``, records the "loadgen" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import markdown_table, write_flag, write_section  # noqa: E402

WORKLOAD = ROOT / "loadtests" / "workloads" / "bench.toml"
LOCUST = ROOT / ".venv" / "bin" / "locust"
TARGET_RATIO = 2.5


@dataclass
class Measure:
    tool: str
    mode: str
    offered: str
    requests: int
    wall_s: float
    cpu_s: float
    failures: int
    p99_ms: str
    note: str = ""

    @property
    def achieved(self) -> float:
        return self.requests / max(self.wall_s, 1e-9)

    @property
    def per_core(self) -> float:
        return self.requests / max(self.cpu_s, 1e-9)

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / max(self.wall_s, 1e-9)


def start_echo(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = work / "echo-ready.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--ready-file", str(ready)]
    )
    deadline = time.monotonic() + 20  # wall: waiting on another process
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:  # wall: as above
            proc.kill()
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    return proc, int(json.loads(ready.read_text())["port"])


# --- our generator, in a child process ---------------------------------------------------------


class GeneratorFigures(TypedDict):
    """What ``--child`` mode prints (one JSON line) and :func:`run_generator` returns."""

    requests: int
    wall_s: float
    cpu_s: float
    failures: int
    lagged: int
    sent: int
    max_lag_ms: float
    p99_ms: float


def generator_child(port: int, rate: float, duration: float, connections: int) -> None:
    """Run one OpenLoopGenerator and print its figures as JSON (``--child`` mode)."""
    import anyio

    from loadtests.harness.loadgen import OpenLoopGenerator
    from loadtests.harness.workload import SpecWorkload, load_workload

    spec = load_workload(WORKLOAD)
    workload = SpecWorkload(spec, 11, key_prefix="b")
    generator = OpenLoopGenerator(
        workload.next_item,
        rate=rate,
        duration_s=duration,
        connections=connections,
        track_acknowledged=False,
        max_outstanding_per_connection=50_000,
        max_outstanding=400_000,
    )
    cpu0 = time.process_time()  # bench: CPU of the load itself
    stats = anyio.run(
        functools.partial(generator.run, "127.0.0.1", port),
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    cpu = time.process_time() - cpu0  # bench: as above
    figures: GeneratorFigures = {
        "requests": stats.replies,
        "wall_s": stats.elapsed_s,
        "cpu_s": cpu,
        "failures": sum(stats.errors.values()) + stats.unanswered,
        "lagged": stats.lagged,
        "sent": stats.sent,
        "max_lag_ms": stats.max_lag_s * 1000,
        "p99_ms": stats.percentile_ms(99),
    }
    print(json.dumps(figures))


def run_generator(port: int, rate: float, duration: float,
                  mode: str) -> tuple[Measure, GeneratorFigures]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--port", str(port), "--rate", str(rate),
         "--duration", str(duration)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    data: GeneratorFigures = json.loads(out.stdout.strip().splitlines()[-1])
    lag_share = data["lagged"] / max(data["sent"], 1)
    note = (
        f"behind schedule for {lag_share:.0%} of requests (max lag {data['max_lag_ms']:.0f} ms)"
        if data["lagged"]
        else "on schedule"
    )
    measure = Measure(
        "payswitch loadgen",
        mode,
        f"{rate:,.0f}/s",
        data["requests"],
        data["wall_s"],
        data["cpu_s"],
        data["failures"],
        f"{data['p99_ms']:.2f}",
        note,
    )
    return measure, data


# --- Locust, headless, one process -------------------------------------------------------------


def run_locust(port: int, users: int, seconds: int, work: Path) -> Measure:
    if not LOCUST.exists():
        raise SystemExit(f"{LOCUST} missing: .venv/bin/pip install locust (the 'load' extra)")
    cpu_report = work / "locust-cpu.json"
    env = dict(
        os.environ,
        PAYSWITCH_WORKLOAD=str(WORKLOAD),
        PAYSWITCH_CPU_REPORT=str(cpu_report),
        PAYSWITCH_WAIT_S="0",
    )
    subprocess.run(
        [str(LOCUST), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
         "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--only-summary",
         "--host", f"tcp://127.0.0.1:{port}", "--csv", str(work / "locust"),
         "--loglevel", "WARNING"],
        env=env,
        check=True,
        timeout=seconds + 60,
        capture_output=True,
    )
    data = json.loads(cpu_report.read_text())
    p99 = "?"
    for line in (work / "locust_stats.csv").read_text().splitlines():
        if ",Aggregated," in line:
            p99 = line.split(",")[18] + " (rounded)"
    return Measure(
        "Locust (our locustfile)",
        f"{users} users, no wait",
        "closed loop",
        data["requests"],
        data["wall_s"],
        data["cpu_s"],
        data["failures"],
        p99,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    write_flag(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        generator_child(args.port, args.rate, args.duration, connections=8)
        return
    seconds = 5 if args.quick else 10
    sweep = [20_000, 30_000, 40_000] if args.quick else [20_000, 30_000, 40_000, 50_000, 60_000]
    work = Path(tempfile.mkdtemp(prefix="payswitch-bench-loadgen-"))
    echo, port = start_echo(work)
    rows: list[Measure] = []
    try:
        print(f"echo server on port {port}; Locust: 64 users, {seconds} s", flush=True)
        locust = run_locust(port, 64, seconds, work)
        rows.append(locust)
        print(f"  Locust: {locust.achieved:,.0f}/s, {locust.per_core:,.0f}/s per core", flush=True)
        flat, _ = run_generator(port, 150_000, 3 if args.quick else 4, "flat out")
        rows.append(flat)
        print(f"  loadgen flat out: {flat.achieved:,.0f}/s, {flat.per_core:,.0f}/s per core",
              flush=True)
        same, _ = run_generator(port, round(locust.achieved, -2), seconds, "at Locust's rate")
        rows.append(same)
        print(f"  loadgen at Locust's rate: {same.per_core:,.0f}/s per core", flush=True)
        best: Measure | None = None
        for rate in sweep:
            step, data = run_generator(port, rate, 4, "sweep")
            print(f"  loadgen {rate:,}/s: achieved {step.achieved:,.0f}/s, {step.note}",
                  flush=True)
            if data["lagged"] > 0.01 * data["sent"]:
                break
            best = step
        if best is not None:
            best.mode = "highest on-schedule rate"
            rows.append(best)
    finally:
        echo.terminate()
        echo.wait(10)

    ratio = flat.per_core / max(locust.per_core, 1e-9)
    same_ratio = same.per_core / max(locust.per_core, 1e-9)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    lines = [
        f"loadgen per core (flat out): {flat.per_core:,.0f} req/s",
        f"Locust per core: {locust.per_core:,.0f} req/s "
        f"(its process used {locust.cpu_share:.0%} of a core: the echo server, answering "
        "one unpipelined request per read, saturated first)",
        f"ratio: {ratio:.1f}x — {verdict} the {TARGET_RATIO}x target",
        f"at the same offered load as Locust ({same.offered}): loadgen {same.per_core:,.0f} "
        f"req/s per core, {same_ratio:.1f}x Locust",
    ]
    if best is not None:
        lines.append(
            f"highest rate loadgen kept on schedule (lag ≤ 10 ms for 99% of requests): "
            f"{best.offered}"
        )
    print("\n".join(lines))
    table = markdown_table(
        ["tool", "mode", "offered", "requests", "wall s", "achieved/s", "CPU s", "CPU share",
         "req/s per core", "failures", "p99 ms", "note"],
        [
            [m.tool, m.mode, m.offered, f"{m.requests:,}", f"{m.wall_s:.1f}",
             f"{m.achieved:,.0f}", f"{m.cpu_s:.2f}", f"{m.cpu_share:.0%}",
             f"{m.per_core:,.0f}", m.failures, m.p99_ms, m.note]
            for m in rows
        ],
    )
    body = "\n".join(
        [
            f"Mode: {'--quick' if args.quick else 'full'}. One bench/echo_server.py process "
            "(uvloop); both tools in one process each, same workload "
            "(loadtests/workloads/bench.toml), 2 cores shared with the echo server. "
            "\"Per core\" = requests answered per CPU-second of the load process.",
            "",
            *(f"- {line}" for line in lines),
            "",
            table,
            "",
            "Locust is closed-loop (each user waits for its reply) and rounds its "
            "percentiles; loadgen measures from intended send times, so its p99 flat out "
            "is the backlog of a generator far behind schedule, which it reports as such.",
        ]
    )
    write_section("loadgen", "Load generator vs Locust, per core", body, "bench/bench_loadgen.py",
                  args.write)


if __name__ == "__main__":
    main()
