"""``payswitch load``: several open-loop generator processes, live progress, outputs.

One run is a :class:`LoadPlan`: a target, a rate shape, a duration, a workload, a seed, a
number of generator processes and of connections. Each process (multiprocessing, spawn
context) gets its own connections, its exact share of the shape (process *p* of *P* sends
global requests *p, p+P, ...*), and its own seed derived from the run seed; they share
the run seed's card pool, so hot cards are hot across processes. All start at the same
wall-clock instant.

Every second each process closes an interval (counts, errors by code, an hdrh-encoded
interval histogram) and puts it on a bounded queue. This parent process merges the
intervals of each second across processes (hdrh decode + add), shows live progress with
rich, optionally exports the generator's own Prometheus metrics (``--metrics-port``,
loadtests/harness/genmetrics.py), and writes, under ``reports/<timestamp>-load/`` (or
``--out``; loadtests/harness/runoutputs.py):

* ``summary.json``: totals, latency percentiles from the merged full histograms (overall
  and per channel), the generator's own lag, per-process figures, the environment, the
  warnings and the thresholds' verdict. ``achieved_rate`` is replies per second of the
  load (``duration_s``, or until ``last_reply_s`` if replies came later), never per
  second of the drain wait;
* ``timeseries.csv``: 1 s buckets (offered, sent, achieved, statuses and errors by code,
  planted errors, p50/p99/p99.9 overall and per channel);

Requests never answered are errors of the second the generator gave up on them:
``no_reply`` (still unanswered when the drain timeout ended) and ``connection_lost``
(their connection closed), in every output (time series, live view, report, metrics).
Their latency is in every histogram and percentile too, at what they had waited when
given up on: a lower bound (a thousand requests dropped after the drain timeout make the
p99 at least that timeout, not that of the answered ones).
* ``latency.hlog``: the HdrHistogram interval log (values in microseconds; untagged lines
  for all channels, ``Tag=<channel>`` lines per channel), readable by
  HistogramLogAnalyzer and loadtests/harness/hlog.py;
* ``index.html``: the self-contained report (loadtests/harness/report.py).

If a generator falls behind its schedule it says so, loudly, live and in every output:
latency is measured from intended send times, so the lag is *in* the numbers, but the
target then saw a lower rate than the one offered.
"""

from __future__ import annotations

import datetime as dt
import functools
import multiprocessing
import multiprocessing.synchronize
import os
import queue as queue_module
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Final, cast

import anyio
import msgspec
from hdrh.histogram import HdrHistogram
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from loadtests.harness.hlog import LogWriter, new_histogram, pct_ms
from loadtests.harness.loadgen import Acknowledged, Interval, OpenLoopGenerator
from loadtests.harness.runoutputs import (
    Aggregator,
    MetricsSink,
    RunTotals,
    apply_thresholds,
    behind_message,
    build_summary,
    environment,
    print_summary,
    row_is_behind,
    write_outputs,
)
from loadtests.harness.shapes import RateShape
from loadtests.harness.thresholds import Threshold, ThresholdResult
from loadtests.harness.timeseries import SecondRow
from loadtests.harness.wires import Iso8583Options, Wire, WireName
from loadtests.harness.workload import SpecWorkload, WorkloadSpec, derive_seed
from switch.protocols.shardmap import join_address

#: Messages a worker may have queued before it blocks (a few per second are normal).
QUEUE_BOUND = 4096
READY_TIMEOUT_S = 60.0
START_DELAY_S = 0.3


class LoadPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str
    port: int
    shape: RateShape
    duration_s: float
    workload: WorkloadSpec
    seed: int
    processes: int = 1
    connections: int = 8
    #: Prefix of every idempotency key (with the process index): keeps runs apart.
    run_tag: str = "L"
    drain_timeout_s: float = 10.0
    max_outstanding_per_connection: int = 10_000
    #: When set, each process writes what its clients were told, and the amount they sent
    #: (idempotency key -> [status, payment id, amount in minor units, currency]), to
    #: ``acks-<i>.msgpack`` here, for the money audit (lost, duplicated, wrong amount).
    acks_dir: str | None = None
    #: The target's protocol: the switch's msgpack, ISO 8583 (any host), or its HTTP API.
    protocol: WireName = "msgpack"
    iso8583: Iso8583Options | None = None
    #: This machine's share of a run split over several machines (``--share I/M`` with a
    #: common ``--run-id``): process p of this machine's P sends global requests
    #: I+M*p, I+M*p+M*P, ... of the shape, so machine I sends every g = I (mod M) whatever
    #: each machine's P, and the machines together offer the shape once; merge their
    #: outputs with `payswitch report merge`.
    share_index: int = 0
    share_count: int = 1


