"""Load from several "machines" against a cluster: two `payswitch load` processes with one
--run-id and --share 0/2, 1/2, each sending straight to the shard owners (the generator
takes the shard map from its target), then `payswitch report merge`: the merged
percentiles equal those of one HdrHistogram holding both runs' samples."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtests.harness.clusterproc import Cluster, audit_cluster, start_cluster, stop_cluster
from loadtests.harness.hlog import new_histogram
from loadtests.harness.runfiles import load_run
from tests.cluster.test_cluster import CONFIG

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


def test_two_generators_share_a_run_against_a_cluster_and_merge_exactly(
        tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 2)
    w0 = running.layout.workers[0]
    runs = [tmp_path / f"machine-{i}" for i in range(2)]
    try:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "load", "--host", w0.host, "--port",
             str(w0.port), "--rate", "200", "--duration", "3", "--processes", "1",
             "--connections", "2", "--run-id", "R17", "--share", f"{i}/2",
             "--out", str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, run in enumerate(runs)]
        for proc in procs:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, out[-3000:]
    finally:
        assert stop_cluster(running) == 0
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    for summary in summaries:
        totals = summary["totals"]
        assert totals["sent"] == totals["offered"] == 300, totals  # half of 200/s x 3 s
        # Nothing sent to a non-owner: the only errors answer the workload's planted ones.
        assert totals["errors"] == totals["planted_errors"], totals
    # Both machines' payments landed on their owners, none twice, none misplaced.
    audit = audit_cluster(running.layout, {})
    assert audit.duplicates_across == 0 and audit.duplicates_within == 0
    assert audit.misplaced == 0
    assert audit.finals >= 550  # all but the workload's planted invalid ones

    merged_dir = tmp_path / "merged"
    merge = subprocess.run([sys.executable, "-m", "switch.cli", "report", "merge",
                            *map(str, runs), "--out", str(merged_dir)],
                           capture_output=True, text=True, timeout=120)
    assert merge.returncode == 0, merge.stdout + merge.stderr
    merged = load_run(merged_dir).histogram
    everything = new_histogram()
    for run in runs:
        everything.add(load_run(run).histogram)
    assert merged.get_total_count() == everything.get_total_count() > 550
    for p in PERCENTILES:
        assert merged.get_value_at_percentile(p) == everything.get_value_at_percentile(p)


def follow_moved_from_a_stale_map(
        config_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, rate: float,
        connections: int, also: Callable[[Cluster], object] | None = None) -> object:
    """Start a two-worker cluster from ``config_text`` and run the generator for 2 s
    against worker 0 with its cached map wrong (shards swapped): every payment first
    reaches a worker that does not own it, and must follow its `moved` to the owner
    named, once. ``also`` runs against the cluster before it stops; its result is
    returned."""
    import anyio

    from loadtests.harness import loadgen
    from loadtests.harness.workload import Workload
    from switch.protocols.shardmap import ShardMap

    config = tmp_path / "switch.toml"
    config.write_text(config_text.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 2)
    real = running.layout.shard_map.addresses

    async def stale(host: str, port: int, timeout_s: float = 10.0) -> ShardMap:
        return ShardMap(list(reversed(real)))

    monkeypatch.setattr(loadgen, "discover_shards", stale)
    w0 = running.layout.workers[0]
    try:
        generator = loadgen.OpenLoopGenerator(Workload(4).next, rate=rate, duration_s=2,
                                              connections=connections)
        stats = anyio.run(generator.run, w0.host, w0.port)
        extra = also(running) if also is not None else None
    finally:
        assert stop_cluster(running) == 0
    new = stats.sent
    assert new == int(rate * 2) and stats.unanswered == 0
    # Every payment was redirected once and then answered by its owner.
    assert stats.redirects == new
    assert stats.replies == new and "moved" not in stats.errors, stats.errors
    audit = audit_cluster(running.layout, {})
    assert audit.misplaced == 0 and audit.duplicates_across == 0
    return extra


def test_the_generator_follows_moved_from_a_stale_map(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    follow_moved_from_a_stale_map(CONFIG, tmp_path, monkeypatch, rate=200, connections=2)
