"""The two sides of a reconciliation as columns: the switch's (from the journal's columns)
and the networks' (from the settlement files on disk)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import mmap
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from switch.backoffice.recon.classes import (
    Record,
)
from switch.backoffice.recon.kernels import (
    CSV_CARD,
    CSV_QR,
    FLAG_ADVICE_DELIVERED,
    FLAG_ADVICE_REFUSED,
    FLAG_STOOD_IN,
    count_byte,
    hash_utf8_column,
    parse_settlement_csv,
)
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.journal import columns as jcols
from switch.protocols.settlement_files import (
    MAX_FILE_BYTES,
    QR_HEADER_LINE,
    SettlementColumns,
    SettlementFileError,
    card_clearing_frame,
    no_strings,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
    settlement_file_order,
)

_SUFFIX_CHANNEL: Final = {".clr": "card", ".xml": "swift", ".csv": "qr"}


_READERS: Final[dict[str, Callable[[bytes, str], SettlementColumns]]] = {
    ".clr": read_card_clearing_columns,
    ".xml": read_camt053_columns,
    ".csv": read_qr_csv_columns,
}


class NoSettlementFiles(SettlementFileError):
    """The files directory holds no settlement file (.clr, .xml, .csv)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, 0, "files",
                         "no settlement files (.clr, .xml, .csv) found; nothing to reconcile")

    def __str__(self) -> str:
        return f"no settlement files (.clr, .xml, .csv) in {self.file}: nothing to reconcile"


@dataclass(frozen=True, slots=True)
class Texts:
    """The strings of some entries of a side (what a break shows), index for index."""

    reference: list[str]
    #: Switch: payment id. Network: settlement file name.
    source: list[str]
    #: Network: line in the file. Switch: 0.
    line: list[int]
    #: Network: the secondary key as the file names it (QR merchant id). Switch: "".
    counterparty: list[str]


_STATUS_NAME: Final = ("approved", "declined", "failed", "reversed", "unknown")


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
    #: The strings of entries ``idx`` (only ever called for breaks).
    texts: Callable[[NDArray[np.int64]], Texts]
    #: Counterparties of entries (netting only).
    counterparties: Callable[[NDArray[np.int64]], list[str]]
    #: Records of entries ``idx`` (None: built from the columns and :attr:`texts`).
    build_records: Callable[[NDArray[np.int64]], list[Record]] | None = None
    #: CPU seconds its reading took, over every thread that read it (figures only).
    read_cpu_s: float = 0.0
    #: ``prefetch(first, then)``: start fetching the strings of these entries in the
    #: background, counterparties too for ``first`` (None: nothing to gain, e.g. the
    #: network side's strings are in memory already).
    prefetch: Callable[[NDArray[np.int64], NDArray[np.int64]], None] | None = None
    #: The secondary key of card entries ``idx`` (STAN|terminal; "" for other channels
    #: or where unknown), for the second look at tolerance pairs (None: not available).
    secondaries: Callable[[NDArray[np.int64]], list[str]] | None = None

    def __len__(self) -> int:
        return int(self.key.shape[0])

    def records(self, idx: NDArray[np.int64]) -> list[Record]:
        """The Records of entries ``idx``: a break's sides, built only when asked for."""
        if self.build_records is not None:
            return self.build_records(idx)
        if not len(idx):
            return []
        t = self.texts(idx)
        flags = self.flags[idx].tolist()
        channels, alpha, names = jcols.CHANNEL_NAME, NUMERIC_TO_ALPHA, _STATUS_NAME
        return [
            Record(channels.get(ch, "?"), ref, a, alpha.get(c, "???"),
                   names[st] if 0 <= st < len(names) else "unknown", tm, src, cp,
                   bool(f & FLAG_STOOD_IN),
                   "refused" if f & FLAG_ADVICE_REFUSED else
                   "delivered" if f & FLAG_ADVICE_DELIVERED else "", line)
            for ch, ref, a, c, st, tm, src, cp, f, line in zip(
                self.channel[idx].tolist(), t.reference, self.amount[idx].tolist(),
                self.currency[idx].tolist(), self.status[idx].tolist(),
                self.time_us[idx].tolist(), t.source, t.counterparty, flags, t.line,
                strict=True)
        ]


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

    def scatter(idx: NDArray[np.int64], fetch: Callable[[Side, NDArray[np.int64]], list[Any]]
                ) -> list[Any]:
        out: list[Any] = [None] * len(idx)
        for k, positions, local in split(np.asarray(idx, np.int64)):
            for pos, item in zip(positions.tolist(), fetch(sides[k], local), strict=True):
                out[pos] = item
        return out

    def texts(idx: NDArray[np.int64]) -> Texts:
        rows = scatter(idx, lambda side, local: list(zip(
            *dataclasses.astuple(side.texts(local)), strict=True)))
        if not rows:
            return Texts([], [], [], [])
        reference, source, line, counterparty = (list(c) for c in zip(*rows, strict=True))
        return Texts(reference, source, line, counterparty)

    def joined(name: str) -> NDArray[Any]:
        return np.concatenate([getattr(s, name) for s in sides])

    def prefetch(first: NDArray[np.int64], then: NDArray[np.int64]) -> None:
        for k, side in enumerate(sides):
            if side.prefetch is not None:
                lo, hi = starts[k], starts[k + 1]
                side.prefetch(first[(first >= lo) & (first < hi)] - lo,
                              then[(then >= lo) & (then < hi)] - lo)

    side = Side(joined("key"), joined("amount"), joined("currency"), joined("status"),
                joined("time_us"), joined("channel"), joined("flags"), texts,
                lambda idx: scatter(idx, lambda side, local: side.counterparties(local)),
                lambda idx: scatter(idx, lambda side, local: side.records(local)))
    side.prefetch = prefetch
    if all(s.secondaries is not None for s in sides):
        side.secondaries = lambda idx: scatter(
            idx, lambda side, local: side.secondaries(local))  # type: ignore[misc]
    return side


