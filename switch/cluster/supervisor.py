"""``payswitch serve --workers N``: N switch processes, one per shard, kept running.

The supervisor is deliberately small: it is not a load balancer and speaks no protocol.
It writes the layout (``layout.json``) and Prometheus's target file, starts each worker
as ``payswitch serve --cluster layout.json --shard I`` (its own process, its own core,
its own journal), waits until every worker wrote its ready file, and restarts a worker
that exits (kill -9, crash) after ``restart_delay_s``. A restarted worker replays its
journal before it reports ready; until then HAProxy's health check keeps its shard
down (503 ``unavailable``) and msgpack clients cannot connect to it. SIGTERM or SIGINT
is passed to every worker, which drains and flushes its journal.

Workers inherit the environment, plus the token key when it came from the environment or
from ``--demo``: every shard must tokenise PANs with one key.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from switch.cluster.filesd import write_file_sd
from switch.cluster.layout import ClusterLayout, save_layout

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM it when the supervisor dies, even by
    kill -9, so no worker is left serving a shard nobody supervises. It drains and flushes
    its journal as on any SIGTERM."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class WorkerState(msgspec.Struct):
    shard: int
    pid: int
    starts: int
    ready: bool


class Supervisor:
    def __init__(self, layout: ClusterLayout, run_dir: str | Path, *,
                 config_path: str | None = None, serve_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, restart_delay_s: float = 1.0,
                 shards: Sequence[int] | None = None,
                 layout_path: str | Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.layout = layout
        #: Seconds, monotonic: injected, so restart timing can be tested without waiting.
        self.clock = clock
        #: The shards this supervisor runs: all (one node), or this node's (several).
        self.shards = list(shards) if shards is not None else [w.shard for w in layout.workers]
        #: An existing layout file (several nodes share it) is used as it is.
        self._given_layout = layout_path is not None
        self.run_dir = Path(run_dir)
        self.config_path = config_path
        self.serve_args = list(serve_args)
        self.env = dict(os.environ if env is None else env)
        self.restart_delay_s = restart_delay_s
        self.layout_path = Path(layout_path) if layout_path else self.run_dir / "layout.json"
        self.targets_path = self.run_dir / "targets" / f"{layout.name}.json"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts: dict[int, int] = {}
        self._down_since: dict[int, float] = {}
        self.stopping = False

    def ready_file(self, shard: int) -> Path:
        return self.run_dir / f"shard-{shard}.ready"

    def log_file(self, shard: int) -> Path:
        return self.run_dir / f"shard-{shard}.log"

    def command(self, shard: int) -> list[str]:
        cmd = [sys.executable, "-m", "switch.cli", "serve", "--cluster", str(self.layout_path),
               "--shard", str(shard), "--ready-file", str(self.ready_file(shard))]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd + self.serve_args

    def prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._given_layout:
            save_layout(self.layout, self.layout_path)
        write_file_sd(self.layout, self.targets_path)
        for shard in self.shards:
            Path(self.layout.workers[shard].journal).parent.mkdir(parents=True, exist_ok=True)

    def spawn(self, shard: int) -> None:
        self.ready_file(shard).unlink(missing_ok=True)
        with self.log_file(shard).open("ab") as out:
            proc = subprocess.Popen(self.command(shard), stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        self.procs[shard] = proc
        self.starts[shard] = self.starts.get(shard, 0) + 1
        self._down_since.pop(shard, None)
        log.info("worker %d started (pid %d, start %d)", shard, proc.pid, self.starts[shard])

    def start(self) -> None:
        self.prepare()
        for shard in self.shards:
            self.spawn(shard)

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        deadline = self.clock() + timeout_s
        while self.clock() < deadline:
            exited = [s for s, p in self.procs.items() if p.poll() is not None]
            if exited:
                log.error("worker(s) %s exited during start-up; see %s", exited,
                          ", ".join(str(self.log_file(s)) for s in exited))
                return False
            if all(self.ready_file(s).exists() for s in self.procs):
                return True
            time.sleep(0.05)
        return False

    def states(self) -> list[WorkerState]:
        return [WorkerState(s, p.pid, self.starts[s], p.poll() is None
                            and self.ready_file(s).exists()) for s, p in sorted(self.procs.items())]

    def poll_once(self, now: float) -> None:
        """Restart every worker that exited ``restart_delay_s`` ago."""
        if self.stopping:
            return
        for shard, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            since = self._down_since.setdefault(shard, now)
            if since == now:
                log.warning("worker %d (pid %d) exited with %s; restarting in %.1f s",
                            shard, proc.pid, code, self.restart_delay_s)
            if now - since >= self.restart_delay_s:
                self.spawn(shard)

    def write_state(self, path: str | Path) -> None:
        state = {"layout": str(self.layout_path), "targets": str(self.targets_path),
                 "pid": os.getpid(),
                 "workers": [msgspec.to_builtins(s) for s in self.states()]}
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(target)

    def stop(self, timeout_s: float = 30.0) -> dict[int, int | None]:
        """SIGTERM every worker (each drains and flushes its journal); SIGKILL stragglers."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + timeout_s
        codes: dict[int, int | None] = {}
        for shard, proc in self.procs.items():
            try:
                codes[shard] = proc.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s: killing it", shard, timeout_s)
                proc.kill()
                codes[shard] = proc.wait()
        return codes


def run(supervisor: Supervisor, *, ready_file: str | None = None,
        start_timeout_s: float = 120.0, poll_s: float = 0.1) -> int:
    """Start, report ready, keep the workers running until SIGTERM/SIGINT; exit code."""
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start()
        if not supervisor.wait_ready(start_timeout_s):
            supervisor.stop()
            print(f"Error: the cluster did not start within {start_timeout_s:.0f} s; see "
                  f"the logs in {supervisor.run_dir}", file=sys.stderr)
            return 1
        log.info("cluster %r ready: shards %s of %d, layout %s", supervisor.layout.name,
                 supervisor.shards, len(supervisor.layout.workers), supervisor.layout_path)
        if ready_file:
            supervisor.write_state(ready_file)
        while not stop["requested"]:
            supervisor.poll_once(supervisor.clock())
            time.sleep(poll_s)
        codes = supervisor.stop()
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes.values()) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
