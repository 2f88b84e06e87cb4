"""How old a payment is in true time, across restarts whose wall clock stepped. Sans-IO.

Why: the switch's wall clock is anchored once per start (switch/clock.py) and advances
with the monotonic clock, so within one run it never steps; across a restart the new
anchor may have moved (NTP, an operator, a VM resumed). Ages read on the wall clock alone
are then wrong by the step: forward, an unfinished payment looks older than it is and the
resolver asks its network too early (QR allows no check-status before 90 s after the
payment); backward, it looks younger and the first attempt comes late.

Each start records an :class:`Anchor`: the machine's boot id, a reference clock that
survives process restarts within one machine boot, and the wall anchor, read together.
From two successive anchors of one machine boot the step across that restart is

    step = wall_new - (wall_prev + (reference_new - reference_prev))

and a payment stamped ``made`` (on the wall clock of the run it was made in) is

    age = wall_now - made - sum(steps of the restarts after it was made)

old in true time. A restart across a machine reboot (another boot id), or with no
previous record, has no known step: it counts as 0 and ages across it are read on the
wall clock, as before. Nothing here reads a clock or a file: the shells (switch/serve/
app.py, switch/sim/simulation.py) read them and hand the anchors in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Final

import msgspec

#: Anchors kept (this start's included). A payment made more restarts ago than this is
#: aged as if made before every kept one (see :meth:`RestartAges.age_s`).
MAX_ANCHORS: Final = 64
#: The journal meta key the anchors are kept under (switch/journal/store.py's helpers).
META_KEY: Final = "restart_anchors"
#: A stored value longer than this is refused (64 anchors take ~6 kB).
MAX_ENCODED: Final = 64 * 1024


class Anchor(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One start of the switch: what its wall clock and its reference clock read then."""

    #: The machine boot's id ("" when unknown: no step across this start is known).
    boot_id: str
    #: The reference clock (monotonic since machine boot), seconds.
    reference_s: float
    #: The wall clock's anchor (Unix seconds): the run's every stamp counts from it.
    wall_s: float
    #: The journal's boot count of this start (reader.next_boot; 0: not known). Every
    #: version counts its starts there, but only this one records an anchor: a gap
    #: between two anchors' counts is a start that recorded none (a rollback to an older
    #: version), whose own step is folded into the step measured across it.
    boot: int = 0


