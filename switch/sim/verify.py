"""The end of a run: the journal against the clients' acknowledgements and the networks'
books (the ledger and the clearing files: switch/sim/books.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from itertools import chain
from typing import Final, NamedTuple

from switch.journal.reader import Fold, PaymentHistory, seen_by_us
from switch.model import Payment, Result, Status
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import CHANNELS, ResolutionPolicy, made_before_run, received_us
from switch.payment.standin import StandInConfig
from switch.routing.breaker import BreakerState
from switch.routing.table import Target
from switch.serve.config import SwitchConfig
from switch.sim.networks import INOPERATIVE, MIN_INQUIRY_AGE_S, World
from switch.sim.options import sim_config
from switch.sim.ports import Boot
from switch.sim.schedule import CARD_ENDPOINTS

TERMINAL: Final = frozenset({Status.APPROVED, Status.DECLINED, Status.FAILED, Status.REVERSED})
Violate = Callable[[str, str, str], None]
#: A stand-in approval is wrong if every issuer endpoint had no fault for this long before it.
STANDIN_QUIET_S: Final = 30.0
#: Slack on top of a channel's schedule (max delay + timeout) before an unknown is "late".
UNKNOWN_SLACK_S: Final = 5.0


class JournalView(NamedTuple):
    """What the books' checks (switch/sim/books.py) read of the journal, gathered in
    check_journal's one pass over it rather than in a pass of their own each."""

    #: Per payment with an intent, the payment; per finished payment, its last final.
    intents: dict[str, Payment]
    finals: dict[str, Result]
    #: Card payments with an intent, in journal order, with their RRN (DE37) stripped.
    card_intents: list[tuple[str, Payment, str]]
    #: Per currency, the amount of the approved payments with an intent.
    approved: dict[str, int]
    #: The card scheme's active holds by RRN (World.card_holds), for check_reversals.
    holds: dict[str, int]


