"""The simulator's advice sender lets the real StandIn decide what an answer means.

It used to journal every delivered advice itself, as approved, and never released the
card's and issuer's stand-in exposure: an issuer's refusal was never recorded, and bugs
in the real code that releases exposure or keeps a refusal were invisible to every seed.
"""

from __future__ import annotations

from typing import Any

import pytest

from switch.payment.standin import StandIn
from switch.sim.simulation import simulate
from tests.sim.test_plants_more import card_outage


def test_the_sender_hands_every_answer_to_the_real_standin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[tuple[str, str]] = []
    real = StandIn.answered

    def spy(self: StandIn, advice: Any, code: str) -> Any:
        answers.append((advice.payment.payment_id, code))
        return real(self, advice, code)

    monkeypatch.setattr(StandIn, "answered", spy)
    result = simulate(card_outage(1, 100.0))  # both card endpoints down 1-9 s: stand-in
    assert not result.violations, result.violations[:3]
    assert result.counters["stand_in"] > 0
    # Every advice answered, but those an acquirer's reversal withdrew first.
    withdrawn = result.counters.get("advices_withdrawn", 0)
    assert len(answers) == result.counters["advices"] == result.counters["stand_in"] - withdrawn
    # 00: the issuer took it; 14/51: it refused it (a card it never issued, or no funds),
    # which the old sender journaled as taken.
    assert {code for _, code in answers} <= {"00", "14", "51"} and "00" in dict(answers).values()


def test_an_issuers_refusal_is_recorded_and_its_exposure_released(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The scheme refuses every advice (05): the real StandIn keeps the refusal as the
    # advice record's reason, and releases its exposure as a restart would (kept, the
    # refusals added up for good and ended stand-in at the issuer).
    from switch.sim import networks

    def refuse(self: Any, payment: Any, auth_code: str) -> str:
        return "05"

    monkeypatch.setattr(networks.World, "advise", refuse)
    released: list[tuple[int, int]] = []
    real = StandIn.answered

    def spy(self: StandIn, advice: Any, code: str) -> Any:
        before = sum(self._per_issuer.values())
        record = real(self, advice, code)
        assert record.result().reason == "05"
        released.append((before - sum(self._per_issuer.values()), advice.payment.amount))
        return record

    monkeypatch.setattr(StandIn, "answered", spy)
    simulate(card_outage(1, 100.0))
    assert released and all(freed == amount for freed, amount in released), released
