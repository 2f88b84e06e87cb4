"""EMVCo merchant-presented QR: CRC, the shared reference vectors, validation, fuzzing."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.protocols import emvqr as q
from switch.protocols.errors import CodecError

VECTORS_PATH = Path(__file__).resolve().parents[3] / "shared/reference/emvqr_vectors.tsv"


def _load_vectors() -> list[tuple[str, bool, str]]:
    """Rows of ``name<TAB>yes|no<TAB>payload``; '#' lines are comments (the header)."""
    rows = []
    for line in VECTORS_PATH.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, valid, payload = line.split("\t")
        rows.append((name, valid == "yes", payload))
    return rows


VECTORS = _load_vectors()
VALID = {name: payload for name, ok, payload in VECTORS if ok}

# Where each invalid vector must fail, so an error for the wrong reason does not pass.
INVALID_PATHS = {
    "bad-crc": "tag 63",
    "truncated": "tag 62",
    "length-overrun": "tag 59",
    "crc-not-last": "tag 63",
}

# Marked valid in the vector file, yet its merchant city "Banteay Meanchey" has 16
# characters where EMVCo allows 15. Strict parsing follows the standard and refuses it;
# lenient_lengths=True accepts it (some schemes issue such codes).
OVER_LONG_CITY = {"public-sample-kh"}


def _crc_reference(data: bytes) -> int:
    """Bit-by-bit CRC-16/CCITT-FALSE, to check the table-driven one against."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc_check_value() -> None:
    assert q.crc16(b"123456789") == 0x29B1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert q.crc16(data) == _crc_reference(data)


def test_vector_file_has_every_kind() -> None:
    names = {name for name, _, _ in VECTORS}
    assert set(INVALID_PATHS) <= names and len(VALID) >= 3


@pytest.mark.parametrize(("name", "valid", "payload"), VECTORS, ids=[v[0] for v in VECTORS])
def test_reference_vector(name: str, valid: bool, payload: str) -> None:
    if not valid:
        with pytest.raises(CodecError) as exc:
            q.parse(payload)
        assert exc.value.path == INVALID_PATHS[name]
        with pytest.raises(CodecError):
            q.parse(payload, lenient_lengths=True)  # leniency never excuses structure
        return
    if name in OVER_LONG_CITY:
        with pytest.raises(CodecError, match=r"1\.\.15") as exc:
            q.parse(payload)
        assert exc.value.path == "tag 60"
        qr = q.parse(payload, lenient_lengths=True)
        assert q.parse(q.build(qr, lenient_lengths=True), lenient_lengths=True) == qr
        return
    qr = q.parse(payload)
    rebuilt = q.build(qr)
    assert q.parse(rebuilt) == qr
    assert rebuilt == payload  # these vectors are already in ascending ID order


def test_parsed_fields_of_dynamic_vector() -> None:
    qr = q.parse(VALID["dynamic-with-amount"])
    assert qr == q.MerchantQr(
        initiation=q.DYNAMIC,
        merchant_accounts=(
            q.MerchantAccount(
                tag="26",
                template=(q.Tlv("00", "com.example.qr"), q.Tlv("01", "MERCHANT0002")),
            ),
        ),
        mcc="5411",
        currency="840",
        amount="25.50",
        country="US",
        merchant_name="CORNER GROCERY",
        merchant_city="AUSTIN",
        additional_data=(q.Tlv("01", "INV-77821"), q.Tlv("05", "REF123456")),
    )
    assert qr.merchant_accounts[0].gui == "com.example.qr"


def test_kh_sample_out_of_order_ids_parse_in_lenient_mode() -> None:
    qr = q.parse(VALID["public-sample-kh"], lenient_lengths=True)
    assert qr.merchant_accounts == (
        q.MerchantAccount(tag="15", value="37210116372101160123456789ABCDE"),
    )
    assert (qr.mcc, qr.currency, qr.amount, qr.country) == ("4131", "840", "10.00", "KH")
    assert qr.merchant_city == "Banteay Meanchey"


