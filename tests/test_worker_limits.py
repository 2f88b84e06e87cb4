"""A cluster's cumulative limits, split between its workers (docs/cluster.md).

Workers share no state and a card's or payer's keys spread over every shard, so each of
N workers enforces ``limit // N`` of every per-card / per-payer / per-issuer sum: the
cluster never approves past the configured limit. A limit that would split to 0 is
refused before anything starts, one line naming its key path; ``[cluster] split_limits =
false`` keeps the old per-worker limits.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from switch.cluster.layout import (
    ClusterLayout,
    WorkerSpec,
    apply,
    load_layout,
    plan,
    save_layout,
)
from switch.payment.risk import AmountLimit, RiskConfig, VelocityConfig
from switch.payment.standin import StandInConfig, StandInLimits
from switch.serve.config import (
    ConfigError,
    SwitchConfig,
    parse_config,
    worker_limits,
)
from tests.test_cli_errors import one_error_line, run

RISK = RiskConfig(
    amount_limits=[AmountLimit(channel="card", currency="USD", max_minor=10_000)],
    velocity=VelocityConfig(window_s=30.0, max_count=10, max_amount_cny_minor=1_000_003,
                            max_keys=5000),
    blocked_pans=["4000000000000002"],
    blocked_accounts=["BLOCKED"],
    aml_threshold_cny_minor=777,
)
STANDIN = StandInConfig(limits={
    "USD": StandInLimits(per_payment_max="200.00", per_card_max="500.01",
                         per_issuer_max="50000.00"),
    "JPY": StandInLimits(per_payment_max="20000", per_card_max="50001",
                         per_issuer_max="5000000")}, max_pending_advices=99)


def _with(standin: StandInConfig, code: str, **limits: str) -> StandInConfig:
    """``standin`` with some of ``code``'s limits replaced."""
    replace = msgspec.structs.replace
    return replace(standin, limits={**standin.limits,
                                    code: replace(standin.limits[code], **limits)})


def test_each_worker_gets_the_floor_of_its_share_of_every_cumulative_limit() -> None:
    risk, standin = worker_limits(RISK, STANDIN, 4, True)
    assert (risk.velocity.max_count, risk.velocity.max_amount_cny_minor) == (2, 250_000)
    # Each currency's stand-in limits split in its own minor units, kept in major units.
    usd, jpy = standin.limits["USD"], standin.limits["JPY"]
    assert (usd.per_card_max, usd.per_issuer_max) == ("125.00", "12500.00")
    assert (jpy.per_card_max, jpy.per_issuer_max) == ("12500", "1250000")
    # The configured limit holds for the cluster: N shares never add up past it.
    assert 4 * risk.velocity.max_count <= RISK.velocity.max_count
    assert 4 * risk.velocity.max_amount_cny_minor <= RISK.velocity.max_amount_cny_minor
    split, whole = standin.minor_limits(), STANDIN.minor_limits()
    assert all(4 * split[c].per_card <= whole[c].per_card for c in whole)
    # Everything that is not a sum over payments stays as configured.
    assert risk == msgspec.structs.replace(RISK, velocity=msgspec.structs.replace(
        RISK.velocity, max_count=2, max_amount_cny_minor=250_000))
    assert standin == _with(_with(STANDIN, "USD", per_card_max="125.00",
                                  per_issuer_max="12500.00"),
                            "JPY", per_card_max="12500", per_issuer_max="1250000")


def test_one_worker_and_the_opt_out_keep_the_configured_limits() -> None:
    assert worker_limits(RISK, STANDIN, 1, True) == (RISK, STANDIN)
    assert worker_limits(RISK, STANDIN, 0, True) == (RISK, STANDIN)  # standalone
    assert worker_limits(RISK, STANDIN, 4, False) == (RISK, STANDIN)


