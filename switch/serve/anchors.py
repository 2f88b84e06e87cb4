"""This start's clock anchor, recorded in the journal before recovery reads any age.

One routine for the switch's start-up (switch/serve/app.py) and the simulator's
(switch/sim/simulation.py), so the simulator records and reads anchors exactly as the
switch does. The decisions are switch/payment/restarts.py's (sans-IO); here they meet
the journal's meta table, which that module must not touch. Each caller builds its own
anchor (the live clock and boot id, or the simulator's virtual ones) and decides what a
problem costs: the switch logs it and starts, the simulator fails.
"""

from __future__ import annotations

import sqlite3

from switch.journal.store import read_meta, write_meta
from switch.payment import restarts


def record_start(db: sqlite3.Connection, anchor: restarts.Anchor
                 ) -> tuple[restarts.RestartAges, str | None]:
    """Store ``anchor`` with the recent starts' in ``db``'s meta table; the ages this run
    reads across restarts, and a problem to report (None: none). A stored value this code
    cannot read is a problem, not a failed start: the history starts afresh and ages fall
    back to the wall clock. Start-up only, in the thread that owns ``db`` then."""
    problem = None
    try:
        stored = read_meta(db, restarts.META_KEY)
    except ValueError as exc:  # not a value this code wrote (not text, or too long)
        stored = None
        problem = f"restart anchors unreadable, history started afresh: {exc}"
    value, ages, unreadable = restarts.at_start(stored, anchor)
    write_meta(db, restarts.META_KEY, value)
    return ages, problem if problem is not None else unreadable
