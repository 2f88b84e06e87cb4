"""BIN-range lookup: which route owns the card number prefix ``key``?

A card route table is a set of non-overlapping, inclusive integer ranges
``[low, high] -> target_id`` (BIN/IIN prefixes normalised to one width by
:mod:`switch.routing.table`, so that a 6-digit and an 11-digit range compare as numbers). A lookup
is "the last range whose start is <= key, if its end is >= key": one binary search over the
sorted starts. Real tables run to tens of thousands of ranges (issuer BIN files), so the
search must stay logarithmic, and it runs once per card payment.

Three implementations of the same search, kept side by side because which one wins depends
on whether you ask for one key or many (bench/bench_binlookup.py measures them; figures in
bench/RESULTS.md):

* **bisect** -- :func:`bisect.bisect_right` over a Python list of starts, with the ends and
  targets in parallel lists, narrowed first by a bucket table (see :class:`BinIndex`). For
  one key this is the cheapest (~0.35 µs at 100,000 ranges on the 2-core test box):
  everything stays a Python int, with no argument checks, boxing or foreign call.
  :meth:`BinIndex.lookup` uses it. :meth:`BinIndex.lookup_dict_bisect` (bisect the starts,
  then a dict from start to ``(end, target)``) is the textbook baseline, kept for the
  benchmark with :meth:`BinIndex.lookup_plain_bisect` (no bucket table).
* **numpy** -- :func:`numpy.searchsorted` over int64 arrays. For one key its call overhead
  (~1.5 µs) dominates; for a batch it is vectorised but, with no bucket table, pays a cache
  miss per search level on unsorted keys.
* **numba** -- the bucketed binary search compiled with ``@njit(nogil=True, cache=True)``.
  For a batch of 10,000 it is ~15x faster than ``searchsorted`` (one pass, no temporaries)
  and releases the GIL, so a worker thread can classify a settlement file beside the event
  loop. :meth:`BinIndex.lookup_batch` uses it. For one key, numba's dispatch (type checks
  on six arguments) costs more than the Python bisect.

The index is immutable once built (arrays are made read-only): a route table that holds it
can be swapped by reference during a hot reload while in-flight payments keep using the
old one.

Numba caches machine code in ``__pycache__`` next to this file (or ``$NUMBA_CACHE_DIR``);
call :func:`warm_up` at start-up so the first card payment never pays a compile.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise
from typing import Final

import numpy as np
from numpy.typing import NDArray

Int64Array = NDArray[np.int64]

#: Most ranges one index holds: above any real BIN file (a few hundred thousand entries),
#: low enough that a runaway generator fails at build, not at out-of-memory (the index
#: takes ~200 bytes per range with its Python-list mirrors).
MAX_RANGES: Final = 1_000_000
#: Keys and bounds must fit comfortably in int64; 11-digit BIN keys are < 10**11.
MAX_KEY: Final = (1 << 62) - 1
#: Target ids are small ints (an index into the route table's target list).
MAX_TARGET_ID: Final = (1 << 31) - 1
NOT_FOUND: Final = -1


class BinIndexError(ValueError):
    """Ranges that cannot form an index (overlap, inverted bounds, out of range)."""


def _frozen(values: Sequence[int]) -> Int64Array:
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.int64))
    arr.flags.writeable = False
    return arr


class BinIndex:
    """Sorted, non-overlapping inclusive ranges ``[low, high] -> target_id``; read-only.

    Build with :meth:`build`. All lookups agree (the tests hold every implementation to a
    brute-force scan); they differ only in cost.

    A bucket table narrows every search before it starts: keys are split into about
    ``len(ranges)`` buckets by their high bits (``key >> shift``), and ``buckets[b]`` is
    the number of range starts <= the first key of bucket ``b``. The binary search then
    runs over ``[buckets[b], buckets[b + 1])`` -- one or two ranges on average instead of
    all of them. That matters because at 100,000 ranges the arrays no longer sit in the
    fastest caches, and on Python lists every comparison also dereferences an int object
    somewhere in the heap: 17 dependent memory loads became 1-3 (see bench/RESULTS.md).
    The table costs at most ``2 * len(ranges) + 1`` entries.
    """

    __slots__ = (
        "_buckets",
        "_buckets_list",
        "_dict",
        "_highs",
        "_highs_list",
        "_lows",
        "_lows_list",
        "_shift",
        "_targets",
        "_tlist",
        "_top",
    )

    def __init__(self, lows: Int64Array, highs: Int64Array, targets: Int64Array) -> None:
        """Internal: use :meth:`build`, which sorts and validates."""
        assert lows.shape == highs.shape == targets.shape
        n = lows.shape[0]
        self._lows = lows
        self._highs = highs
        self._targets = targets
        self._top = int(highs[-1]) if n else -1  # every key above it misses
        bits = max(1, n.bit_length())
        self._shift = max(0, self._top.bit_length() - bits)
        n_buckets = (max(self._top, 0) >> self._shift) + 2
        assert n_buckets <= 2 * n + 2, (n_buckets, n)
        firsts = np.arange(n_buckets, dtype=np.int64) << self._shift
        self._buckets = _frozen(np.searchsorted(lows, firsts, side="right").tolist())
        # Python-int mirrors for the single-key path: bisect on a list of ints is several
        # times cheaper than indexing a numpy array from Python (each access boxes).
        self._lows_list: list[int] = lows.tolist()
        self._highs_list: list[int] = highs.tolist()
        self._tlist: list[int] = targets.tolist()
        self._buckets_list: list[int] = self._buckets.tolist()
        self._dict: dict[int, tuple[int, int]] | None = None  # built on demand (benchmark)

    @classmethod
    def build(cls, ranges: Sequence[tuple[int, int, int]]) -> BinIndex:
        """Index ``(low, high, target_id)`` ranges, inclusive at both ends.

        Raises :class:`BinIndexError` naming the offending range (by its position in
        ``ranges``) if bounds are inverted or out of range, or two ranges overlap: an
        overlap would make the answer depend on sort order, so it is refused outright.
        """
        if len(ranges) > MAX_RANGES:
            raise BinIndexError(f"{len(ranges)} ranges exceed the bound of {MAX_RANGES}")
        for pos, (low, high, target) in enumerate(ranges):
            if not 0 <= low <= high <= MAX_KEY:
                raise BinIndexError(f"range {pos}: need 0 <= low <= high <= {MAX_KEY}")
            if not 0 <= target <= MAX_TARGET_ID:
                raise BinIndexError(f"range {pos}: target id {target} out of range")
        order = sorted(range(len(ranges)), key=lambda k: ranges[k][0])
        for a, b in pairwise(order):
            if ranges[b][0] <= ranges[a][1]:
                raise BinIndexError(f"range {b} overlaps range {a}")
        lows = _frozen([ranges[k][0] for k in order])
        highs = _frozen([ranges[k][1] for k in order])
        targets = _frozen([ranges[k][2] for k in order])
        return cls(lows, highs, targets)

    def __len__(self) -> int:
        return len(self._lows_list)

    # ------------------------------------------------------------------ single key

    def lookup(self, key: int) -> int:
        """Target id of the range holding ``key``, or -1: the per-payment path
        (bisect within the key's bucket)."""
        if key > self._top or key < 0:
            return NOT_FOUND
        b = key >> self._shift
        buckets = self._buckets_list
        i = bisect_right(self._lows_list, key, buckets[b], buckets[b + 1]) - 1
        if i >= 0 and key <= self._highs_list[i]:
            return self._tlist[i]
        return NOT_FOUND

    def lookup_plain_bisect(self, key: int) -> int:
        """Bisect over every start, without the bucket table (for the benchmark)."""
        i = bisect_right(self._lows_list, key) - 1
        if i >= 0 and key <= self._highs_list[i]:
            return self._tlist[i]
        return NOT_FOUND

    def lookup_dict_bisect(self, key: int) -> int:
        """Baseline: bisect the starts, then a dict from start to (end, target)."""
        table = self._dict
        if table is None:
            table = self._dict = {
                lo: (hi, t)
                for lo, hi, t in zip(self._lows_list, self._highs_list, self._tlist, strict=True)
            }
        i = bisect_right(self._lows_list, key) - 1
        if i < 0:
            return NOT_FOUND
        high, target = table[self._lows_list[i]]
        return target if key <= high else NOT_FOUND

    def lookup_numpy(self, key: int) -> int:
        """One key through :func:`numpy.searchsorted` (for the benchmark)."""
        i = int(np.searchsorted(self._lows, key, side="right")) - 1
        if i >= 0 and key <= int(self._highs[i]):
            return int(self._targets[i])
        return NOT_FOUND

    def lookup_numba(self, key: int) -> int:
        """One key through the compiled search (for the benchmark)."""
        if self._top < 0 or not 0 <= key <= MAX_KEY:
            return NOT_FOUND
        from switch.routing import binkernels  # numba on first use only

        args = (self._lows, self._highs, self._targets, self._buckets, self._shift)
        return int(binkernels.find_one(*args, key))

    # ------------------------------------------------------------------ batches

    def lookup_batch(self, keys: Int64Array) -> Int64Array:
        """Target id (or -1) per key: the batch path (numba, GIL released)."""
        return self.lookup_batch_numba(keys)

    def lookup_batch_numba(self, keys: Int64Array) -> Int64Array:
        k = _as_keys(keys)
        out = np.full(k.shape[0], NOT_FOUND, dtype=np.int64)
        if self._top >= 0:
            from switch.routing import binkernels  # numba on first use only

            args = (self._lows, self._highs, self._targets, self._buckets, self._shift)
            binkernels.find_batch(*args, k, out)
        return out

    def lookup_batch_numpy(self, keys: Int64Array) -> Int64Array:
        k = _as_keys(keys)
        if len(self._lows_list) == 0:
            return np.full(k.shape[0], NOT_FOUND, dtype=np.int64)
        idx = np.searchsorted(self._lows, k, side="right") - 1
        safe = np.maximum(idx, 0)
        hit = (idx >= 0) & (k <= self._highs[safe])
        return np.where(hit, self._targets[safe], NOT_FOUND).astype(np.int64, copy=False)

    def lookup_batch_bisect(self, keys: Int64Array) -> Int64Array:
        k = _as_keys(keys)
        find = self.lookup
        return np.fromiter((find(x) for x in k.tolist()), dtype=np.int64, count=k.shape[0])


def _as_keys(keys: Int64Array) -> Int64Array:
    """One dtype and layout for the kernels, so numba never compiles a second variant."""
    k = np.ascontiguousarray(keys, dtype=np.int64)
    assert k.ndim == 1, "keys must be one-dimensional"
    if not k.flags.writeable:  # numba types read-only arrays separately: one more compile
        k = k.copy()
    return k


def warm_up() -> float:
    """Compile or cache-load both kernels on tiny inputs; returns seconds spent."""
    t0 = time.perf_counter()  # bench: warm-up duration, reported
    index = BinIndex.build([(10, 19, 1), (30, 39, 2)])
    assert index.lookup_numba(15) == 1 and index.lookup_numba(25) == NOT_FOUND
    got = index.lookup_batch_numba(np.array([5, 10, 39, 40], dtype=np.int64))
    assert got.tolist() == [-1, 1, 2, -1], got
    return time.perf_counter() - t0  # bench: as above
