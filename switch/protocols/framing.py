"""Length-prefixed framing, sans-IO: a 4-byte big-endian length, then that many bytes.

Shared by every TCP protocol we speak in msgpack or XML-over-TCP (the client wire protocol,
the SWIFT and QR network links): one decoder fed whatever a read returned hands back every
complete frame in it. Parsing all frames per 64 KiB read measured ~20x faster than a
``receive_exactly()`` per frame.
"""

from __future__ import annotations

from typing import Final

HEADER_BYTES: Final = 4
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024
#: Upper bound for any configured frame limit: large enough for any payment message,
#: small enough that one connection cannot pin a large buffer.
MAX_FRAME_BYTES_CEILING: Final = 16 * 1024 * 1024


class FrameTooLarge(Exception):
    """A frame header announced more bytes than the connection's limit allows."""

    def __init__(self, declared: int, limit: int,
                 frames_before: list[memoryview] | None = None) -> None:
        super().__init__(f"frame of {declared} bytes exceeds max_frame_bytes={limit}")
        self.declared = declared
        self.limit = limit
        #: The complete frames the same read held before the bad header: a reader that
        #: must act on every answer it was sent (a network link) handles them first.
        self.frames_before = frames_before or []



class FrameDecoder:
    """Turns a byte stream into frames. Holds at most one partial frame between reads."""

    __slots__ = ("_buffer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        assert 0 < max_frame_bytes <= MAX_FRAME_BYTES_CEILING
        self.max_frame_bytes = max_frame_bytes
        self._buffer = b""

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (bounded by header + max frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[memoryview]:
        """Add ``data``; return every frame now complete, in order.

        Raises :class:`FrameTooLarge` as soon as a header announces an oversized frame,
        without waiting for (or buffering) its body.
        """
        buf = self._buffer + data if self._buffer else data
        view = memoryview(buf)
        end = len(buf)
        limit = self.max_frame_bytes
        frames: list[memoryview] = []
        pos = 0
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos : pos + HEADER_BYTES], "big")
            if size > limit:
                self._buffer = b""
                raise FrameTooLarge(size, limit, frames)
            stop = pos + HEADER_BYTES + size
            if stop > end:
                break
            frames.append(view[pos + HEADER_BYTES : stop])
            pos = stop
        self._buffer = bytes(view[pos:]) if pos < end else b""
        assert len(self._buffer) <= HEADER_BYTES + limit
        return frames


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload
