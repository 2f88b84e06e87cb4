"""``payswitch demo``: a switch, its networks and an open-loop load, then the audit.

The switch runs as its own process (as it would in production, and so the load generator
does not steal its CPU); the demo drives it over TCP, shows live progress, stops it
gracefully, and audits the journal on disk against every reply the clients received.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from rich.console import Console
from rich.live import Live

from loadtests.harness.audit import AuditReport, audit_journal
from loadtests.harness.calibrate import Calibration, calibrate, saturation_lines, switch_figures
from loadtests.harness.liveview import _BREAKER_STATE, FaultSeen, _progress
from loadtests.harness.loadgen import LoadStats, OpenLoopGenerator
from loadtests.harness.processes import (
    CHANNELS_ADMIN_PORT,
    _port_free,
    channel_networks_toml,
    start_channels,
    start_switch,
    stop_channels,
    stop_switch,
)
from loadtests.harness.workload import Workload
from switch.dirlock import DirInUse, claim_dir, release_dir
from switch.serve.http import admin_headers

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
        f"amounts as sent: {audit.amount_mismatches} of {audit.amounts_compared} mismatched"
        + (f" ({audit.amounts_unknown} not compared: no amount kept)"
           if audit.amounts_unknown else ""),
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


def networks_error_rate(networks: str, switch_config: Path, channels_config: Path) -> float:
    """The highest share of payments the demo's networks fail on purpose: the stand-ins'
    ``error_rate`` (switch/adapters/fakenet.py, defaults included), or the simulators'
    ``technical_error_rate`` (an upper bound: cards fail over to a second network)."""
    try:
        if networks == "standin":
            from switch.serve.config import load_config

            return max((n.error_rate for n in load_config(switch_config).networks),
                       default=0.0)
        from channels.config import load_config as load_channels

        return max((n.behaviour.errors.technical_error_rate
                    for n in load_channels(channels_config).networks), default=0.0)
    except (OSError, ValueError):
        return 0.0


ROOT = Path(__file__).resolve().parents[2]








EXAMPLE_ROUTES = ROOT / "examples" / "routes.toml"
#: Held in the work dir while a demo runs (switch/dirlock.py).
WORKDIR_LOCK = ".demo.lock"






async def _watch_faults(
    url: str, started: float, seen: dict[int, FaultSeen], current: list[str], stop: anyio.Event
) -> None:
    """Poll the simulators' active faults for the live view and the summary."""
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                faults = (await client.get(url, timeout=2.0,
                                           headers=admin_headers("auditor"))).json()["faults"]
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


def _owed(metrics_url: str) -> tuple[float, float] | None:
    """(unknown payments, undelivered stand-in advices) from the switch's /metrics."""
    try:
        text = httpx.get(metrics_url, timeout=2.0).text
    except httpx.HTTPError:
        return None
    unresolved = saf = 0.0
    for line in text.splitlines():
        if line.startswith("payswitch_unresolved_payments "):
            unresolved = float(line.split()[1])
        elif line.startswith("payswitch_saf_depth_messages "):
            saf = float(line.split()[1])
    return unresolved, saf


def wait_until_resolved(
    metrics_url: str,
    timeout_s: float,
    console: Console | None = None,
    advices: bool = True,
    stall_s: float = 12.0,
) -> float:
    """Wait (bounded) until nothing is owed to a network: no payment is unknown and (with
    ``advices``) no stand-in advice waits in store-and-forward. Returns how many are left.

    Stopping earlier would leave unknown payments for the next start and advices
    undelivered, which the settlement files (and so reconciliation) would show. It gives
    up after ``timeout_s``, or once nothing has moved for ``stall_s`` (longer than the
    resolver's longest back-off between two attempts, 5 s by default: a reversal waiting
    for a network to come back is progress not yet visible). With ``console``, it says
    what it waits for, once.
    """
    deadline = time.monotonic() + timeout_s  # wall clock: another process
    left = 0.0
    best, best_at = float("inf"), time.monotonic()  # wall clock: another process
    said = False
    while True:
        owed = _owed(metrics_url)
        if owed is None:
            return left
        unresolved, saf = owed
        left = unresolved + (saf if advices else 0.0)
        if left == 0:
            return 0.0
        now = time.monotonic()  # wall clock: another process
        if left < best:
            best, best_at = left, now
        if now >= deadline or now - best_at >= stall_s:
            return left
        if console is not None and not said:
            said = True
            what = [f"{unresolved:.0f} unknown payments to be resolved"] if unresolved else []
            if saf and advices:
                what.append(f"{saf:.0f} stand-in advices to be delivered to their issuer")
            console.print(f"waiting for {' and '.join(what)} (at most {timeout_s:.0f} s, "
                          f"or {stall_s:.0f} s without progress)", highlight=False)
        time.sleep(0.25)
















