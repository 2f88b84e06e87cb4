"""Trace numbers (ISO 8583 DE11, the STAN): one sequence for every message the switch sends.

Why one sequence. Answers are matched to requests by MTI class + DE11 + DE41 (jPOS QMUX),
and an issuer rejects a STAN + terminal it saw within its duplicate window with 94. When
authorizations drew DE11 from the pipeline while reversals and 0800s counted on their
own, the same STAN + terminal went out on unrelated transactions. Every card message of
this acquirer now draws from one :class:`TraceNumbers`: the pipeline for the 0100 (and
the 0120 advice and 0400 DE90 that name it), each card adapter for its 0400s and 0800s.
One sequence for all terminals is unique per terminal a fortiori; its 999,999 numbers
outlast the issuer's duplicate window (60 s) up to ~16k messages/s.

Why persisted, and how cheaply. A counter that restarts at 000001 every boot reuses the
last boot's numbers; restarted within the window, the issuer answers 94 to payment after
payment. Writing the counter per payment would cost an fsync each, so numbers are
*reserved in blocks*: before the first number of a block is handed out, the start of the
next block is stored durably. A new boot resumes at the stored value, past everything the
previous one could have used (at most one block of numbers is skipped per restart).

In a cluster (switch/cluster/), workers share one acquirer identity towards the issuers,
so each worker draws from its own slice of the cycle (:class:`ShardTraceNumbers`): shard
*s* of *N* hands out only numbers in ``s*R+1 .. (s+1)*R`` with ``R = 999,999 // N``, and
no two workers ever send the same STAN.

The store is injectable (:class:`TraceStore`): a sidecar file next to the journal in the
switch (:class:`FileTraceStore`), :class:`MemoryTraceStore` in tests and simulations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "MAX_RRN",
    "MAX_STAN",
    "FileTraceStore",
    "MemoryTraceStore",
    "ShardTraceNumbers",
    "TraceNumbers",
    "TraceStore",
    "TraceStoreError",
    "rrn_sidecar_path",
    "sidecar_path",
]

#: DE11 is n6; 000000 is not used as a trace number.
MAX_STAN: Final = 999_999
#: DE37, the retrieval reference number, is 12 characters: the same kind of durable
#: sequence, 12 digits wide, so an RRN is never reused (a reconciliation or a dispute
#: looks payments up by it). It used to be the boot's last two digits and a per-boot
#: count: boot 101 repeated boot 1's RRNs (a 4-worker cluster: its 26th restart).
MAX_RRN: Final = 10**12 - 1
#: Numbers reserved per durable write: one fsync per 10k messages, and at most 10k numbers
#: skipped by a restart (1% of the cycle).
DEFAULT_BLOCK: Final = 10_000


class TraceStoreError(Exception):
    """The stored reservation cannot be read or written; names the file."""


class TraceStore(Protocol):
    """Where the start of the next unreserved block lives between boots."""

    def load(self) -> int | None:
        """The stored next-block start, or None if nothing was ever stored."""
        ...

    def save(self, next_start: int) -> None:
        """Store ``next_start`` durably; return only once it would survive a crash."""
        ...


class MemoryTraceStore:
    """A store in memory: a simulated restart passes the same object to the next boot."""

    def __init__(self, value: int | None = None) -> None:
        self.value = value
        self.saves = 0

    def load(self) -> int | None:
        return self.value

    def save(self, next_start: int) -> None:
        self.value = next_start
        self.saves += 1


class FileTraceStore:
    """One number in a small text file, replaced atomically and fsynced (file and directory)."""

    def __init__(self, path: str | Path, *, max_value: int = MAX_STAN) -> None:
        self.path = Path(path)
        self.max_value = max_value

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceStoreError(f"{self.path}: cannot read: {exc}") from None
        if not (text.isdigit() and 1 <= int(text) <= self.max_value):
            # Guessing would risk reusing numbers inside the issuer's duplicate window.
            raise TraceStoreError(
                f"{self.path}: not a number 1..{self.max_value}: {text[:20]!r}")
        return int(text)

    def save(self, next_start: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{next_start}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself must survive a crash
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise TraceStoreError(f"{self.path}: cannot write: {exc}") from None


def sidecar_path(journal_path: str | Path) -> Path:
    """The trace file that belongs to a journal: ``<journal>.stan`` beside it."""
    path = Path(journal_path)
    return path.with_name(path.name + ".stan")


def rrn_sidecar_path(journal_path: str | Path) -> Path:
    """The RRN file that belongs to a journal: ``<journal>.rrn`` beside it."""
    path = Path(journal_path)
    return path.with_name(path.name + ".rrn")


class TraceNumbers:
    """The STAN allocator: 1..999,999 then round again, reserved ``block`` at a time
    (``max_value=MAX_RRN``: the RRN allocator, the same sequence 12 digits wide).

    ``next()`` is synchronous and does I/O only once per block (the store's ``save``), so
    the hot path is an increment. A store failure raises :class:`TraceStoreError` from
    ``next()`` and hands out nothing: a number that might be reused is worse than none.
    """

    def __init__(self, store: TraceStore | None = None, *, block: int = DEFAULT_BLOCK,
                 max_value: int = MAX_STAN) -> None:
        if not 1 <= block <= max_value // 10:
            raise ValueError(f"block must be 1..{max_value // 10}, got {block}")
        self.store: TraceStore = store if store is not None else MemoryTraceStore()
        self.block = block
        self.max_value = max_value
        start = self.store.load()
        self._next = start if start is not None else 1
        self._left = 0  # numbers still covered by the last durable reservation

    @property
    def peek(self) -> int:
        """The number the next call will return (for tests and logs)."""
        return self._next

    def next(self) -> int:
        if self._left == 0:
            self.store.save(self._advance(self._next, self.block))
            self._left = self.block
        n = self._next
        self._next = self._advance(n, 1)
        self._left -= 1
        return n

    def _advance(self, n: int, by: int) -> int:
        """``n`` moved ``by`` places along the cycle 1..max_value."""
        return (n - 1 + by) % self.max_value + 1


class ShardTraceNumbers(TraceNumbers):
    """Shard ``shard`` of ``shards`` workers: the same durable sequence, mapped into this
    shard's own slice of 1..max_value, so workers of one cluster never share a STAN (or,
    with ``max_value=MAX_RRN``, an RRN)."""

    def __init__(self, store: TraceStore | None = None, *, shard: int, shards: int,
                 block: int = DEFAULT_BLOCK, max_value: int = MAX_STAN) -> None:
        if not 0 <= shard < shards <= max_value // 100:
            raise ValueError(f"shard {shard} of {shards}: outside 0..shards-1")
        self.span = max_value // shards
        # The durable cycle is a whole number of slices: with 1..max_value itself, when
        # shards does not divide it (2, 4, 5 workers) the cycle's tail mapped onto the
        # slice's first numbers, which came again right after the wrap: ...499999, 1, 1.
        super().__init__(store, block=min(block, self.span // 10 or 1),
                         max_value=self.span * shards)
        self.base = shard * self.span

    @property
    def peek(self) -> int:
        return self.base + (self._next - 1) % self.span + 1

    def next(self) -> int:
        return self.base + (super().next() - 1) % self.span + 1
