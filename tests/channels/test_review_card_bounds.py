"""Reviewed defects of the card issuer's book at its bounds, reproduced before the fix."""

from __future__ import annotations

import msgspec

from channels.card import CardScheme
from channels.config import CardSchemeSpec
from switch.protocols import iso8583

PAN_A, PAN_B = "4111111111111111", "4012888888881881"


def scheme(**bounds: int) -> CardScheme:
    return CardScheme(msgspec.convert({
        "name": "p", "seed": 1, "issuers": [{"name": "a", "bins": ["40", "41"], "accounts": [
            {"pan": PAN_A, "balance": 10_000}, {"pan": PAN_B, "balance": 10_000}]}],
        **bounds}, CardSchemeSpec))


def advice(pan: str, stan: str, amount: int = 1000) -> iso8583.IsoMessage:
    return iso8583.IsoMessage("0120", {2: pan, 4: f"{amount:012d}", 7: "0115100000",
                                       11: stan, 39: "00", 41: "TERM0001"})


def authorization(pan: str, stan: str, amount: int = 1000) -> iso8583.IsoMessage:
    return iso8583.IsoMessage("0100", {2: pan, 4: f"{amount:012d}", 7: "0115100000",
                                       11: stan, 41: "TERM0001"})


def test_an_advice_past_the_accounts_bound_is_96_not_an_unknown_card() -> None:
    book = scheme(max_accounts=1)
    assert book.authorize(authorization(PAN_A, "000001"), 0.0).response_code == "00"
    # A real, issued card: the issuer cannot take it only because its book is full.
    assert book.authorize(authorization(PAN_B, "000002"), 0.0).response_code == "96"
    answer = book.advice(advice(PAN_B, "000003"))
    assert (answer.mti, answer.response_code) == ("0130", "96")
    assert book.bound_rejections == 2


def test_an_advice_past_the_records_bound_is_96_not_insufficient_funds() -> None:
    book = scheme(max_records=1)
    assert book.authorize(authorization(PAN_A, "000001"), 0.0).response_code == "00"
    assert book.available(PAN_B) == 10_000  # plenty of funds for the advice below
    answer = book.advice(advice(PAN_B, "000002"))
    assert (answer.mti, answer.response_code) == ("0130", "96")
    assert book.bound_rejections == 1
    assert book.available(PAN_B) == 10_000
