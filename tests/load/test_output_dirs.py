"""Runs started in the same second get output directories of their own.

Named to the second, two scenario runs (or load runs, or merges) started in one second
shared ``reports/<timestamp>-<name>``: one's summary overwrote the other's, and a scenario
audited a journal.db two switches had written into.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from loadtests.harness import loadrun


class _Frozen(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _Frozen:
        return cls(2026, 11, 27, 4, 30, 0)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadrun.dt, "datetime", _Frozen)


@pytest.mark.usefixtures("frozen")
def test_two_outputs_in_one_second_are_two_directories(tmp_path: Path) -> None:
    first = loadrun.new_output_dir(tmp_path / "reports", "spike-3x")
    second = loadrun.new_output_dir(tmp_path / "reports", "spike-3x")
    assert first.name == "20261127-043000-spike-3x"
    assert second.name == "20261127-043000-spike-3x-2"
    assert first.is_dir() and second.is_dir()


@pytest.mark.usefixtures("frozen")
def test_the_default_load_output_is_a_new_directory_each_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = [loadrun.default_out_dir() for _ in range(3)]
    assert len(set(runs)) == 3 and all(run.is_dir() for run in runs)
