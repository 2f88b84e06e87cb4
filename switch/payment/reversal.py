"""An acquirer's reversal of a payment (ISO 8583 0400/0420, the HTTP door): the decisions.

Sans-IO: :class:`Reversals` decides what to answer and what to do, one step at a time; the
shells do the waiting, the reading and the writing in between. Two shells run the same
steps in the same order: the live switch's ``FrontCore.reverse``
(switch/serve/frontcore.py: anyio, the journal's SQLite reader, the pipeline's resolver)
and the deterministic simulator's acquirer (switch/sim/simulation.py: the event queue, its
journal and resolver shell), so what the simulator checks is what the switch decides.

1. :meth:`Reversals.lookup`: the original's index entry, or 25 (no such original). Its
   result None: still in flight; the shell waits for it, up to its bound.
2. :meth:`Reversals.admit` with the result (None: still none after the wait): the answer
   now (91: still in flight, or too many reversals under way; 00: nothing to undo --
   declined, failed, already reversed, unknown (the resolver reverses unknown card
   payments by itself) -- or a repeat of a reversal handed over; 91 for a repeat of one
   still being decided), or None: claimed; the shell reads the payment's latest intent
   from the journal.
3. :meth:`Reversals.plan` with that intent and the acquirer's amount: the answer now (00:
   approved without reaching a network, nothing held; 13: not the original's amount, a
   whole payment is reversed or nothing; 91: no route), or a :class:`Plan`: the shell
   journals the intent again (shed on a full journal: 91, :meth:`release`), which makes
   the reversal durable (replay treats the payment as unfinished: recovery resolves it).
4. Durable: :meth:`Reversals.withdraw_advice` withdraws a stand-in approval's 0120 advice
   not yet sent (the issuer must never learn of a payment the acquirer undid), then the
   shell hands the plan to the resolver (:meth:`Reversals.handed_over`), which reverses
   it with the issuer and journals ``reversed``, and answers 00. Until then the payment,
   reopened in the journal, is the shell's (:meth:`Reversals.deciding`): a refill of the
   resolver leaves it alone, as it leaves the payments the core owns.

Every answer but the hand-over releases the claim (the claims are bounded:
:data:`MAX_REVERSALS_IN_FLIGHT`, swept of those the resolver finished).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from switch import reasons
from switch.model import Payment, Result, Status
from switch.payment.idempotency import Entry, IdempotencyIndex
from switch.payment.standin import StandIn
from switch.routing.router import NoRoute, Route, Router

#: Reversals waiting for the issuer at once; past it a reversal is answered 91 (retry).
MAX_REVERSALS_IN_FLIGHT: Final = 10_000
#: No such original (DE39 25): the key is unknown to the switch.
NO_ORIGINAL: Final = "25"


@dataclass(frozen=True, slots=True)
class Plan:
    """A reversal to make durable (the payment's intent journaled again), then to hand to
    the resolver."""

    payment: Payment
    digest: bytes
    route: Route


class Reversals:
    """The reversals under way, payment id -> original key: a repeat (0401/0421) of one
    handed over is 00 and is not reversed twice; of one still being decided, 91."""

    def __init__(self, max_in_flight: int = MAX_REVERSALS_IN_FLIGHT) -> None:
        assert max_in_flight > 0
        self.max_in_flight = max_in_flight
        self.under_way: dict[str, str] = {}
        #: Claims not yet handed to the resolver (payment ids, and their original keys):
        #: the reversal may still be refused (91, 13) or its intent not become durable.
        self._deciding: set[str] = set()
        #: Original key -> payment id of each claim being decided (a key the index let
        #: go may be reused by a new payment: each claim clears only its own mark).
        self._deciding_keys: dict[str, str] = {}
        #: The original's amount of each claim whose intent was read (repeats: 13 if other).
        self._amounts: dict[str, int] = {}

    def deciding(self, original_key: str) -> bool:
        """A reversal of ``original_key``'s payment is being decided: its intent may be
        journaled (the payment reopened) and not yet handed to the resolver. Until it is,
        the payment is this shell's, not the resolver's: a refill that took it meanwhile
        sent the 0400 ahead of a stand-in advice the shell waits to see land."""
        return original_key in self._deciding_keys

    def lookup(self, index: IdempotencyIndex, original_key: str) -> Entry | str:
        """Step 1: the original's entry, or 25."""
        entry = index.get(original_key)
        return NO_ORIGINAL if entry is None else entry

    def admit(self, index: IdempotencyIndex, original_key: str,
              result: Result | None, amount: int | None = None) -> str | None:
        """Step 2: the answer now, or None: ``result``'s payment is claimed (go on with
        its intent, :meth:`plan`; every answer from there on releases it but the
        hand-over to the resolver, :meth:`handed_over`).

        A repeat (0401/0421) of a reversal already handed over is 00 (13 for another
        amount); of one still being decided, 91: that one may yet be refused, or its
        intent never become durable (a crash), and a 00 told then was a reversal the
        acquirer stopped repeating and nobody made."""
        if result is None:
            return reasons.ISSUER_UNAVAILABLE  # still in flight: the acquirer repeats
        if result.status is not Status.APPROVED:
            return reasons.APPROVED  # nothing to undo
        pid = result.payment_id
        under_way = self.under_way
        if pid in under_way:
            if pid in self._deciding:
                return reasons.ISSUER_UNAVAILABLE  # the first is being decided: repeat
            known = self._amounts.get(pid)
            if amount is not None and known is not None and amount != known:
                return reasons.INVALID_AMOUNT
            return reasons.APPROVED  # a repeat of a reversal handed over
        if len(under_way) >= self.max_in_flight:
            self.sweep(index)
            if len(under_way) >= self.max_in_flight:
                return reasons.ISSUER_UNAVAILABLE
        under_way[pid] = original_key
        self._deciding.add(pid)
        self._deciding_keys[original_key] = pid
        assert len(self._deciding) <= len(under_way) <= self.max_in_flight
        return None

    def plan(self, payment_id: str, found: tuple[Payment, bytes] | None,
             amount: int | None, router: Router) -> Plan | str:
        """Step 3, with the payment's latest intent (None: none journaled) and the
        acquirer's amount (None: not given): what to journal and hand over, or the
        answer now (the claim released)."""
        if found is None:
            self.release(payment_id)
            return reasons.APPROVED  # approved without reaching a network: nothing held
        payment, digest = found
        if amount is not None and amount != payment.amount:
            # A whole payment is reversed or nothing: a reversal of 1 once released a
            # hold of 1,250.
            self.release(payment_id)
            return reasons.INVALID_AMOUNT
        try:
            target = router.target(payment)
            route = router.route(target.endpoints[0], target)
        except NoRoute:
            self.release(payment_id)
            return reasons.ISSUER_UNAVAILABLE
        assert payment_id in self._deciding, payment_id
        self._amounts[payment_id] = payment.amount
        return Plan(payment, digest, route)

    def handed_over(self, payment_id: str) -> None:
        """Step 5: the reversal is durable and with the resolver; a repeat is 00 now."""
        key = self.under_way[payment_id]
        self._deciding.discard(payment_id)
        if self._deciding_keys.get(key) == payment_id:
            del self._deciding_keys[key]
        assert payment_id not in self._deciding and payment_id in self._amounts

    def release(self, payment_id: str) -> None:
        """The reversal was not taken (answered, or its intent could not be journaled)."""
        key = self.under_way.pop(payment_id, None)
        self._deciding.discard(payment_id)
        if key is not None and self._deciding_keys.get(key) == payment_id:
            del self._deciding_keys[key]
        self._amounts.pop(payment_id, None)
        assert payment_id not in self.under_way and payment_id not in self._deciding

    def withdraw_advice(self, result: Result, standin: StandIn | None) -> bool:
        """Step 4, once the reversal is durable: a stand-in approval's 0120 advice not yet
        sent is withdrawn (its exposure released). Told after the reversal (the advice and
        the reversal wait for the same issuer, in either order), the issuer held the
        cardholder's money for a payment the acquirer had undone. True if the payment was
        stood in: an advice of it may be on the wire this moment, and cannot be recalled,
        so the shell lets it land (``StandIn.settled``) before it hands the reversal to
        the resolver, which then releases its hold."""
        if standin is None or not result.stood_in:
            return False
        standin.withdraw(result.payment_id)
        return True

    def sweep(self, index: IdempotencyIndex) -> None:
        """Forget the reversals the resolver finished (the index holds ``reversed``)."""
        for pid, key in list(self.under_way.items()):
            if pid in self._deciding:
                continue  # its shell is still deciding it: released or handed over there
            entry = index.get(key)
            if entry is None or entry.result is None or entry.result.status is not Status.APPROVED:
                del self.under_way[pid]
                self._amounts.pop(pid, None)