def global_index(plan: LoadPlan, index: int) -> int:
    """Process ``index`` of this machine among every process of every machine: its first
    global request, then every ``plan.share_count * plan.processes``-th. Machines of one
    run may have different process counts (the default is per machine), so the machine
    index is the residue mod M and the process index strides within it."""
    return plan.share_index + plan.share_count * index


def key_prefix(plan: LoadPlan, index: int) -> str:
    """Idempotency keys of one process: apart from every other process and machine."""
    machine = f"m{plan.share_index}" if plan.share_count > 1 else ""
    return f"{plan.run_tag}{machine}p{index}-"


class SharedShape:
    """What one machine's share of a shape offers: the shape's counts over M machines
    (for the offered figures only; the schedule itself splits requests by stride)."""

    def __init__(self, shape: RateShape, machines: int) -> None:
        self.shape = shape
        self.machines = machines

    def rate_at(self, t: float) -> float:
        return self.shape.rate_at(t) / self.machines

    def cumulative(self, t: float) -> float:
        return self.shape.cumulative(t) / self.machines

    def natural_duration(self) -> float | None:
        return self.shape.natural_duration()


def connections_of(plan: LoadPlan, index: int) -> int:
    """Process ``index``'s share of the connections (each gets at least one)."""
    base, extra = divmod(plan.connections, plan.processes)
    return max(1, base + (1 if index < extra else 0))


class ProcessResult(msgspec.Struct, frozen=True):
    index: int
    sent: int
    malformed_sent: int
    replies: int
    replays: int
    statuses: dict[str, int]
    errors: dict[str, int]
    planted_errors: dict[str, int]
    planted_sent: dict[str, int]
    by_channel: dict[str, int]
    dropped: int
    lagged: int
    max_lag_s: float
    unanswered: int
    connection_lost: int
    elapsed_s: float
    cpu_s: float
    intervals: int
    histograms: dict[str, bytes]  # hdrh-encoded per channel, the whole run
    last_reply_s: float = 0.0
    admitted: bytes = b""  # hdrh-encoded: answered with a result (refusals left out)


_encode = msgspec.msgpack.Encoder().encode
_decode_interval = msgspec.msgpack.Decoder(Interval).decode
_decode_result = msgspec.msgpack.Decoder(ProcessResult).decode
_decode_plan = msgspec.msgpack.Decoder(LoadPlan).decode


def write_acks(path: Path, acknowledged: dict[str, Acknowledged]) -> None:
    """One process's acknowledgements, as ``LoadPlan.acks_dir`` says (read back by
    ``loadtests.harness.scenario.read_acks``)."""
    path.write_bytes(_encode({k: [a.status, a.payment_id, a.amount, a.currency]
                              for k, a in acknowledged.items()}))


def make_wire(name: WireName, host: str, iso: Iso8583Options | None = None, *,
              process: int = 0, processes: int = 1, run_tag: str = "") -> Wire | None:
    """The wire for ``name`` in generator ``process`` of ``processes``; None for msgpack
    (built into the generator). ``run_tag``: an ISO 8583 run's STANs start where it says."""
    if name == "iso8583":
        from loadtests.harness.iso8583_client import Iso8583Wire

        return Iso8583Wire(iso or Iso8583Options(), stride=processes, offset=process,
                           run_tag=run_tag)
    if name == "http":
        from loadtests.harness.http_client import HttpWire

        return HttpWire(host)
    return None


