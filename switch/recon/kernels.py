"""Numba kernels for settlement reconciliation, and a thin typed API over numpy arrays.

Reconciliation pairs every switch record with at most one network settlement record and
gives each record on both sides a break class. The numeric core works on parallel int64
arrays only (hashed reference, minor-unit amount, ISO numeric currency, epoch-µs time,
small status code): strings and decimals are turned into integers once, up front
(:func:`hash_reference`), so the hot loops never touch Python objects and can run with
the GIL released (``nogil=True``) in a worker thread beside an event loop.

Matching semantics (reference.py implements exactly the same thing with dicts and loops,
and the tests hold the two to it):

Pass 1, exact on key. The first occurrence of a key on each side (lowest index) is the
*primary*; every later occurrence on the same side is ``DUPLICATE`` with no match. A
switch primary whose key has a network primary is paired with it and both get one class,
checked in this order: currency differs -> ``CURRENCY_MISMATCH``; amount differs ->
``AMOUNT_MISMATCH``; status code differs (e.g. switch FAILED, network SETTLED) ->
``STATUS_MISMATCH``; else ``MATCHED``. The order is deliberate: a currency mismatch makes
the amounts incomparable, and an amount break is worth more money than a status break.

Pass 2, tolerance, on the primaries pass 1 left unpaired (keys present on one side only).
A candidate pair (i, j) has equal currency, ``|amount_i - amount_j| <= tol_amount`` and
``|time_i - time_j| <= tol_time_us``. Candidates are ranked by (|Δtime|, |Δamount|, switch
index, network index) and accepted greedily, best first, when neither record is taken yet:
closest in time wins, and the ranking is a strict total order, so the result is
deterministic and does not depend on input order beyond the index tie-break. (This is
the classic greedy matching; because the order is strict it equals the "mutually best
pair" rounds that the pandas/polars benchmark variants use.) Accepted pairs are
``MATCHED_TOLERANCE``. Status is not compared here: the pair is a heuristic guess, and a
later layer can re-check it.

Leftovers: a switch record still unpaired is ``MISSING_AT_NETWORK``; a network record,
``MISSING_IN_SWITCH``.

Hooks for the later layers (netting, late settlement, orphan reversals): the result is
four plain arrays (match index into the other side, -1 if none, and class code per record),
and the two passes are public separately (:func:`exact_match`, :func:`tolerance_match`), so
a Python layer can run between them or re-label MISSING_* records afterwards.

Compilation and cache: every kernel is ``@njit(nogil=True, cache=True)``. The first call
in a fresh environment compiles (seconds); after that numba loads machine code from its
cache. Numba picks the cache directory in this order: ``$NUMBA_CACHE_DIR`` if set; else
``__pycache__`` next to this file if writable; else a user-wide directory
(``~/.cache/numba/...``). On a read-only install (container image, site-packages owned by
root), set ``NUMBA_CACHE_DIR`` to a writable path, or every process recompiles. Call
:func:`warm_up` at start-up so the compile/cache load is not paid inside the first
request. Note numba specialises on array layout and writability: the API passes
C-contiguous int64 arrays, and read-only inputs (e.g. np.frombuffer) compile a second
specialisation on first use.

Kernels are single-threaded (no ``parallel=True``): the throughput figures in
bench/RESULTS.md are one core, and two concurrent reconciliations use two cores.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numpy.typing import ArrayLike, NDArray

Int64Array = NDArray[np.int64]
Int8Array = NDArray[np.int8]

# Class codes as plain ints: numba freezes module-level ints into the machine code.
# BreakClass below is the public, named view of the same numbers.
_UNSET: Final = -1  # internal: not classified yet (a pass-1 leftover)
_MATCHED: Final = 0
_MATCHED_TOLERANCE: Final = 1
_AMOUNT_MISMATCH: Final = 2
_CURRENCY_MISMATCH: Final = 3
_STATUS_MISMATCH: Final = 4
_DUPLICATE: Final = 5
_MISSING_AT_NETWORK: Final = 6
_MISSING_IN_SWITCH: Final = 7
N_CLASSES: Final = 8


class BreakClass(IntEnum):
    """Per-record outcome. Values are stable: they are stored in int8 arrays and reports."""

    MATCHED = _MATCHED
    MATCHED_TOLERANCE = _MATCHED_TOLERANCE
    AMOUNT_MISMATCH = _AMOUNT_MISMATCH
    CURRENCY_MISMATCH = _CURRENCY_MISMATCH
    STATUS_MISMATCH = _STATUS_MISMATCH
    DUPLICATE = _DUPLICATE
    MISSING_AT_NETWORK = _MISSING_AT_NETWORK
    MISSING_IN_SWITCH = _MISSING_IN_SWITCH


class RecordStatus(IntEnum):
    """Suggested status codes. The kernels only compare codes for equality, so any
    vocabulary shared by both sides works; this one is what tests and benchmarks use."""

    SETTLED = 0  # approved by the switch / settled by the network
    DECLINED = 1
    FAILED = 2
    REVERSED = 3
    PENDING = 4


#: Largest record count per side: indices are packed into 31 bits in the hash table.
MAX_RECORDS: Final = (1 << 31) - 2
#: Amounts, times and tolerances used by pass 2 must stay within ±2**61 so that
#: differences and window bounds (a ± tol) cannot overflow int64.
MAX_ABS_VALUE: Final = 1 << 61
#: Default bound on pass-2 candidate pairs. Pass 2 is a band join, which degenerates to
#: quadratic when many leftovers share a currency and a near amount and time; this bound
#: turns that into a clear error instead of an out-of-memory kill.
DEFAULT_MAX_CANDIDATES: Final = 50_000_000
#: Largest currency / status code: the kernels pack a network record's currency and status
#: into one int64 (31 bits each) so that classifying a pair costs one memory access.
MAX_CODE: Final = (1 << 31) - 1
#: Open-addressing tables are kept at most half full. Linear probing at 0.5 load costs
#: ~1.5 probes per hit and ~2.5 per miss; at 0.7 the misses rise to ~6 probes, and each
#: probe beyond the first slot is a branch mispredict and often another cache line.
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 1, 2
_MIN_TABLE_BITS: Final = 4
_LOW32: Final = 0xFFFFFFFF
#: How many records ahead the probe loops prefetch their hash slot. Sized so ~16 cache
#: misses are in flight, which is what a core sustains; measured flat from 8 to 32.
_PREFETCH_AHEAD: Final = 16
_PREFETCH_HALF: Final = _PREFETCH_AHEAD // 2
# Fibonacci hashing multiplier (2**64 / golden ratio). Keys are usually blake2b output
# already, but callers (and tests) also pass small sequential ints; the multiply spreads
# those over the high bits, which are the ones the slot index uses.
_FIB = np.uint64(0x9E3779B97F4A7C15)


def table_bits_for(n: int) -> int:
    """log2 of the smallest power-of-two capacity holding ``n`` keys at <= 50% load.

    The pass-1 table is 16 bytes per slot, so it takes between 32 and 64 bytes per
    network record (e.g. 512 MiB for 10M records).
    """
    assert 0 <= n <= MAX_RECORDS, n
    need = (n * _MAX_LOAD_DEN + _MAX_LOAD_NUM - 1) // _MAX_LOAD_NUM
    return max(_MIN_TABLE_BITS, (need - 1).bit_length())


# --------------------------------------------------------------------------- kernels


def _prefetch_typer(typingctx: Any, arr: Any, idx: Any) -> Any:
    """Software prefetch of ``arr[idx]`` (LLVM ``llvm.prefetch``, read, keep in all caches).

    At 10M records the tables and arrays are far larger than the caches and every probe
    is a DRAM miss; a plain loop waits for each one in turn. Prefetching the slot of the
    record PREFETCH_AHEAD iterations ahead keeps many misses in flight and roughly halves
    the pass-1 time at 10M. A prefetch never faults, so no bounds check is needed, but the
    callers only pass in-range indices anyway.
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, aryty, ary, [args[1]], wraparound=False, boundscheck=False
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module, fnty, "llvm.prefetch.p0"
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# Called from kernels as _prefetch(array, index); the typer's extra first parameter is
# numba's typing context, which is why the call signature is spelled out for mypy.
_prefetch = cast(Callable[[NDArray[Any], int], None], intrinsic(_prefetch_typer))


