"""Codec defects found in review, each pinned by the reproduction that showed it."""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import msgspec
import pytest
import xmlschema

from switch.adapters.qr import QrAdapter
from switch.adapters.specs import QrAdapterConfig
from switch.protocols import iso20022 as x
from switch.protocols import qrapi
from switch.protocols.errors import CodecError
from switch.protocols.framing import FrameDecoder, frame
from tests.protocols.test_iso20022 import CT, GOLDEN_PACS008

XSD = Path(__file__).resolve().parents[1] / "conformance" / "xsd"


@cache
def pacs008_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD / "pacs.008.001.08.xsd")


# --------------------------------------------------------------------------- ISO 20022

# ISO 8601 forms datetime.fromisoformat takes and xs:dateTime / xs:date refuse: each was
# written into a pacs.008 that failed validation against the official schema.
_BAD_DATETIMES = [
    "2025-01-15T09:30:00+0100",  # zone without a colon
    "2025-01-15T09:30:00+01",  # zone without minutes
    "2025-W03-3T09:30:00",  # ISO week date
    "2025-01-15T093000.5Z",  # basic time
    "2025-01-15T09:30:00,5",  # decimal comma
    "2025-01-15T09:30:00+15:00",  # zone past 14:00
]
_GOOD_DATETIMES = [
    "2025-01-15T09:30:00",
    "2025-01-15T09:30:00Z",
    "2025-01-15T09:30:00.123+01:00",
    "2025-01-15T09:30:00.1234567-14:00",
]


@pytest.mark.parametrize("value", _BAD_DATETIMES)
def test_pacs008_refuses_a_creation_time_the_schema_refuses(value: str) -> None:
    ct = msgspec.structs.replace(CT, created_at=value)
    with pytest.raises(CodecError) as info:
        x.encode_pacs008(ct)
    assert info.value.path == "Document/FIToFICstmrCdtTrf/GrpHdr/CreDtTm"
    # ... and the reader refuses what the writer would not write.
    doc = GOLDEN_PACS008.replace(b"2025-01-15T09:30:00Z", value.encode())
    with pytest.raises(CodecError) as info:
        x.decode_pacs008(doc)
    assert info.value.path == "Document/FIToFICstmrCdtTrf/GrpHdr/CreDtTm"


@pytest.mark.parametrize("value", ["2025-W03-3", "2025-01-15Z", "2025-1-15 "])
def test_pacs008_refuses_a_settlement_date_the_schema_refuses(value: str) -> None:
    ct = msgspec.structs.replace(CT, settlement_date=value)
    with pytest.raises(CodecError) as info:
        x.encode_pacs008(ct)
    assert info.value.path == "Document/FIToFICstmrCdtTrf/CdtTrfTxInf/IntrBkSttlmDt"


@pytest.mark.parametrize("value", _GOOD_DATETIMES)
def test_pacs008_schema_valid_creation_times_still_pass(value: str) -> None:
    ct = msgspec.structs.replace(CT, created_at=value)
    raw = x.encode_pacs008(ct)
    pacs008_schema().validate(raw)
    assert x.decode_pacs008(raw) == ct


def test_status_report_times_follow_the_same_rule() -> None:
    report = x.status_report_for(CT, msg_id="R1", created_at="2025-W03-3T09:30:00",
                                 status="ACCP")
    with pytest.raises(CodecError) as info:
        x.encode_pacs002(report)
    assert info.value.path == "Document/FIToFIPmtStsRpt/GrpHdr/CreDtTm"
    request = x.status_request_for(CT, msg_id="Q1", created_at="2025-01-15T09:30:00+01")
    with pytest.raises(CodecError):
        x.encode_pacs028(request)


# --------------------------------------------------------------------------- QR scheme API

_BAD_UTF8_REPLY = b"\x82\xa3ref\xa2\xff\xfe\xa6status\xa8approved"
_DEEP_REQUEST = b"\x81\xa3ref" + b"\x91" * 100_000 + b"\x90"


@pytest.mark.parametrize("data", [_BAD_UTF8_REPLY, _DEEP_REQUEST])
def test_qr_api_decoders_raise_only_decode_errors(data: bytes) -> None:
    """Invalid UTF-8 escaped as UnicodeDecodeError, deep nesting as RecursionError."""
    with pytest.raises(msgspec.DecodeError):
        qrapi.decode_reply(data)
    with pytest.raises(msgspec.DecodeError):
        qrapi.decode_request(data)


