"""Bugs planted in the real code for the simulator to find (tests only).

Each plant is a context manager that patches one behaviour the way a plausible
regression would, and restores it on exit. The planted-bug tests prove the simulator
fails when it should: a simulator that never fails proves nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import msgspec
import pytest

from switch.payment.core import PaymentCore
from switch.payment.resolver import CHANNELS, ResolutionQueue
from switch.payment.standin import StandIn


@contextmanager
def retry_after_timeout_after_send() -> Iterator[None]:
    """A timeout after sending is treated as a failure and retried on the next endpoint
    (or failed outright when none is left) instead of becoming unknown."""

    def timed_out(self: Any, f: Any, now: float, mono: float) -> None:
        endpoint = f.slot
        self._by_token.pop(f.token, None)
        self.network.cancel(endpoint, f.token)
        f.token = 0
        self._release(f)
        self.router.health.record(endpoint, now, False, mono - f.sent_at)
        self._attempt_from(f, f.index + 1, now, mono)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_attempt_timed_out", timed_out)
        yield


@contextmanager
def skip_write_ahead_intent() -> Iterator[None]:
    """The payment goes to the network without its intent record."""
    original = PaymentCore._journal

    def journal(self: Any, f: Any, kind: str, status: Any, record: bytes, then: Any,
                now: float, mono: float, sheddable: bool = False) -> None:
        if kind == "intent":
            then(f, now, mono)
            return
        original(self, f, kind, status, record, then, now, mono, sheddable=sheddable)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_journal", journal)
        yield


@contextmanager
def drop_advice() -> Iterator[None]:
    """A stand-in approval's advice is never queued (store-and-forward loses it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StandIn, "queue_advice", lambda self, *args: None)
        yield


@contextmanager
def restart_trace_numbers_at_boot() -> Iterator[None]:
    """Every boot numbers its card messages (DE11) from 000001 again."""
    original = PaymentCore._new_payment

    def new_payment(self: Any, request: Any, now: float) -> Any:
        payment = original(self, request, now)
        if payment.card is None:
            return payment
        stan = getattr(self, "_planted_stan", 0) % 999_999 + 1
        self._planted_stan = stan
        card = msgspec.structs.replace(payment.card, stan=f"{stan:06d}")
        return msgspec.structs.replace(payment, card=card)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_new_payment", new_payment)
        yield


@contextmanager
def fifo_resolver() -> Iterator[None]:
    """Unknowns resolved first come, first served (a queue where the timer heap was): the
    oldest job holds the line until it is due, so a card reversal due now waits behind a
    QR check that may not be asked for 90 s."""

    def head(self: Any, channels: Any) -> Any:
        entries = [e for c in channels for e in self._heaps[c]]
        return min(entries, key=lambda entry: entry[1]) if entries else None

    def next_due(self: Any, channels: Any = CHANNELS) -> float | None:
        first = head(self, channels)
        return None if first is None else float(first[0])

    def pop_due(self: Any, now: float, channels: Any = CHANNELS) -> Any:
        first = head(self, channels)
        if first is None or first[0] > now:
            return None
        heap = self._heaps[first[2].payment.channel]
        heap.remove(first)
        heapq.heapify(heap)
        return first[2]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResolutionQueue, "next_due", next_due)
        mp.setattr(ResolutionQueue, "pop_due", pop_due)
        yield


@contextmanager
def reply_before_durable() -> Iterator[None]:
    """Every record's continuation (the reply to the client included) runs as soon as the
    record is queued, not once its commit made it durable."""
    original = PaymentCore._journal

    def journal(self: Any, f: Any, kind: str, status: Any, record: bytes, then: Any,
                now: float, mono: float, sheddable: bool = False) -> None:
        original(self, f, kind, status, record, then, now, mono, sheddable=sheddable)
        if f.continuation is not then:
            return  # refused, or already durable
        for flights in self._waiting.values():  # stop waiting for the commit: go on now
            if f in flights:
                flights.remove(f)
                f.continuation = None
                then(f, now, mono)
                return

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_journal", journal)
        yield


@contextmanager
def forget_idempotency_keys() -> Iterator[None]:
    """The index never finds a key: a retry is a new payment, another body is accepted."""
    from switch.payment.idempotency import IdempotencyIndex

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IdempotencyIndex, "get", lambda self, key: None)
        yield


