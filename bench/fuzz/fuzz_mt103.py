"""Fuzz target: MT103 parse into the pacs.008 credit transfer.

Declared outcome: ``CodecError``. What parses must encode as a pacs.008.
"""

from __future__ import annotations

from switch.protocols import iso20022
from switch.protocols.errors import CodecError
from switch.protocols.mt103 import parse_mt103


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import mt103_seeds

    return mt103_seeds()


def TestOneInput(data: bytes) -> None:
    try:
        parsed = parse_mt103(data)
    except CodecError:
        return
    iso20022.encode_pacs008(parsed)
