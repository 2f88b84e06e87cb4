"""Every ISO 8583 message we emit, read back by pyiso8583 with a spec written here.

The spec below is the 1987 layout as published (field numbers, n/an/ans types, fixed or
LLVAR lengths), written out independently of switch/protocols/iso8583.py, which is not
imported for its spec. Messages come from the real builders: the card adapter's 0100,
0120, 0400/0401 and 0800, and the card simulator's answers to them (0110, 0130, 0410,
0810). Each field is then checked against what the 1987 layout and the payment say.
"""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import iso8583 as pyiso
import msgspec
import pytest

from channels.card import CardScheme
from channels.config import CardSchemeSpec
from switch.adapters.iso8583 import network_pan, original_request
from switch.model import CardRef, Party, Payment, luhn_ok
from switch.protocols import iso8583 as ours


def _f(kind: str, len_type: int, max_len: int) -> dict[str, Any]:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": len_type, "max_len": max_len,
            "desc": kind}


# ISO 8583:1987, ASCII. (len_type 0 = fixed, 2 = LLVAR.)
SPEC_1987: dict[str, dict[str, Any]] = {
    "h": _f("header", 0, 0),
    "t": _f("n4 MTI", 0, 4),
    "p": _f("b64 primary bitmap, hex", 0, 16),
    "1": _f("b64 secondary bitmap, hex", 0, 16),
    "2": _f("n..19 PAN", 2, 19),
    "3": _f("n6 processing code", 0, 6),
    "4": _f("n12 amount, transaction", 0, 12),
    "7": _f("n10 transmission date & time", 0, 10),
    "11": _f("n6 STAN", 0, 6),
    "12": _f("n6 time, local", 0, 6),
    "13": _f("n4 date, local", 0, 4),
    "14": _f("n4 date, expiration", 0, 4),
    "18": _f("n4 merchant type", 0, 4),
    "22": _f("n3 POS entry mode", 0, 3),
    "32": _f("n..11 acquiring institution id", 2, 11),
    "37": _f("an12 RRN", 0, 12),
    "38": _f("an6 authorization id response", 0, 6),
    "39": _f("an2 response code", 0, 2),
    "41": _f("ans8 card acceptor terminal id", 0, 8),
    "42": _f("ans15 card acceptor id", 0, 15),
    "43": _f("ans40 card acceptor name/location", 0, 40),
    "49": _f("an3 currency code, transaction", 0, 3),
    "70": _f("n3 network management information code", 0, 3),
    "90": _f("n42 original data elements", 0, 42),
}
NUMERIC = {"2", "3", "4", "7", "11", "12", "13", "14", "18", "22", "32", "49", "70", "90"}
ACQUIRER = "123456"


def read(raw: bytes) -> dict[str, str]:
    """pyiso8583's reading of ``raw``, with the n-type content check it leaves to us."""
    doc, _ = pyiso.decode(bytearray(raw), SPEC_1987)
    for de in NUMERIC & doc.keys():
        assert doc[de].isdigit(), f"DE{de} is n but holds {doc[de]!r}"
    return doc


def de7(at: datetime) -> str:
    return at.strftime("%m%d%H%M%S")


def payment(rng: random.Random, n: int, pan_length: int) -> Payment:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86400))
    card = CardRef(
        token="".join(rng.choices(string.hexdigits.lower(), k=32)),
        last4=f"{rng.randrange(10_000):04d}", bin=rng.choice(["411111", "455673", "542418"]),
        expiry="2812", terminal_id=f"T{rng.randrange(10**7):07d}",
        merchant_id=f"M{rng.randrange(10**6):06d}", mcc="5999",
        stan=f"{rng.randrange(1, 10**6):06d}", rrn=f"{rng.randrange(10**12):012d}",
        pan_length=pan_length)
    return Payment(f"P1-{n}", f"k{n}", "card", rng.randrange(1, 10**9), "USD",
                   Party("ACCT1"), Party("MERCH1"), at, card=card)


def scheme() -> CardScheme:
    issuer = {"name": "all", "bins": [str(d) for d in range(1, 10)], "balance_min": 10**12,
              "balance_max": 10**12 + 1, "txn_limit": 10**12, "unissued_rate": 0.0,
              "blocked_rate": 0.0, "expired_rate": 0.0}
    spec = {"name": "paynet", "seed": 1, "business_month": "2601", "issuers": [issuer]}
    return CardScheme(msgspec.convert(spec, CardSchemeSpec))


def check_original(doc: dict[str, str], p: Payment) -> None:
    assert p.card is not None
    assert doc["2"] == network_pan(p.card) and luhn_ok(doc["2"])
    assert doc["3"] == "000000"
    assert doc["4"] == f"{p.amount:012d}"
    assert doc["12"] == p.received_at.strftime("%H%M%S")
    assert doc["13"] == p.received_at.strftime("%m%d")
    assert doc["14"] == "2812" and doc["18"] == "5999" and doc["22"] == "010"
    assert doc["32"] == ACQUIRER
    assert doc["37"] == p.card.rrn
    assert doc["41"] == p.card.terminal_id.ljust(8)
    assert doc["42"] == p.card.merchant_id.ljust(15)
    assert doc["49"] == "840"


