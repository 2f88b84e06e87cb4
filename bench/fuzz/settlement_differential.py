"""The check the card and QR settlement fuzz targets share: the fast (polars) reader may only
ever hand a file over to the strict decoder, never accept what it refuses or read it
differently. Any exception other than SettlementFileError is a finding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from switch.protocols.settlement_files import SettlementEntry, SettlementFileError, decode_text


def check(data: bytes, ext: str, fast: Callable[[bytes, str], Any],
          strict: Callable[[str, str], Sequence[SettlementEntry]]) -> None:
    try:
        cols = fast(data, f"c.{ext}")
    except SettlementFileError:
        return
    try:
        entries = strict(decode_text(data, f"f.{ext}"), f"f.{ext}")
    except SettlementFileError as exc:
        raise AssertionError(f"fast path accepted what the strict decoder refuses: {exc}") from None
    assert cols.entries() == entries, "fast path and strict decoder disagree"
