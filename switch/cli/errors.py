"""The one error type for a user's mistake on the command line."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A user's mistake (a file, a port, a value): one ``Error:`` line on stderr, exit 2."""

    exit_code = 2
