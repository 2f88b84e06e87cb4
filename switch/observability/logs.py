"""Structured JSON logs, one object per line, with card numbers masked on the way out.

Masking happens in the formatter, at the last moment, on the fully rendered line: a PAN
cannot reach the output whether it came in a message, an argument, an exception or an
``extra`` field. Any run of 13-19 digits (optionally split by single spaces or dashes)
that passes the Luhn check is treated as a PAN and keeps only its first 6 and last 4
digits, the most PCI DSS allows to be shown. Payment ids, amounts and timestamps never
pass Luhn by accident often enough to matter, and masking one would be harmless.

Lines about a payment carry its id as ``payment_id`` (pass ``extra={"payment_id": ...}``)
so a payment's story can be grepped out of the logs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Final

from switch.model import luhn_ok

_PAN_CANDIDATE: Final = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,}(?!\d)")
_DIGIT_RUN: Final = re.compile(r"\d+")


def _mask_digits(digits: str) -> str | None:
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
    return None


def _mask_groups(raw: str) -> str:
    """Mask PANs inside a run of digit groups split by single spaces or dashes.

    Separators may glue a PAN to a neighbouring number ("P3-4111...", "5555 5555 5555
    4444 2512" with its expiry): the whole run fails Luhn, so every stretch of
    consecutive groups (one group or several) is tried, longest first from each group.
    """
    groups = [(m.start(), m.end()) for m in _DIGIT_RUN.finditer(raw)]
    out: list[str] = []
    done = 0  # raw[:done] is in ``out``
    i = 0
    while i < len(groups):
        masked = None
        digits = ""
        stretch: list[tuple[int, str]] = []
        for j in range(i, len(groups)):
            digits += raw[groups[j][0]:groups[j][1]]
            if len(digits) > 19:
                break
            stretch.append((j, digits))
        for j, candidate in reversed(stretch):
            masked = _mask_digits(candidate)
            if masked is not None:
                out.append(raw[done:groups[i][0]] + masked)
                done = groups[j][1]
                i = j + 1
                break
        else:
            i += 1
    out.append(raw[done:])
    return "".join(out)


def mask_pans(text: str) -> str:
    """Mask every Luhn-valid 13-19 digit run in ``text``."""

    def mask(match: re.Match[str]) -> str:
        raw = match.group(0)
        whole = _mask_digits(raw.replace(" ", "").replace("-", ""))
        if whole is not None:
            return whole
        return _mask_groups(raw)

    return _PAN_CANDIDATE.sub(mask, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payment_id = getattr(record, "payment_id", None)
        if payment_id is not None:
            entry["payment_id"] = payment_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_pans(json.dumps(entry, default=str))


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send logs to stderr, as JSON (default) or plain text -- masked either way."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_MaskingText("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


class _MaskingText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_pans(super().format(record))
