"""Seeded synthetic payments for the demo and the load generator.

Same seed, same sequence of requests. The mix is deliberately realistic enough to exercise
every pipeline step: three channels, lognormal amounts, a small pool of hot cards and
accounts (so velocity rules bite), a share of duplicate submissions (idempotency), and a
share of requests that break validation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from switch.model import CardData, Party, PaymentRequest, QrData, SwiftData
from switch.validation import luhn_ok


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if luhn_ok(prefix + check):
            return prefix + check
    raise AssertionError("unreachable: one check digit always fits")


def _qr_payload(merchant: int, amount: str | None) -> str:
    """A syntactically valid EMVCo merchant QR (CRC-16/CCITT-FALSE), built inline."""

    def tlv(tag: str, value: str) -> str:
        return f"{tag}{len(value):02d}{value}"

    body = (
        tlv("00", "01")
        + tlv("01", "12" if amount else "11")
        + tlv("26", tlv("00", "com.payswitch.qr") + tlv("01", f"M{merchant:07d}"))
        + tlv("52", "5812")
        + tlv("53", "156")
        + (tlv("54", amount) if amount else "")
        + tlv("58", "CN")
        + tlv("59", f"MERCHANT {merchant}")
        + tlv("60", "SHANGHAI")
        + "6304"
    )
    crc = 0xFFFF
    for byte in body.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return body + f"{crc:04X}"


@dataclass(frozen=True)
class WorkloadMix:
    card_share: float = 0.6
    swift_share: float = 0.2
    duplicate_share: float = 0.01
    invalid_share: float = 0.005
    cards: int = 5000
    accounts: int = 5000


class Workload:
    def __init__(self, seed: int, mix: WorkloadMix | None = None, key_prefix: str = "k") -> None:
        self.mix = mix or WorkloadMix()
        self._rng = random.Random(seed)
        self._prefix = f"{key_prefix}{seed}-"
        self._count = 0
        self._recent: list[PaymentRequest] = []
        rng = random.Random(seed ^ 0x5EED)
        self._pans = [
            _luhn_complete(f"4{rng.randrange(10**14):014d}") for _ in range(self.mix.cards)
        ]

    def _hot(self, n: int) -> int:
        # Zipf-ish skew: a few cards/accounts take much of the traffic.
        return min(n - 1, int(n * self._rng.random() ** 3))

    def next(self) -> tuple[PaymentRequest, str]:
        """The next request and its kind: "new", "duplicate" or "invalid"."""
        rng, mix = self._rng, self.mix
        draw = rng.random()
        if self._recent and draw < mix.duplicate_share:
            return rng.choice(self._recent), "duplicate"
        self._count += 1
        key = f"{self._prefix}{self._count}"
        channel_draw = rng.random()
        payer = Party(f"ACCT{self._hot(mix.accounts):06d}", "Payer")
        payee = Party(f"MERCH{rng.randrange(1000):05d}", "Payee")
        if channel_draw < mix.card_share:
            pan = self._pans[self._hot(mix.cards)]
            amount = max(1, int(rng.lognormvariate(math.log(5000), 1.0)))
            request = PaymentRequest(
                key, "card", amount, "USD", payer, payee, card=CardData(pan=pan, expiry="2812")
            )
        elif channel_draw < mix.card_share + mix.swift_share:
            amount = max(1, int(rng.lognormvariate(math.log(500_000), 1.2)))
            request = PaymentRequest(
                key,
                "swift",
                amount,
                "EUR",
                payer,
                payee,
                swift=SwiftData("DEUTDEFF", "BNPAFRPP", end_to_end_id=key),
            )
        else:
            amount = max(1, int(rng.lognormvariate(math.log(3000), 0.8)))
            payload = _qr_payload(rng.randrange(500), None)
            request = PaymentRequest(key, "qr", amount, "CNY", payer, payee, qr=QrData(payload))
        if draw < mix.duplicate_share + mix.invalid_share:
            # Breaks validation: a Luhn-failing card number (or a card on a non-card payment).
            bad = CardData(pan="4111111111111112", expiry="2812")
            request = PaymentRequest(key, "card", request.amount, "USD", payer, payee, card=bad)
            return request, "invalid"
        if len(self._recent) < 256:
            self._recent.append(request)
        else:
            self._recent[rng.randrange(256)] = request
        return request, "new"
