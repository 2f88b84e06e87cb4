"""BIN-range index: every implementation agrees with a brute-force scan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.routing.binindex import MAX_KEY, NOT_FOUND, BinIndex, BinIndexError, warm_up


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()  # compile (or load from cache) once, outside any hypothesis deadline


def brute(ranges: list[tuple[int, int, int]], key: int) -> int:
    hits = [t for lo, hi, t in ranges if lo <= key <= hi]
    assert len(hits) <= 1
    return hits[0] if hits else NOT_FOUND


@st.composite
def disjoint_ranges(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Non-overlapping ranges with random gaps (including none), in shuffled order."""
    # Dense small key spaces and sparse huge ones exercise the bucket table's edges.
    space = draw(st.sampled_from([8, 100, 10**6, 10**11, MAX_KEY + 1]))
    count = draw(st.integers(0, min(40, space // 2)))
    cuts = sorted(draw(st.sets(st.integers(0, space - 1), min_size=2 * count, max_size=2 * count)))
    ranges = [(cuts[2 * i], cuts[2 * i + 1], draw(st.integers(0, 50))) for i in range(count)]
    # Single-key ranges too (low == high).
    if draw(st.booleans()) and ranges:
        lo, _, t = ranges[0]
        ranges[0] = (lo, lo, t)
    return draw(st.permutations(ranges))


@settings(max_examples=200, deadline=None)
@given(ranges=disjoint_ranges(), data=st.data())
def test_all_implementations_agree_with_brute_force(
    ranges: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    index = BinIndex.build(ranges)
    # Probe every boundary and its neighbours, plus random keys.
    keys = {0, 10**11 - 1, MAX_KEY}
    for lo, hi, _ in ranges:
        keys |= {lo - 1, lo, lo + 1, hi - 1, hi, hi + 1}
    keys |= set(data.draw(st.lists(st.integers(0, MAX_KEY), max_size=20)))
    probe = sorted(k for k in keys if k >= 0)
    expected = [brute(ranges, k) for k in probe]
    assert [index.lookup(k) for k in probe] == expected
    assert [index.lookup_plain_bisect(k) for k in probe] == expected
    assert [index.lookup_dict_bisect(k) for k in probe] == expected
    assert [index.lookup_numpy(k) for k in probe] == expected
    assert [index.lookup_numba(k) for k in probe] == expected
    arr = np.array(probe, dtype=np.int64)
    assert index.lookup_batch(arr).tolist() == expected
    assert index.lookup_batch_numpy(arr).tolist() == expected
    assert index.lookup_batch_bisect(arr).tolist() == expected


def test_empty_index_finds_nothing() -> None:
    index = BinIndex.build([])
    keys = np.array([0, 5, 10**10], dtype=np.int64)
    assert index.lookup(5) == NOT_FOUND
    assert index.lookup_numba(5) == NOT_FOUND
    assert index.lookup_batch(keys).tolist() == [-1, -1, -1]
    assert index.lookup_batch_numpy(keys).tolist() == [-1, -1, -1]


def test_overlaps_and_bad_bounds_are_refused() -> None:
    with pytest.raises(BinIndexError, match="range 1 overlaps range 0"):
        BinIndex.build([(10, 20, 0), (20, 30, 1)])
    with pytest.raises(BinIndexError, match="range 0"):
        BinIndex.build([(30, 20, 0)])
    with pytest.raises(BinIndexError, match="target id"):
        BinIndex.build([(1, 2, -1)])


def test_index_is_read_only_and_batch_accepts_any_int_layout() -> None:
    index = BinIndex.build([(100, 199, 7), (300, 399, 8)])
    with pytest.raises(ValueError):
        index._lows[0] = 0  # the arrays cannot be changed under a live table
    strided = np.arange(0, 800, dtype=np.int32)[::50]  # non-contiguous, another dtype
    readonly = np.array([150, 350], dtype=np.int64)
    readonly.flags.writeable = False
    assert index.lookup_batch(strided).tolist() == [brute([(100, 199, 7), (300, 399, 8)], int(k))
                                                    for k in strided]  # fmt: skip
    assert index.lookup_batch(readonly).tolist() == [7, 8]


def test_a_large_index_stays_correct() -> None:
    rng = np.random.default_rng(3)
    starts = np.sort(rng.choice(10**11 // 1000, size=100_000, replace=False)) * 1000
    ranges = [(int(s), int(s) + 499, i % 97) for i, s in enumerate(starts)]
    index = BinIndex.build(ranges)
    keys = np.concatenate([starts, starts + 499, starts + 500]).astype(np.int64)
    got = index.lookup_batch(keys)
    expect = [i % 97 for i in range(100_000)] * 2 + [-1] * 100_000
    assert got.tolist() == expect
    assert index.lookup_batch_numpy(keys).tolist() == expect
    assert [index.lookup(int(k)) for k in keys[::997]] == expect[::997]
