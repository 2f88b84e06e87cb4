"""ISO 8583 through HAProxy (TCP, `balance source`): an acquirer's connections stick to
one worker, so its payments, repeats included, are booked there once (docs/cluster.md,
"affinity by connection")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtests.harness.clusterproc import (
    audit_cluster,
    free_port,
    start_cluster,
    start_haproxy_for,
    stop_cluster,
    stop_haproxy,
)
from switch.journal import read as read_journal
from tests.cluster.test_cluster import CONFIG


def test_an_acquirer_sticks_to_one_worker(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db")
                      + "[iso8583]\nenabled = true\nport = 0\n")
    running = start_cluster(config, tmp_path / "cluster", 3)
    front, iso = free_port(), free_port()
    haproxy = start_haproxy_for(running, front,
                            iso8583_port=iso)
    out = tmp_path / "run"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "switch.cli", "load", "--protocol", "iso8583", "--target",
             f"127.0.0.1:{iso}", "--rate", "150", "--duration", "2", "--processes", "1",
             "--connections", "4", "--out", str(out)],
            capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        stop_haproxy(haproxy)
        assert stop_cluster(running) == 0
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert totals["replies"] == totals["sent"] == 300, totals
    assert totals["errors"] == totals["planted_errors"], totals
    # One acquirer address: all four connections went to one worker, which booked all.
    booked = [len(read_journal(j).by_key()) for j in running.layout.journals]
    assert sorted(booked)[:2] == [0, 0] and max(booked) >= 250, booked
    audit = audit_cluster(running.layout, {})
    assert audit.duplicates_within == 0 and audit.duplicates_across == 0