def check_journal(folded: Fold, acked: Mapping[str, tuple[str, Status, object]], world: World,
                  violate: Violate, counters: dict[str, int], live: Boot | None = None,
                  reversed_by_acquirer: Container[str] = (),
                  config: SwitchConfig | None = None,
                  superseded: Sequence[tuple[str, tuple[str, Status, object]]] = (),
                  forgotten: Mapping[str, int] | None = None) -> JournalView:
    """Every payment terminal once (and a final record terminal), nothing acknowledged
    lost, the journal and the networks' books agree both ways, every stand-in advised or
    explained and within the per-payment limit, and what a retry of each key would hear
    from the live switch is what the journal says (:func:`check_index`). Returns the
    intents, the final results per payment and what the books' checks read
    (:class:`JournalView`). ``live``: the switch running at the end
    (none after a crash it did not come back from), whose index :func:`check_index` reads.
    ``superseded``: (key, ack) of payments acknowledged before the switch's window forgot
    their key (each still checked: nothing acknowledged is lost); ``forgotten``: per key,
    how many of its payments the window forgot (each allows one more payment of the key).
    ``reversed_by_acquirer``: payments whose acquirer reversal was accepted after they
    were acknowledged approved (reversed since, as :func:`check_reversals` demands)."""
    intents: dict[str, Payment] = {}
    finals: dict[str, Result] = {}  # the last final record's result
    card_intents: list[tuple[str, Payment, str]] = []
    approved: dict[str, int] = defaultdict(int)
    unknowns: set[str] = set()
    # One pass over the journal's payments (it was six, over up to 700k payments in the
    # simulated hour); what it finds is reported after it, in the order the checks read
    # (every kind of finding in payment order), so a failing seed's trace stays the same.
    twice: list[tuple[str, str, str]] = []
    unfinished: list[tuple[str, str, str]] = []
    money: list[tuple[str, str, str]] = []
    standins: list[tuple[str, str, str]] = []
    card_holds = world.card_holds()
    holds = dict(card_holds)  # matched ones popped: the rest has no intent
    swift_booked, qr_booked = world.books["swift"].booked, world.books["qr"].booked
    stood_in_journal = stood_in_exposure = 0
    standin_limits = (config or sim_config()).standin.minor_limits()
    for pid, h in folded.payments.items():
        payment = h.payment
        result = h.result
        nfinals = h.finals
        final = result if nfinals and result is not None else None
        if final is not None:
            finals[pid] = final
        elif h.outcome_kind == "unknown":
            unknowns.add(pid)
        if nfinals > 1:
            twice.append(("terminal-once", pid, f"{nfinals} final records, the last "
                          f"{result.status.value if result else '?'}"))
        if final is not None and final.status not in TERMINAL:
            twice.append(("terminal-once", pid, f"a final record in state "
                          f"{final.status.value}: finished, yet not terminal"))
        if payment is None:
            if final is not None and final.stood_in:
                stood_in_journal += 1
                standins.append(("money-conserved", pid, "stand-in approval without an intent"))
            continue
        intents[pid] = payment
        # money: the journal against the networks' books
        card = payment.card
        if card is not None:
            rrn = card.rrn.strip()
            card_intents.append((pid, payment, rrn))
            booked = holds.pop(rrn, 0)
        else:
            booked = (swift_booked if payment.channel == "swift" else qr_booked).get(pid, 0)
        if final is None:
            unfinished.append((
                "unknown-past-schedule" if pid in unknowns else "terminal-once", pid,
                f"no final state after the drain (last: "
                f"{'unknown' if pid in unknowns else 'sent'})"))
            continue
        amount = payment.amount
        status = final.status
        if status is Status.APPROVED:
            approved[payment.currency] += amount
        if booked > amount:
            money.append(("booked-twice", pid, f"the network books {booked} for a payment "
                          f"of {amount}"))
        elif status is Status.APPROVED and not final.stood_in:
            if booked != amount:
                money.append(("money-conserved", pid, f"approved {amount}, network books "
                              f"{booked}"))
        elif status is not Status.APPROVED and booked:
            money.append(("money-conserved", pid,
                          f"{status.value}, yet the network books {booked}"))
        if final.stood_in:
            stood_in_journal += 1
            currency = payment.currency
            limit = standin_limits[currency].per_payment if currency in standin_limits else 0
            if amount > limit:
                standins.append(("bound", pid, f"stand-in approval of {amount} {currency}, "
                                 f"over the per-payment limit {limit}"))
            if not h.advised:
                standins.append(("advice-lost", pid, "stand-in approval never advised to the "
                                 "issuer (unexplained exposure)"))
            elif booked != amount:
                stood_in_exposure += amount  # explained: the issuer refused the hold
    for finding in twice:
        violate(*finding)
    duplicates = folded.duplicates(forgotten)
    if duplicates:
        violate("booked-twice", "journal",
                f"{duplicates} keys or payments with two final records")
    for finding in unfinished:
        violate(*finding)
    # nothing acknowledged is lost
    for key, (pid, status, _) in chain(acked.items(), superseded):
        got = finals.get(pid)
        if got is None and pid not in unknowns:
            violate("ack-lost", key, f"acknowledged {pid} {status.value}; the journal has "
                    f"{'only its intent, no outcome' if pid in intents else 'no record of it'}")
        elif got is not None and status in TERMINAL and got.status != status and not (
                status is Status.APPROVED and got.status is Status.REVERSED
                and pid in reversed_by_acquirer):
            violate("ack-lost", key, f"acknowledged {status.value}, journal says "
                    f"{got.status.value}")
    for finding in money:
        violate(*finding)
    for rrn, amount in sorted(holds.items()):
        violate("money-conserved", f"RRN {rrn}",
                f"the card network holds {amount} for a payment the journal has no "
                "intent for")
    for network, book in sorted(world.books.items()):
        for pid in sorted(book.booked.keys() - intents.keys()):
            violate("money-conserved", pid, f"{network} booked {book.booked[pid]} but "
                    "the journal has no intent")
    for finding in standins:
        violate(*finding)
    counters["standin_exposure_minor"] = stood_in_exposure
    counters["stand_in_journal"] = stood_in_journal
    if live is not None and live.alive and not live.failed:
        check_index(live.index, folded, violate)
    try:
        world.scheme.check_ledger()
    except AssertionError as exc:
        violate("money-conserved", "issuer-ledger", str(exc))
    return JournalView(intents, finals, card_intents, approved, card_holds)