@pytest.mark.parametrize("seed", range(5))
def test_authorization_advice_reversal_and_their_answers(seed: int) -> None:
    rng = random.Random(seed)
    issuer = scheme()
    for n in range(20):
        p = payment(rng, n, rng.choice([13, 16, 19]))
        assert p.card is not None
        at, stan = p.received_at, int(p.card.stan)

        request = original_request(p, ACQUIRER)
        doc = read(ours.encode(request))
        assert doc["t"] == "0100" and doc["7"] == de7(at) and doc["11"] == p.card.stan
        check_original(doc, p)

        answer = read(ours.encode(issuer.authorize(request, float(n))))
        assert answer["t"] == "0110" and answer["39"] == "00"
        assert len(answer["38"]) == 6
        # The matching key (DE11, DE41) and the amount come back unchanged.
        assert (answer["11"], answer["41"], answer["4"]) == (doc["11"], doc["41"], doc["4"])

        advice = ours.authorization_advice(request, response_code="00", auth_code="S1A2B3")
        adv = read(ours.encode(advice))
        assert adv["t"] == "0120" and adv["38"] == "S1A2B3" and adv["39"] == "00"
        check_original(adv, p)
        assert read(ours.encode(issuer.advice(advice)))["t"] == "0130"

        sent = at + timedelta(seconds=30)
        reversal = ours.reversal_request(request, stan=stan % 999_999 + 1, transmitted_at=sent,
                                         reason_code="68")
        rev = read(ours.encode(reversal))
        assert rev["t"] == "0400" and rev["7"] == de7(sent) and rev["39"] == "68"
        assert rev["11"] == f"{stan % 999_999 + 1:06d}"
        # DE90: original MTI n4, STAN n6, DE7 n10, acquirer n11, forwarder n11.
        assert rev["90"] == f"0100{p.card.stan}{de7(at)}{ACQUIRER.zfill(11)}{'0' * 11}"
        check_original(rev, p)
        assert read(ours.encode(ours.repeat(reversal)))["t"] == "0401"
        rev_answer = read(ours.encode(issuer.reverse(reversal)))
        assert rev_answer["t"] == "0410" and rev_answer["39"] == "00"
        assert rev_answer["90"] == rev["90"]
    issuer.check_ledger()


@pytest.mark.parametrize("code", ["001", "002", "301"])
def test_network_management(code: str) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    request = read(ours.encode(ours.network_request(code, stan=42, transmitted_at=at)))
    assert request == {"t": "0800", "p": "8220000000000000", "1": "0400000000000000",
                       "7": "0304050607", "11": "000042", "70": code}
    answer = read(ours.encode(ours.response(ours.network_request(
        code, stan=42, transmitted_at=at), "00")))
    assert (answer["t"], answer["11"], answer["39"], answer["70"]) == ("0810", "000042", "00",
                                                                      code)


@pytest.mark.parametrize("length", [13, 16, 19])
def test_de2_is_luhn_valid_keeps_length_bin_last4_and_is_stable(length: int) -> None:
    rng = random.Random(length)
    pans = set()
    for n in range(200):
        p = payment(rng, n, length)
        assert p.card is not None
        pan = read(ours.encode(original_request(p, ACQUIRER)))["2"]
        assert luhn_ok(pan), pan
        assert len(pan) == length
        assert pan.startswith(p.card.bin) and pan.endswith(p.card.last4)
        assert network_pan(p.card) == pan  # the same card, the same number, every time
        pans.add(pan)
    assert len(pans) == 200  # and different cards get different numbers


def test_the_checkers_can_fail() -> None:
    p = payment(random.Random(1), 1, 16)
    raw = ours.encode(original_request(p, ACQUIRER))
    # A PAN whose LL length says 17 where 16 digits follow misaligns every later field.
    bad = raw.replace(b"16" + network_pan(p.card).encode(),  # type: ignore[arg-type]
                      b"17" + network_pan(p.card).encode(), 1)  # type: ignore[arg-type]
    with pytest.raises((pyiso.DecodeError, AssertionError)):
        check_original(read(bad), p)
    assert not luhn_ok(network_pan(p.card)[:-1] + "0") or not luhn_ok(  # type: ignore[arg-type]
        network_pan(p.card)[:-1] + "1")  # type: ignore[arg-type]
    # A field this spec does not define (DE55) is refused (pyiso8583 raises KeyError).
    with pytest.raises(KeyError):
        read(b"0100" + b"0000000000000200" + b"01X")
