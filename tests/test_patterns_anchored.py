"""A ``msgspec.Meta(pattern=...)`` is anchored with ``\\A`` and ``\\Z``, never ``^``/``$``.

msgspec checks a pattern with ``re.search``, and ``$`` also matches just before a final
newline: ``^[0-9]+$`` took ``"123456\\n"``. Every such pattern in the config, route table,
layout and scenario types took its value with a newline after it (a BIN, a BIC, a PAN, a
target or cluster name...). Each type below is decoded by the file's own loader, once
with a good value (taken) and once with the same value and a newline (refused in one line
naming the field); then a source check keeps a ``$``-anchored pattern from coming back.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from channels.config import ChannelsConfig, ChannelsConfigError
from channels.config import parse_config as parse_channels
from loadtests.harness.scenario import Scenario, ScenarioError, load_scenario
from switch.cluster.layout import ClusterLayout, load_layout
from switch.routing.table import RouteTableError, load_route_table
from switch.routing.tablespec import CardRoutes, SwiftRoutes
from switch.serve.config import ConfigError, SwitchConfig
from switch.serve.config import parse_config as parse_switch

ROOT = Path(__file__).resolve().parents[1]


def q(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not in the example exactly once"
    return text.replace(old, new)


# --------------------------------------------------------------------------- route table

ENDPOINTS = frozenset({"card-primary", "swift"})


def routes(*, target: str = "paynet", prefix: str = "400000", bic: str = "DEUTDEFF",
           country: str = "DE") -> str:
    return f"""