def _empty_side() -> Side:
    z = np.zeros(0, np.int64)
    return Side(z, z, z.astype(np.int16), z.astype(np.int8), z, z.astype(np.int8),
                z.astype(np.int8), lambda idx: Texts([], [], [], []), lambda idx: [])


@dataclass
class _File:
    path: Path
    channel: str
    cols: SettlementColumns
    start: int  # index of its first record on the network side


def settlement_files(directory: Path) -> list[Path]:
    """The settlement files of ``directory`` in cycle order (see
    :func:`settlement_file_order`): the first record of a key is the one matched, a later
    one (a reversal in the next cycle) is paired with it or is a duplicate."""
    return sorted((p for p in directory.iterdir() if p.suffix in _READERS and p.is_file()),
                  key=lambda p: settlement_file_order(p.name))


#: Settlement files read at once (each holds its bytes and parsed frame meanwhile).
FILE_WORKERS: Final = 2


#: The fast CSV kernel's currency tables (see kernels.parse_settlement_csv).
_NUMERIC_OK: Final = np.zeros(1024, np.bool_)
_ALPHA_NUMERIC: Final = np.full(26 ** 3, -1, np.int16)
for _alpha, (_numeric, _) in CURRENCIES.items():
    _NUMERIC_OK[_numeric] = True
    if len(_alpha) == 3 and _alpha.isascii() and _alpha.isupper():
        _ALPHA_NUMERIC[((ord(_alpha[0]) - 65) * 26 + ord(_alpha[1]) - 65) * 26
                       + ord(_alpha[2]) - 65] = _numeric


def _large_strings(offsets: NDArray[np.int64], data: NDArray[np.uint8]) -> pa.LargeStringArray:
    """Arrow strings over the kernel's offsets and bytes (printable ASCII: valid UTF-8)."""
    return cast(pa.LargeStringArray, pa.Array.from_buffers(
        pa.large_string(), len(offsets) - 1,
        [None, pa.py_buffer(offsets), pa.py_buffer(data)]))


