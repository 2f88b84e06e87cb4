"""The idempotency index: same key + same body -> the same result, different body -> refused.

An entry is created when a payment is accepted, so a duplicate that arrives while the
first is still in flight waits for the first's result instead of being processed twice.
The body is compared by a keyed hash of its canonical encoding (the PAN is inside the
body, so the hash must be keyed to reveal nothing).

Bounded: keys are kept for ``retention_s`` and at most ``max_keys`` entries; the oldest
completed ones are forgotten first. That is the usual contract of payment APIs (a retry
window), written down rather than implied. In-flight entries are never evicted; their
number is bounded by the server's in-flight limit. Nor is a key whose payment is unknown
(being resolved) forgotten for room before its ``retention_s`` is over: its client
retries to learn the outcome, and a forgotten key booked the payment afresh. Those
have their own bound, :attr:`IdempotencyIndex.max_keys` again: past ``2 * max_keys``
entries, :meth:`IdempotencyIndex.has_room` says no and the core refuses new payments
``overloaded`` -- refusing a payment costs the client a retry, forgetting an unknown
one's key could cost it a second booking.

Eviction is O(1) amortised: completed entries join a FIFO (``deque``) when they complete,
and eviction pops its front. (Deleting from the front of a dict and asking it for its
first key again rescans the deleted slots every time: quadratic, 8.8 s for 200k keys.)
The FIFO is in completion order, which trails creation order by at most a payment's
deadline, so a key may outlive ``retention_s`` by that much, never less.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import anyio
import msgspec

from switch.model import Result, Status


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
        #: Completed entries, oldest first: the eviction order. An item whose key maps
        #: to another entry by now (restored twice) is stale and skipped when popped.
        self._order: deque[tuple[str, Entry]] = deque()
        #: Completed entries whose payment was unknown when their turn to go came, oldest
        #: first: kept until resolved (then back in ``_order``) or past ``retention_s``.
        self._unknowns: deque[tuple[str, Entry]] = deque()
        self.retention_s = retention_s
        self.max_keys = max_keys
        #: The latest ``now`` seen (begin, restore): the age horizon of evictions that
        #: a resolution triggers.
        self._now = -math.inf
        #: Told each key forgotten (past ``retention_s``, or the oldest at ``max_keys``)
        #: just before it goes: from then on, that key begins a new payment. The
        #: simulator's idempotency check tells a forgotten key from a lost one by it.
        self.on_forget: Callable[[str], object] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def has_room(self) -> bool:
        """Room for a new payment's key. Past ``max_keys`` only in-flight keys and those
        of payments being resolved are left (neither can be forgotten); they may take as
        many again, then new payments wait (the core refuses them ``overloaded``)."""
        return len(self._entries) < 2 * self.max_keys

    def begin(self, key: str, body_hash: bytes, now: float) -> Entry:
        """Register a newly accepted payment (the caller checked ``get`` first, with no
        await in between: a second ``begin`` would process one key twice)."""
        assert key not in self._entries, f"idempotency begin for a known key {key!r}"
        assert len(body_hash) > 0
        entry = Entry(body_hash, now, None)
        self._entries[key] = entry
        self._evict(now)
        return entry

    def complete(self, key: str, result: Result) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        resolved = not entry.pending  # an answer given before (unknown) now settled
        if entry.pending:
            self._order.append((key, entry))
        entry.result = result
        entry._finish()
        assert not entry.pending and entry.result is not None
        if resolved and len(self._entries) > self.max_keys:
            self._evict(self._now)  # an unknown kept past the bound may go now

    def abandon(self, key: str) -> None:
        """Forget an attempt that was never accepted, waking anyone waiting on it."""
        entry = self._entries.get(key)
        if entry is not None and entry.pending:  # a completed entry stays: it was answered
            del self._entries[key]
            entry._finish()

    def restore(self, key: str, body_hash: bytes, result: Result, created_at: float) -> None:
        """Load a final result replayed from the journal at start-up (oldest first)."""
        entry = Entry(body_hash, created_at, result, pending=False)
        self._entries[key] = entry
        self._order.append((key, entry))
        self._evict(created_at)

    def restore_all(self, finals: Iterable[tuple[str, bytes, Result, float]]) -> None:
        """:meth:`restore` for each ``(key, body_hash, result, created_at)``, oldest first:
        start-up's whole idempotency window in one pass. The same entries survive as
        one :meth:`restore` each (eviction pops the same FIFO), without two calls per
        key: a restart restores millions of keys at the bound, ahead of being ready."""
        entries, order, max_keys = self._entries, self._order, self.max_keys
        created_at = -math.inf
        for key, body_hash, result, created_at in finals:
            entry = Entry(body_hash, created_at, result, False)
            entries[key] = entry
            order.append((key, entry))
            if len(entries) > max_keys:  # memory stays within the bound as it fills
                self._evict(created_at)
        if created_at > -math.inf:
            # The age horizon only moves forward (oldest first): one pass at the newest
            # removes what each restore's own pass would have removed along the way.
            self._evict(created_at)

    def _evict(self, now: float) -> None:
        # Every pass pops one item of a FIFO or stops: O(1) amortised per key (an entry
        # moves at most from the FIFO to the unknowns, back once resolved, then out).
        entries, order, unknowns = self._entries, self._order, self._unknowns
        self._now = max(now, self._now)
        horizon = now - self.retention_s
        resolved: list[tuple[str, Entry]] = []
        while unknowns:
            key, oldest = unknowns[0]
            if entries.get(key) is not oldest:
                unknowns.popleft()
            elif not _unknown(oldest):
                # Resolved: an ordinary completed key again, older (by its first answer,
                # the order a restart restores) than every key still in the FIFO.
                resolved.append(unknowns.popleft())
            elif oldest.created_at < horizon:
                unknowns.popleft()
                self._forget(key)
            else:
                break
        order.extendleft(reversed(resolved))
        while order:
            key, oldest = order[0]
            if entries.get(key) is not oldest:
                order.popleft()  # stale: the key was restored again since
                continue
            if len(entries) <= self.max_keys and oldest.created_at >= horizon:
                break
            order.popleft()
            if oldest.created_at >= horizon and _unknown(oldest):
                # Sent, outcome unknown, being resolved: its client retries this key to
                # learn the outcome. Forgotten for room, the retry began a new payment and
                # sent it again. Kept (within retention) like one in flight.
                unknowns.append((key, oldest))
                continue
            self._forget(key)
        # Past the bound only while everything left is in flight or unknown (never evicted
        # for room).
        assert len(entries) <= self.max_keys or not order

    def _forget(self, key: str) -> None:
        if self.on_forget is not None:
            self.on_forget(key)  # before it goes: the observer may look at the entry
        del self._entries[key]


def _unknown(entry: Entry) -> bool:
    return entry.result is not None and entry.result.status is Status.UNKNOWN


def body_hash(canonical_body: bytes, key: bytes) -> bytes:
    """Keyed 128-bit digest of a request body's canonical encoding."""
    return hashlib.blake2b(canonical_body, key=key[:64], digest_size=16).digest()