@njit(nogil=True, cache=True, inline="always")
def _slot(key: np.int64, shift: np.uint64) -> int:
    """Home slot of ``key``: top bits of key * golden-ratio constant (Fibonacci hashing)."""
    return int(np.int64((np.uint64(key) * _FIB) >> shift))


@njit(nogil=True, cache=True, inline="always")
def _is_code(v: int) -> bool:
    return 0 <= v <= MAX_CODE


@njit(nogil=True, cache=True)
def _exact_kernel(
    sw_key: Int64Array,
    sw_amount: Int64Array,
    sw_currency: Int64Array,
    sw_status: Int64Array,
    net_key: Int64Array,
    net_amount: Int64Array,
    net_currency: Int64Array,
    net_status: Int64Array,
    table: Int64Array,
    payload: Int64Array,
    sw_match: Int64Array,
    sw_class: Int8Array,
    net_match: Int64Array,
    net_class: Int8Array,
) -> int:
    """Pass 1 in place: hash join on key, duplicates, pair classification.

    ``table`` (zeros, 2 * power-of-two words) is an open-addressing table with linear
    probing over the network keys. A slot is two int64 words side by side, so a probe
    touches one cache line: word 0 the key, word 1 ``(net_index + 1) << 32 |
    (switch_index + 1)``; 0 means empty, which lets the table start as plain zeros (lazily
    zeroed pages from the OS). The low half records which switch record claimed the
    network primary, so a second switch record with that key is a duplicate without
    another memory access. ``payload`` gets each network record's amount and packed
    currency/status side by side, so classifying a pair reads one cache line instead of
    three scattered ones. Switch keys absent on the network side are de-duplicated at the
    end in a small second table (they are few: the misses). Outputs must arrive as
    match = -1, class = UNSET. Returns the number of switch records with no key match.
    """
    n_sw = sw_key.shape[0]
    n_net = net_key.shape[0]
    cap = table.shape[0] // 2
    mask = cap - 1
    bits = 0
    while (1 << bits) < cap:
        bits += 1
    shift = np.uint64(64 - bits)
    ahead = _PREFETCH_AHEAD
    half = _PREFETCH_HALF

    # Network side: first occurrence is the primary, later ones are duplicates.
    for j in range(n_net):
        if j + ahead < n_net:
            _prefetch(table, 2 * _slot(net_key[j + ahead], shift))
        cur = net_currency[j]
        st = net_status[j]
        if not (_is_code(cur) and _is_code(st)):
            raise ValueError("network currency/status outside [0, 2**31)")
        payload[2 * j] = net_amount[j]
        payload[2 * j + 1] = (cur << 32) | st
        k = net_key[j]
        h = _slot(k, shift)
        while True:
            if table[2 * h + 1] == 0:
                table[2 * h] = k
                table[2 * h + 1] = (j + 1) << 32
                break
            if table[2 * h] == k:
                net_class[j] = _DUPLICATE
                break
            h = (h + 1) & mask

    # Switch side: probe; a hit claims the network primary (or is a duplicate if claimed).
    # Two-stage prefetch: the slot `ahead` records ahead, then, once that slot is cached,
    # the payload of the network record it points to, `half` records ahead.
    miss = np.empty(n_sw, np.int64)
    n_miss = 0
    for i in range(n_sw):
        if i + ahead < n_sw:
            _prefetch(table, 2 * _slot(sw_key[i + ahead], shift))
        if i + half < n_sw:
            hh = _slot(sw_key[i + half], shift)
            if table[2 * hh] == sw_key[i + half] and table[2 * hh + 1] != 0:
                jj = (table[2 * hh + 1] >> 32) - 1
                _prefetch(payload, 2 * jj)
                _prefetch(net_match, jj)
        if not (_is_code(sw_currency[i]) and _is_code(sw_status[i])):
            raise ValueError("switch currency/status outside [0, 2**31)")
        k = sw_key[i]
        h = _slot(k, shift)
        while True:
            v = table[2 * h + 1]
            if v == 0:
                miss[n_miss] = i
                n_miss += 1
                break
            if table[2 * h] == k:
                if v & _LOW32:
                    sw_class[i] = _DUPLICATE
                else:
                    table[2 * h + 1] = v | (i + 1)
                    j = (v >> 32) - 1
                    cs = payload[2 * j + 1]
                    if sw_currency[i] != (cs >> 32):
                        c = _CURRENCY_MISMATCH
                    elif sw_amount[i] != payload[2 * j]:
                        c = _AMOUNT_MISMATCH
                    elif sw_status[i] != (cs & _LOW32):
                        c = _STATUS_MISMATCH
                    else:
                        c = _MATCHED
                    sw_match[i] = j
                    net_match[j] = i
                    sw_class[i] = c
                    net_class[j] = c
                break
            h = (h + 1) & mask

    # Switch keys unknown to the network: repeated ones are duplicates of the first.
    bits2 = _MIN_TABLE_BITS
    while (1 << bits2) * _MAX_LOAD_NUM < n_miss * _MAX_LOAD_DEN:
        bits2 += 1
    mask2 = (1 << bits2) - 1
    shift2 = np.uint64(64 - bits2)
    keys2 = np.empty(1 << bits2, np.int64)
    used2 = np.zeros(1 << bits2, np.bool_)
    n_left = 0
    for m in range(n_miss):
        i = miss[m]
        k = sw_key[i]
        h = _slot(k, shift2)
        while True:
            if not used2[h]:
                used2[h] = True
                keys2[h] = k
                n_left += 1
                break
            if keys2[h] == k:
                sw_class[i] = _DUPLICATE
                break
            h = (h + 1) & mask2
    return n_left


