"""Fuzz target: pacs.028 parse (defusedxml underneath).

Declared outcome: ``CodecError``. A document that parses must re-encode.
"""

from __future__ import annotations

from switch.protocols import iso20022
from switch.protocols.errors import CodecError


def seeds() -> list[bytes]:
    from bench.fuzz.seeds import pacs028_seeds

    return pacs028_seeds()


def TestOneInput(data: bytes) -> None:
    try:
        parsed = iso20022.decode_pacs028(data)
    except CodecError:
        return
    iso20022.encode_pacs028(parsed)
