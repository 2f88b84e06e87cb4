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

from collections.abc import Iterator
from typing import Final

#: Fences a network keeps (about 100 bytes each).
MAX_FENCED: Final = 100_000


class Fence:
    """An insertion-ordered, bounded set of fenced references."""

    def __init__(self, bound: int = MAX_FENCED) -> None:
        assert bound >= 1, bound
        self.bound = bound
        self._refs: dict[str, None] = {}  # dicts keep insertion order: the oldest first

    def add(self, ref: str) -> str | None:
        """Fence ``ref``; returns the reference forgotten to make room, if one was (the
        books on disk forget it too: channels/books.py)."""
        if ref in self._refs:
            return None
        forgotten = None
        if len(self._refs) >= self.bound:
            forgotten = next(iter(self._refs))
            del self._refs[forgotten]
        self._refs[ref] = None
        assert len(self._refs) <= self.bound
        return forgotten

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __contains__(self, ref: object) -> bool:
        return ref in self._refs

    def __len__(self) -> int:
        return len(self._refs)
