"""A restarted simulator keeps its books (channels/books.py).

Before, a simulator's books were only in memory: after a restart a reversal of an earlier
approval found no hold, a status inquiry about a settled payment was answered "never
received" (and the switch failed a payment the network had settled), and what had been
approved since the last cut-off was never cleared.
"""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from channels.card import CardScheme
from channels.config import CardSchemeSpec, SettlementSpec
from channels.settlement import SettlementWriter
from loadtests.harness.processes import restart_channels, start_channels
from switch.adapters.base import NetworkReply
from switch.currency import NUMERIC_TO_ALPHA
from switch.protocols.framing import frame
from switch.protocols.qrapi import QrCheckStatus, QrPayRequest, QrReply, decode_reply, encode
from switch.protocols.settlement_files import (
    decode_camt053,
    decode_card_clearing,
    decode_qr_csv,
)
from tests.sims.test_card import (
    card_payment,
    card_scheme,
    config,
    network,
    qr_code,
    qr_payment,
    raw_exchange,
    running,
    swift_payment,
    uetr,
    wait_for,
)
from tests.sims.test_qr import qr_net
from tests.sims.test_settlement_reversal import Books, authorize
from tests.sims.test_swift import swift_net

pytestmark = pytest.mark.anyio


def clearing(out_dir: Path) -> Counter[tuple[str, str]]:
    """(reference, status) over every card clearing file, with how often each appears."""
    return Counter((e.reference, e.status) for p in sorted(out_dir.glob("*.clr"))
                   for e in decode_card_clearing(p.read_text(), p.name, NUMERIC_TO_ALPHA))


def card_books(out_dir: Path) -> tuple[CardScheme, SettlementWriter]:
    scheme = CardScheme(msgspec.convert(card_scheme(), CardSchemeSpec))
    return scheme, SettlementWriter(Books(scheme), SettlementSpec(out_dir=str(out_dir)),
                                    clock=time.monotonic)


def test_a_card_scheme_dies_and_its_restart_clears_what_it_approved_once(
        tmp_path: Path) -> None:
    scheme, writer = card_books(tmp_path)
    authorize(scheme, 1)
    writer.cut()  # clears 1
    authorize(scheme, 2)
    held = scheme.available("4111111111111111")
    writer.close()  # dies before any cut saw 2: nothing else of it is written

    again, writer = card_books(tmp_path)
    assert list(again.records) == list(scheme.records)
    assert again.available("4111111111111111") == held  # the holds came back
    writer.cut()
    writer.cut()
    writer.close()
    assert clearing(tmp_path) == {("060000000001", "settled"): 1,
                                  ("060000000002", "settled"): 1}


def test_a_retransmission_after_the_restart_is_still_a_duplicate(tmp_path: Path) -> None:
    scheme, writer = card_books(tmp_path)
    request = authorize(scheme, 3)
    writer.close()
    again, writer = card_books(tmp_path)
    # Within duplicate_window_s of the first: 94, never a second hold.
    assert again.authorize(request, 0.0).response_code == "94"
    assert again.available("4111111111111111") == scheme.available("4111111111111111")
    writer.close()


