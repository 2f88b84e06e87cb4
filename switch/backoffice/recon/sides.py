"""The two sides of a reconciliation as columns: the switch's (from the journal's columns)
and the networks' (from the settlement files on disk)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from switch.backoffice.recon.classes import (
    Record,
)
from switch.backoffice.recon.kernels import (
    RecordStatus,
    hash_utf8_column,
)
from switch.currency import NUMERIC_TO_ALPHA
from switch.journal import columns as jcols
from switch.protocols.settlement_files import (
    SettlementColumns,
    SettlementFileError,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
)

_SUFFIX_CHANNEL: Final = {".clr": "card", ".xml": "swift", ".csv": "qr"}


_READERS: Final[dict[str, Callable[[bytes, str], SettlementColumns]]] = {
    ".clr": read_card_clearing_columns,
    ".xml": read_camt053_columns,
    ".csv": read_qr_csv_columns,
}


_SETTLED: Final = int(RecordStatus.SETTLED)


class NoSettlementFiles(SettlementFileError):
    """The files directory holds no settlement file (.clr, .xml, .csv)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, 0, "files",
                         "no settlement files (.clr, .xml, .csv) found; nothing to reconcile")

    def __str__(self) -> str:
        return f"no settlement files (.clr, .xml, .csv) in {self.file}: nothing to reconcile"


@dataclass
class Side:
    """One side as columns. ``channel`` 1 card, 2 swift, 3 qr (journal.columns codes)."""

    key: NDArray[np.int64]
    amount: NDArray[np.int64]
    currency: NDArray[np.int16]
    status: NDArray[np.int8]
    time_us: NDArray[np.int64]
    channel: NDArray[np.int8]
    #: Switch: FLAG_* bits. Network: zeros.
    flags: NDArray[np.int8]
    #: Builds the Records of entries ``idx`` (only ever called for breaks and netting).
    records: Callable[[NDArray[np.int64]], list[Record]]
    #: Counterparties of entries (netting only).
    counterparties: Callable[[NDArray[np.int64]], list[str]]

    def __len__(self) -> int:
        return int(self.key.shape[0])


def concat_sides(sides: list[Side]) -> Side:
    """Several sides as one (a cluster's journals: one switch side per shard). Entry *i*
    of the result is entry *i - start* of the side whose range holds it."""
    if len(sides) == 1:
        return sides[0]
    if not sides:
        return _empty_side()
    starts = np.cumsum([0] + [len(s) for s in sides])

    def split(idx: NDArray[np.int64]) -> list[tuple[int, NDArray[np.int64], NDArray[np.int64]]]:
        which = np.searchsorted(starts, idx, side="right") - 1
        return [(int(k), np.nonzero(which == k)[0], idx[which == k] - starts[k])
                for k in np.unique(which)]

    def gather(name: str) -> Callable[[NDArray[np.int64]], list[Any]]:
        def build(idx: NDArray[np.int64]) -> list[Any]:
            out: list[Any] = [None] * len(idx)
            for k, positions, local in split(np.asarray(idx, np.int64)):
                for pos, item in zip(positions.tolist(), getattr(sides[k], name)(local),
                                     strict=True):
                    out[pos] = item
            return out
        return build

    def joined(name: str) -> NDArray[Any]:
        return np.concatenate([getattr(s, name) for s in sides])

    return Side(joined("key"), joined("amount"), joined("currency"), joined("status"),
                joined("time_us"), joined("channel"), joined("flags"),
                gather("records"), gather("counterparties"))


def _empty_side() -> Side:
    z = np.zeros(0, np.int64)
    return Side(z, z, z.astype(np.int16), z.astype(np.int8), z, z.astype(np.int8),
                z.astype(np.int8), lambda idx: [], lambda idx: [])


@dataclass
class _File:
    path: Path
    channel: str
    cols: SettlementColumns
    start: int  # index of its first record on the network side


def settlement_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in _READERS and p.is_file())