def _csv_fast(path: Path, data: bytes | mmap.mmap, code: int
              ) -> tuple[SettlementColumns, NDArray[np.int64]] | None:
    """A card clearing file or QR CSV through the numba kernel: parsed, checked and
    hashed in one pass without the GIL. None when it is not sure: the strict path
    (``_READERS``) then accepts the file or names the line and field."""
    if path.suffix == ".clr":
        frame = card_clearing_frame(data)
        if frame is None:
            return None
        start, end, records, total = frame
        layout = CSV_CARD
    else:
        if data[:len(QR_HEADER_LINE)] != QR_HEADER_LINE or data[-1:] != b"\n" \
                or len(data) > MAX_FILE_BYTES:
            return None
        start, end, total = len(QR_HEADER_LINE), len(data), 0
        records = count_byte(data, ord("\n")) - 1
        if records <= 0:
            return None
        layout = CSV_QR
    keep_secondary = code == jcols.CHANNEL_CODE["qr"]  # only QR nets by counterparty
    parsed = parse_settlement_csv(data, start, end, records, layout, code, _NUMERIC_OK,
                                  _ALPHA_NUMERIC, keep_secondary)
    if parsed is None:
        return None
    c, amount_sum = parsed
    if layout == CSV_CARD and amount_sum != total:
        return None
    cols = SettlementColumns(
        _large_strings(c["ref_off"], c["ref_data"]),
        _large_strings(c["sec_off"], c["sec_data"]) if keep_secondary else no_strings(),
        c["amount"], c["currency"], c["status"], c["time_us"], 2)
    return cols, c["key"]


def _read_file(path: Path) -> tuple[SettlementColumns, NDArray[np.int64]]:
    """One settlement file: its columns (the numbers, and the strings a break shows) and
    its references' keys, hashed as the journal stores them.

    The bytes parsed are a private copy, never a shared mapping of the file: another
    process that truncates a mapped file (a writer rewriting it in place) makes the
    next touch of a page past its new end kill the reader with SIGBUS, and a crash is
    not an answer to a user's input. A file whose size or mtime changes while it is
    read is refused, naming it: what was read may be half of one version and half of
    another.
    """
    code = jcols.CHANNEL_CODE[_SUFFIX_CHANNEL[path.suffix]]
    with path.open("rb") as f:
        # The bound is checked on the size before a byte is read: the readers check it
        # too, but only on bytes already in memory (a 1 GiB file peaked at 1.2 GB).
        before = os.fstat(f.fileno())
        size = before.st_size
        if size > MAX_FILE_BYTES:
            raise _too_big(path, size)
        if path.suffix in (".clr", ".csv") and size > 0:
            copied = _private_copy(f, size)
            if copied is not None:
                copy, filled = copied
                try:
                    _unchanged(path, f, before, filled)
                    fast = _csv_fast(path, copy, code)
                    # The strict decoders take bytes: these bytes, not a second read of a
                    # file that may have changed since.
                    data = copy[:] if fast is None else b""
                finally:
                    copy.close()
                if fast is not None:
                    return fast
            else:
                data = _read_bounded(path, f, before)
        else:
            data = _read_bounded(path, f, before)
    if path.suffix == ".clr":
        cols = read_card_clearing_columns(data, str(path), secondary=False)
    else:
        cols = _READERS[path.suffix](data, str(path))
    del data
    ref = cols.reference
    offsets = np.frombuffer(ref.buffers()[1], np.int64)[ref.offset:ref.offset + len(ref) + 1]
    buffer = ref.buffers()[2]
    key = hash_utf8_column(
        np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8),
        offsets, code)
    if code != jcols.CHANNEL_CODE["qr"]:  # only QR entries net by counterparty: keep lean
        cols = SettlementColumns(cols.reference, no_strings(),
                                 cols.amount, cols.currency, cols.status, cols.time_us,
                                 cols.first_line, cols.lines)
    return cols, key


def _private_copy(f: io.BufferedReader, size: int) -> tuple[mmap.mmap, int] | None:
    """The file's first ``size`` bytes in anonymous memory of this process, which no
    other process can truncate, and how many there were (fewer if it shrank meanwhile);
    None when that memory cannot be had (the caller reads into bytes instead).

    Anonymous memory with transparent huge pages, not ``f.read()``: a read into bytes
    faults the destination in 4 kB pages, ~60 ms of kernel time per 100 MB on the
    measured VM, where 2 MB pages take ~20 ms (where THP is off, it costs what a read
    does). A shared mapping of the page cache was cheaper still (~0.1 ms) but is what
    a truncation turns into SIGBUS.
    """
    try:
        copy = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):  # AttributeError: no MAP_ANONYMOUS
        return None
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # a kernel without THP: 4 kB pages, still correct
            copy.madvise(advice)
    try:
        with memoryview(copy) as view:
            filled = 0
            while filled < size:
                n = f.readinto(view[filled:])
                if not n:
                    break
                filled += n
    except BaseException:
        copy.close()
        raise
    return copy, filled


