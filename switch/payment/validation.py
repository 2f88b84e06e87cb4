"""Semantic validation that msgspec's types cannot express.

msgspec already rejected wrong types, unknown fields and out-of-range numbers with the
field path. Here we check what depends on other fields or on tables: that the channel's
own data is present (and no other channel's), that the currency is a known ISO 4217 code,
that a PAN passes Luhn, an expiry is a real month, a BIC has the right shape. Errors
name the field path, like msgspec's.
"""

from __future__ import annotations

from switch.currency import CURRENCIES
from switch.model import PaymentRequest, luhn_ok


class InvalidPayment(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _is_bic(bic: str) -> bool:
    # 4 letters bank, 2 letters country, 2 alnum location, optional 3 alnum branch.
    return (
        len(bic) in (8, 11)
        and bic[:6].isalpha()
        and bic[:6].isupper()
        and bic[6:].isalnum()
        and bic.upper() == bic
    )


def validate(request: PaymentRequest) -> None:
    """Raise :class:`InvalidPayment` naming the first problem, or return None."""
    if request.currency not in CURRENCIES:
        raise InvalidPayment("payment.currency", f"unknown ISO 4217 currency {request.currency!r}")
    channel = request.channel
    present = {"card": request.card, "swift": request.swift, "qr": request.qr}
    if present[channel] is None:
        raise InvalidPayment(f"payment.{channel}", f"required for channel {channel!r}")
    for other, data in present.items():
        if other != channel and data is not None:
            raise InvalidPayment(f"payment.{other}", f"not allowed for channel {channel!r}")
    if request.card is not None:
        card = request.card
        if not card.pan.isdigit() or not card.pan.isascii():
            raise InvalidPayment("payment.card.pan", "must be digits only")
        if not luhn_ok(card.pan):
            raise InvalidPayment("payment.card.pan", "fails the Luhn check")
        exp = card.expiry
        if not exp.isdigit() or not 1 <= int(exp[2:]) <= 12:
            raise InvalidPayment("payment.card.expiry", "must be YYMM with month 01-12")
        if not card.mcc.isdigit():
            raise InvalidPayment("payment.card.mcc", "must be 4 digits")
    elif request.swift is not None:
        if not _is_bic(request.swift.debtor_agent):
            raise InvalidPayment("payment.swift.debtor_agent", "not a BIC (8 or 11 characters)")
        if not _is_bic(request.swift.creditor_agent):
            raise InvalidPayment("payment.swift.creditor_agent", "not a BIC (8 or 11 characters)")
    elif request.qr is not None and not request.qr.payload.startswith("000201"):
        raise InvalidPayment(
            "payment.qr.payload", "must start with payload format indicator 000201"
        )
