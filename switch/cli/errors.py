"""The one error type for a user's mistake on the command line."""

from __future__ import annotations

import click

from switch.tomlio import not_utf8


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
    problem = not_utf8(data)
    if problem is not None:
        raise click.BadParameter(f"{path}:{problem}", param_hint=option)