[targets.{q(target)}]
endpoints = ["card-primary"]
[targets.swift]
endpoints = ["swift"]
[card]
default = {q(target)}
ranges = [{{ prefix = {q(prefix)}, target = {q(target)} }}]
[swift]
default = "swift"
by_bic = [{{ creditor_bic = {q(bic)}, target = "swift" }}]
by_corridor = [{{ debtor_country = {q(country)}, creditor_country = "FR", target = "swift" }}]
"""


def card_routes(text: str) -> object:
    return msgspec.convert(tomllib.loads(text)["card"], CardRoutes)


def swift_routes(text: str) -> object:
    return msgspec.convert(tomllib.loads(text)["swift"], SwiftRoutes)


# --------------------------------------------------------------------------- the others

SWITCH_SIM = (ROOT / "examples" / "switch-sim.toml").read_text()
CHANNELS = (ROOT / "examples" / "channels.toml").read_text()
SCENARIO = (ROOT / "loadtests" / "scenarios" / "spike-3x.toml").read_text()


def switch_config(acquirer_id: str) -> str:
    return replaced(SWITCH_SIM, 'name = "card-primary"\n',
                    f'name = "card-primary"\nacquirer_id = {q(acquirer_id)}\n')


def channels(old: str, new: str) -> Callable[[str], str]:
    """The example channels config with the quoted ``old`` replaced by ``new`` % value."""
    return lambda value: replaced(CHANNELS, old, new % q(value))


def layout(name: str) -> str:
    return json.dumps({"name": name, "workers": [
        {"shard": 0, "host": "127.0.0.1", "port": 7100, "admin_port": 7180,
         "journal": "var/shard-0/journal.db"}]})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Case:
    """One pattern-checked type, where a user writes it."""

    good: str
    #: The file's text with ``value`` in the field.
    text: Callable[[str], str]
    #: The msgspec decode of that text into the Struct holding the field.
    decode: Callable[[str], object]
    #: The file's own loader, given the text (and a directory to write it to).
    load: Callable[[str, Path], object]
    error: type[Exception]
    #: The key path the loader's error must name.
    field: str


CASES: dict[str, Case] = {
    "routes TargetName": Case(
        "paynet", lambda v: routes(target=v), card_routes,
        lambda text, _: load_route_table(text, ENDPOINTS), RouteTableError, "card.default"),
    "routes BinDigits": Case(
        "400000", lambda v: routes(prefix=v), card_routes,
        lambda text, _: load_route_table(text, ENDPOINTS), RouteTableError,
        "card.ranges[0].prefix"),
    "routes Bic": Case(
        "DEUTDEFF", lambda v: routes(bic=v), swift_routes,
        lambda text, _: load_route_table(text, ENDPOINTS), RouteTableError,
        "swift.by_bic[0].creditor_bic"),
    # Country is exactly 2 characters: "DE\n" was already refused by its length.
    "routes Country": Case(
        "DE", lambda v: routes(country=v), swift_routes,
        lambda text, _: load_route_table(text, ENDPOINTS), RouteTableError,
        "swift.by_corridor[0].debtor_country"),
    "switch acquirer_id": Case(
        "123456", switch_config, lambda text: msgspec.convert(tomllib.loads(text), SwitchConfig),
        lambda text, _: parse_switch(text, "switch.toml"), ConfigError,
        "channel_networks[0].acquirer_id"),
    "cluster layout name": Case(
        "payswitch", layout, lambda text: msgspec.json.decode(text, type=ClusterLayout),
        lambda text, tmp: load_layout(write(tmp, "layout.json", text)), ConfigError, "name"),
    "scenario name": Case(
        "spike-3x", lambda v: replaced(SCENARIO, 'name = "spike-3x"', f"name = {q(v)}"),
        lambda text: msgspec.convert(tomllib.loads(text), Scenario),
        lambda text, tmp: load_scenario(write(tmp, "scenario.toml", text)), ScenarioError,
        "name"),
}
_CHANNEL_FIELDS = {
    # type: (the example's own text, its replacement, key path)
    "Yymm business_month": ('business_month = "2601"', "business_month = %s",
                            "card_schemes[0].business_month"),
    "Yymm expiry": ('expiry = "2712"', "expiry = %s",
                    "card_schemes[0].issuers[1].accounts[0].expiry"),
    "Bin": ('bins = ["40",', "bins = [%s,", "card_schemes[0].issuers[0].bins[0]"),
    "BicCode": ('bic = "DEUTDEFF"', "bic = %s", "networks[2].swift.banks[0].bic"),
    "Corridor": ('forbidden_corridors = ["DE-KP"]', "forbidden_corridors = [%s]",
                 "networks[2].swift.forbidden_corridors[0]"),
    "Currency": ('currencies = ["EUR",', "currencies = [%s,", "networks[2].swift.currencies[0]"),
    "pan": ('pan = "5500000000000004"', "pan = %s",
            "card_schemes[0].issuers[1].accounts[0].pan"),
}
for _label, (_old, _new, _field) in _CHANNEL_FIELDS.items():
    CASES[f"channels {_label}"] = Case(
        json.loads(re.findall(r'"[^"]*"', _old)[0]), channels(_old, _new),
        lambda text: msgspec.convert(tomllib.loads(text), ChannelsConfig),
        lambda text, _: parse_channels(text), ChannelsConfigError, _field)


@pytest.mark.parametrize("name", list(CASES))
def test_a_good_value_is_taken(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    text = case.text(case.good)
    case.decode(text)
    case.load(text, tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_value_and_a_newline_is_refused_naming_the_field(
        name: str, tmp_path: Path) -> None:
    case = CASES[name]
    text = case.text(case.good + "\n")
    with pytest.raises(msgspec.ValidationError):
        case.decode(text)
    with pytest.raises(case.error) as refused:
        case.load(text, tmp_path)
    message = str(refused.value)
    assert case.field + ":" in message and "\n" not in message, message


# --------------------------------------------------------------------------- the source check

#: Scanned for msgspec patterns.
SCANNED = ("switch", "channels", "loadtests")
#: Files allowed to hold a ``$``-anchored pattern (none now); an entry that no longer has
#: one fails the test below, so it cannot outlive its fix.
KNOWN_UNANCHORED: set[str] = set()


def _meta_patterns(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, pattern) of every ``Meta(..., pattern="...")`` (``msgspec.Meta`` or
    ``Meta``) whose pattern is a string literal."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "Meta":
            continue
        for keyword in node.keywords:
            value = keyword.value
            if (keyword.arg == "pattern" and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)):
                yield value.lineno, value.value


def _dollar_anchored(pattern: str) -> bool:
    """Ends in an unescaped ``$`` and not in ``\\Z``."""
    stripped = pattern.rstrip("$")
    dollars = len(pattern) - len(stripped)
    escaped = len(stripped) - len(stripped.rstrip("\\"))
    return dollars > 0 and not (dollars == 1 and escaped % 2 == 1)


def unanchored_patterns(source: str, where: str) -> list[str]:
    """``where:line: pattern`` for each msgspec pattern in ``source`` anchored with ``$``."""
    return [f"{where}:{line}: {pattern!r}" for line, pattern in _meta_patterns(ast.parse(source))
            if _dollar_anchored(pattern)]


def scan(root: Path, directories: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for directory in directories:
        for path in sorted((root / directory).rglob("*.py")):
            found += unanchored_patterns(path.read_text(), path.relative_to(root).as_posix())
    return found


def test_no_msgspec_pattern_is_anchored_with_a_dollar() -> None:
    found = scan(ROOT, SCANNED)
    flagged = [f for f in found if f.partition(":")[0] not in KNOWN_UNANCHORED]
    assert not flagged, ("anchor these with \\A and \\Z (msgspec uses re.search, and $ "
                         "matches before a final newline):\n" + "\n".join(flagged))
    fixed = KNOWN_UNANCHORED - {f.partition(":")[0] for f in found}
    assert not fixed, f"no $-anchored pattern left in {sorted(fixed)}: remove from the list"


PLANTED = '''\
from typing import Annotated
import msgspec
from msgspec import Meta

Good = Annotated[str, msgspec.Meta(pattern=r"\\A[0-9]+\\Z")]
Bad = Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[0-9]+$")]
AlsoBad = Annotated[str, Meta(pattern="^[A-Z]{2}$")]
Dollar = Annotated[str, msgspec.Meta(pattern=r"\\A[0-9]+\\$\\Z")]
EscapedDollar = Annotated[str, msgspec.Meta(pattern=r"\\A[0-9]+\\$")]
NotMeta = dict(pattern=r"^x$")
'''


def test_the_check_flags_a_planted_dollar_anchored_pattern(tmp_path: Path) -> None:
    assert unanchored_patterns(PLANTED, "planted.py") == [
        "planted.py:6: '^[0-9]+$'", "planted.py:7: '^[A-Z]{2}$'"]
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "types.py").write_text(PLANTED)
    (tmp_path / "pkg" / "fine.py").write_text(PLANTED.split("Bad =")[0])
    assert scan(tmp_path, ("pkg",)) == [
        "pkg/sub/types.py:6: '^[0-9]+$'", "pkg/sub/types.py:7: '^[A-Z]{2}$'"]