class _Interrupt:
    """The first Ctrl-C stops the load; the demo then stops in order. A second aborts."""

    def __init__(self) -> None:
        self.at: float | None = None
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.at is not None:
            raise KeyboardInterrupt
        self.at = time.monotonic()  # wall clock: when the user pressed it

    def __call__(self) -> bool:
        return self.at is not None


def run_demo(
    duration_s: float,
    rate: float | None,
    connections: int,
    seed: int,
    backend: str,
    workdir: str | None,
    console: Console,
    networks: str = "sim",
    discrepancy_rate: float = 0.0,
) -> int:
    """Run the demo; ``rate`` None calibrates it. Returns the exit code: 0 when money is
    conserved (nothing lost, nothing booked twice, reconciliation clean), 1 otherwise,
    130 when interrupted (after the same orderly stop and audit), 2 when another demo
    holds the work dir (nothing in it touched)."""
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="payswitch-demo-"))
    try:
        # Before anything in it is cleared: a second demo given this work dir would delete
        # the first's journal and settlement files under its running switch and simulators.
        lock = claim_dir(base, WORKDIR_LOCK)
    except DirInUse as exc:
        print(f"Error: --workdir {base}: in use by another demo (pid {exc.holder}); give "
              "each demo its own work dir", file=sys.stderr)
        return 2
    try:
        return _run_demo_in(base, duration_s, rate, connections, seed, backend, console,
                            networks, discrepancy_rate)
    finally:
        release_dir(lock)


