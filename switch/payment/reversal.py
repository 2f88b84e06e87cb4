"""An acquirer's reversal of a payment (ISO 8583 0400/0420, the HTTP door): the decisions.

Sans-IO: :class:`Reversals` decides what to answer and what to do, one step at a time; the
shells do the waiting, the reading and the writing in between. Two shells run the same
steps in the same order: the live switch's ``FrontCore.reverse``
(switch/serve/frontcore.py: anyio, the journal's SQLite reader, the pipeline's resolver)
and the deterministic simulator's acquirer (switch/sim/acquirer.py: the event queue, its
journal and resolver shell), so what the simulator checks is what the switch decides.

1. :meth:`Reversals.lookup`: the original's index entry, or 25 (no such original). Its
   result None: still in flight; the shell waits for it, up to its bound.
2. :meth:`Reversals.admit` with the result (None: still none after the wait): the answer
   now (91: still in flight, or too many reversals under way; 00: nothing to undo --
   declined, failed, already reversed, unknown (the resolver reverses unknown card
   payments by itself) -- or a repeat of a reversal under way: handed over by this
   shell, or held by the resolver (:class:`Resolving`: one accepted before a restart,
   which start-up recovery handed it); 13 for such a repeat of another amount, when the
   amount is known; 91 for a repeat of one still being decided), or None: claimed; the
   shell reads the payment's latest intent from the journal.
3. :meth:`Reversals.plan` with that intent and the acquirer's amount: the answer now (00:
   approved without reaching a network, nothing held, or finished or taken by the
   resolver during the read; 13: not the original's amount, a whole payment is reversed
   or nothing; 91: no route), or a :class:`Plan`: the shell
   journals the intent again (shed on a full journal: 91, :meth:`release`), which makes
   the reversal durable (replay treats the payment as unfinished: recovery resolves it).
4. Durable: :meth:`Reversals.withdraw_advice` withdraws a stand-in approval's 0120 advice
   not yet sent (the issuer must never learn of a payment the acquirer undid), then the
   shell hands the plan to the resolver (:meth:`Reversals.handed_over`), which reverses
   it with the issuer and journals ``reversed``, and answers 00. Until then the payment,
   reopened in the journal, is the shell's (:meth:`Reversals.deciding`): a refill of the
   resolver leaves it alone, as it leaves the payments the core owns.

Every answer but the hand-over releases the claim (the claims are bounded:
:data:`MAX_REVERSALS_IN_FLIGHT`, swept of those the resolver finished and, at the bound,
of those it escalated to an operator: it still holds them, so their repeats stay 00).

The claims are this process's memory; the journal is the reversal's: a reversal accepted
before a crash is an intent after the approval's final (reopened, reader.Fold), and
start-up recovery hands it to the resolver. A repeat of it then must not be claimed as a
new one: while the shell read the intent, the resolver could reverse the payment and
journal ``reversed`` (the index answers the approval until then), and the repeat would
journal the intent after that final and hand the payment over again: one more 0400,
a second final, and at every later start one more. So :meth:`Reversals.admit` asks the
resolver first: an approval it holds is a reversal under way, answered as a repeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Protocol

from switch import reasons
from switch.model import Payment, Result, Status
from switch.payment.idempotency import Entry, IdempotencyIndex
from switch.payment.standin import StandIn
from switch.routing.router import NoRoute, Route, Router

#: Reversals waiting for the issuer at once; past it a reversal is answered 91 (retry).
MAX_REVERSALS_IN_FLIGHT: Final = 10_000
#: No such original (DE39 25): the key is unknown to the switch.
NO_ORIGINAL: Final = "25"

log = logging.getLogger(__name__)


class Resolving(Protocol):
    """What the decisions ask of the resolver (its ResolutionQueue): whether it holds a
    payment (queued, in flight or escalated; its final not journaled yet), and its
    amount when known. The live shell and the simulator's pass their own queue."""

    def holds(self, payment_id: str) -> bool: ...
    def amount_held(self, payment_id: str) -> int | None: ...
    def escalated_now(self, payment_id: str) -> bool: ...


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
              result: Result | None, amount: int | None = None,
              resolving: Resolving | None = None) -> str | None:
        """Step 2: the answer now, or None: ``result``'s payment is claimed (go on with
        its intent, :meth:`plan`; every answer from there on releases it but the
        hand-over to the resolver, :meth:`handed_over`).

        A repeat (0401/0421) of a reversal already handed over is 00 (13 for another
        amount); of one still being decided, 91: that one may yet be refused, or its
        intent never become durable (a crash), and a 00 told then was a reversal the
        acquirer stopped repeating and nobody made. ``resolving``: the resolver (None:
        none to ask, tests only); an approval it holds is a reversal under way, accepted
        before a restart (recovery handed it over) or handed over here and swept since:
        a repeat of it too, never claimed again (module docstring)."""
        if result is None:
            return reasons.ISSUER_UNAVAILABLE  # still in flight: the acquirer repeats
        if result.status is not Status.APPROVED:
            return reasons.APPROVED  # nothing to undo
        pid = result.payment_id
        under_way = self.under_way
        if pid in under_way:
            if pid in self._deciding:
                return reasons.ISSUER_UNAVAILABLE  # the first is being decided: repeat
            return self._repeat(amount, self._amounts.get(pid))
        if resolving is not None and resolving.holds(pid):
            # Durable and with the resolver, which journals its final: claimed now, its
            # intent would be journaled again, maybe after that final.
            return self._repeat(amount, resolving.amount_held(pid))
        if len(under_way) >= self.max_in_flight:
            self.sweep(index, resolving)
            if len(under_way) >= self.max_in_flight:
                return reasons.ISSUER_UNAVAILABLE
        under_way[pid] = original_key
        self._deciding.add(pid)
        self._deciding_keys[original_key] = pid
        assert len(self._deciding) <= len(under_way) <= self.max_in_flight
        return None

    @staticmethod
    def _repeat(amount: int | None, known: int | None) -> str:
        """The answer to a repeat of a reversal under way: 00, or 13 for another amount
        than the original's (when both are known): a whole payment is reversed or
        nothing, and a 00 told for a partial one misstates what was undone."""
        if amount is not None and known is not None and amount != known:
            return reasons.INVALID_AMOUNT
        return reasons.APPROVED

    def plan(self, payment_id: str, found: tuple[Payment, bytes] | None,
             amount: int | None, router: Router, index: IdempotencyIndex | None = None,
             resolving: Resolving | None = None) -> Plan | str:
        """Step 3, with the payment's latest intent (None: none journaled) and the
        acquirer's amount (None: not given): what to journal and hand over, or the
        answer now (the claim released). ``index``, ``resolving``: asked again, as the
        intent's read may have waited (the live shell's awaits) -- tests may omit them."""
        assert payment_id in self._deciding, payment_id
        if self._taken_meanwhile(payment_id, index, resolving):
            self.release(payment_id)
            return reasons.APPROVED  # reversed by now, or under way with the resolver
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

    def _taken_meanwhile(self, payment_id: str, index: IdempotencyIndex | None,
                         resolving: Resolving | None) -> bool:
        """Defence in depth: since :meth:`admit`, the payment was finished (the index no
        longer answers its approval) or the resolver took it. Nothing should do either
        (a refill leaves a claim being decided alone: :meth:`deciding`), but an intent
        journaled now would follow its final, or race it."""
        if resolving is not None and resolving.holds(payment_id):
            log.error("reversal of %s: the resolver took it while it was decided",
                      payment_id, extra={"payment_id": payment_id})
            return True
        entry = None if index is None else index.get(self.under_way[payment_id])
        current = None if entry is None else entry.result
        if current is not None and current.payment_id == payment_id \
                and current.status is not Status.APPROVED:
            log.error("reversal of %s: finished %s while it was decided", payment_id,
                      current.status.value, extra={"payment_id": payment_id})
            return True
        return False  # gone from the index (evicted): still approved in the journal

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

    def sweep(self, index: IdempotencyIndex, resolving: Resolving | None = None) -> None:
        """Forget the reversals the resolver finished (the index holds ``reversed``), and
        those it handed to an operator: held by it (:meth:`admit` asks it), a repeat of
        one is still 00 (13 for another amount: the resolver keeps the amount). Kept, an
        escalated reversal held its claim until a restart, and a long issuer outage
        filled the bound: every new reversal 91."""
        before = len(self.under_way)
        for pid, key in list(self.under_way.items()):
            if pid in self._deciding:
                continue  # its shell is still deciding it: released or handed over there
            entry = index.get(key)
            if entry is None or entry.result is None \
                    or entry.result.status is not Status.APPROVED \
                    or (resolving is not None and resolving.escalated_now(pid)):
                del self.under_way[pid]
                self._amounts.pop(pid, None)
        assert len(self._deciding) <= len(self.under_way) <= before
