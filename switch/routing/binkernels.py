"""The BIN index's compiled searches (numba): imported only when a batch or benchmark asks.

Kept apart from :mod:`switch.routing.binindex` so that loading a route table -- and so
every ``payswitch`` subcommand that reads a config -- never pays numba's import (~0.5 s).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

Int64Array = NDArray[np.int64]


@njit(nogil=True, cache=True)
def find_one(
    lows: Int64Array,
    highs: Int64Array,
    targets: Int64Array,
    buckets: Int64Array,
    shift: int,
    key: int,
) -> int:
    """Binary search for the last start <= key within the key's bucket; -1 if none or
    key is past that range's end (see BinIndex for the bucket table)."""
    if key < 0 or key > highs[-1]:
        return -1
    b = key >> shift
    lo = buckets[b]
    hi = buckets[b + 1]
    while lo < hi:  # invariant: lows[:lo] <= key < lows[hi:]
        mid = (lo + hi) >> 1
        if lows[mid] <= key:
            lo = mid + 1
        else:
            hi = mid
    i = lo - 1
    if i >= 0 and key <= highs[i]:
        return int(targets[i])
    return -1


@njit(nogil=True, cache=True)
def find_batch(
    lows: Int64Array,
    highs: Int64Array,
    targets: Int64Array,
    buckets: Int64Array,
    shift: int,
    keys: Int64Array,
    out: Int64Array,
) -> None:
    """``out[j] = lookup(keys[j])`` for every j: one loop, no temporaries, GIL released."""
    top = highs[-1]
    for j in range(keys.shape[0]):
        key = keys[j]
        out[j] = -1
        if key < 0 or key > top:
            continue
        b = key >> shift
        lo = buckets[b]
        hi = buckets[b + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if lows[mid] <= key:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i >= 0 and key <= highs[i]:
            out[j] = targets[i]
