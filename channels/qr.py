"""Simulated QR scheme: EMVCo merchant-presented QR payments over 4-byte framed msgpack.

The API (`QrPayRequest`, `QrCheckStatus`, `QrReply`) is defined with the switch's adapter in
switch/adapters/qr.py, so both sides share one definition.

A payment names its merchant through the QR payload: the merchant account template
(IDs 26-51) whose globally unique id (sub-tag 00) is this scheme's ``gui`` carries the
merchant id in sub-tag 01. The directory holds merchants "M0000000" up to
``merchants - 1``; a share of them (drawn from the seed, or listed) is closed.

Rules, in order: the payload must parse and validate (switch.protocols.emvqr) -> else
INVALID_QR with the codec's reason; the merchant must be in the directory (UNKNOWN_MERCHANT)
and open (MERCHANT_CLOSED); the payment's currency must be the QR's (tag 53,
CURRENCY_MISMATCH); a dynamic QR (point of initiation 12) fixes the amount (tag 54), and a
payer amount that differs is AMOUNT_MISMATCH; a static QR (11) needs the payer's amount
(AMOUNT_REQUIRED); the amount must not exceed ``max_amount_minor`` (OVER_LIMIT).

The book is keyed by ``ref``: the reference is booked as pending on arrival, decided in
service, and a second pay request with the same ``ref`` is answered from the book, never
paid twice. Check-status answers from the book: approved / declined / failed / pending,
or not_found for a payment the scheme never received, which then stands: a pay request
of that ref arriving later is answered not_found too, never paid (channels/fence.py).
Technical errors (behaviour model) are "failed" with reason TECHNICAL_nn; a check-status
is never answered with one.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Final

import msgspec

from channels.behaviour import Behaviour
from channels.books import QR_KIND, BookEntry, BookStore
from channels.config import NetworkSpec, QrSpec
from channels.fence import Fence
from channels.metrics import ChannelMetrics
from channels.tcp import SimConnection, SimRequest, SimServer
from switch.currency import CURRENCIES
from switch.protocols import emvqr
from switch.protocols.errors import CodecError
from switch.protocols.framing import FrameDecoder, frame
from switch.protocols.qrapi import (
    MAX_FRAME_BYTES,
    QrCheckStatus,
    QrPayRequest,
    QrReply,
    decode_request,
    encode,
)

__all__ = ["QrNetwork"]

log = logging.getLogger(__name__)

_DYNAMIC: Final = "12"


def _unit(seed: int, label: str, value: str) -> float:
    digest = hashlib.sha256(f"{seed}:{label}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _minor(amount: str, exponent: int) -> int | None:
    whole, _, frac = amount.partition(".")
    if len(frac) > exponent:
        return None
    minor: int = int(whole or "0") * 10**exponent + int(frac.ljust(exponent, "0") or "0")
    return minor


class _StoredPay(msgspec.Struct, array_like=True, frozen=True):
    """A decided payment as channels/books.py keeps it: the answer the book gives, and
    for an approval what the settlement file needs (merchant, currency, amount)."""

    reply: QrReply
    merchant: str = ""
    currency: str = ""
    amount: int = 0


_stored_decoder: Final = msgspec.msgpack.Decoder(_StoredPay)


class QrNetwork(SimServer):
    def __init__(self, spec: NetworkSpec, behaviour: Behaviour, metrics: ChannelMetrics) -> None:
        super().__init__(spec, behaviour, metrics)
        self.qr: QrSpec = spec.qr or QrSpec()
        self._closed = frozenset(self.qr.closed_merchants)
        self._numeric = {f"{num:03d}": (alpha, exp) for alpha, (num, exp) in CURRENCIES.items()}
        self.book: dict[str, QrReply] = {}
        #: Refs a check-status was answered not_found for: a pay request of one arriving
        #: later is answered not_found too, never paid.
        self.fenced = Fence()
        #: merchant id -> total credited (minor units), for approved payments.
        self.credited: dict[str, int] = {}
        self.amounts: dict[str, int] = {}
        #: ref -> (merchant, currency) of approved payments, for the settlement CSV.
        self.settlement_keys: dict[str, tuple[str, str]] = {}
        self.bound_rejections = 0
        self.malformed_requests = 0

    # --- the books on disk (channels/books.py) ------------------------------------------

    def keep(self, reply: QrReply) -> None:
        """Make a decided payment durable before its answer is sent."""
        if self.books is None or reply.status == "pending":
            return
        ref = reply.ref
        merchant, currency = self.settlement_keys.get(ref, ("", ""))
        self.books.put(self.name, QR_KIND, ref, msgspec.msgpack.encode(
            _StoredPay(reply, merchant, currency, self.amounts.get(ref, 0))))

    def restore(self, store: BookStore) -> list[BookEntry]:
        """Rebuild the book, the merchants' credits and the fences from ``store`` and keep
        every change there from now on; returns the payments' entries read."""
        assert not self.book and not len(self.fenced), "restore into an empty book only"
        payments = list(store.entries(self.name, QR_KIND))
        for entry in payments:
            stored = _stored_decoder.decode(entry.value)
            reply = stored.reply
            assert reply.ref == entry.key and reply.status != "pending", entry.key
            self.book[reply.ref] = reply
            if reply.status == "approved":
                self.amounts[reply.ref] = stored.amount
                self.settlement_keys[reply.ref] = (stored.merchant, stored.currency)
                self.credited[stored.merchant] = (self.credited.get(stored.merchant, 0)
                                                  + stored.amount)
        self.fenced.keep_in(store, self.name)
        assert len(self.book) == len(payments)
        self.books = store
        return payments

    def new_splitter(self) -> FrameDecoder:
        return FrameDecoder(MAX_FRAME_BYTES)

    def frame(self, payload: bytes) -> bytes:
        return frame(payload)

    def garbage(self) -> bytes:
        return b"\xc1\xc1 not msgpack"

    def merchant_of(self, qr: emvqr.MerchantQr) -> str | None:
        for account in qr.merchant_accounts:
            if account.gui == self.qr.gui:
                for sub in account.template:
                    if sub.tag == "01":
                        return sub.value
        return None

    def merchant_status(self, merchant: str) -> str | None:
        """None if open, else the decline reason."""
        if not (len(merchant) == 8 and merchant[0] == "M" and merchant[1:].isdigit()
                and int(merchant[1:]) < self.qr.merchants):
            return "UNKNOWN_MERCHANT"
        if merchant in self._closed or _unit(self.spec.seed, "closed", merchant) < (
                self.qr.closed_merchant_rate):
            return "MERCHANT_CLOSED"
        return None

    def rule(self, request: QrPayRequest, qr: emvqr.MerchantQr | CodecError
             ) -> tuple[str, str | None, int]:
        """(decline reason or "", merchant, amount to book)."""
        if isinstance(qr, CodecError):
            return f"INVALID_QR: {qr}"[:200], None, 0
        merchant = self.merchant_of(qr)
        if merchant is None:
            return "UNKNOWN_MERCHANT", None, 0
        closed = self.merchant_status(merchant)
        if closed is not None:
            return closed, merchant, 0
        currency = self._numeric.get(qr.currency)
        if currency is None or currency[0] != request.currency:
            return "CURRENCY_MISMATCH", merchant, 0
        exponent = currency[1]
        if qr.initiation == _DYNAMIC:
            fixed = _minor(qr.amount, exponent) if qr.amount is not None else None
            if not fixed:  # absent, finer than the currency's minor unit, or zero
                return "INVALID_QR: tag 54: a dynamic QR must carry its amount", merchant, 0
            if request.amount is not None and request.amount != fixed:
                return "AMOUNT_MISMATCH", merchant, 0
            amount = fixed
        else:
            if request.amount is None:
                return "AMOUNT_REQUIRED", merchant, 0
            amount = request.amount
        if amount > self.qr.max_amount_minor:
            return "OVER_LIMIT", merchant, 0
        return "", merchant, amount

    def parse(self, conn: SimConnection, payload: bytes) -> SimRequest | bytes | None:
        try:
            request = decode_request(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.malformed_requests += 1
            log.debug("%s: undecodable request: %s", self.name, exc)
            return None
        if isinstance(request, QrCheckStatus):
            return _CheckStatus(self, request)
        return _Pay(self, request)


class _Pay(SimRequest):
    def __init__(self, network: QrNetwork, request: QrPayRequest) -> None:
        self.network = network
        self.request = request
        self.existing: QrReply | None = None
        self.booked = False
        self.route_key = ""
        self.parsed: emvqr.MerchantQr | CodecError
        try:
            self.parsed = emvqr.parse(request.payload,
                                      lenient_lengths=network.qr.lenient_lengths)
        except CodecError as exc:
            self.parsed = exc
        else:
            self.route_key = network.merchant_of(self.parsed) or ""

    def admit(self) -> None:
        net, ref = self.network, self.request.ref
        existing = net.book.get(ref)
        if existing is not None:
            self.existing = existing
        elif ref in net.fenced:
            self.existing = QrReply(ref=ref, status="not_found")  # never in the book
        elif len(net.book) < net.qr.max_payments:
            net.book[ref] = QrReply(ref=ref, status="pending")
            self.booked = True

    def abandon(self) -> None:
        net, ref = self.network, self.request.ref
        if self.booked and net.book.get(ref, QrReply(ref=ref, status="failed")).status == "pending":
            del net.book[ref]

    def _book(self, reply: QrReply) -> bytes:
        if self.booked:
            self.network.book[reply.ref] = reply
            self.network.keep(reply)
        return encode(reply)

    def decide(self, technical_error: str | None) -> bytes | None:
        net, request = self.network, self.request
        ref = request.ref
        if self.existing is not None:
            self.outcome = "status"
            return encode(self._current())
        if not self.booked:
            net.bound_rejections += 1
            self.outcome = "error"
            return encode(QrReply(ref=ref, status="failed", reason="TECHNICAL_96"))
        if technical_error is not None:
            self.outcome = "error"
            return self._book(QrReply(ref=ref, status="failed",
                                      reason=f"TECHNICAL_{technical_error}"))
        reason, merchant, amount = net.rule(request, self.parsed)
        if reason:
            self.outcome = "declined"
            return self._book(QrReply(ref=ref, status="declined", reason=reason))
        assert merchant is not None
        net.credited[merchant] = net.credited.get(merchant, 0) + amount
        net.amounts[ref] = amount
        net.settlement_keys[ref] = (merchant, request.currency)
        self.outcome = "approved"
        scheme_ref = hashlib.sha256(f"{net.spec.seed}:{ref}".encode()).hexdigest()[:16].upper()
        return self._book(QrReply(ref=ref, status="approved", scheme_ref=scheme_ref))

    def _current(self) -> QrReply:
        """The book's answer for this duplicate now: the one seen on arrival may have been
        "pending" for an original decided since (replies are replaced, not updated)."""
        assert self.existing is not None
        return self.network.book.get(self.request.ref, self.existing)

    def reject(self, code: str) -> bytes | None:
        self.outcome = "error"
        ref = self.request.ref
        if self.existing is None and not self.booked:
            # Refused or overloaded before admission: a reference the book already holds
            # is still answered from it. "failed" would contradict the book (and a payment
            # the scheme approved would read as failed to the switch).
            self.existing = self.network.book.get(ref)
        if self.existing is not None:
            return encode(self._current())
        return self._book(QrReply(ref=ref, status="failed", reason=f"TECHNICAL_{code}"))


class _CheckStatus(SimRequest):
    def __init__(self, network: QrNetwork, request: QrCheckStatus) -> None:
        self.network = network
        self.request = request

    def decide(self, technical_error: str | None) -> bytes | None:
        self.outcome = "status"
        net, ref = self.network, self.request.ref
        reply = net.book.get(ref)
        if reply is not None:
            return encode(reply)
        # The answer stands (channels/fence.py): a pay request of this ref still on its
        # way, overtaken by this check on another connection, is never paid after it.
        net.fenced.add(ref)
        return encode(QrReply(ref=ref, status="not_found"))

    def reject(self, code: str) -> bytes | None:
        # "Unavailable" must not read as a status: say pending, the client asks again.
        self.outcome = "error"
        return encode(QrReply(ref=self.request.ref, status="pending"))