def _worker(
    plan_bytes: bytes,
    index: int,
    queue: multiprocessing.Queue[tuple[Any, ...]],
    go: multiprocessing.synchronize.Event,
    start_at: Synchronized[float],
    stop: multiprocessing.synchronize.Event,
) -> None:
    """One generator process (the spawn target: module level, picklable arguments)."""
    # Ctrl-C reaches the whole process group: the parent turns it into ``stop``, so each
    # generator stops sending, drains, and still reports what it measured.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    plan = _decode_plan(plan_bytes)
    try:
        workload = SpecWorkload(
            plan.workload,
            derive_seed(plan.seed, "process", global_index(plan, index)),
            key_prefix=key_prefix(plan, index),
            pool_seed=plan.seed,
        )

        def on_interval(interval: Interval) -> None:
            # Blocks only if the parent is QUEUE_BOUND messages behind: then fail loudly.
            queue.put(("interval", index, _encode(interval)), timeout=10)

        def wait_for_start() -> float:
            queue.put(("ready", index))
            if not go.wait(READY_TIMEOUT_S):
                raise TimeoutError("no start signal from the parent")
            return float(start_at.value)

        wire = make_wire(plan.protocol, join_address(plan.host, plan.port), plan.iso8583,
                         process=index, processes=plan.processes, run_tag=plan.run_tag)
        channel = wire.channel if wire is not None else None
        source = (workload.next_item if channel is None
                  else functools.partial(workload.next_item, channel))
        generator = OpenLoopGenerator(
            source,
            duration_s=plan.duration_s,
            shape=plan.shape,
            stride=plan.processes * plan.share_count,
            offset=global_index(plan, index),
            connections=connections_of(plan, index),
            max_outstanding_per_connection=plan.max_outstanding_per_connection,
            max_outstanding=plan.max_outstanding_per_connection * connections_of(plan, index),
            drain_timeout_s=plan.drain_timeout_s,
            on_interval=on_interval,
            track_acknowledged=plan.acks_dir is not None,
            should_stop=stop.is_set,
            wire=wire,
        )
        cpu0 = time.process_time()  # bench: the generator's own CPU, for req/s per core
        run = functools.partial(generator.run, wait_for_start=wait_for_start)
        stats = anyio.run(
            run, plan.host, plan.port, backend="asyncio", backend_options={"use_uvloop": True}
        )
        cpu = time.process_time() - cpu0  # bench: as above
        samples = getattr(wire, "unmatched_samples", None)
        if samples:
            # Shown, not only counted: the keys of replies that matched no request.
            match = plan.iso8583.match if plan.iso8583 is not None else ["mti", "11", "41"]
            print(f"process {index}: replies matching no request (key {match}), "
                  f"e.g. {samples[:5]}", file=sys.stderr)
        if plan.acks_dir is not None:
            write_acks(Path(plan.acks_dir) / f"acks-{index}.msgpack", stats.acknowledged)
        result = ProcessResult(
            index=index,
            sent=stats.sent,
            malformed_sent=stats.malformed_sent,
            replies=stats.replies,
            replays=stats.replays,
            statuses=dict(stats.by_status),
            errors=dict(stats.errors),
            planted_errors=dict(stats.planted_errors),
            planted_sent=dict(stats.planted_sent),
            by_channel={f"{ch}/{st}": n for (ch, st), n in stats.by_channel.items()},
            dropped=stats.dropped_overrun,
            lagged=stats.lagged,
            max_lag_s=stats.max_lag_s,
            unanswered=stats.unanswered,
            connection_lost=stats.connection_lost,
            elapsed_s=stats.elapsed_s,
            cpu_s=cpu,
            intervals=generator.intervals_closed,
            histograms={ch: h.encode() for ch, h in sorted(stats.channel_histograms.items())},
            last_reply_s=stats.last_reply_s,
            admitted=stats.admitted.encode(),
        )
        queue.put(("done", index, _encode(result)), timeout=30)
    except BaseException as exc:  # report, then die: the parent shows it
        where = f" (target {plan.host}:{plan.port})" if isinstance(exc, OSError) else ""
        queue.put(("failed", index, f"{type(exc).__name__}: {exc}{where}"), timeout=5)
        raise SystemExit(1) from None


# --- live progress ---------------------------------------------------------------------------


