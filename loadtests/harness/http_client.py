"""HTTP/1.1 for the load generator: ``POST /v1/payments`` with an Idempotency-Key.

Requests are pipelined on keep-alive connections, and HTTP/1.1 answers them in order,
so each connection keeps the ids it sent in a FIFO and the n-th response belongs to the
n-th request. A response with no request left in that FIFO is ``unmatched_reply``.
More connections (``--connections``) mean less head-of-line waiting; latency still
counts from each request's intended send time.

Status mapping: 201 with the payment's status (``Idempotent-Replayed: true`` counts as a
replay); a problem+json answer becomes an error named by its ``code`` (or the HTTP
status when it has none).
"""

from __future__ import annotations

from collections import deque
from typing import Final

import msgspec

from loadtests.harness.wires import UNMATCHED, Answer
from switch.model import Channel, PaymentRequest
from switch.protocols.payments_json import PaymentBody


class _Body(msgspec.Struct):
    status: str = ""
    payment_id: str = ""
    code: str = ""


_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(_Body).decode
_MALFORMED: Final = -1
#: Largest response head or body accepted before the connection is called broken.
MAX_RESPONSE: Final = 1 << 20


class HttpWire:
    name = "http"
    channel: Channel | None = None

    def __init__(self, host: str, path: str = "/v1/payments") -> None:
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                      "Content-Type: application/json\r\n").encode()
        # Request ids per connection in send order; _MALFORMED for the junk we sent.
        self._fifo: dict[int, deque[int]] = {}
        self._buffers: dict[int, bytearray] = {}

    def _request(self, key: str, body: bytes) -> bytes:
        return b"".join((self._head, b"Idempotency-Key: ", key.encode(), b"\r\nContent-Length: ",
                         str(len(body)).encode(), b"\r\n\r\n", body))

    def encode(self, rid: int, request: PaymentRequest, conn: int) -> bytes:
        body = _encode(PaymentBody(request.channel, request.amount, request.currency,
                                   request.payer, request.payee, request.card, request.swift,
                                   request.qr))
        self._fifo.setdefault(conn, deque()).append(rid)
        return self._request(request.idempotency_key, body)

    def encode_malformed(self, junk: bytes, conn: int) -> bytes:
        self._fifo.setdefault(conn, deque()).append(_MALFORMED)
        return self._request(f"malformed-{junk.hex()[:16]}", b"{" + junk.hex().encode())

    def feed(self, conn: int, data: bytes) -> list[Answer]:
        buf = self._buffers.setdefault(conn, bytearray())
        buf += data
        answers: list[Answer] = []
        fifo = self._fifo.setdefault(conn, deque())
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE:
                    raise ConnectionError("HTTP response head too large")
                break
            head = bytes(buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            status_code = int(lines[0].split(" ", 2)[1])
            length = 0
            replay = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value)
                elif lname == "idempotent-replayed":
                    replay = value.strip() == "true"
            if length > MAX_RESPONSE:
                raise ConnectionError("HTTP response body too large")
            if len(buf) < end + 4 + length:
                break
            body = bytes(buf[end + 4: end + 4 + length])
            del buf[: end + 4 + length]
            if not fifo:
                answers.append(Answer(None, error=UNMATCHED))
                continue
            sent = fifo.popleft()
            rid = None if sent == _MALFORMED else sent
            try:
                parsed = _decode(body) if body else _Body()
            except msgspec.DecodeError:
                parsed = _Body()
            if status_code < 300:
                answers.append(Answer(rid, parsed.status, None, replay, parsed.payment_id))
            else:
                error = parsed.code or f"http_{status_code}"
                if status_code == 400 and not parsed.code:
                    error = "malformed" if rid is None else "invalid"
                elif status_code == 422 and not parsed.code:
                    error = "invalid"
                answers.append(Answer(rid, None, error))
        return answers

    def forget(self, conn: int) -> None:
        self._fifo.pop(conn, None)
        self._buffers.pop(conn, None)
