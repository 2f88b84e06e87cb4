"""Where a payment goes, step by step. Start reading here.

:meth:`Pipeline.submit` is the whole path of one payment, in order, in one place (the
jPOS TransactionManager idea: an ordered list of steps you can read top to bottom):

    1. validate   semantic checks the wire types cannot express   -> error reply
    2. dedupe     same key + same body: replay the stored result;
                  same key + other body: refuse                    -> error reply
    3. risk       amount limits, blocklists, velocity, AML flag    -> declined
    4. route      pick the network adapter and its timeout         -> failed 91
    5. dispatch   journal the intent (write-ahead), then send,
                  bounded by the route's timeout                   -> approved/declined/
                                                                      failed/unknown
    6. journal    the result, durably (group commit)
    7. respond    only now does the client hear the result

Steps 1-2 decide whether a payment is *accepted*. From step 3 on, an accepted payment
always ends with a journaled result. If the network does not answer in time after the
request was sent, the outcome is unknown: the payment is journaled as unknown, the
client is told so, and the :class:`~switch.resolver.Resolver` settles it (reversal for
cards, status inquiry otherwise) and journals the final state.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Final

import anyio
import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent
from switch.clock import Clock
from switch.idempotency import IdempotencyIndex, body_hash
from switch.journal import Journal, JournalFailed, JournalFull, encode_payment, encode_result
from switch.metrics import SwitchMetrics
from switch.model import (
    CardRef,
    Payment,
    PaymentRequest,
    QrRef,
    Result,
    Status,
    SwiftRef,
    check_transition,
    tokenize_pan,
)
from switch.resolver import Resolver
from switch.risk import RiskEngine
from switch.routing import NoRoute, Route, Router
from switch.validation import InvalidPayment, validate

_encoder: Final = msgspec.msgpack.Encoder()
#: Latency from which a payment's id is attached to its histogram bucket as an exemplar.
EXEMPLAR_FROM_S: Final = 0.010
_OUTCOME_STATUS: Final = {
    "approved": Status.APPROVED,
    "declined": Status.DECLINED,
    "failed": Status.FAILED,
    "reversed": Status.REVERSED,
}


class Rejected(Exception):
    """A request that was not accepted; becomes an error reply with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Submitted:
    result: Result
    replay: bool


