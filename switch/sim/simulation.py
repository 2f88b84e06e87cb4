"""One seed of deterministic simulation: the real payment core, virtual time, faults, invariants.

What is real and what is simulated (the honest list):

* real: :class:`~switch.payment.core.PaymentCore` (validation, idempotency, risk, routing,
  admission, attempts, retry budget, failover, timeouts, unknown outcomes, card stand-in
  decisions and its limits), :class:`~switch.routing.router.Router` with its breakers and
  health, :class:`~switch.payment.idempotency.IdempotencyIndex`,
  :class:`~switch.payment.risk.RiskEngine`, :class:`~switch.payment.standin.StandIn`
  (``decide``/``queue_advice``/``withdraw``), an acquirer reversal's decisions
  (:class:`~switch.payment.reversal.Reversals`, FrontCore.reverse's), the resolver's decisions
  (:class:`~switch.payment.resolver.ResolutionQueue`: timer heap, schedules, retries,
  escalation) and start-up recovery (:func:`~switch.payment.resolver.recover`), the
  journal's SQLite schema, INSERT and start-up :func:`~switch.journal.replay`, the card
  scheme's books (channels/card.py) fed the card adapter's own ISO 8583 messages, the
  channels' behaviour and fault models and settlement writer, the ledger, the demo
  workload generator;
* simulated here, because the real ones are anyio tasks: the engine shell
  (switch/serve/engine.py: ports over the event queue), the rest of start-up
  (switch/serve/app.py's sequence), the resolver's shell (switch/sim/resolution.py, as
  :class:`~switch.payment.resolver.Resolver` is on anyio: 8 workers per channel, route
  timeouts), the acquirer and FrontCore.reverse's shell (switch/sim/acquirer.py), the
  stand-in advice sender (StandIn.run: the real queue, delivered on the
  event queue), active health probes (app._probe_endpoints), the group-commit writer
  (switch/sim/disk.py: the journal rows, not reconciliation's column chunks that
  switch/journal/store.py writes beside them) and the networks' transport.

Time is a heap of ``(time, seq, kind, a, b)``; ``seq`` breaks ties in insertion order, so
the run is a pure function of the seed. Every processed event that matters is folded into
a BLAKE2 hash (the trace hash): same seed, same hash, or determinism is broken.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, cast

import msgspec

from channels.behaviour import RequestPlan
from loadtests.harness.workload import Workload
from switch import reasons
from switch.adapters.base import NetworkReply, NotSent
from switch.adapters.trace import MAX_RRN, MemoryTraceStore, TraceNumbers
from switch.journal import (
    JournalFailed,
    JournalFull,
    Recovered,
    open_database,
    replay,
)
from switch.journal.reader import Fold, fold_onto, unfinished_of
from switch.model import Payment, PaymentRequest, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment import restarts
from switch.payment.core import PaymentCore
from switch.payment.idempotency import IdempotencyIndex
from switch.payment.resolver import (
    ResolutionPolicy,
    backlog_candidates,
    first_endpoint,
    recover,
)
from switch.payment.risk import RiskEngine
from switch.payment.standin import StandIn
from switch.protocols.wire import ErrorReply, Reply, Response
from switch.routing.router import Router
from switch.routing.table import load_route_table
from switch.serve.anchors import record_start
from switch.serve.config import IdempotencyConfig
from switch.sim.acquirer import ACQ_REVERSE, ACQ_TIMEOUT, Acquirer
from switch.sim.advice import ADVICE, arm_advice, send_advice
from switch.sim.books import CUT_EVERY_S, Clearing, check_ledger, check_settlement
from switch.sim.disk import Batch, SimJournal, disk_error, disk_full, next_disk_error_at
from switch.sim.networks import CHANNEL_OF, MIN_INQUIRY_AGE_S, World
from switch.sim.options import (
    ROOT,
    WALL0,
    RateAt,
    SimOptions,
    SimResult,
    Violation,
    run_config,
    sim_config,
)
from switch.sim.ports import Boot, Net, Origin, SimClock, Stub
from switch.sim.resolution import (
    RES_ISSUER,
    RES_REPLY,
    RES_TIMEOUT,
    RES_WAKE,
    SimResolver,
)
from switch.sim.saturation import SaturatedSpans
from switch.sim.schedule import draw_schedule
from switch.sim.verify import (
    TERMINAL,
    check_bounds,
    check_inquiry_ages,
    check_journal,
    check_probes,
    check_reversals,
    check_schedule,
    check_standin,
    resolution_origin,
)

#: Client retries of one key after an error or a crash.
CLIENT_TRIES: Final = 3
#: The simulated machine's boot id: it never reboots within a run, so every restart's
#: wall step is known to the switch (switch/payment/restarts.py).
SIM_BOOT_ID: Final = "sim-boot"
#: Share of requests a client sends again while the first is still in flight (its own
#: timeout fired first), within DUPLICATE_AFTER_S: the switch must hold the duplicate and
#: answer it with the first one's result (the core's duplicate waiters), never decide it
#: anew. Without them the waiters were never exercised, and a core answering such a
#: duplicate at once (a 94, say) passed every seed.
DUPLICATE_IN_FLIGHT: Final = 0.005
DUPLICATE_AFTER_S: Final = (0.0002, 0.004)  # a payment here takes ~2-7 ms

__all__ = ["ROOT", "WALL0", "RateAt", "SimOptions", "SimResult", "Simulation", "Violation",
           "sim_config", "simulate"]

# Event kinds (small ints: the heap compares them only on exact time + seq ties, never);
# the resolver's are in switch/sim/resolution.py, the advice sender's in advice.py.
ARRIVE, RESEND, ISSUER, REPLY, COMMIT, WAKE, PROBE, CRASH, RESTART, TICK, DISK = range(11)


class Simulation:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.seed = options.seed
        self.schedule = options.schedule or draw_schedule(
            options.seed, options.duration_s, options.intensity,
            crashes=options.crashes, disk=options.disk)
        self.config = run_config(options)
        self.world = World(options.channels_toml, list(self.schedule.faults), options.seed)
        self.table_text = Path(options.routes_toml).read_text()
        self.adapters = {name: Stub(name, ch) for name, ch in CHANNEL_OF.items()}
        # synchronous=OFF: durability is the simulated disk's business (a crash keeps exactly
        # the committed transactions); a real fsync per commit would only cost wall time.
        self.db = open_database(options.db_path, "off")
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = itertools.count(1)  # insertion order breaks ties in time
        self._hash = hashlib.blake2b(digest_size=16)
        #: Trace events not yet hashed, as (now, fields): msgpack-encoded and hashed in
        #: chunks of a fixed size (so the same seed gives the same bytes). Formatting every
        #: event as a text line cost more than the events' own work in places; the text
        #: is made only for the traced payment's lines.
        self._events: list[tuple[float, tuple[object, ...]]] = []
        self._trace_key = options.trace_key
        #: The journal folded as of the latest start (see _replay).
        self._fold = Fold()
        self.violations: list[Violation] = []
        self._violated: set[tuple[str, str]] = set()
        self.trace: list[str] = []
        self._trace_pids: set[str] = set()
        # clients
        self.workload = Workload(options.seed)
        self._rng = random.Random(f"payswitch-sim-clients:{options.seed}")
        self._rid = 0
        #: In flight per request id: key, request, tries, sent at, and the body's digest
        #: (taken at the send, while the request just built is still in the CPU's cache).
        self._sends: dict[int, tuple[str, PaymentRequest, int, float, int]] = {}
        self._acked: dict[str, tuple[str, Status, int]] = {}
        #: Keys the running switch's index has forgotten (idempotency.py ``on_forget``),
        #: with the payment each answered: a new payment of one is the window's contract
        #: (max_keys keys, shorter than the clients' retry horizon at this rate), not a
        #: lost key. Cleared at each start: recovery's restore forgets again what the
        #: restarted window cannot hold, and what it holds again is known again.
        self._forgotten: dict[str, str] = {}
        #: Every payment the window ever forgot, per key: each allows the journal one
        #: more payment of that key (check_journal), acknowledged or not.
        self._forgotten_ever: dict[str, set[str]] = {}
        #: A key's earlier payments, acknowledged before the window forgot it: each is
        #: still checked against the journal (nothing acknowledged is lost).
        self._superseded: list[tuple[str, tuple[str, Status, int]]] = []
        self._recent: list[tuple[str, PaymentRequest]] = []
        self.latencies: list[float] = []
        self.unknown_since: dict[str, float] = {}
        #: When each unresolved payment's latest resolution attempt went unanswered.
        self.failed_attempt_at: dict[str, float] = {}
        #: When each channel's resolver had every worker busy (the schedule check's
        #: allowance for a backlog drained at full capacity).
        self.saturation = SaturatedSpans()
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "accepted", "errors", "crashes", "journal_failures", "resolved",
             "stand_in", "advices", "sent", "timeouts_after_send",
             "refused_" + reasons.E_OVERLOADED, "refused_" + reasons.E_UNAVAILABLE), 0)
        self.restarts: list[float] = []
        self.boot: Boot | None = None
        self._boot_counter = 0
        #: The trace-number reservation survives crashes (the switch keeps it in a fsynced
        #: sidecar file beside the journal; here, one store every boot reads).
        self.trace_store = MemoryTraceStore()
        self.rrn_store = MemoryTraceStore()  # the RRN sequence's, likewise (app.py)
        self._load_over = False
        self._origin = Origin(self)
        #: wall seconds = now + wall_offset; a restart may move it (clock jump).
        self.wall_offset = WALL0
        shape = options.shape
        self._peak = options.rate if shape is None else 1.05 * max(
            shape.rate_at(i * 0.05) for i in range(int(options.duration_s / 0.05) + 1))
        self._disk_used: set[object] = set()
        #: No commit can meet a disk fault before this time (next_disk_error_at); the
        #: schedule is read again only from then on, not at every commit.
        self._disk_check_at = 0.0
        # Clearing cut-offs: ten during the load (CUT_EVERY_S apart at least), then ever
        # further apart in the drain (the writer walks every record of the scheme at each
        # cut: channels/settlement.py).
        self.clearing = Clearing(self.world.scheme, options.seed) if options.books else None
        self._cut_every = max(CUT_EVERY_S, options.duration_s / 10.0)
        self._next_cut = self._cut_every
        #: The acquirer's reversals of card payments (None: it sends none).
        self.acquirer = (Acquirer(self, options.seed, options.reversal_share)
                         if options.reversal_share > 0 else None)

    # ----------------------------------------------------------------- plumbing

    def push(self, at: float, kind: int, a: Any = None, b: Any = None) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), kind, a, b))

    def wall(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall_offset + self.now, tz=dt.UTC)

    def wall_us(self) -> int:
        return int((self.wall_offset + self.now) * 1_000_000)

    def note(self, about: str | tuple[str, ...] | None, *fields: object) -> None:
        """One trace event: ``fields`` (str, int, float, bool, None) in the trace hash;
        ``about``, the key(s) or payment id(s) it concerns, for a payment's readable trace."""
        events = self._events
        events.append((self.now, fields))
        if len(events) >= 4096:
            self._hash.update(_ENCODE(events))
            events.clear()
        if self._trace_key is not None and about is not None:
            ids = (about,) if isinstance(about, str) else about
            if any(i == self._trace_key or i in self._trace_pids for i in ids):
                self.trace.append(f"{self.now:.6f} " + " ".join(map(str, fields)))

    def trace_hash(self) -> str:
        self._hash.update(_ENCODE(self._events))
        self._events.clear()
        return self._hash.hexdigest()

    def violate(self, invariant: str, subject: str, detail: str) -> None:
        if (invariant, subject) in self._violated:
            return
        self._violated.add((invariant, subject))
        self.violations.append(Violation(invariant, self.now, subject, detail))
        self.note(subject, f"VIOLATION {invariant} {subject}: {detail}")

    # ----------------------------------------------------------------- the switch

    def _start(self) -> None:
        """Start-up, as switch/serve/app.py does it: replay, index, then recovered work."""
        self._boot_counter += 1
        boot = Boot(self._boot_counter, self.now)
        cfg = self.config
        recovered = self._replay()
        # app.py's _record_start: this start's anchor in the journal's meta table. The
        # machine never reboots within a run (one boot id) and its reference clock is
        # true time; the wall anchor is the one a crash's jump moved.
        anchor = restarts.Anchor(SIM_BOOT_ID, self.now, self.wall_offset + self.now,
                                 recovered.boot_count)
        boot.ages, problem = record_start(self.db, anchor)
        assert problem is None, problem
        metrics = SwitchMetrics(networks=list(self.adapters), enabled=False)
        index = IdempotencyIndex(retention_s=cfg.idempotency.retention_s,
                                 max_keys=cfg.idempotency.max_keys)
        self._forgotten.clear()
        window = cfg.idempotency
        index.on_forget = lambda key: self._key_forgotten(index, key, window)
        wall_us = self.wall_us()
        table = load_route_table(self.table_text, self.adapters)
        router = Router(table, self.adapters, cfg.resilience, metrics, cfg.seed)
        heap, seq = self._heap, self._seq

        def commit_at(batch: Batch, at: float) -> None:
            # push() spelled out: one call less for every commit of the run.
            heapq.heappush(heap, (at, next(seq), COMMIT, boot, batch))

        journal = SimJournal(self.db, commit_at, lambda: self.now)
        boot.index, boot.router, boot.journal = index, router, journal
        boot.trace = TraceNumbers(self.trace_store)
        rrns = TraceNumbers(self.rrn_store, max_value=MAX_RRN)
        boot.resolver = SimResolver(self, boot, cfg.resolution, index, metrics)
        boot.standin = StandIn(cfg.standin, cast(Any, self.adapters), cast(Any, journal),
                               cast(Any, SimClock(self)), metrics,
                               lambda e, now: router.health.breakers[e].available(now))
        boot.core = PaymentCore(
            journal=journal, network=Net(self, boot), index=index,
            risk=RiskEngine(cfg.risk, cfg.security.token_key.encode()), router=router,
            resolver=boot.resolver, metrics=metrics,
            token_key=cfg.security.token_key.encode(), boot_count=recovered.boot_count,
            seed=cfg.seed, wall_offset=self.wall_offset,
            standin=boot.standin if cfg.standin.enabled else None, trace=boot.trace,
            rrns=rrns)
        self.boot = boot
        # switch/serve/app.py's recovery, the same function: the idempotency window, the
        # undelivered advices, every unfinished payment to the resolver and the core.
        recover(recovered, index=index, resolver=boot.resolver, standin=boot.standin,
                router=router, metrics=metrics, now=self.now, wall_us=wall_us,
                retention_s=cfg.idempotency.retention_s,
                resolve_endpoint=first_endpoint,
                on_recovered=lambda p, route: boot.core.recovered(
                    p.idempotency_key, p.payment_id, route.network), ages=boot.ages,
                sent_within_s=cfg.resilience.payment_deadline_s)
        self.note(None, f"boot {boot.number} records={recovered.records} "
                  f"unfinished={len(recovered.unfinished)} "
                  f"advices={len(recovered.pending_advices)}")
        arm_advice(self, boot, 0.0)
        self.push(self.now + cfg.resilience.probe_interval_s, PROBE, boot)

    def _replay(self) -> Recovered:
        """The switch's start-up replay. The simulated journal only grows (no archive
        moves), so each start folds only the records since the previous one onto its
        fold: the same Fold, without re-reading the whole journal at every restart
        (that made a long run quadratic in its crashes)."""
        if self.options.full_replay:
            return replay(self.db)
        return replay(self.db, self._fold)

    def _crash(self, down_s: float, jump_s: float) -> None:
        boot = self.boot
        if boot is None:
            return
        boot.alive = False
        boot.journal.flush()  # what the disk acknowledged survives; the rest dies here
        self.boot = None
        self.counters["crashes"] += 1
        self.note(None, f"crash boot {boot.number} pending={boot.journal.pending} jump={jump_s}")
        boot.discard()  # its events still queued compare it by identity only
        self.saturation.end_all(self.now)  # its resolver's workers died with it
        self.wall_offset += jump_s  # the next boot anchors to a wall clock that moved
        self.push(self.now + down_s, RESTART)

    def journal_then(self, boot: Boot, row: Any, then: Callable[[], None]) -> None:
        """Append a record for the sim's own services; ``then`` once it is durable."""
        try:
            ticket = boot.journal.append(row)
        except JournalFull:
            self.push(self.now + 0.1, DISK, boot, ("retry", row, then))
            return
        except JournalFailed:
            return  # fail-stop: the journal keeps it unknown/undelivered for the next start
        assert ticket is not None
        boot.waiting.setdefault(ticket, []).append(then)

    def _commit(self, boot: Boot, batch: Batch) -> None:
        error = None
        if self.now >= self._disk_check_at:
            disk = self.schedule.disk
            error = disk_error(disk, self.now, self._disk_used)
            self._disk_check_at = next_disk_error_at(disk, self.now, self._disk_used)
        boot.journal.commit(batch, error)
        if error is None:
            self.note(None, "commit", len(batch.rows))
            for then in boot.waiting.pop(batch, ()):
                then()
            boot.core.on_committed(batch, self.now, self.now)
            return
        # Fail-stop: every waiting batch fails; an operator restarts the switch.
        self.counters["journal_failures"] += 1
        self.note(None, f"journal failed: {error}")
        boot.failed = True
        exc = JournalFailed(error)
        for failed in [batch, *boot.journal.failed_batches()]:
            boot.waiting.pop(failed, None)
            boot.core.on_commit_failed(failed, exc)
        self.push(self.now + 2.0, CRASH, boot, (3.0, 0.0))

    # ----------------------------------------------------------------- networks

    def net_send(self, boot: Boot, endpoint: str, token: int, payment: Payment) -> None:
        world = self.world
        plan = world.plan(endpoint, self.now, payment)
        pid = payment.payment_id
        if payment.idempotency_key == self._trace_key:
            self._trace_pids.add(pid)
        if plan.action == "refuse":
            self.note(pid, "send", pid, endpoint, "refused")
            raise NotSent(f"{endpoint}: connection refused")
        self.counters["sent"] += 1
        ep = world.endpoints[endpoint]
        self.note(pid, "send", pid, endpoint, plan.action, plan.latency_s)
        if plan.action == "blackhole":
            return
        if ep.busy >= ep.capacity:
            reply = NetworkReply("failed", reasons.ISSUER_UNAVAILABLE, "capacity")
            self.push(self.now + plan.latency_s, REPLY, boot, (token, reply, pid))
            return
        ep.busy += 1
        self.push(self.now + plan.latency_s, ISSUER, boot, (endpoint, token, payment, plan))

    def _at_issuer(self, boot: Boot, endpoint: str, token: int, payment: Payment,
                   plan: RequestPlan) -> None:
        reply = self._issuer_decides(endpoint, payment, plan)
        pid = payment.payment_id
        self.note(pid, "issuer", endpoint, pid, reply.outcome, reply.reason)
        if plan.malformed or plan.action == "reset":
            # Garbage the adapter drops, or the connection reset after the network decided
            # (as channels/tcp.py does): either way no answer, and the core times out.
            return
        at = self.now + plan.late_delay_s
        self.push(at, REPLY, boot, (token, reply, pid))
        if plan.duplicate:
            self.push(at, REPLY, boot, (token, reply, pid))

    def _issuer_decides(self, endpoint: str, payment: Payment, plan: RequestPlan
                        ) -> NetworkReply:
        """The network decides a request that reaches it now, sent ``plan.latency_s`` ago;
        whether or not its boot still lives to hear the answer (a reuse of a dead boot's
        trace number is exactly the restart bug)."""
        world = self.world
        world.endpoints[endpoint].busy -= 1
        assert world.endpoints[endpoint].busy >= 0, endpoint
        reply = world.authorize(endpoint, payment, plan.technical_error, self.now,
                                self.now - plan.latency_s)
        if world.stan_reused:
            for reused in world.stan_reused:
                self.violate("trace-number-reused", reused, "the issuer answered 94 to its "
                             "first transmission: another payment sent within its window "
                             "used this STAN + terminal")
            world.stan_reused.clear()
        return reply

    # ----------------------------------------------------------------- clients

    def _arrive(self) -> None:
        if self.now >= self.options.duration_s:
            self._load_over = True
            return
        shape = self.options.shape
        self.push(self.now + self._rng.expovariate(self._peak), ARRIVE)
        # A shaped load by thinning: arrivals at the peak rate, each kept with
        # probability rate(t) / peak (a non-homogeneous Poisson process).
        if shape is not None and self._rng.random() * self._peak >= shape.rate_at(self.now):
            return
        request, kind = self.workload.next()
        if self._recent and self._rng.random() < 0.002:
            # Same key, another body: must be refused if the key was accepted before.
            _, original = self._recent[self._rng.randrange(len(self._recent))]
            request = msgspec.structs.replace(original, amount=original.amount + 1)
            kind = "conflict"
        self._send(request, 1)
        if kind == "new" and request.channel == "card" and self.acquirer is not None:
            self.acquirer.new_card_payment(request)
        if self._rng.random() < DUPLICATE_IN_FLIGHT:
            # Its last try: a duplicate's own error is not retried again.
            self.push(self.now + self._rng.uniform(*DUPLICATE_AFTER_S), RESEND, request,
                      CLIENT_TRIES)

    def _send(self, request: PaymentRequest, tries: int) -> None:
        self.counters["requests"] += 1
        self._rid += 1
        rid = self._rid
        self._sends[rid] = (request.idempotency_key, request, tries, self.now,
                            _digest(request))
        self.note(request.idempotency_key, "request", rid, request.idempotency_key, "try",
                  tries)
        boot = self.boot
        if boot is None:
            return  # nobody listening: the client's connection fails; it retries on restart
        boot.core.on_requests(self._origin, ((rid, request),), self.now, self.now, self.now)

    def client_reply(self, response: Response) -> None:
        rid = response.id
        assert rid is not None
        key, request, tries, sent_at, digest = self._sends.pop(rid)
        acked = self._acked.get(key)
        if isinstance(response, ErrorReply):
            self.counters["errors"] += 1
            if response.code in (reasons.E_OVERLOADED, reasons.E_UNAVAILABLE):
                # Never journaled: a scenario's availability counts them from here.
                self.counters["refused_" + response.code] += 1
            self.note(key, "reply", rid, key, "error", response.code)
            if response.code == reasons.E_IDEMPOTENCY_CONFLICT:
                if acked is not None and acked[2] == digest:
                    self.violate("idempotency", key, "the same body was refused as a conflict")
            elif acked is not None and acked[2] != digest:
                pass  # a conflicting probe that met a busy switch: nothing to learn
            elif response.code in (reasons.E_OVERLOADED, reasons.E_UNAVAILABLE) \
                    and tries < CLIENT_TRIES:
                self.push(self.now + 2.0, RESEND, request, tries + 1)
            return
        assert isinstance(response, Reply)
        result = response.result
        # A Status is a StrEnum: hashed (msgpack) and printed as its value, without the
        # cost of Enum.value's descriptor.
        self.note((key, result.payment_id), "reply", rid, key, result.payment_id,
                  result.status, result.reason, "replay", response.replay)
        if acked is not None and self._forgotten.get(key) == acked[0] != result.payment_id:
            # The window forgot the payment this key was acknowledged with: this reply is
            # of a new payment of it. The earlier one is still held to its ack.
            del self._forgotten[key]
            self._superseded.append((key, acked))
            self.note(key, "forgotten", key, acked[0])
            acked = None
            del self._acked[key]
        if acked is not None and acked[2] != digest:
            self.violate("idempotency", key,
                         f"another body got {result.status.value} instead of a refusal")
            return
        if acked is not None:
            pid, status, _ = acked
            if pid != result.payment_id or (
                    status in TERMINAL and result.status != status
                    and not self._reversed_by_acquirer(pid, status, result.status)):
                self.violate("idempotency", key, f"first {pid} {status.value}, now "
                             f"{result.payment_id} {result.status.value}")
        if acked is None or acked[1] not in TERMINAL:
            self._acked[key] = (result.payment_id, result.status, digest)
        if acked is None:
            self.counters["accepted"] += 1
            self.latencies.append(self.now - sent_at)
            if len(self._recent) < 256:
                self._recent.append((key, request))
            else:
                self._recent[self._rng.randrange(256)] = (key, request)
        if not response.replay:
            if result.stood_in:
                self.counters["stand_in"] += 1
                if self.acquirer is not None:
                    self.acquirer.stood_in(request)
                check_standin(result.payment_id, self.now, self.world,
                              self.boot.started if self.boot is not None else None,
                              self.violate)
            channel = request.channel
            if channel == "card":  # what the world keeps per card payment in flight
                self.world.answered.pop(result.payment_id, None)  # only stand-in asks
                self.world.decided.discard(result.payment_id)
            elif channel in MIN_INQUIRY_AGE_S and result.status in TERMINAL:
                self.world.finished(result.payment_id, self.now)

    def _key_forgotten(self, index: IdempotencyIndex, key: str,
                       window: IdempotencyConfig) -> None:
        """The index forgets ``key``: only an answered one, for room past the configured
        bound or past retention (anything else is a lost key, and said so here)."""
        entry = index.get(key)
        assert entry is not None, key
        if entry.result is None or entry.pending:
            self.violate("idempotency", key, "forgotten while its payment was in flight")
            return
        if len(index) <= window.max_keys and entry.created_at >= self.now - window.retention_s:
            self.violate("idempotency", key, f"forgotten with {len(index)} keys of "
                         f"{window.max_keys} and within retention")
        pid = entry.result.payment_id
        self._forgotten[key] = pid
        self._forgotten_ever.setdefault(key, set()).add(pid)

    def _reversed_by_acquirer(self, pid: str, was: Status, now: Status) -> bool:
        """An approval the acquirer's accepted reversal undid since: a retry of its key
        hears ``reversed`` (the journal's final, as check_journal allows too)."""
        return (was is Status.APPROVED and now is Status.REVERSED
                and self.acquirer is not None and pid in self.acquirer.accepted)

    def resolved(self, payment: Payment, result: Result) -> None:
        """The resolver journaled ``payment``'s final state: was it within its schedule?"""
        self.counters["resolved"] += 1
        pid = payment.payment_id
        if payment.channel in MIN_INQUIRY_AGE_S:
            self.world.finished(pid, self.now)
        self.note(pid, "resolved", pid, result.status.value)
        since = self.unknown_since.pop(pid, self.now)
        policy: ResolutionPolicy = getattr(self.config.resolution, payment.channel)
        boot = self.boot
        target = boot.router.target(payment) if boot is not None else None
        origin = since
        if boot is not None:
            # What the rule counts from: the journal as the switch last read it (the
            # latest replay or refill fold), its stamps read as the switch reads them
            # (a wall clock set back since the receipt: seed 16, -71 s, 41.5 s "late").
            ages, wall_us, now = boot.ages, self.wall_us(), self.now
            origin = resolution_origin(
                payment, since, self._fold.payments.get(pid),
                lambda us: now - ages.age_s(us, wall_us), boot.started,
                int((self.wall_offset + boot.started) * 1e6),  # its start's wall
                self.config.resilience.payment_deadline_s)
        spans, channel = self.saturation, payment.channel
        check_schedule(pid, self.now, origin, policy, target, self.world, self.restarts,
                       self.violate, self.failed_attempt_at.pop(pid, -math.inf),
                       lambda start, end: spans.seconds(channel, start, end))

    # ----------------------------------------------------------------- the loop

    def run(self) -> SimResult:
        # The cyclic garbage collector off for the run: a run only grows (journal fold,
        # books, idempotency index), so every full collection walked the whole heap again
        # for nothing -- a fifth of the CPU of a 10-minute seed. A boot a crash throws away
        # is taken apart (Boot.discard), so reference counting frees it without the
        # collector; simulate() does the same to the whole run before turning it back on.
        with _collector_off():
            return self._run()

    def _run(self) -> SimResult:
        started, cpu0 = time.perf_counter(), time.process_time()  # bench: the simulator's own speed
        for at, down, jump in self.schedule.crashes:
            self.push(at, CRASH, None, (down, jump))
        for d in self.schedule.disk:
            if d.kind == "stall":
                self.push(d.at, DISK, None, ("stall", d.duration_s, None))
        self._start()
        self.push(0.0, ARRIVE)
        self.push(1.0, TICK)
        end = self.options.duration_s + self.options.drain_s
        heap = self._heap
        pop, dispatch = heapq.heappop, self._dispatch
        while heap:
            at, _, kind, a, b = pop(heap)
            if at > end:
                break
            self.now = at
            if kind == TICK:
                if self._tick():
                    break
                continue
            dispatch(kind, a, b)
            boot = self.boot
            if boot is not None:
                deadline = boot.core.next_deadline()
                if deadline is not None and deadline < boot.wake_at:
                    boot.wake_at = deadline
                    self.push(deadline, WAKE, boot)
        self._verify()
        wall = time.perf_counter() - started  # bench: as above
        return SimResult(self.seed, self.now, wall, self.counters["accepted"],
                         self.schedule.injected, self.violations, self.trace_hash(),
                         dict(self.counters), self.trace, self.schedule.describe(),
                         self.latencies, time.process_time() - cpu0)

    def _dispatch(self, kind: int, a: Any, b: Any) -> None:
        boot = self.boot
        # Nearly every event is one of these four, for the live boot: tested first.
        if a is boot and boot is not None and boot.alive:
            if kind == COMMIT:
                self._commit(boot, b)
                return
            if kind == ISSUER:
                self._at_issuer(boot, *b)
                return
            if kind == REPLY:
                token, reply, pid = b
                self.note(pid, "answer", pid, reply.reason if reply else "notsent")
                boot.core.on_replies(((token, reply),), self.now, self.now)
                return
            if kind == WAKE:
                # A wake-up superseded by an earlier one (its deadline was cancelled or a
                # sooner one armed) has nothing to do: no live timer is due before wake_at.
                # Running it anyway reset wake_at and armed one more wake-up per stale
                # event: they never went away, and piled up to thousands per simulated
                # second between two crashes.
                if self.now == boot.wake_at:
                    boot.wake_at = math.inf
                    boot.core.on_timers(self.now, self.now)
                return
        if kind == ARRIVE:
            self._arrive()
        elif kind == RESEND:
            self._send(a, b)
        elif kind == CRASH:
            if a is None or a is boot:
                self._crash(*b)
        elif kind == RESTART:
            if self.boot is None:
                if disk_full(self.schedule.disk, self.now):
                    self.push(self.now + 1.0, RESTART)
                    return
                self.restarts.append(self.now)
                self._start()
                # Clients whose request died with the switch try again.
                for rid in sorted(self._sends):
                    _, request, tries, _, _ = self._sends.pop(rid)
                    if tries < CLIENT_TRIES:
                        self.push(self.now + 0.001 * (rid % 1000), RESEND, request, tries + 1)
        elif kind == ACQ_REVERSE:
            cast(Acquirer, self.acquirer).send(b)  # only the acquirer pushes these
        elif kind == ACQ_TIMEOUT:
            cast(Acquirer, self.acquirer).timed_out(*b)
        elif a is not boot or boot is None or not boot.alive:
            # The networks still process what reached them; nobody hears the answer.
            if kind == ISSUER:
                endpoint, _, payment, plan = b
                self._issuer_decides(endpoint, payment, plan)
            elif kind == RES_ISSUER:
                job, _, plan = b
                if plan.technical_error is None and not plan.malformed:
                    self.world.resolve(job.route.network, job.payment, self.wall(), None,
                                       now=self.now)
            elif kind == DISK and a is None:
                self._disk(b)
            return
        elif kind == RES_WAKE:
            boot.resolver.wake(b)
        elif kind == RES_ISSUER:
            boot.resolver.at_issuer(*b)
        elif kind == RES_REPLY:
            boot.resolver.answered(*b)
        elif kind == RES_TIMEOUT:
            boot.resolver.timed_out(*b)
        elif kind == ADVICE:
            send_advice(self, boot)
        elif kind == PROBE:
            self._probe(boot)
        elif kind == DISK:
            op, x, y = b
            if op == "retry":
                self.journal_then(boot, x, y)
            else:
                self._disk(b)

    def _disk(self, b: Any) -> None:
        op, seconds, _ = b
        if op == "stall" and self.boot is not None:
            self.boot.journal.stall_until = self.now + seconds
            self.boot.journal.stall_s = seconds
            self.note(None, "disk stall", seconds)

    def _probe(self, boot: Boot) -> None:
        """Active health (app._probe_endpoints): an 0800 echo answers if connections do."""
        for name, breaker in boot.router.health.breakers.items():
            ok = self.world.endpoints[name].behaviour.connection_state(self.now) == "up"
            breaker.record_probe(self.now, ok)
        self.push(self.now + self.config.resilience.probe_interval_s, PROBE, boot)

    def _tick(self) -> bool:
        """Once a simulated second: bounds and probe slots; after the load, stop once
        everything settled."""
        boot = self.boot
        if boot is not None:
            check_bounds(boot, self.config, self.now, self.violate)
            check_probes(boot, self.violate)
            if boot.resolver.queue.needs_refill:
                self._refill(boot)
        if self.clearing is not None and self.now >= self._next_cut:
            self.clearing.cut()
            if self._load_over:  # the drain can last long: cut ever less often
                self._cut_every *= 2
            self._next_cut += self._cut_every
        self.push(self.now + 1.0, TICK)
        if not self._load_over or boot is None or boot.failed:
            return False
        settled = (not self._sends and not boot.resolver.queue.pending
                   and not boot.standin.pending
                   and boot.journal.pending == 0 and boot.core.in_flight == 0
                   and (self.acquirer is None or not self.acquirer.pending))
        return settled

    def _refill(self, boot: Boot) -> None:
        """The resolver takes back what overflowed its queue, from the journal as it is
        now (app.py's backlog read: the fold brought up to date, as at a start)."""
        boot.journal.flush()  # the sim writes durable rows to SQLite in bulk: all of them
        fold_onto(self.db, self._fold, live_only=True)
        before = boot.resolver.queue.tracked
        boot.resolver.refill(backlog_candidates(
            unfinished_of(self._fold), router=boot.router, wall_us=self.wall_us(),
            resolve_endpoint=first_endpoint, owned=boot.core.owns, ages=boot.ages,
            sent_within_s=self.config.resilience.payment_deadline_s,
            started_us=int((self.wall_offset + boot.started) * 1e6)))  # its start's wall
        self.note(None, "refill", boot.resolver.queue.tracked - before,
                  boot.resolver.queue.overflowed)

    # ----------------------------------------------------------------- after the run

    def _verify(self) -> None:
        if self.boot is not None:
            self.boot.journal.flush()
        # The whole journal, folded per payment by the switch's one reader (the records
        # since the last start folded onto that start's fold: one pass over the journal).
        folded = fold_onto(self.db, self._fold, live_only=True)  # the sim never archives
        accepted = self.acquirer.accepted if self.acquirer is not None else {}
        forgotten = {key: len(pids) for key, pids in self._forgotten_ever.items()}
        if forgotten:  # a window smaller than the clients' retry horizon: say how often
            self.counters["payments_forgotten_by_window"] = sum(forgotten.values())
        journal = check_journal(folded, self._acked, self.world, self.violate,
                                self.counters, live=self.boot, reversed_by_acquirer=accepted,
                                config=self.config, superseded=self._superseded,
                                forgotten=forgotten)
        if self.acquirer is not None:
            check_reversals(folded, self.acquirer.accepted, self.world, self.violate,
                            journal.holds)
        check_inquiry_ages(self.world, self.violate)
        if self.clearing is not None:
            for subject, detail in check_ledger(self.db, folded, self.wall_us(),
                                                journal.approved):
                self.violate("ledger", subject, detail)
            check = check_settlement(self.clearing, self.world.scheme, journal.card_intents,
                                     journal.finals)
            for subject, detail in check.problems:
                self.violate("settlement", subject, detail)
            self.counters["clearing_cuts"] = self.clearing.cuts
            self.counters["clearing_standin_exposure_minor"] = check.standin_exposure


