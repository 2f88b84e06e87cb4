"""One timer structure for the payment core: a heap of deadlines with lazy cancellation.

Every timer of the core (per-attempt timeouts, retry back-offs, duplicate waits) lives
here, so the shell has exactly one thing to drive: sleep until :meth:`TimerHeap.next_deadline`,
then hand the core ``now``. Sans-IO: no clock is read here, ``now`` always comes in.

Cancelling is lazy: an owner carries a generation number and an entry whose generation
is stale is skipped when it reaches the top. That makes cancel O(1) (most attempts are
answered long before their timeout, so most timers are cancelled), and the heap is
compacted when stale entries outnumber live ones, so its size stays bounded by the live
timers (itself bounded by the payments in flight).
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

#: Stale entries tolerated before a compaction, on top of twice the live ones.
COMPACT_SLACK: Final = 4096


class Timed(Protocol):
    """An owner of at most one timer at a time."""

    timer_gen: int


class TimerHeap:
    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed, int]] = []
        self._seq = 0
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def set(self, owner: Timed, deadline: float) -> None:
        """Arm ``owner``'s timer at ``deadline``, replacing any it had."""
        assert deadline == deadline, "NaN deadline"
        self.cancel(owner)
        owner.timer_gen += 1
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, owner, owner.timer_gen))
        self._live += 1
        if len(self._heap) > 2 * self._live + COMPACT_SLACK:
            self._compact()

    def cancel(self, owner: Timed) -> None:
        """Disarm ``owner``'s timer if armed (odd generation = armed)."""
        if owner.timer_gen & 1:
            owner.timer_gen += 1
            self._live -= 1
            assert self._live >= 0

    def armed(self, owner: Timed) -> bool:
        return bool(owner.timer_gen & 1)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][3] != heap[0][2].timer_gen:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timed]:
        """Every owner whose deadline is <= ``now``, earliest first, now disarmed."""
        heap = self._heap
        due: list[Timed] = []
        while heap and heap[0][0] <= now:
            _, _, owner, gen = heapq.heappop(heap)
            if gen == owner.timer_gen:
                owner.timer_gen += 1
                self._live -= 1
                due.append(owner)
        return due

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[3] == e[2].timer_gen]
        heapq.heapify(self._heap)
        assert len(self._heap) == self._live
