"""The client wire protocol: length-prefixed msgpack frames, sans-IO.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of msgpack.
:class:`FrameDecoder` is fed whatever the transport read (we read 64 KiB at a time) and
hands back every complete frame in it: parsing all frames per read measured ~20x faster
than a ``receive_exactly()`` per frame. :class:`ReplyEncoder` packs many replies into one
buffer so a connection writes once per batch, not once per reply.

Every request carries a client-chosen ``id`` and replies echo it, so a client may pipeline
many requests on one connection and match replies that come back out of order.

Error policy:
* A frame whose declared length exceeds the limit is a framing error: we cannot find the
  next frame boundary safely, so the connection is closed after one error reply.
* A frame that is well delimited but not a valid message gets an error reply naming the
  field (``payment.amount: Expected `int` >= 1``) and the connection stays usable; one
  whose ``op`` is a string naming no request (:data:`OPS`) is answered ``unknown_op``.
* Nesting. msgspec decodes (and skips) containers recursively and raises
  ``RecursionError`` at the interpreter's depth limit: 1,000 nested arrays in a 1,005-byte
  frame did it, and the error escaped and ended the process. A request nests four levels,
  and a frame that decodes as one cannot nest deeper (every field is typed, unknown fields
  are refused), so the recursion limit is the bound: past it, on either decode, the frame
  is answered ``malformed`` and the connection stays usable.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from switch import reasons
from switch.fielderrors import describe_validation_error
from switch.model import IdempotencyKey, PaymentRequest, Result
from switch.protocols.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_BYTES,
    MAX_FRAME_BYTES_CEILING,
    FrameDecoder,
    FrameTooLarge,
    frame,
)

# The client protocol's whole face: its messages plus the framing they travel in.
__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES_CEILING",
    "ErrorReply",
    "FrameDecoder",
    "FrameTooLarge",
    "Moved",
    "Pay",
    "Ping",
    "Pong",
    "Query",
    "Reply",
    "ReplyEncoder",
    "Request",
    "RequestId",
    "Response",
    "ShardMapReply",
    "Shards",
    "decode_request",
    "decode_response",
    "encode_request",
    "frame",
]

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# --- messages ---------------------------------------------------------------------------


class Pay(msgspec.Struct, tag="pay", tag_field="op", frozen=True, forbid_unknown_fields=True):
    """Submit a payment."""

    id: RequestId
    payment: PaymentRequest


class Query(msgspec.Struct, tag="query", tag_field="op", frozen=True, forbid_unknown_fields=True):
    """Ask for the current result of an earlier payment, by idempotency key."""

    id: RequestId
    idempotency_key: IdempotencyKey


class Ping(msgspec.Struct, tag="ping", tag_field="op", frozen=True, forbid_unknown_fields=True):
    id: RequestId


class Shards(msgspec.Struct, tag="shards", tag_field="op", frozen=True,
             forbid_unknown_fields=True):
    """Ask for the cluster's shard map (see switch/protocols/shardmap.py)."""

    id: RequestId


Request = Pay | Query | Ping | Shards


class Reply(msgspec.Struct, tag="result", tag_field="op", frozen=True):
    """A payment's result. ``replay`` is true when idempotency returned a stored result."""

    id: int
    result: Result
    replay: bool = False


class ErrorReply(msgspec.Struct, tag="error", tag_field="op", frozen=True):
    """A request the switch did not accept. ``id`` is None when it could not be read."""

    id: int | None
    code: str
    message: str


class Pong(msgspec.Struct, tag="pong", tag_field="op", frozen=True):
    id: int


class Moved(msgspec.Struct, tag="moved", tag_field="op", frozen=True):
    """A payment or query for a key this worker does not own: ask ``address`` (the owner
    of ``shard`` of ``shards``) instead. Nothing was journaled here."""

    id: int
    shard: int
    shards: int
    address: str


class ShardMapReply(msgspec.Struct, tag="shard_map", tag_field="op", frozen=True):
    """The cluster's shard map (msgpack address per shard) and the answering worker's
    shard. ``addresses`` empty: not sharded, send everything here."""

    id: int
    shard: int
    addresses: list[str]


Response = Reply | ErrorReply | Pong | Moved | ShardMapReply

_request_decoder: Final[msgspec.msgpack.Decoder[Request]] = msgspec.msgpack.Decoder(Request)
_encoder: Final = msgspec.msgpack.Encoder()


_TOO_DEEP: Final = "malformed frame: containers nested too deep"


#: The ops a request may name: the tags of :data:`Request`.
OPS: Final[tuple[str, ...]] = tuple(
    str(kind.__struct_config__.tag) for kind in (Pay, Query, Ping, Shards))


def _head_of(payload: bytes | memoryview) -> tuple[int | None, str | None]:
    """Best effort, for a frame that failed typed decoding: its id (to address the error)
    and its op when that is a string naming no op of :data:`OPS` (else None).

    Raises RecursionError for a frame nested too deep (the caller answers ``malformed``).
    """
    try:
        loose = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8 in a str
        return None, None
    if not isinstance(loose, dict):
        return None, None
    rid = loose.get("id")
    if not (isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63):
        rid = None
    op = loose.get("op")
    return rid, op if isinstance(op, str) and op not in OPS else None


def decode_request(payload: bytes | memoryview) -> Request | ErrorReply:
    """Decode one frame's payload into a request, or an error reply naming the problem."""
    try:
        return _request_decoder.decode(payload)
    except RecursionError:
        return ErrorReply(None, reasons.E_MALFORMED, _TOO_DEEP)
    except msgspec.ValidationError as exc:
        try:
            rid, unknown_op = _head_of(payload)
        except RecursionError:
            return ErrorReply(None, reasons.E_MALFORMED, _TOO_DEEP)
        if unknown_op is not None:
            # A well-formed frame naming an op this switch does not have: its own code
            # (and ``payswitch_rejected_requests_total{reason="unknown_op"}``), not
            # ``invalid``, which says a known request has a bad field.
            shown = repr(unknown_op) if len(unknown_op) <= 40 else repr(unknown_op[:40]) + "..."
            return ErrorReply(rid, reasons.E_UNKNOWN_OP,
                              f"op: unknown op {shown}; expected one of {', '.join(OPS)}")
        return ErrorReply(rid, reasons.E_INVALID, describe_validation_error(exc))
    except msgspec.DecodeError as exc:
        return ErrorReply(None, reasons.E_MALFORMED, f"malformed msgpack: {exc}")
    except ValueError as exc:  # e.g. invalid UTF-8 inside a string
        return ErrorReply(None, reasons.E_MALFORMED, f"malformed frame: {exc}")


def encode_request(request: Request) -> bytes:
    return frame(_encoder.encode(request))


class ReplyEncoder:
    """Packs replies, each length-prefixed, into one buffer for a single write."""

    __slots__ = ("_buffer", "count")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.count = 0

    def add(self, response: Response) -> None:
        start = len(self._buffer)
        # Reserve the header, encode in place, then fill in the length: no extra copy.
        _encoder.encode_into(response, self._buffer, start + HEADER_BYTES)
        size = len(self._buffer) - start - HEADER_BYTES
        self._buffer[start : start + HEADER_BYTES] = size.to_bytes(HEADER_BYTES, "big")
        self.count += 1

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        self.count = 0
        return data


_response_decoder: Final[msgspec.msgpack.Decoder[Response]] = msgspec.msgpack.Decoder(
    Response
)


def decode_response(payload: bytes | memoryview) -> Response:
    """Client side. Raises msgspec errors on bad input (the switch is trusted here)."""
    return _response_decoder.decode(payload)