class History(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the journal keeps: the recent anchors, and what the forgotten ones leave."""

    #: Oldest first, MAX_ANCHORS at most.
    anchors: list[Anchor]
    #: The most the known steps from any forgotten start up to the oldest kept anchor sum
    #: to (None: none forgotten). A payment older than every kept anchor may have been
    #: made in any forgotten run: without this, the steps after it were lost, and a
    #: forward step among them made it look older (asked early) after a crash loop of
    #: more than MAX_ANCHORS starts.
    forgotten_later_s: float | None = None


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(History)
#: The first stored form (458902d..a27c42b, never released): the anchors alone.
_LIST_DECODER: Final = msgspec.json.Decoder(list[Anchor])


def encode(history: History) -> str:
    assert len(history.anchors) <= MAX_ANCHORS
    assert history.forgotten_later_s is None or math.isfinite(history.forgotten_later_s)
    return _ENCODER.encode(history).decode()


def decode_history(text: str | None) -> History:
    """What is stored (none: no anchors). Raises msgspec.DecodeError or ValueError on a
    value this code never wrote: the shell logs it and starts afresh."""
    if text is None:
        return History([])
    if len(text) > MAX_ENCODED:
        raise ValueError(f"restart anchors: {len(text)} characters, more than {MAX_ENCODED}")
    history = (History(_LIST_DECODER.decode(text)) if text.lstrip().startswith("[")
               else _DECODER.decode(text))
    anchors = history.anchors
    if any(not (math.isfinite(a.reference_s) and math.isfinite(a.wall_s)) for a in anchors):
        raise ValueError("restart anchors: a clock reading that is not finite")
    forgotten = history.forgotten_later_s
    if forgotten is not None and not math.isfinite(forgotten):
        raise ValueError("restart anchors: a forgotten step sum that is not finite")
    if len(anchors) > MAX_ANCHORS:
        raise ValueError(f"restart anchors: {len(anchors)}, more than {MAX_ANCHORS}")
    return history


def started(previous: History, anchor: Anchor) -> History:
    """What to store at this start: the previous anchors and ``anchor``, the oldest
    forgotten past MAX_ANCHORS, its steps folded into ``forgotten_later_s``."""
    anchors = [*previous.anchors, anchor]
    forgotten = previous.forgotten_later_s
    while len(anchors) > MAX_ANCHORS:
        oldest, next_oldest = anchors[0], anchors[1]
        step = step_s(oldest, next_oldest)
        # Sums up to the new oldest kept anchor: the step into it is added to every
        # forgotten start's (the one just forgotten included, with nothing before it).
        forgotten = max(forgotten or 0.0, 0.0) + (step or 0.0)
        anchors.pop(0)
    assert len(anchors) <= MAX_ANCHORS
    return History(anchors, forgotten)


def step_s(before: Anchor, after: Anchor) -> float | None:
    """How far the wall clock stepped across the restart from ``before`` to ``after``
    (None: unknown -- another machine boot, no boot id, a reference gone back, or a start
    between them that recorded no anchor).

    Why the last: a run in between made stamps on a wall clock of its own, and the step
    measured from ``before`` to ``after`` is the sum of the steps into and out of it.
    Charged to ``before``'s run, a payment made in the middle run took the step into it
    as well: a backward step there made it look older than it was (asked early)."""
    if not before.boot_id or before.boot_id != after.boot_id:
        return None
    if before.boot and after.boot and after.boot != before.boot + 1:
        return None
    elapsed = after.reference_s - before.reference_s
    if elapsed < 0:  # a monotonic clock of one boot never goes back: not the same clock
        return None
    return after.wall_s - (before.wall_s + elapsed)


class RestartAges:
    """True ages of payments from their wall stamps, given the anchors of the recent
    starts (oldest first; the last is the running one's)."""

    __slots__ = ("_fast_from", "_forgotten_later", "_frames", "steps")

    def __init__(self, anchors: Sequence[Anchor], forgotten_later_s: float | None = None
                 ) -> None:
        assert 0 < len(anchors) <= MAX_ANCHORS
        #: Each restart's step (None: unknown, counted as 0), oldest first.
        self.steps: tuple[float | None, ...] = tuple(
            step_s(a, b) for a, b in itertools.pairwise(anchors))
        known = [s if s is not None else 0.0 for s in self.steps]
        # Run j's stamps lie in [start, end): from its anchor to where its wall stood at
        # the next start (the next anchor less its step). later_steps: the sum of the
        # steps after run j, subtracted from the wall age of a payment made in it.
        frames: list[tuple[float, float, float]] = []
        later = 0.0
        end = math.inf
        for j in range(len(anchors) - 1, -1, -1):
            frames.append((anchors[j].wall_s, end, later))
            if j > 0:
                end = anchors[j].wall_s - known[j - 1]
                later += known[j - 1]
        frames.reverse()
        self._frames: tuple[tuple[float, float, float], ...] = tuple(frames)
        #: The steps after a forgotten run (None: none forgotten): the oldest kept run's,
        #: and the most the forgotten ones' up to it sum to.
        self._forgotten_later = (None if forgotten_later_s is None
                                 else frames[0][2] + forgotten_later_s)
        #: A stamp at or past this (and not past the wall clock now) is the running run's
        #: and no earlier one's: its wall age is its true age (nearly every payment a
        #: refill takes back: two comparisons).
        self._fast_from = max([anchors[-1].wall_s, *(end for _, end, _ in frames[:-1])])

    @property
    def stepped(self) -> bool:
        """Some restart's known step is not zero: ages differ from wall ages."""
        return any(self.steps) or bool(self._forgotten_later)

    @property
    def step(self) -> float | None:
        """The step across the running start (None: the first known start, or unknown)."""
        return self.steps[-1] if self.steps else None

    def age_s(self, made_us: int, wall_us: int) -> float:
        """How long ago, in true time, a payment stamped ``made_us`` was made, at
        ``wall_us`` on the running run's wall clock. Never negative.

        The running run made only stamps up to ``wall_us``: one past it is an earlier
        run's (a backward step). A stamp two runs could have made (the wall clock stepped
        back between them) takes the younger age, and so does a stamp no kept run made
        (older than every anchor, or in the gap of a forward step): the resolver then
        waits longer than it had to, never asks before the network allows. Rounded down
        to a whole millisecond for the same reason (float sums of Unix seconds carry
        sub-microsecond errors)."""
        made = made_us / 1e6
        wall_age = (wall_us - made_us) / 1e6
        running = self._frames[-1][0] <= made and made_us <= wall_us
        if running and made >= self._fast_from:
            return _floor_ms(wall_age)
        fits = [later for start, end, later in self._frames[:-1] if start <= made < end]
        if running:
            fits.append(0.0)
        if not fits:
            # No kept run made it: the youngest age any of them would give, or any
            # forgotten one (made before the oldest kept run with none forgotten is the
            # first one's: the step into it is unknown, 0).
            fits = [later for _, _, later in self._frames]
            if self._forgotten_later is not None:
                fits.append(self._forgotten_later)
        return _floor_ms(wall_age - max(fits))

    def most_correction_s(self) -> float:
        """The most by which :meth:`age_s` of any stamp falls short of its wall age, in
        seconds (before the millisecond rounding, which may take up to 1 ms more): the
        largest sum of the known steps after any kept run, or after a forgotten one
        (``forgotten_later_s``). Never below 0 (the running run's stamps are corrected by
        nothing); 0 with no forward step known. A stamp no kept run made is given this
        correction (the youngest age), so no stamp is younger in true time than its wall
        age less this: retention lowers its horizon by it (switch/journal/archive.py)."""
        laters = [later for _, _, later in self._frames]
        if self._forgotten_later is not None:
            laters.append(self._forgotten_later)
        most = max(laters)
        assert most >= 0.0 and self._frames[-1][2] == 0.0
        return most


def _floor_ms(age_s: float) -> float:
    return max(0.0, math.floor(age_s * 1000.0) / 1000.0)


def at_start(stored: str | None, anchor: Anchor) -> tuple[str, RestartAges, str | None]:
    """A start's bookkeeping, given the stored anchors (None: none) and this start's:
    the value to store back (before recovery reads any age), the ages for this run, and
    a problem to log (a stored value this code cannot read: the history starts afresh,
    ages fall back to the wall clock as with no record)."""
    problem = None
    try:
        previous = decode_history(stored)
    except (msgspec.DecodeError, ValueError) as exc:
        previous = History([])
        problem = f"restart anchors unreadable, history started afresh: {exc}"
    history = started(previous, anchor)
    return (encode(history), RestartAges(history.anchors, history.forgotten_later_s),
            problem)
