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
``|time_i - time_j| <= tol_time_us`` (found with a grid hash join, see
``_tolerance_kernel``). Candidates are ranked by (|Δtime|, |Δamount|, switch
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

Input contract (checked; ValueError otherwise): at most MAX_RECORDS records per side;
currency and status codes in [0, 2**31) (ISO numeric codes are 3 digits); amounts and
times of pass-2 records, and both tolerances, within ±2**61 so no difference overflows.

Compilation and cache: every kernel is ``@njit(nogil=True, cache=True)``. The first call
in a fresh environment compiles (seconds); after that numba loads machine code from its
cache. Numba picks the cache directory in this order: ``$NUMBA_CACHE_DIR`` if set; else
``__pycache__`` next to this file if writable; else a user-wide directory
(``~/.cache/numba/...``). On a read-only install (container image, site-packages owned by
root), set ``NUMBA_CACHE_DIR`` to a writable path, or every process recompiles. Call
:func:`warm_up` at start-up so the compile/cache load is not paid inside the first
request. Numba compiles one specialisation per argument type, including array layout
and writability, so :class:`RecordArrays` normalises every column to a writable
C-contiguous int64 array: whatever the caller passes, the kernels see the types
:func:`warm_up` compiled, and no request ever pays a surprise compile.

Kernels are single-threaded (no ``parallel=True``): the throughput figures in
bench/RESULTS.md are one core, and two concurrent reconciliations use two cores.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, cast

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
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
#: Open-addressing tables are kept at most 3/8 full. Every extra linear probe is a
#: likely branch mispredict, which also throws away the prefetches issued behind it:
#: measured at 10M records, pass 1 took 850 ms at 0.6 load, 615 ms at 0.3, 565 ms at 0.15;
#: at 1M, 62 ms at 0.48 vs 51 ms at 0.24. 3/8 keeps the load in [0.19, 0.375].
_MAX_LOAD_NUM, _MAX_LOAD_DEN = 3, 8
_MIN_TABLE_BITS: Final = 4
_LOW32: Final = 0xFFFFFFFF
#: How many records ahead the probe loops prefetch their hash slot, and (half as far
#: ahead, once that slot has arrived) the network payload it points to. Enough misses in
#: flight to cover DRAM latency; measured flat from 16 to 64, while dropping the second
#: stage cost ~90 ms at 10M.
_PREFETCH_AHEAD: Final = 16
_PREFETCH_HALF: Final = _PREFETCH_AHEAD // 2
# Fibonacci hashing multiplier (2**64 / golden ratio). Keys are usually blake2b output
# already, but callers (and tests) also pass small sequential ints; the multiply spreads
# those over the high bits, which are the ones the slot index uses.
_FIB = np.uint64(0x9E3779B97F4A7C15)


@contextmanager
def huge_pages(enabled: bool) -> Iterator[None]:
    """Whether numpy asks the kernel for transparent huge pages (madvise) on the large
    arrays allocated inside the block.

    Worth it for hash tables probed at random (fewer TLB misses), a loss for arrays
    filled front to back: on the 2-core VM (THP in madvise mode, defrag on madvise) the
    journal's columns took 1.6-1.8 s of CPU to read with huge pages and 0.66-0.71 s
    without, nearly all of it kernel time faulting and compacting 2 MB pages. So
    ``payswitch reconcile`` turns them off, and the tables below turn them back on.
    A no-op where numpy has no such switch.
    """
    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(setter, "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    previous = setter(enabled)
    try:
        yield
    finally:
        setter(previous)


def table_bits_for(n: int) -> int:
    """log2 of the smallest power-of-two capacity holding ``n`` keys at <= 3/8 load.

    The pass-1 table is 16 bytes per slot, so it takes 43 to 85 bytes per network record
    (e.g. 512 MiB for 10M records), on top of 16 bytes of payload.
    """
    assert 0 <= n <= MAX_RECORDS, n
    need = (n * _MAX_LOAD_DEN + _MAX_LOAD_NUM - 1) // _MAX_LOAD_NUM
    return max(_MIN_TABLE_BITS, (need - 1).bit_length())


# --------------------------------------------------------------------------- kernels


def _prefetch_typer(typingctx: Any, arr: Any, idx: Any) -> Any:
    """Software prefetch of ``arr[idx]`` (LLVM ``llvm.prefetch``, read, keep in all caches).

    At 10M records the tables and arrays are far larger than the caches and every probe
    is a DRAM miss; a plain loop waits for each one in turn. Prefetching the slot of the
    record PREFETCH_AHEAD iterations ahead keeps many misses in flight; measured, it cut
    pass 1 at 10M by about a third. A prefetch never faults, so no bounds check is needed,
    but the callers only pass in-range indices anyway.
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
            builder.module, fnty, _PREFETCH_INTRINSIC
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# The intrinsic is overloaded on the pointer type, whose mangled name changed when LLVM
# went to opaque pointers (LLVM 15; numba 0.60 still ships LLVM 14).
_PREFETCH_INTRINSIC: Final = (
    "llvm.prefetch.p0" if llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
)

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
    currency/status (both >= 0) side by side, so classifying a pair reads one cache line
    instead of three scattered ones; once claimed, the same two words hold the claiming
    switch index and -1 - class, which a sequential pass turns into the network outputs.
    Switch keys absent on the network side are de-duplicated at the end in a small second
    table (they are few: the misses). Outputs must arrive as match = -1, class = UNSET.
    Returns the number of distinct switch keys with no match (pass-2 switch leftovers).
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
                    sw_class[i] = c
                    # The network side's answer goes into the payload line just read
                    # (cached, and no longer needed: later records with this key are
                    # duplicates and never look at it). Writing net_match[j] and
                    # net_class[j] here instead would cost two more cache misses per
                    # record; a sequential pass copies them out below.
                    payload[2 * j] = i
                    payload[2 * j + 1] = -1 - c
                break
            h = (h + 1) & mask

    # Network side outputs, in network order: claimed primaries carry -1 - class.
    for j in range(n_net):
        cs = payload[2 * j + 1]
        if cs < 0:
            net_match[j] = payload[2 * j]
            net_class[j] = -1 - cs

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


@njit(nogil=True, cache=True, inline="always")
def _cell_slot(c: int, ab: int, tb: int, shift: np.uint64) -> int:
    """Home slot of grid cell (currency, amount bucket, time bucket)."""
    x = np.uint64(c) * np.uint64(0xD6E8FEB86659FD93)
    x ^= np.uint64(ab) * np.uint64(0xA0761D6478BD642F)
    x ^= np.uint64(tb) * np.uint64(0xE7037ED1A0B428DB)
    return int(np.int64((x * _FIB) >> shift))


@njit(nogil=True, cache=True, inline="always")
def _pair(
    i: int,
    j: int,
    sw_match: Int64Array,
    sw_class: Int8Array,
    net_match: Int64Array,
    net_class: Int8Array,
) -> None:
    sw_match[i] = j
    net_match[j] = i
    sw_class[i] = _MATCHED_TOLERANCE
    net_class[j] = _MATCHED_TOLERANCE


@njit(nogil=True, cache=True, inline="always")
def _buckets(v: int, width: int) -> tuple[int, int]:
    """Bucket of ``v`` and the neighbour its ±(width/2 - 1) window reaches into."""
    b = v // width
    return b, (b - 1 if 2 * (v - b * width) < width else b + 1)


@njit(nogil=True, cache=True, inline="always")
def _prefetch_cells(
    grid: Int64Array,
    q_cur: Int64Array,
    q_amt: Int64Array,
    q_time: Int64Array,
    p: int,
    wa: int,
    wt: int,
    shift: np.uint64,
) -> None:
    """Prefetch the home slots of the four grid cells switch leftover ``p`` will probe."""
    ab0, ab1 = _buckets(q_amt[p], wa)
    tb0, tb1 = _buckets(q_time[p], wt)
    _prefetch(grid, 4 * _cell_slot(q_cur[p], ab0, tb0, shift))
    _prefetch(grid, 4 * _cell_slot(q_cur[p], ab0, tb1, shift))
    _prefetch(grid, 4 * _cell_slot(q_cur[p], ab1, tb0, shift))
    _prefetch(grid, 4 * _cell_slot(q_cur[p], ab1, tb1, shift))


@njit(nogil=True, cache=True)
def _grow(a: Int64Array, used: int, need: int) -> Int64Array:
    """A copy of ``a[:used]`` with room for at least ``need`` (doubling, amortised O(1))."""
    b = np.empty(max(need, 2 * a.shape[0]), np.int64)
    b[:used] = a[:used]
    return b


@njit(nogil=True, cache=True)
def _tolerance_kernel(
    sw_amount: Int64Array,
    sw_currency: Int64Array,
    sw_time: Int64Array,
    net_amount: Int64Array,
    net_currency: Int64Array,
    net_time: Int64Array,
    ls: Int64Array,
    ln: Int64Array,
    sw_match: Int64Array,
    sw_class: Int8Array,
    net_match: Int64Array,
    net_class: Int8Array,
    tol_amount: int,
    tol_time: int,
    max_candidates: int,
) -> int:
    """Pass 2 in place on the leftovers ``ls`` (switch) and ``ln`` (network), ascending
    indices whose class is UNSET: tolerance-match them, label the rest missing.

    Candidates come from a grid hash join: network leftovers are bucketed by (currency,
    amount // (2 * (tol_amount + 1)), time // (2 * (tol_time + 1))), and each switch
    leftover looks in the 2 x 2 cells its tolerance box can reach, so every pair within
    both tolerances is seen and little else. Sorting by amount and scanning an amount
    window (the obvious plan) was measured 5x slower at 10M: log-distributed amounts crowd
    the small amounts into huge windows; a time window has the same problem when tol_time
    is generous. The grid is narrow in both dimensions at once.

    Ranking is (|Δtime|, |Δamount|, switch index, network index), walked greedily. Pairs
    whose two records have no other candidate (nearly all of them in practice) are taken
    straight away: the greedy walk would accept them wherever they fall, since no other
    pair can claim either record first. Only the contested rest is sorted.
    Returns the number of tolerance matches.
    """
    n_ls = ls.shape[0]
    n_ln = ln.shape[0]
    q_amt = sw_amount[ls]
    q_time = sw_time[ls]
    q_cur = sw_currency[ls]
    l_amt = net_amount[ln]
    l_time = net_time[ln]
    l_cur = net_currency[ln]
    for p in range(n_ls):
        if not (_in_range(q_amt[p]) and _in_range(q_time[p])):
            raise ValueError("switch amount/time outside ±2**61")
    for q in range(n_ln):
        if not (_in_range(l_amt[q]) and _in_range(l_time[q])):
            raise ValueError("network amount/time outside ±2**61")
    # Buckets twice the tolerance window wide: a window (2 * tol + 1 wide) then spans at
    # most two buckets per dimension, and which neighbour it reaches is known from the
    # position inside the bucket, so each switch record looks in 4 cells, not 9.
    wa = 2 * (tol_amount + 1)
    wt = 2 * (tol_time + 1)

    # Grid over the network leftovers: open addressing on the cell, records chained.
    # A slot is [currency, amount bucket, time bucket, count << 32 | (first record + 1)]
    # (0 = empty): one cache line per probe. Inserting in reverse makes every chain
    # ascending in network index.
    bits = _MIN_TABLE_BITS
    while (1 << bits) * _MAX_LOAD_NUM < n_ln * _MAX_LOAD_DEN:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    grid = np.zeros(4 << bits, np.int64)
    nxt = np.empty(n_ln, np.int64)
    for q in range(n_ln - 1, -1, -1):
        c = l_cur[q]
        ab = l_amt[q] // wa
        tb = l_time[q] // wt
        h = _cell_slot(c, ab, tb, shift)
        while True:
            v = grid[4 * h + 3]
            if v == 0:
                grid[4 * h] = c
                grid[4 * h + 1] = ab
                grid[4 * h + 2] = tb
                nxt[q] = -1
                grid[4 * h + 3] = (1 << 32) | (q + 1)
                break
            if grid[4 * h] == c and grid[4 * h + 1] == ab and grid[4 * h + 2] == tb:
                nxt[q] = (v & _LOW32) - 1
                grid[4 * h + 3] = ((v >> 32) + 1) << 32 | (q + 1)
                break
            h = (h + 1) & mask

    # Candidates, grouped per switch leftover, each group in network-index order. The
    # cells are looked up first, so the buffers grow (and the bound is checked) outside
    # the inner loop: growing inside it made the whole loop ~60% slower.
    cap = max(16, 2 * n_ls)
    cand_p = np.empty(cap, np.int64)  # position in ls
    cand_q = np.empty(cap, np.int64)  # position in ln
    cand_dt = np.empty(cap, np.int64)
    cand_da = np.empty(cap, np.int64)
    per_net = np.zeros(n_ln, np.int64)
    per_sw = np.zeros(n_ls, np.int64)
    firsts = np.empty(4, np.int64)
    w = 0
    for p in range(n_ls):
        if p + _PREFETCH_HALF < n_ls:
            _prefetch_cells(grid, q_cur, q_amt, q_time, p + _PREFETCH_HALF, wa, wt, shift)
        a = q_amt[p]
        t = q_time[p]
        c = q_cur[p]
        ab0, ab1 = _buckets(a, wa)
        tb0, tb1 = _buckets(t, wt)
        reach = 0
        for k in range(4):
            ab = ab0 if k < 2 else ab1
            tb = tb0 if k % 2 == 0 else tb1
            h = _cell_slot(c, ab, tb, shift)
            while grid[4 * h + 3] != 0 and not (
                grid[4 * h] == c and grid[4 * h + 1] == ab and grid[4 * h + 2] == tb
            ):
                h = (h + 1) & mask
            v = grid[4 * h + 3]
            firsts[k] = (v & _LOW32) - 1
            reach += v >> 32
        if w + reach > cand_p.shape[0]:
            cand_p = _grow(cand_p, w, w + reach)
            cand_q = _grow(cand_q, w, w + reach)
            cand_dt = _grow(cand_dt, w, w + reach)
            cand_da = _grow(cand_da, w, w + reach)
        start = w
        for k in range(4):
            q = firsts[k]
            while q >= 0:
                dt = abs(l_time[q] - t)
                da = abs(l_amt[q] - a)
                if dt <= tol_time and da <= tol_amount:
                    r = w
                    while r > start and cand_q[r - 1] > q:
                        cand_q[r] = cand_q[r - 1]
                        cand_dt[r] = cand_dt[r - 1]
                        cand_da[r] = cand_da[r - 1]
                        r -= 1
                    cand_q[r] = q
                    cand_dt[r] = dt
                    cand_da[r] = da
                    cand_p[w] = p
                    w += 1
                    per_net[q] += 1
                q = nxt[q]
        per_sw[p] = w - start
        if w > max_candidates:
            raise ValueError("pass-2 candidate pairs exceed max_candidates")

    # Uncontested pairs first, then the contested ones in rank order.
    sw_taken = np.zeros(n_ls, np.bool_)
    net_taken = np.zeros(n_ln, np.bool_)
    contested = np.empty(w, np.int64)
    n_cont = 0
    for r in range(w):
        if per_sw[cand_p[r]] == 1 and per_net[cand_q[r]] == 1:
            sw_taken[cand_p[r]] = True
            net_taken[cand_q[r]] = True
            _pair(ls[cand_p[r]], ln[cand_q[r]], sw_match, sw_class, net_match, net_class)
        else:
            contested[n_cont] = r
            n_cont += 1
    contested = contested[:n_cont]
    c_dt = cand_dt[contested]
    c_da = cand_da[contested]
    if tol_time < (1 << 31) and tol_amount < (1 << 31):
        # One stable sort on a combined key (< 2**62, no overflow); stability keeps the
        # (switch, network) generation order as the final tie-break.
        rank = np.argsort(c_dt * (tol_amount + 1) + c_da, kind="mergesort")
    else:
        r1 = np.argsort(c_da, kind="mergesort")
        rank = r1[np.argsort(c_dt[r1], kind="mergesort")]
    for k in range(n_cont):
        r = contested[rank[k]]
        p = cand_p[r]
        q = cand_q[r]
        if not sw_taken[p] and not net_taken[q]:
            sw_taken[p] = True
            net_taken[q] = True
            _pair(ls[p], ln[q], sw_match, sw_class, net_match, net_class)

    n_found = 0
    for p in range(n_ls):
        if sw_taken[p]:
            n_found += 1
        else:
            sw_class[ls[p]] = _MISSING_AT_NETWORK
    for q in range(n_ln):
        if not net_taken[q]:
            net_class[ln[q]] = _MISSING_IN_SWITCH
    return n_found


# ----------------------------------------------------------------------- typed API


def _as_i64(name: str, values: ArrayLike) -> Int64Array:
    """Writable C-contiguous int64 (no copy when already so); refuses lossy conversions."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype != np.int64:
        if arr.size == 0:
            arr = arr.astype(np.int64)
        elif not np.can_cast(arr.dtype, np.int64, casting="safe"):
            raise TypeError(f"{name}: cannot safely cast {arr.dtype} to int64")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if not out.flags.writeable:
        # Read-only arrays (np.frombuffer, mmap) are a different numba type; a copy is
        # cheaper than a compile in the middle of a request. The kernels never write
        # to inputs.
        out = out.copy()
    return out


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
    return exact_match_columns(switch.key, switch.amount, switch.currency, switch.status,
                               network.key, network.amount, network.currency, network.status)


class _Scratch:
    """Buffers of the exact pass, kept from one partition to the next: allocating them
    afresh per partition page-faulted ~1.6 GB over a 10M pass (20 partitions), a second
    or more of kernel time on the measured VM; rewriting warm pages costs a memset."""

    def __init__(self) -> None:
        self._bufs: dict[str, NDArray[Any]] = {}

    def take(self, name: str, n: int, dtype: type, fill: int | None) -> NDArray[Any]:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n:
            with huge_pages(name == "table"):
                buf = np.empty(n, dtype)
            self._bufs[name] = buf
        out = buf[:n]
        if fill is not None:
            out.fill(fill)
        return out


def exact_match_columns(sw_key: Int64Array, sw_amount: Int64Array, sw_currency: Int64Array,
                        sw_status: Int64Array, net_key: Int64Array, net_amount: Int64Array,
                        net_currency: Int64Array, net_status: Int64Array, *,
                        scratch: _Scratch | None = None) -> ReconResult:
    """:func:`exact_match` on the four columns pass 1 reads (no time), each a writable
    C-contiguous int64 array (slices of larger arrays are fine: no copy is made).
    ``scratch``: where the table and the answers live (reused by the caller's next call,
    so the answers are good until then)."""
    n_sw, n_net = sw_key.shape[0], net_key.shape[0]
    for arr in (sw_key, sw_amount, sw_currency, sw_status, net_key, net_amount,
                net_currency, net_status):
        assert arr.dtype == np.int64 and arr.flags.c_contiguous and arr.flags.writeable
    assert sw_amount.shape[0] == sw_currency.shape[0] == sw_status.shape[0] == n_sw
    assert net_amount.shape[0] == net_currency.shape[0] == net_status.shape[0] == n_net
    if n_sw > MAX_RECORDS or n_net > MAX_RECORDS:
        raise ValueError(f"more than MAX_RECORDS={MAX_RECORDS} records on a side")
    if scratch is None:
        with huge_pages(True):
            table = np.zeros(2 << table_bits_for(n_net), np.int64)
            payload = np.empty(2 * n_net, np.int64)
        result = ReconResult(
            np.full(n_sw, -1, np.int64),
            np.full(n_sw, _UNSET, np.int8),
            np.full(n_net, -1, np.int64),
            np.full(n_net, _UNSET, np.int8),
        )
    else:
        table = scratch.take("table", 2 << table_bits_for(n_net), np.int64, 0)
        payload = scratch.take("payload", 2 * n_net, np.int64, None)
        result = ReconResult(
            scratch.take("sw_match", n_sw, np.int64, -1),
            scratch.take("sw_class", n_sw, np.int8, _UNSET),
            scratch.take("net_match", n_net, np.int64, -1),
            scratch.take("net_class", n_net, np.int8, _UNSET),
        )
    _exact_kernel(
        sw_key,
        sw_amount,
        sw_currency,
        sw_status,
        net_key,
        net_amount,
        net_currency,
        net_status,
        table,
        payload,
        result.switch_match,
        result.switch_class,
        result.network_match,
        result.network_class,
    )
    return result


@njit(nogil=True, cache=True)
def _partition_kernel(key: Int64Array, parts: int, order: NDArray[np.int32],
                      bounds: Int64Array) -> None:
    """Counting sort of record indices by ``key mod parts`` (as unsigned): stable, so a
    partition keeps index order (the first occurrence of a key stays the primary)."""
    n = key.shape[0]
    up = np.uint64(parts)
    for i in range(n):
        bounds[np.int64(np.uint64(key[i]) % up) + 1] += 1
    for p in range(parts):
        bounds[p + 1] += bounds[p]
    fill = bounds[:-1].copy()
    for i in range(n):
        q = np.int64(np.uint64(key[i]) % up)
        order[fill[q]] = i
        fill[q] += 1


@njit(nogil=True, cache=True)
def _gather4_kernel(idx: NDArray[np.int32], a: Any, b: Any, c: Any, d: Any,
                    out_a: Int64Array, out_b: Int64Array, out_c: Int64Array,
                    out_d: Int64Array) -> None:
    for k in range(idx.shape[0]):
        i = idx[k]
        out_a[k] = a[i]
        out_b[k] = b[i]
        out_c[k] = c[i]
        out_d[k] = d[i]


@njit(nogil=True, cache=True)
def _scatter_kernel(si: NDArray[np.int32], ni: NDArray[np.int32], part_sw_class: Int8Array,
                    part_sw_match: Int64Array, part_net_class: Int8Array,
                    part_net_match: Int64Array, sw_class: Int8Array, sw_match: Int64Array,
                    net_class: Int8Array, net_match: Int64Array) -> None:
    for k in range(si.shape[0]):
        sw_class[si[k]] = part_sw_class[k]
        m = part_sw_match[k]
        if m >= 0:
            sw_match[si[k]] = ni[m]
    for k in range(ni.shape[0]):
        net_class[ni[k]] = part_net_class[k]
        m = part_net_match[k]
        if m >= 0:
            net_match[ni[k]] = si[m]


def _partition_order(key: Int64Array, parts: int) -> tuple[NDArray[np.int32], list[int]]:
    order = np.empty(key.shape[0], np.int32)
    bounds = np.zeros(parts + 1, np.int64)
    _partition_kernel(np.ascontiguousarray(key, np.int64), parts, order, bounds)
    return order, bounds.tolist()


def exact_match_partitioned(
    sw: Sequence[NDArray[Any]], net: Sequence[NDArray[Any]], parts: int, workers: int = 1,
    on_partition: Callable[[ReconResult, NDArray[np.int32]], None] | None = None,
) -> ReconResult:
    """:func:`exact_match_columns` in ``parts`` key partitions, for bounded memory: the
    hash table and the copied columns are one partition's (``sw`` and ``net``: key,
    amount, currency, status, any integer dtypes, each side's the same length).

    Equal to the unpartitioned pass (records with one key are in one partition, in index
    order). The partitioning, the copies and the answers' way back are kernels too:
    done with numpy (argsort, fancy indexing) they took 1.7 s of CPU at 10M, more than
    the matching itself (0.7 s).

    ``workers`` > 1 matches that many partitions at once in threads (the kernels release
    the GIL; partitions hold disjoint records, so their answers never write the same
    element): memory is ``workers`` partitions' worth, so callers size ``parts`` for it.

    ``on_partition(result, si)``, when given, is called (in the thread that matched it)
    once a partition's answers are in ``result``: ``si`` are its switch records, whose
    classes are final as far as this pass goes.
    """
    assert parts >= 1 and workers >= 1 and len(sw) == len(net) == 4
    n_sw, n_net = sw[0].shape[0], net[0].shape[0]
    if max(n_sw, n_net) > MAX_RECORDS:
        raise ValueError(f"more than MAX_RECORDS={MAX_RECORDS} records on a side")
    result = ReconResult(np.full(n_sw, -1, np.int64), np.full(n_sw, -1, np.int8),
                         np.full(n_net, -1, np.int64), np.full(n_net, -1, np.int8))
    if workers > 1 and parts > 1:  # the two sides' counting sorts at once too
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-exact") as one_more:
            net_sorted = one_more.submit(_partition_order, net[0], parts)
            sw_order, sw_bounds = _partition_order(sw[0], parts)
            net_order, net_bounds = net_sorted.result()
    else:
        sw_order, sw_bounds = _partition_order(sw[0], parts)
        net_order, net_bounds = _partition_order(net[0], parts)
    sw_cols = [np.ascontiguousarray(c) for c in sw]
    net_cols = [np.ascontiguousarray(c) for c in net]

    local = threading.local()  # one _Scratch per thread

    def one(p: int) -> None:
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = _Scratch()
        si = sw_order[sw_bounds[p]:sw_bounds[p + 1]]
        ni = net_order[net_bounds[p]:net_bounds[p + 1]]
        a = [scratch.take(f"sw{k}", si.shape[0], np.int64, None) for k in range(4)]
        b = [scratch.take(f"net{k}", ni.shape[0], np.int64, None) for k in range(4)]
        _gather4_kernel(si, *sw_cols, *a)
        _gather4_kernel(ni, *net_cols, *b)
        r = exact_match_columns(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3],
                                scratch=scratch)
        _scatter_kernel(si, ni, r.switch_class, r.switch_match, r.network_class,
                        r.network_match, result.switch_class, result.switch_match,
                        result.network_class, result.network_match)
        if on_partition is not None:
            on_partition(result, si)

    if workers == 1 or parts == 1:
        for p in range(parts):
            one(p)
        return result
    from concurrent.futures import ThreadPoolExecutor

    # Compiled (or loaded from the cache) once, here, rather than raced for by threads.
    one(0)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recon-exact") as pool:
        for done in pool.map(one, range(1, parts)):
            assert done is None
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
    # Finding the leftovers is a plain vectorised scan; numpy does it at memory speed.
    ls = np.flatnonzero(partial.switch_class == _UNSET).astype(np.int64, copy=False)
    ln = np.flatnonzero(partial.network_class == _UNSET).astype(np.int64, copy=False)
    return int(
        _tolerance_kernel(
            switch.amount,
            switch.currency,
            switch.time_us,
            network.amount,
            network.currency,
            network.time_us,
            ls,
            ln,
            partial.switch_match,
            partial.switch_class,
            partial.network_match,
            partial.network_class,
            tol_amount,
            tol_time_us,
            max_candidates,
        )
    )


def reconcile_arrays(
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
    t0 = time.perf_counter()  # bench: warm-up duration, reported
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
    res = reconcile_arrays(sw, net, tol_amount=10, tol_time_us=10)
    assert res.counts()[BreakClass.MATCHED_TOLERANCE] == 2, res
    return time.perf_counter() - t0  # bench: as above


# ------------------------------------------------------------------ reference hashing


def hash_reference(ref: str) -> int:
    """Stable signed 64-bit hash of a reference string (blake2b, 8-byte digest).

    Not Python's hash(): that is salted per process, so the switch and the network file
    loader would disagree. 64 bits: ~0.03% chance of any collision among 10**8
    references (birthday bound); a collision makes two unrelated records share a key,
    which surfaces as a DUPLICATE or (unless the amounts happen to agree) an
    AMOUNT_MISMATCH. The string is hashed exactly as given; normalise (strip, upper-case)
    before calling if the two sides format references differently.
    """
    digest = hashlib.blake2b(ref.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def hash_references(refs: Sequence[str] | Iterable[str]) -> Int64Array:
    """hash_reference over many strings, as an int64 array (same values, element-wise).

    Joins the raw digests and reinterprets them in one step, ~25% faster than converting
    each digest to a Python int (0.48 vs 0.63 s per million here); hashing dominates.
    """
    blake = hashlib.blake2b
    raw = b"".join([blake(s.encode(), digest_size=8).digest() for s in refs])
    return np.frombuffer(raw, dtype="<i8").astype(np.int64)


# ------------------------------------------------------- columnar reconciliation helpers
#
# The end-to-end command (switch.backoffice.recon.reconcile) reads both sides as columns:
# the journal's column chunks (switch/journal/columns.py) and settlement files as Arrow
# string buffers. These kernels hash the file side's references exactly as the journal
# hashed its own (xxh64 of the UTF-8 bytes, seeded by the channel) and fold each
# payment's outcomes onto its intent, without a Python object per record.

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


@njit(nogil=True, cache=True, inline="always")
def _rotl(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(nogil=True, cache=True, inline="always")
def _read64(data: NDArray[np.uint8], p: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(7, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(data[p + k])
    return v


@njit(nogil=True, cache=True, inline="always")
def _read32(data: NDArray[np.uint8], p: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(3, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(data[p + k])
    return v


@njit(nogil=True, cache=True, inline="always")
def _xxh_round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    acc = acc + lane * _P2
    acc = _rotl(acc, 31)
    return acc * _P1


@njit(nogil=True, cache=True, inline="always")
def _xxh_merge(acc: np.uint64, val: np.uint64) -> np.uint64:
    acc = acc ^ _xxh_round(np.uint64(0), val)
    return acc * _P1 + _P4


@njit(nogil=True, cache=True)
def _xxh64(data: NDArray[np.uint8], p: int, end: int, seed: np.uint64) -> np.uint64:
    length = end - p
    if length >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        limit = end - 32
        while p <= limit:
            v1 = _xxh_round(v1, _read64(data, p))
            v2 = _xxh_round(v2, _read64(data, p + 8))
            v3 = _xxh_round(v3, _read64(data, p + 16))
            v4 = _xxh_round(v4, _read64(data, p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _xxh_merge(h, v1)
        h = _xxh_merge(h, v2)
        h = _xxh_merge(h, v3)
        h = _xxh_merge(h, v4)
    else:
        h = seed + _P5
    h = h + np.uint64(length)
    while p + 8 <= end:
        h = h ^ _xxh_round(np.uint64(0), _read64(data, p))
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= end:
        h = h ^ (_read32(data, p) * _P1)
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h = h ^ (np.uint64(data[p]) * _P5)
        h = _rotl(h, 11) * _P1
        p += 1
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


@njit(nogil=True, cache=True)
def _xxh64_column(data: NDArray[np.uint8], offsets: Int64Array, seed: np.uint64,
                  out: NDArray[np.uint64]) -> None:
    for i in range(offsets.shape[0] - 1):
        out[i] = _xxh64(data, offsets[i], offsets[i + 1], seed)


def hash_utf8_column(data: NDArray[np.uint8], offsets: Int64Array, seed: int) -> Int64Array:
    """xxh64 of every string of an Arrow-style (data, offsets) column, as signed int64.

    Element-wise equal to ``switch.journal.columns.reference_key(seed, s)``.
    """
    out = np.empty(max(0, offsets.shape[0] - 1), np.uint64)
    _xxh64_column(np.ascontiguousarray(data, np.uint8),
                  np.ascontiguousarray(offsets, np.int64), np.uint64(seed), out)
    return out.view(np.int64)


#: Per-payment flags produced by :func:`fold_outcomes`.
FLAG_STOOD_IN: Final = 1
FLAG_ADVICE_DELIVERED: Final = 2
FLAG_ADVICE_REFUSED: Final = 4
FLAG_DUPLICATE_INTENT: Final = 8


@njit(nogil=True, cache=True)
def _fold_kernel(int_pid: Int64Array, out_pid: Int64Array, out_time: Int64Array,
                 out_status: Int8Array, out_kind: Int8Array, out_flags: Int8Array,
                 table: NDArray[np.int32], status: Int8Array, time_us: Int64Array,
                 flags: Int8Array) -> int:
    """Hash join of outcomes onto intents by payment-id hash; the last outcome wins.

    ``table`` holds intent index + 1 (0 = empty), linear-probed; the key is compared
    through ``int_pid``, so the table costs 4 bytes a slot (128 MB for 10M intents).
    Kinds: 1 unknown, 2 final, 3 advice delivered, 4 advice refused. Returns outcomes
    with no intent (payments decided before anything was sent, e.g. risk declines).
    """
    cap = table.shape[0]
    bits = 0
    while (1 << bits) < cap:
        bits += 1
    shift = np.uint64(64 - bits)
    mask = cap - 1
    n_int = int_pid.shape[0]
    for i in range(n_int):
        if i + _PREFETCH_AHEAD < n_int:
            _prefetch(table, _slot(int_pid[i + _PREFETCH_AHEAD], shift))
        k = int_pid[i]
        h = _slot(k, shift)
        while True:
            v = table[h]
            if v == 0:
                table[h] = i + 1
                break
            if int_pid[v - 1] == k:
                flags[i] |= FLAG_DUPLICATE_INTENT
                break
            h = (h + 1) & mask
    orphans = 0
    n_out = out_pid.shape[0]
    for j in range(n_out):
        if j + _PREFETCH_AHEAD < n_out:
            _prefetch(table, _slot(out_pid[j + _PREFETCH_AHEAD], shift))
        k = out_pid[j]
        h = _slot(k, shift)
        idx = -1
        while True:
            v = table[h]
            if v == 0:
                break
            if int_pid[v - 1] == k:
                idx = v - 1
                break
            h = (h + 1) & mask
        if idx < 0:
            orphans += 1
            continue
        kind = out_kind[j]
        if kind == 1 or kind == 2:
            status[idx] = out_status[j]
            time_us[idx] = out_time[j]
            if kind == 2:
                if out_flags[j] & 1:
                    flags[idx] |= FLAG_STOOD_IN
                else:
                    flags[idx] &= ~FLAG_STOOD_IN
        elif kind == 3:
            flags[idx] |= FLAG_ADVICE_DELIVERED
        elif kind == 4:
            flags[idx] |= FLAG_ADVICE_REFUSED
    return orphans


def fold_outcomes(int_pid: Int64Array, int_time: Int64Array, out_pid: Int64Array,
                  out_time: Int64Array, out_status: NDArray[np.int8],
                  out_kind: NDArray[np.int8], out_flags: NDArray[np.int8],
                  pending: int, *, overwrite_time: bool = False,
                  ) -> tuple[Int8Array, Int64Array, Int8Array, int]:
    """Per intent: last status (``pending`` when none), its time, and FLAG_* bits.

    ``overwrite_time``: the times are folded into ``int_time`` itself (a writable
    contiguous int64 array the caller is done with: 80 MB less at 10M intents)."""
    n = int_pid.shape[0]
    with huge_pages(True):
        table = np.zeros(1 << table_bits_for(n), np.int32)
    status = np.full(n, pending, np.int8)
    if overwrite_time:
        assert int_time.dtype == np.int64 and int_time.flags.c_contiguous
        assert int_time.flags.writeable
        time_us = int_time
    else:
        time_us = np.array(int_time, np.int64, copy=True)
    flags = np.zeros(n, np.int8)
    orphans = _fold_kernel(
        np.ascontiguousarray(int_pid, np.int64), np.ascontiguousarray(out_pid, np.int64),
        np.ascontiguousarray(out_time, np.int64), np.ascontiguousarray(out_status, np.int8),
        np.ascontiguousarray(out_kind, np.int8), np.ascontiguousarray(out_flags, np.int8),
        table, status, time_us, flags)
    return status, time_us, flags, int(orphans)


@njit(nogil=True, cache=True)
def _mark_late_kernel(sw_kind: Int8Array, net_kind: Int8Array, sw_match: Int64Array,
                      sw_time: Int64Array, net_time: Int64Array, late_after_us: float,
                      matched: int, matched_tolerance: int, late: int) -> int:
    n = 0
    for i in range(sw_kind.shape[0]):
        k = sw_kind[i]
        j = sw_match[i]
        paired = (k == matched or k == matched_tolerance) and j >= 0  # noqa: SIM109
        if paired and float(net_time[j] - sw_time[i]) > late_after_us:
            sw_kind[i] = late
            net_kind[j] = late
            n += 1
    return n


def mark_late(sw_kind: Int8Array, net_kind: Int8Array, sw_match: Int64Array,
              sw_time: Int64Array, net_time: Int64Array, late_after_us: float,
              late: int) -> int:
    """In place: a switch record matched (exactly or within tolerance) whose partner
    settled more than ``late_after_us`` after it, and that partner, get class ``late``.
    One pass, no temporaries (the numpy form took ~300 MB at 10M pairs). Returns how
    many pairs."""
    return int(_mark_late_kernel(
        sw_kind, net_kind, np.ascontiguousarray(sw_match, np.int64),
        np.ascontiguousarray(sw_time, np.int64), np.ascontiguousarray(net_time, np.int64),
        float(late_after_us), _MATCHED, _MATCHED_TOLERANCE, late))


@njit(nogil=True, cache=True)
def _group_sums_kernel(codes: Int64Array, amounts: Int64Array, counts: Int64Array,
                       sums: Int64Array) -> None:
    for i in range(codes.shape[0]):
        c = codes[i]
        counts[c] += 1
        sums[c] += amounts[i]


@njit(nogil=True, cache=True)
def _kind_currency_sums_kernel(kind: Int8Array, currency: NDArray[np.int16],
                               amount: Int64Array, counts: Int64Array,
                               sums: Int64Array) -> None:
    for i in range(kind.shape[0]):
        c = np.int64(kind[i]) * 1024 + (np.int64(currency[i]) & 1023)
        counts[c] += 1
        sums[c] += amount[i]


def kind_currency_sums(kind: Int8Array, currency: NDArray[np.int16], amount: Int64Array,
                       n_kinds: int) -> tuple[Int64Array, Int64Array]:
    """:func:`group_sums` by ``kind * 1024 + currency % 1024`` (kinds in [0, n_kinds)),
    without building the codes: at 10M records that was an 80 MB temporary a side."""
    assert kind.shape[0] == currency.shape[0] == amount.shape[0]
    assert kind.shape[0] == 0 or (int(kind.min()) >= 0 and int(kind.max()) < n_kinds)
    counts = np.zeros(n_kinds * 1024, np.int64)
    sums = np.zeros(n_kinds * 1024, np.int64)
    _kind_currency_sums_kernel(np.ascontiguousarray(kind, np.int8),
                               np.ascontiguousarray(currency, np.int16),
                               np.ascontiguousarray(amount, np.int64), counts, sums)
    return counts, sums


def group_sums(codes: Int64Array, amounts: Int64Array,
               n_groups: int) -> tuple[Int64Array, Int64Array]:
    """Records and exact int64 amount sums per group code in [0, n_groups)."""
    counts = np.zeros(n_groups, np.int64)
    sums = np.zeros(n_groups, np.int64)
    _group_sums_kernel(np.ascontiguousarray(codes, np.int64),
                       np.ascontiguousarray(amounts, np.int64), counts, sums)
    return counts, sums


# ------------------------------------------------------------- settlement CSV parsing
#
# The card clearing file (``D,ref,sec,amount,currency,status,time``) and the QR scheme
# CSV (``ref,merchant,amount,currency,status,time``) parsed, checked and their
# references hashed in one pass over the bytes, with the GIL released. Through polars
# the same took a CSV parse, a byte scan for what polars tolerates and the strict rules
# do not, an Arrow conversion and a second pass to hash: ~3 s of CPU for 8M records,
# most of a 10M reconciliation's file reading. The kernel accepts a subset of what the
# strict decoders in switch.protocols.settlement_files accept (plain printable ASCII,
# no quoting, integers as ``-?[0-9]{1,19}`` within 64 bits and within the decoders'
# bounds on amounts and times, amounts unsigned, a known currency, status
# ``settled|reversed``) and says "not sure" on anything else; the caller then hands the
# file to the strict decoder, which accepts it or names the line and field. So the fast
# path can never accept what the strict one refuses, nor read a value differently.

#: Layouts of :func:`parse_settlement_csv`.
CSV_CARD: Final = 0
CSV_QR: Final = 1
_COMMA, _NL, _QUOTE, _MINUS = 44, 10, 34, 45


@njit(nogil=True, cache=True, inline="always")
def _csv_text(data: NDArray[np.uint8], p: int, end: int) -> int:
    """End of a text field starting at ``p`` (the comma's index), or -1 when a byte is
    outside printable ASCII, is a quote, or no comma follows on the line."""
    while p < end:
        c = data[p]
        if c == _COMMA:
            return p
        if c < 32 or c > 126 or c == _QUOTE:
            return -1
        p += 1
    return -1


@njit(nogil=True, cache=True, inline="always")
def _csv_int(data: NDArray[np.uint8], p: int, end: int,
             signed: bool) -> tuple[np.int64, int]:
    """``-?[0-9]{1,19}`` in the int64 range at ``p``: (value, index after it), or
    (0, -1) when it is not one."""
    neg = False
    if signed and p < end and data[p] == _MINUS:
        neg = True
        p += 1
    start = p
    v = np.uint64(0)
    while p < end and 48 <= data[p] <= 57:
        if p - start == 19:
            return np.int64(0), -1
        v = v * np.uint64(10) + np.uint64(data[p] - 48)
        p += 1
    if p == start:
        return np.int64(0), -1
    if neg:
        if v > np.uint64(9223372036854775808):
            return np.int64(0), -1
        if v == np.uint64(9223372036854775808):
            return np.int64(-9223372036854775807 - 1), p
        return -np.int64(v), p
    if v > np.uint64(9223372036854775807):
        return np.int64(0), -1
    return np.int64(v), p


@njit(nogil=True, cache=True, inline="always")
def _csv_status(data: NDArray[np.uint8], p: int, end: int) -> tuple[int, int]:
    """``settled,`` -> (0, index of the comma), ``reversed,`` -> (3, ...), else (-1, -1)."""
    if p + 7 < end and data[p + 7] == _COMMA and data[p] == 115 and data[p + 1] == 101 \
            and data[p + 2] == 116 and data[p + 3] == 116 and data[p + 4] == 108 \
            and data[p + 5] == 101 and data[p + 6] == 100:  # settled
        return 0, p + 7
    if p + 8 < end and data[p + 8] == _COMMA and data[p] == 114 and data[p + 1] == 101 \
            and data[p + 2] == 118 and data[p + 3] == 101 and data[p + 4] == 114 \
            and data[p + 5] == 115 and data[p + 6] == 101 and data[p + 7] == 100:  # reversed
        return 3, p + 8
    return -1, -1


@njit(nogil=True, cache=True)
def _settlement_csv_kernel(
    data: NDArray[np.uint8], start: int, end: int, layout: int, seed: np.uint64,
    numeric_ok: NDArray[np.bool_], alpha_numeric: NDArray[np.int16], keep_secondary: bool,
    max_abs_amount: np.int64, min_time: np.int64, max_time: np.int64,
    key: NDArray[np.uint64], amount: Int64Array, currency: NDArray[np.int16],
    status: Int8Array, time_us: Int64Array, ref_off: Int64Array, ref_data: NDArray[np.uint8],
    sec_off: Int64Array, sec_data: NDArray[np.uint8],
) -> tuple[int, Any, float]:
    """Records of ``data[start:end]`` (whole lines) into the output columns.

    Returns (records, amount sum, sum of |amount| as float); records is -1 when the
    bytes are not all plain records, a value is out of bounds (``0 <= amount <
    max_abs_amount``, ``min_time <= time < max_time``), or there are more lines than
    the outputs hold."""
    cap = key.shape[0]
    i = 0
    p = start
    total = np.int64(0)
    bound = 0.0
    ref_off[0] = 0
    sec_off[0] = 0
    rp = 0
    sp = 0
    while p < end:
        if i == cap:
            return -1, 0, 0.0
        if layout == CSV_CARD:
            if p + 1 >= end or data[p] != 68 or data[p + 1] != _COMMA:  # "D,"
                return -1, 0, 0.0
            p += 2
        q = _csv_text(data, p, end)
        if q <= p:  # bad byte, or an empty reference
            return -1, 0, 0.0
        key[i] = _xxh64(data, p, q, seed)
        for k in range(p, q):
            ref_data[rp] = data[k]
            rp += 1
        ref_off[i + 1] = rp
        p = q + 1
        q = _csv_text(data, p, end)
        if q < 0:
            return -1, 0, 0.0
        if keep_secondary:
            for k in range(p, q):
                sec_data[sp] = data[k]
                sp += 1
            sec_off[i + 1] = sp
        p = q + 1
        # Unsigned: a negative amount is refused by the strict decoder, which names it.
        a, p = _csv_int(data, p, end, False)
        if p < 0 or p >= end or data[p] != _COMMA or a >= max_abs_amount:
            return -1, 0, 0.0
        p += 1
        if layout == CSV_CARD:
            c, p = _csv_int(data, p, end, False)
            if p < 0 or p >= end or data[p] != _COMMA or c >= numeric_ok.shape[0] \
                    or not numeric_ok[c]:
                return -1, 0, 0.0
            currency[i] = c
        else:
            if p + 3 >= end or data[p + 3] != _COMMA:
                return -1, 0, 0.0
            c0, c1, c2 = int(data[p]) - 65, int(data[p + 1]) - 65, int(data[p + 2]) - 65
            if not (0 <= c0 <= 25 and 0 <= c1 <= 25 and 0 <= c2 <= 25):
                return -1, 0, 0.0
            num = alpha_numeric[(c0 * 26 + c1) * 26 + c2]
            if num < 0:
                return -1, 0, 0.0
            currency[i] = num
            p += 3
        st, p = _csv_status(data, p + 1, end)
        if st < 0:
            return -1, 0, 0.0
        t, p = _csv_int(data, p + 1, end, True)
        if p < 0 or p >= end or data[p] != _NL or t < min_time or t >= max_time:
            return -1, 0, 0.0
        p += 1
        amount[i] = a
        status[i] = st
        time_us[i] = t
        total += a
        bound += abs(float(a))
        i += 1
    return i, total, bound


@njit(nogil=True, cache=True)
def _count_byte_kernel(data: NDArray[np.uint8], byte: int) -> int:
    n = 0
    for i in range(data.shape[0]):
        n += data[i] == byte
    return n


def count_byte(data: bytes | mmap.mmap, byte: int) -> int:
    """How many times ``byte`` occurs in ``data`` (bytes.count, for a mapped file too)."""
    return int(_count_byte_kernel(np.frombuffer(data, np.uint8), byte))


def parse_settlement_csv(
    data: bytes | mmap.mmap, start: int, end: int, records: int, layout: int, seed: int,
    numeric_ok: NDArray[np.bool_], alpha_numeric: NDArray[np.int16], keep_secondary: bool,
) -> tuple[dict[str, NDArray[Any]], int] | None:
    """``records`` CSV records of ``data[start:end]`` as columns: key (the reference's
    xxh64, seeded), amount, currency, status, time_us, and the reference (and, when
    ``keep_secondary``, the secondary) strings as Arrow-style offsets + bytes. Also the
    exact amount sum. None when the kernel is not sure (see above): the strict decoder
    decides.

    ``numeric_ok[c]``: ISO numeric code ``c`` is known (card layout).
    ``alpha_numeric[(a*26 + b)*26 + c]``: numeric code of the alpha code (``a``, ``b``,
    ``c`` the letters' offsets from 'A'), -1 when unknown (QR layout).
    Amounts and times past the strict decoders' bounds make it unsure too."""
    # Here, not at the top: the codecs' module brings polars, pyarrow and lxml (~0.14 s),
    # which the matching kernels' users (bench, tests, the demo) do not need.
    from switch.protocols.settlement_files import MAX_ABS_AMOUNT, MAX_TIME_US, MIN_TIME_US

    buf = np.frombuffer(data, np.uint8)
    span = end - start
    key = np.empty(records, np.uint64)
    amount = np.empty(records, np.int64)
    currency = np.empty(records, np.int16)
    status = np.empty(records, np.int8)
    time_us = np.empty(records, np.int64)
    ref_off = np.empty(records + 1, np.int64)
    # Capacity for every byte of the span; only what is written is ever touched.
    ref_data = np.empty(span, np.uint8)
    sec_off = np.zeros(records + 1 if keep_secondary else 1, np.int64)
    sec_data = np.empty(span if keep_secondary else 0, np.uint8)
    n, total, bound = _settlement_csv_kernel(
        buf, start, end, layout, np.uint64(seed), numeric_ok, alpha_numeric, keep_secondary,
        # Passed, not read as globals: numba freezes a global into its cached machine
        # code, and its cache would not see the constants change in another module.
        np.int64(MAX_ABS_AMOUNT), np.int64(MIN_TIME_US), np.int64(MAX_TIME_US),
        key, amount, currency, status, time_us, ref_off, ref_data, sec_off, sec_data)
    if n != records or bound >= 2.0 ** 62:  # the int64 sum could have wrapped
        return None
    return {
        "key": key.view(np.int64), "amount": amount, "currency": currency,
        "status": status, "time_us": time_us,
        "ref_off": ref_off, "ref_data": ref_data[:ref_off[-1]].copy(),
        "sec_off": sec_off, "sec_data": sec_data[:sec_off[-1]].copy(),
    }, int(total)
