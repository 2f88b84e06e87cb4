"""Field-path error messages: ``payment.amount: Expected `int` >= 1``.

One formatter for every msgspec decode in the project (wire frames, config, routes,
workloads, scenarios), so every error a user sees names the field path first.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec
import msgspec.inspect as mi

_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`$")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def describe_validation_error(
    exc: msgspec.ValidationError | msgspec.DecodeError, type_: Any = None
) -> str:
    """Rewrite msgspec's ``Expected ... - at `$.a.b`` as ``a.b: Expected ...``.

    Putting the field path first makes the error greppable and matches how config errors
    read. With ``type_`` (the type being decoded), an invalid enum value lists the valid
    ones and an unknown key lists the keys that exist there. Only used on the error path,
    so the work costs nothing on valid traffic.
    """
    text = str(exc)
    match = _MSGSPEC_PATH.match(text)
    if match is None:
        return text
    raw_path = match.group("path") or ""
    path = raw_path.lstrip(".")
    message = match.group("msg")
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown is not None:
        key = unknown.group(1)
        where = f"{path}.{key}" if path else key
        known = _keys_at(type_, raw_path) if type_ is not None else []
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return f"{where}: unknown key{hint}"
    if message.startswith("Invalid enum value") and type_ is not None:
        values = _enum_values_at(type_, raw_path)
        if values:
            message += f" (expected one of: {', '.join(repr(v) for v in values)})"
    return f"{path}: {message}" if path else message


def _walk(info: mi.Type, parts: list[tuple[str | None, str | None]]) -> list[mi.Type]:
    """Every type found at ``parts`` below ``info`` (unions branch)."""
    if isinstance(info, mi.UnionType):
        return [found for member in info.types for found in _walk(member, parts)]
    if not parts:
        return [info]
    key, index = parts[0]
    rest = parts[1:]
    if isinstance(info, mi.StructType) and key is not None:
        return [found for f in info.fields if f.encode_name == key
                for found in _walk(f.type, rest)]
    if isinstance(info, mi.DictType) and key is not None:
        return _walk(info.value_type, rest)
    if isinstance(info, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)) and (
        index is not None
    ):
        return _walk(info.item_type, rest)
    return []


def _at(type_: Any, raw_path: str) -> list[mi.Type]:
    try:
        info = mi.type_info(type_)
    except (TypeError, ValueError):
        return []
    parts = [(m.group(1), m.group(2)) for m in _PATH_PART.finditer(raw_path)]
    return _walk(info, parts)


def _enum_values_at(type_: Any, raw_path: str) -> list[object]:
    values: list[object] = []
    for found in _at(type_, raw_path):
        if isinstance(found, mi.LiteralType):
            values += [v for v in found.values if v not in values]
        elif isinstance(found, mi.EnumType) and issubclass(found.cls, enum.Enum):
            values += [m.value for m in found.cls if m.value not in values]
    return values


def _keys_at(type_: Any, raw_path: str) -> list[str]:
    keys: list[str] = []
    for found in _at(type_, raw_path):
        if isinstance(found, mi.StructType):
            keys += [f.encode_name for f in found.fields if f.encode_name not in keys]
    return keys
