"""The breaks of a reconciliation as columns, and as Break objects only when asked for.

A 10M-record reconciliation can list a few hundred thousand breaks. Building a Python
``Record`` for each side of each of them, then a ``Break``, then a CSV row from those,
took ~5 s of a 10M run; the columns (kind, switch index, network index, money at stake)
are already there after the match. So breaks.csv is written from the columns
(:func:`switch.backoffice.recon.outputs.write_outputs`), the strings of the breaks are
read once, in one batch per side (:attr:`Side.texts`), and :class:`LazyBreaks` builds
``Break`` objects only for the ones a caller looks at (the CLI's first 20, the summary's
first 50, a test's every one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, overload

import numpy as np
from numpy.typing import NDArray

from switch.backoffice.recon.classes import (
    EXPLAINED,
    KIND_NAMES,
    SUGGESTED_ACTION,
    Break,
)
from switch.backoffice.recon.sides import Side

_EXPLAINED_CODES: Final = np.array([name in EXPLAINED for name in KIND_NAMES])


@dataclass(frozen=True, slots=True)
class BreakTable:
    """One row per break, in report order (severity, then money at stake, largest first).

    ``sw`` / ``net`` index the two sides (-1: that side has no record of it); ``kind``
    indexes :data:`KIND_NAMES`; ``stake`` is the money at stake in minor units (the
    difference of an amount break, else the amount).
    """

    kind: NDArray[np.int8]
    sw: NDArray[np.int64]
    net: NDArray[np.int64]
    stake: NDArray[np.int64]
    switch: Side
    network: Side

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def unexplained(self) -> int:
        return int((~_EXPLAINED_CODES[self.kind]).sum())

    def build(self, rows: NDArray[np.int64]) -> list[Break]:
        """Break objects of rows ``rows`` (each side's records read in one batch)."""
        sw, net = self.sw[rows], self.net[rows]
        has_sw, has_net = sw >= 0, net >= 0
        sw_records = iter(self.switch.records(sw[has_sw]))
        net_records = iter(self.network.records(net[has_net]))
        out = []
        for k, s, n in zip(self.kind[rows].tolist(), has_sw.tolist(), has_net.tolist(),
                           strict=True):
            name = KIND_NAMES[k]
            out.append(Break(name, next(sw_records) if s else None,
                             next(net_records) if n else None, SUGGESTED_ACTION[name]))
        return out


class LazyBreaks(Sequence[Break]):
    """The report's breaks as a sequence; each Break is built on first access."""

    def __init__(self, table: BreakTable) -> None:
        self.table = table
        self._built: dict[int, Break] = {}

    def __len__(self) -> int:
        return len(self.table)

    @overload
    def __getitem__(self, i: int) -> Break: ...

    @overload
    def __getitem__(self, i: slice) -> list[Break]: ...

    def __getitem__(self, i: int | slice) -> Break | list[Break]:
        if isinstance(i, slice):
            return self._get(range(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._get([i % n])[0]

    def _get(self, rows: Sequence[int]) -> list[Break]:
        todo = [r for r in rows if r not in self._built]
        if todo:
            built = self.table.build(np.array(todo, np.int64))
            self._built.update(zip(todo, built, strict=True))
        return [self._built[r] for r in rows]

    def __iter__(self) -> Iterator[Break]:
        return iter(self._get(range(len(self))))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(
                a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} breaks>"
