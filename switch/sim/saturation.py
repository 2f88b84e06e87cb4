"""When each channel's resolver had every worker busy: the schedule check's allowance.

Its own module because both sides use it: the resolver's shell (switch/sim/resolution.py)
records the spans and the schedule check (switch/sim/verify.py, through the simulation)
reads them, and verify.py already imports what imports the resolver's shell.
"""

from __future__ import annotations

from typing import Final

from switch.payment.resolver import CHANNELS

#: Bound on the saturated spans kept per channel; past it the oldest are forgotten, which
#: only ever makes the schedule check stricter for payments older than what is kept.
MAX_SATURATED_SPANS: Final = 100_000


class SaturatedSpans:
    """When each channel's resolver had every worker busy, in virtual time.

    The resolver runs at most ``workers`` attempts at once per channel: a payment due
    while they are all busy waits its turn, and a backlog of thousands (a crash after a
    long outage) drains at about workers / network latency per second, whatever the
    schedule says. :func:`check_schedule` adds a payment's saturated time to its
    allowance, so a resolver at full capacity is not called late while one that leaves
    workers idle with a due payment waiting still is (the FIFO resolver plant).

    Spans that touch (a worker freed and taken again in the same instant: the next job
    of a backlog) are one span, so a backlog is one span however long it drains.
    """

    __slots__ = ("_open", "_spans")

    def __init__(self) -> None:
        self._spans: dict[str, list[tuple[float, float]]] = {c: [] for c in CHANNELS}
        self._open: dict[str, float | None] = dict.fromkeys(CHANNELS)

    def start(self, channel: str, at: float) -> None:
        """Every worker of ``channel`` is busy from ``at``."""
        assert self._open[channel] is None, f"{channel}: saturated twice"
        spans = self._spans[channel]
        if spans and spans[-1][1] == at:  # freed and taken in the same instant
            at = spans.pop()[0]
        self._open[channel] = at

    def end(self, channel: str, at: float) -> None:
        """A worker of ``channel`` is free from ``at`` (or its boot crashed)."""
        began = self._open[channel]
        if began is None:
            return
        assert at >= began, (channel, began, at)
        self._open[channel] = None
        spans = self._spans[channel]
        spans.append((began, at))
        if len(spans) > MAX_SATURATED_SPANS:
            del spans[: len(spans) // 2]

    def end_all(self, at: float) -> None:
        for channel in CHANNELS:
            self.end(channel, at)

    def seconds(self, channel: str, start: float, end: float) -> float:
        """How long, within [``start``, ``end``], every worker of ``channel`` was busy."""
        total = 0.0
        began = self._open[channel]
        if began is not None:
            total += max(0.0, end - max(began, start))
        for span_start, span_end in reversed(self._spans[channel]):
            if span_end <= start:
                break  # spans are in time order: every earlier one ends earlier still
            total += max(0.0, min(span_end, end) - max(span_start, start))
        assert 0.0 <= total <= max(0.0, end - start) + 1e-9, (total, start, end)
        return total
