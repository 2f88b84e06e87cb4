"""The one error type for a user's mistake on the command line, and the one line every
usage error of ``payswitch`` prints."""

from __future__ import annotations

from typing import Any

import click
from click.exceptions import NoArgsIsHelpError

from switch.tomlio import not_utf8


class UserError(click.ClickException):
    """A user's mistake (a file, a port, a value): one ``Error:`` line on stderr, exit 2.

    One line whatever the message quotes: a path or value the user gave may hold a line
    break (``--config $'a\nb'``), which would split the line a script reads."""

    exit_code = 2

    def format_message(self) -> str:
        return one_line(self.message)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters shown escaped (``\\n``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else
                   c.encode("unicode_escape").decode("ascii") for c in text)


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


#: The command's name in every usage error, whatever ran it (``python -m switch.cli``,
#: the ``payswitch`` script, click's test runner).
PROG: str = "payswitch"


def command_path(ctx: click.Context | None) -> str:
    """``payswitch serve``: the command a usage error belongs to, named as a user types it."""
    names: list[str] = []
    while ctx is not None:
        names.append((ctx.info_name or "") if ctx.parent is not None else PROG)
        ctx = ctx.parent
    return " ".join(name for name in reversed(names) if name) or PROG


def usage_line(exc: click.UsageError) -> str:
    """A usage error as one line: the command, what is wrong, where the help is.

    ``payswitch serve: no such option '--bogus' (try 'payswitch serve --help')``: click's
    own message (a capitalized first word lowered, one trailing period dropped, lines
    joined) after the command, as :class:`UserError`'s lines name the file or option."""
    message = " ".join(part.strip() for part in exc.format_message().splitlines()
                       if part.strip())
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]
    path = command_path(exc.ctx)
    ctx = exc.ctx
    hint = ""
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        hint = f" (try '{path} {max(ctx.command.get_help_option_names(ctx), key=len)}')"
    return f"{path}: {message}{hint}"


class OneLineUsageError(click.UsageError):
    """A usage error shown as :func:`usage_line` after ``Error:`` on stderr, exit 2:
    click's own show prints four lines (usage, a hint, a blank line, the error)."""

    def __init__(self, cause: click.UsageError) -> None:
        super().__init__(cause.message, cause.ctx)
        self.cause = cause

    def format_message(self) -> str:
        return usage_line(self.cause)

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None,
                   color=self.ctx.color if self.ctx is not None else None)


class OneLineUsageGroup(click.Group):
    """The root group: every usage error, click's (unknown option or command, missing
    argument, bad choice or number) or the commands' own (``click.UsageError``,
    ``click.BadParameter``), in any subcommand, ends in one line (:func:`usage_line`)
    and exit 2. Help is left as it is: ``--help``, and a group run without a command
    (click shows its help for that, through a usage error of its own)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, NoArgsIsHelpError)):
        return exc
    if exc.ctx is None:
        # Some of click's parser errors carry no context ("Option '--rate' requires an
        # argument"): the command that failed is the one whose arguments were being
        # parsed, the innermost frame of the traceback with a context at hand.
        exc.ctx = _innermost_context(exc)
    return OneLineUsageError(exc)


def _innermost_context(exc: BaseException) -> click.Context | None:
    found = None
    tb = exc.__traceback__
    while tb is not None:
        ctx = tb.tb_frame.f_locals.get("ctx")
        if isinstance(ctx, click.Context):
            found = ctx
        tb = tb.tb_next
    return found
