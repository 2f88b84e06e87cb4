"""Back-office defects, each pinned by a test that failed before its fix:

1. settlement files read in cycle order past cycle 9999 (not string order);
2. a settlement file truncated while it is read: never a SIGBUS, a result or one line;
3. negative amounts refused in every format, camt.053's RvslInd given a meaning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from switch.backoffice.recon.classes import Record
from switch.backoffice.recon.reconcile import match
from switch.backoffice.recon.sides import _read_file, load_network_side, settlement_files
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.protocols.settlement_files import (
    SettlementEntry,
    SettlementFileError,
    decode_card_clearing,
    decode_qr_csv,
    encode_camt053,
    encode_card_clearing,
    encode_qr_csv,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
)

ROOT = Path(__file__).resolve().parents[2]
NUMERIC = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
T = 1_700_000_000_000_000  # 2023-11-14, µs
RRN = "000000123456"
UETR = "5f1c0a7e-6c3b-4a51-9d2e-0c9a7f3b1e22"


def _clr(cycle: int, *entries: SettlementEntry) -> bytes:
    return encode_card_clearing("visa", str(cycle), list(entries), NUMERIC).encode()


# --- 1. cycle order ----------------------------------------------------------------------


def test_settlement_files_sort_cycle_10000_after_9999(tmp_path: Path) -> None:
    for cycle in (9998, 9999, 10000, 10001):
        (tmp_path / f"visa-{cycle:04d}.clr").write_bytes(_clr(cycle))
    names = [p.name for p in settlement_files(tmp_path)]
    assert names == ["visa-9998.clr", "visa-9999.clr", "visa-10000.clr", "visa-10001.clr"]


def test_settlement_file_order_is_numeric_per_digit_run_and_total() -> None:
    from switch.protocols.settlement_files import settlement_file_order

    names = ["qr-0002.csv", "visa-10000.clr", "visa-9999.clr", "visa-0001.clr", "visa-1.clr",
             "visa-01.clr", "a", "a1", "1", "visa-" + "9" * 5000 + ".clr", "visa-2.clr"]
    assert sorted(names, key=settlement_file_order) == [
        "1", "a", "a1", "qr-0002.csv", "visa-0001.clr", "visa-01.clr", "visa-1.clr",
        "visa-2.clr", "visa-9999.clr", "visa-10000.clr", "visa-" + "9" * 5000 + ".clr"]


def test_a_reversal_in_cycle_10000_pairs_with_its_clearing_in_cycle_9999(
        tmp_path: Path) -> None:
    """Cleared in 9999, reversed just after the cut (so in 10000), reversed at the switch:
    one payment, matched. Read 10000 first, the reversal took the match and the clearing
    record was reported as a duplicate."""
    cleared = SettlementEntry(RRN, "000001|TERM0001", 500, "USD", "settled", T)
    reversal = SettlementEntry(RRN, "000001|TERM0001", 500, "USD", "reversed", T + 60_000_000)
    (tmp_path / "visa-9999.clr").write_bytes(_clr(9999, cleared))
    (tmp_path / "visa-10000.clr").write_bytes(_clr(10000, reversal))
    switch = [Record("card", RRN, 500, "USD", "reversed", T - 1_000_000, "P1-1")]
    report = match(switch, load_network_side(tmp_path))
    assert report.breaks == []
    # Every network record in a class: the reversal counted apart (2 records, 1 payment).
    assert report.counts == {"matched": 1, "network:reversal_of_cleared": 1}


# --- 2. a file truncated while it is read ------------------------------------------------

_TRUNCATE_IN_PARSE = """
import os, sys
from pathlib import Path
from switch.backoffice.recon import sides
from switch.protocols.settlement_files import SettlementFileError

path = Path(sys.argv[1])
parse = sides._csv_fast

def truncated_first(p, data, code):
    # Another process rewrites the file in place: it is cut to nothing after this
    # reader opened it and took its size, before the parser touches the bytes.
    os.truncate(path, 0)
    return parse(p, data, code)

sides._csv_fast = truncated_first
try:
    cols, key = sides._read_file(path)
except SettlementFileError as exc:
    print(f"error: {exc}")
    sys.exit(2)
