"""Fuzz target: EMVCo merchant-presented QR parse.

Declared outcome: ``CodecError``. What parses must build back to a payload that parses.
"""

from __future__ import annotations

from switch.protocols import emvqr
from switch.protocols.errors import CodecError


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import emvqr_seeds

    return emvqr_seeds()


def TestOneInput(data: bytes) -> None:
    for lenient in (False, True):
        try:
            parsed = emvqr.parse(data, lenient_lengths=lenient)
        except CodecError:
            continue
        emvqr.parse(emvqr.build(parsed, lenient_lengths=lenient), lenient_lengths=lenient)
