"""A node's stand-in limits against its cluster layout's, per currency (docs/cluster.md).

A layout records the stand-in limits it was planned with, per currency; a worker whose
config stands in other currencies (one more, one fewer, none at all) or other amounts is
refused at start, one line naming the config's key in major units. A layout planned
before stand-in limits were per currency is refused, to be planned again. And inside a
currency's table, an old raw-minor-unit key is refused as the old top-level keys are.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from switch.cluster.layout import ClusterLayout, apply, load_layout, plan, save_layout
from switch.serve.config import ConfigError, parse_config
from tests.test_cli_errors import one_error_line, run

SAME = ("every worker of a cluster must enforce the same limits: give every node the same "
        "config, or plan the layout again (docs/cluster.md)")


def _table(code: str, per_card: str = "500.00", per_issuer: str = "50000.00",
           per_payment: str = "200.00") -> str:
    return (f"[standin.limits.{code}]\nper_payment_max = \"{per_payment}\"\n"
            f"per_card_max = \"{per_card}\"\nper_issuer_max = \"{per_issuer}\"\n")


USD = _table("USD")
JPY = _table("JPY", per_card="50000", per_issuer="5000000", per_payment="20000")
NONE = "[standin]\nlimits = {}\n"


def _planned(tmp_path: Path, toml: str) -> ClusterLayout:
    return plan(parse_config(toml + f'[journal]\npath = "{tmp_path / "j.db"}"\n'), 2, tmp_path)


def _refusal(toml: str, layout: ClusterLayout) -> str:
    with pytest.raises(ConfigError) as refused:
        apply(parse_config(toml), layout, 0)
    message = str(refused.value)
    assert "\n" not in message, message
    return message


def test_the_same_currencies_and_amounts_are_accepted(tmp_path: Path) -> None:
    layout = _planned(tmp_path, USD + JPY)
    assert set(apply(parse_config(JPY + USD), layout, 1).standin.limits) == {"JPY", "USD"}
    empty = _planned(tmp_path, NONE)
    assert apply(parse_config(NONE), empty, 0).standin.limits == {}


@pytest.mark.parametrize(("node", "stands_in", "planned_with"), [
    (USD + _table("GBP"), "GBP, USD", "USD"),  # one currency more
    (NONE, "no currency", "USD"),  # stands nothing in
    ("", "EUR, USD", "USD"),  # the default table
])
def test_a_node_standing_in_other_currencies_is_refused(
        tmp_path: Path, node: str, stands_in: str, planned_with: str) -> None:
    layout = _planned(tmp_path, USD)
    assert _refusal(node, layout) == (
        f"standin.limits: this config stands in {stands_in}, but the cluster layout was "
        f"planned to stand in {planned_with}; {SAME}")


def test_a_node_standing_in_where_the_layout_stands_nothing_in_is_refused(
        tmp_path: Path) -> None:
    layout = _planned(tmp_path, NONE)
    assert _refusal(USD, layout) == (
        "standin.limits: this config stands in USD, but the cluster layout was planned to "
        f"stand in no currency; {SAME}")


@pytest.mark.parametrize(("node", "expected"), [
    (_table("USD", per_card="250.00") + JPY,
     "standin.limits.USD.per_card_max: 250.00 in this config, but the cluster layout was "
     "planned with 500.00; "),
    (USD + _table("JPY", per_card="50000", per_issuer="7000", per_payment="20000"),
     "standin.limits.JPY.per_issuer_max: 7000 in this config, but the cluster layout was "
     "planned with 5000000; "),
    (USD.replace('"50000.00"', '"0.07"') + JPY,
     "standin.limits.USD.per_issuer_max: 0.07 in this config, but the cluster layout was "
     "planned with 50000.00; "),
])
def test_a_differing_amount_names_the_configs_key_in_major_units(
        tmp_path: Path, node: str, expected: str) -> None:
    layout = _planned(tmp_path, USD + JPY)
    assert _refusal(node, layout) == expected + SAME


def test_a_layout_missing_one_of_a_currencys_limits_is_a_difference(tmp_path: Path) -> None:
    layout = _planned(tmp_path, USD)
    assert layout.limits is not None
    edited = msgspec.structs.replace(layout, limits={
        k: v for k, v in layout.limits.items() if k != "standin.limits.USD.per_issuer_max_minor"})
    assert _refusal(USD, edited) == (
        "standin.limits.USD.per_issuer_max: 50000.00 in this config, but the cluster layout "
        f"was planned without it; {SAME}")


def test_unknown_keys_of_a_newer_planner_are_still_left_alone(tmp_path: Path) -> None:
    layout = _planned(tmp_path, USD)
    assert layout.limits is not None
    newer = msgspec.structs.replace(layout, limits={
        **layout.limits, "risk.future": 1, "standin.limits.USD.per_payment_max_minor": 20000})
    assert apply(parse_config(USD), newer, 0)


def test_a_layout_planned_before_limits_were_per_currency_is_refused(tmp_path: Path) -> None:
    # What `serve --workers N` wrote before this change: one raw amount whatever the currency.
    (tmp_path / "layout.json").write_text(
        '{"workers": [{"shard": 0, "host": "127.0.0.1", "port": 7001, "admin_port": 7002, '
        '"journal": "j0.db"}], "limits": {"cluster.split_limits": 1, '
        '"risk.velocity.max_count": 30, "risk.velocity.max_amount_cny_minor": 100000000, '
        '"standin.per_card_max_minor": 50000, "standin.per_issuer_max_minor": 5000000}}')
    layout = load_layout(tmp_path / "layout.json")  # it still loads
    # Different stand-in limits from the old ones: no longer accepted without a word.
    assert _refusal(_table("USD", per_card="900.00"), layout) == (
        "cluster layout: limits.standin.per_card_max_minor: the layout was planned with "
        "stand-in limits in raw minor units, before stand-in limits were per currency, "
        "and cannot say what this config's per-currency limits should be; plan the layout "
        "again (payswitch serve --config <config> --workers N writes layout.json under "
        "--cluster-dir; docs/cluster.md)")


def test_serve_refuses_a_node_with_an_extra_currency_in_one_line(tmp_path: Path) -> None:
    doors = "[server]\nport = 0\n[admin]\nport = 0\n"
    layout = _planned(tmp_path, doors + USD)
    save_layout(layout, tmp_path / "layout.json")
    config = tmp_path / "node-b.toml"
    config.write_text(doors + USD + _table("GBP"))
    line = one_error_line(run("serve", "--config", str(config), "--cluster",
                              str(tmp_path / "layout.json"), "--shard", "1", "--demo"))
    assert line.startswith("Error: standin.limits: this config stands in GBP, USD, but the "
                           "cluster layout was planned to stand in USD; "), line


@pytest.mark.parametrize("key", ["per_payment_max_minor", "per_card_max_minor",
                                 "per_issuer_max_minor"])
@pytest.mark.parametrize("value", ["100", '"100"'])
def test_an_old_key_in_a_currency_table_is_refused_as_the_old_keys_are(
        key: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f"[standin.limits.JPY]\n{key} = {value}\n", "s.toml")
    assert str(refused.value) == (
        f"s.toml: standin.limits.JPY.{key}: raw minor units are not one amount across "
        f"currencies (20000 is 200.00 USD but 20000 JPY); state the limit per currency in "
        f'major units, e.g. [standin.limits.USD] {key.removesuffix("_minor")} = "500.00"')


@pytest.mark.parametrize("value", ["100", '"100"', '"-1"', "true"])
def test_an_unknown_key_in_a_currency_table_is_unknown_whatever_its_value(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f"[standin.limits.USD]\nper_card_maxx = {value}\n", "s.toml")
    assert str(refused.value) == (
        "s.toml: standin.limits.USD.per_card_maxx: unknown key (known keys: "
        "per_payment_max, per_card_max, per_issuer_max)")
