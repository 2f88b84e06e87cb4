"""Card network adapter: ISO 8583 (1987, ASCII) over TCP with a 2-byte length prefix.

Requests go out as 0100 authorizations on a small pool of persistent connections; the
answers come back on the same connection in any order and are matched by the jPOS QMUX
key (MTI class, DE11 STAN, DE41 terminal). Each connection signs on (0800/001) before it
carries payments and is echo-tested (0800/301) every ``echo_interval_s``; one that stops
answering echoes is dropped and redialled.

An unknown outcome is resolved by a reversal: 0400 carrying DE90 built from the original
0100, repeated as 0401 (same STAN and terminal, so it matches the same answer) when no
0410 comes in time. The issuer answers 0410 even when it never saw the original, so a
reversal always ends in "reversed", and releases the hold if there was one.

The original 0100 is rebuilt from the :class:`~switch.model.Payment` alone (DE7 and the
local date and time are the payment's receipt time, DE11 its STAN), so a reversal after a
restart names exactly the message that was sent before it.

PAN. The switch never keeps a clear PAN (only a keyed token, the BIN, the last four and
the length), so DE2 carries a *network PAN*: a surrogate with the card's length, BIN and
last four, middle digits derived from the token and one of them chosen so the whole
passes the Luhn check (an issuer answers 14 to a PAN that fails it). It is stable per
card, which is all the simulated issuers need to key their accounts; see
:func:`network_pan`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from datetime import datetime
from typing import Final

import anyio
import anyio.abc

from switch import reasons
from switch.adapters.base import NetworkReply, NotSent, ReplySink
from switch.adapters.links import Correlator, Link, PooledAdapter, exchange
from switch.adapters.specs import CardAdapterConfig
from switch.adapters.trace import TraceNumbers, TraceStoreError
from switch.clock import Clock
from switch.currency import numeric_code
from switch.model import CardRef, Channel, Payment, luhn_ok
from switch.protocols import iso8583
from switch.protocols.errors import CodecError

__all__ = ["CardAdapter", "CardAdapterConfig", "network_pan", "original_request"]

log = logging.getLogger(__name__)

MatchKey = tuple[str, str, str]

#: Response codes meaning "the issuer did not process this" rather than a decision.
TECHNICAL_CODES: Final = frozenset({"91", "96", "68", "94"})


def network_pan(card: CardRef) -> str:
    """The PAN the switch sends in DE2: Luhn-valid, the card's length, BIN and last four.

    The middle digits come from the card's token (stable per card, so the issuer keys the
    same account every time); the last middle digit is then chosen to make the Luhn sum
    come out, because the check digit itself belongs to the last four, which must stay.
    One free position always suffices: doubling is a bijection on digits mod 10.

    Built around ``card.bin`` as journaled: 6 digits before cards kept 8 (PANs of 16 or
    more, eb0daa5), so such a card's DE2 changed then, and a card simulator running
    across that upgrade holds its earlier authorizations on another account. Reversals
    and advices of older records rebuild the DE2 their original carried.
    """
    return _network_pan(card.bin, card.token, card.last4, card.pan_length)


@functools.lru_cache(maxsize=8192)
def _network_pan(bin_: str, token: str, last4: str, length: int) -> str:
    """:func:`network_pan` of one card's parts: a pure function, so cached (a card pays
    and is reversed many times; a SHA-256 and up to ten Luhn sums each time were a tenth
    of a simulated payment). CodecError is raised anew on every call (never cached)."""
    middle_len = length - len(bin_) - len(last4)
    if not 12 <= length <= 19 or middle_len < 1:
        raise CodecError(f"cannot build a {length}-digit PAN around BIN {bin_!r} and "
                         f"last four {last4!r}", "DE2")
    digest = hashlib.sha256(token.encode()).digest()
    free = middle_len - 1
    stem = f"{int.from_bytes(digest[:8], 'big') % 10**free:0{free}d}" if free else ""
    for fix in "0123456789":
        pan = f"{bin_}{stem}{fix}{last4}"
        if luhn_ok(pan):
            return pan
    # Only when the BIN or the last four are not digits can no digit make the sum work.
    raise CodecError(f"BIN {bin_!r} or last four {last4!r} is not all digits", "DE2")


def original_request(payment: Payment, acquirer_id: str) -> iso8583.IsoMessage:
    """The 0100 for ``payment``; deterministic, so a reversal can rebuild it any time."""
    card = payment.card
    if card is None:
        raise CodecError("not a card payment", "DE2")
    try:
        currency = f"{numeric_code(payment.currency):03d}"
    except KeyError:
        raise CodecError(f"unknown currency {payment.currency!r}", "DE49") from None
    at = payment.received_at
    txn = iso8583.CardTransaction(
        pan=network_pan(card),
        amount_minor=payment.amount,
        currency=currency,
        stan=int(card.stan or "0"),
        transmitted_at=at,
        terminal_id=card.terminal_id,
        merchant_id=card.merchant_id,
        acquirer_id=acquirer_id,
        expiry=card.expiry or None,
        mcc=card.mcc or None,
        pos_entry_mode="010",
        rrn=card.rrn or None,
    )
    return iso8583.authorization_request(txn)


class CardAdapter(PooledAdapter):
    """A :class:`~switch.adapters.base.ChannelAdapter` for one card network endpoint.

    Counters (attributes): ``malformed`` answers that did not decode; ``unmatched``,
    ``late``, ``duplicates`` from the correlator; ``echo_ok`` / ``echo_failed``;
    ``reversals_sent``. Start with ``await tg.start(adapter.run)``.
    """

    config: CardAdapterConfig

    def __init__(self, config: CardAdapterConfig, trace: TraceNumbers | None = None) -> None:
        self.config = config
        #: DE11 for reversals and 0800s: the same sequence the pipeline numbers 0100s from
        #: (see switch/adapters/trace.py); the switch binds its own with :meth:`use_trace`.
        self.trace = trace if trace is not None else TraceNumbers()
        self._correlator: Correlator[MatchKey, iso8583.IsoMessage] = Correlator(
            config.name, config.max_in_flight
        )
        self._pool = self._new_pool(
            new_splitter=iso8583.FrameDecoder,
            on_frame=self._on_frame,
            handshake=self._sign_on if config.sign_on else None,
            keepalive=self._keepalive,
        )
        self._clock: Clock | None = None
        self.malformed = 0
        self.echo_ok = 0
        self.echo_failed = 0
        self.reversals_sent = 0
        #: The host's own 0800s answered 0810.
        self.network_requests = 0

    # --- ChannelAdapter -----------------------------------------------------------------

    @property
    def channel(self) -> Channel:
        return "card"

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect and keep connected until :meth:`aclose`."""
        self._clock = Clock()
        await self._pool.run(task_status=task_status)

    async def authorize(self, payment: Payment) -> NetworkReply:
        try:
            request = original_request(payment, self.config.acquirer_id)
            data = iso8583.frame(iso8583.encode(request))
        except CodecError as exc:
            # Our own failure to build the message, not the network's: another endpoint
            # would fail the same way, and it must never count as "not sent" (which led
            # to stand-in approving a payment no issuer saw). Decline it as a format error.
            log.error("%s: cannot encode %s: %s", self.name, payment.payment_id, exc)
            return NetworkReply("declined", reasons.FORMAT_ERROR, f"format error: {exc}")
        link = self._pool.pick()
        answer = await exchange(link, self._correlator, iso8583.match_key(request), data)
        return _reply_for(answer)

    def start(self, token: int, payment: Payment, deliver: ReplySink) -> None:
        """``authorize`` without waiting: the 0110 reaches ``deliver`` as an event."""
        try:
            request = original_request(payment, self.config.acquirer_id)
            data = iso8583.frame(iso8583.encode(request))
        except CodecError as exc:
            log.warning("%s: cannot encode %s: %s", self.name, payment.payment_id, exc)
            raise NotSent(f"{self.name}: cannot encode: {exc}") from None
        self._start_exchange(iso8583.match_key(request), data, token, deliver, _reply_for)

    async def resolve(self, payment: Payment) -> NetworkReply:
        """Reverse the payment: 0400, then 0401 repeats; the 0410 means nothing is owed.

        Raises CodecError when the reversal cannot be built or encoded: that is permanent
        (the payment never changes), so the resolver quarantines it instead of retrying.
        """
        original = original_request(payment, self.config.acquirer_id)
        try:
            stan = self._next_stan()
        except TraceStoreError as exc:
            # No STAN now (the sidecar cannot be written: a full disk) is a reversal not
            # sent, retried on schedule; raised as it was, the resolver quarantined the
            # payment to an operator until a restart, an accepted reversal included.
            raise NotSent(f"{self.name}: no trace number for the reversal: {exc}") from None
        reversal = iso8583.reversal_request(
            original,
            stan=stan,
            transmitted_at=self._wall(),
            reason_code=reasons.RESPONSE_TOO_LATE,
        )
        iso8583.encode(reversal)  # a poison payment fails here, before the send loop
        key = iso8583.match_key(reversal)
        message = reversal
        for attempt in range(self.config.reversal_repeats + 1):
            link = self._pool.pick()
            self.reversals_sent += 1
            data = iso8583.frame(iso8583.encode(message))
            with anyio.move_on_after(self.config.reversal_timeout_s):
                answer = await exchange(link, self._correlator, key, data)
                code = answer.response_code or ""
                if code == reasons.APPROVED:
                    ref = (original.get(37) or "").strip()
                    return NetworkReply("reversed", reasons.APPROVED, ref)
                log.info("%s: reversal of %s answered %s (attempt %d)",
                         self.name, payment.payment_id, code, attempt + 1)
                await anyio.sleep(self.config.reversal_timeout_s / 4)
            message = iso8583.repeat(reversal)
        # No answer to any repeat: still unknown. Wait for the caller's timeout; the
        # resolver tries again later (a reversal is idempotent at the issuer).
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def probe(self) -> bool:
        """Active health check: one 0800 echo; True if the network answered 00."""
        try:
            link = self._pool.pick()
        except NotSent:
            return False
        return await self._network(link, iso8583.NetworkCode.ECHO)

    async def advise(self, payment: Payment, auth_code: str) -> str | None:
        """Send the 0120 advice of a stand-in approval; the 0130's DE39 once the issuer
        answered ("00" taken, anything else: the issuer refused the stand-in decision),
        None when the answer was not a 0130.

        Built from the same deterministic original request as :meth:`authorize`, so the
        issuer books the hold under the key the authorization would have had.

        Raises :class:`CodecError` when the advice cannot be encoded: that is permanent
        (the payment never changes), so the caller quarantines the advice instead of
        retrying it. Once the encode sat outside this ``try`` and its error ended the
        switch, again after every restart.
        """
        try:
            original = original_request(payment, self.config.acquirer_id)
            advice = iso8583.authorization_advice(
                original, response_code=reasons.APPROVED, auth_code=auth_code)
            data = iso8583.frame(iso8583.encode(advice))
        except CodecError as exc:
            log.error("%s: cannot encode the advice of %s: %s",
                      self.name, payment.payment_id, exc)
            raise
        link = self._pool.pick()
        answer = await exchange(link, self._correlator, iso8583.match_key(advice), data)
        if answer.mti != "0130":
            return None
        return (answer.fields.get(39) or reasons.APPROVED).strip()

    async def aclose(self) -> None:
        """Sign off (best effort, at most 0.2 s, even when the caller is being cancelled)."""
        try:
            try:
                link = self._pool.pick()
            except NotSent:
                link = None
            if link is not None and self._clock is not None:
                with anyio.move_on_after(0.2, shield=True):
                    await self._network(link, iso8583.NetworkCode.SIGN_OFF)
        finally:
            await self._pool.aclose()

    # --- internals ----------------------------------------------------------------------

    def use_trace(self, trace: TraceNumbers) -> None:
        """Draw DE11 from ``trace`` from now on (before :meth:`run`)."""
        self.trace = trace

    def _next_stan(self) -> int:
        return self.trace.next()

    def _wall(self) -> datetime:
        if self._clock is None:
            raise NotSent(f"{self.name}: adapter not started")
        return self._clock.wall()

    def _on_frame(self, payload: bytes, link: Link) -> None:
        try:
            message = iso8583.decode(payload)
        except CodecError as exc:
            self.malformed += 1
            log.debug("%s: malformed answer dropped: %s", self.name, exc)
            return
        if int(message.mti[2]) % 2 == 0:
            # A request or advice of the network's own (message function even), never an
            # answer: it shares its key with ours (an 0800 echo of the host's with our
            # sign-on's STAN would have "answered" it).
            self._network_request(message, link)
            return
        key = iso8583.match_key(message)
        delivery = self._correlator.deliver(key, message)
        if delivery != "matched":
            log.debug("%s: %s answer %s %s dropped", self.name, delivery, message.mti, key)

    def _network_request(self, message: iso8583.IsoMessage, link: Link) -> None:
        """Answer the host's 0800 (echo, sign-on) with 0810 00 on the link it came by: a
        host drops an acquirer link whose echoes go unanswered. Any other request of the
        network's is not ours to take on an acquirer link: counted and dropped."""
        if message.mti != "0800":
            self._correlator.unmatched += 1
            log.debug("%s: network request %s dropped", self.name, message.mti)
            return
        self.network_requests += 1
        answer = iso8583.frame(iso8583.encode(
            iso8583.response(message, iso8583.ResponseCode.APPROVED)))
        # A link closing (NotSent): the host redials and asks again.
        with contextlib.suppress(NotSent):
            link.send_nowait(answer, _nothing, _KEPT)

    async def _network(self, link: Link, code: str) -> bool:
        """One 0800 on ``link``; True if answered 00 within ``echo_timeout_s``.

        No STAN (the trace store cannot reserve a block: a full or read-only disk) is a
        sign-on or echo not made, as a payment gets none: the link is redialled later.
        Raised, it ended the link's supervisor and with it the switch."""
        try:
            stan = self._next_stan()
        except TraceStoreError as exc:
            log.error("%s: 0800 on connection %d not sent: %s", self.name, link.index, exc)
            return False
        request = iso8583.network_request(code, stan=stan, transmitted_at=self._wall())
        data = iso8583.frame(iso8583.encode(request))
        with anyio.move_on_after(self.config.echo_timeout_s):
            try:
                answer = await exchange(link, self._correlator, iso8583.match_key(request), data)
            except NotSent:
                return False
            return answer.response_code == reasons.APPROVED
        return False

    async def _sign_on(self, link: Link) -> bool:
        ok = await self._network(link, iso8583.NetworkCode.SIGN_ON)
        if not ok:
            log.info("%s: sign-on on connection %d not answered", self.name, link.index)
        return ok

    async def _keepalive(self, link: Link) -> None:
        failures = 0
        while link.alive:
            await anyio.sleep(self.config.echo_interval_s)
            if await self._network(link, iso8583.NetworkCode.ECHO):
                self.echo_ok += 1
                failures = 0
                continue
            self.echo_failed += 1
            failures += 1
            if failures >= self.config.echo_failures_to_drop:
                log.info("%s: connection %d missed %d echoes; redialling",
                         self.name, link.index, failures)
                link.kill()
                return


class _Kept:
    """The owner of a frame nobody withdraws (an 0810 answering the host's echo)."""

    gone = False


_KEPT: Final = _Kept()


def _nothing() -> None:
    """Nothing to undo when a frame never left."""


def _reply_for(answer: iso8583.IsoMessage) -> NetworkReply:
    code = (answer.response_code or "").strip()
    if code == reasons.APPROVED:
        auth = (answer.get(38) or "").strip()
        return NetworkReply("approved", reasons.APPROVED, auth or (answer.get(37) or "").strip())
    if not code:
        return NetworkReply("failed", reasons.SYSTEM_MALFUNCTION, "DE39 missing")
    if code in TECHNICAL_CODES:
        return NetworkReply("failed", code, f"DE39={code}")
    return NetworkReply("declined", code, f"DE39={code}")
