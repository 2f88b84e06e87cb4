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
        return Path(path).read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc


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
