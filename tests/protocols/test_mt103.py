"""MT103 reader: translation into CreditTransfer, tag-named errors, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.protocols import iso20022 as x
from switch.protocols.errors import CodecError
from switch.protocols.mt103 import MAX_MT_CHARS, parse_mt103

UETR = "eb6305c9-1f7f-49de-aed0-16487c27b42d"

MT103 = (
    "{1:F01BANKBEBBAXXX0000000000}{2:I103BANKDEFFXXXXN}"
    "{3:{108:MUR0001}{121:eb6305c9-1f7f-49de-aed0-16487c27b42d}}{4:\r\n"
    ":20:REF-2025-0001\r\n"
    ":23B:CRED\r\n"
    ":32A:250115EUR1234,56\r\n"
    ":33B:EUR1234,56\r\n"
    ":50K:/BE68539007547034\r\n"
    "JOHN DOE\r\n"
    "1 MAIN STREET\r\n"
    "BRUSSELS\r\n"
    ":52A:BANKBEBB\r\n"
    ":57A:/DE12345\r\n"
    "BANKDEFFXXX\r\n"
    ":59:/DE89370400440532013000\r\n"
    "JANE ROE\r\n"
    "FRANKFURT\r\n"
    ":70:/ROC/E2E-778/INVOICE 778 DATED 2025\r\n"
    "-01-10\r\n"
    ":71A:SHA\r\n"
    "-}{5:{CHK:123456789ABC}}"
)

EXPECTED = x.CreditTransfer(
    msg_id="REF-2025-0001",
    created_at="2025-01-15T00:00:00",
    settlement_method="INDA",
    instr_id="REF-2025-0001",
    end_to_end_id="E2E-778",
    uetr=UETR,
    amount_minor=123456,
    currency="EUR",
    settlement_date="2025-01-15",
    charge_bearer="SHAR",
    debtor=x.Party(name="JOHN DOE", iban="BE68539007547034",
                   address_lines=("1 MAIN STREET", "BRUSSELS")),
    debtor_agent_bic="BANKBEBB",
    creditor_agent_bic="BANKDEFFXXX",
    creditor=x.Party(name="JANE ROE", iban="DE89370400440532013000",
                     address_lines=("FRANKFURT",)),
    remittance="/ROC/E2E-778/INVOICE 778 DATED 2025-01-10",
)


def test_translates_to_credit_transfer() -> None:
    assert parse_mt103(MT103) == EXPECTED
    assert parse_mt103(MT103.encode()) == EXPECTED
    assert parse_mt103(MT103.replace("\r\n", "\n")) == EXPECTED  # LF-only files


def test_translation_is_a_valid_pacs008() -> None:
    ct = parse_mt103(MT103, created_at="2025-01-15T10:00:00Z")
    assert ct.created_at == "2025-01-15T10:00:00Z"
    assert x.decode_pacs008(x.encode_pacs008(ct)) == ct


@pytest.mark.parametrize(("code", "bearer"), [("OUR", "DEBT"), ("SHA", "SHAR"), ("BEN", "CRED")])
def test_charges_translation(code: str, bearer: str) -> None:
    assert parse_mt103(MT103.replace(":71A:SHA", f":71A:{code}")).charge_bearer == bearer


def test_minimal_output_message_uses_header_addresses() -> None:
    """No 52A/57A: the sender and receiver are the agents. Output (O) headers swap roles."""
    mt = (
        "{1:F01BANKDEFFAXXX1234123456}"
        "{2:O1031200250115BANKBEBBAXXX12341234562501151200N}"
        f"{{3:{{121:{UETR}}}}}{{4:\n"
        ":20:R1\n:23B:CRED\n:32A:250115JPY1000000,\n:50K:ALICE\n:59:/12345678\nBOB\n"
        ":71A:OUR\n-}"
    )
    ct = parse_mt103(mt)
    assert ct.debtor_agent_bic == "BANKBEBB"  # sender, from the output header's MIR
    assert ct.creditor_agent_bic == "BANKDEFF"  # receiver, from the basic header
    assert ct.amount_minor == 1_000_000 and ct.currency == "JPY"
    assert ct.debtor == x.Party(name="ALICE")
    assert ct.creditor == x.Party(name="BOB", account_id="12345678")
    assert ct.end_to_end_id == "NOTPROVIDED" and ct.remittance is None


@pytest.mark.parametrize(
    ("amount", "ccy", "minor"),
    [("1234,56", "EUR", 123456), ("1234,", "EUR", 123400), ("1234,5", "USD", 123450),
     ("0,001", "BHD", 1), ("500,", "KRW", 500)],
)
def test_amounts(amount: str, ccy: str, minor: int) -> None:
    ct = parse_mt103(MT103.replace(":32A:250115EUR1234,56", f":32A:250115{ccy}{amount}"))
    assert (ct.currency, ct.amount_minor) == (ccy, minor)


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        (":32A:250115EUR1234,56", ":32A:251315EUR1234,56", "tag 32A"),
        (":32A:250115EUR1234,56", ":32A:250115EUR1234.56", "tag 32A"),
        (":32A:250115EUR1234,56", ":32A:250115EUR1234,567", "tag 32A"),
        (":32A:250115EUR1234,56", ":32A:250115XXX1234,56", "tag 32A"),
        (":32A:250115EUR1234,56", ":32A:250115EUR", "tag 32A"),
        (":32A:250115EUR1234,56\r\n", "", "tag 32A"),
        (":71A:SHA", ":71A:ALL", "tag 71A"),
        (":23B:CRED", ":23B:XXXX", "tag 23B"),
        (":20:REF-2025-0001", ":20:/REF", "tag 20"),
        (":20:REF-2025-0001", ":20:REF-2025-0001-TOO-LONG", "tag 20"),
        (":20:REF-2025-0001", ":20:REF-2025-0001\r\n:20:AGAIN", "tag 20"),
        (":50K:/BE68539007547034\r\n", ":50F:/BE68539007547034\r\n", "tag 50F"),
        ("JOHN DOE\r\n", "JOHN DOE\r\nLINE 3\r\nLINE 4\r\nLINE 5\r\n", "tag 50K"),
        ("JANE ROE", "JANE ROE WITH A NAME LONGER THAN 35 CHARS", "tag 59"),
        (":52A:BANKBEBB", ":52A:NOTABIC", "tag 52A"),
        ("{121:eb6305c9", "{122:eb6305c9", "tag 121"),
        ("{121:eb6305c9-1f7f-49de", "{121:eb6305c9-1f7f-39de", "tag 121"),
        ("{3:{108:MUR0001}{121:eb6305c9-1f7f-49de-aed0-16487c27b42d}}", "", "block 3"),
        ("I103BANKDEFF", "I202BANKDEFF", "block 2"),
        ("F01BANKBEBB", "F01BANK", "block 1"),
        ("JOHN DOE", "JÖHN DOE", "block 4"),
        ("\r\n-}", "\r\n}", "block 4"),
    ],
)
def test_bad_input_names_the_tag(old: str, new: str, path: str) -> None:
    assert old in MT103
    with pytest.raises(CodecError) as exc:
        parse_mt103(MT103.replace(old, new, 1))
    assert exc.value.path == path


def test_structural_errors() -> None:
    for bad in ["", "{", "{9:x}", "garbage", MT103 + "trailing", "{1:F01}" * 2]:
        with pytest.raises(CodecError):
            parse_mt103(bad)
    with pytest.raises(CodecError, match=f"MAX_MT_CHARS={MAX_MT_CHARS}"):
        parse_mt103(MT103 + " " * MAX_MT_CHARS)
    with pytest.raises(CodecError):
        parse_mt103(b"\xff\xfe")


# --------------------------------------------------------------------------- fuzzing


@st.composite
def mutated(draw: st.DrawFn) -> str:
    data = list(MT103)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        chars = st.sampled_from([*"{}:-/,\r\n0123456789ABZaz ", "\x00", "é", ":20:", "-}"])
        if op == "set" and data:
            data[pos] = draw(chars)
        elif op == "insert":
            data[pos:pos] = draw(st.lists(chars, min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
    return "".join(data)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_fuzz_mutated_messages_raise_only_codec_error(text: str) -> None:
    try:
        ct = parse_mt103(text)
    except CodecError:
        return
    # Anything accepted must translate into a valid pacs.008.
    assert x.decode_pacs008(x.encode_pacs008(ct)) == ct


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_random_input_raises_only_codec_error(data: str | bytes) -> None:
    with contextlib.suppress(CodecError):
        parse_mt103(data)
