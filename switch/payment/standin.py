"""Card stand-in and its store-and-forward advices.

When no issuer endpoint can be reached, a card switch may approve on the issuer's behalf
within small limits (stand-in), and must then tell the issuer with a 0120 advice once it
is reachable again, or the issuer never places the hold and the money is unaccounted.

Limits (per payment, per card, per issuer target) bound the exposure, per currency: they
are configured per ISO 4217 code in major units, and exposure is counted per (card,
currency) and (issuer, currency), so ¥10,000 and $100 are never added up as 20,000 of
anything. A currency without limits is never stood in. The advice queue is
bounded too; when it is full, stand-in is refused (declined 91) rather than approving a
payment whose advice could not be kept. Persistence is the journal: a stand-in approval
is a final record with ``stood_in=True``, and a delivered advice adds an ``advice``
record. Start-up re-queues every stood-in payment without one.

Poison advices. An advice the adapter cannot encode (``CodecError``), or whose delivery
fails with any unexpected error, can never be delivered: it is quarantined (dropped from
the queue, logged as an error with its payment id, counted in
``payswitch_quarantined_records{kind="advice"}``, which alerts) instead of being retried
forever or ending the process. It stays in the journal without an ``advice`` record, so
each start quarantines it again until an operator settles it; start-up never blocks on it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import anyio
import msgspec

from switch import reasons
from switch.adapters.base import ChannelAdapter, NotSent
from switch.clock import Clock
from switch.currency import CURRENCIES, exponent
from switch.journal import ADVICE, Journal, JournalFailed, JournalRecord, OnFull
from switch.model import Payment, Result
from switch.observability.metrics import SwitchMetrics
from switch.protocols.errors import CodecError

#: A limit in major units as a decimal string: "250.00" USD, "30000" JPY, "75.500" KWD.
MAJOR_AMOUNT_PATTERN: Final = r"\A[0-9]{1,15}(?:\.[0-9]{1,3})?\Z"
MajorAmount = Annotated[str, msgspec.Meta(pattern=MAJOR_AMOUNT_PATTERN)]


class StandInLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Stand-in limits in one currency, in its major units as decimal strings.

    Each is turned into the currency's minor units with its ISO 4217 exponent ("250.00"
    USD is 25000, "30000" JPY is 30000, "75.500" KWD is 75500); more decimals than the
    currency has are refused. Every limit is required: a default amount would mean
    something else in every currency.
    """

    #: Largest single stand-in approval.
    per_payment_max: MajorAmount
    #: Stand-in exposure in this currency not yet advised to the issuer (an advice it
    #: answered, taken or refused, is done with), per card (token), restarts included;
    #: past it, the payment is declined 91. Other currencies' exposure does not count.
    per_card_max: MajorAmount
    #: The same, per issuer target.
    per_issuer_max: MajorAmount


@dataclass(frozen=True, slots=True)
class MinorLimits:
    """One currency's :class:`StandInLimits` in its minor units."""

    per_payment: int
    per_card: int
    per_issuer: int


#: The keys stand-in limits had when they were raw minor units, whatever the currency
#: (20000 was 200.00 USD, 20,000 JPY and 20.000 KWD): refused, naming the new form.
OLD_KEYS: Final = {"per_payment_max_minor": "per_payment_max",
                   "per_card_max_minor": "per_card_max",
                   "per_issuer_max_minor": "per_issuer_max"}


def _default_limits() -> dict[str, StandInLimits]:
    return {code: StandInLimits(per_payment_max="200.00", per_card_max="500.00",
                                per_issuer_max="50000.00") for code in ("EUR", "USD")}


class StandInConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Card stand-in: approve on the issuer's behalf when every issuer endpoint is down."""

    #: Allow stand-in at all (else: declined 91 when no issuer is reachable).
    enabled: bool = True
    #: Limits per ISO 4217 currency code (``[standin.limits.USD]``), in major units;
    #: exposure is counted per card and currency and per issuer and currency. A payment
    #: in a currency not listed is never stood in (declined 91, as over a limit). Writing
    #: any ``[standin.limits.*]`` table replaces the default table (EUR and USD: 200.00 per
    #: payment, 500.00 per card, 50000.00 per issuer) as a whole.
    limits: dict[str, StandInLimits] = msgspec.field(default_factory=_default_limits)
    #: Store-and-forward bound on undelivered advices.
    max_pending_advices: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100_000

    def minor_limits(self) -> dict[str, MinorLimits]:
        """Every currency's limits in its minor units; ValueError (one line, naming the
        key under ``standin``) for an unknown currency or too many decimals."""
        out: dict[str, MinorLimits] = {}
        for code, limits in self.limits.items():
            if code not in CURRENCIES:
                raise ValueError(f"limits.{code}: unknown currency {code!r} (an ISO 4217 "
                                 f"code the switch accepts, e.g. USD)")
            out[code] = MinorLimits(
                *(to_minor(getattr(limits, name), code, f"limits.{code}.{name}")
                  for name in ("per_payment_max", "per_card_max", "per_issuer_max")))
        assert set(out) == set(self.limits)
        return out


