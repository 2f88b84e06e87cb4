"""End-to-end benchmark: switch CPU per payment, latency curve, saturation, overload.

    .venv/bin/python bench/e2e.py --quick    # short run (~4 minutes), prints only
    .venv/bin/python bench/e2e.py --write    # full run, records the "e2e" section of
                                             # bench/RESULTS.md

In one run it loads, side by side:
* the switch (``payswitch serve``: full pipeline, group-commit journal, metrics on,
  stand-in networks with 1 ms median latency), and
* a bare framed echo server on the same transport (bench/echo_server.py),
each as its own process, from an open-loop generator in this process. CPU per payment is
the server process's user+system CPU time (from /proc, including the journal thread)
divided by the payments it answered with a result in the window (refusals excluded).
Latency is from each request's intended send time (no coordinated omission). The
machine has 2 cores: the generator and the server each get about one; the generator
runs in as many processes as the rate needs (one per ``GENERATOR_RATE_PER_PROCESS``),
and every step says whether it kept its schedule (requests sent more than 10 ms late
count as "lagged").

Figures, each against the issue's target:
* CPU per payment at a sustained 10,000/s (switch, switch with metrics off, echo; ratio);
* the highest offered rate served whole (95% processed, not refused) with p99 <= 10 ms,
  and saturation: the highest processed rate whose admitted payments keep p99 <= 100 ms
  (refusals are fast replies: counted as served, shedding would raise both figures);
* overload: half the saturation rate alone (the baseline), then 3x the saturation rate,
  then half again: share shed, p99 of admitted payments (results only, not refusals),
  RSS at start / peak / end, and the seconds after the overload until a second is as
  clean as the baseline (nothing shed, p99 within 1.5x the baseline's, or 10 ms); and the
  switch's own p99 over the overload, read to reply ready, from its histogram (as
  ``histogram_quantile``): what is left of the admitted p99 when the generators' share
  of the 2 cores and the socket queues are taken out;
* the same sustained load on the trio backend;
* through the real simulators in their own process (card ISO 8583 + SWIFT + QR mix):
  the switch's CPU per payment at ``SIM_RATE``.

Every figure is printed with the machine's load average during the run: on a shared
2-core box, a load above ~2 means other processes took CPU from the switch and the
generator, and the echo row shows how much of the latency is the machine's.

Writes the "e2e" section of bench/RESULTS.md only with ``--write``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

from bench.results import markdown_table, write_flag, write_section  # noqa: E402
from loadtests.harness import top as metrics_top  # noqa: E402
from loadtests.harness.loadgen import (  # noqa: E402
    OpenLoopGenerator,
    RateShape,
    StepsRate,
    new_histogram,
)
from loadtests.harness.processes import (  # noqa: E402
    channel_networks_toml,
    start_channels,
    start_switch,
    stop_switch,
)
from loadtests.harness.workload import Workload, WorkloadMix  # noqa: E402

SWITCH_CONFIG = """
seed = 1
[server]
port = 0
[admin]
port = 0
metrics = {metrics}
[journal]
path = "{journal}"
mode = "group"
[risk.velocity]
max_count = 100000
max_amount_cny_minor = 1000000000000000
[[networks]]
name = "card"
channel = "card"
latency_median_ms = 1.0
latency_sigma = 0.3
[[networks]]
name = "swift"
channel = "swift"
latency_median_ms = 1.0
latency_sigma = 0.3
[[networks]]
name = "qr"
channel = "qr"
latency_median_ms = 1.0
latency_sigma = 0.3
[[routes]]
channel = "card"
network = "card"
[[routes]]
channel = "swift"
network = "swift"
[[routes]]
channel = "qr"
network = "qr"
"""
TICKS = os.sysconf("SC_CLK_TCK")


GENERATOR_RATE_PER_PROCESS = 15_000
SIM_RATE = 5000.0
SIM_CONFIG = """
seed = 1
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
mode = "group"
[risk.velocity]
max_count = 100000
max_amount_cny_minor = 1000000000000000
"""
LAG_OK = 0  # requests sent > 10 ms late that still count as "kept its schedule"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Step:
    target: str
    rate: float
    achieved: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us_per_payment: float
    errors: int
    lagged: int
    processes: int = 1
    sent: int = 0
    shed: int = 0
    admitted_p99_ms: float = 0.0
    rss_mib: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: list[tuple[float, int]] = field(default_factory=list)  # per second: p99, shed
    #: Payments processed (replies less refusals) per second: what the switch got done.
    processed: float = 0.0
    #: What ``run_load``'s ``probe`` returned at the start and at the end of the window.
    probed: tuple[Any, Any] | None = None

    @property
    def kept_schedule(self) -> bool:
        return self.lagged <= LAG_OK


def _generate(args: tuple[str, int, bytes, float, int, int, int, float]) -> dict[str, Any]:
    """One generator process (module level: the spawn target)."""
    import msgspec

    from loadtests.harness.loadgen import shape_from_dict

    host, port, shape_raw, duration, seed, index, processes, start_wall = args
    shape = shape_from_dict(msgspec.msgpack.decode(shape_raw))
    mix = WorkloadMix(duplicate_share=0.0, invalid_share=0.0)
    workload = Workload(seed * 1000 + index, mix, key_prefix=f"s{seed}p{index}-")
    intervals: list[Any] = []
    generator = OpenLoopGenerator(
        workload.next, shape=shape, duration_s=duration, connections=8,
        stride=processes, offset=index, track_acknowledged=False,
        on_interval=intervals.append)

    def wait_for_start() -> float:
        return start_wall

    async def go() -> Any:
        return await generator.run(host, port, wait_for_start=wait_for_start)

    stats = anyio.run(go, backend="asyncio", backend_options={"use_uvloop": True})
    return {
        "sent": stats.sent, "replies": stats.replies, "errors": dict(stats.errors),
        "lagged": stats.lagged, "elapsed": stats.elapsed_s,
        "histogram": stats.histogram.encode(), "admitted": stats.admitted.encode(),
        "intervals": [(i.index, i.histogram().encode(), i.errors.get("overloaded", 0))
                      for i in intervals],
    }


def run_load(target: str, pid: int, port: int, shape: RateShape, duration: float,
             seed: int, probe: Callable[[], Any] | None = None) -> Step:
    """Offer ``shape`` for ``duration`` from enough generator processes; measure.

    ``probe``: called when the load starts and when it ends, exactly where the server's
    CPU is read (bench/bench_rates.py reads each thread's there)."""
    import msgspec

    peak_rate = max(shape.rate_at(t) for t in range(int(duration) + 1))
    processes = max(1, math.ceil(peak_rate / GENERATOR_RATE_PER_PROCESS))
    raw = msgspec.msgpack.encode(msgspec.to_builtins(shape))
    rss: list[float] = [rss_mib(pid)]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.25):
            rss.append(rss_mib(pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        start_wall = time.time() + 2.0 + 0.5 * processes  # bench: spawn and connect first
        jobs = [("127.0.0.1", port, raw, duration, seed, i, processes, start_wall)
                for i in range(processes)]
        pending = pool.map_async(_generate, jobs)
        time.sleep(max(0.0, start_wall - time.time()))
        probed_before = probe() if probe is not None else None
        before = cpu_seconds(pid)
        sampler.start()
        results = pending.get(timeout=duration + 120)
        used = cpu_seconds(pid) - before
        probed_after = probe() if probe is not None else None
        done.set()
    sampler.join()
    histogram = new_histogram()
    admitted = new_histogram()
    per_second: dict[int, tuple[HdrHistogram, int]] = {}
    for r in results:
        histogram.add(HdrHistogram.decode(r["histogram"]))
        admitted.add(HdrHistogram.decode(r["admitted"]))
        for index, encoded, shed in r["intervals"]:
            hist, n = per_second.get(index, (new_histogram(), 0))
            hist.add(HdrHistogram.decode(encoded))
            per_second[index] = (hist, n + shed)
    replies = sum(r["replies"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    elapsed = max(r["elapsed"] for r in results)

    def pct(h: HdrHistogram, p: float) -> float:
        return h.get_value_at_percentile(p) / 1000.0 if h.get_total_count() else 0.0

    return Step(
        target, shape.cumulative(duration) / duration, replies / elapsed,
        pct(histogram, 50), pct(histogram, 99), pct(histogram, 99.9),
        # Per payment processed: refusals are cheap and must not dilute the figure.
        used / max(replies - sum(errors.values()), 1) * 1e6, sum(errors.values()),
        sum(r["lagged"] for r in results),
        processes=processes, sent=sum(r["sent"] for r in results),
        shed=errors.get("overloaded", 0), admitted_p99_ms=pct(admitted, 99),
        rss_mib=(rss[0], max(rss), rss[-1]),
        seconds=[(pct(h, 99), shed) for _, (h, shed) in sorted(per_second.items())],
        processed=(replies - sum(errors.values())) / elapsed,
        probed=(probed_before, probed_after) if probe is not None else None,
    )


def run_step(target: str, pid: int, port: int, rate: float, duration: float, seed: int,
             probe: Callable[[], Any] | None = None) -> Step:
    return run_load(target, pid, port, StepsRate(rates=[rate], step_s=duration), duration, seed,
                    probe)


def _line(step: Step) -> str:
    return (f"  {step.target:6s} {step.rate:8.0f}/s -> achieved {step.achieved:8.0f}/s  "
            f"p99 {step.p99_ms:8.2f} ms  cpu {step.cpu_us_per_payment:6.1f} us/payment  "
            f"shed {step.shed}  gen x{step.processes}"
            + ("" if step.kept_schedule else f"  GENERATOR LAGGED x{step.lagged}"))


def sweep(target: str, pid: int, port: int, rates: Sequence[float], duration: float
          ) -> list[Step]:
    steps = []
    for i, rate in enumerate(rates):
        step = run_step(target, pid, port, rate, duration, seed=100 + i)
        steps.append(step)
        print(_line(step), flush=True)
        if step.admitted_p99_ms > 100 or step.processed < 0.6 * rate:
            break  # saturated: higher rates only measure the queue or the shedding
    return steps


def best_rate(steps: list[Step], p99_limit_ms: float = 10.0) -> Step | None:
    """The highest offered rate served whole (95% processed, not refused) within the p99."""
    ok = [s for s in steps if s.p99_ms <= p99_limit_ms and s.processed >= 0.95 * s.rate]
    return max(ok, key=lambda s: s.rate) if ok else None


def saturation(steps: list[Step]) -> Step | None:
    """The highest processed rate whose admitted payments keep p99 <= 100 ms. Refusals
    are fast replies: counted as achieved they would raise the figure by shedding."""
    ok = [s for s in steps if s.admitted_p99_ms <= 100.0]
    return max(ok, key=lambda s: s.processed) if ok else None


def overload(pid: int, port: int, saturated: float, seconds: int, base: float) -> Step:
    """3x the saturation rate for ``seconds``, then ``base`` for 5 s."""
    rates = [3 * saturated] * seconds + [base] * 5
    shape = StepsRate(rates=rates, step_s=1.0)
    step = run_load("switch", pid, port, shape, float(len(rates)), seed=9)
    step.target = "overload"
    return step


def baseline(pid: int, port: int, base: float, seconds: float) -> Step:
    """``base`` alone on the switch about to be overloaded: how clean it is at that rate,
    what "recovered" is judged against.

    Measured at the same rate, on the same switch, just before: the sweep's nearest step
    was at a lower rate (4,000/s against a base near 5,000/s, where this 2-core box is at
    its knee: p99 10.6 ms against 15-35 ms), so "recovered" was unreachable even for
    seconds that were as clean as before the overload."""
    step = run_step("switch", pid, port, base, seconds, seed=8)
    step.target = "baseline"
    return step


def switch_scrape(admin_port: int) -> metrics_top.Scrape:
    """One read of the switch's /metrics (for its own latency histogram)."""
    import httpx

    with httpx.Client() as client:
        return metrics_top.scrape(f"http://127.0.0.1:{admin_port}/metrics", client)


def switch_p99_ms(before: metrics_top.Scrape, after: metrics_top.Scrape) -> float | None:
    """The p99 of ``payswitch_payment_duration_seconds`` (read to reply ready) between two
    scrapes, interpolated within its bucket as ``histogram_quantile`` and ``payswitch
    top`` do; None if the switch observed nothing."""
    p99 = metrics_top.quantile(0.99, metrics_top.histogram_increase(
        after, before, "payswitch_payment_duration_seconds_bucket"))
    return None if p99 is None else p99 * 1000.0


def recovery_s(step: Step, overload_s: int, steady_ms: float) -> float | None:
    """Seconds after the overload until a second is as clean as the baseline: nothing
    shed, p99 within 1.5x the baseline's p99 (or 10 ms, if that is higher).

    Against the switch's own steady state, not a fixed 10 ms: at half the saturation rate
    the p99 can be above 10 ms without any overload, and "recovered" was then unreachable.
    """
    clean_ms = max(10.0, 1.5 * steady_ms)
    for k, (p99, shed) in enumerate(step.seconds[overload_s:]):
        if p99 <= clean_ms and shed == 0:
            return float(k)
    return None


def through_simulators(work: Path, rate: float, duration: float) -> Step:
    """The switch with the real simulators (own process) as its networks."""
    channels, ready = start_channels(work)
    try:
        config = work / "switch-sims.toml"
        config.write_text(SIM_CONFIG.format(journal=work / "switch-sims.db")
                          + channel_networks_toml(ready))
        proc, endpoints = start_switch(config, work / "ready-sims.json")
        try:
            step = run_step("sims", endpoints["pid"], endpoints["port"], rate, duration, seed=11)
        finally:
            stop_switch(proc)
    finally:
        channels.terminate()
        channels.wait(timeout=10)
    return step


def start(target: str, work: Path, backend: str = "asyncio") -> tuple[Any, dict[str, int]]:
    if target == "echo":
        return _start_echo(work / "ready-echo.json")
    return start_configured(target, work, metrics=target != "switch-no-metrics",
                            backend=backend)


def start_configured(name: str, work: Path, *, metrics: bool = True,
                     change: Callable[[str], str] = lambda config: config,
                     backend: str = "asyncio"
                     ) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """A switch on :data:`SWITCH_CONFIG` (its journal ``work/<name>.db``), the text first
    passed through ``change``: the benchmarks that vary one setting (bench_rates.py's
    journal writers, bench_ablation.py's parts taken out) start it here."""
    config = work / f"{name}.toml"
    config.write_text(change(SWITCH_CONFIG.format(
        journal=work / f"{name}.db", metrics="true" if metrics else "false")))
    return start_switch(config, work / f"ready-{name}.json", backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short steps, fewer rates")
    write_flag(parser)
    args = parser.parse_args()
    duration = 3.0 if args.quick else 8.0
    overload_s = 8 if args.quick else 30
    rates = (
        [1000, 3000, 6000, 10000, 15000, 20000, 25000]
        if args.quick
        else [500, 1000, 2000, 4000, 6000, 8000, 10000, 12000, 15000, 20000, 25000, 30000]
    )
    cpu_rate = 10_000.0  # sustained load for the CPU-per-payment figure (the issue's)

    work = Path(tempfile.mkdtemp(prefix="payswitch-e2e-"))
    load_start = os.getloadavg()
    results: dict[str, list[Step]] = {}
    cpu: dict[str, Step] = {}
    over: Step | None = None
    before: Step | None = None  # the overload's base rate alone, just before it
    inside_p99_ms: float | None = None  # the overload's p99 by the switch's own histogram
    # "switch-no-metrics" swaps every metric for a no-op: the difference is what metrics
    # cost on the hot path. It gets the sustained step only. So does trio.
    for target in ("switch", "switch-no-metrics", "switch-trio", "echo"):
        backend = "trio" if target == "switch-trio" else "asyncio"
        proc, endpoints = start("switch" if target == "switch-trio" else target, work, backend)
        pid, port = endpoints["pid"], endpoints["port"]
        try:
            print(f"{target}: sustained {cpu_rate:.0f}/s for CPU per payment", flush=True)
            cpu[target] = run_step(target, pid, port, cpu_rate, duration * 2, seed=7)
            print(_line(cpu[target]), flush=True)
            if target in ("switch", "echo"):
                print(f"{target}: rate sweep", flush=True)
                results[target] = sweep(target, pid, port, rates, duration)
            if target == "switch":
                sat = saturation(results[target])
                top = sat.processed if sat is not None else results[target][-1].processed
                base = min(top / 2, 5000.0)
                print(f"switch: baseline {base:.0f}/s for {duration:.0f} s", flush=True)
                before = baseline(pid, port, base, duration)
                print(_line(before), flush=True)
                print(f"switch: overload, 3 x {top:.0f}/s for {overload_s} s", flush=True)
                scraped = switch_scrape(endpoints["admin_port"])
                over = overload(pid, port, top, overload_s, base=base)
                inside_p99_ms = switch_p99_ms(scraped, switch_scrape(endpoints["admin_port"]))
                print(_line(over), flush=True)
        finally:
            stop_switch(proc)
        if target.startswith("switch"):
            (work / f"{target}.db").unlink(missing_ok=True)

    print(f"sims: sustained {SIM_RATE:.0f}/s through the simulators", flush=True)
    sims = through_simulators(work, SIM_RATE, duration * 2)
    print(_line(sims), flush=True)
    load_end = os.getloadavg()

    assert over is not None and before is not None
    steady_ms = before.p99_ms
    metrics_cost_us = (
        cpu["switch"].cpu_us_per_payment - cpu["switch-no-metrics"].cpu_us_per_payment
    )
    ratio = cpu["switch"].cpu_us_per_payment / max(cpu["echo"].cpu_us_per_payment, 1e-9)
    best = {t: best_rate(s) for t, s in results.items()}
    sat_switch = saturation(results["switch"])
    recovered = recovery_s(over, overload_s, steady_ms)
    shed_share = over.shed / max(over.sent, 1)
    lines = [
        f"switch CPU per payment: {cpu['switch'].cpu_us_per_payment:.1f} us "
        f"(at {cpu_rate:.0f}/s offered, {cpu['switch'].achieved:.0f}/s achieved; "
        "target <= 50 us)",
        f"switch with metrics off: {cpu['switch-no-metrics'].cpu_us_per_payment:.1f} us "
        f"(metrics cost {metrics_cost_us:+.1f} us per payment)",
        f"echo server CPU per request: {cpu['echo'].cpu_us_per_payment:.1f} us",
        f"ratio switch/echo: {ratio:.1f}x (target <= 4x)",
        f"trio backend at {cpu_rate:.0f}/s: {cpu['switch-trio'].cpu_us_per_payment:.1f} us "
        f"per payment, p99 {cpu['switch-trio'].p99_ms:.2f} ms, "
        f"achieved {cpu['switch-trio'].achieved:.0f}/s",
    ]
    for target, step in best.items():
        lines.append(
            f"{target}: highest rate with p99 <= 10 ms: "
            + (f"{step.rate:.0f}/s (p99 {step.p99_ms:.2f} ms)" if step else "none")
            + (" (target >= 10,000/s)" if target == "switch" else "")
        )
    lines += [
        "switch saturation (highest processed rate, admitted p99 <= 100 ms): "
        + (f"{sat_switch.processed:.0f}/s processed" if sat_switch else "none")
        + " (target >= 20,000/s)",
        f"overload {over.rate:.0f}/s average ({overload_s} s at 3x saturation, then 5 s at "
        f"half): shed {shed_share:.0%}, "
        f"admitted p99 {over.admitted_p99_ms:.1f} ms (target <= 50 ms; inside the switch, "
        "read to reply ready, by its own histogram: "
        + (f"{inside_p99_ms:.1f} ms" if inside_p99_ms is not None else "not read")
        + "), RSS start/peak/end "
        + "/".join(f"{v:.0f}" for v in over.rss_mib) + " MiB, recovery "
        + (f"{recovered:.0f} s" if recovered is not None else "not within 5 s")
        + f" to within 1.5x the p99 at {before.rate:.0f}/s just before the overload "
        f"({steady_ms:.1f} ms; target <= 1 s)",
        f"through the simulators (card+SWIFT+QR, own process) at {SIM_RATE:.0f}/s: "
        f"{sims.cpu_us_per_payment:.1f} us switch CPU per payment, p99 {sims.p99_ms:.2f} ms, "
        f"achieved {sims.achieved:.0f}/s",
        f"machine load average (1 min) at start {load_start[0]:.1f}, at end {load_end[0]:.1f} "
        "(2 cores: above ~2, other processes competed for the CPU)",
        "generator kept its schedule: "
        + ("yes" if all(s.kept_schedule for steps in results.values() for s in steps)
           and over.kept_schedule and before.kept_schedule
           and all(s.kept_schedule for s in cpu.values())
           else "NO (see 'generator lagged' column)"),
    ]
    print("\n".join(lines))

    every = [s for steps in results.values() for s in steps] + [
        cpu["switch"], cpu["switch-no-metrics"], cpu["switch-trio"], cpu["echo"], before, over,
        sims]
    rows = [
        [s.target, f"{s.rate:.0f}", f"{s.achieved:.0f}", f"{s.processed:.0f}", f"{s.p50_ms:.2f}",
         f"{s.p99_ms:.2f}",
         f"{s.p999_ms:.2f}", f"{s.admitted_p99_ms:.2f}", f"{s.cpu_us_per_payment:.1f}",
         s.shed, s.errors - s.shed, s.processes, s.lagged]
        for s in every
    ]
    body = "\n".join(
        [
            f"Mode: {'--quick' if args.quick else 'full'}; {duration:.0f} s per step; open loop, "
            "8 connections per generator process; latency from intended send time. "
            "Generator and server share 2 cores.",
            "",
            *(f"- {line}" for line in lines),
            "",
            markdown_table(
                ["target", "offered/s", "achieved/s", "processed/s", "p50 ms", "p99 ms",
                 "p99.9 ms",
                 "admitted p99 ms", "server CPU us/req", "shed", "other errors",
                 "generator processes", "generator lagged"],
                rows,
            ),
        ]
    )
    write_section("e2e", "End to end: switch vs bare framed echo", body, "bench/e2e.py",
                  args.write)


def _start_echo(ready: Path) -> tuple[object, dict[str, int]]:
    import json
    import subprocess
    import time

    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--ready-file", str(ready)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 20  # bench: waiting on another process
    while not ready.exists():
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


if __name__ == "__main__":
    main()
