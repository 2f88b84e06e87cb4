"""Fuzz target: pacs.002 parse (defusedxml underneath).

Declared outcome: ``CodecError``. A document that parses must re-encode.
"""

from __future__ import annotations

from switch.protocols import iso20022
from switch.protocols.errors import CodecError


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import pacs002_seeds

    return pacs002_seeds()


def TestOneInput(data: bytes) -> None:
    try:
        parsed = iso20022.decode_pacs002(data)
    except CodecError:
        return
    iso20022.encode_pacs002(parsed)