def to_minor(text: str, currency: str, path: str) -> int:
    """``text`` (major units, "250.00") in ``currency``'s minor units; ValueError naming
    ``path`` if it is no plain decimal or has more decimals than the currency."""
    exp = exponent(currency)
    whole, dot, frac = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (frac.isascii()
                                                                  and frac.isdigit())):
        raise ValueError(f"{path}: {text!r} is not a decimal amount in major units "
                         f"(e.g. \"250.00\")")
    if len(frac) > exp:
        raise ValueError(f"{path}: {text!r} has {len(frac)} decimal(s), {currency} has "
                         f"{exp}")
    minor = int(whole + frac.ljust(exp, "0"))  # "250.5" USD: "250" + "50"
    assert minor >= 0 and minor % 10 ** (exp - len(frac)) == 0, (text, currency)
    return minor


log = logging.getLogger(__name__)

#: An 0130's answers that say the advice was not taken (issuer inoperative, system
#: malfunction): store and forward keeps it and tries again. Any other answer is the
#: issuer's, recorded with the advice (a refusal is evidence of stand-in exposure).
NOT_TAKEN: Final = frozenset({reasons.ISSUER_UNAVAILABLE, reasons.SYSTEM_MALFUNCTION})
#: A delivered advice is a fact at the issuer: its record waits for room, never shed
#: (shedding it would re-send the advice after a restart, and ending ``run`` on a full
#: journal would take the switch down).
ON_FULL = OnFull.WAIT
#: Cards whose stand-in totals are remembered; least recently used are forgotten.
MAX_TRACKED_CARDS = 1_000_000


@dataclass(slots=True)
class _Advice:
    payment: Payment
    result: Result
    target: str  # whose per-issuer total it counts in (in the payment's currency)
    endpoints: tuple[str, ...]
    queued_at: float
    digest: bytes
    #: A reversal of the payment was accepted while this advice was being delivered
    #: (:meth:`StandIn.withdraw`): its exposure is already released.
    withdrawn: bool = False


