"""Pure-Python reference for reconciliation: the same semantics as kernels.py, in dicts
and loops, written to be read rather than to be fast.

Two jobs: the tests check the numba kernels against it on random inputs (so a subtle
kernel bug such as a wrong probe or tie-break shows up as a disagreement), and the
benchmark times it as the "dict baseline". Keep it boring: if a semantic changes, change
it here first, in the plainest form, then make the kernels agree. The semantics are
spelled out in the kernels module docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from switch.backoffice.recon.kernels import MAX_ABS_VALUE, BreakClass

_UNSET = -1
# Plain ints rather than enum members, so the result lists hold ints (cheap to compare
# and to hand to numpy) without a conversion pass.
_MATCHED = int(BreakClass.MATCHED)
_MATCHED_TOLERANCE = int(BreakClass.MATCHED_TOLERANCE)
_AMOUNT_MISMATCH = int(BreakClass.AMOUNT_MISMATCH)
_CURRENCY_MISMATCH = int(BreakClass.CURRENCY_MISMATCH)
_STATUS_MISMATCH = int(BreakClass.STATUS_MISMATCH)
_DUPLICATE = int(BreakClass.DUPLICATE)
_MISSING_AT_NETWORK = int(BreakClass.MISSING_AT_NETWORK)
_MISSING_IN_SWITCH = int(BreakClass.MISSING_IN_SWITCH)


@dataclass(frozen=True, slots=True)
class RecordLists:
    """One side as parallel Python sequences (lists of int are fastest to iterate)."""

    key: Sequence[int]
    amount: Sequence[int]
    currency: Sequence[int]
    time_us: Sequence[int]
    status: Sequence[int]

    def __post_init__(self) -> None:
        n = len(self.key)
        for name in ("amount", "currency", "time_us", "status"):
            assert len(getattr(self, name)) == n, f"{name} length differs from key"


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """Same meaning as kernels.ReconResult, as lists."""

    switch_match: list[int]
    switch_class: list[int]
    network_match: list[int]
    network_class: list[int]


def tolerance_candidates(
    switch: RecordLists,
    network: RecordLists,
    left_sw: list[int],
    left_net: list[int],
    *,
    tol_amount: int,
    tol_time_us: int,
) -> list[tuple[int, int, int, int]]:
    """Every (|dt|, |da|, i, j) with same currency and both differences within tolerance.

    A dict grid: cells of (currency, amount // (tol_amount + 1), time // (tol_time_us + 1))
    hold network leftovers; any pair within tolerance is in the same or an adjacent cell
    in each dimension, so a switch leftover looks at 3 x 3 cells. Scanning an amount
    window instead is simpler still but goes quadratic on real amount distributions
    (many small amounts), which made this baseline ~3x slower at 10M for reasons that
    have nothing to do with dicts versus numba.
    """
    wa, wt = tol_amount + 1, tol_time_us + 1
    grid: dict[tuple[int, int, int], list[int]] = {}
    for j in left_net:
        cell = (network.currency[j], network.amount[j] // wa, network.time_us[j] // wt)
        grid.setdefault(cell, []).append(j)
    out: list[tuple[int, int, int, int]] = []
    for i in left_sw:
        c, a, t = switch.currency[i], switch.amount[i], switch.time_us[i]
        for ab in (a // wa - 1, a // wa, a // wa + 1):
            for tb in (t // wt - 1, t // wt, t // wt + 1):
                for j in grid.get((c, ab, tb), ()):
                    da, dt = abs(network.amount[j] - a), abs(network.time_us[j] - t)
                    if da <= tol_amount and dt <= tol_time_us:
                        out.append((dt, da, i, j))
    return out


def reconcile_reference(
    switch: RecordLists, network: RecordLists, *, tol_amount: int, tol_time_us: int
) -> ReferenceResult:
    """Both passes; see the kernels module docstring for the rules."""
    assert 0 <= tol_amount <= MAX_ABS_VALUE and 0 <= tol_time_us <= MAX_ABS_VALUE
    n_sw, n_net = len(switch.key), len(network.key)
    sw_match = [-1] * n_sw
    sw_class = [_UNSET] * n_sw
    net_match = [-1] * n_net
    net_class = [_UNSET] * n_net

    # Pass 1: first occurrence of a key on each side is the primary.
    net_first: dict[int, int] = {}
    for j, k in enumerate(network.key):
        if k in net_first:
            net_class[j] = _DUPLICATE
        else:
            net_first[k] = j
    sw_seen: set[int] = set()
    for i, k in enumerate(switch.key):
        if k in sw_seen:
            sw_class[i] = _DUPLICATE
            continue
        sw_seen.add(k)
        j = net_first.get(k, -1)
        if j < 0:
            continue
        if switch.currency[i] != network.currency[j]:
            c = _CURRENCY_MISMATCH
        elif switch.amount[i] != network.amount[j]:
            c = _AMOUNT_MISMATCH
        elif switch.status[i] != network.status[j]:
            c = _STATUS_MISMATCH
        else:
            c = _MATCHED
        sw_match[i], net_match[j] = j, i
        sw_class[i] = net_class[j] = c

    # Pass 2: leftovers, candidates within tolerance, greedy by (|dt|, |da|, i, j).
    left_sw = [i for i in range(n_sw) if sw_class[i] == _UNSET]
    left_net = [j for j in range(n_net) if net_class[j] == _UNSET]
    candidates = tolerance_candidates(
        switch, network, left_sw, left_net, tol_amount=tol_amount, tol_time_us=tol_time_us
    )
    candidates.sort()
    for _dt, _da, i, j in candidates:
        if sw_class[i] == _UNSET and net_class[j] == _UNSET:
            sw_class[i] = net_class[j] = _MATCHED_TOLERANCE
            sw_match[i], net_match[j] = j, i

    for i in left_sw:
        if sw_class[i] == _UNSET:
            sw_class[i] = _MISSING_AT_NETWORK
    for j in left_net:
        if net_class[j] == _UNSET:
            net_class[j] = _MISSING_IN_SWITCH
    return ReferenceResult(sw_match, sw_class, net_match, net_class)
