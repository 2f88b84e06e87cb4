"""Bugs planted in the real code for the simulator to find (tests only).

Each plant is a context manager that patches one behaviour the way a plausible
regression would, and restores it on exit. The planted-bug tests prove the simulator
fails when it should: a simulator that never fails proves nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from contextlib import contextmanager
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