def progress_view(agg: Aggregator, elapsed: float, duration: float) -> Group:
    last = agg.rows[-1] if agg.rows else None
    table = Table(title=f"payswitch load — {elapsed:5.1f} / {duration:.0f} s", expand=False)
    for column in ("offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "p99 (run)",
                   "sent", "replies", "errors"):
        table.add_column(column, justify="right")
    errors = ", ".join(
        f"{code}={n:,}" + (f" ({agg.planted[code]:,} planted)" if agg.planted[code] else "")
        for code, n in sorted(agg.errors.items())
    ) or "0"
    table.add_row(
        f"{last.offered:,.0f}" if last else "-",
        f"{last.achieved:,}" if last else "-",
        f"{last.p50_ms:.2f}" if last else "-",
        f"{last.p99_ms:.2f}" if last else "-",
        f"{last.p999_ms:.2f}" if last else "-",
        f"{pct_ms(agg.running, 99):.2f}",
        f"{agg.sent:,}",
        f"{agg.replies:,}",
        errors,
    )
    parts: list[Any] = [table]
    if last is not None and row_is_behind(last):
        parts.append(
            Panel(
                behind_message(agg.lagged, agg.max_lag_s * 1000, agg.sent, agg.behind_seconds),
                style="bold white on red",
                title="WARNING",
            )
        )
    return Group(*parts)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class LoadResult:
    out_dir: Path
    summary: dict[str, Any]
    rows: list[SecondRow]
    failures: list[str]
    interrupted: bool = False
    thresholds: list[ThresholdResult] | None = None

    @property
    def behind_schedule(self) -> bool:
        return bool(self.summary["generator"]["behind_schedule"])


def default_out_dir(base: str | Path = "reports") -> Path:
    return new_output_dir(base, "load")


#: Runs of one name started within one second that get directories of their own.
MAX_SAME_SECOND: Final = 1000


class OutputDirError(Exception):
    """An output directory that cannot be created or written in; the message names the
    directory and the operating system's reason (the command line shows it as one line)."""


def check_output_dir(path: str | Path) -> None:
    """:class:`OutputDirError` if ``path`` cannot become a directory to write in: a file
    in its way, or the nearest directory that exists not writable. Creates nothing."""
    target = Path(path)
    for part in (target, *target.parents):
        try:
            if not (part.exists() or part.is_symlink()):
                continue
        except OSError:  # cannot even look: mkdir will say why
            return
        if not part.is_dir():
            # The OS would say only "File exists" or "Not a directory".
            raise OutputDirError(f"{target}: exists and is not a directory" if part == target
                                 else f"{target}: cannot create the directory: {part} is a "
                                 "file, not a directory")
        if not os.access(part, os.W_OK | os.X_OK):
            raise OutputDirError(f"{target}: cannot write in this directory: permission denied"
                                 if part == target else f"{target}: cannot create the "
                                 f"directory: {part} is not writable (permission denied)")
        return


def make_output_dir(path: str | Path) -> Path:
    """``path`` created with its parents, and writable, before a run starts (which must
    not find out at its end that its outputs have nowhere to go); else
    :class:`OutputDirError` naming it and the reason."""
    target = Path(path)
    check_output_dir(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"{target}: cannot create the directory: "
                             f"{exc.strerror or exc}") from None
    return target


def new_output_dir(base: str | Path, name: str) -> Path:
    """``<base>/<timestamp>-<name>``, created now, and never a directory that exists:
    named to the second, two runs started in the same second (a suite in two processes,
    a script starting runs in a loop) shared one, so one run's summary overwrote the
    other's, and a scenario audited a journal.db two switches had written. A second one
    that second gets ``-2``, and so on. :class:`OutputDirError` if it cannot be made."""
    root = make_output_dir(base)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")  # wall: the output's name
    for n in range(1, MAX_SAME_SECOND + 1):
        path = root / (f"{stamp}-{name}" if n == 1 else f"{stamp}-{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputDirError(f"{path}: cannot create the directory: "
                                 f"{exc.strerror or exc}") from None
        return path
    raise OutputDirError(f"{root}: {MAX_SAME_SECOND} outputs named {stamp}-{name} already")


def run_tag_now() -> str:
    """A short tag unique per run, so reruns against one switch do not replay keys."""
    value = int(time.time() * 1000) % 36**6  # wall: a run identifier, not a measurement
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    tag = ""
    for _ in range(6):
        value, rem = divmod(value, 36)
        tag = digits[rem] + tag
    return f"L{tag}"