def check_index(index: IdempotencyIndex, folded: Fold, violate: Violate) -> None:
    """What a retry of each key would hear now (idempotency: the same key and body, the
    same result), against the journal. The simulated clients never ask again about a key
    they were answered for (not after an unknown either), so a stale or wrong answer in
    the index showed nowhere. Every answer the index gives comes from a durable record
    (the core's and the resolver's completions run at the commit; a start restores the
    journal's finals), so at any moment between events it equals the journal's latest
    outcome of that payment: its final, or unknown while it has none."""
    payments = folded.payments
    for key in index:
        entry = index.get(key)
        if entry is None or entry.pending or entry.result is None:
            continue  # in flight (or being resolved after a restart): nothing told yet
        told = entry.result
        h = payments.get(told.payment_id)
        if h is None or h.idempotency_key != key:
            violate("idempotency", key, f"a retry would hear {told.payment_id} "
                    f"{told.status.value}, a payment the journal has "
                    + ("no record of" if h is None else f"under key {h.idempotency_key}"))
            continue
        journal = h.result.status if h.finished and h.result is not None else Status.UNKNOWN
        if told.status is not journal:
            violate("idempotency", key, f"a retry would hear {told.payment_id} "
                    f"{told.status.value}, the journal says {journal.value}")


def check_standin(pid: str, now: float, world: World, boot_started: float | None,
                  violate: Violate) -> None:
    """A card stand-in approval, as the client got it: legitimate only if every issuer
    endpoint tried answered 91/96, or none could be tried while a fault (or a restart) was
    recent; never when an issuer answered with a decision."""
    codes = [c for c in world.answered.get(pid, ()) if c not in INOPERATIVE]
    if codes:
        violate("standin-while-issuer-answers", pid,
                f"stood in although an issuer answered {','.join(codes)}")
        return
    if pid in world.answered:
        return  # every issuer endpoint it tried answered 91/96: stand-in is legitimate
    quiet_from = now - STANDIN_QUIET_S
    if boot_started is not None and boot_started > quiet_from:
        return
    for endpoint in CARD_ENDPOINTS:
        if any(b < now and e > quiet_from for b, e in world.blocked_windows(endpoint)):
            return
    violate("standin-while-issuer-answers", pid,
            f"stood in with no attempt while every issuer endpoint had been "
            f"fault-free for {STANDIN_QUIET_S:.0f}s")


def resolution_origin(payment: Payment, since: float, h: PaymentHistory | None,
                      read: Callable[[int], float], started: float, started_us: int,
                      sent_within_s: float) -> float:
    """The latest moment the resolver may count ``payment``'s first delay from (virtual
    time): what :func:`check_schedule` holds it to, and no more.

    ``since``: when it was first handed to a resolver; ``h``: its history as the switch
    last read the journal (the latest start's replay or refill, whose unfinished
    payments recovery and refills take over; None: not there). ``read``: a wall stamp as
    the switch reads it now, in virtual time (the steps it recorded subtracted; on a
    backward step's overlap the younger reading, as the resolver's). ``started`` and
    ``started_us``: the running boot's start, in virtual time and on its wall clock.

    * Handed over during this boot (the core's unknown, the acquirer's reversal; start-up
      recovery hands over at the start): ``since``. A refill that took it back since
      counted from no later, unless a reversal reopened it (read below).
    * Taken from the journal (resolver.py's ``_candidate``): its receipt plus the
      payment deadline; sooner if the journal shows it seen by then (reader.seen_by_us);
      the boot's start at the latest if made before it and not reopened
      (resolver.made_before_run). From its receipt, not from its unknown as a stand-in
      for it: the unknown comes up to a network timeout later, and a resolver that much
      late went unseen.
    """
    live = since > started
    if live and (h is None or not h.reopened):
        return since
    origin = read(received_us(payment)) + sent_within_s
    if h is not None:  # None: never read here (SimOptions.full_replay): the receipt's bound
        seen_us = seen_by_us(h)
        if seen_us:
            origin = min(origin, read(seen_us))
        if not h.reopened and made_before_run(payment, started_us):
            origin = min(origin, started)
    return max(since, origin) if live else origin


