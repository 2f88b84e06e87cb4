"""The acquirer's reversals (ISO 8583 0400/0401) on the event queue.

The acquirer reverses a small seeded share of card payments (``SimOptions.reversal_share``
of new ones, and :data:`STANDIN_REVERSAL_SHARE` of the stand-in approvals it hears of:
where a reversal meets an advice not yet sent), at a random virtual time after the
request: a few while the payment is still in flight, most after the client's answer,
some late enough to meet a crash and a restart; a share of them it repeats. A reversal
answered 91, or not at all (the switch died with it), is repeated a few times.

The switch's side is the real decision code, :class:`~switch.payment.reversal.Reversals`
(one per boot, as FrontCore's dies with its process), run by this shell as
``FrontCore.reverse`` runs it on anyio: the wait for a result in flight (up to
:data:`WAIT_S`, polled every :data:`POLL_S`; then 91), the payment's latest intent read
from the journal's SQLite (its durable rows written first), the intent journaled again
(shed on a full journal: 91), then, once durable, the stand-in advice withdrawn and the
payment handed to the boot's resolver (switch/sim/resolution.py), and 00; the boot's
resolver queue is asked, as FrontCore asks the live one, whether it holds the payment (a
reversal accepted before a crash, recovered: a repeat of it is one under way). The advice
sender (switch/sim/advice.py) delivers an advice within one event, so no advice is ever
on the wire across events here: FrontCore's wait for one (``StandIn.settled``) has no
counterpart, and the simulator cannot see it.

What the acquirer was told is kept across crashes: every payment whose reversal was
accepted with something to undo (:attr:`Acquirer.accepted`), checked at the end
(:func:`switch.sim.verify.check_reversals`).
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from switch import reasons
from switch.journal import JournalFailed, JournalFull, JournalRecord
from switch.journal.records import to_row
from switch.model import Payment, PaymentRequest, Result, Status
from switch.payment.reversal import Plan
from switch.serve.frontcore import INTENT_SQL as LIVE_INTENT_SQL
from switch.sim.networks import World
from switch.sim.ports import Boot

#: The acquirer's event kinds (the simulation dispatches them here): a reversal sent (or
#: polled while its original is in flight), and its answer overdue.
ACQ_REVERSE, ACQ_TIMEOUT = 300, 301

#: Share of stand-in approvals the acquirer reverses (not already chosen): stand-in
#: approvals are few, and a reversal of one is where an advice not yet sent must be
#: withdrawn, so they are reversed more often than the rest.
STANDIN_REVERSAL_SHARE: Final = 0.3
#: When, after the client heard the stand-in approval (seconds): mostly while its issuer
#: is still unreachable, so its advice still waits.
STANDIN_AFTER_S: Final = (0.05, 3.0)
#: When, after the request: (share, (from, to) seconds). In flight (a payment takes
#: ~2-7 ms), after the answer, late (across a crash and a restart, sometimes).
WHEN: Final = ((0.1, (0.0005, 0.006)), (0.75, (0.05, 5.0)), (0.15, (5.0, 30.0)))
#: Share of reversals the acquirer repeats (0401) of its own accord, after (from, to) s.
REPEAT_SHARE: Final = 0.2
REPEAT_AFTER_S: Final = (0.001, 5.0)
#: Share of reversals sent with another amount than the original's (answered 13).
WRONG_AMOUNT_SHARE: Final = 0.03
#: Sends of one reversal at most (91, or no answer), RETRY_S apart; no answer after
#: TIMEOUT_S is a lost one.
TRIES: Final = 6
RETRY_S: Final = 1.0
TIMEOUT_S: Final = 10.0
#: FrontCore.reverse's wait for a result in flight, and the poll that models it.
WAIT_S: Final = 5.0
POLL_S: Final = 0.01
#: The live switch's read of a payment's latest intent, on the live journal.
INTENT_SQL: Final = LIVE_INTENT_SQL.format(schema="main")
_payment_decoder: Final = msgspec.msgpack.Decoder(Payment)


class Host(Protocol):
    """What the acquirer needs of the simulation (switch/sim/simulation.py)."""

    now: float
    world: World
    db: sqlite3.Connection
    boot: Boot | None
    counters: dict[str, int]

    def push(self, at: float, kind: int, a: Any = None, b: Any = None) -> None: ...
    def note(self, about: str | tuple[str, ...] | None, *fields: object) -> None: ...
    def wall_us(self) -> int: ...


@dataclass(slots=True)
class Reversal:
    """One reversal (and its repeats) of the payment under ``key``."""

    key: str
    amount: int
    repeat: bool  # a repeat of the acquirer's own accord (0401)
    tries: int = 0
    #: The send waiting for an answer (0: none), and how long it waited for a result.
    sending: int = 0
    waited_s: float = 0.0
    boot: Boot | None = None


class Acquirer:
    def __init__(self, host: Host, seed: int, share: float) -> None:
        self.host = host
        self.share = share
        self._rng = random.Random(f"payswitch-sim-acquirer:{seed}")
        self._chosen: set[str] = set()
        self._sends = 0
        #: Reversals not yet answered for good (the run waits for them before it ends).
        self.pending = 0
        #: Payment id -> (key, stood in) of every reversal accepted with something to
        #: undo (00 after its intent was journaled and it was handed to the resolver).
        self.accepted: dict[str, tuple[str, bool]] = {}

    # ----------------------------------------------------------------- the workload

    def new_card_payment(self, request: PaymentRequest) -> None:
        """A new card payment was sent now: reverse it, sometimes."""
        rng = self._rng
        if rng.random() >= self.share:
            return
        draw, at = rng.random(), 0.0
        for share, (low, high) in WHEN:
            if draw < share:
                at = rng.uniform(low, high)
                break
            draw -= share
        self._choose(request, at)

    def stood_in(self, request: PaymentRequest) -> None:
        """The client heard a stand-in approval of ``request`` now: reverse it, sometimes."""
        rng = self._rng
        if request.idempotency_key not in self._chosen and rng.random() < STANDIN_REVERSAL_SHARE:
            self._choose(request, rng.uniform(*STANDIN_AFTER_S))

    def _choose(self, request: PaymentRequest, after_s: float) -> None:
        rng, host = self._rng, self.host
        key = request.idempotency_key
        self._chosen.add(key)
        amount = request.amount
        if rng.random() < WRONG_AMOUNT_SHARE:
            amount += 1
        self.pending += 1
        host.push(host.now + after_s, ACQ_REVERSE, None, Reversal(key, amount, False))
        if rng.random() < REPEAT_SHARE:
            self.pending += 1
            host.push(host.now + after_s + rng.uniform(*REPEAT_AFTER_S), ACQ_REVERSE, None,
                      Reversal(key, amount, True))

    # ----------------------------------------------------------------- the switch's shell

    def send(self, rev: Reversal) -> None:
        """The reversal reaches the switch now (or, ``rev.sending``, polls its original's
        result in flight, on the boot it was sent to)."""
        host = self.host
        boot = host.boot
        if rev.sending:
            if boot is not rev.boot or boot is None:
                return  # the connection died with its switch: the timeout repeats it
            self._decide(boot, rev)
            return
        rev.tries += 1
        self._sends += 1
        rev.sending = self._sends
        rev.waited_s = 0.0
        rev.boot = boot
        host.note(rev.key, "reversal", rev.key, "try", rev.tries, "repeat", rev.repeat)
        host.push(host.now + TIMEOUT_S, ACQ_TIMEOUT, None, (rev, rev.sending))
        if boot is None or boot.failed:
            return  # nobody listening (or fail-stop): no answer, the timeout repeats it
        self._decide(boot, rev)

    def timed_out(self, rev: Reversal, sending: int) -> None:
        if rev.sending == sending:
            self._answered(rev, "")

    def _decide(self, boot: Boot, rev: Reversal) -> None:
        """FrontCore.reverse, with this boot's Reversals."""
        host, reversals, index = self.host, boot.reversals, boot.index
        entry = reversals.lookup(index, rev.key)
        if isinstance(entry, str):
            self._answered(rev, entry)
            return
        result = entry.result
        if result is None and rev.waited_s < WAIT_S:
            rev.waited_s += POLL_S  # the result is awaited, up to WAIT_S
            host.push(host.now + POLL_S, ACQ_REVERSE, None, rev)
            return
        # As FrontCore's: the boot's resolver is asked whether it holds the payment (a
        # reversal accepted before a restart, recovered), and again after the intent.
        queue = boot.resolver.queue
        answer = reversals.admit(index, rev.key, result, rev.amount, queue)
        if answer is not None:
            if answer == reasons.APPROVED and result is not None \
                    and result.status is Status.APPROVED:
                # 00 to a repeat: the switch says this reversal was taken (handed over).
                # Checked at the end like the first one's (check_reversals).
                self._accepted(result, rev.key)
            self._answered(rev, answer)
            return
        assert result is not None
        pid = result.payment_id
        plan = reversals.plan(pid, self._intent(boot, pid), rev.amount, boot.router, index,
                              queue)
        if isinstance(plan, str):
            self._answered(rev, plan)
            return
        record = JournalRecord.intent(plan.payment, plan.digest, host.wall_us())
        try:
            ticket = boot.journal.append(to_row(record))  # OnFull.SHED: refused when full
        except (JournalFull, JournalFailed):
            reversals.release(pid)
            self._answered(rev, reasons.ISSUER_UNAVAILABLE)
            return
        # A commit that fails drops this continuation with the boot (fail-stop): the
        # acquirer hears nothing and repeats, where the live switch answers 91.
        assert ticket is not None
        boot.waiting.setdefault(ticket, []).append(
            lambda: self._durable(boot, rev, result, plan))

    def _intent(self, boot: Boot, pid: str) -> tuple[Payment, bytes] | None:
        """The payment's intent in the durable journal, as the live switch reads it (every
        intent of a payment carries the same body): in SQLite, else among the durable
        rows the simulated writer has not put there yet (flushing them for one read cost
        2% of a simulated hour's CPU)."""
        row = self.host.db.execute(INTENT_SQL, (pid,)).fetchone()
        if row is not None:
            return _payment_decoder.decode(row[0]), bytes(row[1])
        durable = boot.journal.unflushed_intent(pid)  # (pid, key, kind, status, hash, body, ..)
        if durable is not None:
            return _payment_decoder.decode(durable[5]), bytes(durable[4])
        return None

    def _durable(self, boot: Boot, rev: Reversal, result: Result, plan: Plan) -> None:
        """The reversal's intent is durable: withdraw the advice, hand over, answer 00."""
        pid = result.payment_id
        queued = boot.standin.pending
        if boot.reversals.withdraw_advice(result, boot.standin):
            # Nothing is ever on the wire here (module docstring): nothing to wait for.
            withdrawn = queued - boot.standin.pending
            self.host.note(pid, "reversal withdraws advice", pid, withdrawn)
            if withdrawn:
                self._count("advices_withdrawn")
        boot.resolver.submit(plan.payment, plan.digest, plan.route)
        boot.reversals.handed_over(pid)
        self._accepted(result, rev.key)
        self._count("reversals_accepted")
        self._answered(rev, reasons.APPROVED)

    def _accepted(self, result: Result, key: str) -> None:
        pid = result.payment_id
        self.accepted.setdefault(pid, (key, result.stood_in))
        self.host.world.reversal_accepted.add(pid)

    def _count(self, name: str) -> None:
        counters = self.host.counters
        counters[name] = counters.get(name, 0) + 1

    def _answered(self, rev: Reversal, code: str) -> None:
        """The acquirer hears ``code`` ("": no answer in time) to its latest send."""
        host = self.host
        host.note(rev.key, "reversal answer", rev.key, code or "none")
        rev.sending = 0
        rev.boot = None
        self._count("reversals_" + (code or "lost"))
        if code in ("", reasons.ISSUER_UNAVAILABLE) and rev.tries < TRIES:
            host.push(host.now + RETRY_S, ACQ_REVERSE, None, rev)
            return
        self.pending -= 1
        assert self.pending >= 0