def run_load(
    plan: LoadPlan,
    out_dir: Path,
    console: Console,
    config: dict[str, Any] | None = None,
    on_progress: Callable[[Aggregator], None] | None = None,
    thresholds: Sequence[Threshold] = (),
    metrics: MetricsSink | None = None,
) -> LoadResult:
    """Run the plan's processes to completion and write every output under ``out_dir``.

    ``thresholds`` are evaluated on the merged results (their verdict goes into
    summary.json and the report); ``metrics`` receives every closed second.
    """
    make_output_dir(out_dir)
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[tuple[Any, ...]] = ctx.Queue(maxsize=QUEUE_BOUND)
    go = ctx.Event()
    stop = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    plan_bytes = _encode(plan)
    procs = [
        ctx.Process(
            target=_worker,
            args=(plan_bytes, i, queue, go, start_at, stop),
            name=f"payswitch-load-{i}",
            daemon=True,
        )
        for i in range(plan.processes)
    ]
    for proc in procs:
        proc.start()
    failures: list[str] = []
    results: dict[int, ProcessResult] = {}
    hlog_file = (out_dir / "latency.hlog").open("w")
    try:
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S  # wall: waiting for other processes
        while len(ready) < plan.processes and not failures:
            try:
                message = queue.get(timeout=0.2)
            except queue_module.Empty:
                message = None
            if message is not None:
                if message[0] == "ready":
                    ready.add(message[1])
                elif message[0] == "failed":
                    failures.append(f"process {message[1]}: {message[2]}")
            dead = [p.name for p in procs if p.exitcode is not None]
            if dead and not failures:
                failures.append(f"generator process(es) exited before start: {dead}")
            if time.monotonic() > deadline:  # wall: as above
                failures.append("generator processes did not connect in time")
        if failures:
            raise RuntimeError("; ".join(failures))
        start_wall = time.time() + START_DELAY_S  # wall: common start for all processes
        start_at.value = start_wall
        go.set()
        writer = LogWriter(
            hlog_file, start_wall,
            f"payswitch load {plan.run_tag}: latency in microseconds from intended send time; "
            "Interval_Max in milliseconds; Tag=<channel> lines per channel",
        )
        offered = (plan.shape if plan.share_count == 1
                   else cast("RateShape", SharedShape(plan.shape, plan.share_count)))
        agg = Aggregator(plan.processes, offered, plan.duration_s, writer, metrics)
        done: set[int] = set()
        interrupted_at: float | None = None
        try:
            _collect(plan, procs, queue, agg, results, done, failures, console, start_wall,
                     on_progress)
        except KeyboardInterrupt:
            elapsed = time.time() - start_wall  # wall: when the user stopped the run
            console.print(f"interrupted at {elapsed:.1f} s: stopping the generators, draining")
            interrupted_at = elapsed
            stop.set()
            _collect(plan, procs, queue, agg, results, done, failures, console, start_wall,
                     on_progress)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        hlog_file.close()
        queue.close()
    if interrupted_at is not None:
        # What was due until the user stopped the run, not the whole plan.
        agg.total_offered = min(
            agg.total_offered,
            int(plan.shape.cumulative(interrupted_at) / plan.share_count + 1e-6)
        )
    return _finish(plan, out_dir, agg, results, failures, config or {}, console,
                   interrupted_at, start_wall, thresholds)


def _collect(
    plan: LoadPlan,
    procs: list[Any],
    queue: multiprocessing.Queue[tuple[Any, ...]],
    agg: Aggregator,
    results: dict[int, ProcessResult],
    done: set[int],
    failures: list[str],
    console: Console,
    start_wall: float,
    on_progress: Callable[[Aggregator], None] | None,
) -> None:
    live = Live(console=console, refresh_per_second=4, transient=False) if (
        console.is_terminal
    ) else None
    last_plain = 0.0
    last_warned = -1
    if live is not None:
        live.start()
    try:
        while len(done) < plan.processes:
            try:
                message = queue.get(timeout=0.25)
            except queue_module.Empty:
                message = None
            if message is not None:
                kind, index = message[0], message[1]
                if kind == "interval":
                    agg.add(index, _decode_interval(message[2]))
                elif kind == "done":
                    results[index] = _decode_result(message[2])
                    done.add(index)
                    agg.finish(index)
                elif kind == "failed":
                    failures.append(f"process {index}: {message[2]}")
                    done.add(index)
                    agg.finish(index)
            for i, proc in enumerate(procs):
                if i not in done and proc.exitcode is not None and queue.empty():
                    failures.append(f"process {i} exited with code {proc.exitcode}")
                    done.add(i)
                    agg.finish(i)
            elapsed = time.time() - start_wall  # wall: progress display only
            if on_progress is not None:
                on_progress(agg)
            if live is not None:
                live.update(progress_view(agg, max(elapsed, 0.0), plan.duration_s))
            else:
                last = agg.rows[-1] if agg.rows else None
                lagging = last is not None and row_is_behind(last)
                if last is not None and lagging and last.second >= last_warned + 5:
                    last_warned = last.second
                    console.print(
                        "WARNING: " + behind_message(agg.lagged, agg.max_lag_s * 1000, agg.sent,
                                                     agg.behind_seconds),
                        style="bold red",
                        highlight=False,
                    )
                if elapsed - last_plain >= 5 and last is not None:
                    last_plain = elapsed
                    console.print(
                        f"[{elapsed:5.1f} s] offered {last.offered:,.0f}/s achieved "
                        f"{last.achieved:,}/s p50 {last.p50_ms:.2f} p99 {last.p99_ms:.2f} "
                        f"p99.9 {last.p999_ms:.2f} ms errors "
                        f"{sum(agg.errors.values()) - sum(agg.planted.values()):,} (+"
                        f"{sum(agg.planted.values()):,} planted)",
                        highlight=False,
                    )
    finally:
        if live is not None:
            live.update(progress_view(agg, time.time() - start_wall, plan.duration_s))  # wall
            live.stop()