def load_network_side(directory: Path,
                      on_file: Callable[[Path, int], None] | None = None) -> Side:
    """Every record of every settlement file in ``directory``, as columns.

    ``on_file(path, records)`` is called after each file (progress). Raises
    :class:`NoSettlementFiles` when there is none, SettlementFileError on a bad file.
    """
    paths = settlement_files(directory)
    if not paths:
        raise NoSettlementFiles(str(directory))
    files: list[_File] = []
    keys, amounts, currencies, statuses, times, channels = [], [], [], [], [], []
    n = 0
    for path in paths:
        if path.suffix == ".clr":
            cols = read_card_clearing_columns(path.read_bytes(), str(path), secondary=False)
        else:
            cols = _READERS[path.suffix](path.read_bytes(), str(path))
        channel = _SUFFIX_CHANNEL[path.suffix]
        code = jcols.CHANNEL_CODE[channel]
        ref = cols.reference
        offsets = np.frombuffer(ref.buffers()[1], np.int64)[ref.offset:ref.offset + len(ref) + 1]
        data = ref.buffers()[2]
        keys.append(hash_utf8_column(
            np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8),
            offsets, code))
        amounts.append(cols.amount)
        currencies.append(cols.currency)
        statuses.append(cols.status)
        times.append(cols.time_us)
        channels.append(np.full(len(cols), code, np.int8))
        if channel != "qr":  # only QR entries net by counterparty: keep the rest lean
            cols = SettlementColumns(cols.reference, pa.array([], pa.large_string()),
                                     cols.amount[:0], cols.currency[:0], cols.status[:0],
                                     cols.time_us[:0], cols.first_line, cols.lines)
        files.append(_File(path, channel, cols, n))
        n += len(keys[-1])
        if on_file is not None:
            on_file(path, len(keys[-1]))
    starts = np.array([f.start for f in files], np.int64)

    def joined(parts: list[NDArray[Any]]) -> NDArray[Any]:
        """One column, its per-file parts freed as it is built (peak: one column twice)."""
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        parts.clear()
        return out

    side = Side(
        joined(keys), joined(amounts), joined(currencies), joined(statuses), joined(times),
        joined(channels), np.zeros(n, np.int8),
        lambda idx: _network_records(side, files, starts, idx),
        lambda idx: [r.counterparty for r in _network_records(side, files, starts, idx)],
    )
    return side


def _network_records(side: Side, files: list[_File], starts: NDArray[np.int64],
                     idx: NDArray[np.int64]) -> list[Record]:
    """Records of network entries ``idx``: strings taken per file, in one Arrow take."""
    if not len(idx):
        return []
    which = np.searchsorted(starts, idx, side="right") - 1
    out: list[Record | None] = [None] * len(idx)
    settled = _SETTLED
    for k in np.unique(which).tolist():
        f = files[k]
        pos = np.flatnonzero(which == k)
        local = idx[pos] - f.start
        refs = f.cols.reference.take(pa.array(local)).to_pylist()
        secs = (f.cols.secondary.take(pa.array(local)).to_pylist() if len(f.cols.secondary)
                else [""] * len(local))
        glob = idx[pos]
        amounts = side.amount[glob].tolist()
        currencies = side.currency[glob].tolist()
        statuses = side.status[glob].tolist()
        times = side.time_us[glob].tolist()
        lines = (f.cols.lines[local].tolist() if f.cols.lines is not None
                 else (local + f.cols.first_line).tolist())
        name, channel, alpha = f.path.name, f.channel, NUMERIC_TO_ALPHA
        for p, ref, sec, a, c, st, t, line in zip(pos.tolist(), refs, secs, amounts,
                                                  currencies, statuses, times, lines,
                                                  strict=True):
            out[p] = Record(channel, ref, a, alpha.get(c, "???"),
                            "approved" if st == settled else "reversed", t, name, sec or "",
                            line=line)
    return [r for r in out if r is not None]
