"""The money audit compares amounts: what each client sent against what the journal booked.

Before, the audit between clients and journal compared statuses and counts only: a journal
that booked a payment for another amount (or in another currency) than its client sent
passed ``lost 0, duplicates 0``. Journals written here (a tampered intent), the scenario's
verdict row, the acknowledgement files and the generator that records the amounts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest

from loadtests.harness.audit import audit_journal
from loadtests.harness.loadgen import Acknowledged, OpenLoopGenerator
from loadtests.harness.loadrun import write_acks
from loadtests.harness.scenario import Assertions, LoadSection, Scenario, _verdicts, read_acks
from loadtests.harness.shapes import FixedRate
from loadtests.harness.workload import Item, SharesSpec, SpecWorkload, WorkloadSpec
from switch.journal import FINAL, JournalRecord, open_database
from switch.journal.records import to_row
from switch.journal.store import INSERT
from switch.model import Party, Payment, PaymentRequest, Result, Status
from switch.protocols.wire import FrameDecoder, Reply, ReplyEncoder

START = 1_800_000_000.0


def _payment(pid: str, amount: int = 1000, currency: str = "EUR") -> Payment:
    return Payment(pid, "k" + pid, "swift", amount, currency, Party("a"), Party("b"),
                   dt.datetime.fromtimestamp(START, tz=dt.UTC))


def _journal(path: Path, booked: dict[str, tuple[int, str] | None],
             status: Status = Status.APPROVED) -> Path:
    """``booked``: payment id -> (amount, currency) of its intent, None for no intent (a
    payment decided before anything was sent); each ends in one final of ``status``."""
    db = open_database(path, "group")
    at_us = int(START * 1e6)
    rows: list[Any] = []
    for pid, money in booked.items():
        payment = _payment(pid, *(money or (1000, "EUR")))
        if money is not None:
            rows.append(to_row(JournalRecord.intent(payment, b"h", at_us)))
        at_us += 1000
        rows.append(to_row(JournalRecord.outcome(
            FINAL, payment, Result(pid, status, "00" if status is Status.APPROVED else "05"),
            b"h", at_us)))
    db.executemany(INSERT, rows)
    db.close()
    return path


def _ack(pid: str, amount: int | None = 1000, currency: str = "EUR",
         status: str = "approved") -> tuple[str, Acknowledged]:
    return "k" + pid, Acknowledged(status, pid, amount, currency)


def _scenario() -> Scenario:
    return Scenario(name="t", description="t", duration_s=20.0,
                    load=LoadSection(rate=100.0), assertions=Assertions())


def _amount_row(audit: Any) -> Any:
    verdicts = _verdicts(_scenario(), [], [], START,
                         {"totals": {"statuses": {"approved": audit.acknowledged}}},
                         audit, True, None, 0)
    rows = [v for v in verdicts if v.assertion == "amounts as sent"]
    assert len(rows) == 1, [v.assertion for v in verdicts]
    return rows[0]


# --- the audit ---------------------------------------------------------------------------


def test_a_journal_booking_another_amount_fails_the_audit(tmp_path: Path) -> None:
    """The client sent 1000 EUR for P-2; the journal's intent says 1100 EUR. Old code:
    lost 0, duplicates 0, no amount looked at."""
    journal = _journal(tmp_path / "j.db", {"P-1": (1000, "EUR"), "P-2": (1100, "EUR"),
                                           "P-3": (1000, "EUR")})
    acks = dict([_ack("P-1"), _ack("P-2"), _ack("P-3")])
    report = audit_journal(journal, acks)
    assert report.amount_mismatches == 1 and report.amounts_compared == 3
    [wrong] = report.mismatched
    assert (wrong.payment_id, wrong.key) == ("P-2", "kP-2")
    assert (wrong.sent_amount, wrong.journal_amount) == (1000, 1100)
    assert str(wrong) == "P-2 (key kP-2): sent 1000 EUR, journal 1100 EUR"
    # Its own line, not folded into "lost": the payment is there, booked wrong.
    assert report.lost == 0 and report.duplicates == 0
    row = _amount_row(report)
    assert not row.passed
    assert row.measured == "1 of 3 mismatched: P-2 (key kP-2): sent 1000 EUR, journal 1100 EUR"


def test_a_journal_booking_another_currency_fails_the_audit(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {"P-1": (1000, "USD")})
    report = audit_journal(journal, dict([_ack("P-1")]))
    assert report.amount_mismatches == 1
    assert str(report.mismatched[0]) == "P-1 (key kP-1): sent 1000 EUR, journal 1000 USD"
    assert not _amount_row(report).passed


def test_a_clean_journal_passes(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {f"P-{i}": (1000 + i, "EUR") for i in range(50)})
    acks = dict(_ack(f"P-{i}", 1000 + i) for i in range(50))
    report = audit_journal(journal, acks)
    assert (report.amount_mismatches, report.amounts_compared, report.lost) == (0, 50, 0)
    row = _amount_row(report)
    assert row.passed and row.measured == "0 (50 compared)"


def test_a_payment_told_unknown_is_compared_too(tmp_path: Path) -> None:
    """Told "unknown", it was sent, and sent for an amount: compared like the others."""
    journal = _journal(tmp_path / "j.db", {"P-1": (2000, "EUR")})
    report = audit_journal(journal, dict([_ack("P-1", status="unknown")]))
    assert report.amount_mismatches == 1


def test_many_mismatches_are_counted_whole_and_named_boundedly(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {f"P-{i}": (999, "EUR") for i in range(40)})
    report = audit_journal(journal, dict(_ack(f"P-{i}") for i in range(40)))
    assert report.amount_mismatches == 40 and len(report.mismatched) == 20
    row = _amount_row(report)
    assert not row.passed and row.measured.startswith("40 of 40 mismatched: P-0 (key kP-0)")
    assert row.measured.endswith("; and 37 more")


def test_a_decline_decided_before_sending_has_nothing_to_compare(tmp_path: Path) -> None:
    """A risk decline journals a final and no intent: no amount booked, no money moved."""
    journal = _journal(tmp_path / "j.db", {"P-1": None}, status=Status.DECLINED)
    report = audit_journal(journal, dict([_ack("P-1", status="declined")]))
    assert (report.amount_mismatches, report.amounts_compared) == (0, 0)
    assert report.amounts_not_booked == 1
    row = _amount_row(report)
    assert row.passed and row.measured == "0 (0 compared)"


def test_an_approval_with_no_booked_amount_is_a_mismatch(tmp_path: Path) -> None:
    """Told approved, journaled approved, but no intent: the books (the ledger reads the
    intent's amount) hold nothing for what the client was told was paid."""
    journal = _journal(tmp_path / "j.db", {"P-1": None})
    report = audit_journal(journal, dict([_ack("P-1")]))
    assert report.amount_mismatches == 1 and report.lost == 0
    assert str(report.mismatched[0]) == ("P-1 (key kP-1): sent 1000 EUR, "
                                         "journal no amount (no intent)")


def test_acknowledgements_without_an_amount_are_not_taken_as_matching(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "j.db", {"P-1": (1000, "EUR")})
    report = audit_journal(journal, dict([_ack("P-1", amount=None)]))
    assert (report.amounts_unknown, report.amounts_compared) == (1, 0)
    row = _amount_row(report)
    assert not row.passed and "1 acknowledgements carry no amount" in row.measured


# --- the acknowledgement files -------------------------------------------------------------


def test_acknowledgement_files_keep_the_amount_sent(tmp_path: Path) -> None:
    write_acks(tmp_path / "acks-0.msgpack", dict([_ack("P-1", 1250, "GBP")]))
    write_acks(tmp_path / "acks-1.msgpack", dict([_ack("P-2", 7, "JPY", "unknown")]))
    assert read_acks(tmp_path) == {"kP-1": Acknowledged("approved", "P-1", 1250, "GBP"),
                                   "kP-2": Acknowledged("unknown", "P-2", 7, "JPY")}
    # A file of [status, payment id] pairs is read as acknowledgements with no amount.
    (tmp_path / "acks-2.msgpack").write_bytes(msgspec.msgpack.encode({"kP-3": ["approved",
                                                                              "P-3"]}))
    assert read_acks(tmp_path)["kP-3"] == Acknowledged("approved", "P-3", None, "")


# --- the generator records what it sent ----------------------------------------------------


class _Id(msgspec.Struct):
    id: int
    op: str = ""


_decode_id = msgspec.msgpack.Decoder(_Id).decode


async def _echo(stream: anyio.abc.ByteStream) -> None:
    decoder, out = FrameDecoder(), ReplyEncoder()
    n = 0
    try:
        while True:
            for payload in decoder.feed(await stream.receive(65536)):
                msg = _decode_id(payload)
                n += 1
                out.add(Reply(msg.id, Result(f"P-{n}", Status.APPROVED, "00")))
            if len(out):
                await stream.send(out.take())
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


@asynccontextmanager
async def _serve() -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _echo)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("track", [True, False])
def test_the_generator_acknowledges_with_the_amount_it_sent(track: bool) -> None:
    clean = WorkloadSpec(shares=SharesSpec(duplicate=0.0, malformed=0.0, invalid=0.0,
                                           over_limit=0.0, blocklisted=0.0))
    workload = SpecWorkload(clean, 3, key_prefix="a-")
    sent: dict[str, PaymentRequest] = {}

    def source() -> tuple[Item, str]:
        item, kind = workload.next_item()
        assert isinstance(item, PaymentRequest)
        sent[item.idempotency_key] = item
        return item, kind

    gen = OpenLoopGenerator(source, duration_s=0.5, shape=FixedRate(400), connections=2,
                            drain_timeout_s=2.0, track_acknowledged=track)

    async def main() -> None:
        async with _serve() as port:
            await gen.run("127.0.0.1", port)

    anyio.run(main)
    acks = gen.stats.acknowledged
    if not track:
        assert acks == {}  # nothing kept per key when not asked (long runs)
        return
    assert len(acks) == len(sent) > 50
    amounts = {(k, a.amount, a.currency) for k, a in acks.items()}
    assert amounts == {(k, r.amount, r.currency) for k, r in sent.items()}
    assert len({a.amount for a in acks.values()}) > 1  # amounts of their own, not one constant
