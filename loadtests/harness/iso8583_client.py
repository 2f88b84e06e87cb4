"""ISO 8583 for the load generator: drive any ISO 8583 host with 0100s, match the 0110s.

Each card payment of the workload becomes a 0100 (DE2, 3, 4, 7, 11, 12, 13, 14, 18, 22,
32, 37, 41, 42, 49), 2-byte big-endian length framed. DE11 (STAN) comes from one
sequence per terminal (DE41), so the key fields are unique among requests in flight;
a workload duplicate re-sends the very same message (same DE7/DE11), which a host
should answer from its idempotency store.

Matching is configurable (``--match mti,11,41``, the jPOS QMUX default): a reply whose
key matches no request in flight is counted as ``unmatched_reply`` and a few of their
keys are kept (:attr:`Iso8583Wire.unmatched_samples`), so a key-field mismatch shows up
at once instead of as a silent timeout. The spec is configurable too: ``--iso-spec``
takes a pyiso8583 spec as JSON.

DE39 to the generator's vocabulary: 00 approved; 68 unknown (the host reverses it);
91/96 failed; 30 format error and 94 duplicate transmission as errors; every other code
a decline. A reply that does not decode -- a variable field's length prefix that is not
all digits included, as the switch's own decoder refuses it -- is ``undecodable_reply``.

A workload duplicate is planted on purpose, as over the other wires: a host that refuses
the repeat (an issuer, a network simulator: 94 within its duplicate window) answers what
was planted, so ``duplicate_transmission`` to a duplicate is counted as planted
(:attr:`Iso8583Wire.planted_errors`), never as a real error; a host that answers the
repeat from its idempotency store (the switch) gave a replay, counted as one (as the
msgpack wire's ``replay`` flag), not as another payment. A reply is matched first among
the requests sent on the connection it came on (a host answers there), so a repeat's
quick 94 is not taken for its original's answer when both are in flight.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Final

import iso8583 as pyiso

from loadtests.harness.wires import UNMATCHED, Answer, Iso8583Options
from switch.currency import numeric_code
from switch.model import Channel, PaymentRequest
from switch.protocols.errors import CodecError
from switch.protocols.iso8583 import FrameDecoder, check_length_prefixes
from switch.protocols.iso8583_acquirer import AcquirerCodec

_DUPLICATE: Final = "94"
_ERRORS: Final = {"30": "format_error", _DUPLICATE: "duplicate_transmission"}
_FAILED: Final = frozenset({"91", "96"})
#: Recent requests remembered so a workload duplicate re-sends identical fields.
_RECENT: Final = 65536
_SAMPLES: Final = 20
_MTI_CLASS: Final = {str(d): str(d & ~1) for d in range(10)}


def load_spec(options: Iso8583Options) -> dict[str, dict[str, Any]]:
    if options.spec_file is None:
        return AcquirerCodec(options.bitmap).spec
    spec: dict[str, dict[str, Any]] = json.loads(Path(options.spec_file).read_text())
    return spec


def classify(code: str) -> tuple[str | None, str | None]:
    """(status, error) for a DE39 response code."""
    if code == "00":
        return "approved", None
    if code == "68":
        return "unknown", None
    if code in _FAILED:
        return "failed", None
    if code in _ERRORS:
        return None, _ERRORS[code]
    return "declined", None


def first_stan(run_tag: str) -> int:
    """Where a run's STANs start in the 999,999 cycle, drawn from its tag ("" : at 1).

    Every run started at 000001: an issuer that remembers STAN + terminal (our card
    simulator does for ``duplicate_window_s``, 60 s) answered nearly every request of a
    run started within that window of the last one 94, a duplicate transmission. Two runs
    now overlap only if their starts fall within the STANs one of them used."""
    if not run_tag:
        return 0
    digest = hashlib.blake2b(run_tag.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 999_999


class Iso8583Wire:
    name = "iso8583"
    channel: Channel | None = "card"
    #: Workload kinds planted on purpose and the error this wire reads from their answer
    #: (the generator's ``PLANTED_ERRORS`` adds these).
    planted_errors: Final = {"duplicate": _ERRORS[_DUPLICATE]}

    def __init__(self, options: Iso8583Options, *, stride: int = 1, offset: int = 0,
                 terminal_id: str | None = None, run_tag: str = "") -> None:
        """``stride``/``offset``: generator process ``offset`` of ``stride`` draws STANs
        ``offset+1, offset+1+stride, ...`` per terminal, so processes sharing terminals
        never send the same key fields; ``terminal_id`` overrides DE41 (a Locust user is
        one terminal). ``run_tag``: where in the STAN cycle the run starts
        (:func:`first_stan`), the same for all its processes."""
        self.options = options
        self.stride = stride
        self.offset = offset + first_stan(run_tag)
        self.terminal_id = terminal_id
        self.spec = load_spec(options)
        self.match = [m.lower() for m in options.match]
        self._stan: dict[str, int] = {}
        self._recent: OrderedDict[str, dict[str, str]] = OrderedDict()
        #: Requests in flight by key: (request id, connection), oldest first.
        self._pending: dict[tuple[str, ...], deque[tuple[int, int]]] = {}
        #: Requests in flight that re-sent an earlier request's very message.
        self._repeats: set[int] = set()
        self._decoders: dict[int, FrameDecoder] = {}
        self.unmatched_samples: list[tuple[str, ...]] = []
        #: Variable fields whose length prefix is written in ASCII digits: the only ones
        #: the digits check applies to (an ``--iso-spec`` may write binary or EBCDIC
        #: prefixes). None: every variable field of the spec, the built-in one's case.
        ascii_prefixed = {k for k, v in self.spec.items() if v.get("len_type")}
        other = {k for k in ascii_prefixed if self.spec[k].get("len_enc", "ascii") != "ascii"}
        self._ascii_prefixed: frozenset[str] | None = (
            frozenset(ascii_prefixed - other) if other else None)

    def _check_prefixes(self, raw: dict[str, Any]) -> None:
        """The switch's own check of ASCII length prefixes (CodecError if one is not all
        digits), on the fields whose prefixes this spec writes in ASCII."""
        keep = self._ascii_prefixed
        check_length_prefixes(raw if keep is None else {k: v for k, v in raw.items()
                                                         if k in keep})

    def key(self, doc: dict[str, str]) -> tuple[str, ...]:
        out = []
        for m in self.match:
            if m == "mti":
                mti = doc.get("t", "")
                # jPOS QMUX: a response shares its request's class; repeats count as one.
                out.append(mti[:2] + _MTI_CLASS.get(mti[2:3], mti[2:3]) + "0")
            else:
                out.append(doc.get(m, "").strip())
        return tuple(out)

    def _document(self, request: PaymentRequest) -> tuple[dict[str, str], bool]:
        """The message's fields, and whether they repeat an earlier request's."""
        doc = self._recent.get(request.idempotency_key)
        if doc is not None:
            return doc, True
        card = request.card
        assert card is not None, "the ISO 8583 wire carries card payments only"
        terminal = (self.terminal_id or card.terminal_id)[:8].ljust(8)
        count = self._stan.get(terminal, 0) + 1
        self._stan[terminal] = count
        stan = ((count - 1) * self.stride + self.offset) % 999_999 + 1
        now = dt.datetime.now(dt.UTC)
        doc = {
            "t": "0100", "2": card.pan, "3": "000000", "4": f"{request.amount:012d}",
            "7": now.strftime("%m%d%H%M%S"), "11": f"{stan:06d}",
            "12": now.strftime("%H%M%S"), "13": now.strftime("%m%d"), "14": card.expiry,
            "18": card.mcc, "22": "051", "32": self.options.acquirer_id,
            "37": f"{now:%y%j}{stan:06d}"[:12].ljust(12), "41": terminal,
            "42": (card.merchant_id or request.payee.account)[:15].ljust(15),
            "49": f"{numeric_code(request.currency):03d}",
        }
        self._recent[request.idempotency_key] = doc
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        return doc, False

    def encode(self, rid: int, request: PaymentRequest, conn: int) -> bytes:
        doc, repeat = self._document(request)
        raw, _ = pyiso.encode(dict(doc), self.spec)
        self._pending.setdefault(self.key(doc), deque()).append((rid, conn))
        if repeat:
            self._repeats.add(rid)
        return len(raw).to_bytes(2, "big") + bytes(raw)

    def encode_malformed(self, junk: bytes, conn: int) -> bytes:
        # No readable MTI: a host can only count and drop it (nothing to answer).
        payload = b"\xc1\xc1" + junk
        return len(payload).to_bytes(2, "big") + payload

    def feed(self, conn: int, data: bytes) -> list[Answer]:
        decoder = self._decoders.get(conn)
        if decoder is None:
            decoder = self._decoders[conn] = FrameDecoder(65535)
        answers: list[Answer] = []
        for payload in decoder.feed(data):
            try:
                doc, raw = pyiso.decode(payload, self.spec)
                # pyiso8583 reads a length prefix with int(): " 9" and "+9" pass. The
                # switch's own decoder refuses them, and so does its load generator.
                self._check_prefixes(raw)
            except (pyiso.DecodeError, KeyError, CodecError):
                answers.append(Answer(None, error="undecodable_reply"))
                continue
            key = self.key(doc)
            waiting = self._pending.get(key)
            if not waiting:
                if len(self.unmatched_samples) < _SAMPLES:
                    self.unmatched_samples.append(key)
                answers.append(Answer(None, error=UNMATCHED))
                continue
            code = doc.get("39", "")
            at = self._pick(waiting, conn, code)
            rid = waiting[at][0]
            del waiting[at]
            if not waiting:
                del self._pending[key]
            status, error = classify(code)
            repeat = rid in self._repeats
            self._repeats.discard(rid)
            answers.append(Answer(rid, status, error, repeat and status is not None,
                                  doc.get("38", "").strip()))
        return answers

    def _pick(self, waiting: deque[tuple[int, int]], conn: int, code: str) -> int:
        """Which of the requests in flight with a reply's key it answers (an index): one
        sent on the connection it came on (else any), the oldest; a 94 (duplicate
        transmission) answers a repeat, any other code the original, when both wait."""
        here = [i for i, (_, c) in enumerate(waiting) if c == conn] or list(range(len(waiting)))
        repeat = code == _DUPLICATE
        return next((i for i in here if (waiting[i][0] in self._repeats) == repeat), here[0])

    def forget(self, conn: int) -> None:
        """The connection is gone: its decoder, and its requests in flight (the generator
        counts them lost; a late reply with their key must not be matched to them)."""
        self._decoders.pop(conn, None)
        for key in list(self._pending):
            waiting = self._pending[key]
            kept = deque(entry for entry in waiting if entry[1] != conn)
            for rid, c in waiting:
                if c == conn:
                    self._repeats.discard(rid)
            if kept:
                self._pending[key] = kept
            else:
                del self._pending[key]
