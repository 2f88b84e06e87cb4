"""Every ISO 20022 message we emit, validated against the official schema.

Schemas (tests/conformance/xsd/, sources in the README there): pacs.008.001.08 and
camt.053.001.08 are validated by ``xmlschema`` against the XSD. No full pacs.002.001.10 or
pacs.028.001.05 XSD was at hand (the pacs008 package's pacs.028.001.05 is a cut-down
profile without OrgnlUETR), so those are read by pyiso20022's classes generated from the
official XSDs, strictly (unknown elements, attributes or unconvertible values fail), and
must re-serialize to the same element sequence (elements out of schema order fail).
That is weaker than XSD validation: it does not check patterns or mandatory elements.

Messages come from the real code paths, several seeds each: the SWIFT adapter's pacs.008
and pacs.028 builders, the SWIFT simulator's pacs.002 answers (ACCP, RJCT, ACSC, NOOR,
FF01), the settlement writer's camt.053.
"""

from __future__ import annotations

import random
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import anyio
import pytest
import xmlschema
from pyiso20022.pacs.pacs_002_001_10 import Document as Pacs002Document
from pyiso20022.pacs.pacs_028_001_05 import Document as Pacs028Document
from xsdata.exceptions import ParserError
from xsdata.formats.dataclass.parsers import XmlParser
from xsdata.formats.dataclass.parsers.config import ParserConfig
from xsdata.formats.dataclass.serializers import XmlSerializer

from channels.swift import SwiftNetwork, SwiftRecord
from switch.adapters.swift import credit_transfer, iso_time
from switch.model import Party, Payment, SwiftRef
from switch.protocols import iso20022
from switch.protocols.settlement_files import (
    SettlementEntry,
    closing_balances,
    decode_camt053,
    encode_camt053,
)
from tests.sims.test_card import config, network, running

XSD = Path(__file__).parent / "xsd"
BICS = ["DEUTDEFF", "BNPAFRPP", "CHASUS33", "HSBCGB2L", "HSBCHKHH", "ICBKCNBJ"]
IBANS = ["DE89370400440532013000", "FR1420041010050500013M02606", "GB29NWBK60161331926819"]


@cache
def schema(name: str) -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD / f"{name}.xsd")


def payments(seed: int, count: int = 15) -> list[Payment]:
    rng = random.Random(seed)
    out = []
    for n in range(count):
        debtor, creditor = rng.sample(BICS, 2)
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**7))
        payer = rng.choice([*IBANS, f"ACCT{rng.randrange(10**6):06d}"])
        payee = rng.choice([*IBANS, f"MERCH{rng.randrange(10**5):05d}"])
        out.append(Payment(
            f"P{seed}-{n}", f"k{n}", "swift", rng.randrange(1, 10**9),
            rng.choice(["EUR", "USD", "JPY", "CHF"]), Party(payer, rng.choice(["", "Payer Ltd"])),
            Party(payee, "Payee & Sons <GmbH>"), at,
            swift=SwiftRef(debtor, creditor, str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                           rng.choice(["", f"E2E-{n}"]), rng.choice(["", "Invoice 42"]))))
    return out


def generated_problems(xml: bytes, document: type, namespace: str) -> None:
    """Raise unless ``xml`` reads strictly into pyiso20022's ``document`` classes and
    re-serializes to the same element sequence (schema order)."""
    parser = XmlParser(config=ParserConfig(fail_on_unknown_properties=True,
                                           fail_on_unknown_attributes=True,
                                           fail_on_converter_warnings=True))
    doc = parser.from_bytes(xml, document)
    again = XmlSerializer().render(doc, ns_map={None: namespace}).encode()
    tags = [el.tag for el in ET.fromstring(xml).iter()]
    assert tags == [el.tag for el in ET.fromstring(again).iter()], "elements out of order"


def pacs002_problems(xml: bytes) -> None:
    generated_problems(xml, Pacs002Document, iso20022.NS_PACS002)


