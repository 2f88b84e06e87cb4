"""Merging is associative for the achieved rate: a merged run carries ``last_reply_s``
like any run, so merging merged runs (generators grouped per rack, then the racks) gives
the same rate as merging every run at once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loadtests.harness.merge import merge_runs
from tests.load.test_merge import CHANNELS, _fake_run


def _run_with_a_drain(directory: Path, start_wall: float, seconds: int, rate: int, seed: int,
                      last_reply_after_s: float, drain_wait_s: float) -> None:
    """A run whose last reply came ``last_reply_after_s`` after its load ended, and whose
    generator then waited ``drain_wait_s`` for stragglers that never came."""
    _fake_run(directory, start_wall, seconds, rate, seed, {ch: [] for ch in CHANNELS})
    path = directory / "summary.json"
    summary = json.loads(path.read_text())
    summary["run"]["last_reply_s"] = seconds + last_reply_after_s
    summary["run"]["elapsed_s"] = seconds + drain_wait_s
    summary["totals"]["achieved_rate"] = round(
        summary["totals"]["replies"] / (seconds + last_reply_after_s), 1)
    path.write_text(json.dumps(summary))


def _three_runs(tmp_path: Path, seed: int) -> list[Path]:
    rng = random.Random(seed)
    dirs = []
    for i in range(3):
        d = tmp_path / f"gen-{i}"
        _run_with_a_drain(d, 1_800_000_000.0 + rng.uniform(0.0, 2.0), rng.randint(3, 6),
                          rng.randint(50, 200), i + 1, last_reply_after_s=rng.uniform(0.0, 1.5),
                          drain_wait_s=rng.uniform(5.0, 30.0))
        dirs.append(d)
    return dirs


def test_a_merged_run_carries_its_last_reply(tmp_path: Path) -> None:
    a, b, _ = _three_runs(tmp_path, 7)
    merged = merge_runs([a, b], tmp_path / "ab").summary
    # the later of the two runs' last replies, on the merged run's clock
    ends = []
    for d in (a, b):
        run = json.loads((d / "summary.json").read_text())["run"]
        ends.append(run["start_wall"] + run["last_reply_s"])
    assert merged["run"]["last_reply_s"] == pytest.approx(
        max(ends) - merged["run"]["start_wall"], abs=0.002)


@pytest.mark.parametrize("seed", range(2))
def test_merging_merged_runs_gives_the_rate_of_merging_them_all(tmp_path: Path,
                                                                  seed: int) -> None:
    a, b, c = _three_runs(tmp_path, seed)
    at_once = merge_runs([a, b, c], tmp_path / "abc").summary
    ab = merge_runs([a, b], tmp_path / "ab").out_dir
    left = merge_runs([ab, c], tmp_path / "ab-c").summary
    bc = merge_runs([b, c], tmp_path / "bc").out_dir
    right = merge_runs([a, bc], tmp_path / "a-bc").summary
    for grouped in (left, right):
        assert grouped["totals"]["replies"] == at_once["totals"]["replies"]
        # start_wall and last_reply_s are written to the millisecond: a rate of a few
        # hundred per second may move by a tenth
        assert grouped["totals"]["achieved_rate"] == pytest.approx(
            at_once["totals"]["achieved_rate"], abs=0.15)
        assert grouped["run"]["last_reply_s"] == pytest.approx(
            at_once["run"]["last_reply_s"], abs=0.002)