def test_qr_adapter_counts_an_undecodable_answer_as_malformed() -> None:
    adapter = QrAdapter(QrAdapterConfig(name="qr", port=1))
    adapter._on_frame(_BAD_UTF8_REPLY, None)  # type: ignore[arg-type]  # link unused
    assert adapter.malformed == 1


# --------------------------------------------------------------------------- framing


def test_a_frame_trickled_in_small_reads_costs_linear_time() -> None:
    """Each read re-joined the whole partial frame: 1 MiB in 64-byte reads copied ~8 GB
    (seconds of CPU per frame, a peer's cheap way to pin a core)."""
    size = 1024 * 1024
    decoder = FrameDecoder(size)
    data = frame(b"x" * size) + frame(b"yz")
    got = []
    started = time.perf_counter()
    for i in range(0, len(data), 64):
        got.extend(bytes(f) for f in decoder.feed(data[i:i + 64]))
    elapsed = time.perf_counter() - started
    assert got == [b"x" * size, b"yz"]
    assert decoder.buffered == 0
    assert elapsed < 0.5, f"{elapsed:.2f} s for one 1 MiB frame"


def test_trickled_frames_split_anywhere_come_out_whole() -> None:
    payloads = [b"", b"a", b"bc" * 50, b"\x00" * 7]
    data = b"".join(frame(p) for p in payloads)
    for cut in (1, 2, 3, 5, 7, 64):
        decoder = FrameDecoder(1024)
        got = []
        for i in range(0, len(data), cut):
            got.extend(bytes(f) for f in decoder.feed(data[i:i + cut]))
            assert decoder.buffered <= 4 + 1024
        assert got == payloads
        assert decoder.buffered == 0


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize(("info", "reason"), [
    ("TECHNICAL ERROR 91", "91"),
    ("TECHNICAL ERROR \u00e9\u00e9", "96"),  # network free text, not a DE39 code
    ("TECHNICAL ERROR \u0669\u0661", "96"),  # Arabic-Indic digits pass str.isdigit()
    ("TECHNICAL ERROR 9", "96"),
    ("TECHNICAL ERROR 00", "96"),  # a failure must not carry the approval code
])
def test_swift_technical_refusal_maps_onto_the_de39_scale(info: str, reason: str) -> None:
    from switch.adapters.swift import reply_for_status

    report = x.status_report_for(CT, msg_id="R1", created_at="2025-01-15T09:30:00Z",
                                 status="RJCT", reason="MS03", additional_info=info)
    reply = reply_for_status(x.decode_pacs002(x.encode_pacs002(report)))
    assert reply is not None
    assert (reply.outcome, reply.reason) == ("failed", reason)


@pytest.mark.parametrize(("code", "reason"), [
    ("TECHNICAL_91", "91"), ("TECHNICAL_00", "96"), ("TECHNICAL_\u0669\u0661", "96"),
])
def test_qr_technical_failure_maps_onto_the_de39_scale(code: str, reason: str) -> None:
    from switch.adapters.qr import reply_for

    reply = reply_for(qrapi.QrReply(ref="R1", status="failed", reason=code))
    assert reply is not None
    assert (reply.outcome, reply.reason) == ("failed", reason)


# --------------------------------------------------------------------------- ISO 8583


@pytest.mark.parametrize("prefix", [b" 9", b"9 ", b"+9", b"-0", b"+0"])
def test_llvar_length_prefix_must_be_ascii_digits(prefix: bytes) -> None:
    """pyiso8583 reads LL with int(): " 9", "+9", "-0" were taken as lengths (LL is n2)."""
    from switch.protocols import iso8583
    from switch.protocols.iso8583_acquirer import AcquirerCodec, AcquirerFormatError

    body = b"4" * int(prefix)
    data = b"0100" + b"6000000000000000" + prefix + body + b"000000"
    with pytest.raises(CodecError) as info:
        iso8583.decode(data)
    assert info.value.path == "DE2"
    with pytest.raises(AcquirerFormatError) as acq:
        AcquirerCodec("ascii").decode(data)
    assert acq.value.path == "DE2"
    assert acq.value.partial is not None and acq.value.partial.fields == {}
    binary = b"0100" + bytes.fromhex("6000000000000000") + prefix + body + b"000000"
    with pytest.raises(AcquirerFormatError) as acq:
        AcquirerCodec("binary").decode(binary)
    assert acq.value.path == "DE2"


