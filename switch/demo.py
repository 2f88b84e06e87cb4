"""``payswitch demo``: a switch, its networks and an open-loop load, then the audit.

The switch runs as its own process (as it would in production, and so the load generator
does not steal its CPU); the demo drives it over TCP, shows live progress, stops it
gracefully, and audits the journal on disk against every reply the clients received.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from switch.audit import AuditReport, audit_journal
from switch.loadgen import LoadStats, OpenLoopGenerator
from switch.workload import Workload

DEMO_CONFIG = """\
seed = {seed}
[server]
port = 0
[admin]
port = {admin_port}
[journal]
path = "{journal}"
mode = "group"
[risk]
blocked_accounts = ["ACCT-BLOCKED-1"]
[[risk.amount_limits]]
channel = "card"
currency = "USD"
max_minor = 1000000
[risk.velocity]
window_s = 10
max_count = 40
"""


PROMETHEUS_TARGET_PORT = 7180


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_switch(
    config_path: Path, ready_file: Path, backend: str = "asyncio", timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start ``payswitch serve`` and wait until its ready file appears.

    Its logs (JSON lines) go to ``switch.log`` beside the ready file: a pipe nobody reads
    would block the switch once full.
    """
    ready_file.unlink(missing_ok=True)
    log_path = ready_file.with_name("switch.log")
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switch.cli",
            "serve",
            "--config",
            str(config_path),
            "--backend",
            backend,
            "--ready-file",
            str(ready_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()  # the child holds its own descriptor
    deadline = time.monotonic() + timeout_s  # wall clock: waiting on another process
    while not ready_file.exists():
        if proc.poll() is not None:
            err = log_path.read_text()[-4000:]
            raise RuntimeError(f"switch exited with {proc.returncode}: {err}")
        if time.monotonic() > deadline:  # wall clock: another process
            proc.kill()
            raise RuntimeError("switch did not become ready in time")
        time.sleep(0.05)
    return proc, json.loads(ready_file.read_text())


def stop_switch(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _progress(stats: LoadStats, rate: float, elapsed: float) -> Table:
    table = Table(title="payswitch demo (live)", show_header=True)
    table.add_column("offered/s", justify="right")
    table.add_column("achieved/s", justify="right")
    table.add_column("sent", justify="right")
    table.add_column("replies", justify="right")
    for status in ("approved", "declined", "failed", "unknown"):
        table.add_column(status, justify="right")
    table.add_column("errors", justify="right")
    table.add_column("p99 ms", justify="right")
    achieved = stats.replies / elapsed if elapsed > 0 else 0.0
    table.add_row(
        f"{rate:.0f}",
        f"{achieved:.0f}",
        str(stats.sent),
        str(stats.replies),
        *(str(stats.by_status.get(s, 0)) for s in ("approved", "declined", "failed", "unknown")),
        str(sum(stats.errors.values())),
        f"{stats.percentile_ms(99):.2f}",
    )
    return table


def summary_lines(stats: LoadStats, audit: AuditReport) -> list[str]:
    accepted = sum(stats.by_status.values())
    lines = [
        f"accepted: {accepted}",
        f"approved: {stats.by_status.get('approved', 0)}",
        f"declined: {stats.by_status.get('declined', 0)}",
        f"failed: {stats.by_status.get('failed', 0)}",
        f"unknown: {stats.by_status.get('unknown', 0)} (resolved later; unresolved in journal:"
        f" {audit.unresolved})",
        f"replayed (idempotent duplicates): {stats.replays}",
        f"rejected: {sum(stats.errors.values())} {dict(stats.errors)}",
        f"lost: {audit.lost}",
        f"duplicates: {audit.duplicates}",
        f"throughput: {stats.replies / stats.elapsed_s:.0f} replies/s over {stats.elapsed_s:.1f} s",
        f"latency: p50 {stats.percentile_ms(50):.2f} ms, p99 {stats.percentile_ms(99):.2f} ms,"
        f" p99.9 {stats.percentile_ms(99.9):.2f} ms (from intended send time)",
    ]
    per_channel = sorted(stats.by_channel.items())
    lines.append("by channel: " + ", ".join(f"{ch}/{st}={n}" for (ch, st), n in per_channel))
    if stats.lagged:
        lines.append(
            f"WARNING: generator fell behind schedule for {stats.lagged} requests "
            f"(max lag {stats.max_lag_s * 1000:.1f} ms): latency above includes that lag"
        )
    if stats.dropped_overrun:
        lines.append(f"WARNING: {stats.dropped_overrun} requests not sent (too many outstanding)")
    return lines


def run_demo(
    duration_s: float,
    rate: float,
    connections: int,
    seed: int,
    backend: str,
    workdir: str | None,
    console: Console,
) -> int:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="payswitch-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    journal = base / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    config = base / "switch.toml"
    # 7180 is what dashboards/prometheus/prometheus.yml scrapes; take it when it is free.
    admin_port = PROMETHEUS_TARGET_PORT if _port_free(PROMETHEUS_TARGET_PORT) else 0
    config.write_text(DEMO_CONFIG.format(seed=seed, journal=journal, admin_port=admin_port))
    console.print(
        f"[bold]payswitch demo[/]: {rate:.0f} payments/s for {duration_s:.0f} s, "
        f"{connections} connections, backend {backend}; work dir {base}"
    )
    proc, endpoints = start_switch(config, base / "ready.json", backend)
    console.print(
        f"switch pid {endpoints['pid']} on 127.0.0.1:{endpoints['port']}, "
        f"metrics at http://127.0.0.1:{endpoints['admin_port']}/metrics"
    )
    metrics_url = f"http://127.0.0.1:{endpoints['admin_port']}/metrics"
    console.print(f"watch it live:   .venv/bin/payswitch top --url {metrics_url}")
    target_note = (
        "" if endpoints["admin_port"] == PROMETHEUS_TARGET_PORT
        else f" (edit its target to 127.0.0.1:{endpoints['admin_port']})"
    )
    console.print(
        "with Prometheus: prometheus --config.file=dashboards/prometheus/prometheus.yml"
        f"{target_note}; Grafana dashboards in dashboards/grafana/"
    )
    workload = Workload(seed)
    generator = OpenLoopGenerator(
        workload.next, rate=rate, duration_s=duration_s, connections=connections
    )

    async def drive() -> LoadStats:
        async with anyio.create_task_group() as tg:

            async def show() -> None:
                with Live(console=console, refresh_per_second=4, transient=False) as live:
                    begun = anyio.current_time()
                    while not generator.done_sending:
                        elapsed = anyio.current_time() - begun
                        live.update(_progress(generator.stats, rate, elapsed))
                        await anyio.sleep(0.5)
                    live.update(_progress(generator.stats, rate, anyio.current_time() - begun))

            if console.is_terminal:
                tg.start_soon(show)
            stats = await generator.run("127.0.0.1", endpoints["port"])
        return stats

    try:
        stats = anyio.run(drive, backend="asyncio", backend_options={"use_uvloop": True})
    finally:
        code = stop_switch(proc)
    if code != 0:
        console.print(f"[red]switch exited with code {code}[/]")
    audit = audit_journal(journal, stats.acknowledged)
    console.print()
    for line in summary_lines(stats, audit):
        style = (
            "red" if (line.startswith(("lost", "duplicates")) and not line.endswith(": 0")) else ""
        )
        console.print(line, style=style, highlight=False)
    if audit.lost_keys:
        console.print(f"lost keys (first 20): {audit.lost_keys}")
    console.print(f"journal: {journal}")
    ok = audit.lost == 0 and audit.duplicates == 0 and code == 0
    return 0 if ok else 1


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)
