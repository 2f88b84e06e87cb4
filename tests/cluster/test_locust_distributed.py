"""Locust distributed, in subprocesses only (never imported here): one master and two
workers on loopback drive loadtests/locust_http.py through HAProxy into a 2-worker
cluster. Locust spreads the users; HAProxy spreads the keys by shard."""

from __future__ import annotations

import csv
import os
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
from tests.load.test_locust import locust_binary

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locust_http.py"


def test_locust_master_and_two_workers_through_haproxy(tmp_path: Path) -> None:
    assert "locust" not in sys.modules and "gevent" not in sys.modules
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 2)
    front = free_port()
    haproxy = start_haproxy_for(running, front)
    master_port = free_port()
    prefix = tmp_path / "locust"
    env = dict(os.environ, PAYSWITCH_SEED="5")
    workers: list[subprocess.Popen[str]] = []
    try:
        master = subprocess.Popen(
            [str(locust_binary()), "-f", str(LOCUSTFILE), "--master", "--headless",
             "--expect-workers", "2", "--master-bind-host", "127.0.0.1",
             "--master-bind-port", str(master_port), "-u", "16", "-r", "16", "-t", "6s",
             "--csv", str(prefix), "--host", f"http://127.0.0.1:{front}", "--only-summary",
             "--loglevel", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        workers = [subprocess.Popen(
            [str(locust_binary()), "-f", str(LOCUSTFILE), "--worker", "--master-host",
             "127.0.0.1", "--master-port", str(master_port), "--loglevel", "WARNING"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for _ in range(2)]
        out, _ = master.communicate(timeout=180)
        assert master.returncode == 0, out[-3000:]
        for worker in workers:
            worker_out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0, worker_out[-3000:]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_haproxy(haproxy)
        assert stop_cluster(running) == 0
    with Path(f"{prefix}_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    with Path(f"{prefix}_stats_history.csv").open() as f:
        users = {int(r["User Count"]) for r in csv.DictReader(f)}
    assert 16 in users  # the master ran all 16 users, spread over its two workers
    audit = audit_cluster(running.layout, {})
    assert audit.duplicates_within == 0 and audit.duplicates_across == 0
    assert audit.misplaced == 0 and audit.finals > 100
    # Both shards served: HAProxy routed by key, not everything to one worker.
    assert all(read_journal(j).by_key() for j in running.layout.journals)
