"""The QR scheme's API messages, sans-IO: 4-byte length-prefixed msgpack frames.

The scheme speaks the same framing as the switch's own wire protocol
(switch/protocols/framing.py). Requests are tagged on ``op``:

* :class:`QrPayRequest` -- pay the merchant of an EMVCo QR ``payload``. ``amount`` is the
  payer's (required for a static QR; a dynamic QR fixes it and must agree).
* :class:`QrCheckStatus` -- what became of ``ref``: answered from the scheme's book.

Both are answered by a :class:`QrReply` carrying the same ``ref``, which is also the
matching key. Both sides import these: the switch's QR adapter and the QR simulator, so
the simulator tests the adapter through bytes, never through the adapter's code.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeVar

import msgspec

#: Bound on one frame either way: a QR payload is at most 4096 characters.
MAX_FRAME_BYTES: Final = 16 * 1024

Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class QrPayRequest(msgspec.Struct, tag="pay", tag_field="op", frozen=True,
                   forbid_unknown_fields=True, kw_only=True):
    ref: Ref
    payload: Annotated[str, msgspec.Meta(max_length=4096)]
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    payer: Annotated[str, msgspec.Meta(max_length=64)] = ""
    amount: Annotated[int, msgspec.Meta(ge=1, le=10**15)] | None = None


class QrCheckStatus(msgspec.Struct, tag="status", tag_field="op", frozen=True,
                    forbid_unknown_fields=True):
    ref: Ref


QrRequest = QrPayRequest | QrCheckStatus
QrStatus = Literal["approved", "declined", "failed", "pending", "not_found"]


class QrReply(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ref: str
    status: QrStatus
    reason: str = ""
    scheme_ref: str = ""


_T = TypeVar("_T")

_encoder: Final = msgspec.msgpack.Encoder()
_request_decoder: Final[msgspec.msgpack.Decoder[QrRequest]] = msgspec.msgpack.Decoder(QrRequest)
_reply_decoder: Final[msgspec.msgpack.Decoder[QrReply]] = msgspec.msgpack.Decoder(QrReply)


def encode(message: QrPayRequest | QrCheckStatus | QrReply) -> bytes:
    """msgpack body (no length prefix)."""
    return _encoder.encode(message)


def decode_request(data: bytes) -> QrRequest:
    """Raises msgspec.DecodeError (ValidationError is one) on anything else."""
    return _decode(_request_decoder, data)


def decode_reply(data: bytes) -> QrReply:
    """Raises msgspec.DecodeError (ValidationError is one) on anything else."""
    return _decode(_reply_decoder, data)


def _decode(decoder: msgspec.msgpack.Decoder[_T], data: bytes) -> _T:
    # msgspec lets two failures out as other exceptions: invalid UTF-8 inside a string
    # (UnicodeDecodeError) and containers nested past the interpreter's recursion limit
    # while skipping a value (RecursionError). Both escaped the adapter's and the
    # simulator's ``except msgspec.DecodeError`` as a traceback per frame.
    try:
        return decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("malformed frame: containers nested too deep") from None
    except msgspec.DecodeError:
        raise
    except ValueError as exc:  # invalid UTF-8 in a string
        raise msgspec.DecodeError(f"malformed frame: {exc}") from None
