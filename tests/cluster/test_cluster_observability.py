"""A cluster's metrics: Prometheus finds every worker through the file-based service
discovery the supervisor writes at start, and `payswitch top --cluster` adds the workers up
and breaks each one out, a killed one shown DOWN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import free_port, start_cluster, stop_cluster
from switch.protocols.wire import Reply
from tests.cluster.test_cluster import CONFIG
from tests.observability.test_prometheus_e2e import start_prometheus, stop_process
from tests.payments import card_payment

PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: payswitch
    file_sd_configs:
      - files: ["{targets}/*.json"]
        refresh_interval: 1s
"""


async def pay(host: str, port: int, n: int) -> None:
    async with ClusterClient.connect(host, port) as client:
        for i in range(n):
            reply = await client.pay(card_payment(key=f"obs-{i}", payer=f"A{i}"))
            assert isinstance(reply, Reply), reply


def query(port: int, expr: str) -> list[dict[str, object]]:
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    result: list[dict[str, object]] = r.json()["data"]["result"]
    return result


def test_prometheus_discovers_every_worker_and_top_shows_the_cluster(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 3, restart_delay_s=120.0)
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(PROMETHEUS_CONFIG.format(targets=running.run_dir / "targets"))
    prometheus = None
    try:
        prometheus = start_prometheus(prom_config, tmp_path / "tsdb", prom_port,
                                      tmp_path / "prometheus.log")
        w0 = running.layout.workers[0]
        anyio.run(pay, w0.host, w0.port, 60)
        # Prometheus finds the three workers from the file alone, labelled by shard.
        deadline = time.monotonic() + 90  # wall clock: Prometheus scrapes on its own
        up: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                up = query(prom_port, 'up{job="payswitch"} == 1')
            except httpx.HTTPError:
                up = []
            if len(up) == 3:
                break
            time.sleep(0.5)
        shards = sorted(str(s["metric"]["shard"]) for s in up)  # type: ignore[index]
        assert shards == ["0", "1", "2"], up
        instances = {str(s["metric"]["instance"]) for s in up}  # type: ignore[index]
        assert instances == {w.admin_address for w in running.layout.workers}
        # Summed across workers (as the dashboards do), every payment is counted once.
        deadline = time.monotonic() + 60
        total = 0.0
        while time.monotonic() < deadline:
            found = query(prom_port, 'sum(payswitch_payments_total{job="payswitch"})')
            total = float(found[0]["value"][1]) if found else 0.0  # type: ignore[index]
            if total >= 60:
                break
            time.sleep(0.5)
        assert total == 60

        # payswitch top over the cluster: kill worker 2 (restart delay 120 s): DOWN.
        os.kill(running.worker_pid(2), signal.SIGKILL)
        time.sleep(0.5)
        out = subprocess.run(
            [sys.executable, "-m", "switch.cli", "top", "--cluster",
             str(running.run_dir / "layout.json"), "--once", "--interval", "0.5"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "200"})
        assert out.returncode == 0, out.stderr
        assert "workers" in out.stdout and "2/3" in out.stdout, out.stdout
        rows = [line for line in out.stdout.splitlines() if "DOWN" in line]
        assert len(rows) == 1 and running.layout.workers[2].admin_address in rows[0], out.stdout
    finally:
        if prometheus is not None:
            stop_process(prometheus)
        stop_cluster(running)