def _read_bounded(path: Path, f: io.BufferedReader, before: os.stat_result) -> bytes:
    """The rest of ``f`` as bytes, up to one byte past the bound (a file that grew since
    fstat is refused, not read to its end), checked unchanged while read."""
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(path, len(data))
    _unchanged(path, f, before, len(data))
    return data


def _unchanged(path: Path, f: io.BufferedReader, before: os.stat_result, read: int) -> None:
    """Refuse a file that another process changed while it was read: shorter or longer
    than it was at open, or rewritten (mtime) in place."""
    after = os.fstat(f.fileno())
    grew = read >= before.st_size and f.read(1) != b""
    if read != before.st_size or grew or after.st_size != before.st_size \
            or after.st_mtime_ns != before.st_mtime_ns:
        raise SettlementFileError(
            str(path), 0, "file",
            f"changed while being read ({before.st_size:,} bytes at open, {read:,} read, "
            f"{after.st_size:,} now): another process is writing it; a settlement file "
            "must be complete before it is read (written elsewhere and renamed into place)")


def _too_big(path: Path, size: int) -> SettlementFileError:
    return SettlementFileError(
        str(path), 0, "file",
        f"{size:,} bytes exceeds the {MAX_FILE_BYTES:,}-byte limit on a settlement file")


def _read_file_timed(path: Path) -> tuple[SettlementColumns, NDArray[np.int64], float]:
    t = time.thread_time()
    cols, key = _read_file(path)
    return cols, key, time.thread_time() - t


#: Relative cost per byte of each format's reader (measured at 10M records: camt.053
#: ~60 ns a byte through lxml and Python, the CSV kernels ~2.5): which files start first.
_COST_PER_BYTE: Final = {".xml": 25.0, ".clr": 1.0, ".csv": 1.0}


def _strings_only(cols: SettlementColumns) -> SettlementColumns:
    """What a file keeps once its numbers are in the side's columns: its strings."""
    return SettlementColumns(cols.reference, cols.secondary, cols.amount[:0],
                             cols.currency[:0], cols.status[:0], cols.time_us[:0],
                             cols.first_line, cols.lines)


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
    main_cpu = time.thread_time()
    worker_cpu = 0.0
    # Two files at a time: the CSV kernels release the GIL, so a card file parses while
    # the camt.053 reader (Python, GIL-bound) walks its entries. The costliest files go
    # first (camt.053 costs ~25x a CSV per byte), so no long one is left for the end
    # with the other thread idle. Results are taken in path order, so the columns, and
    # the first bad file named, do not depend on which thread finished first.
    pool = ThreadPoolExecutor(max_workers=FILE_WORKERS, thread_name_prefix="recon-file")
    try:
        by_cost = sorted(paths, key=lambda p: -p.stat().st_size * _COST_PER_BYTE[p.suffix])
        futures = {path: pool.submit(_read_file_timed, path) for path in by_cost}
        for path in paths:
            cols, key, thread_cpu = futures[path].result()
            worker_cpu += thread_cpu
            channel = _SUFFIX_CHANNEL[path.suffix]
            code = jcols.CHANNEL_CODE[channel]
            keys.append(key)
            amounts.append(cols.amount)
            currencies.append(cols.currency)
            statuses.append(cols.status)
            times.append(cols.time_us)
            channels.append(np.full(len(cols), code, np.int8))
            files.append(_File(path, channel, _strings_only(cols), n))
            n += len(key)
            if on_file is not None:
                on_file(path, len(key))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    starts = np.array([f.start for f in files], np.int64)

    def joined(parts: list[NDArray[Any]]) -> NDArray[Any]:
        """One column, its per-file parts freed as it is built (peak: one column twice)."""
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        parts.clear()
        return out

    side = Side(
        joined(keys), joined(amounts), joined(currencies), joined(statuses), joined(times),
        joined(channels), np.zeros(n, np.int8),
        lambda idx: _network_texts(files, starts, idx),
        lambda idx: _network_counterparties(files, starts, idx),
    )
    side.secondaries = lambda idx: _network_card_secondaries(files, starts, idx)
    side.read_cpu_s = time.thread_time() - main_cpu + worker_cpu
    return side