@contextmanager
def stand_in_after_an_answer() -> Iterator[None]:
    """The core forgets that an issuer answered: a card declined by its issuer is approved
    in stand-in."""
    original = PaymentCore._outcome

    def outcome(self: Any, f: Any, now: float, mono: float) -> None:
        f.reached = False
        original(self, f, now, mono)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_outcome", outcome)
        yield


@contextmanager
def ledger_books_payees_in_one_currency() -> Iterator[None]:
    """The ledger opens every merchant account in USD, whatever the payment's currency:
    a QR payment in CNY debits the scheme in CNY and credits a merchant in USD."""
    from switch.backoffice import ledger

    original = ledger._account

    def account(db: Any, participant: str, role: str, currency: str) -> int:
        return original(db, participant, role, "USD" if role == "merchant" else currency)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ledger, "_account", account)
        yield


@contextmanager
def clearing_forgets_what_it_cleared() -> Iterator[None]:
    """The card scheme's settlement writer forgets what earlier cycles cleared (its
    record of written keys and its place in each book are lost at every cut): each
    standing hold is cleared again."""
    from channels.settlement import SettlementWriter

    original = SettlementWriter.cut

    def cut(self: Any) -> Any:
        self._written.clear()
        self._card_seen.clear()
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SettlementWriter, "cut", cut)
        yield


@contextmanager
def shared_resolver_workers() -> Iterator[None]:
    """One pool of 8 resolver workers for every channel (the design before seed 1's
    simulated hour found it): card reversals hanging to their timeout hold up SWIFT."""
    from switch.sim.resolution import SimResolver

    def free(self: Any) -> list[str]:
        return list(CHANNELS) if sum(self.busy.values()) < 8 else []

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SimResolver, "_free", free)
        yield


@contextmanager
def probe_slot_taken_before_the_deadline_check() -> Iterator[None]:
    """The attempt loop takes a half-open breaker's probe slot (allow) before it checks
    the deadline and the admission slot, as it did until issue 12's stop 13: an attempt
    that then makes no call never gives the probe slot back."""
    original = PaymentCore._attempt_from

    def attempt_from(self: Any, f: Any, index: int, now: float, mono: float) -> None:
        if index < len(f.order) and f.deadline - now <= 0:
            self.router.health.breakers[f.order[index]].allow(now)  # taken, never reported
        original(self, f, index, now, mono)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_attempt_from", attempt_from)
        yield


@contextmanager
def no_resolver_refill() -> Iterator[None]:
    """Payments past the resolver's bound are never taken back from the journal, as until
    stop 15: they stay unknown until the next restart, however long their network is
    back (the simulator: seed 1, 10 simulated min at fault intensity 40)."""
    from switch.payment.resolver import ResolutionQueue

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResolutionQueue, "needs_refill", property(lambda self: False))
        yield


# --------------------------------------------------------------------------- more plants
# The simulator's blind spots, searched for (tests/sim/test_plants_more.py): each a
# regression a developer could plausibly make in the real code.


@contextmanager
def approved_card_payments_reversed_too() -> Iterator[None]:
    """Every card approval is also handed to the resolver "to be safe" once its final
    record is durable: the reversal voids the hold of a payment the client was told was
    approved (an approved-and-final payment reversed)."""
    from switch.model import Status

    original = PaymentCore._final_durable

    def final_durable(self: Any, f: Any, now: float, mono: float) -> None:
        result = f.result
        route = f.last_route
        original(self, f, now, mono)
        if (result is not None and result.status is Status.APPROVED and not result.stood_in
                and f.payment.channel == "card" and route is not None):
            self.resolver.submit(f.payment, f.digest, route)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_final_durable", final_durable)
        yield


@contextmanager
def _stand_in_without(limit: str) -> Iterator[None]:
    """Stand-in decides with one of its limits (a StandInLimits field) lifted in every
    currency."""
    original = StandIn.decide

    def decide(self: Any, payment: Any, target: str) -> str | None:
        config = self.config
        lifted = {code: msgspec.structs.replace(limits, **{limit: "100000000000000"})
                  for code, limits in config.limits.items()}
        self.config = msgspec.structs.replace(config, limits=lifted)
        try:
            return original(self, payment, target)
        finally:
            self.config = config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StandIn, "decide", decide)
        yield


