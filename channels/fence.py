"""References a status inquiry was told the network never received.

The switch fails a payment on that answer (a pacs.028 answered RJCT NOOR, a QR
check-status answered not_found). The original may still be on its way, overtaken by the
inquiry on another connection (a stalled socket): booked afterwards, the debtor would be
debited, or the merchant credited, for a payment the switch failed. So the answer stands:
a network refuses an original whose reference is fenced.

Bounded, and apart from the book: every health probe of the switch asks about a
reference never sent (switch/adapters/swift.py, qr.py), so fences counted against
``max_payments`` used up the network's capacity for payments within days of probing.
Past :data:`MAX_FENCED` the oldest fence is forgotten: an original would have to stall
behind that many later inquiries (about 14 hours of probes every 0.5 s by themselves)
to be booked after its "never received".
"""

from __future__ import annotations

from typing import Final

from channels.books import FENCE_KIND, BookStore

#: Fences a network keeps (about 100 bytes each).
MAX_FENCED: Final = 100_000


class Fence:
    """An insertion-ordered, bounded set of fenced references, kept on disk once
    :meth:`keep_in` gave it a store (channels/books.py)."""

    def __init__(self, bound: int = MAX_FENCED) -> None:
        assert bound >= 1, bound
        self.bound = bound
        self._refs: dict[str, None] = {}  # dicts keep insertion order: the oldest first
        self._store: BookStore | None = None
        self._network = ""

    def keep_in(self, store: BookStore, network: str) -> None:
        """Take back ``network``'s fences from ``store``, and keep every change there."""
        assert not self._refs and self._store is None, "restore into an empty fence only"
        for entry in store.entries(network, FENCE_KIND):
            self.add(entry.key)
        self._store, self._network = store, network

    def add(self, ref: str) -> None:
        if ref in self._refs:
            return
        store = self._store
        if len(self._refs) >= self.bound:
            forgotten = next(iter(self._refs))
            del self._refs[forgotten]
            if store is not None:
                store.delete(self._network, FENCE_KIND, forgotten)
        self._refs[ref] = None
        if store is not None:
            store.put(self._network, FENCE_KIND, ref, b"")
        assert len(self._refs) <= self.bound

    def __contains__(self, ref: object) -> bool:
        return ref in self._refs

    def __len__(self) -> int:
        return len(self._refs)
