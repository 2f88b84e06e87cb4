"""Run the pytest-benchmark micro-benchmarks and record them in bench/RESULTS.md.

    .venv/bin/python bench/micro.py [--write]

Each row is the median time of one call; per-payment costs are derived where a benchmark
covers many items (a 64 KiB read of frames, a batch of replies, 1000 journaled payments).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import markdown_table, write_flag, write_section  # noqa: E402

# benchmark name -> (what it is, items per call)
PER_ITEM = {
    "test_frame_decode_64k_read": ("frame split + typed decode, per frame", None),
    "test_reply_encode_batch_of_100": ("reply encode into a batch, per reply", 100),
    "test_validate": ("1. validate", 1),
    "test_dedupe_hash_and_lookup": ("2. dedupe: keyed body hash + index lookup", 1),
    "test_risk_assess": ("3. risk: limits, blocklist, velocity, AML", 1),
    "test_risk_assess_key_mix": (
        "3. risk on the simulator's mix (Zipf-skewed cards and accounts, new keys)", 1000),
    "test_state_transitions": ("state machine: 3 checked transitions", 1),
    "test_journal_records_encode": ("6. journal: encode intent + final records", 1),
    "test_metrics_per_payment": ("metrics per payment (2 histograms, counter, gauge)", 1),
    "test_metrics_per_payment_prometheus_client": (
        "the same on prometheus-client's locked children (loopmetrics.py's reason)", 1),
    "test_core_whole_life_batch_of_100": (
        "the sans-IO core alone: a payment's whole life (request, intent commit, network "
        "answer, final commit, reply), batches of 100, no IO", 100),
    "test_journal_group_commit_1000_payments": (
        "6. journal: 1000 payments x 2 records via group commit, 50 writers "
        "(WALL time per payment: fsync waits, not CPU)", 1000),
}


def main() -> None:
    write = write_flag()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", str(ROOT / "bench" / "test_micro_core.py"), "-q",
             "--benchmark-enable", "--benchmark-only", f"--benchmark-json={out}"],
            check=True, cwd=ROOT,
        )
        data = json.loads(out.read_text())
    rows = []
    for bench in data["benchmarks"]:
        label, items = PER_ITEM.get(bench["name"], (bench["name"], 1))
        if items is None:
            items = bench["extra_info"].get("frames_per_read", 1)
        median_us = bench["stats"]["median"] * 1e6
        rows.append([label, f"{median_us:.2f}", items, f"{median_us / items:.2f}"])
    body = markdown_table(["stage", "median µs per call", "items per call", "µs per item"], rows)
    write_section("micro", "Micro-benchmarks: frame codec and pipeline stages", body,
                  "bench/micro.py", write)
    print(body)


if __name__ == "__main__":
    main()
