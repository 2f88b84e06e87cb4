"""SWIFT-style adapter: pacs.008 out, pacs.002 back, pacs.028 to ask; 4-byte framed XML.

Frames are the switch's own wire framing (4-byte big-endian length, then the document).
Answers are matched by UETR, which every payment carries and every pacs.002 echoes as
OrgnlUETR. The network first answers ACCP (accepted) or RJCT, and later pushes an ACSC
(settled) report on the same connection: that one is counted in ``settlements``, not as a
stray answer.

Outcome mapping (onto the switch's DE39-style scale, switch/reasons.py):

=========================  ========  ======  ===========================================
pacs.002                   outcome   reason  note
=========================  ========  ======  ===========================================
ACCP / ACSP / ACSC         approved  00      network_ref = UETR
RJCT AC01 / AC04           declined  14      unknown / closed creditor account
RJCT AM04                  declined  51      insufficient funds
RJCT AG01                  declined  57      forbidden corridor or unreachable agent
RJCT FF01                  failed    96      the network could not read our message
RJCT MS03                  declined  05      unless AddtlInf is "TECHNICAL ERROR nn":
                                             then failed with nn (the network's own
                                             technical refusal, nothing was booked)
RJCT NOOR (to pacs.028)    failed    91      the network never received the payment
other RJCT                 declined  05
PDNG                       unknown           keep waiting; the caller's timeout decides
=========================  ========  ======  ===========================================

A rejection keeps the network's own code in ``network_ref`` as ``RJCT:<code>``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Final

import anyio
import anyio.abc

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent, ReplySink
from switch.adapters.links import Correlator, Link, PooledAdapter, exchange
from switch.adapters.specs import SwiftAdapterConfig
from switch.clock import Clock
from switch.model import Channel, Party, Payment
from switch.protocols import iso20022
from switch.protocols.errors import CodecError
from switch.protocols.framing import FrameDecoder, frame

__all__ = [
    "TECHNICAL_PREFIX",
    "SwiftAdapter",
    "SwiftAdapterConfig",
    "credit_transfer",
    "reply_for_status",
    "technical_reason",
]

log = logging.getLogger(__name__)

#: AddtlInf prefix with which the simulated network marks a technical (not business) RJCT.
TECHNICAL_PREFIX: Final = "TECHNICAL ERROR "
#: Reason the network gives a pacs.028 about a payment it never received.
NOT_RECEIVED: Final = "NOOR"
#: Frames above this are refused (a pacs message is a few KiB).
MAX_FRAME_BYTES: Final = iso20022.MAX_XML_BYTES

_REJECT_REASONS: Final[dict[str, tuple[str, str]]] = {
    "AC01": ("declined", reasons.INVALID_CARD),
    "AC04": ("declined", reasons.INVALID_CARD),
    "AM04": ("declined", reasons.INSUFFICIENT_FUNDS),
    "AG01": ("declined", reasons.NOT_PERMITTED),
    "FF01": ("failed", reasons.SYSTEM_MALFUNCTION),
    "MS03": ("declined", reasons.DO_NOT_HONOUR),
}


def _party(party: Party) -> iso20022.Party:
    name = party.name or party.account
    try:
        iban = iso20022.check_iban(party.account, "account")
    except CodecError:
        return iso20022.Party(name=name, account_id=party.account)
    return iso20022.Party(name=name, iban=iban)


def credit_transfer(
    payment: Payment, settlement_method: iso20022.SettlementMethod = "INDA",
    charge_bearer: iso20022.ChargeBearer = "SHAR",
) -> iso20022.CreditTransfer:
    """The pacs.008 transaction for ``payment`` (deterministic: no clock is read)."""
    swift = payment.swift
    if swift is None:
        raise CodecError("not a SWIFT payment", "Document")
    at = payment.received_at
    return iso20022.CreditTransfer(
        msg_id=payment.payment_id[:35],
        created_at=iso_time(at),
        settlement_method=settlement_method,
        end_to_end_id=swift.end_to_end_id or payment.payment_id[:35],
        # Our reference towards the next agent (PmtId/InstrId); the payment id is unique
        # per switch and stable, so a status inquiry after a restart names the same one.
        instr_id=payment.payment_id[:35],
        tx_id=payment.payment_id[:35],
        uetr=swift.uetr,
        amount_minor=payment.amount,
        currency=payment.currency,
        settlement_date=at.date().isoformat(),
        charge_bearer=charge_bearer,
        debtor=_party(payment.payer),
        debtor_agent_bic=swift.debtor_agent,
        creditor_agent_bic=swift.creditor_agent,
        creditor=_party(payment.payee),
        remittance=swift.remittance or None,
    )


def reply_for_status(report: iso20022.StatusReport) -> NetworkReply | None:
    """The switch's view of a pacs.002; None while it is still pending."""
    status = report.status
    if status in ("ACCP", "ACSP", "ACSC"):
        return NetworkReply("approved", reasons.APPROVED, report.orgnl_uetr)
    if status == "PDNG":
        return None
    code = report.reason or "MS03"
    ref = f"RJCT:{code}"
    info = report.additional_info or ""
    if code == "MS03" and info.startswith(TECHNICAL_PREFIX):
        technical = technical_reason(info[len(TECHNICAL_PREFIX):].strip()[:2])
        return NetworkReply("failed", technical, ref)
    if code == NOT_RECEIVED:
        return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE, ref)
    outcome, reason = _REJECT_REASONS.get(code, ("declined", reasons.DO_NOT_HONOUR))
    return NetworkReply("failed" if outcome == "failed" else "declined", reason, ref)