def test_llvar_with_a_digit_prefix_still_decodes() -> None:
    from switch.protocols import iso8583
    from switch.protocols.iso8583_acquirer import AcquirerCodec

    data = b"0100" + b"6000000000000000" + b"09" + b"4" * 9 + b"000000"
    expected = iso8583.IsoMessage("0100", {2: "4" * 9, 3: "000000"})
    assert iso8583.decode(data) == expected
    assert AcquirerCodec("ascii").decode(data) == expected


@pytest.mark.parametrize(("old", "new"), [
    (b">1234.56<", b">\n      1234.56\n    <"),  # xs:decimal collapses whitespace
    (b">2025-01-15</IntrBkSttlmDt", b"> 2025-01-15\t</IntrBkSttlmDt"),  # xs:date
    (b">2025-01-15T09:30:00Z<", b">\r\n2025-01-15T09:30:00Z <"),  # xs:dateTime
])
def test_pacs008_reads_schema_valid_whitespace_around_typed_values(old: bytes, new: bytes
                                                                   ) -> None:
    doc = GOLDEN_PACS008.replace(old, new)
    pacs008_schema().validate(doc)  # the official schema takes it ...
    assert x.decode_pacs008(doc) == CT  # ... and so do we, with the same values


def test_pacs002_reads_whitespace_around_its_times() -> None:
    report = x.status_report_for(CT, msg_id="R1", created_at="2025-01-15T09:31:00Z",
                                 status="ACSC")
    raw = x.encode_pacs002(report).replace(b"<CreDtTm>2025-01-15T09:31:00Z<",
                                           b"<CreDtTm>\n2025-01-15T09:31:00Z\n<")
    raw = raw.replace(b"<OrgnlCreDtTm>2025-01-15T09:30:00Z<",
                      b"<OrgnlCreDtTm> 2025-01-15T09:30:00Z <")
    assert b"\n2025-01-15T09:31:00Z\n" in raw and b" 2025-01-15T09:30:00Z " in raw
    assert x.decode_pacs002(raw) == report


@pytest.mark.parametrize("declared", ["ISO-8859-1", "UTF-16", "windows-1252"])
def test_text_input_is_not_decoded_twice_by_its_encoding_declaration(declared: str) -> None:
    """A str is already characters: parsed as UTF-8 bytes under an ISO-8859-1
    declaration, "JOSÉ é" came back as "JOSÃ\\x89 Ã©" (refused, or silently mangled)."""
    text = (GOLDEN_PACS008.decode().replace("UTF-8", declared)
            .replace("JANE &lt;ROE&gt;", "JOS\u00c9 \u00e9"))
    assert x.decode_pacs008(text).creditor.name == "JOS\u00c9 \u00e9"
    assert x.decode(text) == x.decode_pacs008(text)


def test_bytes_input_still_follows_its_encoding_declaration() -> None:
    raw = (GOLDEN_PACS008.replace(b"UTF-8", b"ISO-8859-1")
           .replace(b"JANE &lt;ROE&gt;", "JOS\u00c9".encode("latin-1")))
    assert x.decode_pacs008(raw).creditor.name == "JOS\u00c9"


def test_text_input_with_a_dtd_is_still_refused() -> None:
    text = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "x">]>'
            f'<Document xmlns="{x.NS_PACS008}">&a;</Document>')
    with pytest.raises(CodecError) as info:
        x.decode_pacs008(text)
    assert info.value.path == "Document"


# --------------------------------------------------------------------------- payments JSON


