"""The simulated world outside the switch: card issuers, a SWIFT correspondent, a QR scheme.

Built from the same models as the TCP simulators in ``channels``:

* every endpoint has a :class:`channels.behaviour.Behaviour` (seeded latency, capacity,
  technical-error mix) reading one shared :class:`channels.faults.FaultTimeline`; a
  request's fate is ``Behaviour.plan``, applied as channels/tcp.py applies it: refused
  (no connection: NotSent), blackholed (never decided, never answered), reset (decided,
  then the connection drops: no answer), late, malformed (decided, answer undecodable),
  duplicated, or a technical error (not decided);
* the card endpoints share one real :class:`channels.card.CardScheme` (issuers' accounts,
  holds, the STAN + terminal duplicate check answering 94, reversals, 0120 advices), fed
  the very ISO 8583 messages the switch's card adapter builds (``original_request``,
  ``reversal_request``, ``authorization_advice``) and read back with its own mapping;
* SWIFT and QR are books keyed by payment: booked once, asked by status inquiry (an
  inquiry for a payment never booked answers "not found" and fences a late original out,
  as the real networks do).

Nothing here reads a clock or schedules anything: the simulation asks with ``now`` and
decides when answers arrive.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from channels.behaviour import Behaviour, BehaviourConfig, RequestPlan
from channels.card import CardScheme
from channels.config import CardSchemeSpec, load_config
from channels.faults import Fault, FaultTimeline
from switch import reasons
from switch.adapters.base import NetworkReply
from switch.adapters.iso8583 import _reply_for, network_pan, original_request
from switch.model import Channel, Payment
from switch.protocols import iso8583

#: The acquirer id the sim's card adapter puts in DE32.
ACQUIRER_ID: Final = "123456"
CHANNEL_OF: Final[dict[str, Channel]] = {
    "card-primary": "card", "card-secondary": "card", "swift": "swift", "qr": "qr"}
#: Codes with which an issuer says "I did not process this" (stand-in is legitimate then).
INOPERATIVE: Final = frozenset({reasons.ISSUER_UNAVAILABLE, reasons.SYSTEM_MALFUNCTION})


@dataclass(slots=True)
class Endpoint:
    name: str
    channel: Channel
    behaviour: Behaviour
    capacity: int  # in service + waiting; past it, answered 91 at once
    busy: int = 0


@dataclass(slots=True)
class Book:
    """A SWIFT or QR network's book: what it booked, and what it answered "not found"."""

    booked: dict[str, int] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    fenced: set[str] = field(default_factory=set)


#: A network's rule for status checks: none sooner than this after the payment (the
#: brief: one national QR scheme, after an outage, "the first no sooner than 90 s after the
#: payment"). The network's rule, not the switch's configured first delay: a schedule
#: configured below it is a violation too.
MIN_INQUIRY_AGE_S: Final = {"qr": 90.0}
#: How long a first contact is remembered at least: past the longest floor no inquiry can
#: be early, whatever its channel.
_FIRST_SENT_KEPT_S: Final = max(MIN_INQUIRY_AGE_S.values())


#: Early inquiries :class:`World` keeps by name.
MAX_EARLY_KEPT: Final = 100


