"""Small builders for valid payment requests used across tests."""

from __future__ import annotations

from loadtests.harness.workload import _qr_payload
from switch.model import CardData, Party, PaymentRequest, QrData, SwiftData

VISA_TEST_PAN = "4111111111111111"


def card_payment(
    key: str = "key-1",
    amount: int = 1000,
    pan: str = VISA_TEST_PAN,
    currency: str = "USD",
    payer: str = "ACCT000001",
) -> PaymentRequest:
    return PaymentRequest(
        key,
        "card",
        amount,
        currency,
        Party(payer),
        Party("MERCH00001"),
        card=CardData(pan=pan, expiry="2812"),
    )


def swift_payment(key: str = "swift-1", amount: int = 100_000) -> PaymentRequest:
    return PaymentRequest(
        key,
        "swift",
        amount,
        "EUR",
        Party("DE89370400440532013000"),
        Party("FR1420041010050500013M02606"),
        swift=SwiftData("DEUTDEFF", "BNPAFRPP"),
    )


def qr_payment(key: str = "qr-1", amount: int = 2500) -> PaymentRequest:
    return PaymentRequest(
        key,
        "qr",
        amount,
        "CNY",
        Party("ACCT000002"),
        Party("MERCH00002"),
        qr=QrData(_qr_payload(7, None)),
    )
