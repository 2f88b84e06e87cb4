"""``payswitch demo``: a switch, its networks and an open-loop load, then the audit.

The switch runs as its own process (as it would in production, and so the load generator
does not steal its CPU); the demo drives it over TCP, shows live progress, stops it
gracefully, and audits the journal on disk against every reply the clients received.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtests.harness.audit import AuditReport, audit_journal
from loadtests.harness.loadgen import LoadStats, OpenLoopGenerator
from loadtests.harness.workload import Workload

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
max_count = 100
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
            "switch.cli.main",
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


def _progress(
    stats: LoadStats,
    rate: float,
    elapsed: float,
    faults: list[str] | None = None,
    breakers: dict[str, str] | None = None,
) -> Table:
    table = Table(title="payswitch demo (live)", show_header=True)
    table.add_column("offered/s", justify="right")
    table.add_column("achieved/s", justify="right")
    table.add_column("sent", justify="right")
    table.add_column("replies", justify="right")
    for status in ("approved", "declined", "failed", "unknown"):
        table.add_column(status, justify="right")
    table.add_column("errors", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("faults active")
    table.add_column("breakers")
    achieved = stats.replies / elapsed if elapsed > 0 else 0.0
    table.add_row(
        f"{rate:.0f}",
        f"{achieved:.0f}",
        str(stats.sent),
        str(stats.replies),
        *(str(stats.by_status.get(s, 0)) for s in ("approved", "declined", "failed", "unknown")),
        str(sum(stats.errors.values())),
        f"{stats.percentile_ms(99):.2f}",
        ", ".join(faults or []) or "none",
        ", ".join(f"{e}: {st}" for e, st in sorted((breakers or {}).items())) or "-",
    )
    return table


_BREAKER_STATE = {0: "closed", 1: "half-open", 2: "OPEN"}


async def _watch_breakers(url: str, breakers: dict[str, str], stop: anyio.Event) -> None:
    """Poll the switch's breaker gauges for the live view."""
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, IndexError):
                for line in (await client.get(url, timeout=2.0)).text.splitlines():
                    if line.startswith("payswitch_breaker_state{"):
                        endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
                        state = int(float(line.rsplit(" ", 1)[1]))
                        breakers[endpoint] = _BREAKER_STATE.get(state, str(state))
            with anyio.move_on_after(0.5):
                await stop.wait()


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


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CHANNELS = ROOT / "examples" / "channels.toml"
CHANNELS_ADMIN_PORT = 7280  # what `payswitch fault` talks to by default
SETTLE_GRACE_S = 3.0  # > the example SWIFT network's settlement delay (2 s)
_PORT_LINE = re.compile(r"^port\s*=\s*\d+", re.M)