@pytest.mark.parametrize("seed", range(4))
def test_pacs008_and_pacs028_from_the_adapter_are_schema_valid(seed: int) -> None:
    for p in payments(seed):
        ct = credit_transfer(p)
        assert ct.instr_id == p.payment_id
        schema("pacs.008.001.08").validate(iso20022.encode_pacs008(ct))
        asked_at = p.received_at + timedelta(seconds=90)
        rq = iso20022.status_request_for(ct, msg_id=f"Q1-{p.payment_id}",
                                         created_at=iso_time(asked_at))
        xml = iso20022.encode_pacs028(rq)
        generated_problems(xml, Pacs028Document, iso20022.NS_PACS028)
        assert iso20022.decode_pacs028(xml).created_at != ct.created_at


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(3))
async def test_pacs002_answers_of_the_simulator_are_valid(seed: int) -> None:
    async with running(config(network("swift", "swift"))) as sims:
        net = sims.server("swift")
        assert isinstance(net, SwiftNetwork)
        reports: list[bytes] = []
        for p in payments(seed, 10):
            ct = credit_transfer(p)
            record = SwiftRecord(ct, "PDNG", 0)
            net.accept_or_reject(record, anyio.current_time())
            reports.append(net.report(record))
            record.status = "ACSC"
            reports.append(net.report(record))
            reports.append(net.reject_unbooked(ct, "MS03", "TECHNICAL ERROR 96"))
            # An unreadable pacs.008 (its amount mangled): FF01 with what can be read.
            broken = iso20022.encode_pacs008(ct).replace(b"</IntrBkSttlmAmt>",
                                                         b"x</IntrBkSttlmAmt>")
            ff01 = net.parse(sims.runtime.networks["swift"], broken)  # type: ignore[arg-type]
            assert isinstance(ff01, bytes)
            reports.append(ff01)
            report = iso20022.decode_pacs002(ff01)
            assert report.reason == "FF01" and report.orgnl_instr_id == ct.instr_id
            assert report.orgnl_created_at == ct.created_at != report.created_at
        for xml in reports:
            pacs002_problems(xml)
            assert iso20022.decode_pacs002(xml).created_at != "2000-01-01T00:00:00Z"


@pytest.mark.parametrize("seed", range(4))
def test_camt053_from_the_settlement_writer_is_schema_valid(seed: int) -> None:
    rng = random.Random(seed)
    opening: dict[str, int] = {}
    for cycle in range(3):
        entries = [SettlementEntry(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"E2E-{i}",
            rng.randrange(1, 10**8), rng.choice(["EUR", "USD", "JPY"]),
            rng.choice(["settled", "settled", "reversed"]), 1_780_000_000_000_000 + i)
            for i in range(rng.randrange(0, 12))]
        xml = encode_camt053(f"swift-{cycle}", "NOSTRO-swift", 1_780_000_000_000_000, entries,
                             opening=opening)
        schema("camt.053.001.08").validate(xml)
        assert decode_camt053(xml, "f.xml") == entries  # the reader accepts Bal and BkTxCd
        opening = closing_balances(opening, entries)


def test_each_checker_can_fail() -> None:
    p = payments(0, 1)[0]
    ct = credit_transfer(p)
    camt = encode_camt053("s-1", "NOSTRO", 1_780_000_000_000_000, [], opening={"EUR": 5})
    start, end = camt.index(b"<Bal>"), camt.rindex(b"</Bal>") + len(b"</Bal>")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema("camt.053.001.08").validate(camt[:start] + camt[end:])  # no Bal
    pacs008 = iso20022.encode_pacs008(ct)
    with pytest.raises(xmlschema.XMLSchemaValidationError):  # InstrId after EndToEndId
        schema("pacs.008.001.08").validate(pacs008.replace(
            f"<InstrId>{ct.instr_id}</InstrId>".encode(), b"").replace(
            b"</EndToEndId>", f"</EndToEndId><InstrId>{ct.instr_id}</InstrId>".encode()))
    report = iso20022.encode_pacs002(iso20022.status_report_for(
        ct, msg_id="S1", created_at="2026-01-01T00:00:00Z", status="ACCP"))
    pacs002_problems(report)
    with pytest.raises(AssertionError, match="order"):  # OrgnlUETR before OrgnlEndToEndId
        pacs002_problems(report.replace(
            f"<OrgnlUETR>{ct.uetr}</OrgnlUETR>".encode(), b"").replace(
            b"<OrgnlEndToEndId>", f"<OrgnlUETR>{ct.uetr}</OrgnlUETR><OrgnlEndToEndId>".encode()))
    with pytest.raises(ParserError):  # an element pacs.002.001.10 does not have
        pacs002_problems(report.replace(b"<TxSts>", b"<Bogus>1</Bogus><TxSts>"))
