"""QR scheme adapter: the switch side of the scheme API in switch/protocols/qrapi.py.

The scheme speaks the same framing as the switch's own wire protocol (switch/protocols/wire.py):
a 4-byte big-endian length, then msgpack. Requests are tagged on ``op``:

* :class:`QrPayRequest` -- pay the merchant of an EMVCo QR ``payload``. ``amount`` is the
  payer's (required for a static QR; a dynamic QR fixes it and must agree).
* :class:`QrCheckStatus` -- what became of ``ref``: answered from the scheme's book.

Both are answered by a :class:`QrReply` carrying the same ``ref``, which is also the
matching key. A pay request whose ``ref`` the scheme already booked is answered from the
book, so asking twice can never pay twice.

The scheme's reasons map onto the switch's DE39-style scale (switch/reasons.py); the
scheme's own code stays in ``network_ref`` as ``QR:<code>`` (approvals carry the
scheme's reference instead):

===================  ========  ======
scheme reason        outcome   reason
===================  ========  ======
INVALID_QR           declined  14
UNKNOWN_MERCHANT     declined  14
MERCHANT_CLOSED      declined  57
CURRENCY_MISMATCH    declined  57
AMOUNT_REQUIRED      declined  05
AMOUNT_MISMATCH      declined  05
OVER_LIMIT           declined  61
TECHNICAL_nn         failed    nn
not_found (status)   failed    91     the scheme never received the payment
pending (status)     unknown          keep waiting; the caller's timeout decides
===================  ========  ======
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
import anyio.abc
import msgspec

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent, ReplySink
from switch.adapters.links import Correlator, Link, PooledAdapter, exchange
from switch.adapters.specs import QrAdapterConfig
from switch.model import Channel, Payment
from switch.protocols.framing import FrameDecoder, frame
from switch.protocols.qrapi import (
    MAX_FRAME_BYTES,
    QrCheckStatus,
    QrPayRequest,
    QrReply,
    decode_reply,
    encode,
)

log = logging.getLogger(__name__)

_DECLINES: Final[dict[str, str]] = {
    "INVALID_QR": reasons.INVALID_CARD,
    "UNKNOWN_MERCHANT": reasons.INVALID_CARD,
    "MERCHANT_CLOSED": reasons.NOT_PERMITTED,
    "CURRENCY_MISMATCH": reasons.NOT_PERMITTED,
    "AMOUNT_REQUIRED": reasons.DO_NOT_HONOUR,
    "AMOUNT_MISMATCH": reasons.DO_NOT_HONOUR,
    "OVER_LIMIT": reasons.OVER_AMOUNT_LIMIT,
}


def reply_for(reply: QrReply) -> NetworkReply | None:
    """The switch's view of a scheme answer; None while the scheme says pending."""
    status = reply.status
    if status == "approved":
        return NetworkReply("approved", reasons.APPROVED, reply.scheme_ref or reply.ref)
    if status == "pending":
        return None
    code = reply.reason.split(":", 1)[0]
    ref = f"QR:{code}" if code else "QR"
    if status == "not_found":
        return NetworkReply("failed", reasons.ISSUER_UNAVAILABLE, "QR:NOT_FOUND")
    if status == "failed":
        # Two ASCII digits, never 00 (a failure is no approval): "TECHNICAL_00" was a
        # failure with the approval code, and str.isdigit() took non-ASCII digits.
        technical = code.removeprefix("TECHNICAL_")[:2]
        if not (len(technical) == 2 and technical.isascii() and technical.isdigit()
                and technical != reasons.APPROVED):
            technical = reasons.SYSTEM_MALFUNCTION
        return NetworkReply("failed", technical, ref)
    return NetworkReply("declined", _DECLINES.get(code, reasons.DO_NOT_HONOUR), ref)


class QrAdapter(PooledAdapter):
    """A :class:`~switch.adapters.base.ChannelAdapter` for one QR scheme endpoint.

    Counters: ``malformed``, ``unmatched``, ``late``, ``duplicates``. Start with
    ``await tg.start(adapter.run)``.
    """

    config: QrAdapterConfig

    def __init__(self, config: QrAdapterConfig) -> None:
        self.config = config
        self._probes = 0
        self._correlator: Correlator[str, QrReply] = Correlator(config.name, config.max_in_flight)
        self._pool = self._new_pool(
            new_splitter=lambda: FrameDecoder(MAX_FRAME_BYTES),
            on_frame=self._on_frame,
        )
        self.malformed = 0

    @property
    def channel(self) -> Channel:
        return "qr"

    async def authorize(self, payment: Payment) -> NetworkReply:
        qr = payment.qr
        if qr is None:
            raise NotSent(f"{self.name}: {payment.payment_id} is not a QR payment")
        ref = _ref(payment)
        request = QrPayRequest(ref=ref, payload=qr.payload, amount=payment.amount,
                               currency=payment.currency, payer=payment.payer.account)
        return await self._ask(ref, frame(encode(request)))

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        """``authorize`` without waiting: the scheme's answer reaches ``deliver``."""
        qr = payment.qr
        if qr is None:
            raise NotSent(f"{self.name}: {payment.payment_id} is not a QR payment")
        ref = _ref(payment)
        request = QrPayRequest(ref=ref, payload=qr.payload, amount=payment.amount,
                               currency=payment.currency, payer=payment.payer.account)
        self._start_exchange(ref, frame(encode(request)), token, deliver, reply_for)

    async def resolve(self, payment: Payment) -> NetworkReply:
        """Check-status: the scheme's book is the answer."""
        ref = _ref(payment)
        return await self._ask(ref, frame(encode(QrCheckStatus(ref))))

    async def probe(self) -> bool:
        """Active health check: check-status of a reference the scheme has never seen;
        any answer proves it is reading and answering."""
        self._probes += 1
        ref = f"PROBE-{self._probes}"
        try:
            await self._ask(ref, frame(encode(QrCheckStatus(ref))))
        except NotSent:
            return False
        return True

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _ask(self, ref: str, data: bytes) -> NetworkReply:
        link = self._pool.pick()
        reply = reply_for(await exchange(link, self._correlator, ref, data))
        if reply is None:
            # Pending at the scheme: the caller's timeout bounds the wait.
            await anyio.sleep_forever()
            raise AssertionError("unreachable")
        return reply

    def _on_frame(self, payload: bytes, link: Link) -> None:
        try:
            reply = decode_reply(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.malformed += 1
            log.debug("%s: malformed answer dropped: %s", self.name, exc)
            return
        delivery = self._correlator.deliver(reply.ref, reply)
        if delivery != "matched":
            log.debug("%s: %s answer for %s dropped", self.name, delivery, reply.ref)


def _ref(payment: Payment) -> str:
    qr = payment.qr
    ref = (qr.qr_reference if qr is not None else "") or payment.payment_id
    return ref[:64]
