"""The demo picks a healthy rate, says when the machine was saturated, stops in order on
Ctrl-C, and never waits silently or unboundedly after the load."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.harness.calibrate import (
    CALIBRATION_FLOOR,
    Calibration,
    choose_rate,
    saturation_lines,
    step_problem,
)
from loadtests.harness.demo import WORKDIR_LOCK
from loadtests.harness.loadgen import LoadStats
from switch.dirlock import claim_dir, release_dir

ROOT = Path(__file__).resolve().parents[1]
PAYSWITCH = [sys.executable, "-m", "switch.cli.main"]


def stats(replies: int = 1000, latency_ms: float = 5.0, **errors: int) -> LoadStats:
    s = LoadStats(sent=replies + sum(errors.values()), replies=replies)
    s.by_status["approved"] = replies
    s.errors.update(errors)
    for _ in range(replies):
        s.histogram.record_value(int(latency_ms * 1000))
    return s


def test_a_calibration_step_is_unhealthy_when_shed_slow_or_failing() -> None:
    assert step_problem(stats()) is None
    assert step_problem(stats(overloaded=3)) == "3 shed as overloaded"
    assert step_problem(stats(latency_ms=80)) == "p99 80 ms"
    failing = stats()
    failing.by_status["failed"] = 100
    assert step_problem(failing) == "100 failed or unknown"


def test_the_rate_is_half_the_highest_healthy_step() -> None:
    assert choose_rate([(250, None), (500, None), (1000, "p99 67 ms")]) == 250
    assert choose_rate([(250, None), (500, None), (1000, None)]) == 500
    assert choose_rate([(250, "p99 90 ms")]) == CALIBRATION_FLOOR
    explained = Calibration(250, [(250, None), (500, None), (1000, "p99 67 ms")], {})
    text = explained.explain(2)
    assert text.startswith("250/s = 50% of 500/s, the highest rate this machine (2 cores)")
    assert "1000/s was not (p99 67 ms)" in text
    assert Calibration(100, [], {}).explain(2) == "100/s (calibration interrupted)"
    assert Calibration(100, [(250, "p99 90 ms")], {}).explain(2).startswith(
        "100/s: even 250/s was unhealthy (p99 90 ms)")


def test_saturation_is_named_with_what_to_change() -> None:
    assert saturation_lines(stats(), {}, 500, True, 2) == []
    lines = saturation_lines(stats(overloaded=6239), {"timeouts": 12.0, "breaker_opens": 2.0},
                             2000, False, 2)
    assert lines[0].startswith("SATURATED: with no fault injected, 6239 payments shed as "
                               "overloaded, 12 network requests timed out, breakers opened 2")
    assert "did not keep up with 2000/s" in lines[0]
    assert "omit --rate" in lines[1] and "--rate 1000" in lines[1]
    calibrated = saturation_lines(stats(overloaded=1), {}, 500, True, 2)
    assert "got busier after calibration" in calibrated[1]


def test_ctrl_c_stops_the_demo_in_order(tmp_path: Path) -> None:
    """SIGINT mid-load: load stops, the switch drains and flushes, the audit and the
    partial summary are printed with the work dir, and the exit code is 130."""
    proc = subprocess.Popen(
        [*PAYSWITCH, "demo", "--duration", "60", "--rate", "200", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60  # wall clock: waiting on another process
        while not (tmp_path / "ready.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "Aborted" not in out + err and "Traceback" not in err
    assert re.search(r"^interrupted: load stopped after [\d.]+ s; draining", out, re.M), out
    assert re.search(r"^switch stopped: journal flushed: \d+ records", out, re.M), out
    assert re.search(r"^lost: 0$", out, re.M) and re.search(r"^duplicates: 0$", out, re.M)
    assert re.search(r"^reconciliation clean", out, re.M), out
    assert f"interrupted; work dir: {tmp_path}" in out
    accepted = int(re.search(r"^accepted: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert 0 < accepted < 200 * 30


def test_standin_demo_says_what_it_waits_for_and_does_not_hang(tmp_path: Path) -> None:
    started = time.monotonic()  # wall clock: the whole command
    proc = subprocess.run(
        [*PAYSWITCH, "demo", "--networks", "standin", "--duration", "3", "--rate", "300",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    took = time.monotonic() - started  # wall clock
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Before: 30 s of silence waiting for advices the in-process networks never take.
    assert took < 25, took
    for line in proc.stdout.splitlines():
        if line.startswith("waiting for"):  # said once, naming what and for how long
            assert re.search(r"unknown payments|advices", line) and "at most" in line, line


def test_simulators_start_when_their_usual_admin_port_is_taken_after_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run grabs the port between our look and the simulators' bind: they start
    on a free one instead of failing the demo."""
    import socket

    from loadtests.harness import processes as demo

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(demo, "CHANNELS_ADMIN_PORT", port)
        monkeypatch.setattr(demo, "_port_free", lambda p: True)  # it looked free
        proc, ready = demo.start_channels(tmp_path)
        try:
            assert ready["admin_port"] not in (0, port)
            assert "address already in use" in (tmp_path / "channels.log").read_text()
        finally:
            demo.stop_switch(proc)


def test_a_demo_refuses_a_work_dir_another_demo_holds_and_clears_nothing(
        tmp_path: Path) -> None:
    """The demo clears the journal and settlement files of its work dir at start: given a
    work dir a running demo holds, it must refuse (exit 2, one line naming the holder)
    before deleting anything, and take the dir once the holder is gone."""
    journal = tmp_path / "journal.db"
    journal.write_bytes(b"the running demo's journal")
    (tmp_path / "settlement").mkdir()
    (tmp_path / "settlement" / "card-0001.clr").write_text("its files")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from switch.dirlock import claim_dir; "
         f"claim_dir(Path(sys.argv[1]), {WORKDIR_LOCK!r}); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        proc = subprocess.run(
            [*PAYSWITCH, "demo", "--duration", "1", "--rate", "50", "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.splitlines() == [
            f"Error: --workdir {tmp_path}: in use by another demo (pid {holder.pid}); give "
            "each demo its own work dir"], proc.stderr
        assert journal.read_bytes() == b"the running demo's journal"
        assert (tmp_path / "settlement" / "card-0001.clr").read_text() == "its files"
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    fd = claim_dir(tmp_path, WORKDIR_LOCK)
    release_dir(fd)


def test_a_second_demo_in_the_same_work_dir_reconciles_its_own_run(tmp_path: Path) -> None:
    """The simulators continue the cycle numbers of the settlement files they find; the
    demo starts a fresh journal, so it must start fresh settlement files too."""
    for run in range(2):
        proc = subprocess.run(
            [*PAYSWITCH, "demo", "--duration", "2", "--rate", "100", "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, (run, proc.stdout + proc.stderr)
        assert "reconciliation clean" in proc.stdout, (run, proc.stdout)