def test_build_golden_payload() -> None:
    qr = q.MerchantQr(
        initiation=q.STATIC,
        merchant_accounts=(
            q.MerchantAccount(tag="26", template=(q.Tlv("00", "com.example.qr"),
                                                  q.Tlv("01", "MERCHANT0001"))),
        ),
        mcc="5812",
        currency="156",
        country="CN",
        merchant_name="NOODLE HOUSE",
        merchant_city="SHANGHAI",
    )
    assert q.build(qr) == VALID["static-no-amount"]
    assert q.build(qr).endswith("6304F3C7")


def _with_crc(body: str) -> str:
    body += "6304"
    return body + f"{q.crc16(body.encode()):04X}"


BASE = "000201010212" "26180014com.example.qr" "52045411" "5303840"
TAIL = "5802US" "5905SHOP1" "6006AUSTIN"


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (_with_crc("000202" + BASE[6:] + TAIL), "tag 00"),
        (_with_crc("010212000201" + BASE[12:] + TAIL), "tag 00"),
        (_with_crc(BASE.replace("010212", "010213") + TAIL), "tag 01"),
        (_with_crc(BASE + "540512,50" + TAIL), "tag 54"),
        (_with_crc(BASE + "5414123456789012.5" + TAIL), "tag 54"),
        (_with_crc(BASE + "5401." + TAIL), "tag 54"),
        (_with_crc(BASE + TAIL.replace("5905SHOP1", "5926" + "S" * 26)), "tag 59"),
        (_with_crc(BASE + TAIL.replace("6006AUSTIN", "6016" + "C" * 16)), "tag 60"),
        (_with_crc(BASE + TAIL.replace("5802US", "")), "tag 58"),
        (_with_crc(BASE + TAIL.replace("5802US", "5802us")), "tag 58"),
        (_with_crc(BASE.replace("52045411", "5203541") + TAIL), "tag 52"),
        (_with_crc(BASE.replace("26180014com.example.qr", "") + TAIL), "tag 02-51"),
        (_with_crc(BASE.replace("26180014com.example.qr", "26160112MERCHANT0001") + TAIL),
         "tag 26.00"),
        (_with_crc(BASE.replace("26180014com.example.qr", "26100014com.ex") + TAIL),
         "tag 26.00"),
        (_with_crc(BASE + "550202" + TAIL), "tag 56"),
        (_with_crc(BASE + "550203" + "56031.0" + TAIL), "tag 56"),
        (_with_crc(BASE + "550204" + TAIL), "tag 55"),
        (_with_crc(BASE + TAIL + "5802US"), "tag 58"),
        (_with_crc(BASE + TAIL + "6200"), "tag 62"),
        (_with_crc(BASE + TAIL + "62040199"), "tag 62.01"),
        (BASE + TAIL, "tag 63"),
        (BASE + TAIL + "6304", "tag 63"),
        (BASE + TAIL + "6305ABCDE", "tag 63"),
        (BASE + "5X", "payload"),
        (BASE + "5204", "tag 52"),
    ],
)
def test_invalid_payload_names_the_tag(payload: str, path: str) -> None:
    with pytest.raises(CodecError) as exc:
        q.parse(payload)
    assert exc.value.path == path


def test_valid_variants_and_lowercase_crc() -> None:
    ok = _with_crc(BASE + "550203" + "57043.50" + TAIL + "610575001" + "80080004TEST")
    qr = q.parse(ok)
    assert qr.convenience_fee_percentage == "3.50" and qr.postal_code == "75001"
    assert qr.extra == (q.Tlv("80", "0004TEST"),)
    assert q.parse(ok[:-4] + ok[-4:].lower()) == qr
    assert q.parse(ok.encode()) == qr


def test_build_refuses_invalid_structs() -> None:
    good = q.parse(VALID["dynamic-with-amount"])
    fields = {f: getattr(good, f) for f in good.__struct_fields__}
    for change, path in [
        ({"merchant_name": "N" * 26}, "tag 59"),
        ({"amount": "1e5"}, "tag 54"),
        ({"merchant_accounts": ()}, "tag 02-51"),
        ({"merchant_accounts": (q.MerchantAccount(tag="52", value="x"),)}, "tag 52"),
        ({"merchant_accounts": (q.MerchantAccount(tag="02", template=(q.Tlv("00", "a"),)),)},
         "tag 02"),
        ({"additional_data": (q.Tlv("01", "x" * 100),)}, "tag 62.01"),
        ({"extra": (q.Tlv("63", "ABCD"),)}, "tag 63"),
        ({"merchant_name": "\ud800"}, "tag 63"),  # lone surrogate: no UTF-8 for the CRC
    ]:
        with pytest.raises(CodecError) as exc:
            q.build(q.MerchantQr(**{**fields, **change}))  # type: ignore[arg-type]
        assert exc.value.path == path, change


