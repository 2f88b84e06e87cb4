"""Review: validation admits only what the SWIFT codec can encode."""

from __future__ import annotations

import msgspec
import pytest

from switch.model import SwiftData
from switch.payment.validation import InvalidPayment, validate
from switch.protocols import iso20022
from switch.protocols.errors import CodecError
from tests.payments import swift_payment


@pytest.mark.parametrize(
    ("field", "bic"),
    [
        ("debtor_agent", "ÄEUTDEFF"),  # a non-ASCII upper-case letter
        ("creditor_agent", "BNPAFRP²"),  # a superscript digit: str.isalnum() says yes
        ("creditor_agent", "BNPAFRPPＸＸＸ"),  # full-width letters
    ],
)
def test_a_bic_the_pacs008_encoder_refuses_is_refused_at_validation(field: str,
                                                                    bic: str) -> None:
    """``str.isalpha``/``isalnum``/``isupper`` accept other scripts: such a BIC was
    accepted, journaled as an intent, and then every SWIFT endpoint raised NotSent
    (cannot encode), each one a failure against its breaker -- a few such requests
    opened the SWIFT breakers for everyone."""
    with pytest.raises(CodecError):
        iso20022.check_bic(bic, "BICFI")
    request = swift_payment("bic-1")
    assert request.swift is not None
    request = msgspec.structs.replace(
        request, swift=msgspec.structs.replace(request.swift, **{field: bic}))
    assert isinstance(request.swift, SwiftData)
    with pytest.raises(InvalidPayment) as info:
        validate(request)
    assert info.value.path == f"payment.swift.{field}"