def check_schedule(pid: str, now: float, origin: float, policy: ResolutionPolicy,
                   target: Target | None, world: World, restarts: list[float],
                   violate: Violate, failed_at: float = -math.inf,
                   saturated_s: Callable[[float, float], float] | None = None) -> None:
    """A payment resolved at ``now``: within its channel's schedule, counted from when its
    network was back, its first delay passed (counted from ``origin``:
    :func:`resolution_origin`), the switch was up again and its latest unanswered
    attempt (``failed_at``) ended? The last is for the networks' everyday errors outside
    any fault (a 96 now and then): each costs an attempt its timeout and the next one
    its delay (seed 49, intensity 20).

    ``saturated_s(start, end)``: how long the channel's resolver had every worker busy
    in that span (switch/sim/saturation.py), added to the allowance: a payment waiting
    behind a backlog the workers are draining at full capacity is not late. Without it,
    seed 80346 (60 simulated s at 400/s, intensity 40, 8 workers drawn) failed 1,247
    card reversals 8.0008 s after the restart, of 8.0 s allowed: 4,388 recovered, drained
    at ~390/s."""
    endpoints = target.endpoints if target is not None else ()
    restarted = max((r for r in restarts if r <= now), default=-math.inf)
    back = max(origin + policy.first_after_s, failed_at, restarted)
    for endpoint in endpoints:
        for b, e in world.blocked_windows(endpoint):
            if b < now:
                back = max(back, min(e, now))
    allowed = policy.max_delay_s + (target.timeout_s if target else 5.0) + UNKNOWN_SLACK_S
    busy = saturated_s(back, now) if saturated_s is not None and now > back else 0.0
    if now - back > allowed + busy:
        violate("unknown-past-schedule", pid,
                f"resolved {now - back:.1f}s after its network was back and its first "
                f"delay passed (schedule allows {allowed:.1f}s, plus {busy:.1f}s with "
                "every resolver worker busy)")


def check_bounds(boot: Boot, cfg: SwitchConfig, now: float, violate: Violate) -> None:
    """Every bound of the brief's invariant 5, once a simulated second: queues, in-flight
    work and its admission slots, stand-in exposure, the retry budget."""
    limiter = boot.router.limiter
    checks = [
        ("in-flight", limiter.in_flight(), limiter.total_limit),
        ("journal-pending", boot.journal.pending, boot.journal.max_pending),
        ("advice-queue", boot.standin.pending, cfg.standin.max_pending_advices),
        *((f"resolver-queue-{c}", boot.resolver.queue.tracked_of(c), boot.resolver.max_queue)
          for c in CHANNELS),
        ("resolver-escalated", boot.resolver.queue.escalated,
         boot.resolver.queue.max_escalated),
        ("timers", len(boot.core.timers), boot.core.in_flight + 10_000),
    ]
    for name, value, bound in checks:
        if value > bound:
            violate("bound", name, f"{value} > {bound}")
    if boot.router.budget.remaining(now) < 0:
        violate("bound", "retry-budget", "retry budget overspent")
    if boot.core.errors:
        # The core fails a payment on an unexpected exception (an assertion on the money
        # path included) and goes on: correct for a live switch, a bug for the simulator.
        violate("internal-error", f"boot {boot.number}",
                     f"{boot.core.errors} payment(s) failed by an unexpected exception")
    check_standin_exposure(boot, cfg.standin, violate)
    check_admission(boot, violate)


def check_standin_exposure(boot: Boot, cfg: StandInConfig, violate: Violate) -> None:
    """Stand-in exposure not yet advised, per card and per issuer target, within its
    limits: counted afresh from the advices still queued (the exposure the limits are
    about), not from the totals StandIn keeps to enforce them (the simulated advice
    sender never releases those: they only ever exceed the queue's)."""
    per_card: dict[tuple[str, str], int] = defaultdict(int)
    per_issuer: dict[tuple[str, str], int] = defaultdict(int)
    for advice in boot.standin._queue:  # the real store-and-forward queue (no sans-IO view)
        payment = advice.payment
        if payment.card is not None:
            per_card[payment.card.token, payment.currency] += payment.amount
        per_issuer[advice.target, payment.currency] += payment.amount
    limits = cfg.minor_limits()  # per currency, in its minor units
    for (token, currency), total in per_card.items():
        limit = limits[currency].per_card if currency in limits else 0
        if total > limit:
            violate("bound", f"standin-card-{token[:12]}-{currency}", f"{total} {currency} "
                    f"stood in and not yet advised on one card > per_card_max {limit}")
    for (target, currency), total in per_issuer.items():
        limit = limits[currency].per_issuer if currency in limits else 0
        if total > limit:
            violate("bound", f"standin-issuer-{target}-{currency}", f"{total} {currency} "
                    f"stood in and not yet advised > per_issuer_max {limit}")


def check_admission(boot: Boot, violate: Violate) -> None:
    """An endpoint's admission slots are held only by payments in flight to it (reserved
    at routing, given back exactly once: core.py's ``_release``). A slot kept after its
    payment finished is never given back: too few to matter in a short run, until the
    endpoint sheds every payment as overloaded."""
    if boot.failed:
        return  # fail-stop: its payments are being refused; the restart starts afresh
    held: dict[str, int] = defaultdict(int)
    for flight in boot.core._by_key.values():  # payments in flight (no sans-IO view)
        if flight.slot:
            held[flight.slot] += 1
    limiter = boot.router.limiter
    for endpoint in boot.router.health.breakers:
        slots = limiter.in_flight(endpoint)
        if slots != held[endpoint]:
            violate("bound", f"admission-{endpoint}", f"{slots} admission slot(s) taken, "
                    f"{held[endpoint]} held by payments in flight")