def test_a_limit_configured_as_zero_stays_zero() -> None:
    no_standin = _with(STANDIN, "USD", per_card_max="0.00", per_issuer_max="0")
    _, standin = worker_limits(RISK, no_standin, 8, True)
    usd = standin.limits["USD"]
    assert (usd.per_card_max, usd.per_issuer_max) == ("0.00", "0.00")


@pytest.mark.parametrize(("risk", "standin", "start", "least"), [
    (msgspec.structs.replace(RISK, velocity=VelocityConfig(max_count=3)), STANDIN,
     "risk.velocity.max_count: 3 split over 4 workers is 0 per worker", "4"),
    (msgspec.structs.replace(RISK, velocity=VelocityConfig(max_amount_cny_minor=3)), STANDIN,
     "risk.velocity.max_amount_cny_minor: 3 split over 4 workers is 0 per worker", "4"),
    (RISK, _with(STANDIN, "USD", per_card_max="0.01"), 'standin.limits.USD.per_card_max: '
     '"0.01" split over 4 workers is "0.00" per worker', '"0.04"'),
    (RISK, _with(STANDIN, "JPY", per_issuer_max="2"), 'standin.limits.JPY.per_issuer_max: '
     '"2" split over 4 workers is "0" per worker', '"4"'),
])
def test_a_limit_that_would_split_to_zero_is_refused_naming_it(
        risk: RiskConfig, standin: StandInConfig, start: str, least: str) -> None:
    with pytest.raises(ConfigError) as refused:
        worker_limits(risk, standin, 4, True)
    message = str(refused.value)
    assert message.startswith(start), message
    assert f"raise it to at least {least}," in message
    assert "cluster.split_limits = false" in message
    assert "\n" not in message
    assert worker_limits(risk, standin, 4, False) == (risk, standin)  # the way out


FOUR_SHARDS = '[cluster]\nshards = ["h:1", "h:2", "h:3", "h:4"]\n'


def test_a_four_shard_config_with_max_count_3_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config("[risk.velocity]\nmax_count = 3\n" + FOUR_SHARDS, "w.toml")
    assert str(refused.value).startswith(
        "w.toml: risk.velocity.max_count: 3 split over 4 workers is 0 per worker")
    parse_config("[risk.velocity]\nmax_count = 4\n" + FOUR_SHARDS)
    assert parse_config("[risk.velocity]\nmax_count = 3\n" + FOUR_SHARDS
                        + "split_limits = false\n").cluster.split_limits is False


def test_a_layout_keeps_split_limits_and_refuses_a_limit_it_splits_to_zero(
        tmp_path: Path) -> None:
    layout = ClusterLayout([WorkerSpec(shard=i, host="127.0.0.1", port=7100 + i,
                                       admin_port=7180 + i, journal=str(tmp_path / f"{i}.db"))
                            for i in range(4)])
    opted_out = parse_config("[cluster]\nsplit_limits = false\n[risk.velocity]\nmax_count = 3\n")
    assert apply(opted_out, layout, 2).cluster.split_limits is False
    assert len(apply(opted_out, layout, 2).cluster.shards) == 4
    strict = parse_config("[risk.velocity]\nmax_count = 3\n")
    with pytest.raises(ConfigError, match=r"\Arisk.velocity.max_count: 3 split over 4 "):
        apply(strict, layout, 0)
    assert SwitchConfig().cluster.split_limits is True


