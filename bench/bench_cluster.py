"""Scaling a switch past one process: CPU per payment as workers are added, and HAProxy's
own cost, on this machine.

    nice python bench/bench_cluster.py            # ~3 minutes; prints the tables
    nice python bench/bench_cluster.py --write    # ... and writes the "cluster" section

The workers (and their supervisor) are pinned to core 0 with taskset, the generator
(`payswitch load`, one process) and HAProxy to core 1, so the switch's capacity is one
core whatever N is. Measured per configuration:

* msgpack, the generator routing by the shard map straight to the owners: achieved rate
  offered flat out (core 0's capacity), and at a fixed rate the workers' CPU (user +
  system of every worker, from /proc) per answered payment, p50/p99;
* HTTP through HAProxy (N = 2): the workers' CPU and HAProxy's CPU per payment.

On 2 cores, 2 workers cannot be faster than 1: what this shows is that sharding itself
costs nothing per payment (CPU per payment flat as N grows), so capacity grows with the
cores given to workers. docs/cluster.md derives a 16-core node and several nodes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_http import cpu_seconds  # noqa: E402
from bench.results import markdown_table, write_section  # noqa: E402
from loadtests.harness.clusterproc import (  # noqa: E402
    Cluster,
    free_port,
    start_cluster,
    start_haproxy,
    stop_cluster,
    stop_haproxy,
)

CONFIG = """
seed = 1
[server]
port = 0
[admin]
port = 0
[http]
enabled = true
port = 0
[journal]
path = "{journal}"
"""
WORKERS_CORE = ("taskset", "-c", "0")
DRIVER_CORE = ("taskset", "-c", "1")


def load(args: list[str], out: Path) -> dict[str, float]:
    cmd = [*DRIVER_CORE, sys.executable, "-m", "switch.cli.load", *args, "--processes", "1",
           "--connections", "8", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    totals, latency = summary["totals"], summary["latency_ms"]
    errors = sum(totals["errors"].values()) - sum(totals["planted_errors"].values())
    good = totals["replies"] - sum(totals["errors"].values())
    return {"replies": totals["replies"], "good": good,
            "good_rate": good / max(summary["run"]["elapsed_s"], 1e-9),
            "errors": errors, "overloaded": totals["errors"].get("overloaded", 0),
            "p50": latency["p50"], "p99": latency["p99"]}


def worker_cpu(cluster: Cluster) -> float:
    return sum(cpu_seconds(cluster.worker_pid(w.shard)) for w in cluster.layout.workers)


def idle_rate(cluster: Cluster, seconds: float = 3.0) -> float:
    """The workers' CPU seconds per second with no payments (timers, lag sampling,
    gauges): subtracted, so the per-payment figure is the marginal cost."""
    before, at = worker_cpu(cluster), time.monotonic()
    time.sleep(seconds)
    return (worker_cpu(cluster) - before) / (time.monotonic() - at)


def measure(cluster: Cluster, args: list[str], out: Path, idle: float,
            haproxy: subprocess.Popen[bytes] | None = None) -> dict[str, float]:
    before, hp_before = worker_cpu(cluster), cpu_seconds(haproxy.pid) if haproxy else 0.0
    began = time.monotonic()
    run = load(args, out)
    wall = time.monotonic() - began
    used = worker_cpu(cluster) - before
    run["worker_us"] = used / max(run["replies"], 1) * 1e6
    run["marginal_us"] = (used - idle * wall) / max(run["replies"], 1) * 1e6
    if haproxy is not None:
        run["haproxy_us"] = (cpu_seconds(haproxy.pid) - hp_before) / max(run["replies"], 1) * 1e6
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2500.0,
                        help="payments/s per worker: N workers are offered N x this")
    parser.add_argument("--http-rate", type=float, default=500.0)
    parser.add_argument("--flat-out", type=float, default=12000.0,
                        help="offered rate for the capacity runs (above capacity)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows, http_rows = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in (1, 2):
            base = tmp / f"n{n}"
            base.mkdir()
            config = base / "switch.toml"
            config.write_text(CONFIG.format(journal=base / "journal.db"))
            cluster = start_cluster(config, base / "cluster", n, prefix=WORKERS_CORE)
            haproxy = None
            try:
                w0 = cluster.layout.workers[0]
                target = ["--host", w0.host, "--port", str(w0.port)]
                idle = idle_rate(cluster)
                flat = measure(cluster, [*target, "--rate", f"{args.flat_out:g}",
                                         "--duration", f"{args.duration:g}"], base / "flat",
                               idle)
                fixed = measure(cluster, [*target, "--rate", f"{args.rate * n:g}",
                                          "--duration", f"{args.duration:g}"], base / "fixed",
                                idle)
                rows.append([n, f"{idle * 100:.0f}%", f"{args.rate * n:,.0f}",
                             f"{flat['good_rate']:,.0f}",
                             int(flat["overloaded"]), f"{flat['worker_us']:,.0f}",
                             f"{fixed['worker_us']:,.0f} / {fixed['marginal_us']:,.0f}",
                             f"{fixed['p50']:.1f} / {fixed['p99']:.1f}",
                             int(fixed["errors"])])
                print(" | ".join(map(str, rows[-1])), flush=True)
                if n == 2:
                    port = free_port()
                    haproxy = start_haproxy(cluster.run_dir / "layout.json", cluster.run_dir,
                                            port, prefix=DRIVER_CORE)
                    time.sleep(1.0)
                    http = measure(cluster, ["--protocol", "http", "--target",
                                             f"127.0.0.1:{port}", "--rate",
                                             f"{args.http_rate:g}", "--duration",
                                             f"{args.duration:g}"],
                                   base / "http", idle, haproxy)
                    http_rows.append([n, f"{http['good_rate']:,.0f}",
                                      f"{http['worker_us']:,.0f} / {http['marginal_us']:,.0f}",
                                      f"{http['haproxy_us']:,.0f}",
                                      f"{http['p50']:.1f} / {http['p99']:.1f}",
                                      int(http["errors"])])
                    print(" | ".join(map(str, http_rows[-1])), flush=True)
            finally:
                if haproxy is not None:
                    stop_haproxy(haproxy)
                stop_cluster(cluster)
    load_after = os.getloadavg()
    table = markdown_table(
        ["workers (all on core 0)", "idle CPU (all workers)", "offered /s (N x per worker)",
         f"payments/s, offered {args.flat_out:,.0f}/s", "shed (overloaded)",
         "worker CPU µs/reply (flat out)",
         "worker CPU µs/payment at N x rate: total / marginal",
         "p50 / p99 ms at N x rate", "errors"], rows)
    http_table = markdown_table(
        ["workers", f"HTTP via HAProxy payments/s @ {args.http_rate:,.0f}/s",
         "worker CPU µs/payment: total / marginal", "HAProxy CPU µs/payment",
         "p50 / p99 ms", "errors"], http_rows)
    print(table)
    print(http_table)
    body = (
        "Workers and their supervisor pinned to core 0 (`taskset -c 0`), the generator "
        "(`payswitch load`, one process, 8 connections per shard, routing by the shard map) "
        "and HAProxy to core 1. CPU is every worker process's user + system time over the "
        "run, divided by replies; *marginal* first subtracts the workers' idle CPU rate "
        "(timers, lag sampling, gauges; measured 3 s before) over the run's wall time. "
        "Flat out, replies include the `overloaded` refusals. Load average (1 min) before / after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f} (the machine is shared).\n\n"
        + "The fixed-rate column offers each worker the same rate "
        f"({args.rate:,.0f}/s), so the per-payment figure compares like with like: a "
        "worker's batching (payments per read, records per group commit) depends on its "
        "own rate, and CPU per payment falls steeply as the rate rises.\n\n"
        + table + "\n\nHTTP through HAProxy (`payswitch cluster haproxy-config`):\n\n"
        + http_table + "\n\nRead: CPU per payment does not grow as workers are added "
        "(sharding adds a crc32 per payment and nothing shared), so capacity scales with "
        "the cores given to workers. One worker on this busy shared core stopped at its "
        "lag-driven admission (it sheds once its event loop lags 10 ms) well before 100% "
        "CPU; a second worker on the same core used the gaps. docs/cluster.md turns this "
        "into figures for a 16-core node.\n")
    write_section("cluster", "Cluster: CPU per payment as workers are added; HAProxy's cost",
                  body, "bench/bench_cluster.py", write=args.write)


if __name__ == "__main__":
    main()
