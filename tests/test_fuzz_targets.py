"""The fuzz targets under bench/fuzz, fast: their seeds and mutated seeds through each
``TestOneInput`` with hypothesis (atheris runs them for real: bench/fuzz/run_all.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.fuzz.run_all import _load, discover

TARGETS: dict[str, Path] = discover()


def test_every_required_target_exists() -> None:
    assert {"wire", "iso8583", "pacs008", "pacs002", "pacs028", "mt103", "emvqr",
            "iso8583_acquirer", "payments_json"} <= set(TARGETS)


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> ModuleType:
    return _load(TARGETS[request.param])


def test_seeds_pass(target: ModuleType) -> None:
    for seed in target.seeds() if hasattr(target, "seeds") else []:
        target.TestOneInput(seed)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_seeds_raise_nothing_undeclared(target: ModuleType, data: st.DataObject) -> None:
    seeds = target.seeds() if hasattr(target, "seeds") else [b""]
    raw = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        noise = data.draw(st.binary(max_size=8))
        raw[at : at + data.draw(st.integers(0, 8))] = noise
    target.TestOneInput(bytes(raw))
