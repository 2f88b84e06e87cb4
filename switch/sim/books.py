"""The books after a run: the ledger from the journal, and the card scheme's clearing files.

Two invariants, checked once at the end of a run (cheap next to the run itself):

* ``ledger``: switch/backoffice/ledger.py posts the journal's approved payments (card
  holds pending, SWIFT and QR posted), a clearing cycle captures the holds; then postings
  per currency sum to zero (with and without pending), no merchant account is below zero,
  the cycle's net positions per currency sum to zero, and the ledger holds exactly the
  journal's approved amount per currency, no more and no less (money conserved between
  the journal and the ledger).
* ``settlement``: the card scheme's clearing files, written by the real writer
  (channels/settlement.py, cut every :data:`CUT_EVERY_S` of virtual time and once at the
  end) and read back with the codec, net per RRN (settled minus reversed) to what the
  journal says the issuer owes: an approval its amount; a stand-in approval its amount if
  the issuer took the advice, else nothing (the explained stand-in exposure, counted);
  anything else nothing. A cleared RRN without a journal intent is a break too.

SWIFT and QR have no settlement files here (their simulated books are the simulation's
own, not the TCP simulators' servers the writer reads); the run's own check compares
those books with the journal payment by payment.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from channels.card import CardScheme
from channels.config import SettlementSpec
from channels.settlement import SettlementWriter
from switch.backoffice import ledger
from switch.currency import NUMERIC_TO_ALPHA
from switch.journal import Fold
from switch.model import Payment, Result, Status
from switch.protocols.settlement_files import decode_card_clearing, settlement_file_order

#: Virtual seconds between two clearing cut-offs (a cut also ends every run).
CUT_EVERY_S: Final = 5.0

Problem = tuple[str, str]  # (subject, detail)


class _Source:
    """What SettlementWriter reads: the sim's one card scheme; no TCP network servers."""

    def __init__(self, scheme: CardScheme) -> None:
        self._schemes = {scheme.name: scheme}

    @property
    def card_schemes(self) -> Mapping[str, CardScheme]:
        return self._schemes

    @property
    def networks(self) -> Mapping[str, Any]:
        return {}


class Clearing:
    """The card scheme's clearing files of one run, in a temporary directory.

    The writer's clock stamps settlement times only (never compared here): the monotonic
    clock anyio's asyncio loop reads, read without one. Each cut ran in a one-off event
    loop for that clock alone, and the first imported anyio's asyncio backend: 60 ms of a
    simulator process's CPU. The books it reads are the simulation's, between events.
    """

    def __init__(self, scheme: CardScheme, seed: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="payswitch-sim-clearing-")
        # The simulated networks never restart: their books need no disk.
        self._spec = SettlementSpec(out_dir=self._dir.name, cycle_s=CUT_EVERY_S, seed=seed,
                                    books_on_disk=False)
        self._source = _Source(scheme)
        self._writer: SettlementWriter | None = None
        self.cuts = 0

    def cut(self) -> None:
        if self._writer is None:
            self._writer = SettlementWriter(self._source, self._spec, clock=time.monotonic)
        self._writer.cut()
        self.cuts += 1

    def cleared(self) -> dict[str, list[tuple[int, str, int]]]:
        """Per RRN: (cycle, status, amount) of every entry in the files, in cycle order."""
        out: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for path in sorted(Path(self._dir.name).glob("*.clr"),
                           key=lambda p: settlement_file_order(p.name)):
            cycle = int(path.stem.rsplit("-", 1)[1])
            for e in decode_card_clearing(path.read_text(), path.name, NUMERIC_TO_ALPHA):
                out[e.reference.strip()].append((cycle, e.status, e.amount))
        return out

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._dir.cleanup()


@dataclass
class SettlementCheck:
    problems: list[Problem] = field(default_factory=list)
    #: Explained: stand-in approvals the issuer refused the advice of (minor units).
    standin_exposure: int = 0


def check_settlement(clearing: Clearing, scheme: CardScheme,
                     card_intents: Iterable[tuple[str, Payment, str]],
                     finals: Mapping[str, Result]) -> SettlementCheck:
    """The clearing files against the journal (``card_intents``: its card payments, each
    with its RRN stripped, in journal order): the breaks and what explains the rest."""
    out = SettlementCheck()
    clearing.cut()  # the last cycle: everything still standing
    cleared = clearing.cleared()
    # RRNs the issuer holds or held money for (an authorization, or a stand-in advice it
    # took), and those it reversed.
    held: set[str] = set()
    reversed_at_issuer: set[str] = set()
    for r in scheme.records.values():
        if r.kind != "none":
            held.add(r.rrn.strip())
        if r.state == "reversed":
            reversed_at_issuer.add(r.rrn.strip())
    approved = Status.APPROVED
    no_entries: list[tuple[int, str, int]] = []
    for pid, payment, rrn in card_intents:
        entries = cleared.pop(rrn, no_entries)
        if len(entries) == 1:  # nearly always: one cycle cleared it
            _, status, net = entries[0]
            if status != "settled":
                net = -net
        else:
            net = sum(a if status == "settled" else -a for _, status, a in entries)
        result = finals.get(pid)
        owed = 0
        if result is not None and result.status is approved:
            if not result.stood_in or rrn in held:
                owed = payment.amount
            else:
                out.standin_exposure += payment.amount  # explained: advice refused
        if net == owed:
            continue
        status = result.status.value if result is not None else "open"
        detail = (f"journal {status} {payment.amount} (owed {owed}), clearing files net "
                  f"{net}: {entries}")
        if rrn in reversed_at_issuer and net > owed and net - owed == payment.amount:
            detail += ("; reversed at the issuer after a cut had cleared it, and no later "
                       "file reports the reversal (channels/settlement.py cut())")
        out.problems.append((pid, detail))
    for rrn, entries in sorted(cleared.items()):
        out.problems.append((f"RRN {rrn}", f"cleared {entries} but the journal has no intent"))
    return out


def check_ledger(db: sqlite3.Connection, folded: Fold, closed_at_us: int,
                 approved: Mapping[str, int]) -> list[Problem]:
    """Post the journal (``folded``: all of it) to the ledger, close a cycle, check it; see
    the module's doc. ``approved``: per currency, the journal's approved amount (its
    approved payments with an intent)."""
    problems: list[Problem] = []
    ledger.post_from_journal(db, folded)
    report = ledger.settle(db, closed_at_us)
    try:
        ledger.check_invariants(db)
    except AssertionError as exc:
        problems.append(("postings", str(exc)))
    net: dict[str, int] = defaultdict(int)
    for position in report.net:
        net[position.currency] += position.amount
    problems += [(f"net {ccy}", f"net positions sum to {total}, not 0")
                 for ccy, total in sorted(net.items()) if total]
    booked: dict[str, int] = defaultdict(int)
    for currency, amount in db.execute(
            "SELECT currency, SUM(amount) FROM ledger_transfers WHERE state = 'posted'"
            " GROUP BY currency"):
        booked[currency] = int(amount)
    for currency in sorted(set(approved) | set(booked)):
        journal = approved.get(currency, 0)
        if journal != booked[currency]:
            problems.append((f"ledger {currency}", f"journal approved {journal}, "
                             f"ledger posted {booked[currency]}"))
    return problems
