"""The payment core: every payment's state and every decision, sans-IO. Start reading here.

A payment switch is a state machine fed by events (the h11 / TigerBeetle shape). The
core never awaits, never reads a clock and never touches a socket: the shell that drives
it (switch/serve/engine.py on anyio; a deterministic simulator in tests) passes ``now``
with every event and carries out the effects through three non-blocking ports.

Events in (methods, each with ``now`` and ``mono``, the precise clock for latency metrics):

* :meth:`PaymentCore.on_requests`  a batch of payment requests from one read
* :meth:`PaymentCore.on_replies`   network answers (or late NotSent), by attempt token
* :meth:`PaymentCore.on_committed` a journal group commit made its records durable
* :meth:`PaymentCore.on_commit_failed`  a commit failed (fail-stop)
* :meth:`PaymentCore.on_timers`    the earliest deadline (:meth:`next_deadline`) passed

Actions out (ports, all synchronous and non-blocking; the shell batches them):

* :class:`JournalPort` ``append(row)``: queue a record; returns the commit ticket whose
  commit makes it durable (None: durable now). Every record of one wake-up lands in one
  group commit, and one commit completes all its payments at once.
* :class:`NetworkPort` ``send(endpoint, token, payment)`` / ``cancel(endpoint, token)``:
  queue a request; the answer comes back as an ``on_replies`` event with the token.
  ``send`` raises NotSent synchronously when nothing can have left.
* :class:`Origin` ``reply(response)``: queue a reply to whoever asked (a connection's
  write buffer, or an awaitable for another front door).

The steps of one payment, in order (the jPOS TransactionManager idea; each step owns its
undo, written next to it):

    1. validate   semantic checks the wire types cannot express   -> error reply
    2. dedupe     same key + same body: the stored result (or wait
                  for the one in flight); other body: refuse      -> error reply
    3. risk       limits, blocklists, velocity, AML flag          -> declined
    4. route      target, endpoints in strategy order, and an
                  admission slot               undo: release slot -> failed 91 / overloaded
    5. dispatch   journal the intent (write-ahead) and wait for its
                  commit; then attempts in failover order: per-attempt
                  timeout within the payment deadline, safe retries
                  within the retry budget; card stand-in when no issuer
                  endpoint is reachable; a timeout after sending is
                  unknown (handed to the resolver)               -> approved/declined/
                                                                    failed/unknown
    6. journal    the result; wait for its commit
    7. respond    only now does the client hear it

The admission slot of step 4 is held by at most one attempt at a time and released
exactly once (``_release``), on every path: answer, NotSent, timeout, breaker refusal,
deadline, journal refusal, unexpected error.

Fault isolation: an unexpected exception while handling one payment's event fails that
payment (its id logged, ``payswitch_payment_errors`` counted), never the process or its
neighbours. Only journal failures stop the switch (fail-stop).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent
from switch.adapters.trace import MAX_RRN, TraceNumbers
from switch.journal import JournalFailed, JournalFull, encode_payment, encode_result
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
from switch.payment.risk import RiskEngine
from switch.payment.standin import StandIn
from switch.payment.timers import TimerHeap
from switch.payment.validation import InvalidPayment, validate
from switch.protocols.wire import ErrorReply, Reply, Response
from switch.routing.retry import (
    FailureKind,
    attempt_floor,
    classify,
    counts_as_healthy,
    is_safe_to_retry,
)
from switch.routing.router import NoRoute, Route, Router
from switch.routing.table import Target
from switch.routing.tablespec import MIN_BIN_DIGITS, ROUTED_BIN_DIGITS

log = logging.getLogger(__name__)

_encoder: Final = msgspec.msgpack.Encoder()
#: Latency from which a payment's id is attached to its histogram bucket as an exemplar.
EXEMPLAR_FROM_S: Final = 0.010
#: Duplicates of one in-flight key that may wait for its result; past it, overloaded.
MAX_DUPLICATE_WAITERS: Final = 64
#: How long a duplicate of a payment the core does not hold (a recovered payment under
#: resolution) waits for its result, polled at ``ORPHAN_POLL_S``; then it is answered
#: with the current state (unknown, being resolved).
ORPHAN_WAIT_S: Final = 2.0
ORPHAN_POLL_S: Final = 0.02
_OUTCOME_STATUS: Final = {
    "approved": Status.APPROVED,
    "declined": Status.DECLINED,
    "failed": Status.FAILED,
    "reversed": Status.REVERSED,
}
_FAILED_91: Final = NetworkReply("failed", reasons.ISSUER_UNAVAILABLE)


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


# --------------------------------------------------------------------------- ports


class Origin(Protocol):
    """Where a request's one response goes (a connection, an awaitable)."""

    def reply(self, response: Response) -> None: ...