def test_books_written_under_another_configuration_start_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Editing the scheme (here: its issuer no longer issues the card) and restarting on
    the same out_dir is a user's change, not a corrupt file: start, keep every record,
    and say what does not fit, never a traceback."""
    scheme, writer = card_books(tmp_path)
    authorize(scheme, 6)
    writer.close()
    changed = CardScheme(msgspec.convert(card_scheme(issuers=[{"name": "beta", "bins": ["5"]}]),
                                         CardSchemeSpec))
    writer = SettlementWriter(Books(changed), SettlementSpec(out_dir=str(tmp_path)),
                              clock=time.monotonic)
    assert list(changed.records) == list(scheme.records)
    assert "were written under another configuration: 1 authorizations found no account" \
        in caplog.text
    writer.close()


def test_a_crash_between_a_cuts_marks_and_its_file_clears_the_records_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scheme, writer = card_books(tmp_path)
    authorize(scheme, 4)
    writer.cut()
    authorize(scheme, 5)

    def die(*args: Any) -> Path:
        raise SystemExit("killed after the marks, before the file")

    monkeypatch.setattr(writer, "_write", die)
    with pytest.raises(SystemExit):
        writer.cut()  # 5 is marked cleared in cycle 2, whose file never appeared
    writer.close()
    assert not (tmp_path / "paynet-0002.clr").exists()

    _, writer = card_books(tmp_path)
    assert writer.cycle == 1
    writer.cut()
    writer.close()
    assert clearing(tmp_path) == {("060000000004", "settled"): 1,
                                  ("060000000005", "settled"): 1}


async def test_every_network_answers_from_its_book_after_a_restart(tmp_path: Path) -> None:
    cfg = config(network("card", "card"), swift_net(), qr_net())
    cfg["settlement"] = {"out_dir": str(tmp_path), "cycle_s": 3600}
    card, swift, qr = card_payment(1), swift_payment(2), qr_payment(3)
    async with running(cfg) as sims:
        assert (await sims.card().authorize(card)).outcome == "approved"
        assert (await sims.swift().authorize(swift)).outcome == "approved"
        assert (await sims.qr().authorize(qr)).outcome == "approved"
        book = sims.server("swift").book  # type: ignore[attr-defined]
        await wait_for(lambda: book[uetr(2)].status == "ACSC")
        # Fenced: a status inquiry was told these were never received.
        assert (await sims.qr().resolve(qr_payment(9))).outcome == "failed"
        assert (await sims.swift().resolve(swift_payment(8))).outcome == "failed"
        held = sims.scheme.available(next(iter(sims.scheme.accounts)))
    # Shut down: its last cut cleared all three.

    async with running(cfg) as sims:
        # The reversal finds the hold and releases it.
        assert sims.scheme.available(next(iter(sims.scheme.accounts))) == held
        assert (await sims.card().resolve(card)).outcome == "reversed"
        assert sims.scheme.active_hold(next(iter(sims.scheme.records))) == 0
        # The status inquiries are answered from the books, not "never received".
        assert await sims.swift().resolve(swift) == NetworkReply("approved", "00", uetr(2))
        assert (await sims.qr().resolve(qr)).outcome == "approved"
        assert (await sims.qr().authorize(qr_payment(9))).outcome == "failed"  # fenced
        assert (await sims.swift().authorize(swift_payment(8))).outcome == "failed"
    # Its last cut reports the reversal of what the first run cleared, and nothing twice.

    rrn = card.card.rrn if card.card is not None else ""
    assert clearing(tmp_path) == {(rrn, "settled"): 1, (rrn, "reversed"): 1}
    statements = [e.reference for p in sorted(tmp_path.glob("swift-*.xml"))
                  for e in decode_camt053(p.read_bytes(), p.name)]
    assert statements == [uetr(2)]
    qr_rows = [e.reference for p in sorted(tmp_path.glob("qr-*.csv"))
               for e in decode_qr_csv(p.read_text(), p.name, {"CNY"})]
    assert qr_rows == ["P1-3"]



async def _qr(port: int, request: QrPayRequest | QrCheckStatus) -> QrReply:
    [answer] = await raw_exchange(port, frame(encode(request)), header=4, timeout=5.0)
    return decode_reply(answer)


async def test_channels_serve_killed_9_answers_from_its_books_when_it_is_back(
        tmp_path: Path) -> None:
    pay = QrPayRequest(ref="kill9-1", payload=qr_code("M0000007"), currency="CNY",
                       amount=2500)
    proc, ready = start_channels(tmp_path)  # the example simulators, own process
    try:
        assert (await _qr(ready["qr"]["port"], pay)).status == "approved"
    finally:
        proc.kill()  # kill -9: no cut, no shutdown of any kind
        proc.wait()
    proc, again = restart_channels(tmp_path, ready)
    try:
        # The networks' ports are the same: a running switch reconnects. (The admin API's
        # may not be: another run's simulators can take 7280 while these are down.)
        assert {n: v for n, v in again.items() if n != "admin_port"} == {
            n: v for n, v in ready.items() if n != "admin_port"}
        # Asked whether it was paid, the scheme still knows: not "not_found", on which
        # the switch would fail a payment whose merchant was credited.
        assert (await _qr(ready["qr"]["port"], QrCheckStatus("kill9-1"))).status == "approved"
        # Paid again (a retry): answered from the book, never credited twice.
        assert (await _qr(ready["qr"]["port"], pay)).status == "approved"
    finally:
        proc.send_signal(signal.SIGTERM)  # an orderly stop: its last cut
        assert proc.wait(30) == 0
    rows = [e.reference for p in sorted((tmp_path / "settlement").glob("qr-*.csv"))
            for e in decode_qr_csv(p.read_text(), p.name, {"CNY"})]
    assert rows == ["kill9-1"]  # cleared once, by the restarted simulator


def test_a_restart_whose_admin_port_was_taken_meanwhile_takes_a_free_one(
        tmp_path: Path) -> None:
    """CI: while a killed simulator was down, another run's simulators took its admin
    port (7280), and the restart pinned to it exited "address already in use". The
    networks' ports are what a running switch reconnects to; the admin API moves.
    The SIGTERM right after the ready file also checks the orderly stop: the simulators
    took their signals only after writing it, and a SIGTERM in between killed them
    (exit -15, no last cut)."""
    proc, ready = start_channels(tmp_path)
    proc.kill()
    proc.wait()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ready["admin_port"]))
        squatter.listen()
        proc, again = restart_channels(tmp_path, ready)
        try:
            assert again["admin_port"] != ready["admin_port"]
            assert {n: v for n, v in again.items() if n != "admin_port"} == {
                n: v for n, v in ready.items() if n != "admin_port"}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