def stand_in_past_the_per_payment_limit() -> AbstractContextManager[None]:
    """Stand-in forgets its per-payment ceiling (``per_payment_max``): any amount
    is approved on the issuer's behalf, within the card and issuer totals only."""
    return _stand_in_without("per_payment_max")


def stand_in_past_the_per_card_limit() -> AbstractContextManager[None]:
    """Stand-in checks only the per-payment and per-issuer limits: the per-card total
    (``per_card_max``) is still counted, but no longer compared."""
    return _stand_in_without("per_card_max")


@contextmanager
def admission_slot_kept_after_a_decline() -> Iterator[None]:
    """An issuer's decline ends the payment without giving its admission slot back (the
    release moved under the retry branch): each decline leaks one in-flight slot of its
    endpoint, until that endpoint sheds every payment as overloaded."""
    from switch.routing.retry import FailureKind, classify

    original = PaymentCore._attempt_done

    def attempt_done(self: Any, f: Any, reply: Any, not_sent: bool, now: float,
                     mono: float) -> bool:
        endpoint = f.slot
        moved_on = original(self, f, reply, not_sent, now, mono)
        if not not_sent and classify(reply) is FailureKind.DECLINED:
            self.router.limiter.try_acquire(endpoint)  # as if never released
        return moved_on

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_attempt_done", attempt_done)
        yield


@contextmanager
def recovery_forgets_unknown_payments() -> Iterator[None]:
    """Start-up recovery hands the resolver only payments journaled as sent (intent, no
    outcome), not those already journaled unknown: it took "unknown" for "being resolved",
    but the resolver that was resolving them died with the crash."""
    from switch.model import Status
    from switch.payment import resolver as resolver_module

    original = resolver_module.recover

    def recover(recovered: Any, **kw: Any) -> None:
        unfinished = [u for u in recovered.unfinished if u.status is not Status.UNKNOWN]
        original(msgspec.structs.replace(recovered, unfinished=unfinished), **kw)

    import switch.sim.simulation as simulation

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "recover", recover)
        mp.setattr(simulation, "recover", recover)
        yield


@contextmanager
def unknown_journaled_as_final() -> Iterator[None]:
    """The unknown outcome is journaled with the record kind ``final`` (status unknown):
    to the journal the payment is finished though nothing is known of it, so a restart
    never hands it to the resolver again."""
    original = PaymentCore._journal

    def journal(self: Any, f: Any, kind: str, status: Any, record: bytes, then: Any,
                now: float, mono: float, sheddable: bool = False) -> None:
        original(self, f, "final" if kind == "unknown" else kind, status, record, then, now,
                 mono, sheddable=sheddable)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_journal", journal)
        yield


@contextmanager
def completed_key_replays_whatever_the_body() -> Iterator[None]:
    """Dedupe answers a completed key from the index before it compares the body: the
    same key with another body gets the first payment's result instead of a refusal."""
    from switch.payment.idempotency import IdempotencyIndex

    original = PaymentCore._receive

    def receive(self: Any, origin: Any, rid: int, request: Any, now: float, mono: float,
                read_at: float) -> None:
        from switch.protocols.wire import Reply

        entry = IdempotencyIndex.get(self.index, request.idempotency_key)
        if entry is not None and entry.result is not None and not entry.pending:
            self.metrics.replays.inc()
            origin.reply(Reply(rid, entry.result, True))
            return
        original(self, origin, rid, request, now, mono, read_at)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_receive", receive)
        yield


@contextmanager
def resolved_unknown_stays_unknown_in_the_index() -> Iterator[None]:
    """The idempotency index keeps a key's first answer: a payment answered unknown and
    resolved since is still "unknown" to every retry of its key (``complete`` made
    first-write-wins to stop a double completion)."""
    from switch.payment.idempotency import IdempotencyIndex

    original = IdempotencyIndex.complete

    def complete(self: Any, key: str, result: Any) -> None:
        entry = self.get(key)
        if entry is not None and not entry.pending:
            return  # already answered: keep the first answer
        original(self, key, result)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(IdempotencyIndex, "complete", complete)
        yield


