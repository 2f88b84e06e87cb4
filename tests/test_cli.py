"""The CLI as a user runs it: help texts, and a short demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAYSWITCH = [sys.executable, "-m", "switch.cli"]


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


def test_short_demo_reports_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    proc = run("demo", "--duration", "3", "--rate", "500", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^lost: 0$", out, re.M), out
    assert re.search(r"^duplicates: 0$", out, re.M), out
    accepted = int(re.search(r"^accepted: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    approved = int(re.search(r"^approved: (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert 1300 < accepted <= 1500 and 0 < approved <= accepted
    assert re.search(r"^latency: p50 [\d.]+ ms, p99 [\d.]+ ms, p99.9 [\d.]+ ms", out, re.M)
    assert (tmp_path / "journal.db").exists()
