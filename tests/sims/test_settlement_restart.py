"""A simulator owns its settlement directory, and a restart never replaces what it wrote.

Before: a restarted simulator began again at cycle 1 and wrote ``<network>-0001.*`` over
the files of its previous run, so every payment those files settled vanished from
reconciliation; and two simulators given one ``out_dir`` replaced each other's files at
every cut. Now the writer locks the directory and continues the numbering, and a SWIFT
statement opens with the closing balance of the last one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from channels.card import CardScheme
from channels.config import CardSchemeSpec, SettlementSpec
from channels.settlement import (
    SettlementDirInUse,
    SettlementWriter,
    claim_out_dir,
)
from switch.protocols.settlement_files import decode_camt053, statement_closing
from tests.sims.test_card import card_scheme, example_config_file
from tests.sims.test_settlement_reversal import authorize

ROOT = Path(__file__).resolve().parents[2]


class Books:
    """A card scheme and one SWIFT network whose book the test fills by hand."""

    def __init__(self) -> None:
        self.card_schemes = {"paynet": CardScheme(msgspec.convert(card_scheme(),
                                                                  CardSchemeSpec))}
        self.swift = SimpleNamespace(spec=SimpleNamespace(kind="swift"), book={})
        self.networks: dict[str, Any] = {"swift": self.swift}

    def settle(self, uetr: str, amount_minor: int, currency: str = "EUR") -> None:
        ct = SimpleNamespace(end_to_end_id=f"E2E-{uetr}", amount_minor=amount_minor,
                             currency=currency)
        self.swift.book[uetr] = SimpleNamespace(status="ACSC", ct=ct, settled_at=0.0)


def writer_on(books: Books, out_dir: Path) -> SettlementWriter:
    # The files' numbering and balance chain, apart from the books on disk (their own
    # tests: tests/sims/test_books_on_disk.py); this SWIFT network is a stand-in.
    return SettlementWriter(books, SettlementSpec(out_dir=str(out_dir), books_on_disk=False),
                            clock=time.monotonic)


def contents(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())
            if not p.name.startswith(".")}


def test_a_restarted_writer_continues_after_the_files_already_there(tmp_path: Path) -> None:
    first = Books()
    writer = writer_on(first, tmp_path)
    authorize(first.card_schemes["paynet"], 1)
    writer.cut()
    writer.cut()
    writer.close()
    before = contents(tmp_path)
    assert set(before) == {"paynet-0001.clr", "paynet-0002.clr", "swift-0001.xml",
                           "swift-0002.xml"}

    again = writer_on(Books(), tmp_path)
    assert again.cycle == 2
    again.cut()
    again.close()
    after = contents(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing replaced
    assert set(after) - set(before) == {"paynet-0003.clr", "swift-0003.xml"}


def test_a_statement_after_a_restart_opens_with_the_last_closing_balance(
        tmp_path: Path) -> None:
    books = Books()
    writer = writer_on(books, tmp_path)
    books.settle("u1", 1250)
    books.settle("u2", 300, "USD")
    writer.cut()
    writer.close()
    assert statement_closing((tmp_path / "swift-0001.xml").read_bytes(), "swift-0001.xml") \
        == {"EUR": 1250, "USD": 300}

    books = Books()
    again = writer_on(books, tmp_path)
    books.settle("u3", 50)
    again.cut()
    again.close()
    second = (tmp_path / "swift-0002.xml").read_bytes()
    assert [e.reference for e in decode_camt053(second, "swift-0002.xml")] == ["u3"]
    assert statement_closing(second, "swift-0002.xml") == {"EUR": 1300, "USD": 300}


def test_an_unreadable_last_statement_opens_the_next_at_zero_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "swift-0007.xml").write_bytes(b"<Document")  # cut short
    books = Books()
    writer = writer_on(books, tmp_path)
    books.settle("u1", 10)
    writer.cut()
    writer.close()
    assert statement_closing((tmp_path / "swift-0008.xml").read_bytes(), "x") == {"EUR": 10}
    assert "swift-0007.xml: cannot read its closing balances" in caplog.text


def test_a_second_writer_on_the_same_directory_is_refused_until_the_first_closes(
        tmp_path: Path) -> None:
    first = writer_on(Books(), tmp_path)
    with pytest.raises(SettlementDirInUse) as refused:
        writer_on(Books(), tmp_path)
    assert f"settlement.out_dir {tmp_path}: in use by another simulator (pid {os.getpid()})" \
        in str(refused.value)
    first.close()
    first.close()  # idempotent
    writer_on(Books(), tmp_path).close()


def test_channels_serve_on_a_claimed_directory_exits_2_with_one_line(tmp_path: Path) -> None:
    out_dir = tmp_path / "settlement"
    config = example_config_file(tmp_path, out_dir)
    held = claim_out_dir(out_dir)  # as a running simulator holds it
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "channels", "serve", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(held)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {config}: settlement.out_dir {out_dir}: in use by another "
                      f"simulator (pid {os.getpid()}); two writing one directory replace "
                      "each other's files: give each its own out_dir"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_network_new_to_the_directory_starts_its_statements_quietly_at_zero(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "paynet-0003.clr").write_text("")  # an earlier run without a SWIFT network
    books = Books()
    writer = writer_on(books, tmp_path)
    assert writer.cycle == 3
    books.settle("u1", 10)
    writer.cut()
    writer.close()
    assert statement_closing((tmp_path / "swift-0004.xml").read_bytes(), "x") == {"EUR": 10}
    assert "cannot read" not in caplog.text


def test_reading_closing_balances_refuses_a_declared_entity_as_the_entry_reader_does() -> None:
    from switch.protocols.settlement_files import SettlementFileError

    hostile = b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x "y">]>\n<Document/>'
    with pytest.raises(SettlementFileError, match=r"swift-0001.xml:2: Document: unsafe XML"):
        statement_closing(hostile, "swift-0001.xml")