def check_probes(boot: Boot, violate: Violate) -> None:
    """A half-open breaker's probe slot is held only by an attempt in flight to it: a
    slot taken for a call that was never made is never given back, and once every slot
    is gone the breaker refuses a healthy endpoint for good (the switch's gauge refresh
    re-opens it after probe_timeout_s, which the simulation does not model on purpose:
    a leaked slot must show, not be papered over)."""
    if boot.failed:
        return  # fail-stop: attempts die with the journal; the restart starts afresh
    breakers = boot.router.health.breakers
    held: dict[str, int] = {}
    for flight in boot.core._by_token.values():  # attempts in flight (no sans-IO view)
        held[flight.slot] = held.get(flight.slot, 0) + 1
    for endpoint, breaker in breakers.items():
        reserved = breaker._probes_reserved
        if breaker.state is BreakerState.HALF_OPEN and reserved > held.get(endpoint, 0):
            violate("probe-leaked", endpoint, f"{reserved} probe slot(s) reserved, "
                    f"{held.get(endpoint, 0)} attempt(s) in flight to it")


def check_reversals(folded: Fold, accepted: Mapping[str, tuple[str, bool]], world: World,
                    violate: Violate, holds: Mapping[str, int] | None = None) -> None:
    """Every payment whose acquirer reversal the switch accepted with something to undo
    (answered 00 once its intent was journaled again and it was handed to the resolver:
    switch/sim/acquirer.py), once resolution settled at the end of a run:

    * ``reversal-undone``: its journal history ends ``reversed`` (not approved, nor
      reopened and never resolved: check_journal takes a reopened approval for finished),
      and its issuer holds no money for it;
    * ``reversed-standin-advised``: a stand-in approval reversed was never advised (0120)
      to the issuer after the reversal was accepted. channels' CardScheme remembers an
      unmatched reversal and fences the late advice, so its books show nothing; an issuer
      that does not match them holds the cardholder's money for a payment the acquirer
      undid (the bug StandIn.withdraw fixed, found by reading).

    ``holds``: World.card_holds() when the caller has it (check_journal's), as the books
    are after the run.
    """
    if holds is None:
        holds = world.card_holds()
    advised_after = set(world.advised_after_reversal)
    for pid, (key, stood_in) in accepted.items():
        h = folded.payments.get(pid)
        result = h.result if h is not None else None
        if h is None or result is None or not h.finished or h.reopened \
                or result.status is not Status.REVERSED:
            state = "no record" if result is None else result.status.value
            if h is not None and h.reopened:
                state += ", reopened by the reversal and never resolved"
            violate("reversal-undone", pid, f"reversal of {key} accepted (00); the journal "
                    f"ends {state}")
        payment = h.payment if h is not None else None
        if payment is not None and payment.card is not None:
            held = holds.get(payment.card.rrn.strip(), 0)
            if held:
                violate("reversal-undone", pid, f"reversal of {key} accepted (00); the "
                        f"issuer holds {held}" + (" (a stand-in approval)" if stood_in else ""))
        if pid in advised_after:
            violate("reversed-standin-advised", pid, f"stand-in approval {key} advised to "
                    "the issuer after its reversal was accepted: an issuer that does not "
                    "match the late 0120 to the reversal holds the cardholder's money")


def check_inquiry_ages(world: World, violate: Violate) -> None:
    """``inquiry-too-early``: no status inquiry reached its network sooner after the payment
    than the network allows (networks.MIN_INQUIRY_AGE_S: QR's 90 s). The schedule check
    (check_schedule) looks for lateness only; a resolver that counted the first delay
    from the wrong moment, or forgot it across a restart, asked early, and a real scheme
    refuses (or counts against the payment's three checks) an inquiry before its time.
    Early means early by the network's clock (true time), whatever the switch's wall
    clock read: a wall clock stepped forward at a restart is no excuse, the switch
    corrects its ages by the steps it recorded (switch/payment/restarts.py)."""
    for pid, channel, age in world.early_inquiries:
        floor = MIN_INQUIRY_AGE_S[channel]
        violate("inquiry-too-early", pid, f"{channel} status inquiry {age:.1f}s after the "
                f"payment; the network allows none before {floor:.0f}s")
