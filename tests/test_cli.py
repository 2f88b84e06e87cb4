"""The CLI as a user runs it: help texts, and a short demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DemoRun

PAYSWITCH = [sys.executable, "-m", "switch.cli.main"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PAYSWITCH, *args], capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_subcommands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("serve", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_subcommand_help_explains_options(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0
    assert "--" in proc.stdout and len(proc.stdout.splitlines()) > 6


def test_short_demo_reports_nothing_lost_or_duplicated(short_demo: DemoRun) -> None:
    proc, tmp_path = short_demo.proc, short_demo.workdir
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^lost: 0$", out, re.M), out
    assert re.search(r"^duplicates: 0$", out, re.M), out
    accepted = int(re.search(r"^accepted: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    approved = int(re.search(r"^approved: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert 1300 < accepted <= 1500 and 0 < approved <= accepted
    assert re.search(r"^latency: p50 [\d.]+ ms, p99 [\d.]+ ms, p99.9 [\d.]+ ms", out, re.M)
    assert (tmp_path / "journal.db").exists()


@pytest.mark.parametrize("command", [["fault"], ["channels", "serve"], ["top"]])
def test_more_help(command: list[str]) -> None:
    proc = run(*command, "--help")
    assert proc.returncode == 0 and "--" in proc.stdout


def test_fault_inject_list_clear_against_running_simulators(tmp_path: Path) -> None:
    from loadtests.harness.processes import start_channels, stop_switch

    proc, ready = start_channels(tmp_path)
    admin = f"http://127.0.0.1:{ready['admin_port']}"
    try:
        injected = run("fault", "card-primary", "blackhole", "--for", "30s", "--admin", admin)
        assert injected.returncode == 0, injected.stderr
        listed = run("fault", "list", "--admin", admin)
        assert listed.stdout.splitlines()[0].split() == [
            "ID", "ENDPOINT", "KIND", "DETAIL", "MATCH", "REMAINING"]
        assert listed.stdout.splitlines()[1].split()[:3] == ["1", "card-primary", "blackhole"]
        as_json = run("fault", "list", "--json", "--admin", admin)
        assert '"kind": "blackhole"' in as_json.stdout
        bad = run("fault", "card-primary", "error_burst", "--rate", "2", "--admin", admin)
        assert bad.returncode != 0 and "rate" in bad.stderr
        unknown = run("fault", "no-such-net", "down", "--admin", admin)
        assert unknown.returncode != 0 and "no network named 'no-such-net'" in unknown.stderr
        cleared = run("fault", "clear", "card-primary", "--admin", admin)
        assert cleared.returncode == 0
        assert cleared.stdout.startswith("cleared 1 fault(s) on card-primary")
        assert run("fault", "list", "--admin", admin).stdout.strip() == "no active faults"
    finally:
        stop_switch(proc)
