"""The one error type for a user's mistake on the command line."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A user's mistake (a file, a port, a value): one ``Error:`` line on stderr, exit 2."""

    exit_code = 2


def require_utf8(path: str, option: str) -> None:
    """Refuse, naming ``option``, the file and the line, a text file (TOML) that is not
    UTF-8: the readers behind the commands decode it and would end in a traceback.

    A file that cannot be read at all is left to the reader, whose message says why.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise click.BadParameter(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); TOML files must be UTF-8: re-save it as UTF-8",
            param_hint=option) from None
