"""The simulated journal disk batches records as the real group-commit writer does."""

from __future__ import annotations

from typing import Any

from switch.journal import open_database
from switch.sim.disk import Batch, SimJournal


def _row(i: int) -> Any:
    return (f"P1-{i}", f"k{i}", "intent", "sent", b"h" * 16, b"r", i)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.commits: list[tuple[Batch, float]] = []


def _journal(clock: _Clock) -> SimJournal:
    return SimJournal(open_database(":memory:", "off"),
                      lambda batch, at: clock.commits.append((batch, at)), lambda: clock.now)


def test_a_record_after_the_hand_off_waits_for_the_next_commit() -> None:
    clock = _Clock()
    journal = _journal(clock)
    first = journal.append(_row(1))
    # Same loop step (same instant): the real writer takes the batch at the end of the
    # step, so this record shares the commit.
    assert journal.append(_row(2)) is first
    clock.now = 0.0001  # the commit is under way (it takes COMMIT_BASE_S)
    later = journal.append(_row(3))
    assert later is not first, "a record joined a commit that started before it arrived"
    assert [batch for batch, _ in clock.commits] == [first]
    assert isinstance(first, Batch)
    journal.commit(first, None)  # the disk is done: the next batch is handed at once
    assert [batch for batch, _ in clock.commits] == [first, later]
    assert journal.pending == 1 and journal.records == 2