@njit(nogil=True, cache=True, inline="always")
def _in_range(v: int) -> bool:
    """|v| <= 2**61, written without abs() because abs(INT64_MIN) overflows."""
    return -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE


@njit(nogil=True, cache=True)
def _lower_bound(cur: Int64Array, amt: Int64Array, c: int, a: int) -> int:
    """First index whose (currency, amount) >= (c, a); arrays sorted by that pair."""
    lo = 0
    hi = cur.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if cur[mid] < c or (cur[mid] == c and amt[mid] < a):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def _upper_bound(cur: Int64Array, amt: Int64Array, c: int, a: int) -> int:
    """First index whose (currency, amount) > (c, a); arrays sorted by that pair."""
    lo = 0
    hi = cur.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if cur[mid] < c or (cur[mid] == c and amt[mid] <= a):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def _tolerance_kernel(
    sw_amount: Int64Array,
    sw_currency: Int64Array,
    sw_time: Int64Array,
    net_amount: Int64Array,
    net_currency: Int64Array,
    net_time: Int64Array,
    sw_match: Int64Array,
    sw_class: Int8Array,
    net_match: Int64Array,
    net_class: Int8Array,
    tol_amount: int,
    tol_time: int,
    max_candidates: int,
) -> int:
    """Pass 2 in place: tolerance-match the unclassified records, label the rest missing.

    Network leftovers are sorted by (currency, amount); each switch leftover binary-searches
    its amount window and filters on time. Candidates are generated in (switch index,
    network index) order, then two stable sorts (|Δamount|, then |Δtime|) yield the
    ranking (|Δtime|, |Δamount|, switch, network) without a compound key that could
    overflow. Returns the number of tolerance matches.
    """
    n_sw = sw_class.shape[0]
    n_net = net_class.shape[0]
    ls = np.empty(n_sw, np.int64)
    n_ls = 0
    for i in range(n_sw):
        if sw_class[i] == _UNSET:
            if not _in_range(sw_amount[i]) or not _in_range(sw_time[i]):
                raise ValueError("switch amount/time outside ±2**61")
            ls[n_ls] = i
            n_ls += 1
    ln = np.empty(n_net, np.int64)
    n_ln = 0
    for j in range(n_net):
        if net_class[j] == _UNSET:
            if not _in_range(net_amount[j]) or not _in_range(net_time[j]):
                raise ValueError("network amount/time outside ±2**61")
            ln[n_ln] = j
            n_ln += 1
    ls = ls[:n_ls]
    ln = ln[:n_ln]

    n_found = 0
    if n_ls > 0 and n_ln > 0:
        la = net_amount[ln]
        o1 = np.argsort(la, kind="mergesort")
        o2 = np.argsort(net_currency[ln][o1], kind="mergesort")
        s_idx = ln[o1[o2]]
        s_amt = net_amount[s_idx]
        s_cur = net_currency[s_idx]
        s_time = net_time[s_idx]

        # Count first so the candidate arrays are allocated once, at the exact size, and
        # the bound is checked before any large allocation.
        lbs = np.empty(n_ls, np.int64)
        ubs = np.empty(n_ls, np.int64)
        total = 0
        for p in range(n_ls):
            i = ls[p]
            c = sw_currency[i]
            a = sw_amount[i]
            t = sw_time[i]
            lb = _lower_bound(s_cur, s_amt, c, a - tol_amount)
            ub = _upper_bound(s_cur, s_amt, c, a + tol_amount)
            lbs[p] = lb
            ubs[p] = ub
            for q in range(lb, ub):
                if abs(s_time[q] - t) <= tol_time:
                    total += 1
            if total > max_candidates:
                raise ValueError("pass-2 candidate pairs exceed max_candidates")

        cand_i = np.empty(total, np.int64)
        cand_j = np.empty(total, np.int64)
        cand_dt = np.empty(total, np.int64)
        cand_da = np.empty(total, np.int64)
        w = 0
        for p in range(n_ls):
            i = ls[p]
            a = sw_amount[i]
            t = sw_time[i]
            start = w
            for q in range(lbs[p], ubs[p]):
                dt = abs(s_time[q] - t)
                if dt <= tol_time:
                    cand_i[w] = i
                    cand_j[w] = s_idx[q]
                    cand_dt[w] = dt
                    cand_da[w] = abs(s_amt[q] - a)
                    w += 1
            if w - start > 1:
                # Within one switch record the window is in amount order; put it in
                # network-index order so the final tie-break is (switch, network).
                o = np.argsort(cand_j[start:w])
                cand_j[start:w] = cand_j[start:w][o]
                cand_dt[start:w] = cand_dt[start:w][o]
                cand_da[start:w] = cand_da[start:w][o]

        r1 = np.argsort(cand_da, kind="mergesort")
        r2 = np.argsort(cand_dt[r1], kind="mergesort")
        rank = r1[r2]
        for p in range(total):
            r = rank[p]
            i = cand_i[r]
            j = cand_j[r]
            if sw_class[i] == _UNSET and net_class[j] == _UNSET:
                sw_class[i] = _MATCHED_TOLERANCE
                net_class[j] = _MATCHED_TOLERANCE
                sw_match[i] = j
                net_match[j] = i
                n_found += 1

    for p in range(n_ls):
        if sw_class[ls[p]] == _UNSET:
            sw_class[ls[p]] = _MISSING_AT_NETWORK
    for p in range(n_ln):
        if net_class[ln[p]] == _UNSET:
            net_class[ln[p]] = _MISSING_IN_SWITCH
    return n_found