def _run_demo_in(
    base: Path,
    duration_s: float,
    rate: float | None,
    connections: int,
    seed: int,
    backend: str,
    console: Console,
    networks: str,
    discrepancy_rate: float,
) -> int:
    user_token = bool(os.environ.get("PAYSWITCH_OPERATOR_TOKEN"))
    journal = base / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    # The settlement files go with the journal they reconcile with: the simulators would
    # number after an earlier run's files, which name payments this journal never saw.
    shutil.rmtree(base / "settlement", ignore_errors=True)
    config = base / "switch.toml"
    cores = os.cpu_count() or 1
    console.print(
        f"[bold]payswitch demo[/]: {duration_s:g} s of load, "
        + (f"{rate:.0f} payments/s, " if rate is not None else "")
        + f"{connections} connections, backend {backend}, networks {networks}; work dir {base}"
    )
    channels_proc: subprocess.Popen[bytes] | None = None
    faults_url: str | None = None
    network_section = ""
    proc: subprocess.Popen[bytes] | None = None
    code = 0
    stats = LoadStats()
    faults_seen: dict[int, FaultSeen] = {}
    figures: dict[str, float] = {}
    calibration: Calibration | None = None
    left = 0.0
    with _Interrupt() as interrupted:
        try:
            if networks == "sim":
                channels_proc, channels_ready = start_channels(
                    base, discrepancy_rate=discrepancy_rate)
                # Cards go through the example route table (card-primary, failing over to
                # card-secondary), as in the scenarios.
                network_section = (f'\n[routing]\ntable = "{EXAMPLE_ROUTES}"\n'
                                   + channel_networks_toml(channels_ready, routes=False))
                admin = f"http://127.0.0.1:{channels_ready['admin_port']}"
                faults_url = f"{admin}/faults"
                names = ", ".join(sorted(k for k in channels_ready if k != "admin_port"))
                console.print(f"simulators pid {channels_proc.pid}: {names}; admin {admin}")
            # 7180 is what dashboards/prometheus/prometheus.yml scrapes; take it when free.
            admin_port = PROMETHEUS_TARGET_PORT if _port_free(PROMETHEUS_TARGET_PORT) else 0
            config.write_text(
                DEMO_CONFIG.format(seed=seed, journal=journal, admin_port=admin_port)
                + network_section
            )
            try:
                proc, endpoints = start_switch(config, base / "ready.json", backend)
            except RuntimeError as exc:
                # Taken since we looked (another run on a shared machine): any port will do.
                if not admin_port or "address already in use" not in str(exc):
                    raise
                config.write_text(DEMO_CONFIG.format(seed=seed, journal=journal, admin_port=0)
                                  + network_section)
                proc, endpoints = start_switch(config, base / "ready.json", backend)
            metrics_url = f"http://127.0.0.1:{endpoints['admin_port']}/metrics"
            console.print(
                f"switch pid {endpoints['pid']} on 127.0.0.1:{endpoints['port']}, "
                f"metrics at {metrics_url}"
            )
            if rate is None:
                calibration = calibrate(endpoints["port"], connections, seed, console,
                                        interrupted)
                rate = calibration.rate
                console.print(f"rate: {calibration.explain(cores)}", highlight=False)
            else:
                console.print(f"rate: {rate:.0f}/s (--rate)", highlight=False)
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
            # The harness made up this run's admin token unless you set one: show it then.
            token = ("" if user_token else
                     f"PAYSWITCH_OPERATOR_TOKEN={os.environ['PAYSWITCH_OPERATOR_TOKEN']} ")
            if faults_url is not None:
                admin_opt = (
                    ""
                    if faults_url == f"http://127.0.0.1:{CHANNELS_ADMIN_PORT}/faults"
                    else f" --admin {faults_url.removesuffix('/faults')}"
                )
                console.print(
                    f"break something: {token}.venv/bin/payswitch fault card-primary "
                    f"blackhole --for 10s{admin_opt}"
                )
            stats, faults_seen = _drive(
                endpoints["port"], rate, duration_s, connections, seed, console, faults_url,
                metrics_url, interrupted,
            )
            if interrupted.at is not None:
                console.print(
                    f"interrupted: load stopped after {stats.elapsed_s:.1f} s; draining, "
                    "flushing the journal, auditing (Ctrl-C again to abort)")
            left = wait_until_resolved(
                metrics_url, timeout_s=10.0 if interrupted.at is not None else 30.0,
                console=console, advices=networks == "sim")
            figures = switch_figures(metrics_url)
            owed = _owed(metrics_url)
            if networks != "sim" and owed is not None and owed[1]:
                console.print(f"{owed[1]:.0f} stand-in advices stay in store-and-forward: the "
                              "in-process stand-in networks take no advices (networks sim do)",
                              highlight=False)
        finally:
            try:
                if proc is not None:
                    code = stop_switch(proc)
                if channels_proc is not None:
                    # The last payments settle (SWIFT's ACSC comes after its settlement
                    # delay) before the simulators' final cut-off writes the last files.
                    stop_channels(channels_proc, channels_ready)
            except BaseException:
                # A second Ctrl-C: abort, but leave no process behind (they run in their
                # own sessions, so the terminal's signal did not reach them).
                for child in (proc, channels_proc):
                    if child is not None and child.poll() is None:
                        child.kill()
                raise
        if left:
            console.print(
                f"[yellow]{left:.0f} payments unresolved or advices undelivered at shutdown: "
                "they stay in the journal and are handled at the next start[/]"
            )
        if code != 0:
            console.print(f"[red]switch exited with code {code}[/]")
        elif proc is not None:
            flushed = _journal_flushed(base / "switch.log")
            if flushed:
                console.print(f"switch stopped: {flushed}", highlight=False)
        acknowledged = {**(calibration.acknowledged if calibration else {}),
                        **stats.acknowledged}
        audit = audit_journal(journal, acknowledged)
        console.print()
        for line in summary_lines(stats, audit):
            style = ("red" if (line.startswith(("lost", "duplicates"))
                               and not line.endswith(": 0")) else "")
            console.print(line, style=style, highlight=False)
        if calibration is not None:
            console.print(f"calibration payments: {len(calibration.acknowledged)} (in the "
                          "journal and the audit above, not in the counts)", highlight=False)
        routes = routes_taken(journal, {a.payment_id for a in stats.acknowledged.values()})
        if routes:
            console.print("answered by: " + ", ".join(
                f"{name}={n}" for name, n in sorted(routes.items())), highlight=False)
        if faults_url is not None:
            if faults_seen:
                for f in faults_seen.values():
                    detail = f" {f.detail}" if f.detail else ""
                    console.print(
                        f"fault seen: {f.endpoint} {f.kind}{detail} from "
                        f"{f.first_s:.1f}s to {f.last_s:.1f}s into the run",
                        highlight=False,
                    )
            else:
                console.print("faults seen: none")
        if not faults_seen and rate is not None:
            error_rate = networks_error_rate(networks, config, base / "channels.toml")
            judged = saturation_lines(stats, figures, rate, calibration is not None, cores,
                                      networks=networks, error_rate=error_rate)
            for line in judged:
                console.print(line, style="yellow" if judged[0].startswith("SATURATED")
                              else None, highlight=False)
        if audit.lost_keys:
            console.print(f"lost keys (first 20): {audit.lost_keys}")
        if audit.mismatched:
            console.print("booked for another amount (first 20): "
                          + "; ".join(str(m) for m in audit.mismatched), highlight=False)
        recon_clean = True
        if networks == "sim":
            recon_clean = _reconcile(journal, base / "settlement", base / "recon", console)
            console.print(
                f"reconcile again: .venv/bin/payswitch reconcile --journal {journal} "
                f"--files {base / 'settlement'}"
            )
            if discrepancy_rate > 0:
                # Breaks were planted on purpose: the demo's verdict is about money.
                recon_clean = True
        console.print(f"journal: {journal}")
        if interrupted.at is not None:
            console.print(f"interrupted; work dir: {base}")
            return 130
    ok = (audit.lost == 0 and audit.duplicates == 0 and audit.amount_mismatches == 0
          and audit.amounts_unknown == 0 and code == 0 and recon_clean)
    return 0 if ok else 1


