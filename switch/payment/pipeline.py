"""Where a payment goes, step by step. Start reading here.

:meth:`Pipeline.submit` is the whole path of one payment, in order, in one place (the
jPOS TransactionManager idea: an ordered list of steps you can read top to bottom):

    1. validate   semantic checks the wire types cannot express   -> error reply
    2. dedupe     same key + same body: replay the stored result;
                  same key + other body: refuse                    -> error reply
    3. risk       amount limits, blocklists, velocity, AML flag    -> declined
    4. route      the target (route table), its endpoints in
                  strategy order (breakers, latency, success rate),
                  and an admission slot                            -> failed 91 / overloaded
    5. dispatch   journal the intent (write-ahead), then attempt
                  endpoints in order: per-attempt timeout within
                  the payment deadline, safe retries within the
                  retry budget, failover; card stand-in when no
                  issuer endpoint is reachable                     -> approved/declined/
                                                                      failed/unknown
    6. journal    the result, durably (group commit)
    7. respond    only now does the client hear the result

Steps 1-2 decide whether a payment is *accepted*. From step 3 on, an accepted payment
always ends with a journaled result. If the network does not answer in time after the
request was sent, the outcome is unknown: the payment is journaled as unknown, the
client is told so, and the :class:`~switch.payment.resolver.Resolver` settles it (reversal for
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
from switch.adapters.trace import TraceNumbers
from switch.clock import Clock
from switch.journal import (
    FINAL,
    INTENT,
    Journal,
    JournalFailed,
    JournalFull,
    JournalRecord,
    OnFull,
    RecordKind,
    encode_payment,
    encode_result,
)
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
from switch.observability.metrics import SwitchMetrics
from switch.payment.idempotency import IdempotencyIndex, body_hash
from switch.payment.resolver import Resolver
from switch.payment.risk import RiskEngine
from switch.payment.standin import StandIn
from switch.payment.validation import InvalidPayment, validate
from switch.routing.resilience import (
    FailureKind,
    classify,
    counts_as_healthy,
    is_safe_to_retry,
)
from switch.routing.router import NoRoute, Route, Router
from switch.routing.table import Target

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
class DispatchOutcome:
    """What the attempt loop ended with."""

    reply: NetworkReply | None  # the last answer, None if no endpoint answered
    route: Route | None  # where the last attempt went
    #: No endpoint of the target gave a usable answer (refused, down, technical errors
    #: only): the condition for card stand-in.
    issuer_unreachable: bool
    #: The last attempt was sent and got no answer in time: the outcome is unknown.
    unknown: bool = False


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
        standin: StandIn | None = None,
        trace: TraceNumbers | None = None,
    ) -> None:
        self.clock = clock
        self.journal = journal
        self.index = index
        self.risk = risk
        self.router = router
        self.resolver = resolver
        self.standin = standin
        self.metrics = metrics
        self._token_key = token_key
        self._boot = boot_count
        self._sequence = 0
        #: DE11 of card payments: the sequence the card adapters' reversals and 0800s
        #: share, persisted in blocks so a restart does not reuse numbers (trace.py).
        self.trace = trace if trace is not None else TraceNumbers()
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
        self._count(payment, result)
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

        # 4. route: the target, its candidate endpoints, and a reserved admission slot
        now = self.clock.now()
        try:
            target = self.router.target(payment)
        except NoRoute:
            check_transition(pid, state, Status.FAILED)
            result = Result(pid, Status.FAILED, reasons.ISSUER_UNAVAILABLE)
            await self._journal(payment, digest, "final", result.status, encode_result(result))
            return result
        # An empty order means every endpoint's breaker is open: nothing to reserve, and
        # the payment goes straight to stand-in (cards) or fails 91.
        order = self.router.candidates(target, payment, now)
        first = self._reserve(order) if order else -1  # before the journal: shedding is safe
        check_transition(pid, state, Status.ROUTED)
        state = Status.ROUTED

        # 5. dispatch: write-ahead first, so a crash after sending is never forgotten.
        try:
            await self._journal(payment, digest, "intent", Status.SENT,
                                encode_payment(payment))
        except BaseException:
            if first >= 0:
                self.router.limiter.release(order[first])
            raise
        check_transition(pid, state, Status.SENT)
        state = Status.SENT
        if first >= 0:
            outcome = await self._dispatch(payment, target, order, first, now)
        else:
            outcome = DispatchOutcome(None, None, issuer_unreachable=True)
        if outcome.unknown:
            assert outcome.route is not None
            # Sent, and no answer in time: outcome unknown until resolved.
            check_transition(pid, state, Status.UNKNOWN)
            result = Result(pid, Status.UNKNOWN, reasons.RESPONSE_TOO_LATE,
                            route=outcome.route.network, aml_flag=payment.aml_flag)
            await self._journal(payment, digest, "unknown", Status.UNKNOWN, encode_result(result))
            self.resolver.submit(payment, digest, outcome.route)
            return result
        reply = outcome.reply or NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)
        stood_in = False
        if outcome.issuer_unreachable and payment.channel == "card" and self.standin is not None:
            # No issuer endpoint could be reached: approve on its behalf within limits,
            # and tell it later with a 0120 advice (store and forward).
            auth_code = self.standin.decide(payment, target.name)
            if auth_code is not None:
                reply = NetworkReply("approved", reasons.APPROVED, auth_code)
                stood_in = True
        status = _OUTCOME_STATUS[reply.outcome]
        check_transition(pid, state, status)
        network = outcome.route.network if outcome.route is not None else target.name
        result = Result(pid, status, reply.reason, reply.network_ref, network,
                        stood_in=stood_in, aml_flag=payment.aml_flag)

        # 6. journal
        await self._journal(payment, digest, "final", status, encode_result(result))
        if stood_in:
            assert self.standin is not None
            self.standin.queue_advice(payment, result, target.endpoints, digest)

        # 7. respond
        return result

    def _count(self, payment: Payment, result: Result) -> None:
        """The per-reply metrics: outcome, SLI events, business KPIs (each once)."""
        metrics = self.metrics
        status = result.status
        metrics.payments[(payment.channel, status)].inc()
        metrics.sli_total.inc()
        if status is Status.APPROVED:
            metrics.sli_good.inc()
            amount = metrics.approved_amount.get(payment.currency)
            if amount is not None:
                amount.inc(payment.amount)
        elif status is Status.DECLINED:
            metrics.sli_good.inc()
            declines = metrics.declines
            key = (payment.channel, result.reason)
            (declines[key] if key in declines else declines[(payment.channel, "other")]).inc()

    def _reserve(self, order: list[str]) -> int:
        """Admission: hold a slot on the first candidate with room, or shed the payment."""
        limiter = self.router.limiter
        for i, endpoint in enumerate(order):
            if limiter.try_acquire(endpoint):
                return i
            self.metrics.shed[endpoint].inc()
        raise Rejected(reasons.E_OVERLOADED,
                       f"every endpoint of this route is at its in-flight limit ({order})")

    async def _dispatch(self, payment: Payment, target: Target, order: list[str], first: int,
                        started: float) -> DispatchOutcome:
        """Attempts in failover order, within the payment's deadline and the retry budget.

        Retries only what is safe: a request that never left (NotSent), or a technical
        error the network answered. A timeout after sending ends the loop: the outcome is
        unknown, and retrying elsewhere could book the payment twice.
        """
        router, metrics, clock = self.router, self.metrics, self.clock
        deadline = started + router.config.payment_deadline_s
        router.budget.record_attempt(started)
        last: NetworkReply | None = None
        last_route: Route | None = None
        reached_issuer = False
        attempts = 0
        previous = ""
        for index in range(first, len(order)):
            endpoint = order[index]
            now = clock.now()
            # allow() also takes a probe slot when the breaker is half-open.
            if not router.health.breakers[endpoint].allow(now):
                if index == first:
                    router.limiter.release(endpoint)
                continue
            if index != first and not router.limiter.try_acquire(endpoint):
                metrics.shed[endpoint].inc()
                continue
            timeout = min(target.timeout_s, deadline - now)
            if timeout <= 0:
                router.limiter.release(endpoint)
                metrics.retries_denied["deadline"].inc()
                break
            if previous:
                metrics.failovers[(previous, endpoint)].inc()
            attempts += 1
            route = router.route(endpoint, target)
            sent_at = clock.measure()
            not_sent = False
            reply: NetworkReply | None = None
            try:
                with anyio.move_on_after(timeout) as scope:
                    reply = await route.adapter.authorize(payment)
            except NotSent:
                not_sent = True
            finally:
                router.limiter.release(endpoint)
            duration = clock.measure() - sent_at
            if scope.cancelled_caught:
                metrics.network_timeouts[endpoint].inc()
                router.health.record(endpoint, clock.now(), False, duration)
                return DispatchOutcome(None, route, issuer_unreachable=False, unknown=True)
            kind = classify(reply, not_sent=not_sent)
            healthy = counts_as_healthy(kind, reply)
            router.health.record(endpoint, clock.now(), healthy, duration)
            if not not_sent:
                metrics.network_duration[endpoint].observe(duration)
                reached_issuer = reached_issuer or healthy
            last, last_route, previous = reply, route, endpoint
            if kind is None or kind is FailureKind.DECLINED:
                return DispatchOutcome(reply, route, issuer_unreachable=False)
            if not is_safe_to_retry(payment.channel, kind, same_endpoint=False):
                metrics.retries_denied["unsafe"].inc()
                break
            delay = router.policy.plan_retry(attempts, router.rng, clock.now(), deadline)
            if delay is None:
                metrics.retries_denied["attempts"].inc()
                break
            if not router.budget.try_spend_retry(clock.now()):
                metrics.retries_denied["budget"].inc()
                break
            metrics.retries[(payment.channel, kind.value)].inc()
            if delay:
                await anyio.sleep(delay)
        return DispatchOutcome(last, last_route, issuer_unreachable=not reached_issuer)

    async def _journal(
        self, payment: Payment, digest: bytes, kind: RecordKind, status: Status, record: bytes
    ) -> None:
        row = JournalRecord(payment.payment_id, payment.idempotency_key, kind, status, digest,
                            record, self.clock.wall_us())
        # Nothing has left the switch yet for an intent or a risk decline: shedding is
        # safe. After sending we must not drop the outcome: wait for room instead.
        shed = kind == INTENT or (kind == FINAL and status is Status.DECLINED)
        try:
            await self.journal.write(row, OnFull.SHED if shed else OnFull.WAIT)
        except JournalFull as exc:
            raise Rejected(reasons.E_OVERLOADED, str(exc)) from None
        except JournalFailed as exc:
            raise Rejected(reasons.E_UNAVAILABLE, f"journal unavailable: {exc}") from None

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
                stan=f"{self.trace.next():06d}",
                rrn=f"{self._boot % 100:02d}{seq % 10**10:010d}",
                pan_length=len(c.pan),
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
