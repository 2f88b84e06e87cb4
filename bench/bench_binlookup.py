"""Micro-benchmark: BIN-range lookup at 100,000 ranges, one key and a batch of 10,000.

Run from the repository root: ``.venv/bin/python bench/bench_binlookup.py`` (or
``python -m bench.bench_binlookup``). With ``--write``, records the "binlookup" section of
bench/RESULTS.md.

The question it answers: which search should the per-payment path use, and which the
batch path (settlement files, replays)? Candidates, all over the same sorted ranges:
Python ``bisect`` on lists (with parallel lists, and the dict-of-starts baseline),
``numpy.searchsorted``, and a numba-compiled binary search. Keys are a fixed, seeded mix
of hits and misses spread over the whole table, so every lookup walks a cold-ish path
rather than hitting one cached key. Single-key figures are per key over a loop of 10,000
keys (the loop itself costs ~20 ns per key and is included: it is what a caller pays too).

Also measured, because they bound hot reload and the whole card-routing step: the time to
load and validate a 100,000-range TOML table, and ``RouteTable.lookup_card`` (string
prefix to target, the real per-payment call).
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.results import markdown_table, write_flag, write_section
from switch.routing.binindex import BinIndex, warm_up
from switch.routing.table import load_route_table
from switch.routing.tablespec import BIN_WIDTH

N_RANGES = 100_000
BATCH = 10_000
REPEATS = 7
TARGET_SECONDS = 0.2  # per repeat
SEED = 20250115


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) seconds per call of ``fn``."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * TARGET_SECONDS / max(elapsed, 1e-9)))
    runs = [t / number for t in timer.repeat(repeat=REPEATS, number=number)]
    return min(runs), statistics.median(runs)


def make_ranges(n: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` non-overlapping 11-digit ranges of one or two 8-digit BINs each (a route
    table refuses bounds that split an 8-digit BIN), with gaps between them."""
    rng = np.random.default_rng(seed)
    space = 10**BIN_WIDTH - 10**BIN_WIDTH // 10  # BINs start with 1-9: skip the 0 decade
    starts = np.sort(rng.choice(space // 4000, size=n, replace=False)) * 4000 + 10**10
    widths = rng.choice([999, 1999], size=n)
    return [
        (int(s), int(s + w), int(t))
        for s, w, t in zip(starts, widths, rng.integers(0, 64, size=n), strict=True)
    ]


def make_keys(ranges: list[tuple[int, int, int]], n: int, seed: int) -> np.ndarray:
    """About 80% of keys inside a range, 20% anywhere (mostly misses)."""
    rng = np.random.default_rng(seed + 1)
    pick = rng.integers(0, len(ranges), size=n)
    lows = np.array([ranges[i][0] for i in pick], dtype=np.int64)
    highs = np.array([ranges[i][1] for i in pick], dtype=np.int64)
    inside = lows + (rng.random(n) * (highs - lows + 1)).astype(np.int64)
    anywhere = rng.integers(0, 10**BIN_WIDTH, size=n, dtype=np.int64)
    return np.where(rng.random(n) < 0.8, inside, anywhere).astype(np.int64)


def _per_key(lookup: Callable[[int], int], keys: list[int]) -> Callable[[], object]:
    def run() -> object:
        for k in keys:
            lookup(k)
        return None

    return run


def _table_text(ranges: list[tuple[int, int, int]]) -> str:
    parts = [f'[targets.t{i}]\nendpoints = ["ep-{i % 4}"]\n' for i in range(64)]
    parts += [
        f'[[card.ranges]]\nlow = "{lo:011d}"\nhigh = "{hi:011d}"\ntarget = "t{t}"\n'
        for lo, hi, t in ranges
    ]
    return "".join(parts)


def main() -> None:
    write = write_flag()
    compile_s = warm_up()
    ranges = make_ranges(N_RANGES, SEED)
    t0 = time.perf_counter()
    index = BinIndex.build(ranges)
    build_s = time.perf_counter() - t0
    keys_arr = make_keys(ranges, BATCH, SEED)
    keys = keys_arr.tolist()

    # Every implementation must give the same answers before its speed means anything.
    expected = index.lookup_batch_numpy(keys_arr).tolist()
    hits = sum(1 for t in expected if t >= 0)
    for fn in (index.lookup, index.lookup_plain_bisect, index.lookup_dict_bisect,
               index.lookup_numpy, index.lookup_numba):  # fmt: skip
        assert [fn(k) for k in keys[:2000]] == expected[:2000], fn
    assert index.lookup_batch_numba(keys_arr).tolist() == expected
    assert index.lookup_batch_bisect(keys_arr).tolist() == expected

    singles = [
        ("bisect in the key's bucket (`BinIndex.lookup`)", index.lookup),
        ("bisect over all starts, parallel lists", index.lookup_plain_bisect),
        ("dict + bisect (baseline)", index.lookup_dict_bisect),
        ("numpy searchsorted, one key", index.lookup_numpy),
        ("numba binary search in the bucket, one key", index.lookup_numba),
    ]
    batches = [
        ("numba, bucketed (`BinIndex.lookup_batch`)", index.lookup_batch_numba),
        ("numpy searchsorted", index.lookup_batch_numpy),
        ("bucketed bisect in a Python loop", index.lookup_batch_bisect),
    ]
    rows = []
    for label, single in singles:
        best, median = _measure(_per_key(single, keys))
        rows.append(("one key", label, f"{best / BATCH * 1e9:,.0f} ns",
                     f"{median / BATCH * 1e9:,.0f} ns", f"{BATCH / best / 1e6:.2f} M"))  # fmt: skip
        print(f"single  {label:50} {best / BATCH * 1e9:8.0f} ns/key", flush=True)
    for label, batch in batches:
        best, median = _measure(lambda batch=batch: batch(keys_arr))  # type: ignore[misc]
        rows.append((f"batch of {BATCH:,}", label, f"{best * 1e6:,.0f} µs",
                     f"{median * 1e6:,.0f} µs", f"{BATCH / best / 1e6:.2f} M"))  # fmt: skip
        print(f"batch   {label:50} {best * 1e6:8.0f} µs/batch", flush=True)

    # The real per-payment call: card prefix string -> Target, through the route table.
    text = _table_text(ranges)
    t0 = time.perf_counter()
    table = load_route_table(text, {f"ep-{i}" for i in range(4)})
    load_s = time.perf_counter() - t0
    prefixes = [f"{k:011d}"[:8] for k in keys]
    best, median = _measure(_per_key(table.lookup_card, prefixes))  # type: ignore[arg-type]
    rows.append(("one payment", "`RouteTable.lookup_card` (8-digit prefix string)",
                 f"{best / BATCH * 1e9:,.0f} ns", f"{median / BATCH * 1e9:,.0f} ns",
                 f"{BATCH / best / 1e6:.2f} M"))  # fmt: skip
    print(f"table   lookup_card {best / BATCH * 1e9:.0f} ns; load {load_s:.2f} s", flush=True)

    body = (
        markdown_table(
            ["Lookup", "Implementation", "Cost (best)", "Cost (median)", "Keys/s/core"], rows
        )
        + "\n\n"
        f"{N_RANGES:,} non-overlapping 11-digit ranges, {BATCH:,} seeded keys "
        f"({hits / BATCH:.0%} hits). Best and median of {REPEATS} repeats of a ~0.2 s loop.\n"
        f"Index build {build_s * 1e3:.0f} ms; loading and validating the same table as "
        f"TOML ({len(text) / 1e6:.1f} MB) {load_s:.2f} s, which is what a hot reload costs "
        f"(off the payment path); numba warm-up (compile or cache load) {compile_s:.2f} s.\n\n"
        "Kept: for one key (the per-payment path), `bisect` on Python lists, narrowed first\n"
        "by a bucket table on the key's high bits (about one bucket per range), so the search\n"
        "touches 1-3 starts instead of ~17 scattered int objects; a numpy or numba call costs\n"
        "more in argument checks and boxing than the search itself. For batches, the numba\n"
        "kernel over the same bucket table (GIL released), far ahead of `searchsorted`, which\n"
        "has no bucket table and pays a cache miss per level on unsorted keys.\n"
    )
    write_section("binlookup", "BIN-range lookup at 100,000 ranges", body,
                  "bench/bench_binlookup.py", write)  # fmt: skip


if __name__ == "__main__":
    main()