class JournalPort(Protocol):
    def append(self, row: tuple[str, str, str, str, bytes, bytes, int]) -> object | None:
        """Queue a record. Returns the ticket of the commit that makes it durable, or
        None if it is durable now (mode off). Raises JournalFull / JournalFailed."""
        ...


class NetworkPort(Protocol):
    def send(self, endpoint: str, token: int, payment: Payment) -> None:
        """Queue ``payment`` to ``endpoint``; raises NotSent if it certainly never left."""
        ...

    def cancel(self, endpoint: str, token: int) -> None:
        """Nobody waits for ``token`` any more (timeout): a later answer is late."""
        ...


class ResolverPort(Protocol):
    def submit(self, payment: Payment, digest: bytes, route: Route) -> None: ...


def _fate_open(reply: NetworkReply | None, wired_before: int) -> bool:
    """Does this answer leave the payment's own fate open (then it is resolved: reversed or
    inquired), or is it a failure that stands?

    * 68: the network's issuer answered it too late; it may have approved.
    * 94: the issuer has seen this STAN + terminal before. The STAN is the payment's, for
      every attempt. After an earlier attempt went on the wire (a 91/96 answered, then
      failover), the original is this payment's own, possibly approved (some networks
      answer 96 after partial processing): booked at the issuer, failed here, unless it
      is reversed. On the first attempt on the wire, the original can only be another
      payment's (a reused trace number): this one was refused and booked nowhere, and a
      reversal of its STAN could undo that other payment.
    """
    assert reply is not None, "a timeout is unknown by itself"
    if reply.reason == reasons.DUPLICATE_TRANSMISSION:
        return wired_before > 0
    return reply.reason == reasons.RESPONSE_TOO_LATE


# --------------------------------------------------------------------------- state


class _Flight:
    """One accepted payment in flight: everything the steps need between events."""

    __slots__ = (
        "attempts",
        "continuation",
        "deadline",
        "digest",
        "dups",
        "first",
        "index",
        "key",
        "last",
        "last_route",
        "order",
        "origin",
        "payment",
        "previous",
        "reached",
        "read_at",
        "result",
        "rid",
        "route",
        "sent_at",
        "slot",
        "started",
        "state",
        "target",
        "timer_gen",
        "token",
        "unknown",
        "wired",
    )

    def __init__(self, origin: Origin, rid: int, key: str, digest: bytes, payment: Payment,
                 started: float, read_at: float) -> None:
        self.origin = origin
        self.rid = rid
        self.key = key
        self.digest = digest
        self.payment = payment
        self.started = started
        self.read_at = read_at
        self.state = Status.RECEIVED
        self.target: Target | None = None
        self.order: list[str] = []
        self.first = -1
        self.index = -1
        self.slot = ""  # the endpoint whose admission slot this payment holds, if any
        self.deadline = 0.0
        self.attempts = 0
        self.previous = ""
        self.reached = False
        self.last: NetworkReply | None = None
        self.last_route: Route | None = None
        self.route: Route | None = None
        self.token = 0
        self.sent_at = 0.0
        self.unknown = False
        #: Attempts that went on the wire (answered or not; NotSent ones never did).
        self.wired = 0
        self.result: Result | None = None
        self.dups: list[tuple[Origin, int]] | None = None
        #: What to run once the record this payment waits on is durable.
        self.continuation: Callable[[_Flight, float, float], None] | None = None
        self.timer_gen = 0


class _Orphan:
    """A duplicate waiting for a key the core does not hold (resolved elsewhere)."""

    __slots__ = ("key", "origin", "rid", "timer_gen", "until")

    def __init__(self, origin: Origin, rid: int, key: str, until: float) -> None:
        self.origin = origin
        self.rid = rid
        self.key = key
        self.until = until
        self.timer_gen = 0


