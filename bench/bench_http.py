"""Which ASGI server for the HTTP payments API: Hypercorn, uvicorn+httptools or Granian.

    python bench/bench_http.py            # ~2 minutes; prints the table
    python bench/bench_http.py --write    # ... and writes the "http_server" section

For each server, one switch process is started with the HTTP API on that server (on the
switch's own event loop, its own port, beside the msgpack server) and driven by
``payswitch load`` (one generator process):

* ``--protocol http`` at a fixed rate: the switch's CPU per request (user + system of the
  whole process, every thread: Granian's Rust runtime threads count) and p50/p99;
* ``--protocol http`` far above capacity: the achieved request rate (open loop, so the
  rate the switch actually answered);
* ``--protocol msgpack`` at the same fixed rate on the same switch: the TCP path's CPU
  per payment with that HTTP server in the process, to check it does not slow it.

CPU per request, not the wall-clock rate, is the figure to compare: other work on a
shared 2-core machine moves wall-clock rates but not the cost of one request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import markdown_table, write_section  # noqa: E402

SERVERS = ("hypercorn", "uvicorn", "granian")
CONFIG = """
seed = 7
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
[iso8583]
enabled = true
port = 0
[http]
enabled = {http}
port = 0
server = "{server}"
[resilience.admission]
per_endpoint = 4096
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Switch:
    """A switch process with every front door enabled."""

    def __init__(self, tmp: Path, server: str = "uvicorn") -> None:
        config = tmp / f"switch-{server}.toml"
        journal = tmp / f"journal-{server}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        http = server != "none"
        config.write_text(CONFIG.format(journal=journal, server=server if http else "uvicorn",
                                        http=str(http).lower()))
        ready = tmp / "ready.json"
        ready.unlink(missing_ok=True)
        self.log = (tmp / f"switch-{server}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "switch.cli.main", "serve", "--demo", "--config",
             str(config), "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"switch ({server}) did not start; see {self.log.name}")
            time.sleep(0.05)
        self.ports = json.loads(ready.read_text())
        if not http:
            return
        # Granian binds in the background after the ready file: wait until it answers.
        url = f"http://127.0.0.1:{self.ports['http_port']}/openapi.json"
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def port(self, protocol: str) -> int:
        return int(self.ports[{"msgpack": "port", "iso8583": "iso8583_port",
                               "http": "http_port"}[protocol]])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Run:
    protocol: str
    rate: float
    replies: int
    achieved: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def us_per_reply(self) -> float:
        return self.cpu_s / max(self.replies, 1) * 1e6


def drive(switch: Switch, protocol: str, rate: float, duration: float, tmp: Path,
          connections: int = 16, extra: list[str] | None = None) -> Run:
    """``payswitch load`` against one of the switch's doors; the switch's CPU meanwhile."""
    out = tmp / f"run-{protocol}-{rate:g}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "switch.cli.load", "--protocol", protocol,
           "--target", f"127.0.0.1:{switch.port(protocol)}", "--rate", f"{rate:g}",
           "--duration", f"{duration:g}", "--processes", "1", "--connections",
           str(connections), "--out", str(out), "--drain-timeout", "5", *(extra or [])]
    loader = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The generator needs a moment to start; count the switch's CPU from its first send.
    time.sleep(1.0)
    cpu0 = cpu_seconds(switch.proc.pid)
    loader.wait(duration + 120)
    cpu = cpu_seconds(switch.proc.pid) - cpu0
    summary = json.loads((out / "summary.json").read_text())
    totals, latency = summary["totals"], summary["latency_ms"]
    return Run(protocol, rate, int(totals["replies"]), float(totals["achieved_rate"]),
               sum(totals["errors"].values()), float(latency["p50"]), float(latency["p99"]),
               cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--flat-out", type=float, default=6000.0,
                        help="offered rate for the capacity run")
    parser.add_argument("--servers", default=",".join(("none", *SERVERS)))
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for server in args.servers.split(","):
            switch = Switch(tmp, server)
            if server == "none":  # the baseline: the TCP path with no HTTP server at all
                try:
                    tcp = drive(switch, "msgpack", args.rate, args.duration, tmp)
                finally:
                    switch.stop()
                rows.append(["(no HTTP API)", "–", "–", "–", "–", f"{tcp.us_per_reply:,.0f}",
                             f"{tcp.p50_ms:.1f} / {tcp.p99_ms:.1f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
                continue
            try:
                fixed = drive(switch, "http", args.rate, args.duration, tmp)
                tcp = drive(switch, "msgpack", args.rate, args.duration, tmp)
                # Last: the overload leaves a backlog that must not count against others.
                flat = drive(switch, "http", args.flat_out, min(args.duration, 5.0), tmp,
                             connections=64)
            finally:
                switch.stop()
            row = [server, f"{flat.achieved:,.0f}", f"{fixed.us_per_reply:,.0f}",
                   f"{fixed.p50_ms:.1f} / {fixed.p99_ms:.1f}", fixed.errors,
                   f"{tcp.us_per_reply:,.0f}", f"{tcp.p50_ms:.1f} / {tcp.p99_ms:.1f}"]
            print(" | ".join(str(c) for c in row), flush=True)
            rows.append(row)
    table = markdown_table(
        ["ASGI server", f"HTTP answered/s (offered {args.flat_out:,.0f}/s)",
         f"switch CPU µs per HTTP payment @ {args.rate:,.0f}/s", "HTTP p50 / p99 ms",
         "HTTP errors", f"switch CPU µs per msgpack payment @ {args.rate:,.0f}/s, same process",
         "msgpack p50 / p99 ms"], rows)
    print(table)
    body = (
        "The HTTP payments API (POST /v1/payments, the same core as the TCP path) on "
        "each server, on the switch's own event loop, one process. CPU is the whole "
        "switch process's (every thread) per answered request, counted while "
        "`payswitch load` drove it; errors are the workload's deliberate invalid and "
        "malformed requests.\n\n" + table + "\n")
    write_section("http_server", "HTTP API: ASGI server by measurement", body,
                  "bench/bench_http.py", write=args.write)


if __name__ == "__main__":
    main()
