"""The one exception every codec in :mod:`switch.protocols` raises on bad input.

Codecs sit on the trust boundary: their input comes from a socket, a file drop or a
test tool, and any byte sequence is possible. Callers should be able to write a single
``except CodecError`` around a decode and know that nothing else (``KeyError``,
``IndexError``, ``UnicodeDecodeError``, a parser library's own exception) can escape and
kill a connection handler. Each decoder therefore translates every failure into
:class:`CodecError`.

``path`` says *where* the input was wrong, in the vocabulary of the format ("DE4",
"Document/FIToFICstmrCdtTrf/CdtTrfTxInf/IntrBkSttlmAmt", "tag 32A", "tag 54"), because
the first question a counterparty asks about a rejection is "which field?". ``reason``
is the bare explanation, so a response can carry the two separately.
"""

from __future__ import annotations

__all__ = ["CodecError", "FramingError"]


class CodecError(ValueError):
    """Input could not be encoded or decoded.

    Subclassing :class:`ValueError` keeps generic "bad value" handlers working, while the
    dedicated type lets a server tell malformed input apart from its own bugs.
    """

    path: str
    reason: str

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        # Pickle with both arguments so the error survives a trip across processes
        # (worker pools, multiprocessing queues) with its path intact.
        return (type(self), (self.reason, self.path))


class FramingError(CodecError):
    """A stream's framing is broken (a length prefix past the limit): nothing after it can
    be re-synced. ``frames_before`` holds the complete frames the same read carried
    before the bad prefix, for a reader that must act on every answer it was sent."""

    def __init__(self, reason: str, path: str = "",
                 frames_before: list[bytes] | None = None) -> None:
        super().__init__(reason, path)
        self.frames_before = frames_before or []
