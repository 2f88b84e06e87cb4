"""Semantic validation that msgspec's types cannot express.

msgspec already rejected wrong types, unknown fields and out-of-range numbers with the
field path. Here we check what depends on other fields or on tables: that the channel's
own data is present (and no other channel's), that the currency is a known ISO 4217 code,
that a PAN passes Luhn, an expiry is a real month, a BIC has the right shape. Errors
name the field path, like msgspec's.

Validation admits only what every codec on the payment's way can encode, and takes the
rules from the codecs themselves rather than restating them: card fields are checked
against the ISO 8583 spec (:func:`switch.protocols.iso8583.content_problem`: ASCII digits
for ``n`` fields, the ``an``/``ans`` character sets, the spec's lengths), SWIFT text
against the ISO 20022 text rule (:func:`switch.protocols.iso20022.check_text`). Before
this, ``str.isdigit()`` let superscript and Arabic-Indic digits through: ``int()`` then
raised inside validation, or the ISO 8583 encode failed after the payment was accepted.
"""

from __future__ import annotations

from switch.currency import CURRENCIES
from switch.model import Party, PaymentRequest, luhn_ok
from switch.protocols import iso8583, iso20022
from switch.protocols.errors import CodecError

#: As :data:`switch.model.Pan` says on the wire: the card adapter builds the network PAN
#: around the BIN (6) and the last four, with at least one digit of its own between.
MIN_PAN_DIGITS = 12
#: DE4, the amount in minor units, is n12.
MAX_CARD_AMOUNT = 10**12 - 1


class InvalidPayment(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _is_bic(bic: str) -> bool:
    # 4 letters bank, 2 letters country, 2 alnum location, optional 3 alnum branch.
    # ASCII only, as the pacs.008 encoder (iso20022.check_bic) requires: str.isalpha and
    # isalnum also accept other scripts' letters and digits ("Ä", "²", full-width).
    return (
        len(bic) in (8, 11)
        and bic.isascii()
        and bic[:6].isalpha()
        and bic[:6].isupper()
        and bic[6:].isalnum()
        and bic.upper() == bic
    )


def _iso8583(path: str, de: int, value: str) -> None:
    problem = iso8583.content_problem(de, value)
    if problem is not None:
        raise InvalidPayment(path, problem)


def _iso20022(path: str, value: str, max_len: int) -> None:
    try:
        iso20022.check_text(value, max_len, path)
    except CodecError as exc:
        raise InvalidPayment(path, exc.reason) from None


def _party(path: str, party: Party) -> None:
    # pacs.008 carries the name (the account when there is none) and the account.
    _iso20022(f"{path}.account", party.account, 34)
    if party.name:
        _iso20022(f"{path}.name", party.name, 140)


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
        # Both as the card adapter must encode them (DE4 is n12; a network PAN is built
        # around the BIN and last four): an 0100 that cannot be built would be "not sent"
        # everywhere, and stand-in could approve what no issuer saw.
        if request.amount > MAX_CARD_AMOUNT:
            raise InvalidPayment("payment.amount", f"above {MAX_CARD_AMOUNT}, the most a "
                                 "card amount carries (ISO 8583 DE4 is 12 digits)")
        if len(card.pan) < MIN_PAN_DIGITS:
            raise InvalidPayment("payment.card.pan", f"shorter than {MIN_PAN_DIGITS} digits")
        _iso8583("payment.card.pan", 2, card.pan)
        if not luhn_ok(card.pan):
            raise InvalidPayment("payment.card.pan", "fails the Luhn check")
        _iso8583("payment.card.expiry", 14, card.expiry)
        if not 1 <= int(card.expiry[2:]) <= 12:  # ASCII digits: checked just above
            raise InvalidPayment("payment.card.expiry", "must be YYMM with month 01-12")
        _iso8583("payment.card.mcc", 18, card.mcc)
        _iso8583("payment.card.terminal_id", 41, card.terminal_id)
        _iso8583("payment.card.merchant_id", 42, card.merchant_id)
    elif request.swift is not None:
        swift = request.swift
        if not _is_bic(swift.debtor_agent):
            raise InvalidPayment("payment.swift.debtor_agent", "not a BIC (8 or 11 characters)")
        if not _is_bic(swift.creditor_agent):
            raise InvalidPayment("payment.swift.creditor_agent", "not a BIC (8 or 11 characters)")
        if swift.end_to_end_id:
            _iso20022("payment.swift.end_to_end_id", swift.end_to_end_id, 35)
        if swift.remittance:
            _iso20022("payment.swift.remittance", swift.remittance, 140)
        _party("payment.payer", request.payer)
        _party("payment.payee", request.payee)
    elif request.qr is not None and not request.qr.payload.startswith("000201"):
        raise InvalidPayment(
            "payment.qr.payload", "must start with payload format indicator 000201"
        )
