"""promtool on everything we ship: the Prometheus config, the rule files, the rules' unit
tests, and the live /metrics of a running switch after some load and of the running network
simulators.

promtool comes from Debian's `prometheus` package (dashboards/install-prometheus.sh, which
`make test` runs first). Without it these tests fail rather than skip: an observability
stack that was never checked is exactly what this suite exists to prevent.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from loadtests.harness.demo import DEMO_CONFIG
from loadtests.harness.loadgen import LoadStats, OpenLoopGenerator
from loadtests.harness.processes import start_channels, start_switch, stop_switch
from loadtests.harness.workload import Workload

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "dashboards" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
INSTALL_HINT = "run dashboards/install-prometheus.sh (installs Debian's prometheus package)"


def require_binary(name: str) -> str:
    """Path of ``name`` (promtool, prometheus); fail the test, not skip, if missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def run_promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@contextmanager
def switch_process(workdir: Path, seed: int = 11) -> Iterator[dict[str, int]]:
    """A real ``payswitch serve`` subprocess (demo configuration, loopback, free ports)."""
    config = workdir / "switch.toml"
    config.write_text(DEMO_CONFIG.format(seed=seed, journal=workdir / "journal.db", admin_port=0))
    proc, endpoints = start_switch(config, workdir / "ready.json")
    try:
        yield endpoints
    finally:
        stop_switch(proc)


def drive_load(port: int, rate: float, duration_s: float, seed: int = 11) -> LoadStats:
    generator = OpenLoopGenerator(
        Workload(seed).next, rate=rate, duration_s=duration_s, connections=2
    )
    return anyio.run(generator.run, "127.0.0.1", port)


def test_rule_files_exist() -> None:
    names = {p.name for p in RULE_FILES}
    assert {"recording.yml", "alerts.yml"} <= names
    assert RULE_TESTS, "no promtool unit tests under dashboards/prometheus/tests"


def test_check_config() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules() -> None:
    result = run_promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests() -> None:
    """Each test file in its own promtool, all at once: the SLO files evaluate two
    simulated hours of rules each (about 6 s of one core), and one promtool walks the
    files one after the other."""
    assert len(RULE_TESTS) >= 4
    promtool = require_binary("promtool")
    procs = [subprocess.Popen([promtool, "test", "rules", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO)
             for path in RULE_TESTS]
    for path, proc in zip(RULE_TESTS, procs, strict=True):
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{path.name}: {output}"
        assert "FAILED" not in output and "SUCCESS" in output, f"{path.name}: {output}"


def test_check_metrics_on_live_output(tmp_path: Path) -> None:
    with switch_process(tmp_path) as endpoints:
        stats = drive_load(endpoints["port"], rate=200, duration_s=1.5)
        assert stats.replies > 0
        response = httpx.get(f"http://127.0.0.1:{endpoints['admin_port']}/metrics", timeout=10)
    response.raise_for_status()
    body = response.content
    assert b"payswitch_payments_total" in body
    # promtool reads the exposition on stdin; any lint finding is printed and fails it.
    result = run_promtool("check", "metrics", stdin=body)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, findings


def test_check_metrics_on_live_simulator_output(tmp_path: Path) -> None:
    """The simulators' admin /metrics (scraped by the payswitch-channels job) lints clean."""
    proc, ready = start_channels(tmp_path)
    try:
        response = httpx.get(f"http://127.0.0.1:{ready['admin_port']}/metrics", timeout=10)
    finally:
        stop_switch(proc)
    response.raise_for_status()
    body = response.content
    for name in ("channels_requests_total", "channels_active_faults", "channels_latency_seconds"):
        assert name.encode() in body, name
    result = run_promtool("check", "metrics", stdin=body)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, findings