def _network_texts(files: list[_File], starts: NDArray[np.int64],
                   idx: NDArray[np.int64]) -> Texts:
    """Strings of network entries ``idx``: taken per file, in one Arrow take each."""
    n = len(idx)
    refs: list[str] = [""] * n
    secs: list[str] = [""] * n
    sources: list[str] = [""] * n
    lines: list[int] = [0] * n
    if not n:
        return Texts(refs, sources, lines, secs)
    which = np.searchsorted(starts, idx, side="right") - 1
    for k in np.unique(which).tolist():
        f = files[k]
        pos = np.flatnonzero(which == k)
        local = idx[pos] - f.start
        # Indices as an Arrow array without pa.array (see settlement_files.no_strings).
        local = np.ascontiguousarray(local, np.int64)
        took = pa.Array.from_buffers(pa.int64(), len(local), [None, pa.py_buffer(local)])
        part_refs = f.cols.reference.take(took).to_pylist()
        part_secs = (f.cols.secondary.take(took).to_pylist() if len(f.cols.secondary)
                     else None)
        part_lines = (f.cols.lines[local].tolist() if f.cols.lines is not None
                      else (local + f.cols.first_line).tolist())
        name = f.path.name
        for m, p in enumerate(pos.tolist()):
            refs[p] = part_refs[m]
            sources[p] = name
            lines[p] = part_lines[m]
            if part_secs is not None:
                secs[p] = part_secs[m] or ""
    return Texts(refs, sources, lines, secs)


def _by_file(files: list[_File], starts: NDArray[np.int64], idx: NDArray[np.int64]
             ) -> Iterator[tuple[_File, NDArray[np.int64], NDArray[np.int64]]]:
    """Network entries ``idx`` grouped by file: (file, positions in ``idx``, indices in
    the file)."""
    if not len(idx):
        return
    which = np.searchsorted(starts, idx, side="right") - 1
    for k in np.unique(which).tolist():
        pos = np.flatnonzero(which == k)
        yield files[k], pos, idx[pos] - files[k].start


def _network_card_secondaries(files: list[_File], starts: NDArray[np.int64],
                              idx: NDArray[np.int64]) -> list[str]:
    """The secondary key (STAN|terminal) of card entries ``idx``, read back from their
    lines: the card columns keep no secondary strings (80+ MB at 10M records), and this
    is asked for a few tolerance pairs only. "" for entries of other files."""
    secs: list[str] = [""] * len(idx)
    for f, pos, local in _by_file(files, starts, idx):
        if f.path.suffix != ".clr":
            continue
        lines = (f.cols.lines[local] if f.cols.lines is not None
                 else local + f.cols.first_line).tolist()
        text = _read_lines(f.path, set(lines))
        for p, line in zip(pos.tolist(), lines, strict=True):
            fields = text.get(line, b"").split(b",")
            secs[p] = fields[2].decode("utf-8", "replace") if len(fields) > 2 else ""
    return secs


def _read_lines(path: Path, wanted: set[int], chunk_bytes: int = 1 << 23) -> dict[int, bytes]:
    """Lines ``wanted`` (1-based) of ``path``, reading it in chunks: a few lines of a
    large file without holding the file or an index of every line in memory."""
    found: dict[int, bytes] = {}
    last = max(wanted)
    line, carry = 1, b""
    with path.open("rb") as fh:
        while line <= last:
            chunk = fh.read(chunk_bytes)
            if not chunk:
                break
            data = carry + chunk
            ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
            hits = [n for n in wanted if line <= n < line + len(ends)]
            for n in hits:
                i = n - line
                start = int(ends[i - 1]) + 1 if i else 0
                found[n] = data[start:int(ends[i])].rstrip(b"\r")
            consumed = int(ends[-1]) + 1 if len(ends) else 0
            carry = data[consumed:]
            line += len(ends)
    if carry and line in wanted:
        found[line] = carry.rstrip(b"\r")
    return found


def _network_counterparties(files: list[_File], starts: NDArray[np.int64],
                            idx: NDArray[np.int64]) -> list[str]:
    """The secondary key (QR merchant id; "" where the file keeps none) of entries ``idx``:
    :func:`_network_texts`' counterparty alone, for netting's candidates."""
    secs: list[str] = [""] * len(idx)
    for f, pos, local in _by_file(files, starts, idx):
        if not len(f.cols.secondary):
            continue
        local = np.ascontiguousarray(local, np.int64)
        took = pa.Array.from_buffers(pa.int64(), len(local), [None, pa.py_buffer(local)])
        for p, sec in zip(pos.tolist(), f.cols.secondary.take(took).to_pylist(), strict=True):
            secs[p] = sec or ""
    return secs
