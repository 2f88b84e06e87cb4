"""Stand-in limits and exposure are per currency (switch/payment/standin.py).

They were raw minor units summed across currencies: 20,000 was 200.00 USD, but also
20,000 JPY (about 130 USD) and 20.000 KWD, and a card's USD and EUR stand-ins were added
up as if they were one currency. Limits are now stated per ISO 4217 code in major units
(``[standin.limits.USD] per_card_max = "500.00"``), exposure is counted per (card,
currency) and (issuer, currency), and a currency without limits is never stood in.

The first three tests use only the default config, so they run (and fail) on the code
before the change too.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest

from switch.clock import Clock
from switch.model import CardRef, Party, Payment, Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.payment.standin import StandIn, StandInConfig
from switch.serve.config import ConfigError, parse_config

TARGET = "card-issuer"
AT = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)


pytestmark = pytest.mark.anyio


def _standin(config: StandInConfig | None = None) -> StandIn:
    return StandIn(config or StandInConfig(), {}, None, Clock(),  # type: ignore[arg-type]
                   SwitchMetrics(), lambda endpoint, now: True)


def _payment(n: int, amount: int, currency: str, token: str = "tok-a") -> Payment:
    card = CardRef(token, "1111", "411111", "2812", "TERM0001", "MERCH00001", "5999",
                   f"{n:06d}", f"{n:012d}")
    return Payment(f"P1-{n}", f"k{n}", "card", amount, currency,
                   Party("ACCT000001"), Party("MERCH00001"), AT, card=card)


def _config(**tables: dict[str, str]) -> StandInConfig:
    return msgspec.convert({"limits": tables}, StandInConfig)


def _queued(standin: StandIn, payment: Payment) -> None:
    """Stand ``payment`` in and queue its advice, as the core does."""
    assert standin.decide(payment, TARGET) is not None, payment.payment_id
    standin.advise(payment, Result(payment.payment_id, Status.APPROVED, "00",
                                   "S1", stood_in=True), TARGET, ("issuer",), b"d")


# ------------------------------------------------------------- default config (old code)


async def test_a_cards_stand_ins_in_two_currencies_do_not_add_up() -> None:
    """Defaults: 200.00 per payment and 500.00 per card, in USD and in EUR alike. Two USD
    200.00 and one EUR 200.00 on one card were 60,000 "minor units" > 50,000: refused."""
    standin = _standin()
    assert standin.decide(_payment(1, 20_000, "USD"), TARGET) is not None
    assert standin.decide(_payment(2, 20_000, "USD"), TARGET) is not None
    assert standin.decide(_payment(3, 20_000, "EUR"), TARGET) is not None
    assert standin.decide(_payment(4, 20_000, "EUR"), TARGET) is not None
    # Each currency's own 500.00 still holds.
    assert standin.decide(_payment(5, 10_001, "USD"), TARGET) is None
    assert standin.decide(_payment(6, 10_000, "USD"), TARGET) is not None


async def test_a_currency_without_limits_is_never_stood_in() -> None:
    """Not in the default table (EUR, USD): refused, whatever the amount. 10,000 JPY
    (under 20,000 "minor units") and 1.000 KWD used to pass the USD-sized limit."""
    standin = _standin()
    for n, (amount, currency) in enumerate([(10_000, "JPY"), (1_000, "KWD"), (1, "GBP")]):
        assert standin.decide(_payment(n, amount, currency), TARGET) is None, currency
    assert standin.approved == 0


async def test_the_issuers_limit_is_per_currency_too() -> None:
    config = _config(USD={"per_payment_max": "100.00", "per_card_max": "100.00",
                          "per_issuer_max": "150.00"},
                     EUR={"per_payment_max": "100.00", "per_card_max": "100.00",
                          "per_issuer_max": "150.00"})
    standin = _standin(config)
    assert standin.decide(_payment(1, 10_000, "USD", "tok-a"), TARGET) is not None
    assert standin.decide(_payment(2, 10_000, "EUR", "tok-b"), TARGET) is not None
    assert standin.decide(_payment(3, 5_000, "USD", "tok-c"), TARGET) is not None
    assert standin.decide(_payment(4, 5_001, "USD", "tok-d"), TARGET) is None  # 150.01 USD
    assert standin.decide(_payment(5, 5_000, "EUR", "tok-d"), TARGET) is not None
    assert standin.exposure("tok-d", TARGET, "EUR") == (5_000, 15_000)
    assert standin.exposure("tok-d", TARGET, "USD") == (0, 15_000)


# ------------------------------------------------------------------ limits per currency


async def test_limits_are_major_units_turned_into_each_currencys_minor_units() -> None:
    """The same "2000" is 2,000 JPY (exponent 0), 2000.00 USD and 2000.000 KWD."""
    same = {"per_payment_max": "2000", "per_card_max": "2000", "per_issuer_max": "2000"}
    limits = _config(JPY=same, USD=same, KWD=same).minor_limits()
    assert {c: m.per_card for c, m in limits.items()} == {
        "JPY": 2_000, "USD": 200_000, "KWD": 2_000_000}
    standin = _standin(_config(JPY=same, USD=same, KWD=same))
    assert standin.decide(_payment(1, 2_001, "JPY"), TARGET) is None
    assert standin.decide(_payment(2, 2_000, "JPY"), TARGET) is not None
    assert standin.decide(_payment(3, 2_000_000, "KWD"), TARGET) is not None
    assert standin.decide(_payment(4, 2_000_001, "KWD", "tok-b"), TARGET) is None


async def test_a_zero_limit_stands_nothing_in() -> None:
    standin = _standin(_config(USD={"per_payment_max": "0.00", "per_card_max": "500.00",
                                    "per_issuer_max": "500.00"}))
    assert standin.decide(_payment(1, 1, "USD"), TARGET) is None


# -------------------------------------------------------------------- release per currency


async def test_a_withdrawn_stand_in_releases_its_own_currency_only() -> None:
    standin = _standin()  # 500.00 per card in USD and EUR
    usd = [_payment(n, 20_000, "USD") for n in (1, 2)]
    eur = [_payment(n, 20_000, "EUR") for n in (3, 4)]
    for payment in [*usd, *eur]:
        _queued(standin, payment)
    assert standin.exposure("tok-a", TARGET, "USD") == (40_000, 40_000)
    assert standin.withdraw(usd[0].payment_id)
    assert standin.exposure("tok-a", TARGET, "USD") == (20_000, 20_000)
    assert standin.exposure("tok-a", TARGET, "EUR") == (40_000, 40_000)
    # The USD room is back, the EUR room is not.
    assert standin.decide(_payment(5, 20_000, "USD"), TARGET) is not None
    assert standin.decide(_payment(6, 20_000, "EUR"), TARGET) is None


async def test_an_answered_advice_releases_its_own_currency_only() -> None:
    standin = _standin()
    _queued(standin, _payment(1, 20_000, "USD"))
    _queued(standin, _payment(2, 20_000, "EUR"))
    refused = standin._queue[0]
    assert refused.payment.currency == "USD"
    standin.answered(refused, "14")  # refused by the issuer: done with, released
    assert standin.exposure("tok-a", TARGET, "USD") == (0, 0)
    assert standin.exposure("tok-a", TARGET, "EUR") == (20_000, 20_000)


async def test_exposure_recovered_at_start_up_counts_in_its_currency() -> None:
    """A restart re-counts undelivered advices in their own currencies."""
    standin = _standin()
    standin.recovered(_payment(1, 40_000, "EUR"), TARGET)
    assert standin.exposure("tok-a", TARGET, "EUR") == (40_000, 40_000)
    assert standin.exposure("tok-a", TARGET, "USD") == (0, 0)
    assert standin.decide(_payment(2, 10_001, "EUR"), TARGET) is None
    assert standin.decide(_payment(3, 20_000, "USD"), TARGET) is not None


async def test_a_replaced_config_is_read_again() -> None:
    """The limits follow ``StandIn.config`` (tests/sim/plants.py lifts one that way)."""
    standin = _standin()
    assert standin.decide(_payment(1, 30_000, "USD"), TARGET) is None
    standin.config = _config(USD={"per_payment_max": "300.00", "per_card_max": "300.00",
                                  "per_issuer_max": "300.00"})
    assert standin.decide(_payment(2, 30_000, "USD"), TARGET) is not None


# ------------------------------------------------------------------------------ config


GOOD = """
[standin]
max_pending_advices = 50

