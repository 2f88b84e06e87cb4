"""click's own usage errors end in one line naming the command, and exit 2.

A mistyped option, a missing argument, a bad choice or number, an unknown command: click
printed four lines (``Usage: ...``, ``Try '... --help' for help.``, a blank line,
``Error: ...``), unlike every other mistake on the command line (tests/test_cli_errors.py:
one ``Error:`` line). Now each is one line on stderr, naming the command as a user types
it and where its help is, with exit 2, in every subcommand; ``--help`` is unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from switch.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_usage_line(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "line"), [
    (["serve", "--bogus"],
     "Error: payswitch serve: no such option '--bogus' (try 'payswitch serve --help')"),
    (["--bogus"], "Error: payswitch: no such option '--bogus' (try 'payswitch --help')"),
    (["bogus"], "Error: payswitch: no such command 'bogus' (try 'payswitch --help')"),
    (["scenario", "run"], "Error: payswitch scenario run: missing argument 'FILE' "
                          "(try 'payswitch scenario run --help')"),
    (["cluster", "haproxy-config"], "Error: payswitch cluster haproxy-config: missing option "
                                    "'--layout' (try 'payswitch cluster haproxy-config --help')"),
    (["serve", "--backend", "tokio"],
     "Error: payswitch serve: invalid value for '--backend': 'tokio' is not one of 'asyncio', "
     "'trio' (try 'payswitch serve --help')"),
    (["simulate", "--seed", "x"],
     "Error: payswitch simulate: invalid value for '--seed': 'x' is not a valid integer range "
     "(try 'payswitch simulate --help')"),
    (["serve", "extra"], "Error: payswitch serve: got unexpected extra argument (extra) "
                         "(try 'payswitch serve --help')"),
    # Errors click raises without naming their command: still the command's own line.
    (["load", "--rate"], "Error: payswitch load: option '--rate' requires an argument "
                         "(try 'payswitch load --help')"),
    (["channels", "serve", "--config"],
     "Error: payswitch channels serve: option '--config' requires an argument "
     "(try 'payswitch channels serve --help')"),
    (["serve", "--demo=yes"], "Error: payswitch serve: option '--demo' does not take a value "
                              "(try 'payswitch serve --help')"),
    # The commands' own usage errors read the same.
    (["serve", "--cluster", "layout.json"],
     "Error: payswitch serve: --cluster and --shard go together "
     "(try 'payswitch serve --help')"),
    (["fault", "card-primary", "down", "--for", "10x"],
     "Error: payswitch fault: invalid value for --for: '10x': expected e.g. 10s, 250ms, 2m "
     "(try 'payswitch fault --help')"),
])
def test_a_usage_error_is_one_line_naming_the_command(args: list[str], line: str) -> None:
    assert one_usage_line(invoke(*args)) == line


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = list(_commands(main))


def test_every_command_is_covered() -> None:
    assert {("serve",), ("load",), ("channels", "serve"), ("cluster", "haproxy-config"),
            ("report", "compare")} <= set(COMMANDS), COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_refuses_an_unknown_option_in_one_line(path: tuple[str, ...]) -> None:
    command = " ".join(("payswitch", *path))
    line = one_usage_line(invoke(*path, "--no-such-option"))
    assert line == (f"Error: {command}: no such option '--no-such-option' "
                    f"(try '{command} --help')")


def test_help_is_unchanged() -> None:
    result = invoke("serve", "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: main serve [OPTIONS]\n")
    assert "--backend [asyncio|trio]" in result.output
    # A group run without a command still shows its help.
    bare = invoke("channels")
    assert "Usage: main channels [OPTIONS] COMMAND [ARGS]..." in bare.output
    assert "Commands:" in bare.output


@pytest.mark.parametrize("module", ["switch.cli", "switch.cli.main"])
def test_the_installed_command_prints_one_line_too(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "serve", "--bogus"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ("Error: payswitch serve: no such option '--bogus' "
                           "(try 'payswitch serve --help')\n")


def test_a_user_error_quoting_a_line_break_stays_one_line() -> None:
    """A path or value the user gave may hold a line break; printed as is, the one
    ``Error:`` line a script reads was two (found by review)."""
    result = invoke("serve", "--config", "a\nb.toml")
    assert result.exit_code == 2
    assert result.stderr == "Error: a\\nb.toml: cannot read: No such file or directory\n"