class StandIn:
    def __init__(self, config: StandInConfig, adapters: Mapping[str, ChannelAdapter],
                 journal: Journal, clock: Clock, metrics: SwitchMetrics,
                 endpoint_usable: Callable[[str, float], bool]) -> None:
        self.config = config
        self._adapters = adapters
        self._journal = journal
        self._clock = clock
        self._metrics = metrics
        self._usable = endpoint_usable
        #: The limits in minor units, per currency, of ``_limits_of`` (converted again if
        #: ``config`` is replaced); a bad table fails here, not at the first outage.
        self._limits_of = config
        self._limits = config.minor_limits()
        #: Exposure not yet advised, per (card token, currency) and (issuer target,
        #: currency): amounts in different currencies are never added together.
        self._per_card: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._per_issuer: dict[tuple[str, str], int] = {}
        self._queue: deque[_Advice] = deque()
        #: Payments stood in whose advice is not queued yet: their finals are being
        #: committed (:meth:`advise` queues it then). They count against the queue's
        #: bound: counted only once queued, every stand-in of one commit's wait passed
        #: it (41 advices against a bound of 16, simulate --vary-config seed 1237).
        self._deciding: set[str] = set()
        #: The advice :meth:`run` is delivering now (withdrawn only by a flag, not taken
        #: out of the queue under it), and the event set when that delivery ends.
        self._delivering: _Advice | None = None
        self._delivery_over = anyio.Event()
        self._wakeup = anyio.Event()
        self.approved = 0
        self.delivered = 0
        self.quarantined = 0
        metrics.saf_depth.set_function(lambda: float(len(self._queue)))
        metrics.saf_oldest_age.set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        return self._clock.now() - self._queue[0].queued_at if self._queue else 0.0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def limits(self, currency: str) -> MinorLimits | None:
        """``currency``'s limits in its minor units; None: never stood in."""
        if self.config is not self._limits_of:
            self._limits, self._limits_of = self.config.minor_limits(), self.config
        return self._limits.get(currency)

    def exposure(self, token: str, target: str, currency: str) -> tuple[int, int]:
        """Stand-in exposure not yet advised in ``currency``: the card's and the issuer's."""
        return (self._per_card.get((token, currency), 0),
                self._per_issuer.get((target, currency), 0))

    def decide(self, payment: Payment, target: str) -> str | None:
        """Reserve stand-in room for ``payment``; its auth code, or None if refused (the
        payment is then declined 91): stand-in off, no card, the advice queue full, no
        limits for its currency, or over one of them."""
        cfg = self.config
        card = payment.card
        if (not cfg.enabled or card is None
                or len(self._queue) + len(self._deciding) >= cfg.max_pending_advices):
            return None
        limits = self.limits(payment.currency)
        if limits is None or payment.amount > limits.per_payment:
            return None
        card_total, issuer_total = self.exposure(card.token, target, payment.currency)
        card_total += payment.amount
        issuer_total += payment.amount
        if card_total > limits.per_card or issuer_total > limits.per_issuer:
            return None
        self._expose(card.token, target, payment.currency, payment.amount)
        assert self.exposure(card.token, target, payment.currency) == (
            card_total, issuer_total), payment.payment_id
        self.approved += 1
        self._deciding.add(payment.payment_id)
        assert len(self._queue) + len(self._deciding) <= cfg.max_pending_advices
        self._metrics.standin[payment.channel].inc()
        digest = hashlib.blake2b(payment.payment_id.encode(), digest_size=3).hexdigest()
        return "S" + digest.upper()[:5]  # an auth code (DE38, 6 chars) marked as stand-in

    def recovered(self, payment: Payment, target: str) -> None:
        """Count a stand-in approval whose advice start-up found undelivered: its
        exposure holds against the limits as it did before the restart. A kill -9 once
        reset both totals, so with the issuer still down the same card stood in for
        twice its limit."""
        card = payment.card
        assert card is not None and payment.amount > 0, payment.payment_id
        self._expose(card.token, target, payment.currency, payment.amount)

    def _expose(self, token: str, target: str, currency: str, amount: int) -> None:
        """Add a stand-in approval to its card's and issuer's totals in its currency (the
        limits were checked by the caller, or held before a restart)."""
        assert amount > 0 and len(currency) == 3, (amount, currency)
        per_card, card_key = self._per_card, (token, currency)
        per_card[card_key] = per_card.get(card_key, 0) + amount
        per_card.move_to_end(card_key)
        if len(per_card) > MAX_TRACKED_CARDS:
            per_card.popitem(last=False)
        issuer_key = (target, currency)
        self._per_issuer[issuer_key] = self._per_issuer.get(issuer_key, 0) + amount
        assert self._per_issuer[issuer_key] >= amount

    def withdraw(self, payment_id: str) -> bool:
        """A reversal of this stand-in approval was accepted: its advice, if still queued,
        is never sent, and its exposure is released. The issuer never learnt of the
        payment; told after the reversal (the two wait for the same issuer, in either
        order), it held the cardholder's money for a payment the acquirer had undone.
        True if an advice was withdrawn. An advice on its way to the issuer this very
        moment is flagged instead: the caller waits for it (:meth:`settled`) before it
        hands the reversal to the resolver, so that if it arrives, the reversal comes
        after it and releases the hold."""
        for advice in self._queue:
            if advice.payment.payment_id != payment_id or advice.withdrawn:
                continue
            advice.withdrawn = True
            self._release(advice)
            if advice is not self._delivering:
                self._queue.remove(advice)
            assert advice.withdrawn and (advice is self._delivering
                                         or advice not in self._queue)
            return True
        return False

    async def settled(self, payment_id: str) -> None:
        """Return once no advice of ``payment_id`` is on its way to the issuer (the one
        being delivered now ends within its 2 s bound)."""
        while self._delivering is not None and self._delivering.payment.payment_id == payment_id:
            await self._delivery_over.wait()

    def _release(self, advice: _Advice) -> None:
        """Take ``advice``'s amount off its card's and issuer's stand-in exposure in the
        payment's currency (the totals it was added to)."""
        payment = advice.payment
        assert payment.amount > 0 and len(payment.currency) == 3, payment.payment_id
        per_card, per_issuer = self._per_card, self._per_issuer
        if payment.card is not None:
            card_key = (payment.card.token, payment.currency)
            if card_key in per_card:  # else: forgotten (least recently used)
                per_card[card_key] = max(0, per_card[card_key] - payment.amount)
        issuer_key = (advice.target, payment.currency)
        if issuer_key in per_issuer:
            per_issuer[issuer_key] = max(0, per_issuer[issuer_key] - payment.amount)
            assert per_issuer[issuer_key] >= 0

    def advise(self, payment: Payment, result: Result, target: str,
               endpoints: tuple[str, ...], digest: bytes) -> None:
        """Queue the advice of a stand-in :meth:`decide` approved, its final now durable:
        the room it reserved becomes its place in the queue."""
        assert payment.payment_id in self._deciding, payment.payment_id
        self._deciding.discard(payment.payment_id)
        self.queue_advice(payment, result, target, endpoints, digest)

    def queue_advice(self, payment: Payment, result: Result, target: str,
                     endpoints: tuple[str, ...], digest: bytes) -> None:
        """Queue an advice: one start-up found undelivered in the journal, or (through
        :meth:`advise`) one this run decided."""
        assert result.stood_in and result.payment_id == payment.payment_id
        assert endpoints, "an advice needs an issuer endpoint to go to"
        self._queue.append(_Advice(payment, result, target, endpoints, self._clock.now(),
                                   digest))
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver advices as their issuer becomes reachable; retry with capped backoff."""
        delay = 0.05
        while True:
            if not self._queue:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            advice = self._queue[0]
            self._delivering = advice
            self._delivery_over = anyio.Event()
            try:
                delivered = await self._deliver(advice)
            finally:
                self._delivering = None
                self._delivery_over.set()
            if delivered or advice.withdrawn:
                assert self._queue[0] is advice, "only run() takes the advice it delivers"
                self._queue.popleft()
                delay = 0.05
                continue
            # Rotate, so one undeliverable advice does not block the others.
            self._queue.rotate(-1)
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _deliver(self, advice: _Advice) -> bool:
        """True once the advice is done with: delivered, or quarantined."""
        now = self._clock.now()
        for endpoint in advice.endpoints:
            adapter: Any = self._adapters[endpoint]
            if not hasattr(adapter, "advise") or not self._usable(endpoint, now):
                continue
            code: str | None = None
            try:
                with anyio.move_on_after(2.0):
                    code = await adapter.advise(advice.payment, advice.result.channel_ref)
            except NotSent:
                continue
            except JournalFailed:
                raise
            except Exception as exc:  # CodecError, or any bug: fail this advice only
                self._quarantine(advice, endpoint, exc)
                return True
            if code in NOT_TAKEN:
                # 91/96: the issuer (or the path to it) is inoperative and did not take
                # the advice. Recorded as a refusal, it was never sent again and the
                # issuer never learnt of the approval; it waits, as the simulator's
                # sender does (switch/sim/advice.py), and tries the next endpoint.
                continue
            if code:
                await self._record(advice, endpoint, code)  # a journal failure stays fatal
                return True
        return False

    def _quarantine(self, advice: _Advice, endpoint: str, exc: Exception) -> None:
        """Set aside an advice that can never be delivered (see the module docstring)."""
        self.quarantined += 1
        self._metrics.quarantined["advice"].inc()
        permanent = isinstance(exc, CodecError)
        log.error("stand-in advice quarantined (%s via %s): %s",
                  "cannot be encoded" if permanent else "unexpected error", endpoint, exc,
                  exc_info=not permanent, extra={"payment_id": advice.payment.payment_id})

    def answered(self, advice: _Advice, code: str) -> JournalRecord:
        """The issuer answered ``code`` (not 91/96: :data:`NOT_TAKEN` waits) to
        ``advice``, which is done with: its exposure released if the issuer took it, and
        the advice record to journal (sans-IO: :meth:`_record` writes it; the simulator's
        sender, switch/sim/advice.py, journals it on its own disk)."""
        assert advice.result.stood_in and code and code not in NOT_TAKEN, code
        refused = code != reasons.APPROVED
        if not advice.withdrawn:  # withdrawn meanwhile: released already
            # Answered: the advice is done with, and so is its exposure, the card's and
            # the issuer's. Taken, the issuer holds it. Refused (14, 51), it is a loss the
            # journal keeps as evidence for reconciliation; kept in the totals, refusals
            # added up for good and, once per_issuer_max was reached, ended stand-in
            # at that issuer until a restart (which forgot them: start-up counts only
            # advices not yet answered).
            self._release(advice)
        # The advice record carries the issuer's answer as its reason: anything but 00 is
        # the refusal that reconciliation needs as evidence of stand-in exposure.
        result = msgspec.structs.replace(advice.result, reason=code) if refused else advice.result
        self.delivered += 1
        self._metrics.saf_delivered.inc()
        return JournalRecord.outcome(ADVICE, advice.payment, result, advice.digest,
                                     self._clock.wall_us())

    async def _record(self, advice: _Advice, endpoint: str, code: str) -> None:
        record = self.answered(advice, code)
        await self._journal.write(record, ON_FULL)
        payment = advice.payment
        if code != reasons.APPROVED:
            log.warning("stand-in advice refused by the issuer (%s) via %s", code, endpoint,
                        extra={"payment_id": payment.payment_id})
        log.info("stand-in advice delivered via %s", endpoint,
                 extra={"payment_id": payment.payment_id})
