"""TOML files into msgspec Structs, with errors that name the file and the key path.

Every configuration-like file (switch config, workload, scenario) is read the same way:
the text, then TOML, then a typed conversion whose error says ``file: a.b[2].c: ...``.
Each caller passes its own error type so its callers can catch just that.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from switch.fielderrors import describe_validation_error

T = TypeVar("T")


def read_text(path: str | Path, error: type[Exception]) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    problem = not_utf8(data)
    if problem is not None:
        raise error(f"{path}:{problem}")
    return data.decode("utf-8")


def not_utf8(data: bytes) -> str | None:
    """Why ``data`` is not UTF-8 text, as ``"<line>: ..."``; None if it is. TOML is UTF-8
    by definition, and a file saved in another encoding (a Latin-1 comment) must be named
    with its line, not end in a UnicodeDecodeError traceback."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return (f"{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                f"{exc.start}); TOML files must be UTF-8: re-save it as UTF-8")
    return None


def parse_toml(text: str, source: str, error: type[Exception]) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from exc


def convert(raw: object, type_: type[T], source: str, error: type[Exception]) -> T:
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        raise error(f"{source}: {describe_validation_error(exc, type_)}") from exc
