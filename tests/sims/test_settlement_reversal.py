"""A reversal that lands after its authorization was cleared is reported, and reconciles.

Found by the kill -9 campaign (issue 11): the switch reverses a crash-recovered payment
within a second now, so the reversal often reaches the issuer just after a cut-off. The
issuer's book said reversed while its clearing files said settled, forever: seven
issuer-vs-journal mismatches in twenty kills.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from channels.card import CardScheme
from channels.config import CardSchemeSpec, SettlementSpec
from channels.settlement import SettlementWriter
from switch.backoffice.recon.classes import Record
from switch.backoffice.recon.reconcile import match
from switch.backoffice.recon.sides import load_network_side
from switch.currency import NUMERIC_TO_ALPHA
from switch.protocols import iso8583
from switch.protocols.settlement_files import decode_card_clearing
from tests.sims.test_card import card_scheme

pytestmark = pytest.mark.anyio
AT = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)


class Books:
    def __init__(self, scheme: CardScheme) -> None:
        self.card_schemes = {"paynet": scheme}
        self.networks: dict[str, Any] = {}


def authorize(scheme: CardScheme, stan: int) -> iso8583.IsoMessage:
    txn = iso8583.CardTransaction(
        pan="4111111111111111", amount_minor=1000 + stan, currency="840", stan=stan,
        transmitted_at=AT, terminal_id="TERM0001", merchant_id="M1", acquirer_id="123456",
        rrn=f"0600000000{stan:02d}")
    request = iso8583.authorization_request(txn)
    assert scheme.authorize(request, 0.0).response_code == "00"
    return request


def entries(out_dir: Path) -> list[list[tuple[str, str]]]:
    """(reference, status) per cycle's clearing file."""
    return [[(e.reference, e.status)
             for e in decode_card_clearing(p.read_text(), p.name, NUMERIC_TO_ALPHA)]
            for p in sorted(out_dir.glob("*.clr"))]


async def test_a_reversal_after_clearing_is_reported_once_in_the_next_cycle(
        tmp_path: Path) -> None:
    scheme = CardScheme(msgspec.convert(card_scheme(), CardSchemeSpec))
    writer = SettlementWriter(Books(scheme), SettlementSpec(out_dir=str(tmp_path)))
    first, second = authorize(scheme, 1), authorize(scheme, 2)
    writer.cut()  # both cleared as settled
    reversal = iso8583.reversal_request(first, stan=3, transmitted_at=AT)
    assert scheme.reverse(reversal).response_code == "00"
    writer.cut()  # the reversal of a cleared record
    assert scheme.reverse(reversal).response_code == "00"  # a repeat changes nothing
    writer.cut()
    rrn1, rrn2 = first.fields[37], second.fields[37]
    assert entries(tmp_path) == [
        [(rrn1, "settled"), (rrn2, "settled")], [(rrn1, "reversed")], []]
    assert not scheme.reversed_keys


async def test_a_reversal_before_clearing_is_not_cleared_at_all(tmp_path: Path) -> None:
    scheme = CardScheme(msgspec.convert(card_scheme(), CardSchemeSpec))
    writer = SettlementWriter(Books(scheme), SettlementSpec(out_dir=str(tmp_path)))
    request = authorize(scheme, 1)
    scheme.reverse(iso8583.reversal_request(request, stan=2, transmitted_at=AT))
    writer.cut()
    writer.cut()
    assert entries(tmp_path) == [[], []]


def rec(status: str, t: int = 1_000_000) -> Record:
    return Record("card", "060000000089", 1000, "USD", status, t, "x")


def test_a_cleared_then_reversed_pair_matches_a_switch_reversal() -> None:
    report = match([rec("reversed")], [rec("approved"), rec("reversed", 2_000_000)])
    assert report.breaks == []
    assert report.counts == {"matched": 1, "network:reversal_of_cleared": 1}


def test_the_pair_against_a_switch_approval_is_still_a_break() -> None:
    """The issuer reversed what the switch holds approved: someone must look."""
    report = match([rec("approved")], [rec("approved"), rec("reversed", 2_000_000)])
    assert [b.kind for b in report.breaks] == ["duplicate"]


def test_a_reversal_of_another_amount_does_not_pair() -> None:
    other = Record("card", "060000000089", 999, "USD", "reversed", 2_000_000, "x")
    report = match([rec("reversed")], [rec("approved"), other])
    assert sorted(b.kind for b in report.breaks) == ["duplicate", "status_mismatch"]


async def test_the_files_reconcile_through_the_columnar_reader(tmp_path: Path) -> None:
    """The same pairing when the network side is read from the files, as users run it."""
    scheme = CardScheme(msgspec.convert(card_scheme(), CardSchemeSpec))
    writer = SettlementWriter(Books(scheme), SettlementSpec(out_dir=str(tmp_path)))
    request = authorize(scheme, 1)
    writer.cut()
    scheme.reverse(iso8583.reversal_request(request, stan=2, transmitted_at=AT))
    await anyio.sleep(0)
    writer.cut()
    network = load_network_side(tmp_path)
    assert len(network) == 2
    approved_at = int(network.time_us[0])  # the switch approved it just before the cut
    switch = [Record("card", request.fields[37], 1001, "USD", "reversed", approved_at, "x")]
    report = match(switch, network)
    assert report.breaks == [], report.breaks
