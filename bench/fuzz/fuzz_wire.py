"""Fuzz target: the client wire protocol (framing + request decoder).

Declared outcome: ``decode_request`` returns a request or an ErrorReply and never raises;
``FrameDecoder.feed`` raises only ``FrameTooLarge``. Anything else is a finding.
"""

from __future__ import annotations

from switch.protocols import wire


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import wire_seeds

    return wire_seeds()


def TestOneInput(data: bytes) -> None:
    decoded = wire.decode_request(data)
    assert isinstance(decoded, wire.Pay | wire.Query | wire.Ping | wire.ErrorReply)
    decoder = wire.FrameDecoder(max_frame_bytes=4096)
    try:
        for payload in decoder.feed(len(data).to_bytes(4, "big") + data + data[:7]):
            wire.decode_request(payload)
    except wire.FrameTooLarge:
        pass