@pytest.mark.parametrize(("body", "pointer"), [
    (b'{"a/b": 1}', "/a~1b"),  # RFC 6901: "/" in a key is "~1" ("/a/b" names a.b)
    (b'{"a~b": 1}', "/a~0b"),
    (b'{"payer": {"x/y": 1}}', "/payer/x~1y"),
    (b'{"a`b": 1}', "/a`b"),  # the whole key, not the part before a backtick
    (b'{"payer": {"name": 1}}', "/payer/name"),
])
def test_problem_pointer_to_an_unknown_key_is_a_json_pointer(body: bytes, pointer: str
                                                             ) -> None:
    from switch.protocols.payments_json import decode_body

    decoded, error = decode_body(body)
    assert decoded is None and error is not None
    assert error.pointer == pointer


@pytest.mark.parametrize(("mti", "fields", "path"), [
    ("0110", {4: "ABCDEFGHIJKL", 39: "00"}, "DE4"),
    ("0110", {2: "41111111111 ", 39: "00"}, "DE2"),
    ("01x0", {39: "00"}, "MTI"),
])
@pytest.mark.parametrize("bitmap", ["ascii", "binary"])
def test_acquirer_codec_refuses_to_write_what_it_cannot_read(
        mti: str, fields: dict[int, str], path: str, bitmap: str) -> None:
    """encode() wrote these; decode() of its own bytes refused them."""
    from switch.protocols.iso8583 import IsoMessage
    from switch.protocols.iso8583_acquirer import AcquirerCodec

    with pytest.raises(CodecError) as info:
        AcquirerCodec(bitmap).encode(IsoMessage(mti, fields))  # type: ignore[arg-type]
    assert info.value.path == path


@pytest.mark.parametrize(("old", "new", "path"), [
    # A second remittance line (the schema allows many) was dropped without a word.
    (b"<Ustrd>INVOICE 123</Ustrd>", b"<Ustrd>INVOICE 123</Ustrd><Ustrd>INVOICE 124</Ustrd>",
     "Document/FIToFICstmrCdtTrf/CdtTrfTxInf/RmtInf/Ustrd"),
    # Two UETRs (schema-invalid): the first was taken as the matching key.
    (b"<UETR>", b"<UETR>00000000-0000-4000-8000-000000000000</UETR><UETR>",
     "Document/FIToFICstmrCdtTrf/CdtTrfTxInf/PmtId/UETR"),
    (b"<MsgId>MSG-1</MsgId>", b"<MsgId>MSG-1</MsgId><MsgId>MSG-2</MsgId>",
     "Document/FIToFICstmrCdtTrf/GrpHdr/MsgId"),
])
def test_pacs008_refuses_a_repeated_element_it_would_read_only_once(
        old: bytes, new: bytes, path: str) -> None:
    doc = GOLDEN_PACS008.replace(old, new, 1)
    with pytest.raises(CodecError) as info:
        x.decode_pacs008(doc)
    assert info.value.path == path


def test_pacs002_takes_the_first_of_several_status_reasons() -> None:
    report = x.status_report_for(CT, msg_id="R1", created_at="2025-01-15T09:31:00Z",
                                 status="RJCT", reason="AC01", additional_info="NO SUCH")
    raw = x.encode_pacs002(report).replace(
        b"</StsRsnInf>", b"<AddtlInf>MORE</AddtlInf></StsRsnInf>"
                         b"<StsRsnInf><Rsn><Cd>AM04</Cd></Rsn></StsRsnInf>")
    assert x.decode_pacs002(raw) == report


def test_pacs002_pairs_the_reason_with_its_own_additional_info() -> None:
    """The first StsRsnInf is read whole: a second one without AddtlInf must not lend
    its reason to the first one's AddtlInf (document order was reversed per path)."""
    report = x.status_report_for(CT, msg_id="R1", created_at="2025-01-15T09:31:00Z",
                                 status="RJCT", reason="MS03",
                                 additional_info="TECHNICAL ERROR 91")
    raw = x.encode_pacs002(report).replace(
        b"</StsRsnInf>", b"</StsRsnInf><StsRsnInf><Rsn><Cd>AC01</Cd></Rsn></StsRsnInf>")
    assert x.decode_pacs002(raw) == report
    raw = x.encode_pacs002(msgspec.structs.replace(report, additional_info=None)).replace(
        b"</StsRsnInf>",
        b"</StsRsnInf><StsRsnInf><Rsn><Cd>AC01</Cd></Rsn><AddtlInf>X</AddtlInf></StsRsnInf>")
    assert x.decode_pacs002(raw) == msgspec.structs.replace(report, additional_info=None)