def start_channels(
    base: Path,
    example: Path = EXAMPLE_CHANNELS,
    timeout_s: float = 30.0,
    discrepancy_rate: float = 0.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Run the example simulators as their own process, every network on a free port.

    The admin API takes 7280 (the `payswitch fault` default) when it is free.
    """
    text = example.read_text()
    admin_port = CHANNELS_ADMIN_PORT if _port_free(CHANNELS_ADMIN_PORT) else 0
    first = True

    def port(match: re.Match[str]) -> str:
        nonlocal first
        # The first `port =` in the example is [admin]'s; the rest are the networks'.
        chosen = admin_port if first else 0
        first = False
        return f"port = {chosen}"

    config = base / "channels.toml"
    # The settlement files go to the work dir, beside the journal they reconcile against.
    text = re.sub(r'^out_dir = ".*"$', f'out_dir = "{base / "settlement"}"', text, flags=re.M)
    text = re.sub(
        r"^discrepancy_rate = .*$", f"discrepancy_rate = {discrepancy_rate}", text, flags=re.M
    )
    config.write_text(_PORT_LINE.sub(port, text))
    ready = base / "channels-ready.json"
    ready.unlink(missing_ok=True)
    log_file = (base / "channels.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "channels",
            "serve",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()
    deadline = time.monotonic() + timeout_s  # wall clock: waiting on another process
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"channels exited: {(base / 'channels.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:  # wall clock: another process
            proc.kill()
            raise RuntimeError("channels did not become ready in time")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def channel_networks_toml(ready: dict[str, Any], routes: bool = True) -> str:
    """Switch config for the running simulators: one adapter each, and (unless a route
    table is used instead) one route per channel."""
    lines = []
    for name, info in sorted(ready.items()):
        if name == "admin_port":
            continue
        lines += [
            "[[channel_networks]]",
            f'kind = "{info["kind"]}"',
            f'name = "{name}"',
            f"port = {info['port']}",
            "",
        ]
    if routes:
        primary = {"card": "card-primary", "swift": "swift", "qr": "qr"}
        for channel, network in primary.items():
            lines += ["[[routes]]", f'channel = "{channel}"', f'network = "{network}"', ""]
    return "\n".join(lines)


@dataclass
class FaultSeen:
    endpoint: str
    kind: str
    detail: str
    first_s: float
    last_s: float


async def _watch_faults(
    url: str, started: float, seen: dict[int, FaultSeen], current: list[str], stop: anyio.Event
) -> None:
    """Poll the simulators' active faults for the live view and the summary."""
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                faults = (await client.get(url, timeout=2.0)).json()["faults"]
                at = time.perf_counter() - started  # bench: the generator's clock
                current[:] = []
                for f in faults:
                    left = f["remaining_s"]
                    current.append(
                        f"{f['endpoint']} {f['kind']}"
                        + (f" ({left:.0f}s left)" if left is not None else "")
                    )
                    entry = seen.get(f["id"])
                    if entry is None:
                        seen[f["id"]] = FaultSeen(f["endpoint"], f["kind"], f["detail"], at, at)
                    else:
                        entry.last_s = at
            with anyio.move_on_after(0.5):
                await stop.wait()


def wait_until_resolved(metrics_url: str, timeout_s: float) -> float:
    """Wait (bounded) until nothing is owed to a network: no payment is unknown and no
    stand-in advice waits in store-and-forward. Returns how many are still left.

    Stopping earlier would leave unknown payments for the next start and advices
    undelivered, which the settlement files (and so reconciliation) would show.
    """
    deadline = time.monotonic() + timeout_s  # wall clock: another process
    left = 0.0
    while time.monotonic() < deadline:  # wall clock: another process
        try:
            text = httpx.get(metrics_url, timeout=2.0).text
        except httpx.HTTPError:
            return left
        left = 0.0
        for line in text.splitlines():
            if line.startswith(("payswitch_unresolved_payments ",
                                "payswitch_saf_depth_messages ")):
                left += float(line.split()[1])
        if left == 0:
            return 0.0
        time.sleep(0.25)
    return left


def run_demo(
    duration_s: float,
    rate: float,
    connections: int,
    seed: int,
    backend: str,
    workdir: str | None,
    console: Console,
    networks: str = "sim",
    discrepancy_rate: float = 0.0,
) -> int:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="payswitch-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    journal = base / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    config = base / "switch.toml"
    console.print(
        f"[bold]payswitch demo[/]: {rate:.0f} payments/s for {duration_s:.0f} s, "
        f"{connections} connections, backend {backend}, networks {networks}; work dir {base}"
    )
    channels_proc: subprocess.Popen[bytes] | None = None
    faults_url: str | None = None
    network_section = ""
    proc: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        if networks == "sim":
            channels_proc, channels_ready = start_channels(base, discrepancy_rate=discrepancy_rate)
            network_section = channel_networks_toml(channels_ready)
            admin = f"http://127.0.0.1:{channels_ready['admin_port']}"
            faults_url = f"{admin}/faults"
            names = ", ".join(sorted(k for k in channels_ready if k != "admin_port"))
            console.print(f"simulators pid {channels_proc.pid}: {names}; admin {admin}")
        # 7180 is what dashboards/prometheus/prometheus.yml scrapes; take it when it is free.
        admin_port = PROMETHEUS_TARGET_PORT if _port_free(PROMETHEUS_TARGET_PORT) else 0
        config.write_text(
            DEMO_CONFIG.format(seed=seed, journal=journal, admin_port=admin_port) + network_section
        )
        proc, endpoints = start_switch(config, base / "ready.json", backend)
        metrics_url = f"http://127.0.0.1:{endpoints['admin_port']}/metrics"
        console.print(
            f"switch pid {endpoints['pid']} on 127.0.0.1:{endpoints['port']}, "
            f"metrics at {metrics_url}"
        )
        console.print(f"watch it live:   .venv/bin/payswitch top --url {metrics_url}")
        target_note = (
            ""
            if endpoints["admin_port"] == PROMETHEUS_TARGET_PORT
            else f" (edit its target to 127.0.0.1:{endpoints['admin_port']})"
        )
        console.print(
            "with Prometheus: prometheus --config.file=dashboards/prometheus/prometheus.yml"
            f"{target_note}; Grafana dashboards in dashboards/grafana/"
        )
        if faults_url is not None:
            admin_opt = (
                ""
                if faults_url == f"http://127.0.0.1:{CHANNELS_ADMIN_PORT}/faults"
                else f" --admin {faults_url.removesuffix('/faults')}"
            )
            console.print(
                f"break something: .venv/bin/payswitch fault card-primary blackhole "
                f"--for 10s{admin_opt}"
            )
        stats, faults_seen = _drive(
            endpoints["port"], rate, duration_s, connections, seed, console, faults_url,
            metrics_url,
        )
        left = wait_until_resolved(metrics_url, timeout_s=30.0)
        if left:
            console.print(
                f"[yellow]{left:.0f} payments unresolved or advices undelivered at shutdown: "
                "they stay in the journal and are handled at the next start[/]"
            )
    finally:
        if proc is not None:
            code = stop_switch(proc)
        if channels_proc is not None:
            # Let the last payments settle (SWIFT's ACSC comes after its settlement delay)
            # before the simulators' final cut-off writes the last settlement files.
            time.sleep(SETTLE_GRACE_S)
            stop_switch(channels_proc)
    if code != 0:
        console.print(f"[red]switch exited with code {code}[/]")
    audit = audit_journal(journal, stats.acknowledged)
    console.print()
    for line in summary_lines(stats, audit):
        style = (
            "red" if (line.startswith(("lost", "duplicates")) and not line.endswith(": 0")) else ""
        )
        console.print(line, style=style, highlight=False)
    if faults_url is not None:
        if faults_seen:
            for f in faults_seen.values():
                console.print(
                    f"fault seen: {f.endpoint} {f.kind} {f.detail} from "
                    f"{f.first_s:.1f}s to {f.last_s:.1f}s into the run",
                    highlight=False,
                )
        else:
            console.print("faults seen: none")
    if audit.lost_keys:
        console.print(f"lost keys (first 20): {audit.lost_keys}")
    recon_clean = True
    if networks == "sim":
        recon_clean = _reconcile(journal, base / "settlement", base / "recon", console)
        console.print(
            f"reconcile again: .venv/bin/payswitch reconcile --journal {journal} "
            f"--files {base / 'settlement'}"
        )
        if discrepancy_rate > 0:
            # Breaks were planted on purpose: the demo's verdict is about money, not them.
            recon_clean = True
    console.print(f"journal: {journal}")
    ok = audit.lost == 0 and audit.duplicates == 0 and code == 0 and recon_clean
    return 0 if ok else 1


def _reconcile(journal: Path, files: Path, out: Path, console: Console) -> bool:
    """Reconcile the run: the journal against the simulators' settlement files."""
    from switch.backoffice.recon.kernels import warm_up
    from switch.backoffice.recon.reconcile import (
        load_network_side,
        load_switch_side,
        match,
        write_outputs,
    )
    from switch.protocols.settlement_files import SettlementFileError

    warm_up()
    try:
        report = match(load_switch_side(journal), load_network_side(files))
    except SettlementFileError as exc:
        console.print(f"[red]reconciliation: unusable settlement file: {exc}[/]")
        return False
    write_outputs(report, out)
    by_kind = Counter(b.kind for b in report.breaks)
    _check_planted(files, report, console)
    if report.unexplained == 0:
        explained = f"; explained: {dict(by_kind)}" if by_kind else ""
        console.print(f"reconciliation clean ({report.network_records} settlement records"
                      f"{explained})")
        return True
    console.print(
        f"[red]reconciliation: {report.unexplained} breaks {dict(by_kind)}[/] "
        f"(see {out / 'breaks.csv'})"
    )
    return False


def _check_planted(files: Path, report: Any, console: Console) -> None:
    """With planted discrepancies: say how many were found, in the class they should be,
    and that none was explained away (stand-in exposure, late settlement)."""
    planted = [d for p in sorted(files.glob("*.discrepancies.json"))
               for d in json.loads(p.read_text())]
    if not planted:
        return
    expected = {"missing": "missing_at_network", "amount_off": "amount_mismatch",
                "duplicated": "duplicate", "unknown_reference": "missing_in_switch"}
    found = {(b.kind, (b.switch or b.network).reference) for b in report.breaks}
    hits = sum((expected[d["kind"]], d["reference"]) in found for d in planted)
    away = sum(any((k, d["reference"]) in found for k in ("standin_exposure",
                                                           "late_settlement"))
               for d in planted)
    colour = "green" if hits == len(planted) and away == 0 else "red"
    console.print(f"[{colour}]planted discrepancies found: {hits}/{len(planted)}, "
                  f"explained away: {away}[/]")


def _drive(
    port: int,
    rate: float,
    duration_s: float,
    connections: int,
    seed: int,
    console: Console,
    faults_url: str | None,
    metrics_url: str | None = None,
) -> tuple[LoadStats, dict[int, FaultSeen]]:
    workload = Workload(seed)
    generator = OpenLoopGenerator(
        workload.next, rate=rate, duration_s=duration_s, connections=connections
    )
    seen: dict[int, FaultSeen] = {}
    current: list[str] = []
    breakers: dict[str, str] = {}

    async def drive() -> LoadStats:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            if metrics_url is not None:
                tg.start_soon(_watch_breakers, metrics_url, breakers, stop)
            if faults_url is not None:
                started = time.perf_counter()  # bench: the generator's clock
                tg.start_soon(_watch_faults, faults_url, started, seen, current, stop)

            async def show() -> None:
                with Live(console=console, refresh_per_second=4, transient=False) as live:
                    begun = anyio.current_time()
                    while not generator.done_sending:
                        elapsed = anyio.current_time() - begun
                        live.update(_progress(generator.stats, rate, elapsed, current, breakers))
                        await anyio.sleep(0.5)
                    elapsed = anyio.current_time() - begun
                    live.update(_progress(generator.stats, rate, elapsed, current, breakers))

            if console.is_terminal:
                tg.start_soon(show)
            stats = await generator.run("127.0.0.1", port)
            stop.set()
        return stats

    stats = anyio.run(drive, backend="asyncio", backend_options={"use_uvloop": True})
    return stats, seen

