"""Field-path error messages: ``payment.amount: Expected `int` >= 1``.

One formatter for every msgspec decode in the project (wire frames, config, routes,
workloads, scenarios), so every error a user sees names the field path first.
"""

from __future__ import annotations

import re

import msgspec

_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`$")


def describe_validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> str:
    """Rewrite msgspec's ``Expected ... - at `$.a.b`` as ``a.b: Expected ...``.

    Putting the field path first makes the error greppable and matches how config errors
    read. Only used on the error path, so the regex costs nothing on valid traffic.
    """
    text = str(exc)
    match = _MSGSPEC_PATH.match(text)
    if match is None:
        return text
    path = (match.group("path") or "").lstrip(".")
    message = match.group("msg")
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown is not None:
        key = unknown.group(1)
        return f"{path}.{key}: unknown key" if path else f"{key}: unknown key"
    return f"{path}: {message}" if path else message