def technical_reason(code: str) -> str:
    """The network's technical refusal code on the switch's DE39 scale: two ASCII digits,
    never 00 (a failure is no approval); anything else is 96.

    AddtlInf is the network's free text: "TECHNICAL ERROR e!" made a failure
    with reason "e!", and "TECHNICAL ERROR 00" a failure with the approval code.
    """
    if len(code) == 2 and code.isascii() and code.isdigit() and code != reasons.APPROVED:
        return code
    return reasons.SYSTEM_MALFUNCTION


def iso_time(at: datetime) -> str:
    """GrpHdr/CreDtTm text: UTC to the second, as the pacs.008 builder writes it."""
    utc = at if at.tzinfo is None else at.astimezone(UTC)  # naive means UTC here
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


class SwiftAdapter(PooledAdapter):
    """A :class:`~switch.adapters.base.ChannelAdapter` for one SWIFT-style network.

    Counters: ``malformed``, ``unmatched``, ``late``, ``duplicates``, ``settlements``
    (ACSC reports pushed after the payment was answered). Start with
    ``await tg.start(adapter.run)``.
    """

    config: SwiftAdapterConfig

    def __init__(self, config: SwiftAdapterConfig) -> None:
        self.config = config
        self._correlator: Correlator[str, iso20022.StatusReport] = Correlator(
            config.name, config.max_in_flight
        )
        self._pool = self._new_pool(
            new_splitter=lambda: FrameDecoder(MAX_FRAME_BYTES),
            on_frame=self._on_frame,
        )
        self._inquiries = 0
        self._clock: Clock | None = None
        self.malformed = 0
        self.settlements = 0
        #: UETR -> latest status seen, for payments this adapter has sent (bounded).
        self.last_status: dict[str, str] = {}

    @property
    def channel(self) -> Channel:
        return "swift"

    async def authorize(self, payment: Payment) -> NetworkReply:
        try:
            ct = credit_transfer(payment, self.config.settlement_method,
                                 self.config.charge_bearer)
            data = frame(iso20022.encode_pacs008(ct))
        except CodecError as exc:
            log.warning("%s: cannot encode %s: %s", self.name, payment.payment_id, exc)
            raise NotSent(f"{self.name}: cannot encode: {exc}") from None
        return await self._ask(ct.uetr, data)

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        """``authorize`` without waiting: the pacs.002 reaches ``deliver`` as an event
        (a PDNG is not an answer: the caller's timeout then makes it unknown)."""
        try:
            ct = credit_transfer(payment, self.config.settlement_method,
                                 self.config.charge_bearer)
            data = frame(iso20022.encode_pacs008(ct))
        except CodecError as exc:
            log.warning("%s: cannot encode %s: %s", self.name, payment.payment_id, exc)
            raise NotSent(f"{self.name}: cannot encode: {exc}") from None
        self._start_exchange(ct.uetr, data, token, deliver, reply_for_status)

    async def resolve(self, payment: Payment) -> NetworkReply:
        """pacs.028 status inquiry; the network's book is the answer."""
        # A CodecError here is permanent (the payment never changes): the resolver
        # quarantines the payment instead of retrying it.
        ct = credit_transfer(payment, self.config.settlement_method, self.config.charge_bearer)
        self._inquiries += 1
        # The inquiry is a message of its own, created now, not when the payment was.
        request = iso20022.status_request_for(
            ct, msg_id=f"Q{self._inquiries}-{payment.payment_id}"[:35], created_at=self._now())
        data = frame(iso20022.encode_pacs028(request))
        return await self._ask(ct.uetr, data)

    async def probe(self) -> bool:
        """Active health check: a pacs.028 for a UETR the network has never seen.

        Any pacs.002 back (RJCT, not found) proves the network is reading and answering.
        """
        self._inquiries += 1
        uetr = str(uuid.UUID(int=self._inquiries, version=4))
        request = iso20022.StatusRequest(
            msg_id=f"PROBE{self._inquiries}", created_at=self._now(),
            orgnl_msg_id=f"PROBE{self._inquiries}", orgnl_end_to_end_id="PROBE",
            orgnl_uetr=uetr)
        try:
            await self._ask(uetr, frame(iso20022.encode_pacs028(request)))
        except NotSent:
            return False
        return True

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _now(self) -> str:
        # Anchored on first use, inside the event loop (time comes from anyio, see clock.py).
        if self._clock is None:
            self._clock = Clock()
        return iso_time(self._clock.wall())

    async def _ask(self, uetr: str, data: bytes) -> NetworkReply:
        link = self._pool.pick()
        while True:
            report = await exchange(link, self._correlator, uetr, data)
            reply = reply_for_status(report)
            if reply is not None:
                return reply
            # PDNG: the network holds it; the caller's timeout bounds the wait.
            await anyio.sleep_forever()

    def _on_frame(self, payload: bytes, link: Link) -> None:
        try:
            report = iso20022.decode_pacs002(payload)
        except CodecError as exc:
            self.malformed += 1
            log.debug("%s: malformed answer dropped: %s", self.name, exc)
            return
        uetr = report.orgnl_uetr
        if len(self.last_status) < 1_000_000 or uetr in self.last_status:
            self.last_status[uetr] = report.status
        if report.status == "ACSC" and not self._correlator.waiting(uetr):
            # The settlement report the network pushes after its first answer: expected.
            self.settlements += 1
            return
        delivery = self._correlator.deliver(uetr, report)
        if delivery != "matched":
            log.debug("%s: %s status %s for %s dropped", self.name, delivery, report.status, uetr)
