"""Reconciliation kernels: planted breaks are found, clean data is clean, and the numba
kernels agree with the pure-Python reference on random inputs.

The property test is the main guard: the kernels have a hash table, prefetching and a
two-sort ranking that are easy to get subtly wrong, while reference.py is short enough
to check by reading.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switch.backoffice.recon import (
    BreakClass,
    ReconResult,
    RecordArrays,
    RecordStatus,
    exact_match,
    hash_reference,
    hash_references,
    kernels,
    reconcile_arrays,
    tolerance_match,
    warm_up,
)
from switch.backoffice.recon.reference import RecordLists, reconcile_reference, tolerance_candidates

EUR, USD = 978, 840
SETTLED, FAILED = int(RecordStatus.SETTLED), int(RecordStatus.FAILED)
TOL_A, TOL_T = 50, 5_000_000
B = BreakClass


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    # Compile (or load from cache) once, outside any hypothesis deadline.
    warm_up()


def side(rows: Sequence[tuple[int, int, int, int, int]]) -> RecordArrays:
    """Records from (key, amount, currency, time_us, status) tuples."""
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return RecordArrays.from_columns(*cols)


def clean(n: int, seed: int = 7) -> list[tuple[int, int, int, int, int]]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(1 << 40, size=n, replace=False)
    amounts = rng.integers(100, 1_000_000, n)
    return [
        (int(keys[r]), int(amounts[r]), EUR if r % 3 else USD, 1_000_000_000 * r, SETTLED)
        for r in range(n)
    ]


def run(sw: RecordArrays, net: RecordArrays) -> ReconResult:
    return reconcile_arrays(sw, net, tol_amount=TOL_A, tol_time_us=TOL_T)


def check_consistent(res: ReconResult) -> None:
    """Match arrays are mutual inverses, and paired records share their class."""
    for i, j in enumerate(res.switch_match):
        if j >= 0:
            assert res.network_match[j] == i
            assert res.network_class[j] == res.switch_class[i]
    for j, i in enumerate(res.network_match):
        if i >= 0:
            assert res.switch_match[i] == j
    assert (res.switch_class >= 0).all() and (res.network_class >= 0).all()


# ---------------------------------------------------------------------- clean data


def test_clean_dataset_has_zero_breaks() -> None:
    rows = clean(500)
    net_rows = rows[::-1]  # network file in another order
    res = run(side(rows), side(net_rows))
    check_consistent(res)
    assert res.breaks() == 0
    assert res.counts()[B.MATCHED] == 1000
    assert (res.switch_match == np.arange(499, -1, -1)).all()


def test_empty_inputs() -> None:
    res = run(side([]), side([]))
    assert res.breaks() == 0 and res.switch_match.size == 0
    res = run(side(clean(3)), side([]))
    assert res.counts()[B.MISSING_AT_NETWORK] == 3
    res = run(side([]), side(clean(3)))
    assert res.counts()[B.MISSING_IN_SWITCH] == 3


# ------------------------------------------------------------------ planted breaks


def plant(cls: BreakClass) -> tuple[list[tuple[int, int, int, int, int]], ...]:
    """Clean data with one discrepancy of class ``cls`` on record 10 of each side."""
    sw, net = clean(40), clean(40)
    k, a, c, t, s = sw[10]
    if cls is B.AMOUNT_MISMATCH:
        net[10] = (k, a + 1, c, t, s)
    elif cls is B.CURRENCY_MISMATCH:
        net[10] = (k, a + 1, USD if c == EUR else EUR, t, s)  # currency wins over amount
    elif cls is B.STATUS_MISMATCH:
        sw[10] = (k, a, c, t, FAILED)  # switch says failed, network settled it
    elif cls is B.MATCHED_TOLERANCE:
        net[10] = (k ^ 0x5A5A, a + TOL_A, c, t - TOL_T, s)  # new reference, fee, later
    elif cls is B.DUPLICATE:
        net.append(net[10])
        sw.append(sw[11])
    elif cls is B.MISSING_AT_NETWORK:
        del net[10]
    elif cls is B.MISSING_IN_SWITCH:
        del sw[10]
    return sw, net


@pytest.mark.parametrize(
    "cls",
    [
        B.AMOUNT_MISMATCH,
        B.CURRENCY_MISMATCH,
        B.STATUS_MISMATCH,
        B.MATCHED_TOLERANCE,
        B.DUPLICATE,
        B.MISSING_AT_NETWORK,
        B.MISSING_IN_SWITCH,
    ],
)
def test_planted_break_is_found(cls: BreakClass) -> None:
    sw, net = plant(cls)
    res = run(side(sw), side(net))
    check_consistent(res)
    counts = res.counts()
    expected = {
        B.AMOUNT_MISMATCH: 2,
        B.CURRENCY_MISMATCH: 2,
        B.STATUS_MISMATCH: 2,
        B.MATCHED_TOLERANCE: 2,
        B.DUPLICATE: 2,
        B.MISSING_AT_NETWORK: 1,
        B.MISSING_IN_SWITCH: 1,
    }[cls]
    assert counts[cls] == expected
    assert res.breaks() + counts[B.MATCHED] + counts[B.MATCHED_TOLERANCE] == len(sw) + len(net)
    assert sum(counts.values()) - counts[B.MATCHED] == expected  # nothing else flagged
    if cls is B.DUPLICATE:
        # The later copy is the duplicate; the first occurrence still matches.
        assert res.network_class[40] == B.DUPLICATE and res.network_match[40] == -1
        assert res.switch_class[40] == B.DUPLICATE and res.switch_match[40] == -1
        assert res.network_class[10] == B.MATCHED and res.switch_class[11] == B.MATCHED
    elif cls is B.MISSING_AT_NETWORK:
        assert res.switch_class[10] == cls and res.switch_match[10] == -1
    elif cls is B.MISSING_IN_SWITCH:
        assert res.network_class[10] == cls and res.network_match[10] == -1
    else:
        assert res.switch_class[10] == res.network_class[10] == cls
        assert res.switch_match[10] == 10 and res.network_match[10] == 10


def test_every_class_in_one_dataset() -> None:
    """All planted breaks together, each found and nothing extra."""
    sw, net = clean(200), clean(200)
    k, a, c, t, s = sw[1]
    net[1] = (k, a + 7, c, t, s)  # amount
    k, a, c, t, s = sw[2]
    net[2] = (k, a, USD if c == EUR else EUR, t, s)  # currency
    k, a, c, t, s = sw[3]
    sw[3] = (k, a, c, t, FAILED)  # status
    k, a, c, t, s = sw[4]
    net[4] = (k + 1, a - 3, c, t + 1_000, s)  # tolerance (key changed)
    net.append(net[5])  # duplicate on network side
    sw.append(sw[6])  # duplicate on switch side
    sw[7] = (1 << 50, 123, EUR, -(10**12), SETTLED)  # no counterpart at the network
    net[8] = (1 << 51, 456, USD, 10**15, SETTLED)  # no counterpart at the switch
    sw[8] = (1 << 52, 789, EUR, 10**13, SETTLED)  # ... and its switch record is gone too
    res = run(side(sw), side(net))
    check_consistent(res)
    counts = res.counts()
    assert counts == {
        B.MATCHED: 2 * 194,
        B.MATCHED_TOLERANCE: 2,
        B.AMOUNT_MISMATCH: 2,
        B.CURRENCY_MISMATCH: 2,
        B.STATUS_MISMATCH: 2,
        B.DUPLICATE: 2,
        B.MISSING_AT_NETWORK: 2,
        B.MISSING_IN_SWITCH: 2,
    }


# ------------------------------------------------------------------- pass 2 details


def test_tolerance_prefers_closest_in_time_and_is_one_to_one() -> None:
    sw = side([(1, 1000, EUR, 100, SETTLED), (2, 1000, EUR, 130, SETTLED)])
    net = side([(11, 1000, EUR, 125, SETTLED), (12, 1001, EUR, 160, SETTLED)])
    res = reconcile_arrays(sw, net, tol_amount=5, tol_time_us=100)
    # (1, 11) has |dt| 25, (2, 11) has 5: switch 2 wins network 11; switch 1 gets 12.
    assert list(res.switch_match) == [1, 0]
    assert (res.switch_class == B.MATCHED_TOLERANCE).all()


def test_tolerance_respects_bounds_and_currency() -> None:
    sw = side([(1, 1000, EUR, 0, SETTLED), (2, 1000, EUR, 0, SETTLED), (3, 1000, EUR, 0, SETTLED)])
    net = side(
        [(11, 1006, EUR, 0, SETTLED), (12, 1000, EUR, 11, SETTLED), (13, 1000, USD, 0, SETTLED)]
    )
    res = reconcile_arrays(sw, net, tol_amount=5, tol_time_us=10)
    assert (res.switch_class == B.MISSING_AT_NETWORK).all()
    assert (res.network_class == B.MISSING_IN_SWITCH).all()
    res = reconcile_arrays(sw, net, tol_amount=6, tol_time_us=11)
    assert sorted(res.switch_match.tolist()) == [-1, 0, 1]


def test_passes_are_separable_for_later_layers() -> None:
    """A layer between the passes can claim leftovers; pass 2 leaves them alone."""
    sw = side([(1, 1000, EUR, 0, SETTLED), (2, 500, EUR, 0, SETTLED)])
    net = side([(11, 1000, EUR, 0, SETTLED), (12, 500, EUR, 0, SETTLED)])
    partial = exact_match(sw, net)
    assert (partial.switch_class == -1).all()
    with pytest.raises(ValueError, match="unclassified"):
        partial.counts()
    partial.switch_class[0] = B.MISSING_AT_NETWORK  # e.g. a netting layer's decision
    found = tolerance_match(sw, net, partial, tol_amount=0, tol_time_us=0)
    assert found == 1
    assert partial.switch_class.tolist() == [B.MISSING_AT_NETWORK, B.MATCHED_TOLERANCE]
    assert partial.network_class.tolist() == [B.MISSING_IN_SWITCH, B.MATCHED_TOLERANCE]


def test_huge_tolerances_match_reference() -> None:
    """Tolerances >= 2**31 take the two-sort ranking path; same answers as the reference."""
    rng = np.random.default_rng(3)
    n = 300
    cols = [
        [
            rng.integers(0, 400, n),
            rng.integers(-(10**12), 10**12, n),
            rng.choice([EUR, USD], n),
            rng.integers(-(10**15), 10**15, n),
            rng.integers(0, 2, n),
        ]
        for _ in range(2)
    ]
    tol_a, tol_t = 1 << 40, 1 << 50
    got = reconcile_arrays(
        *(RecordArrays.from_columns(*c) for c in cols), tol_amount=tol_a, tol_time_us=tol_t
    )
    want = reconcile_reference(
        *(RecordLists(*(c.tolist() for c in col)) for col in cols),
        tol_amount=tol_a,
        tol_time_us=tol_t,
    )
    assert got.switch_match.tolist() == want.switch_match
    assert got.network_class.tolist() == want.network_class
    assert got.counts()[B.MATCHED_TOLERANCE] > 0


def test_candidate_bound_raises_instead_of_exploding() -> None:
    sw = side([(i, 1000, EUR, 0, SETTLED) for i in range(30)])
    net = side([(100 + i, 1000, EUR, 0, SETTLED) for i in range(30)])
    with pytest.raises(ValueError, match="max_candidates"):
        reconcile_arrays(sw, net, tol_amount=0, tol_time_us=0, max_candidates=899)
    assert reconcile_arrays(sw, net, tol_amount=0, tol_time_us=0, max_candidates=900).breaks() == 0


# ---------------------------------------------------------------- input validation


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="length"):
        RecordArrays.from_columns([1, 2], [1], [1], [1], [1])
    with pytest.raises(TypeError, match="int64"):
        RecordArrays.from_columns([1.5], [1], [1], [1], [1])
    with pytest.raises(ValueError, match="tol_amount"):
        reconcile_arrays(side([]), side([]), tol_amount=-1, tol_time_us=0)
    big = 1 << 62
    with pytest.raises(ValueError, match="2\\*\\*61"):
        reconcile_arrays(side([(1, big, EUR, 0, 0)]), side([]), tol_amount=0, tol_time_us=0)
    with pytest.raises(ValueError, match="currency/status"):
        reconcile_arrays(side([]), side([(1, 1, -1, 0, 0)]), tol_amount=0, tol_time_us=0)
    with pytest.raises(ValueError, match="currency/status"):
        reconcile_arrays(side([(1, 1, 1, 0, 1 << 40)]), side([]), tol_amount=0, tol_time_us=0)


def test_api_keeps_one_compiled_signature_and_releases_gil() -> None:
    """Lists, int32 and strided input all reach the kernels as C-contiguous int64."""
    strided = np.arange(20, dtype=np.int32)[::2]
    frozen = np.arange(10, dtype=np.int64)
    frozen.flags.writeable = False  # e.g. np.frombuffer over a file's bytes
    sw = RecordArrays.from_columns(strided, strided, strided, frozen, strided)
    net = RecordArrays.from_columns(list(range(10)), [0] * 10, [0] * 10, [0] * 10, [0] * 10)
    run(sw, net)
    for fn in (kernels._exact_kernel, kernels._tolerance_kernel):
        assert len(fn.signatures) == 1, fn.signatures
        assert fn.targetoptions["nogil"] is True
    # And it does run off the main thread.
    out: list[ReconResult] = []
    t = threading.Thread(target=lambda: out.append(run(sw, net)))
    t.start()
    t.join(timeout=30)
    assert out and out[0].counts()[B.MATCHED] == 2


# ----------------------------------------------------------------------- hashing


def test_hash_reference_is_stable_and_vectorised() -> None:
    # Pinned values: if these change, every stored key in every system changes with them.
    assert hash_reference("RRN000000000001") == 5781686310783963142
    assert hash_reference("") == -5426141060434712860
    assert hash_reference("ü-ref") == -2780241768236846268
    refs = [f"REF{i}" for i in range(100)] + ["", "ü-ref"]
    arr = hash_references(refs)
    assert arr.dtype == np.int64 and arr.tolist() == [hash_reference(r) for r in refs]
    assert len(set(arr.tolist())) == len(refs)
    assert hash_references([]).shape == (0,)


# ------------------------------------------------------------ kernels == reference

record = st.tuples(
    st.sampled_from([0, 1, 2, 3, 4, 5, -1, -(1 << 63), (1 << 63) - 1]),  # key: collisions
    st.integers(-20, 20),  # amount: small range so tolerance windows overlap
    st.sampled_from([EUR, USD]),
    st.integers(0, 30),  # time
    st.sampled_from([SETTLED, FAILED]),
)


def to_lists(rows: list[tuple[int, int, int, int, int]]) -> RecordLists:
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return RecordLists(*(list(c) for c in cols))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sw=st.lists(record, max_size=24),
    net=st.lists(record, max_size=24),
    tol_amount=st.integers(0, 8),
    tol_time=st.integers(0, 8),
)
def test_kernels_agree_with_reference(
    sw: list[tuple[int, int, int, int, int]],
    net: list[tuple[int, int, int, int, int]],
    tol_amount: int,
    tol_time: int,
) -> None:
    got = reconcile_arrays(side(sw), side(net), tol_amount=tol_amount, tol_time_us=tol_time)
    want = reconcile_reference(
        to_lists(sw), to_lists(net), tol_amount=tol_amount, tol_time_us=tol_time
    )
    assert got.switch_match.tolist() == want.switch_match
    assert got.network_match.tolist() == want.network_match
    assert got.switch_class.tolist() == want.switch_class
    assert got.network_class.tolist() == want.network_class
    check_consistent(got)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1))
def test_kernels_agree_with_reference_larger(n: int, seed: int) -> None:
    """Bigger inputs exercise probe chains, table wrap-around and prefetch distances."""
    rng = np.random.default_rng(seed)
    keyspace = max(1, int(n * 1.3))
    cols = []
    for size in (n, int(rng.integers(0, n + 1))):
        cols.append(
            [
                rng.integers(0, keyspace, size),
                rng.integers(0, 200, size),
                rng.choice([EUR, USD], size),
                rng.integers(0, 1000, size),
                rng.choice([SETTLED, FAILED], size, p=[0.9, 0.1]),
            ]
        )
    sw, net = (RecordArrays.from_columns(*c) for c in cols)
    got = reconcile_arrays(sw, net, tol_amount=3, tol_time_us=20)
    want = reconcile_reference(
        *(RecordLists(*(c.tolist() for c in col)) for col in cols),
        tol_amount=3,
        tol_time_us=20,
    )
    assert got.switch_match.tolist() == want.switch_match
    assert got.network_match.tolist() == want.network_match
    assert got.switch_class.tolist() == want.switch_class
    assert got.network_class.tolist() == want.network_class


@settings(max_examples=200, deadline=None)
@given(
    sw=st.lists(record, max_size=20),
    net=st.lists(record, max_size=20),
    tol_amount=st.integers(0, 8),
    tol_time=st.integers(0, 8),
)
def test_reference_grid_finds_exactly_the_brute_force_candidates(
    sw: list[tuple[int, int, int, int, int]],
    net: list[tuple[int, int, int, int, int]],
    tol_amount: int,
    tol_time: int,
) -> None:
    """The reference's grid is itself checked against all pairs, so kernels and reference
    cannot share a blind spot in the neighbour-cell logic (negative values included)."""
    a, b = to_lists(sw), to_lists(net)
    got = tolerance_candidates(
        a,
        b,
        list(range(len(sw))),
        list(range(len(net))),
        tol_amount=tol_amount,
        tol_time_us=tol_time,
    )
    want = [
        (abs(b.time_us[j] - a.time_us[i]), abs(b.amount[j] - a.amount[i]), i, j)
        for i in range(len(sw))
        for j in range(len(net))
        if a.currency[i] == b.currency[j]
        and abs(b.amount[j] - a.amount[i]) <= tol_amount
        and abs(b.time_us[j] - a.time_us[i]) <= tol_time
    ]
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize(("parts", "workers"), [(2, 1), (7, 1), (64, 1), (7, 2), (64, 3)])
def test_partitioned_exact_pass_equals_the_whole(parts: int, workers: int) -> None:
    """Keys with duplicates on both sides, negative keys, mixed dtypes: partitioned by
    the kernels, on one thread or several, the answer is the unpartitioned pass's,
    index for index."""
    from switch.backoffice.recon.kernels import exact_match_columns, exact_match_partitioned

    rng = np.random.default_rng(parts)
    n_sw, n_net = 5_000, 4_000
    keys = rng.integers(-(2**63), 2**63 - 1, 3_000, dtype=np.int64)
    sw = (rng.choice(keys, n_sw), rng.integers(1, 50, n_sw), rng.choice(
        np.array([978, 840], np.int16), n_sw), rng.integers(0, 2, n_sw).astype(np.int8))
    net = (rng.choice(keys, n_net), rng.integers(1, 50, n_net), rng.choice(
        np.array([978, 840], np.int16), n_net), rng.integers(0, 2, n_net).astype(np.int8))
    whole = exact_match_columns(*(np.ascontiguousarray(c, np.int64) for c in (*sw, *net)))
    part = exact_match_partitioned(sw, net, parts, workers=workers)
    for name in ("switch_match", "switch_class", "network_match", "network_class"):
        assert np.array_equal(getattr(part, name), getattr(whole, name)), name
    assert (whole.switch_class == 5).any() and (whole.switch_match >= 0).any()