print(f"records: {len(cols)} amount: {int(cols.amount.sum())}")
"""


@pytest.mark.parametrize("suffix", [".clr", ".csv"])
def test_a_file_truncated_while_parsed_does_not_kill_the_reader(
        tmp_path: Path, suffix: str) -> None:
    """The bytes the parser reads are this process's own: the file cut to nothing under
    it changes nothing (it was a shared mapping of the file: SIGBUS, the process died)."""
    entries = [SettlementEntry(f"{i:012d}", f"{i:06d}|TERM0001" if suffix == ".clr"
                               else f"M{i % 7:07d}", 100 + i, "USD", "settled", T + i)
               for i in range(3000)]  # ~150 kB: many pages past the new end
    path = tmp_path / f"net-0001{suffix}"
    path.write_bytes(_clr(1, *entries) if suffix == ".clr" else encode_qr_csv(entries).encode())
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_IN_PARSE, str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode >= 0, (
        f"killed by {signal.Signals(-proc.returncode).name}: {proc.stderr[-500:]}")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(e.amount for e in entries)
    assert proc.stdout.strip() == f"records: {len(entries)} amount: {total}"
    assert path.stat().st_size == 0  # it was cut, under the reader


@pytest.mark.parametrize("suffix", [".clr", ".csv", ".xml"])
@pytest.mark.parametrize("change", ["truncated", "grown"])
def test_a_file_changed_between_open_and_read_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, change: str) -> None:
    """Cut (or appended to) after the reader took its size, before it read a byte: the
    file is refused as changed, not parsed as whatever half was there."""
    from switch.backoffice.recon import sides

    entries = [SettlementEntry(f"{i:012d}", f"{i:06d}|TERM0001", 100 + i, "USD", "settled",
                               T + i) for i in range(500)]
    if suffix == ".clr":
        data = _clr(1, *entries)
    elif suffix == ".csv":
        data = encode_qr_csv(entries).encode()
    else:
        data = encode_camt053("S1", "NOSTRO", T, entries)
    path = tmp_path / f"net-0001{suffix}"
    path.write_bytes(data)
    real_fstat = os.fstat
    calls = []

    def fstat_then_change(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if not calls:  # the size check at open: the writer strikes right after it
            calls.append(fd)
            if change == "truncated":
                os.truncate(path, len(data) // 2)
            else:
                with path.open("ab") as f:
                    f.write(data[-200:])
        return st

    monkeypatch.setattr(sides.os, "fstat", fstat_then_change)
    with pytest.raises(SettlementFileError) as info:
        _read_file(path)
    assert (info.value.file, info.value.field) == (str(path), "file")
    assert "changed while being read" in info.value.reason
    assert "\n" not in str(info.value)


# --- 3. negative amounts, camt.053 RvslInd ----------------------------------------------


def _negative_clr() -> bytes:
    entries = [SettlementEntry(f"{i:012d}", f"{i:06d}|TERM0001", 100, "USD", "settled", T)
               for i in range(3)]
    lines = _clr(1, *entries).decode().splitlines()
    lines[2] = lines[2].replace(",100,", ",-100,")  # line 3, the second detail
    lines[-1] = "T,3,100"  # the trailer adds up: only the sign is wrong
    return ("\n".join(lines) + "\n").encode()


def _negative_qr() -> bytes:
    entries = [SettlementEntry(f"QR{i:04d}", "M0000001", 100, "CNY", "settled", T)
               for i in range(3)]
    lines = encode_qr_csv(entries).splitlines()
    lines[2] = lines[2].replace(",100,", ",-100,")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(("suffix", "make"), [(".clr", _negative_clr), (".csv", _negative_qr)])
def test_a_negative_amount_is_refused_by_every_reader_naming_line_and_field(
        tmp_path: Path, suffix: str, make: object) -> None:
    """The status field carries the direction; a sign as well is refused: by the strict
    decoder, the columnar reader and the path reconcile takes (numba kernel first)."""
    data = make()  # type: ignore[operator]
    path = tmp_path / f"net-0001{suffix}"
    path.write_bytes(data)
    readers = [lambda: _read_file(path)]
    if suffix == ".clr":
        readers += [lambda: read_card_clearing_columns(data, str(path)),
                    lambda: decode_card_clearing(data.decode(), str(path), NUMERIC_TO_ALPHA)]
    else:
        readers += [lambda: read_qr_csv_columns(data, str(path)),
                    lambda: decode_qr_csv(data.decode(), str(path), CURRENCIES)]
    for read in readers:
        with pytest.raises(SettlementFileError) as info:
            read()
        assert (info.value.file, info.value.line, info.value.field) == (str(path), 3, "amount")
        assert "-100" in info.value.reason and "negative" in info.value.reason
        assert str(info.value).startswith(f"{path}:3: amount: ")


def test_reconcile_refuses_a_negative_amount_in_one_line_exit_2(tmp_path: Path) -> None:
    from switch.journal import open_database

    open_database(tmp_path / "journal.db", "group").close()
    files = tmp_path / "files"
    files.mkdir()
    (files / "visa-0001.clr").write_bytes(_negative_clr())
    proc = subprocess.run(
        [sys.executable, "-m", "switch.cli.main", "reconcile", "--journal",
         str(tmp_path / "journal.db"), "--files", str(files), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"Error: {files / 'visa-0001.clr'}:3: amount: '-100' is negative: "
                     "amounts are magnitudes in minor units; a reversal is status "
                     "'reversed', not a sign"], proc.stderr


def _statement(*entries: SettlementEntry) -> bytes:
    return encode_camt053("S1", "NOSTRO", T, list(entries))


SETTLED = SettlementEntry(UETR, "E2E-1", 10_000, "EUR", "settled", T)
REVERSED = SettlementEntry(UETR, "E2E-1", 10_000, "EUR", "reversed", T + 1_000_000)


def test_camt053_negative_amount_is_refused_as_negative() -> None:
    doc = _statement(SETTLED).replace(b">100.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>",
                                      b">-100.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>")
    with pytest.raises(SettlementFileError) as info:
        read_camt053_columns(doc, "s.xml")
    assert info.value.field == "Stmt/Ntry[0]/Amt"
    assert "negative" in info.value.reason and "CdtDbtInd" in info.value.reason


def test_camt053_writer_marks_a_reversal_with_rvslind() -> None:
    doc = _statement(SETTLED, REVERSED)
    assert doc.count(b"<RvslInd>true</RvslInd>") == 1
    assert b"<CdtDbtInd>DBIT</CdtDbtInd><RvslInd>true</RvslInd><Sts>" in doc
    assert [e.status for e in read_camt053_columns(doc, "s.xml").entries()] == [
        "settled", "reversed"]


@pytest.mark.parametrize("value", ["true", "1", " true "])
def test_camt053_debit_with_rvslind_true_reverses_the_booked_credit(
        tmp_path: Path, value: str) -> None:
    """Booked in one statement, reversed (DBIT, RvslInd true) in the next: against the
    switch's reversed payment, one match and no break."""
    first = _statement(SETTLED)
    second = _statement(REVERSED).replace(b"<RvslInd>true</RvslInd>",
                                          f"<RvslInd>{value}</RvslInd>".encode())
    assert read_camt053_columns(second, "s.xml").entries() == [REVERSED]
    (tmp_path / "swift-0001.xml").write_bytes(first)
    (tmp_path / "swift-0002.xml").write_bytes(second)
    switch = [Record("swift", UETR, 10_000, "EUR", "reversed", T - 1_000_000, "P1-1")]
    report = match(switch, load_network_side(tmp_path))
    assert report.breaks == []
    assert report.counts == {"matched": 1, "network:reversal_of_cleared": 1}