@contextmanager
def keys_restored_by_payment_id() -> Iterator[None]:
    """Start-up restores the idempotency window keyed by payment id instead of
    idempotency key: after a restart no completed key is known, and a retry of one is
    booked as a new payment."""
    from switch.journal.reader import FinalRecord
    from switch.payment import resolver as resolver_module

    original = resolver_module.recover

    def recover(recovered: Any, **kw: Any) -> None:
        finals = [FinalRecord(f.result.payment_id, f.body_hash, f.result, f.answered_at_us)
                  for f in recovered.finals]
        original(msgspec.structs.replace(recovered, finals=finals), **kw)

    import switch.sim.simulation as simulation

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolver_module, "recover", recover)
        mp.setattr(simulation, "recover", recover)
        yield


@contextmanager
def stand_in_tells_the_client_the_network_answer() -> Iterator[None]:
    """A stand-in approval is journaled approved, but the client hears the issuer
    network's last answer (failed 91): the reply and the durable record disagree."""
    from switch.model import Status
    from switch.protocols.wire import Reply

    original = PaymentCore._finish

    def finish(self: Any, f: Any, result: Any, mono: float) -> None:
        if result.stood_in and result.status is Status.APPROVED:
            told = msgspec.structs.replace(result, status=Status.FAILED, reason="91",
                                           stood_in=False)
            origin = f.origin

            class Teller:
                def reply(self, response: Any) -> None:
                    origin.reply(Reply(response.id, told, response.replay))

            f.origin = Teller()
        original(self, f, result, mono)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_finish", finish)
        yield



@contextmanager
def duplicate_in_flight_answered_94() -> Iterator[None]:
    """A retry of a key whose payment is still in flight is answered at once as a
    duplicate transmission (declined 94, the ISO 8583 idea) instead of waiting for the
    first one's result: the same key and body get another result."""
    from switch import reasons
    from switch.model import Result, Status
    from switch.payment.idempotency import body_hash
    from switch.protocols.wire import Reply

    original = PaymentCore._receive
    encode = msgspec.msgpack.Encoder().encode

    def receive(self: Any, origin: Any, rid: int, request: Any, now: float, mono: float,
                read_at: float) -> None:
        flight = self._by_key.get(request.idempotency_key)
        if flight is not None and flight.digest == body_hash(encode(request),
                                                             self._token_key):
            origin.reply(Reply(rid, Result(flight.payment.payment_id, Status.DECLINED,
                                           reasons.DUPLICATE_TRANSMISSION), True))
            return
        original(self, origin, rid, request, now, mono, read_at)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaymentCore, "_receive", receive)
        yield


@contextmanager
def reversal_keeps_standin_advice() -> Iterator[None]:
    """A reversal of a stand-in approval leaves its 0120 advice queued (StandIn.withdraw
    does nothing): the issuer learns of the approval after the acquirer undid it -- the
    bug found by reading before the simulator sent reversals."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StandIn, "withdraw", lambda self, payment_id: False)
        yield


@contextmanager
def recovery_requeues_reversed_standin_advice() -> Iterator[None]:
    """Start-up queues the 0120 advice of every stand-in approval not yet advised, even
    one a reversal reopened (its advice withdrawn before the crash): after a restart the
    issuer learns of a payment the acquirer undid -- the start-up half of the bug found by
    reading (reader.recovered_from)."""
    from switch.journal import reader

    original = reader.recovered_from

    def recovered_from(folded: Any, boot_count: int, backlog: Any = None) -> Any:
        recovered = original(folded, boot_count, backlog)
        again = [reader.PendingAdvice(h.body_hash, h.payment, h.result)
                 for h in folded.payments.values()
                 if h.reopened and h.result is not None and h.result.stood_in
                 and not h.advised and h.payment is not None]
        return msgspec.structs.replace(
            recovered, pending_advices=[*recovered.pending_advices, *again])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "recovered_from", recovered_from)
        yield


@contextmanager
def resolver_ignores_the_first_delay() -> Iterator[None]:
    """The resolver schedules a payment's first attempt as soon as it is handed over, as
    if its channel's first delay had already passed (a wrong age: e.g. counted from the
    wall clock's epoch): a QR check-status goes out seconds after the payment, where the
    scheme allows none before 90 s."""
    original = ResolutionQueue._track

    def track(self: Any, payment: Any, digest: bytes, route: Any, status: Any,
              elapsed_s: float, now: float) -> None:
        original(self, payment, digest, route, status, 10 ** 9, now)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResolutionQueue, "_track", track)
        yield
