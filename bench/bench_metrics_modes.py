"""Micro-benchmark: prometheus-client's per-call cost in default vs multiprocess mode.

Run from the repository root: ``.venv/bin/python bench/bench_metrics_modes.py``. With
``--write``, records the "metrics_modes" section of bench/RESULTS.md; docs/metrics.md quotes
the figures when it explains how several switch processes are monitored.

prometheus-client picks its value store when it is imported (``PROMETHEUS_MULTIPROC_DIR`` set
or not), so each mode is measured in a fresh child process. Measured per mode:

- the hot-path calls the switch makes: ``Counter.inc``, a bound label child's ``inc``,
  ``Histogram.observe`` (15 buckets, the switch's latency buckets), ``Gauge.set``;
- one scrape: rendering the switch's whole registry (default mode), or merging the mmap
  files of N processes with ``MultiProcessCollector`` (multiprocess mode).

Figures are timeit-style: best repeat (least disturbed) and median, in µs per call.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEATS = 7
TARGET_SECONDS = 0.2  # per repeat
SCRAPE_PROCESSES = 4  # processes whose files one multiprocess scrape merges
EXAMPLE_NETWORKS = ("standin-card", "standin-swift", "standin-qr")


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) microseconds per call."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * TARGET_SECONDS / max(elapsed, 1e-9)))
    runs = [t / number * 1e6 for t in timer.repeat(repeat=REPEATS, number=number)]
    return min(runs), statistics.median(runs)


def _child_hot_path() -> dict[str, tuple[float, float]]:
    """Runs in a child: the environment decided the mode before this import."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from switch.observability.metrics import LATENCY_BUCKETS

    registry = CollectorRegistry()
    plain = Counter("bench_plain", "unlabelled counter", registry=registry)
    labelled = Counter("bench_labelled", "labelled counter", ["channel"], registry=registry)
    child = labelled.labels("card")
    hist = Histogram(
        "bench_seconds", "histogram", ["channel"], buckets=LATENCY_BUCKETS, registry=registry
    ).labels("card")
    gauge = Gauge("bench_gauge", "gauge", registry=registry)  # multiprocess_mode "all"
    return {
        "Counter.inc()": _measure(plain.inc),
        "bound child .inc()": _measure(child.inc),
        "labels(...).inc()": _measure(lambda: labelled.labels("card").inc()),
        "Histogram.observe() (15 buckets)": _measure(lambda: hist.observe(0.0042)),
        "Gauge.set()": _measure(lambda: gauge.set(3.0)),
    }


def _child_populate() -> None:
    """Runs in a child (multiprocess mode): leave this process's mmap files behind."""
    from switch.observability.metrics import SwitchMetrics

    metrics = SwitchMetrics(networks=EXAMPLE_NETWORKS)
    for (_channel, _status), counter in metrics.payments.items():
        counter.inc()
    for hist in metrics.duration.values():
        hist.observe(0.003)
    for hist in metrics.network_duration.values():
        hist.observe(0.002)
    metrics.commit_seconds.observe(0.001)
    metrics.batch_size.observe(8)


def _child_scrape() -> dict[str, tuple[float, float]]:
    from prometheus_client import CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        label = f"scrape: merge {SCRAPE_PROCESSES} processes' files"
    else:
        from switch.observability.metrics import SwitchMetrics

        registry = SwitchMetrics(networks=EXAMPLE_NETWORKS).registry
        label = "scrape: render one process's registry"
    size = len(generate_latest(registry))
    best, median = _measure(lambda: generate_latest(registry))
    return {f"{label} ({size} B)": (best, median)}


def _run_child(role: str, multiproc_dir: str | None) -> dict[str, tuple[float, float]]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", role],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: (v[0], v[1]) for k, v in json.loads(out).items()}


def measure() -> list[tuple[str, str, float, float]]:
    """(operation, mode, best µs, median µs) rows."""
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="payswitch-mp-") as mp_dir:
        default = _run_child("hot", None)
        multi = _run_child("hot", mp_dir)
        for name in default:
            rows.append((name, "default", *default[name]))
            rows.append((name, "multiprocess", *multi[name]))
    with tempfile.TemporaryDirectory(prefix="payswitch-mp-") as mp_dir:
        for _ in range(SCRAPE_PROCESSES):
            _run_child("populate", mp_dir)
        for name, (best, median) in _run_child("scrape", None).items():
            rows.append((name, "default", best, median))
        for name, (best, median) in _run_child("scrape", mp_dir).items():
            rows.append((name, "multiprocess", best, median))
    return rows


def main() -> None:
    from bench.results import markdown_table, write_flag, write_section

    write = write_flag()
    rows = measure()
    by_op: dict[str, dict[str, float]] = {}
    for op, mode, best, _median in rows:
        by_op.setdefault(op, {})[mode] = best
    table_rows = []
    for op, mode, best, median in rows:
        modes = by_op[op]
        ratio = ""
        if mode == "multiprocess" and "default" in modes:
            ratio = f"{best / modes['default']:.1f}×"
        table_rows.append((op, mode, f"{best:.2f}", f"{median:.2f}", ratio))
    body = markdown_table(
        ["Operation", "Mode", "µs/call (best)", "µs/call (median)", "vs default"], table_rows
    )
    body += (
        "\n\nMultiprocess mode = `PROMETHEUS_MULTIPROC_DIR` set: every value lives in an mmap"
        " file per process, and a scrape merges all files. Scrape rows are not comparable"
        " row-to-row (one registry vs several processes' files); they show what one scrape"
        " costs the process serving it."
    )
    write_section(
        "metrics_modes",
        "prometheus-client: default vs multiprocess mode (µs per call)",
        body,
        "bench/bench_metrics_modes.py",
        write,
    )
    print(body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        role = sys.argv[2]
        if role == "populate":
            _child_populate()
            print("{}")
        else:
            result = _child_hot_path() if role == "hot" else _child_scrape()
            print(json.dumps(result))
    else:
        main()