# --------------------------------------------------------------------------- fuzzing


@st.composite
def mutated(draw: st.DrawFn) -> str:
    data = list(draw(st.sampled_from(sorted(VALID.values()))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        chars = st.sampled_from([*"0123456789.ABCF ", "\x00", "é", "٣", "6304", "99"])
        if op == "set" and data:
            data[pos] = draw(chars)
        elif op == "insert":
            data[pos:pos] = draw(st.lists(chars, min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 6))]
        else:
            del data[pos:]
    return "".join(data)


def _fixing_crc(payload: str) -> str:
    """Recompute a trailing CRC so mutations reach the checks behind the CRC."""
    at = payload.rfind("6304")
    return _with_crc(payload[:at]) if at >= 0 else payload


@settings(max_examples=300, deadline=None)
@given(mutated(), st.booleans())
def test_fuzz_mutated_payloads_raise_only_codec_error(payload: str, fix_crc: bool) -> None:
    if fix_crc:
        payload = _fixing_crc(payload)
    for lenient in (False, True):
        try:
            qr = q.parse(payload, lenient_lengths=lenient)
        except CodecError:
            continue
        assert q.parse(q.build(qr, lenient_lengths=lenient), lenient_lengths=lenient) == qr


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200) | st.text().map(lambda s: "000201" + s))
def test_fuzz_random_input_raises_only_codec_error(data: str | bytes) -> None:
    with contextlib.suppress(CodecError):
        q.parse(data)


_ANS = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=25)
_DIGITS = st.text("0123456789", min_size=1)


@st.composite
def merchant_qrs(draw: st.DrawFn) -> q.MerchantQr:
    tags = draw(st.lists(st.integers(2, 51), min_size=1, max_size=3, unique=True))
    accounts = tuple(
        q.MerchantAccount(tag=f"{t:02d}", value=draw(_ANS)) if t <= 25 else q.MerchantAccount(
            tag=f"{t:02d}",
            template=(q.Tlv("00", draw(_ANS)),
                      *[q.Tlv(f"{s:02d}", draw(_ANS)) for s in
                        draw(st.lists(st.integers(1, 99), max_size=2, unique=True))]),
        )
        for t in tags
    )
    tip = draw(st.sampled_from([None, "01", "02", "03"]))
    amount = draw(st.none() | st.decimals(0, 10**9, places=2).map(str))
    return q.MerchantQr(
        initiation=draw(st.sampled_from([None, q.STATIC, q.DYNAMIC])),
        merchant_accounts=accounts,
        mcc=draw(st.text("0123456789", min_size=4, max_size=4)),
        currency=draw(st.text("0123456789", min_size=3, max_size=3)),
        amount=amount,
        tip_indicator=tip,
        convenience_fee_fixed="1.00" if tip == "02" else None,
        convenience_fee_percentage="2.5" if tip == "03" else None,
        country=draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2)),
        merchant_name=draw(_ANS),
        merchant_city=draw(_ANS.filter(lambda s: len(s) <= 15)),
        postal_code=draw(st.none() | _DIGITS.filter(lambda s: len(s) <= 10)),
        additional_data=draw(st.none() | st.lists(st.integers(1, 99), min_size=1, max_size=3,
                                                  unique=True).map(
            lambda ts: tuple(q.Tlv(f"{t:02d}", "v" * (t % 25 + 1)) for t in ts))),
    )


@settings(max_examples=200, deadline=None)
@given(merchant_qrs())
def test_build_then_parse_is_identity(qr: q.MerchantQr) -> None:
    payload = q.build(qr)
    assert q.parse(payload) == qr
    assert q.build(q.parse(payload)) == payload
