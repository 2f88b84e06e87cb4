"""Review of the load tools: what a newcomer found wrong, each reproduced.

1. `payswitch load` against a cluster with one worker down died at connect (`OSError: All
   connection attempts failed`): the generator opened every shard owner's connections and
   one refused. It now loads the live shards, counts the down shard's payments as
   `unavailable`, and connects again when the worker is back.
2. Over ISO 8583 the workload's planted duplicates were miscounted: a host refusing the
   repeat (94) gave `duplicate_transmission` errors not counted as planted, and a host
   replaying its stored answer (the switch) gave a second payment, not a replay.
3. The stand-in demo called the stand-in networks' own error rate saturation, and
   suggested a higher rate than the one it blamed.

Never import locust here (it monkey-patches the process with gevent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import msgspec
import pytest

import loadtests.harness.calibrate as calibrate
import loadtests.harness.demo as demo
from loadtests.harness.clusterproc import free_port, start_cluster, stop_cluster
from loadtests.harness.iso8583_client import Iso8583Wire
from loadtests.harness.loadgen import Item, LoadStats, OpenLoopGenerator
from loadtests.harness.wires import Iso8583Options
from loadtests.harness.workload import SpecWorkload, WorkloadSpec
from switch.journal import read as read_journal
from switch.model import Result, Status
from switch.protocols.framing import FrameDecoder
from switch.protocols.iso8583 import FrameDecoder as IsoFrameDecoder
from switch.protocols.iso8583 import frame as iso_frame
from switch.protocols.iso8583_acquirer import AcquirerCodec, payment_response, refusal_response
from switch.protocols.shardmap import join_address, shard_of
from switch.protocols.wire import (
    Pay,
    Reply,
    ReplyEncoder,
    ShardMapReply,
    Shards,
    decode_request,
)
from tests.cluster.test_cluster import CONFIG

ROOT = Path(__file__).resolve().parents[2]


def _workload(prefix: str, **shares: float) -> SpecWorkload:
    spec = WorkloadSpec()
    spec = msgspec.structs.replace(spec, shares=msgspec.structs.replace(spec.shares, **shares))
    return SpecWorkload(spec, 5, key_prefix=prefix)


# --- 1. a cluster with one worker down --------------------------------------------------------


class _FakeWorker:
    """A msgpack worker of a 2-shard cluster: answers the map and approves every payment,
    counting the keys it was sent."""

    def __init__(self, shard: int, addresses: list[str]) -> None:
        self.shard = shard
        self.addresses = addresses
        self.keys: list[str] = []

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder(1 << 20)
        async with stream:
            try:
                while True:
                    data = await stream.receive(65536)
                    out = ReplyEncoder()
                    for payload in decoder.feed(data):
                        request = decode_request(payload)
                        if isinstance(request, Shards):
                            out.add(ShardMapReply(request.id, self.shard, self.addresses))
                        elif isinstance(request, Pay):
                            self.keys.append(request.payment.idempotency_key)
                            out.add(Reply(request.id, Result(
                                f"P{self.shard}-{len(self.keys)}", Status.APPROVED, "00")))
                    if len(out):
                        await stream.send(out.take())
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass


def test_a_shard_down_is_unavailable_and_the_others_keep_loading() -> None:
    """In process, deterministic: shard 1 refuses connections for the first second, then
    listens. The generator starts all the same, shard 0 is loaded throughout, shard 1's
    payments are `unavailable` while it is down and answered once it is back."""
    ports = [free_port(), free_port()]
    addresses = [join_address("127.0.0.1", p) for p in ports]
    workers = [_FakeWorker(i, addresses) for i in range(2)]
    generator = OpenLoopGenerator(
        _workload("down-", duplicate=0.0, malformed=0.0, invalid=0.0).next_item,
        rate=200, duration_s=4.0, connections=2, drain_timeout_s=3.0)

    async def main() -> LoadStats:
        async with anyio.create_task_group() as tg:
            first = await anyio.create_tcp_listener(local_host="127.0.0.1",
                                                    local_port=ports[0])
            tg.start_soon(first.serve, workers[0].handle)

            async def back_later() -> None:
                await anyio.sleep(1.5)
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1",
                                                           local_port=ports[1])
                tg.start_soon(listener.serve, workers[1].handle)

            tg.start_soon(back_later)
            stats = await generator.run("127.0.0.1", ports[0])
            tg.cancel_scope.cancel()
        return stats

    stats = anyio.run(main, backend="asyncio")
    unavailable = stats.errors["unavailable"]
    served = [len(w.keys) for w in workers]
    assert generator.shard_map.addresses == addresses
    # While shard 1 was down (~1.5 s of 4 s at 100/s for it), its payments were unavailable...
    assert 50 <= unavailable <= 250, (unavailable, served, stats.errors)
    # ...and after it came back the generator connected again and loaded it.
    assert served[1] >= 100, (served, stats.errors)
    assert served[0] >= 350, served
    # Every payment was either answered by its owner or counted unavailable: none lost.
    assert stats.sent == 800 == stats.replies + unavailable, (stats.sent, stats.replies)
    assert stats.connection_lost == 0 and stats.unanswered == 0
    assert set(stats.errors) == {"unavailable"}, stats.errors
    for shard, worker in enumerate(workers):
        assert all(shard_of(k, 2) == shard for k in worker.keys)
    # Nothing went on the wire for them: the latency histogram holds the answered ones.
    assert stats.histogram.get_total_count() == stats.replies


def test_a_worker_killed_mid_run_is_loaded_again_once_it_is_back() -> None:
    """Shard 1's worker goes away 1 s into the run (its connections close) and is back at
    2 s: its requests in flight are `connection_lost`, those due meanwhile `unavailable`,
    and after it is back the generator connects again and loads it."""
    ports = [free_port(), free_port()]
    addresses = [join_address("127.0.0.1", p) for p in ports]
    workers = [_FakeWorker(i, addresses) for i in range(2)]
    generator = OpenLoopGenerator(
        _workload("flap-", duplicate=0.0, malformed=0.0, invalid=0.0).next_item,
        rate=200, duration_s=4.0, connections=2, drain_timeout_s=3.0)
    served_before: list[int] = []

    async def main() -> LoadStats:
        async with anyio.create_task_group() as tg:
            for port, worker in zip(ports, workers, strict=True):
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1",
                                                           local_port=port)
                if worker.shard == 0:
                    tg.start_soon(listener.serve, worker.handle)
                else:
                    first_life = listener

            async def die_and_come_back() -> None:
                with anyio.move_on_after(1.0):
                    async with first_life:
                        await first_life.serve(workers[1].handle)
                served_before.append(len(workers[1].keys))
                await anyio.sleep(1.0)
                again = await anyio.create_tcp_listener(local_host="127.0.0.1",
                                                        local_port=ports[1])
                tg.start_soon(again.serve, workers[1].handle)

            tg.start_soon(die_and_come_back)
            stats = await generator.run("127.0.0.1", ports[0])
            tg.cancel_scope.cancel()
        return stats

    stats = anyio.run(main, backend="asyncio")
    unavailable = stats.errors["unavailable"]
    assert served_before and served_before[0] >= 50, served_before
    assert len(workers[1].keys) - served_before[0] >= 50, (served_before, len(workers[1].keys))
    assert unavailable >= 20, stats.errors
    assert stats.sent == 800 == stats.replies + unavailable + stats.connection_lost, (
        stats.sent, stats.replies, unavailable, stats.connection_lost)
    assert stats.unanswered == 0 and set(stats.errors) == {"unavailable"}, stats.errors


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def test_payswitch_load_survives_a_killed_worker_of_a_real_cluster(tmp_path: Path) -> None:
    """The newcomer's report: 2 workers, kill -9 worker 1 (restart delay 60 s), then
    `payswitch load` at worker 0. It exited 1 (`OSError: All connection attempts
    failed`); now it loads shard 0 and counts shard 1's payments as `unavailable`."""
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 2, restart_delay_s=60.0)
    w0, w1 = running.layout.workers
    out = tmp_path / "run"
    try:
        os.kill(running.worker_pid(1), signal.SIGKILL)
        deadline = time.monotonic() + 10  # wall clock: another process dying
        while not _refused(w1.host, w1.port):
            assert time.monotonic() < deadline, "killed worker still listens"
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-m", "switch.cli", "load", "--host", w0.host, "--port",
             str(w0.port), "--rate", "100", "--duration", "2", "--processes", "1",
             "--connections", "2", "--run-id", "RDOWN", "--out", str(out)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        stop_cluster(running)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    totals = json.loads((out / "summary.json").read_text())["totals"]
    errors = Counter(totals["errors"])
    errors.subtract(totals["planted_errors"])
    unavailable = errors.pop("unavailable", 0)
    assert +errors == Counter(), totals  # nothing else went wrong
    assert totals["sent"] == totals["offered"] == 200, totals
    # Shard 1's share of the keys (about half) is unavailable; shard 0 answered the rest.
    assert 50 <= unavailable <= 150, totals
    assert totals["replies"] + unavailable == 200, totals
    assert "unavailable" in done.stdout
    booked = read_journal(w0.journal).by_key()
    assert sum(k.startswith("RDOWN") for k in booked) >= 50