def test_serve_workers_refuses_a_limit_it_would_split_to_zero(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(f'[server]\nport = 0\n[admin]\nport = 0\n[journal]\npath = '
                      f'"{tmp_path / "j.db"}"\n[risk.velocity]\nmax_count = 3\n')
    line = one_error_line(run("serve", "--config", str(config), "--workers", "4", "--demo",
                              "--cluster-dir", str(tmp_path / "c")))
    assert line.startswith("Error: risk.velocity.max_count: 3 split over 4 workers is 0 per "
                           "worker (cluster.split_limits); raise it to at least 4, or set "
                           "cluster.split_limits = false"), line
    assert not (tmp_path / "c" / "layout.json").exists()  # no worker was started


def _planned(tmp_path: Path, toml: str) -> ClusterLayout:
    return plan(parse_config(toml + f'[journal]\npath = "{tmp_path / "j.db"}"\n'), 2, tmp_path)


def test_a_planned_layout_keeps_the_limits_and_a_worker_with_others_is_refused(
        tmp_path: Path) -> None:
    layout = _planned(tmp_path, "[risk.velocity]\nmax_count = 30\n")
    assert layout.limits is not None and layout.limits["risk.velocity.max_count"] == 30
    same = parse_config("[risk.velocity]\nmax_count = 30\n")
    assert apply(same, layout, 1).risk.velocity.max_count == 30  # split at build time
    other = parse_config("[risk.velocity]\nmax_count = 40\n")
    with pytest.raises(ConfigError, match=r"\Arisk.velocity.max_count: 40 in this config, but "
                                          r"the cluster layout was planned with 30; "):
        apply(other, layout, 1)
    opted_out = parse_config("[cluster]\nsplit_limits = false\n[risk.velocity]\nmax_count = 30\n")
    with pytest.raises(ConfigError, match=r"\Acluster.split_limits: false in this config, "
                                          r"but the cluster layout was planned with true"):
        apply(opted_out, layout, 0)
    # The default table is EUR and USD: both written, USD's per-issuer limit other.
    stand_in = parse_config("[risk.velocity]\nmax_count = 30\n[standin.limits.USD]\n"
                            'per_payment_max = "200.00"\nper_card_max = "500.00"\n'
                            'per_issuer_max = "0.07"\n[standin.limits.EUR]\n'
                            'per_payment_max = "200.00"\nper_card_max = "500.00"\n'
                            'per_issuer_max = "50000.00"\n')
    with pytest.raises(ConfigError, match=r"\Astandin.limits.USD.per_issuer_max: 0.07 in "
                                          r"this config, but the cluster layout was planned "
                                          r"with 50000.00; "):
        apply(stand_in, layout, 0)


def test_the_limits_survive_the_layout_file_and_a_hand_written_layout_is_not_checked(
        tmp_path: Path) -> None:
    layout = _planned(tmp_path, "")
    save_layout(layout, tmp_path / "layout.json")
    loaded = load_layout(tmp_path / "layout.json")
    assert loaded == layout and loaded.limits is not None
    hand_written = msgspec.structs.replace(loaded, limits=None)
    assert apply(parse_config("[risk.velocity]\nmax_count = 40\n"), hand_written, 0)
    # A key this version does not know (a newer planner's) is left alone.
    newer = msgspec.structs.replace(loaded, limits={**loaded.limits, "risk.future": 1})
    assert apply(parse_config(""), newer, 0)


def test_serve_refuses_a_node_whose_limits_differ_from_the_layout(tmp_path: Path) -> None:
    layout = _planned(tmp_path, "[server]\nport = 0\n[admin]\nport = 0\n")
    save_layout(layout, tmp_path / "layout.json")
    config = tmp_path / "node-b.toml"
    config.write_text('[server]\nport = 0\n[admin]\nport = 0\n[standin.limits.USD]\n'
                      'per_payment_max = "200.00"\nper_card_max = "900.00"\n'
                      'per_issuer_max = "50000.00"\n[standin.limits.EUR]\n'
                      'per_payment_max = "200.00"\nper_card_max = "500.00"\n'
                      'per_issuer_max = "50000.00"\n')
    line = one_error_line(run("serve", "--config", str(config), "--cluster",
                              str(tmp_path / "layout.json"), "--shard", "1", "--demo"))
    assert line.startswith("Error: standin.limits.USD.per_card_max: 900.00 in this "
                           "config, but the "
                           "cluster layout was planned with 500.00; "), line