class World:
    """Issuers and networks; ``faults`` is the timeline every endpoint consults."""

    def __init__(self, channels_toml: str, faults: list[Fault], seed: int) -> None:
        config = load_config(channels_toml)
        self.faults = FaultTimeline(faults, origin=0.0)
        schemes = {s.name: s for s in config.card_schemes}
        spec: CardSchemeSpec = schemes["paynet"]
        self.scheme = CardScheme(spec)
        self.duplicate_window_s = spec.duplicate_window_s
        self.endpoints: dict[str, Endpoint] = {}
        for net in config.networks:
            if net.name not in CHANNEL_OF:
                continue
            behaviour: BehaviourConfig = net.behaviour
            # Each endpoint's stream is its own and derived from the run's seed, so one
            # endpoint's traffic never shifts another's draws.
            b = Behaviour(behaviour, (seed * 7919 + net.seed) % 2**62, endpoint=net.name,
                          faults=self.faults)
            cap = behaviour.capacity.max_concurrency + behaviour.capacity.max_queue
            self.endpoints[net.name] = Endpoint(net.name, CHANNEL_OF[net.name], b, cap)
        assert set(self.endpoints) == set(CHANNEL_OF), sorted(self.endpoints)
        self.books: dict[str, Book] = {"swift": Book(), "qr": Book()}
        #: Per card payment: the codes issuers answered its authorizations with (the stand-in
        #: check; only a card payment stands in).
        self.answered: dict[str, list[str]] = {}
        #: Card payments the scheme decided (in flight only), and 94s to a first sight
        #: that a trace number reused within the window explains (see _reused_within).
        self.decided: set[str] = set()
        self.stan_reused: list[str] = []
        #: When each STAN + terminal the issuer saw within its window was *sent*, and the
        #: same keys in order of arrival (to forget them as they leave the window).
        self._sent_at: dict[tuple[str, str], tuple[float, float]] = {}
        self._arrivals: deque[tuple[float, tuple[str, str]]] = deque()
        self.reversal_stan = 0
        #: Payments whose acquirer reversal the switch accepted (switch/sim/acquirer.py),
        #: and those of them advised (0120) to the issuer after that: an issuer that does
        #: not match a late advice to the reversal before it holds the cardholder's money
        #: (CardScheme happens to remember the unmatched reversal and fence the advice).
        self.reversal_accepted: set[str] = set()
        self.advised_after_reversal: list[str] = []
        #: Status inquiries made sooner after their payment than the network allows
        #: (MIN_INQUIRY_AGE_S): payment id, channel, age in seconds. Bounded: the first
        #: MAX_EARLY_KEPT (one is already a violation).
        self.early_inquiries: list[tuple[str, str, float]] = []
        #: When the network first saw each payment of a channel with such a rule (its
        #: request, never an inquiry: :meth:`plan`), in true (virtual) time: the
        #: network's clock, which a step of the switch's wall clock does not move. An
        #: inquiry about a payment it never saw (the switch crashed between the intent
        #: and the send) asks about nothing it holds: it is early for nothing. Bounded
        #: (it grew with every QR payment of a run): an entry goes once its payment is
        #: finished (:meth:`finished`) and _FIRST_SENT_KEPT_S old, as then no inquiry
        #: about it can be early.
        self._first_sent: dict[str, float] = {}
        #: The same first contacts, oldest first (virtual time only grows), to age them.
        self._sent_order: deque[tuple[float, str]] = deque()
        #: Payments finished while their first contact was younger than _FIRST_SENT_KEPT_S.
        self._finished_young: set[str] = set()

    # ----------------------------------------------------------------- requests

    def plan(self, endpoint: str, now: float, payment: Payment, *,
             inquiry: bool = False) -> RequestPlan:
        """What becomes of a request to ``endpoint`` sent now: the payment's own, or a
        resolver's ``inquiry`` (reversal, status inquiry) about it.

        An inquiry is never the network's first sight of the payment: counted as one, an
        inquiry about a payment whose send a crash cut off (93 s after its receipt, in
        true time) read 0 s after "the payment" and failed the strict early check (seed
        3860 of a 10 s, intensity-40 campaign)."""
        ep = self.endpoints[endpoint]
        if ep.channel in MIN_INQUIRY_AGE_S and not inquiry:
            pid = payment.payment_id
            if pid not in self._first_sent:
                self._first_sent[pid] = now
                self._sent_order.append((now, pid))
            self._age_first_sent(now)
        route_key = network_pan(payment.card) if payment.card is not None else ""
        return ep.behaviour.plan(now, route_key)

    def finished(self, pid: str, now: float) -> None:
        """``pid``'s final is durable: the switch asks its network nothing more about it."""
        sent = self._first_sent.get(pid)
        if sent is None:
            return
        if now - sent >= _FIRST_SENT_KEPT_S:
            del self._first_sent[pid]
            self._finished_young.discard(pid)  # finished twice: already aged out
        else:
            self._finished_young.add(pid)

    def _age_first_sent(self, now: float) -> None:
        """Forget the first contacts past _FIRST_SENT_KEPT_S of finished payments; an
        unfinished one's stays until :meth:`finished`."""
        order, young = self._sent_order, self._finished_young
        horizon = now - _FIRST_SENT_KEPT_S
        while order and order[0][0] <= horizon:
            pid = order.popleft()[1]
            if pid in young:
                young.discard(pid)
                del self._first_sent[pid]

    def authorize(self, endpoint: str, payment: Payment, technical_error: str | None,
                  now: float, sent_at: float) -> NetworkReply:
        """The network decides and books ``payment`` (sent at ``sent_at``, it reached the
        issuer at ``now``)."""
        ep = self.endpoints[endpoint]
        if technical_error is not None:
            reply = NetworkReply("failed", technical_error, f"DE39={technical_error}")
        elif ep.channel == "card":
            msg = original_request(payment, ACQUIRER_ID)
            reply = _reply_for(self.scheme.authorize(msg, now))
            pid = payment.payment_id
            key = (msg.fields.get(11, ""), msg.fields.get(41, ""))
            if (reply.reason == reasons.DUPLICATE_TRANSMISSION and pid not in self.decided
                    and self._reused_within(key, sent_at)):
                # The issuer saw this STAN + terminal on *another* payment within its
                # window, and the switch sent the two within it: it reused a trace number.
                self.stan_reused.append(pid)
            self.decided.add(pid)
            self._arrived(key, now, sent_at)
        else:
            return self._book(self.books[endpoint], payment)
        if ep.channel == "card":
            self.answered.setdefault(payment.payment_id, []).append(reply.reason)
        return reply

    def _reused_within(self, key: tuple[str, str], sent_at: float) -> bool:
        """Whether the other transmission of ``key`` the issuer saw within its window was
        sent within the window of this one. Two sends further apart are the sequence's
        wrap (after 99 restarts' skipped blocks, seed 908 at intensity 100): the issuer
        answered 94 only because the network held one of them for longer than its window
        (898 s there), which no trace number can prevent."""
        other = self._sent_at.get(key)
        return other is not None and abs(sent_at - other[1]) < self.duplicate_window_s

    def _arrived(self, key: tuple[str, str], now: float, sent_at: float) -> None:
        """Remember when ``key``'s transmission was sent while the issuer remembers it."""
        arrivals, sent = self._arrivals, self._sent_at
        cutoff = now - self.duplicate_window_s
        while arrivals and arrivals[0][0] <= cutoff:
            at, old = arrivals.popleft()
            if sent[old][0] == at:  # not seen again since
                del sent[old]
        sent[key] = (now, sent_at)
        arrivals.append((now, key))
        assert len(sent) <= len(arrivals), "a key outlived its arrival"

    def _book(self, book: Book, payment: Payment) -> NetworkReply:
        pid = payment.payment_id
        if pid in book.fenced:
            return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE, "NOT_FOUND")
        if pid in book.booked:
            return NetworkReply("approved", reasons.APPROVED, pid)  # a duplicate: once only
        if pid in book.refused or _unit(pid) < 0.01:
            book.refused.add(pid)
            return NetworkReply("declined", reasons.DO_NOT_HONOUR, "RJCT")
        book.booked[pid] = payment.amount
        return NetworkReply("approved", reasons.APPROVED, pid)

    def resolve(self, endpoint: str, payment: Payment, wall: dt.datetime,
                stan: int | None, now: float) -> NetworkReply:
        """Reversal (card) or status inquiry (SWIFT, QR), reaching the network now; ``stan``:
        the reversal's DE11 (None: one from the network's own counter, for a reversal
        already on the wire when its switch died); ``now``: true (virtual) time."""
        ep = self.endpoints[endpoint]
        if ep.channel == "card":
            original = original_request(payment, ACQUIRER_ID)
            if stan is None:
                self.reversal_stan = self.reversal_stan % 999_999 + 1
                stan = self.reversal_stan
            reversal = iso8583.reversal_request(original, stan=stan,
                                                transmitted_at=wall,
                                                reason_code=reasons.RESPONSE_TOO_LATE)
            answer = self.scheme.reverse(reversal)
            assert answer.response_code == reasons.APPROVED, answer
            return NetworkReply("reversed", reasons.APPROVED, (original.get(37) or "").strip())
        pid = payment.payment_id
        floor = MIN_INQUIRY_AGE_S.get(ep.channel)
        sent = self._first_sent.get(pid)
        if floor is not None and sent is not None \
                and len(self.early_inquiries) < MAX_EARLY_KEPT:
            # Early by the network's clock (true time since it could first have seen the
            # payment), whatever the switch's wall clock says: a stepped wall clock at a
            # restart is the switch's to correct (switch/payment/restarts.py). Until it
            # did, this also asked "and early by the switch's own wall clock", which let
            # a forward step's early inquiries pass (seeds 140 and 150: +484 s).
            age = now - sent
            if age < floor - 1e-6:
                self.early_inquiries.append((pid, ep.channel, age))
        book = self.books[endpoint]
        if pid in book.booked:
            return NetworkReply("approved", reasons.APPROVED, pid)
        if pid in book.refused:
            return NetworkReply("declined", reasons.DO_NOT_HONOUR, "RJCT")
        book.fenced.add(pid)  # never booked: a late original is refused from now on
        return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE, "NOT_FOUND")

    def advise(self, payment: Payment, auth_code: str) -> str:
        """The 0120 of a stand-in approval reaches the card scheme: its 0130's DE39."""
        if payment.payment_id in self.reversal_accepted:
            self.advised_after_reversal.append(payment.payment_id)
        original = original_request(payment, ACQUIRER_ID)
        advice = iso8583.authorization_advice(original, response_code=reasons.APPROVED,
                                              auth_code=auth_code)
        answer = self.scheme.advice(advice)
        assert answer.mti == "0130", answer
        return answer.fields.get(39) or reasons.APPROVED

    # ----------------------------------------------------------------- the books

    def card_holds(self) -> dict[str, int]:
        """Every active card hold or posting, by the acquirer's RRN (DE37): one per payment."""
        out: dict[str, int] = {}
        for record in self.scheme.records.values():
            if record.state == "active" and record.kind != "none":
                rrn = record.rrn.strip()
                out[rrn] = out.get(rrn, 0) + record.amount
        return out

    def blocked_windows(self, endpoint: str) -> list[tuple[float, float]]:
        """[begin, end) of every fault on ``endpoint``: the network was not fully back."""
        out = []
        for window in self.faults._by_endpoint.get(endpoint, ()):
            out.append((window.begin, window.end))
        return out


def _unit(label: str) -> float:
    digest = hashlib.sha256(f"sim-book:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