# --- 2. planted duplicates over ISO 8583 ------------------------------------------------------


class _IsoHost:
    """An ISO 8583 host. ``refuse``: a repeat of a key (DE11 + DE41 + DE7) is answered 94
    at once, as a card network's duplicate check does (channels/card.py), while approvals
    take ``delay_s``; ``replay``: a repeat gets the first answer again, as the switch's
    idempotency store gives it."""

    def __init__(self, mode: Literal["refuse", "replay"], delay_s: float = 0.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.codec = AcquirerCodec()
        self.seen: set[tuple[str, str, str]] = set()
        self.repeats = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        decoder = IsoFrameDecoder(65535)
        lock = anyio.Lock()  # one writer at a time on the connection
        async with stream, anyio.create_task_group() as tg:
            try:
                while True:
                    data = await stream.receive(65536)
                    for payload in decoder.feed(data):
                        msg = self.codec.decode(payload)
                        key = (msg.fields[11], msg.fields[41], msg.fields[7])
                        if key in self.seen:
                            self.repeats += 1
                            if self.mode == "refuse":
                                answer = refusal_response(msg, "idempotency_conflict")
                                async with lock:
                                    await stream.send(iso_frame(self.codec.encode(answer)))
                                continue
                        self.seen.add(key)
                        answer = payment_response(msg, Result("P", Status.APPROVED, "00",
                                                              "AUTH01"))
                        tg.start_soon(self._later, stream, lock,
                                      iso_frame(self.codec.encode(answer)))
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            tg.cancel_scope.cancel()

    async def _later(self, stream: anyio.abc.SocketStream, lock: anyio.Lock,
                     data: bytes) -> None:
        await anyio.sleep(self.delay_s)
        async with lock:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(data)


def _iso_run(host: _IsoHost) -> tuple[LoadStats, Counter[str]]:
    workload = _workload("iso-", duplicate=0.2, malformed=0.0, invalid=0.0, over_limit=0.0,
                         blocklisted=0.0)
    kinds: Counter[str] = Counter()

    def source() -> tuple[Item, str]:
        item, kind = workload.next_item("card")
        kinds[kind] += 1
        return item, kind

    port = free_port()
    generator = OpenLoopGenerator(source, rate=200, duration_s=2.0, connections=4,
                                  drain_timeout_s=3.0, wire=Iso8583Wire(Iso8583Options()))

    async def main() -> LoadStats:
        async with anyio.create_task_group() as tg:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
            tg.start_soon(listener.serve, host.handle)
            stats = await generator.run("127.0.0.1", port)
            tg.cancel_scope.cancel()
        return stats

    return anyio.run(main, backend="asyncio"), kinds


def test_iso8583_duplicates_refused_94_are_counted_as_planted() -> None:
    # Approvals take 300 ms, the 94 comes at once: a repeat sent while its original is in
    # flight is answered first, and must not be taken for the original's answer.
    host = _IsoHost("refuse", delay_s=0.3)
    stats, kinds = _iso_run(host)
    duplicates = kinds["duplicate"]
    assert duplicates >= 40 and host.repeats == duplicates, (kinds, host.repeats)
    assert stats.planted_sent["duplicate"] == duplicates
    assert stats.errors == Counter({"duplicate_transmission": duplicates}), stats.errors
    assert stats.planted_errors == Counter({"duplicate_transmission": duplicates})
    # Each original was approved once: a 94 was never matched to an original.
    assert stats.by_status == Counter({"approved": kinds["new"]}), (stats.by_status, kinds)
    assert stats.replies == stats.sent == 400 and stats.unanswered == 0


def test_iso8583_duplicates_answered_from_the_store_are_replays() -> None:
    host = _IsoHost("replay")
    stats, kinds = _iso_run(host)
    duplicates = kinds["duplicate"]
    assert duplicates >= 40 and host.repeats == duplicates, (kinds, host.repeats)
    # As over msgpack: a replay, not a second payment, and not an error.
    assert stats.replays == duplicates, (stats.replays, kinds)
    assert stats.by_status == Counter({"approved": kinds["new"]}), (stats.by_status, kinds)
    assert not stats.errors and not stats.planted_errors


def test_a_reply_on_a_lost_connection_is_not_matched_to_its_forgotten_request() -> None:
    wire = Iso8583Wire(Iso8583Options())
    workload = _workload("fg-", duplicate=0.0, invalid=0.0, malformed=0.0)
    request, _ = workload.next_item("card")
    codec = AcquirerCodec()
    sent = codec.decode(wire.encode(7, request, conn=1)[2:])
    wire.forget(1)  # the generator counted request 7 lost with its connection
    reply = iso_frame(codec.encode(payment_response(sent, Result("P", Status.APPROVED, "00"))))
    assert [a.rid for a in wire.feed(0, reply)] == [None]


# --- 3. the stand-in demo's saturation judgement ----------------------------------------------


def _demo_stats(approved: int, failed: int) -> LoadStats:
    stats = LoadStats(sent=approved + failed, replies=approved + failed)
    stats.by_status.update(approved=approved, failed=failed)
    for _ in range(approved + failed):
        stats.histogram.record_value(12_000)
    return stats


def test_failures_the_stand_in_networks_make_on_purpose_are_not_saturation() -> None:
    # The newcomer's run: 178 accepted at 30/s, 3 failed (1.7%) by the stand-ins' 1%.
    stats = _demo_stats(175, 3)
    lines = calibrate.saturation_lines(stats, {}, 30, False, 2, networks="standin", error_rate=0.01)
    assert not any(line.startswith("SATURATED") for line in lines), lines
    assert lines == ["3 failed or unknown (1.7%): within what the stand-in networks fail on "
                     "purpose (error_rate 1.0%), not a sign of saturation."]
    assert calibrate.saturation_lines(_demo_stats(178, 0), {}, 30, False, 2, networks="standin",
                            error_rate=0.01) == []


def test_failures_beyond_the_networks_error_rate_are_still_saturation() -> None:
    stats = _demo_stats(900, 100)  # 10%: far beyond a 1% error rate
    lines = calibrate.saturation_lines(stats, {}, 30, False, 2, networks="standin", error_rate=0.01)
    assert lines[0].startswith("SATURATED: with no fault injected, 100 failed or unknown "
                               "(10.0%, more than the 1.0% the networks fail on purpose)")
    # No simulators in this mode: the machine is shared by the switch and the generator.
    assert "simulators" not in lines[0] and "stand-in networks" in lines[0]
    assert calibrate.expected_failures(178, 0.01) < 10
    assert calibrate.expected_failures(178, 0.0) == 0


@pytest.mark.parametrize("rate", [1.0, 1.5, 2.0, 30.0, 99.0, 150.0, 2000.0])
@pytest.mark.parametrize("calibrated", [False, True])
def test_saturation_advice_never_names_a_higher_rate(rate: float, calibrated: bool) -> None:
    stats = _demo_stats(1000, 0)
    stats.errors["overloaded"] = 50
    lines = calibrate.saturation_lines(stats, {}, rate, calibrated, 2, networks="standin")
    assert lines[0].startswith("SATURATED")
    advice = lines[1]
    named = [float(w.rstrip(");,")) for w in advice.split("--rate ")[1:]
             for w in [w.split()[0]] if w.rstrip(");,").replace(".", "").isdigit()]
    assert all(r < rate for r in named), (rate, advice)
    # The calibration never picks less than its floor (100/s): not advice for a slow run.
    if rate < 200 and not calibrated:
        assert "omit --rate" not in advice, advice


def test_the_demo_reads_its_networks_error_rates(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    # No networks configured: one stand-in per channel with the default error rate.
    assert demo.networks_error_rate("standin", config, tmp_path / "none.toml") == 0.01
    assert demo.networks_error_rate("sim", config, ROOT / "examples" / "channels.toml") == 0.005


def test_the_stand_in_demo_prints_no_false_saturation(tmp_path: Path) -> None:
    """The newcomer's command, end to end (about 10 s): the stand-ins fail about 1% on
    purpose (3 of 178 with the default seed), and the summary called that saturation."""
    done = subprocess.run(
        [sys.executable, "-m", "switch.cli.main", "demo", "--networks", "standin", "--rate",
         "30", "--duration", "6", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SATURATED" not in done.stdout, done.stdout[-3000:]
    assert "the simulators" not in done.stdout
    failed = int(done.stdout.split("\nfailed: ", 1)[1].split()[0])
    if failed:
        assert "not a sign of saturation" in done.stdout, done.stdout[-3000:]

