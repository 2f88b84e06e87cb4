"""Simulated card network: ISO 8583 (1987, ASCII) over TCP with a 2-byte length prefix.

A `CardScheme` is the money side: issuers owning BIN ranges, card accounts, holds and a
ledger. Several network endpoints (`CardNetwork`, e.g. "card-primary" and
"card-secondary") may serve one scheme, so a payment authorized through one and reversed
through the other finds its hold.

Card accounts. Explicitly configured accounts are used as given; any other PAN in an
issuer's BIN range gets an account generated from ``sha256(seed, issuer, PAN)`` the
first time it is seen: balance, status and expiry are pure functions of the seed and the
PAN, so arrival order cannot change them. A PAN in no issuer's range is unknown (14).

Rules for a 0100 (0200 posts instead of holding), in order:
duplicate STAN + terminal within ``duplicate_window_s`` -> 94; a PAN failing the Luhn
check, or unknown card -> 14; blocked
-> 05; expired (account or DE14 before ``business_month``) -> 54; amount above the card's
single-authorization limit -> 61; above the available balance (balance minus holds; no
overdraft) -> 51; otherwise 00 with an auth code, and the amount is held.

0400/0401 reverse: DE90 names the original (MTI, STAN, DE7), DE41 its terminal; the hold
is released (a 0200 is credited back) exactly once, and 0410 is answered 00 whatever
happened before, including for an original never seen (the key is then remembered, so an
original arriving after its own reversal is declined 05 instead of holding money nobody
will ever release). 0120 advices are answered 0130 and place the stand-in's hold when
funds allow (96 when the book is at its bound, as for a 0100). 0800 sign-on, sign-off and
echo are answered 0810 at once.

Faults and technical errors come from the network's `Behaviour` (see channels/server.py);
a technical error (91/96) is answered without touching any account.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
import msgspec

from channels.behaviour import Behaviour
from channels.books import CARD_KIND, BookEntry, BookStore, hold_key_text
from channels.config import CardSchemeSpec, IssuerSpec, NetworkSpec
from channels.metrics import ChannelMetrics
from channels.tcp import SimConnection, SimRequest, SimServer
from switch.model import luhn_ok
from switch.protocols import iso8583
from switch.protocols.errors import CodecError

__all__ = ["AuthRecord", "CardAccount", "CardNetwork", "CardScheme", "HoldKey"]

log = logging.getLogger(__name__)

#: (original STAN, terminal id, original DE7): what a reversal's DE90 + DE41 identify.
HoldKey = tuple[str, str, str]

_EXPIRED: Final = "1912"
#: Luhn validity is a function of the PAN alone, and an issuer sees the same cards again
#: and again: remembered for the most recent few thousand, not checked anew on every
#: authorization (the simulator authorizes 120 a simulated second).
_luhn_ok: Final = functools.lru_cache(maxsize=8192)(luhn_ok)
_FINANCIAL: Final = frozenset({"0100", "0101", "0200", "0201"})
_REVERSAL: Final = frozenset({"0400", "0401", "0420", "0421"})
_ADVICE: Final = frozenset({"0120", "0121"})


@dataclass(slots=True)
class CardAccount:
    pan: str
    issuer: str
    balance: int
    limit: int
    expiry: str
    status: Literal["active", "blocked"]
    held: int = 0
    holds: dict[HoldKey, int] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(slots=True)
class AuthRecord:
    key: HoldKey
    pan: str
    amount: int
    kind: Literal["hold", "post", "none"]
    state: Literal["active", "reversed"]
    auth_code: str = ""
    #: For the clearing file: the acquirer's RRN (DE37) and ISO numeric currency (DE49).
    rrn: str = ""
    currency: str = ""


class _StoredAuth(msgspec.Struct, array_like=True, frozen=True):
    """An `AuthRecord` as channels/books.py keeps it, with the wall time of the message
    that created it (what restores the duplicate window after a restart)."""

    stan: str
    terminal: str
    de7: str
    pan: str
    amount: int
    kind: str
    state: str
    auth_code: str
    rrn: str
    currency: str
    seen_wall: float


_stored_decoder: Final = msgspec.msgpack.Decoder(_StoredAuth)


class CardScheme:
    """Issuers, accounts and the ledger of one card scheme (shared by its endpoints)."""

    def __init__(self, spec: CardSchemeSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._issuers_by_bin: dict[str, IssuerSpec] = {}
        self._explicit: dict[str, tuple[IssuerSpec, int, int, str, str]] = {}
        for issuer in spec.issuers:
            for prefix in issuer.bins:
                self._issuers_by_bin[prefix] = issuer
            for acct in issuer.accounts:
                self._explicit[acct.pan] = (issuer, acct.balance, acct.limit, acct.expiry,
                                            acct.status)
        self._bin_lengths = sorted({len(b) for b in self._issuers_by_bin}, reverse=True)
        self.accounts: dict[str, CardAccount] = {}
        self.records: dict[HoldKey, AuthRecord] = {}
        #: STAN + terminal pairs seen within the duplicate window: the set answers "seen?",
        #: the deque holds them oldest first with when they were seen (each key once: a key
        #: is added only when absent, and leaves only from the oldest end, by age or by the
        #: bound). An OrderedDict did both, but peeking at its oldest item built an iterator
        #: and a tuple on every authorization.
        self._recent: set[tuple[str, str]] = set()
        self._recent_order: deque[tuple[float, tuple[str, str]]] = deque()
        self.approvals = 0
        self.declines = 0
        self.reversals = 0
        #: Keys of authorizations reversed since the settlement writer last looked, so it
        #: can report the reversal of one it already cleared without scanning the book.
        #: Bounded like the book: with no writer draining it, the oldest fall off.
        self.reversed_keys: deque[HoldKey] = deque(maxlen=spec.max_records)
        self.reversals_unknown = 0
        self.duplicates_rejected = 0
        self.advices = 0
        self.advice_exceptions = 0
        self.bound_rejections = 0
        #: Where every change of ``records`` is kept (channels/books.py), or None: the
        #: books live only in memory (no settlement out_dir, or the deterministic
        #: simulator, whose simulated networks never restart).
        self.books: BookStore | None = None

    # --- accounts ------------------------------------------------------------------------

    def issuer_for(self, pan: str) -> IssuerSpec | None:
        for length in self._bin_lengths:
            issuer = self._issuers_by_bin.get(pan[:length])
            if issuer is not None:
                return issuer
        return None

    def account(self, pan: str) -> CardAccount | None:
        """The account of ``pan`` (materialised on first sight), or None if not issued."""
        acct = self.accounts.get(pan)
        if acct is not None:
            return acct
        explicit = self._explicit.get(pan)
        if explicit is not None:
            issuer, balance, limit, expiry, status = explicit
            acct = CardAccount(pan, issuer.name, balance, limit, expiry,
                               "blocked" if status == "blocked" else "active")
        else:
            issuer_or_none = self.issuer_for(pan)
            if issuer_or_none is None:
                return None
            acct = self._generate(issuer_or_none, pan)
            if acct is None:
                return None
        if len(self.accounts) >= self.spec.max_accounts:
            raise OverflowError(f"{self.name}: {self.spec.max_accounts} accounts materialised")
        self.accounts[pan] = acct
        return acct

    def _generate(self, issuer: IssuerSpec, pan: str) -> CardAccount | None:
        digest = hashlib.sha256(f"{self.spec.seed}:{issuer.name}:{pan}".encode()).digest()
        u = [int.from_bytes(digest[i * 8:(i + 1) * 8], "big") / 2.0**64 for i in range(4)]
        if u[0] < issuer.unissued_rate:
            return None
        status: Literal["active", "blocked"] = "blocked" if u[1] < issuer.blocked_rate else "active"
        expiry = _EXPIRED if u[2] < issuer.expired_rate else "3012"
        span = max(0, issuer.balance_max - issuer.balance_min)
        balance = issuer.balance_min + int(u[3] * span)
        return CardAccount(pan, issuer.name, balance, issuer.txn_limit, expiry, status)

    # --- ledger queries (tests, reconciliation) -------------------------------------------

    def available(self, pan: str) -> int:
        acct = self.account(pan)
        assert acct is not None, f"no account for {pan}"
        return acct.available

    def active_hold(self, key: HoldKey) -> int:
        """Amount held (or posted) for ``key`` and not reversed; 0 if none."""
        record = self.records.get(key)
        if record is None or record.state != "active" or record.kind == "none":
            return 0
        return record.amount

    def check_ledger(self) -> None:
        """Every account's held total equals its holds and no account is overdrawn."""
        for acct in self.accounts.values():
            assert acct.held == sum(acct.holds.values()), acct.pan
            assert acct.available >= 0, f"{acct.pan} overdrawn: {acct.available}"

    # --- the books on disk (channels/books.py) ------------------------------------------

    def _keep(self, record: AuthRecord) -> None:
        """Make ``record``'s change durable before the answer reporting it is sent."""
        books = self.books
        if books is None:
            return
        stan, terminal, de7 = record.key
        books.put(self.name, CARD_KIND, hold_key_text(record.key), msgspec.msgpack.encode(
            _StoredAuth(stan, terminal, de7, record.pan, record.amount, record.kind,
                        record.state, record.auth_code, record.rrn, record.currency,
                        time.time())))

    def restore(self, store: BookStore, now: float, wall_now: float) -> list[BookEntry]:
        """Rebuild the book from ``store`` and keep every change there from now on: the
        records (first booked first), every account's holds and posted debits, and the
        duplicate window, which counts the authorizations of its last
        ``duplicate_window_s`` by their wall time. Returns the entries read, in the
        order of ``records``."""
        assert not self.records and not self.accounts, "restore into an empty book only"
        entries = list(store.entries(self.name, CARD_KIND))
        window = self.spec.duplicate_window_s
        recent: list[tuple[float, tuple[str, str]]] = []
        misfits = 0
        for entry in entries:
            stored = _stored_decoder.decode(entry.value)
            key = (stored.stan, stored.terminal, stored.de7)
            assert stored.kind in ("hold", "post", "none") and stored.state in (
                "active", "reversed"), stored
            record = AuthRecord(key, stored.pan, stored.amount, stored.kind,  # type: ignore[arg-type]
                                stored.state, stored.auth_code, stored.rrn,  # type: ignore[arg-type]
                                stored.currency)
            self.records[key] = record
            if record.state == "active" and record.kind != "none" and not self._rebook(record):
                misfits += 1
            age = wall_now - stored.seen_wall
            if record.kind != "none" and 0 <= age < window:
                recent.append((now - age, (stored.stan, stored.terminal)))
        for seen_at, pair in sorted(recent):
            if pair not in self._recent:
                self._recent.add(pair)
                self._recent_order.append((seen_at, pair))
        assert len(self.records) == len(entries)
        overdrawn = sum(1 for acct in self.accounts.values() if acct.available < 0)
        if misfits or overdrawn:
            # The scheme's configuration changed under its books (issuers, balances,
            # bounds): keep every record, say so, never refuse to start over it.
            log.warning("%s: the books in %s were written under another configuration: %d "
                        "authorizations found no account, %d accounts are overdrawn; give a "
                        "changed scheme its own settlement out_dir", self.name, store.path,
                        misfits, overdrawn)
        self.books = store
        return entries

    def _rebook(self, record: AuthRecord) -> bool:
        """Put an active record's money back on its account; False if it has none."""
        try:
            acct = self.account(record.pan)
        except OverflowError:
            return False
        if acct is None:
            return False
        if record.kind == "hold":
            acct.holds[record.key] = record.amount
            acct.held += record.amount
        else:
            acct.balance -= record.amount
        return True

    # --- message handling ----------------------------------------------------------------

    def _seen_recently(self, stan: str, terminal: str, now: float) -> bool:
        recent, order = self._recent, self._recent_order
        cutoff = now - self.spec.duplicate_window_s
        while order and order[0][0] <= cutoff:
            recent.remove(order.popleft()[1])
        key = (stan, terminal)
        if key in recent:
            return True
        recent.add(key)
        order.append((now, key))
        if len(order) > self.spec.max_recent_stans:
            # The bound shortens the window for the oldest entries rather than grow.
            recent.remove(order.popleft()[1])
        return False

    def _auth_code(self, key: HoldKey) -> str:
        # The text is str(key), a 3-tuple of str, spelled out: formatting the tuple
        # through its repr cost as much as the hash.
        stan, terminal, de7 = key
        digest = hashlib.sha256(
            f"{self.spec.seed}:({stan!r}, {terminal!r}, {de7!r})".encode()).hexdigest()
        return digest[:6].upper()

    def authorize(self, msg: iso8583.IsoMessage, now: float) -> iso8583.IsoMessage:
        """Decide a 0100/0200 and book it. Returns the 0110/0210."""
        f = msg.fields
        pan, stan, terminal, de7 = f.get(2, ""), f.get(11, ""), f.get(41, ""), f.get(7, "")
        amount = int(f.get(4, "0") or "0")
        if self._seen_recently(stan, terminal, now):
            self.duplicates_rejected += 1
            return iso8583.response(msg, iso8583.ResponseCode.DUPLICATE_TRANSMISSION)
        key = (stan, terminal, de7)
        if key in self.records:
            # Its reversal came first (or the key was reused): never hold for it now.
            self.declines += 1
            return iso8583.response(msg, iso8583.ResponseCode.DO_NOT_HONOUR)
        if not _luhn_ok(pan):
            # Checked before any account is materialised: no issuer issues such a number.
            self.declines += 1
            return iso8583.response(msg, iso8583.ResponseCode.INVALID_CARD)
        try:
            acct = self.account(pan)
        except OverflowError as exc:
            log.warning("%s", exc)
            self.bound_rejections += 1
            return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
        code = self._rule(acct, f.get(14), amount)
        if code != iso8583.ResponseCode.APPROVED:
            self.declines += 1
            return iso8583.response(msg, code)
        assert acct is not None
        if len(self.records) >= self.spec.max_records:
            self.bound_rejections += 1
            log.warning("%s: %d authorization records; refusing", self.name,
                        self.spec.max_records)
            return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
        auth_code = self._auth_code(key)
        if msg.mti in ("0200", "0201"):
            acct.balance -= amount
            self.records[key] = AuthRecord(key, pan, amount, "post", "active", auth_code,
                                           f.get(37, ""), f.get(49, ""))
        else:
            acct.holds[key] = amount
            acct.held += amount
            self.records[key] = AuthRecord(key, pan, amount, "hold", "active", auth_code,
                                           f.get(37, ""), f.get(49, ""))
        self._keep(self.records[key])
        self.approvals += 1
        return iso8583.response(msg, iso8583.ResponseCode.APPROVED, auth_code=auth_code)

    def _rule(self, acct: CardAccount | None, de14: str | None, amount: int) -> str:
        if acct is None:
            return iso8583.ResponseCode.INVALID_CARD
        if acct.status == "blocked":
            return iso8583.ResponseCode.DO_NOT_HONOUR
        month = self.spec.business_month
        if acct.expiry < month or (de14 is not None and de14 < month):
            return iso8583.ResponseCode.EXPIRED_CARD
        if amount > acct.limit:
            return iso8583.ResponseCode.OVER_AMOUNT_LIMIT
        if amount > acct.available:
            return iso8583.ResponseCode.INSUFFICIENT_FUNDS
        return iso8583.ResponseCode.APPROVED

    def reverse(self, msg: iso8583.IsoMessage) -> iso8583.IsoMessage:
        """Undo the original named by DE90 (idempotent). Returns the 0410/0430."""
        f = msg.fields
        de90 = f.get(90)
        if de90 is None or len(de90) != 42:
            return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
        key = (de90[4:10], f.get(41, ""), de90[10:20])
        record = self.records.get(key)
        if record is None:
            if len(self.records) >= self.spec.max_records:
                self.bound_rejections += 1
                return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
            self.reversals_unknown += 1
            self.records[key] = AuthRecord(key, f.get(2, ""), 0, "none", "reversed")
            self._keep(self.records[key])
        elif record.state == "active":
            acct = self.accounts[record.pan]
            if record.kind == "hold":
                acct.held -= acct.holds.pop(key)
            elif record.kind == "post":
                acct.balance += record.amount
            record.state = "reversed"
            self._keep(record)
            self.reversals += 1
            self.reversed_keys.append(key)
        return iso8583.response(msg, iso8583.ResponseCode.APPROVED)

    def advice(self, msg: iso8583.IsoMessage) -> iso8583.IsoMessage:
        """Record a stand-in decision; place its hold when the account can bear it.

        The 0130 says which: 00 when the issuer took the stand-in approval (its hold is
        placed and it will clear), 14 (unknown card) or 51 (funds) when it refused it --
        the switch journals that refusal as the evidence of its stand-in exposure.
        """
        self.advices += 1
        f = msg.fields
        answer = iso8583.ResponseCode.APPROVED
        if (f.get(39) or "").strip() == iso8583.ResponseCode.APPROVED:
            key = (f.get(11, ""), f.get(41, ""), f.get(7, ""))
            amount = int(f.get(4, "0") or "0")
            if key in self.records:
                return iso8583.response(msg, answer)  # a repeat: taken (or not) once
            try:
                acct = self.account(f.get(2, ""))
            except OverflowError as exc:
                # The book is full, not the card unknown: a bound is a 96 (module docstring),
                # and the switch must not journal it as the issuer refusing the card.
                log.warning("%s", exc)
                self.bound_rejections += 1
                return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
            if acct is not None and len(self.records) >= self.spec.max_records:
                self.bound_rejections += 1
                log.warning("%s: %d authorization records; refusing an advice", self.name,
                            self.spec.max_records)
                return iso8583.response(msg, iso8583.ResponseCode.SYSTEM_MALFUNCTION)
            if acct is not None and amount <= acct.available:
                acct.holds[key] = amount
                acct.held += amount
                self.records[key] = AuthRecord(key, acct.pan, amount, "hold", "active",
                                               rrn=f.get(37, ""), currency=f.get(49, ""))
                self._keep(self.records[key])
            else:
                self.advice_exceptions += 1
                answer = (iso8583.ResponseCode.INVALID_CARD if acct is None
                          else iso8583.ResponseCode.INSUFFICIENT_FUNDS)
        return iso8583.response(msg, answer)


