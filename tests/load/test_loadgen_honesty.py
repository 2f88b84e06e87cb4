"""The open-loop generator's numbers stay honest when the target misbehaves.

A tiny target speaking the switch's msgpack wire (below) can answer at once, never answer
one request in N, or stop reading. Against it: a target that stops reading cannot hang the
run and its stalled seconds are flagged behind schedule; requests never answered are in
the time series and the latency tail; the achieved rate is not diluted by the drain wait;
and ``--share I/M`` partitions the schedule whatever each machine's process count.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import msgspec
import pytest
from rich.console import Console

from loadtests.harness.loadgen import Interval, LoadStats, OpenLoopGenerator
from loadtests.harness.loadrun import LoadPlan, global_index, run_load
from loadtests.harness.runoutputs import is_behind
from loadtests.harness.shapes import FixedRate, Schedule
from loadtests.harness.workload import SharesSpec, SpecWorkload, WorkloadSpec
from switch.model import Result, Status
from switch.protocols.wire import FrameDecoder, Reply, ReplyEncoder

# --- a controllable target --------------------------------------------------------------------


class _Id(msgspec.Struct):
    id: int
    op: str = ""


_decode_id = msgspec.msgpack.Decoder(_Id).decode
_RESULT = Result("P0-0", Status.APPROVED, "00", "PROBE", "probe")
#: Payments only: no planted errors, no malformed frames, so every request is answerable.
_CLEAN = WorkloadSpec(shares=SharesSpec(duplicate=0.0, malformed=0.0, invalid=0.0,
                                        over_limit=0.0, blocklisted=0.0))


def _handler(mode: str, every: int) -> Callable[[anyio.abc.ByteStream], Awaitable[None]]:
    """``echo``: answer every payment; ``drop``: never answer each ``every``-th payment;
    ``stall``: answer the shard-map question, then stop reading at the first payment."""
    count = 0

    async def handle(stream: anyio.abc.ByteStream) -> None:
        nonlocal count
        decoder = FrameDecoder()
        out = ReplyEncoder()
        try:
            while True:
                for payload in decoder.feed(await stream.receive(65536)):
                    msg = _decode_id(payload)
                    if msg.op != "pay":
                        out.add(Reply(msg.id, _RESULT))  # not a shard map: a standalone target
                        continue
                    if mode == "stall":
                        await anyio.sleep(3600)
                    count += 1
                    if mode == "drop" and count % every == 0:
                        continue
                    out.add(Reply(msg.id, _RESULT))
                if len(out):
                    await stream.send(out.take())
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            pass

    return handle


@asynccontextmanager
async def _serve(mode: str, every: int = 100) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _handler(mode, every))
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


def _generator(duration_s: float, rate: float, drain_s: float, **kw: object) -> OpenLoopGenerator:
    workload = SpecWorkload(_CLEAN, 1, key_prefix="h-")
    return OpenLoopGenerator(workload.next_item, duration_s=duration_s, shape=FixedRate(rate),
                             connections=1, drain_timeout_s=drain_s, track_acknowledged=False,
                             **kw)  # type: ignore[arg-type]


def _run(gen: OpenLoopGenerator, mode: str, limit_s: float) -> tuple[bool, float]:
    """Run ``gen`` against a target in ``mode``; (finished within ``limit_s``, seconds)."""

    async def main() -> bool:
        async with _serve(mode) as port:
            with anyio.move_on_after(limit_s):
                await gen.run("127.0.0.1", port)
                return True
        return False

    t0 = time.perf_counter()
    finished = anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return finished, time.perf_counter() - t0


# --- 1. a target that stops reading ---------------------------------------------------------


def test_a_target_that_stops_reading_cannot_hang_the_run() -> None:
    # 20k/s fills the socket buffers within the first second; then send() blocks.
    gen = _generator(1.5, 20_000, 0.5)
    finished, took = _run(gen, "stall", 8.0)
    assert finished and took < 4.0, f"run still blocked after {took:.1f} s (bound 1.5 + 0.5 s)"
    assert gen.stats.unanswered == gen.stats.sent > 0


def test_a_stop_request_ends_a_blocked_sender_and_its_seconds_are_behind() -> None:
    intervals: list[Interval] = []
    t0 = time.perf_counter()
    # Three seconds of load: ~15,000 frames fill the socket buffers (4 MB sent, 128 kB
    # received) within the first second here, but a loaded box took two (CI sent 11,655
    # in the first), and the check below needs one second with nothing sent.
    stop_after_s = 3.2

    def should_stop() -> bool:  # as Ctrl-C does, in the middle of a 30 s run
        return time.perf_counter() - t0 > stop_after_s

    gen = _generator(30.0, 20_000, 0.5, on_interval=intervals.append, should_stop=should_stop)
    finished, took = _run(gen, "stall", 10.0)
    assert finished and took < stop_after_s + 2.0, f"stop ignored: {took:.1f} s"
    assert gen.stopped_early
    # Every second of the load (before the stop) saw the sender stuck: behind schedule,
    # although nothing was sent in it and so no request measured a lag.
    loading = [i for i in intervals if i.start_s < stop_after_s - 0.3]
    assert len(loading) >= 2 and any(i.sent == 0 for i in loading)
    assert all(is_behind(i.lagged, i.sent, i.max_lag_s) for i in loading), [
        (i.index, i.sent, round(i.max_lag_s, 3)) for i in loading]
    assert gen.stats.max_lag_s > 1.0


# --- 2 and 3. unanswered requests, and the achieved rate ---------------------------------------


def test_unanswered_requests_are_errors_of_their_second_and_in_the_tail() -> None:
    intervals: list[Interval] = []
    gen = _generator(1.0, 1000, 1.0, on_interval=intervals.append)
    finished, _ = _run(gen, "drop", 10.0)
    stats: LoadStats = gen.stats
    assert finished and stats.unanswered == 10 and stats.replies == 990
    assert sum(i.errors.get("no_reply", 0) for i in intervals) == 10
    assert intervals[-1].errors.get("no_reply") == 10  # known when the drain ends
    # 1% waited the whole drain (>= 1 s) and got nothing: p99.9 cannot be a local echo's.
    assert stats.histogram.get_total_count() == 1000
    assert stats.percentile_ms(99.9) >= 1000.0
    assert 0.9 < stats.last_reply_s < 1.1


def _run_in_thread(mode: str) -> tuple[int, Callable[[], None]]:
    """The target in a thread of its own (run_load's generators are other processes)."""
    port: list[int] = []
    ready, done = threading.Event(), threading.Event()

    async def main() -> None:
        async with _serve(mode) as p:
            port.append(p)
            ready.set()
            while not done.is_set():
                await anyio.sleep(0.05)

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        done.set()
        thread.join(10)

    return port[0], stop


@pytest.fixture(scope="module")
def dropping_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    port, stop = _run_in_thread("drop")
    out = tmp_path_factory.mktemp("drop-run")
    try:
        plan = LoadPlan(host="127.0.0.1", port=port, shape=FixedRate(1000), duration_s=2.0,
                        workload=_CLEAN, seed=1, processes=1, connections=2,
                        drain_timeout_s=2.0)
        run_load(plan, out, Console(file=open(out / "console.txt", "w"), width=200))  # noqa: SIM115
    finally:
        stop()
    return out


def test_run_outputs_count_unanswered_requests_in_every_second_and_the_tail(
    dropping_run: Path,
) -> None:
    summary = json.loads((dropping_run / "summary.json").read_text())
    totals = summary["totals"]
    assert totals["errors"].get("no_reply") == 20 and totals["unanswered"] == 20
    with (dropping_run / "timeseries.csv").open() as f:
        series_errors = sum(int(row["errors"]) for row in csv.DictReader(f))
    assert series_errors == 20, "no_reply in summary.json only, not in the time series"
    assert summary["latency_ms"]["p99.9"] >= 2000, summary["latency_ms"]
    assert summary["latency_ms"]["count"] == totals["replies"] + 20


def test_achieved_rate_excludes_the_drain_wait(dropping_run: Path) -> None:
    summary = json.loads((dropping_run / "summary.json").read_text())
    totals = summary["totals"]
    assert totals["replies"] == 1980
    assert summary["run"]["elapsed_s"] > 3.5  # the drain waited for the 20 that never came
    assert totals["achieved_rate"] == pytest.approx(990, rel=0.05), totals["achieved_rate"]


# --- 4. --share across machines of different sizes ---------------------------------------------


def test_share_partitions_the_schedule_whatever_each_machines_process_count() -> None:
    shape = FixedRate(1000)
    sent: Counter[int] = Counter()
    machines = ((0, 1), (1, 2), (2, 3))  # e.g. a 2-, a 4- and a 6-core machine
    for machine, processes in machines:
        plan = LoadPlan(host="h", port=1, shape=shape, duration_s=1.0, workload=WorkloadSpec(),
                        seed=1, processes=processes, share_index=machine,
                        share_count=len(machines))
        for p in range(processes):
            schedule = Schedule(shape, 1.0, stride=plan.processes * plan.share_count,
                                offset=global_index(plan, p))
            while schedule.take() is not None:
                g = schedule.next_g - schedule.stride
                assert g % len(machines) == machine  # machine I owns g = I (mod M)
                sent[g] += 1
    assert sorted(sent) == list(range(1000)) and set(sent.values()) == {1}
