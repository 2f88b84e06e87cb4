"""Valid messages of every fuzzed format: the fuzzers' starting corpus.

Mutating real messages reaches deep parser states in seconds; random bytes alone mostly
exercise the first length check.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from switch.model import CardData, Party, PaymentRequest, QrData, SwiftData
from switch.protocols import emvqr, iso8583, iso20022, wire

AT = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
UETR = "eb6305c9-1f7f-49de-aed0-16487c27b42d"


def _qr() -> str:
    template = (emvqr.Tlv("00", "com.payswitch.qr"), emvqr.Tlv("01", "M0000007"))
    return emvqr.build(emvqr.MerchantQr(
        merchant_accounts=(emvqr.MerchantAccount(tag="26", template=template),),
        mcc="5812", currency="156", country="CN", merchant_name="TEST SHOP",
        merchant_city="SHANGHAI", initiation="12", amount="12.50"))


def wire_seeds() -> list[bytes]:
    card = PaymentRequest("k-1", "card", 1000, "USD", Party("ACCT1", "Payer"), Party("MERCH1"),
                          card=CardData("4111111111111111", "2812", "TERM0001", "M1", "5999"))
    swift = PaymentRequest("k-2", "swift", 100_000, "EUR", Party("DE89370400440532013000"),
                           Party("FR1420041010050500013M02606"),
                           swift=SwiftData("DEUTDEFF", "BNPAFRPP", "E2E-1", "invoice 7"))
    qr = PaymentRequest("k-3", "qr", 1250, "CNY", Party("A2"), Party("M2"), qr=QrData(_qr()))
    requests: list[wire.Request] = [wire.Pay(1, card), wire.Pay(2, swift), wire.Pay(3, qr),
                                    wire.Query(4, "k-1"), wire.Ping(5)]
    return [msgspec.msgpack.encode(r) for r in requests]


def iso8583_seeds() -> list[bytes]:
    txn = iso8583.CardTransaction(
        pan="4111111111111111", amount_minor=1234, currency="840", stan=42, transmitted_at=AT,
        terminal_id="TERM0001", merchant_id="MERCHANT0000001", acquirer_id="123456",
        expiry="2812", mcc="5999", pos_entry_mode="010", rrn="000000000042",
        merchant_name_location="TEST SHOP           SHANGHAI      CN")
    auth = iso8583.authorization_request(txn)
    messages = [
        auth,
        iso8583.response(auth, "00", auth_code="A1B2C3"),
        iso8583.reversal_request(auth, stan=43, transmitted_at=AT, reason_code="68"),
        iso8583.authorization_advice(auth, response_code="00", auth_code="S12345"),
        iso8583.network_request("301", stan=44, transmitted_at=AT),
    ]
    return [iso8583.encode(m) for m in messages]


def _credit_transfer() -> iso20022.CreditTransfer:
    return iso20022.CreditTransfer(
        msg_id="MSG-1", created_at="2025-01-15T09:30:00Z", settlement_method="INDA",
        end_to_end_id="E2E-1", tx_id="TX-1", uetr=UETR, amount_minor=123456, currency="EUR",
        settlement_date="2025-01-15", charge_bearer="SHAR",
        debtor=iso20022.Party(name="JOHN DOE", iban="BE68539007547034"),
        debtor_agent_bic="BANKBEBB", creditor_agent_bic="BANKDEFFXXX",
        creditor=iso20022.Party(name="JANE ROE", iban="DE89370400440532013000"),
        remittance="INVOICE 778")


def pacs008_seeds() -> list[bytes]:
    return [iso20022.encode_pacs008(_credit_transfer())]


def pacs002_seeds() -> list[bytes]:
    ct = _credit_transfer()
    cases: tuple[tuple[iso20022.TxStatus, dict[str, str]], ...] = (
        ("ACSC", {}), ("RJCT", {"reason": "AC01"}))
    return [iso20022.encode_pacs002(iso20022.status_report_for(
                ct, msg_id="S1", created_at="2025-01-15T09:30:01Z", status=status, **extra))
            for status, extra in cases]


def pacs028_seeds() -> list[bytes]:
    return [iso20022.encode_pacs028(iso20022.status_request_for(
        _credit_transfer(), msg_id="Q1", created_at="2025-01-15T09:32:00Z"))]


def mt103_seeds() -> list[bytes]:
    return [(
        b"{1:F01BANKBEBBAXXX0000000000}{2:I103BANKDEFFXXXXN}"
        b"{3:{108:MUR0001}{121:eb6305c9-1f7f-49de-aed0-16487c27b42d}}{4:\r\n"
        b":20:REF-2025-0001\r\n:23B:CRED\r\n:32A:250115EUR1234,56\r\n:33B:EUR1234,56\r\n"
        b":50K:/BE68539007547034\r\nJOHN DOE\r\n1 MAIN STREET\r\nBRUSSELS\r\n"
        b":52A:BANKBEBB\r\n:57A:/DE12345\r\nBANKDEFFXXX\r\n"
        b":59:/DE89370400440532013000\r\nJANE ROE\r\nFRANKFURT\r\n"
        b":70:/ROC/E2E-778/INVOICE 778 DATED 2025\r\n-01-10\r\n:71A:SHA\r\n"
        b"-}{5:{CHK:123456789ABC}}")]


def emvqr_seeds() -> list[bytes]:
    return [_qr().encode()]


def acquirer_seeds() -> list[bytes]:
    """What acquirers send the switch's ISO 8583 door: 0100, 0200, 0400, 0420, 0800, in
    both bitmap encodings."""
    from switch.protocols.iso8583 import IsoMessage
    from switch.protocols.iso8583_acquirer import AcquirerCodec

    auth = {2: "4111111111111111", 3: "000000", 4: "000000001250", 7: "1125101500",
            11: "000042", 14: "2812", 18: "5999", 32: "412345", 37: "RRN000000042",
            41: "TERM0042", 42: "MERCHANT0000042", 49: "978"}
    original = "0100" + "000042" + "1125101500" + "00000412345" + "00000000000"
    reversal = {**auth, 11: "000043", 90: original}
    messages = [IsoMessage("0100", auth), IsoMessage("0200", auth),
                IsoMessage("0400", reversal), IsoMessage("0420", reversal),
                IsoMessage("0800", {7: "1125101500", 11: "000044", 70: "301"})]
    return [AcquirerCodec(bitmap).encode(m) for bitmap in ("ascii", "binary")
            for m in messages]


def payments_json_seeds() -> list[bytes]:
    """Bodies of the HTTP API's POST /v1/payments, one per channel."""
    return [msgspec.json.encode({k: v for k, v in msgspec.to_builtins(request).items()
                                 if k != "idempotency_key"})
            for request in (msgspec.msgpack.decode(raw, type=wire.Pay).payment
                            for raw in wire_seeds()[:3])]
