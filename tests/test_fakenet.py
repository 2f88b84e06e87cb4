"""The in-process stand-in network keeps a bounded book, and still sees double bookings."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from switch.adapters import fakenet
from switch.adapters.fakenet import StandInNetwork, StandInNetworkConfig
from switch.model import Party, Payment

ALWAYS_APPROVES = StandInNetworkConfig("qr-net", "qr", latency_median_ms=0.0,
                                       decline_rate=0.0, error_rate=0.0)


def _payment(payment_id: str, key: str) -> Payment:
    return Payment(payment_id, key, "qr", 100, "CNY", Party("a"), Party("b"),
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_the_book_forgets_the_oldest_payments_and_their_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fakenet, "MAX_BOOKED", 10)
    network = StandInNetwork(ALWAYS_APPROVES)

    async def book() -> None:
        for i in range(25):
            assert (await network.authorize(_payment(f"P{i}", f"k{i}"))).outcome == "approved"

    anyio.run(book)
    assert len(network._booked) == 10
    assert sorted(network.approvals_by_key) == sorted(f"k{i}" for i in range(15, 25))
    assert network.booked_twice == 0


def test_a_key_approved_twice_within_the_book_is_a_double_booking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fakenet, "MAX_BOOKED", 10)
    network = StandInNetwork(ALWAYS_APPROVES)

    async def book() -> None:
        await network.authorize(_payment("P-first", "same-key"))
        for i in range(5):
            await network.authorize(_payment(f"P{i}", f"k{i}"))
        await network.authorize(_payment("P-second", "same-key"))

    anyio.run(book)
    assert network.booked_twice == 1
    assert network.approvals_by_key["same-key"] == 2