_ENCODE: Final = msgspec.msgpack.Encoder().encode


def _digest(request: PaymentRequest) -> int:
    """The request's body, to tell "the same body" from "another body" of one key: a
    64-bit hash of its fields (a false "same" is a 2**-64 event per comparison). The
    frozen Struct's own hash combines its fields' (nested Structs alike), so equal bodies
    hash equal exactly as equal encodings did: 0.1 us where encoding the request and
    hashing the bytes took 0.8 us, once per send."""
    return hash(request)


@contextmanager
def _collector_off() -> Iterator[None]:
    """The cyclic garbage collector off inside; back on after, if it was on before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def simulate(options: SimOptions) -> SimResult:
    """Run one seed to the end; the result names every invariant that failed."""
    # The collector stays off until the run is taken apart: back on any sooner, its first
    # collection walked every object the run had built (nothing was collected during the
    # run), and again later to free them -- 0.46 s after 300 simulated seconds, growing
    # with the run. Taken apart first, reference counting frees nearly all of it.
    with _collector_off():
        sim = Simulation(options)
        try:
            return sim.run()
        finally:
            sim.db.close()
            if sim.clearing is not None:
                sim.clearing.close()
            if sim.boot is not None:
                sim.boot.discard()
            # Every reference the run holds (the result keeps what it needs); the
            # Simulation is unusable from here on, and nothing but this function sees it.
            vars(sim).clear()