class PaymentCore:
    def __init__(
        self,
        *,
        journal: JournalPort,
        network: NetworkPort,
        index: IdempotencyIndex,
        risk: RiskEngine,
        router: Router,
        resolver: ResolverPort,
        metrics: SwitchMetrics,
        token_key: bytes,
        boot_count: int,
        seed: int,
        wall_offset: float,
        standin: StandIn | None = None,
        trace: TraceNumbers | None = None,
        rrns: TraceNumbers | None = None,
    ) -> None:
        self.journal = journal
        self.network = network
        self.index = index
        self.risk = risk
        self.router = router
        self.resolver = resolver
        self.metrics = metrics
        self.standin = standin
        self._token_key = token_key
        self._boot = boot_count
        #: wall-clock seconds = now + wall_offset (the shell anchors it once at start).
        self._wall_offset = wall_offset
        self._sequence = 0
        #: DE11 of card payments: the sequence the card adapters' reversals and 0800s
        #: share, persisted in blocks so a restart does not reuse numbers (trace.py).
        self.trace = trace if trace is not None else TraceNumbers()
        #: DE37 of card payments: a durable 12-digit sequence, never reused (trace.py).
        self.rrns = rrns if rrns is not None else TraceNumbers(max_value=MAX_RRN)
        # UETRs must be UUIDv4; drawing them from a seeded generator keeps runs repeatable.
        self._rng = random.Random(seed * 1_000_003 + boot_count)
        self.timers = TimerHeap()
        self._by_key: dict[str, _Flight] = {}
        self._by_token: dict[int, _Flight] = {}
        self._tokens = 0
        self._waiting: dict[object, list[_Flight]] = {}
        #: Payments whose must-keep record met a full journal: retried after each commit.
        self._want_room: deque[tuple[_Flight, tuple[str, str, str, str, bytes, bytes, int]]] = (
            deque())
        self.in_flight = 0
        self.errors = 0
        #: Payments recovered unfinished at start-up, by key: (payment id, network).
        self._recovered: dict[str, tuple[str, str]] = {}

    def owns(self, key: str) -> bool:
        """A payment of ``key`` is in flight here: its journal may show it unfinished, yet
        it is the core's to finish, not the resolver's (resolver.backlog_candidates)."""
        return key in self._by_key

    def recovered(self, key: str, payment_id: str, network: str) -> None:
        """A payment found unfinished at start-up, now with the resolver: a retry of its
        key waits (bounded) for the resolution, else hears its current state."""
        self._recovered[key] = (payment_id, network)

    # ----------------------------------------------------------------- events

    def on_requests(self, origin: Origin, requests: Iterable[tuple[int, PaymentRequest]],
                    now: float, mono: float, read_at: float) -> None:
        """A batch of payment requests read together; each gets exactly one reply."""
        for rid, request in requests:
            try:
                self._receive(origin, rid, request, now, mono, read_at)
            except Exception as exc:  # a bug in a step: this request fails, not the batch
                self._internal_error(request.idempotency_key, exc)
                origin.reply(ErrorReply(rid, reasons.E_UNAVAILABLE, "internal error"))

    def on_replies(self, replies: Sequence[tuple[int, NetworkReply | None]], now: float,
                   mono: float) -> None:
        """Network answers by token; ``None`` is a NotSent reported after the fact."""
        by_token = self._by_token
        for token, reply in replies:
            flight = by_token.pop(token, None)
            if flight is None:
                continue  # late (after timeout) or unknown token: the adapter counts it
            self._guard(flight, self._answered, reply, now, mono)

    def on_committed(self, ticket: object, now: float, mono: float) -> None:
        """Every record of ``ticket``'s commit is durable: continue those payments."""
        flights = self._waiting.pop(ticket, ())
        for flight in flights:
            step = flight.continuation
            assert step is not None, flight.payment.payment_id
            flight.continuation = None
            self._guard(flight, step, now, mono)
        self._retry_room(now, mono)

    def on_commit_failed(self, ticket: object, error: BaseException) -> None:
        """Fail-stop: payments waiting on a failed commit are refused as unavailable."""
        for flight in self._waiting.pop(ticket, ()):
            flight.continuation = None
            self._fail(flight, Rejected(reasons.E_UNAVAILABLE, f"journal unavailable: {error}"),
                       forget=True)
        while self._want_room:
            flight, _ = self._want_room.popleft()
            self._fail(flight, Rejected(reasons.E_UNAVAILABLE, f"journal unavailable: {error}"),
                       forget=True)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def on_timers(self, now: float, mono: float) -> None:
        for owner in self.timers.pop_due(now):
            if isinstance(owner, _Orphan):
                self._orphan_check(owner, now)
            else:
                assert isinstance(owner, _Flight)
                if owner.token:
                    self._guard(owner, self._attempt_timed_out, now, mono)
                else:  # a retry back-off ended
                    self._guard(owner, self._attempt_from, owner.index + 1, now, mono)

    # ----------------------------------------------------------------- steps 1-2

    def _receive(self, origin: Origin, rid: int, request: PaymentRequest, now: float,
                 mono: float, read_at: float) -> None:
        # 1. validate
        try:
            validate(request)
        except InvalidPayment as exc:
            self._refuse(origin, rid, reasons.E_INVALID, str(exc))
            return

        # 2. dedupe
        digest = body_hash(_encoder.encode(request), self._token_key)
        key = request.idempotency_key
        existing = self.index.get(key)
        if existing is not None:
            if existing.body_hash != digest:
                self._refuse(origin, rid, reasons.E_IDEMPOTENCY_CONFLICT,
                             f"idempotency_key {key!r} was used with a different body")
                return
            self.metrics.replays.inc()
            if existing.result is not None and not existing.pending:
                origin.reply(Reply(rid, existing.result, True))
                return
            flight = self._by_key.get(key)
            if flight is None:
                # In flight elsewhere (a recovered payment the resolver is settling).
                orphan = _Orphan(origin, rid, key, now + ORPHAN_WAIT_S)
                self.timers.set(orphan, now + ORPHAN_POLL_S)
                return
            if flight.dups is None:
                flight.dups = []
            if len(flight.dups) >= MAX_DUPLICATE_WAITERS:
                self._refuse(origin, rid, reasons.E_OVERLOADED,
                             f"{MAX_DUPLICATE_WAITERS} retries of {key!r} already wait")
                return
            flight.dups.append((origin, rid))  # answered when the first one finishes
            return
        if not self.index.has_room():
            # Every key left is in flight or of a payment being resolved: none may be
            # forgotten, so memory is held by refusing new work (idempotency.py).
            self._refuse(origin, rid, reasons.E_OVERLOADED,
                         f"{len(self.index)} idempotency keys of payments in flight or "
                         "being resolved: none can be forgotten yet")
            return
        payment = self._new_payment(request, now)
        self.index.begin(key, digest, now)
        assert len(self.index) <= 2 * self.index.max_keys
        flight = _Flight(origin, rid, key, digest, payment, now, read_at)
        self._by_key[key] = flight
        self.in_flight += 1
        self._guard(flight, self._risk_and_route, now, mono)

    # ----------------------------------------------------------------- steps 3-5

    def _risk_and_route(self, f: _Flight, now: float, mono: float) -> None:
        payment = f.payment
        pid = payment.payment_id

        # 3. risk
        decision = self.risk.assess(payment, now)
        if decision.aml_flag:
            self.metrics.aml_flagged.inc()
            f.payment = payment = msgspec.structs.replace(payment, aml_flag=True)
        if decision.reason is not None:
            self.metrics.risk_declines[decision.rule].inc()
            check_transition(pid, f.state, Status.DECLINED)
            self._journal_final(f, Result(pid, Status.DECLINED, decision.reason), now, mono,
                                sheddable=True)
            return

        # 4. route: the target, its candidate endpoints, and a reserved admission slot
        router = self.router
        try:
            target = router.target(payment)
        except NoRoute:
            check_transition(pid, f.state, Status.FAILED)
            self._journal_final(f, Result(pid, Status.FAILED, reasons.ISSUER_UNAVAILABLE),
                                now, mono)
            return
        f.target = target
        # An empty order means every endpoint's breaker is open: nothing to reserve, and
        # the payment goes straight to stand-in (cards) or fails 91.
        f.order = order = router.candidates(target, payment, now)
        if order:
            f.first = self._reserve(order)  # before the journal: shedding is safe
            f.slot = order[f.first]
        check_transition(pid, f.state, Status.ROUTED)
        f.state = Status.ROUTED

        # 5. dispatch: write-ahead first, so a crash after sending is never forgotten.
        #    Undo on refusal: release the slot (in _fail).
        self._journal(f, "intent", Status.SENT, encode_payment(payment), self._intent_durable,
                      now, mono, sheddable=True)

    def _reserve(self, order: list[str]) -> int:
        """Admission: hold a slot on the first candidate with room, or shed the payment."""
        limiter = self.router.limiter
        for i, endpoint in enumerate(order):
            if limiter.try_acquire(endpoint):
                return i
            self.metrics.shed[endpoint].inc()
        raise Rejected(reasons.E_OVERLOADED,
                       f"every endpoint of this route is at its in-flight limit ({order})")

    def _intent_durable(self, f: _Flight, now: float, mono: float) -> None:
        check_transition(f.payment.payment_id, f.state, Status.SENT)
        f.state = Status.SENT
        if f.first < 0:
            self._outcome(f, now, mono)  # no endpoint up: stand-in or 91
            return
        # The deadline runs from routing, as the attempts' budget always has.
        f.deadline = f.started + self.router.config.payment_deadline_s
        self.router.budget.record_attempt(now)
        self._attempt_from(f, f.first, now, mono)

    def _attempt_from(self, f: _Flight, index: int, now: float, mono: float) -> None:
        """Attempt endpoints in failover order from ``index``, until one is in flight or
        none is left (then the outcome stands)."""
        assert f.state is Status.SENT and not f.token
        router, metrics = self.router, self.metrics
        order, target = f.order, f.target
        assert target is not None
        # Every attempt needs at least the floor: one of a few milliseconds would time
        # out and make a clean 91 unknown. The first attempt too: its intent's commit
        # (a disk stall) can leave it a few milliseconds, and sent then, a payment
        # nothing had touched became a reversal; not sent, it fails 91 with nothing done.
        # A route or payment deadline configured below the floor lowers it: to the
        # route's timeout (an attempt given all of it is never too short), and to half
        # the payment's deadline (else a first attempt, always a little late, was never
        # made at all).
        floor = min(attempt_floor(target.timeout_s), router.config.payment_deadline_s / 2)
        while index < len(order):
            endpoint = order[index]
            timeout = min(target.timeout_s, f.deadline - now)
            if timeout <= 0 or timeout < floor:
                self._release(f)
                metrics.retries_denied["deadline"].inc()
                break
            # A half-open breaker's probe slot is taken (allow) only once the call will
            # be made, and every call made reports back (record). Taken first, a slot
            # was kept for ever by an attempt that then found no admission slot or its
            # deadline passed (after a disk stall): three such and the breaker stayed
            # half-open with no probe left, refusing a healthy issuer (the simulator,
            # seed 7680: stand-in advices never delivered).
            breaker = router.health.breakers[endpoint]
            if not breaker.available(now):
                self._release(f)  # the reserved first slot, if this was its endpoint
                index += 1
                continue
            if not f.slot:
                if not router.limiter.try_acquire(endpoint):
                    metrics.shed[endpoint].inc()
                    index += 1
                    continue
                f.slot = endpoint
            assert f.slot == endpoint, (f.slot, endpoint)
            if not breaker.allow(now):  # available() said yes at this same now: rare
                self._release(f)
                index += 1
                continue
            if f.previous:
                metrics.failovers[(f.previous, endpoint)].inc()
            f.attempts += 1
            f.index = index
            f.route = router.route(endpoint, target)
            self._tokens += 1
            f.token = token = self._tokens
            f.sent_at = mono
            self._by_token[token] = f
            try:
                self.network.send(endpoint, token, f.payment)
            except NotSent:
                del self._by_token[token]
                if self._attempt_done(f, None, True, now, mono):
                    return
                index = f.index + 1
                continue
            self.timers.set(f, now + timeout)
            return
        self._outcome(f, now, mono)

    def _attempt_done(self, f: _Flight, reply: NetworkReply | None, not_sent: bool,
                      now: float, mono: float) -> bool:
        """One attempt ended with an answer or NotSent. True if the payment moved on
        (outcome reached, or a retry timer set); False: try the next endpoint now."""
        assert f.token and f.slot and f.route is not None
        self.timers.cancel(f)
        router, metrics = self.router, self.metrics
        endpoint = f.slot
        duration = mono - f.sent_at
        kind = classify(reply, not_sent=not_sent)
        healthy = counts_as_healthy(kind, reply)
        # The breaker's verdict first, while the attempt still holds its token and slot:
        # a bug before it leaves _crashed both to give back (a half-open probe slot too).
        router.health.record(endpoint, now, healthy, duration)
        f.token = 0
        self._release(f)
        if not not_sent:
            metrics.network_duration[endpoint].observe(duration)
            f.reached = f.reached or healthy
        f.last, f.last_route, f.previous = reply, f.route, endpoint
        wired_before = f.wired
        if not not_sent:
            f.wired += 1
        if kind is FailureKind.UNKNOWN and _fate_open(reply, wired_before):
            f.unknown = True  # resolved like a timeout after sending (no retry below)
        if kind is None or kind is FailureKind.DECLINED:  # an answer that stands
            self._outcome(f, now, mono)
            return True
        if not is_safe_to_retry(f.payment.channel, kind, same_endpoint=False):
            metrics.retries_denied["unsafe"].inc()
            self._outcome(f, now, mono)
            return True
        if f.index + 1 >= len(f.order):
            # Retries go to the next endpoint only: none is left. Planned anyway, a retry
            # took the global budget and held the answer for a back-off, for nothing.
            metrics.retries_denied["attempts"].inc()
            self._outcome(f, now, mono)
            return True
        assert f.target is not None
        policy = router.policy
        delay = policy.plan_retry(f.attempts, router.rng, now, f.deadline,
                                  attempt_floor(f.target.timeout_s))
        if delay is None:
            why = "attempts" if f.attempts >= policy.max_attempts else "deadline"
            metrics.retries_denied[why].inc()
            self._outcome(f, now, mono)
            return True
        if not router.budget.try_spend_retry(now):
            metrics.retries_denied["budget"].inc()
            self._outcome(f, now, mono)
            return True
        metrics.retries[(f.payment.channel, kind.value)].inc()
        if delay:
            self.timers.set(f, now + delay)  # on_timers resumes at f.index + 1
            return True
        if not_sent:
            return False  # the caller's loop goes on to the next endpoint
        self._attempt_from(f, f.index + 1, now, mono)
        return True

    def _answered(self, f: _Flight, reply: NetworkReply | None, now: float, mono: float
                  ) -> None:
        """An attempt's answer arrived (``None``: NotSent reported after the fact)."""
        if not self._attempt_done(f, reply, reply is None, now, mono):
            self._attempt_from(f, f.index + 1, now, mono)

    def _attempt_timed_out(self, f: _Flight, now: float, mono: float) -> None:
        """Sent, and no answer within the attempt's timeout: the outcome is unknown, and
        retrying elsewhere could book the payment twice."""
        assert f.token and f.slot
        endpoint = f.slot
        self._by_token.pop(f.token, None)
        self.network.cancel(endpoint, f.token)
        f.token = 0
        self._release(f)
        self.metrics.network_timeouts[endpoint].inc()
        self.router.health.record(endpoint, now, False, mono - f.sent_at)
        f.unknown = True
        f.last_route = f.route
        self._outcome(f, now, mono)

    def _release(self, f: _Flight) -> None:
        """Give the admission slot back: the one place it is released, once."""
        if f.slot:
            self.router.limiter.release(f.slot)
            f.slot = ""

    # ----------------------------------------------------------------- steps 5-7

    def _outcome(self, f: _Flight, now: float, mono: float) -> None:
        """The attempts are over: decide the result and journal it."""
        assert not f.slot and not f.token, "slot or attempt outlived the attempts"
        payment = f.payment
        pid = payment.payment_id
        if f.unknown:
            assert f.last_route is not None
            check_transition(pid, f.state, Status.UNKNOWN)
            result = Result(pid, Status.UNKNOWN, reasons.RESPONSE_TOO_LATE,
                            route=f.last_route.network, aml_flag=payment.aml_flag)
            f.state = Status.UNKNOWN
            f.result = result
            self._journal(f, "unknown", Status.UNKNOWN, encode_result(result),
                          self._unknown_durable, now, mono)
            return
        target = f.target
        assert target is not None
        reply = f.last or _FAILED_91
        stood_in = False
        if (not f.reached and payment.channel == "card" and self.standin is not None
                and not self._untried_endpoint_up(f, now)):
            # No issuer endpoint could be reached: approve on its behalf within limits,
            # and tell it later with a 0120 advice (store and forward).
            auth_code = self.standin.decide(payment, target.name)
            if auth_code is not None:
                reply = NetworkReply("approved", reasons.APPROVED, auth_code)
                stood_in = True
        status = _OUTCOME_STATUS[reply.outcome]
        check_transition(pid, f.state, status)
        network = f.last_route.network if f.last_route is not None else target.name
        result = Result(pid, status, reply.reason, reply.network_ref, network,
                        stood_in=stood_in, aml_flag=payment.aml_flag)
        self._journal_final(f, result, now, mono)

    def _untried_endpoint_up(self, f: _Flight, now: float) -> bool:
        """Is an endpoint after the last one attempted (failover order) still available?
        The attempts then ended for want of retry budget, attempts or time, not for want
        of a reachable issuer: stand-in must not approve on its behalf."""
        breakers = self.router.health.breakers
        return any(breakers[e].available(now) for e in f.order[f.index + 1:])

    def _journal_final(self, f: _Flight, result: Result, now: float, mono: float,
                       sheddable: bool = False) -> None:
        # 6. journal
        f.state = result.status
        f.result = result
        self._journal(f, "final", result.status, encode_result(result), self._final_durable,
                      now, mono, sheddable=sheddable)

    def _final_durable(self, f: _Flight, now: float, mono: float) -> None:
        result = f.result
        assert result is not None and result.status is f.state
        if result.stood_in and self.standin is not None:
            target = f.target
            assert target is not None
            self.standin.advise(f.payment, result, target.name, target.endpoints, f.digest)
        self._finish(f, result, mono)

    def _unknown_durable(self, f: _Flight, now: float, mono: float) -> None:
        result = f.result
        assert result is not None and f.last_route is not None
        self.resolver.submit(f.payment, f.digest, f.last_route)
        self._finish(f, result, mono)

    def _journal(self, f: _Flight, kind: str, status: Status, record: bytes,
                 then: Callable[[_Flight, float, float], None], now: float, mono: float,
                 sheddable: bool = False) -> None:
        """Append one record; ``then`` runs once it is durable. ``sheddable``: nothing has
        left the switch yet, so a full journal may refuse the payment."""
        payment = f.payment
        row = (payment.payment_id, payment.idempotency_key, kind, status.value, f.digest,
               record, int((now + self._wall_offset) * 1_000_000))
        f.continuation = then
        try:
            ticket = self.journal.append(row)
        except JournalFull as exc:
            if sheddable:
                f.continuation = None
                self._fail(f, Rejected(reasons.E_OVERLOADED, str(exc)), forget=True)
                return
            # After sending we must not drop the outcome: wait for room (bounded by the
            # journal's own progress) rather than lose it.
            self._want_room.append((f, row))
            return
        except JournalFailed as exc:
            f.continuation = None
            # Fail-stop, as before the core: the key is let go like any refusal.
            self._fail(f, Rejected(reasons.E_UNAVAILABLE, f"journal unavailable: {exc}"),
                       forget=True)
            return
        if ticket is None:
            f.continuation = None
            then(f, now, mono)
            return
        waiting = self._waiting.get(ticket)
        if waiting is None:
            self._waiting[ticket] = [f]
        else:
            waiting.append(f)

    def _retry_room(self, now: float, mono: float) -> None:
        want = self._want_room
        while want:
            f, row = want[0]
            try:
                ticket = self.journal.append(row)
            except JournalFull:
                return
            except JournalFailed as exc:
                self.on_commit_failed(object(), exc)
                return
            want.popleft()
            if ticket is None:
                step = f.continuation
                assert step is not None
                f.continuation = None
                self._guard(f, step, now, mono)
            else:
                self._waiting.setdefault(ticket, []).append(f)

    def _finish(self, f: _Flight, result: Result, mono: float) -> None:
        """7. respond: the result is durable; the client and any duplicates hear it."""
        payment = f.payment
        self.index.complete(f.key, result)
        self._count(payment, result)
        elapsed = mono - f.read_at
        if elapsed < EXEMPLAR_FROM_S:
            self.metrics.duration[payment.channel].observe(elapsed)
        else:
            # Slow payments carry their id as an exemplar (OpenMetrics), so a slow bucket
            # on a dashboard leads to a payment. Fast ones skip the cost.
            self.metrics.duration[payment.channel].observe(
                elapsed, exemplar={"payment_id": payment.payment_id})
        self._done(f)
        f.origin.reply(Reply(f.rid, result, False))
        if f.dups:
            for origin, rid in f.dups:
                origin.reply(Reply(rid, result, True))

    def _fail(self, f: _Flight, exc: Rejected, *, forget: bool) -> None:
        """Refuse a payment. ``forget``: it was never accepted (nothing can have left), so
        a retry may start it afresh; otherwise its key stays pending (the journal holds
        its intent and start-up will resolve it)."""
        self._release(f)
        self.timers.cancel(f)
        if f.token:
            self._by_token.pop(f.token, None)
            f.token = 0
        if forget:
            self.index.abandon(f.key)
        self._done(f)
        self.metrics.rejected[exc.code].inc()
        f.origin.reply(ErrorReply(f.rid, exc.code, exc.message))
        if f.dups:
            for origin, rid in f.dups:
                self.metrics.rejected[reasons.E_OVERLOADED].inc()
                origin.reply(ErrorReply(rid, reasons.E_OVERLOADED,
                                        f"earlier attempt of {f.key!r} was shed; retry"))

    def _done(self, f: _Flight) -> None:
        if self._by_key.get(f.key) is f:
            del self._by_key[f.key]
            self.in_flight -= 1
            assert self.in_flight >= 0

    def _refuse(self, origin: Origin, rid: int, code: str, message: str) -> None:
        self.metrics.rejected[code].inc()
        origin.reply(ErrorReply(rid, code, message))

    def _orphan_check(self, orphan: _Orphan, now: float) -> None:
        entry = self.index.get(orphan.key)
        if entry is not None and entry.result is not None and not entry.pending:
            orphan.origin.reply(Reply(orphan.rid, entry.result, True))
        elif entry is None:
            self._refuse(orphan.origin, orphan.rid, reasons.E_OVERLOADED,
                         f"earlier attempt of {orphan.key!r} was shed; retry")
        elif now >= orphan.until:
            known = self._recovered.get(orphan.key)
            if known is not None:
                # The current state: sent, outcome unknown until the resolver settles it.
                payment_id, network = known
                orphan.origin.reply(Reply(orphan.rid, Result(
                    payment_id, Status.UNKNOWN, reasons.RESPONSE_TOO_LATE, route=network), True))
                return
            self._refuse(orphan.origin, orphan.rid, reasons.E_OVERLOADED,
                         f"payment for {orphan.key!r} is still in flight; retry later")
        else:
            self.timers.set(orphan, now + ORPHAN_POLL_S)

    # ----------------------------------------------------------------- fault isolation

    def _guard(self, f: _Flight, step: Callable[..., object], *args: object) -> None:
        """Run one step of one payment; an unexpected error fails only that payment."""
        try:
            step(f, *args)
        except Rejected as exc:
            self._fail(f, exc, forget=f.state in (Status.RECEIVED, Status.ROUTED))
        except Exception as exc:
            self._internal_error(f.payment.payment_id, exc)
            try:
                self._crashed(f, args[-2], args[-1])  # type: ignore[arg-type]
            except Exception as again:  # the undo itself failed: refuse, keep the process
                self._internal_error(f.payment.payment_id, again)
                self._fail(f, Rejected(reasons.E_UNAVAILABLE, "internal error"), forget=False)

    def _crashed(self, f: _Flight, now: float, mono: float) -> None:
        """Undo after a bug: before anything was sent, refuse; after, the outcome is
        unknown (journaled as such and handed to the resolver), never guessed."""
        if f.token:
            # A call let through that will never report: a half-open breaker's probe slot
            # it holds comes back now, with no verdict on the endpoint (the bug was ours).
            self._by_token.pop(f.token, None)
            f.token = 0
            self.router.health.breakers[f.slot].abandon(now, mono - f.sent_at)
        self._release(f)
        self.timers.cancel(f)
        f.continuation = None
        if f.state in (Status.RECEIVED, Status.ROUTED):
            self._fail(f, Rejected(reasons.E_UNAVAILABLE, "internal error"), forget=True)
        elif f.state is Status.SENT and f.route is not None:
            f.unknown = True
            f.last_route = f.route
            self._outcome(f, now, mono)
        else:
            self._fail(f, Rejected(reasons.E_UNAVAILABLE, "internal error"), forget=False)

    def _internal_error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.metrics.payment_errors.inc()
        log.error("unexpected error handling a payment: %r", exc, exc_info=exc,
                  extra={"payment_id": what})

    # ----------------------------------------------------------------- helpers

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

    def _new_payment(self, request: PaymentRequest, now: float) -> Payment:
        self._sequence += 1
        seq = self._sequence
        pid = f"P{self._boot}-{seq}"
        card = swift = qr = None
        if request.card is not None:
            c = request.card
            card = CardRef(
                token=tokenize_pan(c.pan, self._token_key),
                last4=c.pan[-4:],
                bin=c.pan[:ROUTED_BIN_DIGITS if len(c.pan) >= 16 else MIN_BIN_DIGITS],
                expiry=c.expiry,
                terminal_id=c.terminal_id,
                merchant_id=c.merchant_id,
                mcc=c.mcc,
                stan=f"{self.trace.next():06d}",
                rrn=f"{self.rrns.next():012d}",
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
            received_at=_utc(now + self._wall_offset),
            card=card,
            swift=swift,
            qr=qr,
        )


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
