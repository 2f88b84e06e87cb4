"""Fuzz target: ISO 8583 decode (and the 2-byte framing, match keys, re-encode).

Declared outcome: ``CodecError``. A message that decodes must also re-encode (the codec
accepts on the way in only what it can write out) and give a match key.
"""

from __future__ import annotations

import contextlib

from switch.protocols import iso8583
from switch.protocols.errors import CodecError


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import iso8583_seeds

    return iso8583_seeds()


def TestOneInput(data: bytes) -> None:
    try:
        message = iso8583.decode(data)
    except CodecError:
        pass
    else:
        iso8583.match_key(message)
        assert iso8583.decode(iso8583.encode(message)) == message
    with contextlib.suppress(CodecError):
        iso8583.FrameDecoder().feed(data)