class Pipeline:
    def __init__(
        self,
        *,
        clock: Clock,
        journal: Journal,
        index: IdempotencyIndex,
        risk: RiskEngine,
        router: Router,
        resolver: Resolver,
        metrics: SwitchMetrics,
        token_key: bytes,
        boot_count: int,
        seed: int,
    ) -> None:
        self.clock = clock
        self.journal = journal
        self.index = index
        self.risk = risk
        self.router = router
        self.resolver = resolver
        self.metrics = metrics
        self._token_key = token_key
        self._boot = boot_count
        self._sequence = 0
        # UETRs must be UUIDv4; drawing them from a seeded generator keeps runs repeatable.
        self._rng = random.Random(seed * 1_000_003 + boot_count)

    async def submit(self, request: PaymentRequest) -> Submitted:
        """Take one payment request through every step; see the module docstring."""
        started = self.clock.now()
        measured_from = self.clock.measure()

        # 1. validate
        try:
            validate(request)
        except InvalidPayment as exc:
            raise Rejected(reasons.E_INVALID, str(exc)) from None

        # 2. dedupe
        digest = body_hash(_encoder.encode(request), self._token_key)
        key = request.idempotency_key
        existing = self.index.get(key)
        if existing is not None:
            if existing.body_hash != digest:
                raise Rejected(
                    reasons.E_IDEMPOTENCY_CONFLICT,
                    f"idempotency_key {key!r} was used with a different body",
                )
            self.metrics.replays.inc()
            stored = await existing.wait()
            if stored is None:
                raise Rejected(reasons.E_OVERLOADED, f"earlier attempt of {key!r} was shed; retry")
            return Submitted(stored, replay=True)
        payment = self._new_payment(request)
        self.index.begin(key, digest, started)
        try:
            result = await self._accepted(payment, digest)
        except BaseException:
            # Not accepted after all (journal full before the payment was written): let
            # a retry in, and wake duplicates that were waiting on this attempt.
            self.index.abandon(key)
            raise
        self.index.complete(key, result)
        self.metrics.payments[(payment.channel, result.status)].inc()
        elapsed = self.clock.measure() - measured_from
        if elapsed < EXEMPLAR_FROM_S:
            self.metrics.duration[payment.channel].observe(elapsed)
        else:
            # Slow payments carry their id as an exemplar (OpenMetrics), so a slow bucket
            # on a dashboard leads to a payment. Fast ones skip the cost.
            self.metrics.duration[payment.channel].observe(
                elapsed, exemplar={"payment_id": payment.payment_id}
            )
        return Submitted(result, replay=False)

    async def _accepted(self, payment: Payment, digest: bytes) -> Result:
        pid = payment.payment_id
        state = Status.RECEIVED

        # 3. risk
        decision = self.risk.assess(payment, self.clock.now())
        if decision.aml_flag:
            self.metrics.aml_flagged.inc()
            payment = msgspec.structs.replace(payment, aml_flag=True)
        if decision.reason is not None:
            self.metrics.risk_declines[decision.rule].inc()
            check_transition(pid, state, Status.DECLINED)
            result = Result(pid, Status.DECLINED, decision.reason)
            await self._journal(payment, digest, "final", result.status, encode_result(result))
            return result

        # 4. route
        try:
            route = self.router.route(payment)
        except NoRoute:
            check_transition(pid, state, Status.FAILED)
            result = Result(pid, Status.FAILED, reasons.ISSUER_UNAVAILABLE)
            await self._journal(payment, digest, "final", result.status, encode_result(result))
            return result
        check_transition(pid, state, Status.ROUTED)
        state = Status.ROUTED

        # 5. dispatch: write-ahead first, so a crash after sending is never forgotten.
        await self._journal(payment, digest, "intent", Status.SENT, encode_payment(payment))
        check_transition(pid, state, Status.SENT)
        state = Status.SENT
        reply = await self._dispatch(route, payment)
        if reply is None:
            # Sent, and no answer in time: outcome unknown until resolved.
            check_transition(pid, state, Status.UNKNOWN)
            result = Result(pid, Status.UNKNOWN, reasons.RESPONSE_TOO_LATE, route=route.network)
            await self._journal(payment, digest, "unknown", Status.UNKNOWN, encode_result(result))
            self.resolver.submit(payment, digest, route)
            return result
        status = _OUTCOME_STATUS[reply.outcome]
        check_transition(pid, state, status)
        result = Result(
            pid, status, reply.reason, reply.network_ref, route.network, aml_flag=payment.aml_flag
        )

        # 6. journal
        await self._journal(payment, digest, "final", status, encode_result(result))

        # 7. respond
        return result

    async def _dispatch(self, route: Route, payment: Payment) -> NetworkReply | None:
        """Send through the route's adapter. None means: sent, outcome unknown."""
        metrics = self.metrics
        sent_at = self.clock.measure()
        try:
            with anyio.move_on_after(route.timeout_s) as scope:
                reply = await route.adapter.authorize(payment)
        except NotSent:
            # Never left the switch: a clean failure, nothing to resolve.
            return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)
        if scope.cancelled_caught:
            metrics.network_timeouts[route.network].inc()
            return None
        metrics.network_duration[route.network].observe(self.clock.measure() - sent_at)
        return reply

    async def _journal(
        self, payment: Payment, digest: bytes, kind: str, status: Status, record: bytes
    ) -> None:
        row = (
            payment.payment_id,
            payment.idempotency_key,
            kind,
            status.value,
            digest,
            record,
            self.clock.wall_us(),
        )
        try:
            await self.journal.write(row)
        except JournalFull as exc:
            if kind == "intent" or (kind == "final" and status is Status.DECLINED):
                # Nothing has left the switch yet: shedding is safe.
                raise Rejected(reasons.E_OVERLOADED, str(exc)) from None
            # After sending we must not drop the outcome: wait for room (bounded by the
            # journal's own progress) rather than lose it.
            await self._journal_when_room(row)
        except JournalFailed as exc:
            raise Rejected(reasons.E_UNAVAILABLE, f"journal unavailable: {exc}") from None

    async def _journal_when_room(self, row: tuple[str, str, str, str, bytes, bytes, int]) -> None:
        while True:
            await anyio.sleep(0.001)
            try:
                await self.journal.write(row)
                return
            except JournalFull:
                continue

    def _new_payment(self, request: PaymentRequest) -> Payment:
        self._sequence += 1
        seq = self._sequence
        pid = f"P{self._boot}-{seq}"
        card = swift = qr = None
        if request.card is not None:
            c = request.card
            card = CardRef(
                token=tokenize_pan(c.pan, self._token_key),
                last4=c.pan[-4:],
                bin=c.pan[:6],
                expiry=c.expiry,
                terminal_id=c.terminal_id,
                merchant_id=c.merchant_id,
                mcc=c.mcc,
                stan=f"{seq % 1_000_000:06d}",
                rrn=f"{self._boot % 100:02d}{seq % 10**10:010d}",
            )
        elif request.swift is not None:
            s = request.swift
            uetr = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            swift = SwiftRef(
                s.debtor_agent, s.creditor_agent, uetr, s.end_to_end_id or pid, s.remittance
            )
        elif request.qr is not None:
            qr = QrRef(request.qr.payload, qr_reference=pid)
        return Payment(
            payment_id=pid,
            idempotency_key=request.idempotency_key,
            channel=request.channel,
            amount=request.amount,
            currency=request.currency,
            payer=request.payer,
            payee=request.payee,
            received_at=self.clock.wall(),
            card=card,
            swift=swift,
            qr=qr,
        )
