"""Start and stop a cluster (``payswitch serve --workers N``) and HAProxy in front of it,
as subprocesses, for tests and benches; audit a cluster's journals together."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switch.cluster.layout import ClusterLayout, load_layout
from switch.cluster.layout import free_port as pick_free_port
from switch.journal import read as read_journal
from switch.serve.http import ensure_demo_tokens

#: Ports this process picked: each was closed again at once, so the next pick must not
#: find it free and hand it out twice.
_PICKED: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port for a process started next (HAProxy, Prometheus, a Locust master): picked
    as the cluster picks its workers' (:func:`switch.cluster.layout.free_port`), below
    the kernel's ephemeral range, so no outgoing connection takes it before it is bound."""
    return pick_free_port(host, _PICKED)


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    run_dir: Path
    layout: ClusterLayout
    state: dict[str, Any] = field(default_factory=dict)

    def worker_pid(self, shard: int) -> int:
        """The current pid of ``shard``'s worker (from its ready file)."""
        ready = self.run_dir / f"shard-{shard}.ready"
        return int(json.loads(ready.read_text())["pid"])

    def wait_worker_ready(self, shard: int, timeout_s: float = 60.0,
                          not_pid: int | None = None) -> int:
        """Wait until ``shard`` has a ready worker (other than ``not_pid``); its pid."""
        deadline = time.monotonic() + timeout_s  # wall clock: other processes
        ready = self.run_dir / f"shard-{shard}.ready"
        while time.monotonic() < deadline:
            if ready.exists():
                try:
                    pid = int(json.loads(ready.read_text())["pid"])
                except (ValueError, KeyError):
                    pid = -1
                if pid > 0 and pid != not_pid:
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"shard {shard} has no ready worker after {timeout_s:.0f} s; "
                           f"see {self.run_dir / f'shard-{shard}.log'}")


def start_cluster(config_path: Path, run_dir: Path, workers: int, *,
                  restart_delay_s: float = 1.0, timeout_s: float = 120.0,
                  extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> Cluster:
    """``payswitch serve --workers N --demo``; returns once every worker is ready.
    ``prefix`` goes before the command (``taskset -c 0`` pins the workers too)."""
    ensure_demo_tokens()
    run_dir.mkdir(parents=True, exist_ok=True)
    ready = run_dir / "cluster.ready"
    ready.unlink(missing_ok=True)
    log = (run_dir / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "switch.cli", "serve", "--config", str(config_path),
         "--workers", str(workers), "--cluster-dir", str(run_dir), "--ready-file", str(ready),
         "--restart-delay", str(restart_delay_s), "--demo", *extra],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout_s  # wall clock: waiting on other processes
    while not ready.exists():
        if proc.poll() is not None:
            tail = (run_dir / "supervisor.log").read_text()[-3000:]
            raise RuntimeError(f"cluster exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("cluster did not become ready in time")
        time.sleep(0.05)
    state = json.loads(ready.read_text())
    return Cluster(proc, run_dir, load_layout(state["layout"]), state)


def stop_cluster(cluster: Cluster, timeout_s: float = 60.0) -> int:
    cluster.proc.send_signal(signal.SIGTERM)
    try:
        return cluster.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(cluster.proc.pid, signal.SIGKILL)
        return cluster.proc.wait()


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if found is None:
        raise RuntimeError("haproxy is not installed: run `sh loadtests/install-haproxy.sh` "
                           "(make test does)")
    return found


def start_haproxy(layout_path: Path, run_dir: Path, port: int, timeout_s: float = 30.0,
                  prefix: tuple[str, ...] = (),
                  iso8583_port: int = 0) -> subprocess.Popen[bytes]:
    """Write HAProxy's config with `payswitch cluster haproxy-config` and run HAProxy in
    the foreground; returns once it accepts connections on ``port``."""
    cfg = run_dir / "haproxy.cfg"
    subprocess.run([sys.executable, "-m", "switch.cli", "cluster", "haproxy-config",
                    "--layout", str(layout_path), "--out", str(cfg),
                    "--bind", f"127.0.0.1:{port}",
                    *(["--iso8583-bind", f"127.0.0.1:{iso8583_port}"] if iso8583_port else [])],
                   check=True, capture_output=True)
    binary = haproxy_binary()
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {cfg}: {check.stdout}{check.stderr}")
    log = (run_dir / "haproxy.log").open("ab")
    proc = subprocess.Popen([*prefix, binary, "-db", "-f", str(cfg)], stdout=log, stderr=log,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout_s  # wall clock: another process
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {(run_dir / 'haproxy.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("haproxy did not listen in time") from None
            time.sleep(0.05)


def start_haproxy_for(cluster: Cluster, port: int, **kwargs: Any) -> subprocess.Popen[bytes]:
    """:func:`start_haproxy` in front of ``cluster``; if HAProxy cannot start, the cluster
    is stopped before the error propagates (no worker left behind)."""
    try:
        return start_haproxy(cluster.run_dir / "layout.json", cluster.run_dir, port, **kwargs)
    except BaseException:
        stop_cluster(cluster)
        raise


def stop_haproxy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class ClusterAudit:
    """The money audit over every shard's journal."""

    finals: int
    #: Two final records for one key or payment id inside one journal.
    duplicates_within: int
    #: One idempotency key booked in more than one journal.
    duplicates_across: int
    #: Acknowledged keys no journal holds a result for.
    lost_keys: list[str]
    #: Keys journaled on a shard that does not own them.
    misplaced: int


def audit_cluster(layout: ClusterLayout, acknowledged: dict[str, str]) -> ClusterAudit:
    """``acknowledged``: key -> payment id the client was given."""
    owner_of: dict[str, int] = {}
    within = across = misplaced = finals = 0
    shard_map = layout.shard_map
    results: dict[str, str] = {}
    for w in layout.workers:
        folded = read_journal(w.journal)
        within += folded.duplicates()
        for key, history in folded.by_key().items():
            if history.result is None:
                continue
            finals += 1
            if key in owner_of:
                across += 1
            owner_of[key] = w.shard
            results[key] = history.result.payment_id
            if shard_map.owner(key) != w.shard:
                misplaced += 1
    lost = [k for k, pid in acknowledged.items() if results.get(k) != pid]
    return ClusterAudit(finals, within, across, lost, misplaced)