# ----------------------------------------------------------------------- typed API


def _as_i64(name: str, values: ArrayLike) -> Int64Array:
    """C-contiguous int64 view (no copy when already so); refuses lossy conversions."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype != np.int64:
        if arr.size == 0:
            arr = arr.astype(np.int64)
        elif not np.can_cast(arr.dtype, np.int64, casting="safe"):
            raise TypeError(f"{name}: cannot safely cast {arr.dtype} to int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class RecordArrays:
    """One side of a reconciliation as parallel int64 arrays (one element per record)."""

    key: Int64Array  # hash_reference() of the reference string
    amount: Int64Array  # minor units
    currency: Int64Array  # ISO 4217 numeric
    time_us: Int64Array  # epoch microseconds
    status: Int64Array  # RecordStatus (or any code shared by both sides)

    def __post_init__(self) -> None:
        n = None
        for name in ("key", "amount", "currency", "time_us", "status"):
            arr = _as_i64(name, getattr(self, name))
            object.__setattr__(self, name, arr)
            if n is None:
                n = arr.shape[0]
            elif arr.shape[0] != n:
                raise ValueError(f"{name}: length {arr.shape[0]} != key length {n}")
        if n is not None and n > MAX_RECORDS:
            raise ValueError(f"{n} records exceeds MAX_RECORDS={MAX_RECORDS}")

    def __len__(self) -> int:
        return int(self.key.shape[0])

    @classmethod
    def from_columns(
        cls,
        key: ArrayLike,
        amount: ArrayLike,
        currency: ArrayLike,
        time_us: ArrayLike,
        status: ArrayLike,
    ) -> RecordArrays:
        """Build from anything array-like (lists, other int dtypes); validated as above."""
        return cls(
            _as_i64("key", key),
            _as_i64("amount", amount),
            _as_i64("currency", currency),
            _as_i64("time_us", time_us),
            _as_i64("status", status),
        )


@dataclass(frozen=True, slots=True)
class ReconResult:
    """Per-record outcome on both sides.

    ``switch_match[i]`` is the network index paired with switch record i (-1 if none) and
    ``network_match[j]`` the reverse; the two are always mutually consistent. Classes are
    :class:`BreakClass` codes (int8); a paired record and its partner share the class.
    Arrays are owned by the result and may be modified in place by later layers.
    """

    switch_match: Int64Array
    switch_class: Int8Array
    network_match: Int64Array
    network_class: Int8Array

    def counts(self) -> dict[BreakClass, int]:
        """Records per class, switch and network side added together."""
        self._check_complete()
        total = np.bincount(self.switch_class, minlength=N_CLASSES) + np.bincount(
            self.network_class, minlength=N_CLASSES
        )
        return {cls: int(total[cls]) for cls in BreakClass}

    def breaks(self) -> int:
        """Records not (exactly or tolerance) matched, both sides together."""
        c = self.counts()
        return sum(c.values()) - c[BreakClass.MATCHED] - c[BreakClass.MATCHED_TOLERANCE]

    def _check_complete(self) -> None:
        # After exact_match() alone, leftovers are still -1; counting them would be wrong.
        if (self.switch_class < 0).any() or (self.network_class < 0).any():
            raise ValueError("result has unclassified records: run tolerance_match() first")


def _check_tolerances(tol_amount: int, tol_time_us: int, max_candidates: int) -> None:
    for name, v in (("tol_amount", tol_amount), ("tol_time_us", tol_time_us)):
        if not 0 <= v <= MAX_ABS_VALUE:
            raise ValueError(f"{name}={v} must be in [0, 2**61]")
    if max_candidates < 0:
        raise ValueError("max_candidates must be >= 0")


def exact_match(switch: RecordArrays, network: RecordArrays) -> ReconResult:
    """Pass 1 only. Leftovers (keys seen on one side only) have class -1 and match -1.

    Large arrays are allocated here with numpy rather than inside the kernel: numpy asks
    the kernel for transparent huge pages on big allocations and numba's allocator does
    not, and on the measured VM page faults made up ~20% of a 10M run otherwise.
    """
    n_sw, n_net = len(switch), len(network)
    table = np.zeros(2 << table_bits_for(n_net), np.int64)
    payload = np.empty(2 * n_net, np.int64)
    result = ReconResult(
        np.full(n_sw, -1, np.int64),
        np.full(n_sw, _UNSET, np.int8),
        np.full(n_net, -1, np.int64),
        np.full(n_net, _UNSET, np.int8),
    )
    _exact_kernel(
        switch.key,
        switch.amount,
        switch.currency,
        switch.status,
        network.key,
        network.amount,
        network.currency,
        network.status,
        table,
        payload,
        result.switch_match,
        result.switch_class,
        result.network_match,
        result.network_class,
    )
    return result


def tolerance_match(
    switch: RecordArrays,
    network: RecordArrays,
    partial: ReconResult,
    *,
    tol_amount: int,
    tol_time_us: int,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> int:
    """Pass 2, in place on ``partial``: pairs leftovers within tolerance, labels the rest
    MISSING_*. Records already classified (>= 0) are left alone, so a layer run between
    the passes can claim records by giving them a class. Returns tolerance matches."""
    _check_tolerances(tol_amount, tol_time_us, max_candidates)
    assert partial.switch_class.shape[0] == len(switch), "result/switch length differ"
    assert partial.network_class.shape[0] == len(network), "result/network length differ"
    return int(
        _tolerance_kernel(
            switch.amount,
            switch.currency,
            switch.time_us,
            network.amount,
            network.currency,
            network.time_us,
            partial.switch_match,
            partial.switch_class,
            partial.network_match,
            partial.network_class,
            tol_amount,
            tol_time_us,
            max_candidates,
        )
    )


def reconcile(
    switch: RecordArrays,
    network: RecordArrays,
    *,
    tol_amount: int,
    tol_time_us: int,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> ReconResult:
    """Both passes: every record on both sides ends with a class >= 0.

    Releases the GIL inside the kernels, so ``await anyio.to_thread.run_sync(...)`` keeps
    an event loop responsive. Raises ValueError on out-of-range pass-2 values or when
    pass 2 would exceed ``max_candidates`` pairs.
    """
    _check_tolerances(tol_amount, tol_time_us, max_candidates)
    result = exact_match(switch, network)
    tolerance_match(
        switch,
        network,
        result,
        tol_amount=tol_amount,
        tol_time_us=tol_time_us,
        max_candidates=max_candidates,
    )
    return result


def warm_up() -> float:
    """Compile or cache-load every kernel on tiny inputs; returns seconds spent.

    The inputs hit every branch that matters for typing (duplicates on both sides, all
    pair classes, a tolerance match and both missing classes), with the same dtypes and
    layout the API always passes, so no later call compiles again.
    """
    t0 = time.perf_counter()
    sw = RecordArrays.from_columns(
        key=[1, 2, 3, 4, 5, 5, 6, 7],
        amount=[100, 200, 300, 400, 500, 500, 600, 700],
        currency=[978, 978, 840, 978, 978, 978, 978, 978],
        time_us=[0, 1, 2, 3, 4, 4, 5, 1_000],
        status=[0, 0, 0, 2, 0, 0, 0, 0],
    )
    net = RecordArrays.from_columns(
        key=[1, 2, 3, 4, 5, 1, 99, 98],
        amount=[100, 201, 300, 400, 500, 100, 605, 9_000],
        currency=[978, 978, 978, 978, 978, 978, 978, 978],
        time_us=[0, 1, 2, 3, 4, 0, 6, 1_000],
        status=[0, 0, 0, 0, 0, 0, 0, 0],
    )
    res = reconcile(sw, net, tol_amount=10, tol_time_us=10)
    assert res.counts()[BreakClass.MATCHED_TOLERANCE] == 2, res
    return time.perf_counter() - t0


# ------------------------------------------------------------------ reference hashing


def hash_reference(ref: str) -> int:
    """Stable signed 64-bit hash of a reference string (blake2b, 8-byte digest).

    Not Python's hash(): that is salted per process, so the switch and the network file
    loader would disagree. 64 bits: ~0.3% chance of any collision among 10**8 references
    (birthday bound), and a collision shows up as a break, never as a silent match of
    different amounts. The string is hashed exactly as given; normalise (strip, upper-case)
    before calling if the two sides format references differently.
    """
    digest = hashlib.blake2b(ref.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def hash_references(refs: Sequence[str] | Iterable[str]) -> Int64Array:
    """hash_reference over many strings, as an int64 array (same values, element-wise).

    Joins the raw digests and reinterprets them in one step, which is ~2x faster than
    converting each digest to a Python int.
    """
    blake = hashlib.blake2b
    raw = b"".join([blake(s.encode(), digest_size=8).digest() for s in refs])
    return np.frombuffer(raw, dtype="<i8").astype(np.int64)