[standin.limits.USD]
per_payment_max = "250.00"
per_card_max = "500"
per_issuer_max = "25000.50"

[standin.limits.JPY]
per_payment_max = "30000"
per_card_max = "60000"
per_issuer_max = "3000000"

[standin.limits.KWD]
per_payment_max = "75.5"
per_card_max = "150.250"
per_issuer_max = "7500"
"""


def test_a_limit_table_per_currency_parses_in_major_units() -> None:
    cfg = parse_config(GOOD, "s.toml").standin
    assert set(cfg.limits) == {"USD", "JPY", "KWD"}  # the default table is replaced
    minor = cfg.minor_limits()
    assert (minor["USD"].per_payment, minor["USD"].per_card,
            minor["USD"].per_issuer) == (25_000, 50_000, 2_500_050)
    assert (minor["JPY"].per_payment, minor["JPY"].per_issuer) == (30_000, 3_000_000)
    assert (minor["KWD"].per_payment, minor["KWD"].per_card) == (75_500, 150_250)


def test_the_default_table_is_usd_and_eur() -> None:
    cfg = parse_config("", "s.toml").standin
    minor = cfg.minor_limits()
    assert set(minor) == {"USD", "EUR"}
    assert all((m.per_payment, m.per_card, m.per_issuer) == (20_000, 50_000, 5_000_000)
               for m in minor.values())


def _bad(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "s.toml")
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _usd(**values: Any) -> str:
    table = {"per_payment_max": '"200.00"', "per_card_max": '"500.00"',
             "per_issuer_max": '"50000.00"'}
    table.update(values)
    return "[standin.limits.USD]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())


@pytest.mark.parametrize(("text", "expected"), [
    (_usd(per_card_max='"250.001"'),
     "s.toml: standin.limits.USD.per_card_max: '250.001' has 3 decimal(s), USD has 2"),
    (_usd().replace("USD", "JPY").replace('"200.00"', '"200.5"'),
     "s.toml: standin.limits.JPY.per_payment_max: '200.5' has 1 decimal(s), JPY has 0"),
    (_usd().replace("USD", "XYZ"),
     "s.toml: standin.limits.XYZ: unknown currency 'XYZ'"),
    (_usd(per_card_max="500.00"),
     's.toml: standin.limits.USD.per_card_max: write the amount in major units as a '
     'decimal string, e.g. "500.0"'),
    (_usd(per_card_max="500"),
     's.toml: standin.limits.USD.per_card_max: write the amount in major units as a '
     'decimal string, e.g. "500"'),
    (_usd(per_card_max='"-5"'), "s.toml: standin.limits.USD.per_card_max: '-5' is not an "
     "amount in major units: digits, at most 3 decimals, no sign or separators"),
    (_usd(per_card_max='"1,000.00"'), "s.toml: standin.limits.USD.per_card_max: '1,000.00' "
     "is not an amount in major units"),
    (_usd(per_card_max='"1.0000"'), "s.toml: standin.limits.USD.per_card_max: '1.0000' "
     "is not an amount in major units"),
    (_usd(per_card_max="true"),
     "s.toml: standin.limits.USD.per_card_max: Expected `str`, got `bool`"),
    (_usd().replace('per_issuer_max = "50000.00"\n', ""),
     "s.toml: standin.limits.USD: Object missing required field `per_issuer_max`"),
    (_usd(per_card_maxx='"1"'), "s.toml: standin.limits.USD.per_card_maxx: unknown key"),
    ("[standin.limits]\nUSD = 5\n", "s.toml: standin.limits.USD: Expected `object`, got "
     "`int`"),
])
def test_a_bad_limit_is_one_line_naming_its_key(text: str, expected: str) -> None:
    assert _bad(text).startswith(expected), _bad(text)


@pytest.mark.parametrize("key", ["per_payment_max_minor", "per_card_max_minor",
                                 "per_issuer_max_minor"])
def test_the_old_raw_minor_unit_keys_are_refused_naming_the_new_form(key: str) -> None:
    message = _bad(f"[standin]\n{key} = 20000\n")
    new = key.removesuffix("_minor")
    assert message == (
        f"s.toml: standin.{key}: raw minor units are not one amount across currencies "
        f"(20000 is 200.00 USD but 20000 JPY); state the limit per currency in major "
        f'units, e.g. [standin.limits.USD] {new} = "500.00"')


def test_serve_refuses_an_old_key_with_one_line(tmp_path: Path) -> None:
    from tests.test_cli_errors import one_error_line, run

    config = tmp_path / "old.toml"
    config.write_text("[standin]\nper_card_max_minor = 50000\n")
    line = one_error_line(run("serve", "--config", str(config), "--demo"))
    assert "standin.per_card_max_minor: raw minor units are not one amount" in line
    assert '[standin.limits.USD] per_card_max = "500.00"' in line


async def test_a_bad_table_built_in_code_fails_when_the_stand_in_is_made() -> None:
    """Not at the first outage: StandIn converts every limit when it is built."""
    with pytest.raises(ValueError, match=r"\Alimits\.USD\.per_card_max: '1\.001' has 3"):
        _standin(_config(USD={"per_payment_max": "1", "per_card_max": "1.001",
                              "per_issuer_max": "1"}))


async def test_stand_ins_awaiting_their_commit_count_against_the_advice_queue_bound() -> None:
    """The queue's bound was checked against queued advices only, and an advice is queued
    once its final is durable: every stand-in decided during one commit's wait passed it
    (41 advices against a bound of 16, simulate --vary-config seed 1237)."""
    standin = _standin(msgspec.structs.replace(StandInConfig(), max_pending_advices=2))
    first, second, third = (_payment(n, 100, "USD", token=f"tok-{n}") for n in (1, 2, 3))
    assert standin.decide(first, TARGET) is not None
    assert standin.decide(second, TARGET) is not None
    assert standin.decide(third, TARGET) is None  # two await their commit: no room
    standin.advise(first, Result(first.payment_id, Status.APPROVED, "00", "S1",
                                 stood_in=True), TARGET, ("issuer",), b"d")
    assert standin.pending == 1
    assert standin.decide(third, TARGET) is None  # one queued, one awaiting: still full