def _finish(
    plan: LoadPlan,
    out_dir: Path,
    agg: Aggregator,
    results: dict[int, ProcessResult],
    failures: list[str],
    config: dict[str, Any],
    console: Console,
    interrupted_at: float | None,
    start_wall: float,
    thresholds: Sequence[Threshold],
) -> LoadResult:
    ordered = [results[i] for i in sorted(results)]
    channel_hists: dict[str, HdrHistogram] = {}
    total = new_histogram()
    admitted = new_histogram()
    for r in ordered:
        if r.admitted:
            admitted.decode_and_add(r.admitted)
        for channel, encoded in r.histograms.items():
            hist = channel_hists.get(channel)
            if hist is None:
                hist = channel_hists[channel] = new_histogram()
            hist.decode_and_add(encoded)
            total.decode_and_add(encoded)

    def summed(name: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for r in ordered:
            out.update(getattr(r, name))
        return out

    totals = RunTotals(
        histogram=total,
        admitted=admitted,
        channel_histograms=channel_hists,
        sent=sum(r.sent for r in ordered),
        malformed_sent=sum(r.malformed_sent for r in ordered),
        replies=sum(r.replies for r in ordered),
        replays=sum(r.replays for r in ordered),
        statuses=summed("statuses"),
        errors=summed("errors"),
        planted_errors=summed("planted_errors"),
        planted_sent=summed("planted_sent"),
        by_channel=summed("by_channel"),
        unanswered=sum(r.unanswered for r in ordered),
        connection_lost=sum(r.connection_lost for r in ordered),
        dropped=sum(r.dropped for r in ordered),
        lagged=sum(r.lagged for r in ordered),
        max_lag_ms=max((r.max_lag_s for r in ordered), default=0.0) * 1000,
        elapsed_s=max((r.elapsed_s for r in ordered), default=plan.duration_s),
        cpu_s=sum(r.cpu_s for r in ordered),
        processes=[
            {"index": r.index, "sent": r.sent, "replies": r.replies, "lagged": r.lagged,
             "max_lag_ms": round(r.max_lag_s * 1000, 3), "cpu_s": round(r.cpu_s, 3)}
            for r in ordered
        ],
        last_reply_s=max((r.last_reply_s for r in ordered), default=0.0),
    )
    run = {
        "target": f"{plan.host}:{plan.port}",
        "duration_s": plan.duration_s,
        "elapsed_s": round(totals.elapsed_s, 3),
        "last_reply_s": round(totals.last_reply_s, 3),
        "processes": plan.processes,
        "connections": plan.connections,
        "seed": plan.seed,
        "run_tag": plan.run_tag,
        "share": f"{plan.share_index}/{plan.share_count}",
        "start_wall": round(start_wall, 3),
        "interrupted_at_s": interrupted_at,
        "shape": msgspec.to_builtins(plan.shape),
    }
    summary = build_summary(
        run, totals, agg.total_offered, interrupted_at or plan.duration_s, agg.behind_seconds,
        environment(start_wall), failures,
    )
    histograms: dict[str | None, HdrHistogram] = {None: total}
    histograms.update(channel_hists)
    verdict = apply_thresholds(summary, thresholds, histograms)
    warnings = write_outputs(out_dir, summary, agg.rows, histograms, config)
    print_summary(summary, out_dir, console, warnings, verdict)
    return LoadResult(out_dir, summary, agg.rows, failures, interrupted_at is not None,
                      verdict if thresholds else None)


def default_processes() -> int:
    """Half the cores (the target usually shares the machine), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))