class _CardRequest(SimRequest):
    def __init__(self, network: CardNetwork, message: iso8583.IsoMessage) -> None:
        self.network = network
        self.message = message
        self.route_key = message.fields.get(2, "")

    def decide(self, technical_error: str | None) -> bytes | None:
        msg, scheme = self.message, self.network.scheme
        if technical_error is not None:
            self.outcome = "error"
            return iso8583.encode(iso8583.response(msg, technical_error))
        if msg.mti in _FINANCIAL:
            answer = scheme.authorize(msg, anyio.current_time())
            code = answer.response_code
            self.outcome = ("approved" if code == iso8583.ResponseCode.APPROVED else
                            "error" if code in ("91", "96") else "declined")
        elif msg.mti in _REVERSAL:
            answer = scheme.reverse(msg)
            self.outcome = "reversal"
        else:
            answer = scheme.advice(msg)
            self.outcome = "advice"
        return iso8583.encode(answer)

    def reject(self, code: str) -> bytes | None:
        self.outcome = "error"
        return iso8583.encode(iso8583.response(self.message, code))


class CardNetwork(SimServer):
    """One endpoint of a card scheme."""

    def __init__(self, spec: NetworkSpec, behaviour: Behaviour, metrics: ChannelMetrics,
                 scheme: CardScheme) -> None:
        super().__init__(spec, behaviour, metrics)
        self.scheme = scheme
        self.network_messages = 0
        self.malformed_requests = 0

    def new_splitter(self) -> iso8583.FrameDecoder:
        return iso8583.FrameDecoder()

    def frame(self, payload: bytes) -> bytes:
        return iso8583.frame(payload)

    def garbage(self) -> bytes:
        return b"ZZZZ\xff\xfe not an ISO 8583 message"

    def parse(self, conn: SimConnection, payload: bytes) -> SimRequest | bytes | None:
        try:
            msg = iso8583.decode(payload)
        except CodecError as exc:
            self.malformed_requests += 1
            log.debug("%s: undecodable request: %s", self.name, exc)
            return None
        mti = msg.mti
        if mti in ("0800", "0801"):
            self.network_messages += 1
            return iso8583.encode(iso8583.response(msg, iso8583.ResponseCode.APPROVED))
        if mti in _FINANCIAL or mti in _REVERSAL or mti in _ADVICE:
            return _CardRequest(self, msg)
        self.malformed_requests += 1
        log.debug("%s: unsupported MTI %s", self.name, mti)
        return None