def test_camt053_credit_with_rvslind_false_is_a_settlement() -> None:
    doc = _statement(SETTLED).replace(b"<CdtDbtInd>CRDT</CdtDbtInd><Sts>",
                                      b"<CdtDbtInd>CRDT</CdtDbtInd><RvslInd>false</RvslInd>"
                                      b"<Sts>")
    assert read_camt053_columns(doc, "s.xml").entries() == [SETTLED]


@pytest.mark.parametrize(("rvslind", "why"), [
    (b"<RvslInd>true</RvslInd>", "reverses a debit"),
    (b"<RvslInd>yes</RvslInd>", "not a boolean: 'yes'"),
    (b"<RvslInd/>", "not a boolean: ''"),
])
def test_camt053_rvslind_that_cannot_be_read_as_settlement_is_refused(
        rvslind: bytes, why: str) -> None:
    """A CRDT entry with RvslInd true undoes a debit this account does not book as a
    payment; a value that is not an xs:boolean says nothing. Both are refused whole,
    naming the entry's line and RvslInd (they were read as plain settlements)."""
    doc = _statement(REVERSED, SETTLED).replace(
        b"<CdtDbtInd>CRDT</CdtDbtInd><Sts>", b"<CdtDbtInd>CRDT</CdtDbtInd>" + rvslind + b"<Sts>")
    doc = doc.replace(b"<Ntry>", b"\n<Ntry>")  # each entry on its own line
    with pytest.raises(SettlementFileError) as info:
        read_camt053_columns(doc, "s.xml")
    assert (info.value.file, info.value.field) == ("s.xml", "Stmt/Ntry[1]/RvslInd")
    assert info.value.line == 3  # the second entry's line
    assert why in info.value.reason
