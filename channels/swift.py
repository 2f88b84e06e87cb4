"""Simulated SWIFT-style network: pacs.008 in, pacs.002 out, pacs.028 answered from the book.

Framing is a 4-byte big-endian length followed by the XML document (the switch's wire
framing). Parsing is the switch's safe ISO 20022 codec: no DTDs, no entities, size-bounded.

Correspondent banks are identified by BIC, each with its own latency; a bank reached
``via`` another adds that one's latency too, so a payment to a bank two hops away takes
longer. The answer to a pacs.008 is immediate (after the route's latency): ACCP, or RJCT
with a reason, by these rules in order:

* FF01 -- the document does not parse, or its currency is not carried by this network
  (an unparseable document is answered only if its UETR can still be found in it);
* AG01 -- debtor or creditor agent not on the network, or a forbidden corridor
  (debtor country - creditor country, e.g. "DE-KP");
* AC01 / AC04 -- creditor account unknown / closed (listed per bank, or drawn from the
  seed at the configured rates: a pure function of seed and account);
* AM04 -- the debtor's balance does not cover the amount (debtors' balances are generated
  from the seed, or configured; accepted payments are debited at once).

An accepted payment settles (ACSC) ``settlement_delay_s`` later, or, if it was accepted
after the cut-off (``cutoff_s`` into a ``cycle_s`` cycle, counted from start-up), that long
after the next cycle begins. At settlement the network pushes an unsolicited pacs.002 ACSC
on the connection the payment came in on, if it is still open.

The book is keyed by UETR. A pacs.008 whose UETR is already booked is answered with its
current status and never booked twice. A pacs.028 is answered with the current status;
a payment still in the network's queue is PDNG; one never received is RJCT NOOR. Technical
errors (from the behaviour model) are RJCT MS03 with AddtlInf "TECHNICAL ERROR nn" and book
nothing but the rejection; a status query is never answered with a technical error.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import anyio
import msgspec

from channels.behaviour import Behaviour
from channels.books import SWIFT_KIND, BookEntry, BookStore
from channels.config import BankSpec, NetworkSpec, SwiftSpec
from channels.fence import Fence
from channels.metrics import ChannelMetrics
from channels.tcp import SimConnection, SimRequest, SimServer
from switch.clock import timer_deadline
from switch.protocols import iso20022
from switch.protocols.errors import CodecError
from switch.protocols.framing import FrameDecoder, frame

__all__ = ["SwiftNetwork", "SwiftRecord"]

log = logging.getLogger(__name__)

TECHNICAL_PREFIX: Final = "TECHNICAL ERROR "
#: Longest a settlement notification (pacs.002 ACSC) may take to write: a peer that stops
#: reading must not stall settlement of everyone else's payments.
NOTIFY_TIMEOUT_S: Final = 1.0
#: AddtlInf of the RJCT NOOR a pacs.008 gets after a pacs.028 was told it never arrived.
FENCED_INFO: Final = "STATUS ALREADY REPORTED: NOT RECEIVED"
_UETR_RE: Final = re.compile(rb"<UETR>([0-9a-f-]{36})</UETR>")
_E2E_RE: Final = re.compile(rb"<EndToEndId>([^<]{1,35})</EndToEndId>")
_MSGID_RE: Final = re.compile(rb"<MsgId>([^<]{1,35})</MsgId>")
_INSTR_RE: Final = re.compile(rb"<InstrId>([^<]{1,35})</InstrId>")
_TXID_RE: Final = re.compile(rb"<TxId>([^<]{1,35})</TxId>")
_CREDTTM_RE: Final = re.compile(rb"<GrpHdr>.*?<CreDtTm>([^<]{19,35})</CreDtTm>", re.DOTALL)


@dataclass(slots=True)
class SwiftRecord:
    ct: iso20022.CreditTransfer
    status: iso20022.TxStatus
    conn_id: int
    reason: str | None = None
    info: str | None = None
    settles_at: float = 0.0
    debited: int = 0
    settled_at: float = 0.0  # anyio time of ACSC, for the statement


class _StoredPayment(msgspec.Struct, array_like=True, frozen=True):
    """A decided `SwiftRecord` as channels/books.py keeps it; its times as wall clock
    seconds (the loop's clock starts again at a restart)."""

    ct: iso20022.CreditTransfer
    status: str
    reason: str | None
    info: str | None
    settles_at_wall: float
    debited: int
    settled_at_wall: float


_stored_decoder: Final = msgspec.msgpack.Decoder(_StoredPayment)


def _account(party: iso20022.Party) -> str | None:
    return party.iban or party.account_id


def _unit(seed: int, label: str, value: str) -> float:
    digest = hashlib.sha256(f"{seed}:{label}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class SwiftNetwork(SimServer):
    def __init__(self, spec: NetworkSpec, behaviour: Behaviour, metrics: ChannelMetrics, *,
                 origin: float) -> None:
        super().__init__(spec, behaviour, metrics)
        self.swift: SwiftSpec = spec.swift or SwiftSpec()
        self.origin = origin
        # Wall time of anyio time 0, so reports carry their own creation time (CreDtTm)
        # derived from the loop clock, like every other time in the simulator.
        self._wall_anchor = time.time() - anyio.current_time()
        self.banks: dict[str, BankSpec] = {bank.bic: bank for bank in self.swift.banks}
        self._closed = {(bank.bic, acct) for bank in self.swift.banks
                        for acct in bank.closed_accounts}
        self._unknown = {(bank.bic, acct) for bank in self.swift.banks
                         for acct in bank.unknown_accounts}
        self.book: dict[str, SwiftRecord] = {}
        #: UETRs a pacs.028 was answered RJCT NOOR for (never received): that answer
        #: stands, so a pacs.008 of one arriving later is rejected, never booked.
        self.fenced = Fence()
        self.balances: dict[str, int] = {}
        self.credited_by_bank: dict[str, int] = {}
        self.debited_total = 0
        self.settled_total = 0
        self.settled = 0
        self.notifications_sent = 0
        self.bound_rejections = 0
        self.malformed_requests = 0
        self._heap: list[tuple[float, int, str]] = []
        # Read at each scrape: a run's harness waits for 0 before the last settlement
        # cut instead of sleeping for longer than the delay.
        metrics.settlements_pending.labels(spec.name).set_function(lambda: len(self._heap))
        self._seq = 0
        self._msg_seq = 0
        self._wake = anyio.Event()

    # --- the books on disk (channels/books.py) ------------------------------------------

    def keep(self, record: SwiftRecord) -> None:
        """Make a decided payment's status durable before a report of it is sent."""
        if self.books is None or record.status == "PDNG":
            return
        anchor = self._wall_anchor
        self.books.put(self.name, SWIFT_KIND, record.ct.uetr, msgspec.msgpack.encode(
            _StoredPayment(record.ct, record.status, record.reason, record.info,
                           anchor + record.settles_at if record.settles_at else 0.0,
                           record.debited,
                           anchor + record.settled_at if record.settled_at else 0.0)))

    def restore(self, store: BookStore) -> list[BookEntry]:
        """Rebuild the book, the debtors' balances, the banks' credits and the fences from
        ``store`` and keep every change there from now on; an accepted payment not settled
        yet settles when it was due (at once if that passed while the simulator was down).
        Returns the payments' entries read."""
        assert not self.book and not len(self.fenced), "restore into an empty book only"
        payments = list(store.entries(self.name, SWIFT_KIND))
        anchor = self._wall_anchor
        misfits = 0
        for entry in payments:
            stored = _stored_decoder.decode(entry.value)
            ct = stored.ct
            assert ct.uetr == entry.key, entry.key
            assert stored.status in ("ACCP", "ACSP", "ACSC", "RJCT"), stored.status
            record = SwiftRecord(ct, stored.status, 0, stored.reason, stored.info,  # type: ignore[arg-type]
                                 stored.settles_at_wall - anchor if stored.settles_at_wall
                                 else 0.0, stored.debited,
                                 stored.settled_at_wall - anchor if stored.settled_at_wall
                                 else 0.0)
            self.book[ct.uetr] = record
            if record.debited:
                debtor = _account(ct.debtor)
                balance = None if debtor is None else self.balance(debtor)
                if debtor is None or balance is None:
                    misfits += 1  # max_accounts lowered since: the debit stays booked
                else:
                    self.balances[debtor] = balance - record.debited
                self.debited_total += record.debited
            if record.status == "ACSC":
                self.settled += 1
                self.settled_total += record.debited
                bic = ct.creditor_agent_bic
                self.credited_by_bank[bic] = self.credited_by_bank.get(bic, 0) + record.debited
            elif record.status in ("ACCP", "ACSP"):
                self._schedule(record)
        self.fenced.keep_in(store, self.name)
        assert len(self.book) == len(payments)
        if misfits:
            log.warning("%s: the books in %s were written under another configuration: %d "
                        "debits found no debtor account within max_accounts", self.name,
                        store.path, misfits)
        self.books = store
        return payments

    # --- framing -------------------------------------------------------------------------

    def new_splitter(self) -> FrameDecoder:
        return FrameDecoder(iso20022.MAX_XML_BYTES)

    def frame(self, payload: bytes) -> bytes:
        return frame(payload)

    def garbage(self) -> bytes:
        return b"<Document><FIToFIPmtStsRpt>truncated"

    # --- routing -------------------------------------------------------------------------

    def hops_latency_s(self, bic: str) -> float:
        total, bank = 0.0, self.banks.get(bic)
        for _ in range(16):  # chains are checked at load time to be at most 8 hops
            if bank is None:
                break
            total += bank.latency_ms / 1000.0
            bank = self.banks.get(bank.via) if bank.via is not None else None
        return total

    @staticmethod
    def corridor(ct_debtor_bic: str, ct_creditor_bic: str) -> str:
        return f"{ct_debtor_bic[4:6]}-{ct_creditor_bic[4:6]}"

    def settles_at(self, now: float) -> float:
        sw = self.swift
        elapsed = now - self.origin
        cycle_start = self.origin + (elapsed // sw.cycle_s) * sw.cycle_s
        if now - cycle_start >= sw.cutoff_s:
            return cycle_start + sw.cycle_s + sw.settlement_delay_s
        return now + sw.settlement_delay_s

    def balance(self, account: str) -> int | None:
        """The debtor's balance (materialised on first use), None past the bound."""
        bal = self.balances.get(account)
        if bal is not None:
            return bal
        if len(self.balances) >= self.swift.max_accounts:
            return None
        sw = self.swift
        bal = sw.debtor_balances.get(account)
        if bal is None:
            span = max(0, sw.debtor_balance_max - sw.debtor_balance_min)
            bal = sw.debtor_balance_min + int(_unit(self.spec.seed, "debtor", account) * span)
        self.balances[account] = bal
        return bal

    # --- replies -------------------------------------------------------------------------

    def now_iso(self) -> str:
        """This instant as GrpHdr/CreDtTm text (UTC, to the millisecond)."""
        at = datetime.fromtimestamp(self._wall_anchor + anyio.current_time(), tz=UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _msg_id(self) -> str:
        self._msg_seq += 1
        return f"S{self._msg_seq:012d}"

    def report(self, record: SwiftRecord) -> bytes:
        ct = record.ct
        return iso20022.encode_pacs002(iso20022.status_report_for(
            ct, msg_id=self._msg_id(), created_at=self.now_iso(), status=record.status,
            reason=record.reason, additional_info=record.info))

    def reject_unbooked(self, ct: iso20022.CreditTransfer, reason: str, info: str | None = None
                        ) -> bytes:
        return iso20022.encode_pacs002(iso20022.status_report_for(
            ct, msg_id=self._msg_id(), created_at=self.now_iso(), status="RJCT",
            reason=reason, additional_info=info))

    # --- decisions -----------------------------------------------------------------------

    def rule(self, ct: iso20022.CreditTransfer) -> str | None:
        """The RJCT reason for ``ct``, or None to accept."""
        sw = self.swift
        if ct.currency not in sw.currencies:
            return "FF01"
        debtor_bic, creditor_bic = ct.debtor_agent_bic, ct.creditor_agent_bic
        if debtor_bic not in self.banks or creditor_bic not in self.banks:
            return "AG01"
        if self.corridor(debtor_bic, creditor_bic) in sw.forbidden_corridors:
            return "AG01"
        creditor = _account(ct.creditor)
        if creditor is None:
            return "AC01"
        seed = self.spec.seed
        if ((creditor_bic, creditor) in self._unknown
                or _unit(seed, "unknown", creditor) < sw.unknown_account_rate):
            return "AC01"
        if ((creditor_bic, creditor) in self._closed
                or _unit(seed, "closed", creditor) < sw.closed_account_rate):
            return "AC04"
        return None

    def accept_or_reject(self, record: SwiftRecord, now: float) -> None:
        ct = record.ct
        reason = self.rule(ct)
        if reason is None:
            debtor = _account(ct.debtor)
            if debtor is None:
                reason = "FF01"
            else:
                bal = self.balance(debtor)
                if bal is None:
                    self.bound_rejections += 1
                    record.status, record.reason = "RJCT", "MS03"
                    record.info = f"{TECHNICAL_PREFIX}96"
                    return
                if bal < ct.amount_minor:
                    reason = "AM04"
                else:
                    self.balances[debtor] = bal - ct.amount_minor
                    self.debited_total += ct.amount_minor
                    record.debited = ct.amount_minor
                    record.status = "ACCP"
                    record.settles_at = self.settles_at(now)
                    self._schedule(record)
                    return
        record.status, record.reason = "RJCT", reason

    def _schedule(self, record: SwiftRecord) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (record.settles_at, self._seq, record.ct.uetr))
        self._wake.set()

    async def background(self) -> None:
        """Settle accepted payments when their time comes; push ACSC to their connection."""
        while True:
            if not self._heap:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            at, _, uetr = self._heap[0]
            now = anyio.current_time()
            if at > now:
                self._wake = anyio.Event()
                # On a whole millisecond: uvloop's timers spin on a sub-ms remainder.
                with anyio.CancelScope(deadline=timer_deadline(at)):
                    await self._wake.wait()
                continue
            heapq.heappop(self._heap)
            record = self.book.get(uetr)
            if record is None or record.status not in ("ACCP", "ACSP"):
                continue
            record.status = "ACSC"
            record.settled_at = now
            self.keep(record)
            self.settled += 1
            self.settled_total += record.debited
            bic = record.ct.creditor_agent_bic
            self.credited_by_bank[bic] = self.credited_by_bank.get(bic, 0) + record.debited
            await self._notify(record)

    async def _notify(self, record: SwiftRecord) -> None:
        conn = self.connection(record.conn_id)
        if conn is None or not conn.alive:
            return
        if self.behaviour.connection_state(anyio.current_time()) != "up":
            return
        if await conn.send_within(self.frame(self.report(record)), NOTIFY_TIMEOUT_S):
            self.notifications_sent += 1

    # --- requests ------------------------------------------------------------------------

    def parse(self, conn: SimConnection, payload: bytes) -> SimRequest | bytes | None:
        try:
            message = iso20022.decode(payload)
        except CodecError as exc:
            self.malformed_requests += 1
            return self._format_error(payload, exc)
        if isinstance(message, iso20022.CreditTransfer):
            return _Pacs008(self, conn, message)
        if isinstance(message, iso20022.StatusRequest):
            return _Pacs028(self, message)
        self.malformed_requests += 1
        log.debug("%s: unexpected pacs.002 from a client", self.name)
        return None

    def _format_error(self, payload: bytes, exc: CodecError) -> bytes | None:
        """RJCT FF01 for a pacs.008 we cannot read, if its references can still be found."""
        uetr, e2e, msg_id = (_UETR_RE.search(payload), _E2E_RE.search(payload),
                             _MSGID_RE.search(payload))
        # Whatever else can still be read is carried back; the report's own time is now.
        instr, tx_id, created = (_INSTR_RE.search(payload), _TXID_RE.search(payload),
                                 _CREDTTM_RE.search(payload))
        log.debug("%s: unreadable request: %s", self.name, exc)
        if uetr is None or e2e is None or msg_id is None:
            return None
        try:
            return iso20022.encode_pacs002(iso20022.StatusReport(
                msg_id=self._msg_id(), created_at=self.now_iso(),
                orgnl_msg_id=msg_id.group(1).decode(), orgnl_end_to_end_id=e2e.group(1).decode(),
                orgnl_instr_id=_known(instr), orgnl_tx_id=_known(tx_id),
                orgnl_created_at=_known(created),
                orgnl_uetr=uetr.group(1).decode(), status="RJCT", reason="FF01",
                additional_info=exc.path[-105:] or None))
        except (CodecError, UnicodeDecodeError):
            # One of the optional references read back malformed: answer with the
            # mandatory ones rather than not at all.
            try:
                return iso20022.encode_pacs002(iso20022.StatusReport(
                    msg_id=self._msg_id(), created_at=self.now_iso(),
                    orgnl_msg_id=msg_id.group(1).decode(),
                    orgnl_end_to_end_id=e2e.group(1).decode(),
                    orgnl_uetr=uetr.group(1).decode(), status="RJCT", reason="FF01",
                    additional_info=exc.path[-105:] or None))
            except (CodecError, UnicodeDecodeError):
                return None


def _known(match: re.Match[bytes] | None) -> str | None:
    return match.group(1).decode() if match is not None else None


class _Pacs008(SimRequest):
    def __init__(self, network: SwiftNetwork, conn: SimConnection,
                 ct: iso20022.CreditTransfer) -> None:
        self.network = network
        self.conn = conn
        self.ct = ct
        self.route_key = (f"{network.corridor(ct.debtor_agent_bic, ct.creditor_agent_bic)}:"
                          f"{ct.creditor_agent_bic}")
        self.extra_latency_s = (network.hops_latency_s(ct.debtor_agent_bic)
                                + network.hops_latency_s(ct.creditor_agent_bic))
        self.record: SwiftRecord | None = None
        self.existing: SwiftRecord | None = None
        self.full = False
        self.fenced = False  # a pacs.028 already called it never received

    def admit(self) -> None:
        net, uetr = self.network, self.ct.uetr
        existing = net.book.get(uetr)
        if existing is not None:
            self.existing = existing
        elif uetr in net.fenced:
            self.fenced = True
        elif len(net.book) >= net.swift.max_payments:
            self.full = True
        else:
            self.record = SwiftRecord(self.ct, "PDNG", self.conn.id)
            net.book[uetr] = self.record

    def abandon(self) -> None:
        record = self.record
        if record is not None and record.status == "PDNG":
            self.network.book.pop(self.ct.uetr, None)

    def decide(self, technical_error: str | None) -> bytes | None:
        net = self.network
        if self.existing is not None:
            self.outcome = "status"
            return net.report(self.existing)
        if self.fenced:
            self.outcome = "status"  # the status a pacs.028 was given
            return net.reject_unbooked(self.ct, "NOOR", FENCED_INFO)
        record = self.record
        if record is None:
            net.bound_rejections += 1
            self.outcome = "error"
            return net.reject_unbooked(self.ct, "MS03", f"{TECHNICAL_PREFIX}96")
        if technical_error is not None:
            record.status, record.reason = "RJCT", "MS03"
            record.info = f"{TECHNICAL_PREFIX}{technical_error}"
            self.outcome = "error"
        else:
            net.accept_or_reject(record, anyio.current_time())
            self.outcome = ("approved" if record.status == "ACCP" else
                            "error" if record.info else "declined")
        net.keep(record)
        return net.report(record)

    def reject(self, code: str) -> bytes | None:
        self.outcome = "error"
        info = f"{TECHNICAL_PREFIX}{code}"
        record = self.record
        if record is not None and record.status == "PDNG":
            record.status, record.reason, record.info = "RJCT", "MS03", info
            self.network.keep(record)
            return self.network.report(record)
        if self.existing is None and record is None and not self.full:
            # Refused or overloaded before admission: a UETR already booked is answered
            # with its status, never an RJCT contradicting the book (and pacs.028).
            self.existing = self.network.book.get(self.ct.uetr)
        if self.existing is not None:
            return self.network.report(self.existing)
        if self.fenced:
            return self.network.reject_unbooked(self.ct, "NOOR", FENCED_INFO)
        return self.network.reject_unbooked(self.ct, "MS03", info)


class _Pacs028(SimRequest):
    def __init__(self, network: SwiftNetwork, request: iso20022.StatusRequest) -> None:
        self.network = network
        self.request = request
        record = network.book.get(request.orgnl_uetr)
        if record is not None:
            ct = record.ct
            self.route_key = (f"{network.corridor(ct.debtor_agent_bic, ct.creditor_agent_bic)}:"
                              f"{ct.creditor_agent_bic}")

    def decide(self, technical_error: str | None) -> bytes | None:
        # A status query answers from the book; technical errors never fake a status.
        self.outcome = "status"
        net, rq = self.network, self.request
        record = net.book.get(rq.orgnl_uetr)
        if record is not None:
            return net.report(record)
        # The answer stands (channels/fence.py): a pacs.008 still on its way, overtaken
        # by this inquiry on another connection, is not booked after it.
        net.fenced.add(rq.orgnl_uetr)
        return iso20022.encode_pacs002(iso20022.StatusReport(
            msg_id=net._msg_id(), created_at=net.now_iso(), orgnl_msg_id=rq.orgnl_msg_id,
            orgnl_end_to_end_id=rq.orgnl_end_to_end_id, orgnl_uetr=rq.orgnl_uetr,
            orgnl_instr_id=rq.orgnl_instr_id, orgnl_tx_id=rq.orgnl_tx_id,
            status="RJCT", reason="NOOR", additional_info="ORIGINAL NOT RECEIVED"))

    def reject(self, code: str) -> bytes | None:
        # "Unavailable" must not read as a status: stay silent, the client asks again.
        self.outcome = "error"
        return None