def routes_taken(journal: Path, payment_ids: set[str]) -> Counter[str]:
    """How many of these payments each network answered (their last final record);
    ``switch``: the switch answered itself (a risk decline)."""
    import sqlite3

    import msgspec

    from switch.model import Result

    decoder = msgspec.msgpack.Decoder(Result)
    last: dict[str, str] = {}
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        for pid, record in db.execute(
                "SELECT payment_id, record FROM journal WHERE kind = 'final' ORDER BY seq"):
            if pid in payment_ids:
                # No route: answered by the switch itself (a risk decline).
                last[pid] = decoder.decode(record).route or "switch"
    finally:
        db.close()
    return Counter(last.values())


def _journal_flushed(log_path: Path) -> str | None:
    """The switch's last "journal flushed" log line (its message only), if any."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "journal flushed" in line:
            with contextlib.suppress(ValueError, TypeError):
                message = json.loads(line).get("msg")
                if isinstance(message, str):
                    return message
            return "journal flushed"
    return None


def _reconcile(journal: Path, files: Path, out: Path, console: Console) -> bool:
    """Reconcile the run: the journal against the simulators' settlement files."""
    from switch.backoffice.recon.kernels import warm_up
    from switch.backoffice.recon.outputs import write_outputs
    from switch.backoffice.recon.reconcile import load_switch_side, match
    from switch.backoffice.recon.sides import load_network_side
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
    should_stop: Callable[[], bool] | None = None,
) -> tuple[LoadStats, dict[int, FaultSeen]]:
    workload = Workload(seed)
    generator = OpenLoopGenerator(
        workload.next, rate=rate, duration_s=duration_s, connections=connections,
        should_stop=should_stop,
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

