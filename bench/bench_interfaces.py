"""CPU per payment by front door: msgpack vs ISO 8583 vs HTTP, side by side in one run.

    python bench/bench_interfaces.py            # ~1 minute; prints the table
    python bench/bench_interfaces.py --write    # ... and writes the "interfaces" section

One switch process with every door open (the HTTP API on the server bench/bench_http.py
chose) is driven by ``payswitch load`` (one generator process) through each door in
turn, at the same fixed rate and with the same workload's card payments (ISO 8583
carries cards only, so every door gets cards only here), and the switch's CPU (user +
system, every thread, from /proc) is divided by the payments answered. The core behind
the three doors is the same, so the differences are the doors' own cost: parsing,
framing, connection handling, response building.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_http import Switch, drive  # noqa: E402
from bench.results import markdown_table, write_section  # noqa: E402

PROTOCOLS = ("msgpack", "iso8583", "http")
CARDS_ONLY = """
seed = 1
[channels.card]
weight = 1
[channels.swift]
weight = 0
[channels.qr]
weight = 0
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2,
                        help="each door is measured this many times, interleaved")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float, int]]] = {p: [] for p in PROTOCOLS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workload = tmp / "cards.toml"
        workload.write_text(CARDS_ONLY)
        switch = Switch(tmp, "uvicorn")
        try:
            for _ in range(args.rounds):
                for protocol in PROTOCOLS:
                    run = drive(switch, protocol, args.rate, args.duration, tmp,
                                extra=["--workload", str(workload)])
                    runs[protocol].append((run.us_per_reply, run.p50_ms, run.p99_ms,
                                           run.replies))
                    print(f"{protocol}: {run.us_per_reply:,.0f} µs/payment, p50 "
                          f"{run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
                          f"{run.replies} replies", flush=True)
        finally:
            switch.stop()
    rows = []
    for protocol in PROTOCOLS:
        measured = runs[protocol]
        best = min(m[0] for m in measured)
        rows.append([protocol, f"{best:,.0f}",
                     " / ".join(f"{m[0]:,.0f}" for m in measured),
                     " / ".join(f"{m[1]:.1f}–{m[2]:.1f}" for m in measured),
                     sum(m[3] for m in measured)])
    table = markdown_table(
        ["door", f"switch CPU µs per payment @ {args.rate:,.0f}/s (best)", "each round",
         "p50–p99 ms each round", "payments"], rows)
    print(table)
    body = (
        "One switch, three doors, the same card payments at the same rate, rounds "
        "interleaved. CPU is the whole switch process's (every thread) per answered "
        "payment while `payswitch load` drove that door; the core behind the doors "
        "is the same, so the differences are the doors' own cost.\n\n" + table + "\n")
    write_section("interfaces", "CPU per payment by front door (msgpack, ISO 8583, HTTP)",
                  body, "bench/bench_interfaces.py", write=args.write)


if __name__ == "__main__":
    main()
