"""The idempotency index: same key + same body -> the same result, different body -> refused.

An entry is created when a payment is accepted, so a duplicate that arrives while the
first is still in flight waits for the first's result instead of being processed twice.
The body is compared by a keyed hash of its canonical encoding (the PAN is inside the
body, so the hash must be keyed to reveal nothing).

Bounded: keys are kept for ``retention_s`` and at most ``max_keys`` completed entries;
the oldest are forgotten first. That is the usual contract of payment APIs (a retry
window), written down rather than implied. In-flight entries are never evicted; their
number is bounded by the server's in-flight limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import anyio
import msgspec

from switch.model import Result


class Entry(msgspec.Struct, gc=False):
    """One key's state. ``result`` is None while the payment is in flight.

    The wake-up event is created only when a concurrent duplicate actually waits: almost
    every payment completes with nobody waiting, and an anyio Event costs microseconds.
    ``gc=False``: entries reference no container that could point back at them, and there
    are as many as remembered keys (millions), which the cyclic GC would otherwise walk.
    """

    body_hash: bytes
    created_at: float
    result: Result | None
    pending: bool = True
    done: anyio.Event | None = None

    async def wait(self) -> Result | None:
        """The result, once known; None if the first attempt was abandoned."""
        if self.pending:
            if self.done is None:
                self.done = anyio.Event()
            await self.done.wait()
        return self.result

    def _finish(self) -> None:
        self.pending = False
        if self.done is not None:
            self.done.set()
            self.done = None


class IdempotencyIndex:
    def __init__(self, *, retention_s: float, max_keys: int) -> None:
        assert retention_s > 0 and max_keys > 0
        self._entries: dict[str, Entry] = {}
        self.retention_s = retention_s
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def begin(self, key: str, body_hash: bytes, now: float) -> Entry:
        """Register a newly accepted payment (the caller checked ``get`` first)."""
        entry = Entry(body_hash, now, None)
        self._entries[key] = entry
        self._evict(now)
        return entry

    def complete(self, key: str, result: Result) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.result = result
        entry._finish()

    def abandon(self, key: str) -> None:
        """Forget an attempt that was never accepted, waking anyone waiting on it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry._finish()

    def restore(self, key: str, body_hash: bytes, result: Result, created_at: float) -> None:
        """Load a final result replayed from the journal at start-up."""
        self._entries[key] = Entry(body_hash, created_at, result, pending=False)

    def _evict(self, now: float) -> None:
        # Dicts iterate in insertion order, so the front holds the oldest keys. A pending
        # entry (never forgotten: it has not been answered) is moved to the back so it
        # cannot shield older completed ones; each is moved at most once per call.
        entries = self._entries
        horizon = now - self.retention_s
        skipped = 0
        while entries and skipped < len(entries):
            oldest_key = next(iter(entries))
            oldest = entries[oldest_key]
            if len(entries) - skipped <= self.max_keys and oldest.created_at >= horizon:
                break
            del entries[oldest_key]
            if oldest.pending:
                entries[oldest_key] = oldest
                skipped += 1


def body_hash(canonical_body: bytes, key: bytes) -> bytes:
    """Keyed 128-bit digest of a request body's canonical encoding."""
    return hashlib.blake2b(canonical_body, key=key[:64], digest_size=16).digest()
