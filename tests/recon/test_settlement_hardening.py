"""Settlement decoders under hostile input (issue 11, defect 11): every malformed file is a
SettlementFileError naming file:line:field (exit 2), never a traceback; parse memory is
bounded. The hypothesis tests run the same targets as bench/fuzz/fuzz_settlement_*.py."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from switch.currency import CURRENCIES
from switch.protocols.settlement_files import (
    SettlementColumns,
    SettlementEntry,
    SettlementFileError,
    encode_camt053,
    encode_card_clearing,
    encode_qr_csv,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
    strings,
)

NUMERIC = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
ENTRIES = [
    SettlementEntry("001000000001", "000001|TERM0001", 12345, "USD", "settled",
                    1_795_000_000_000_000),
    SettlementEntry("001000000002", "000002|TERM0001", 500, "JPY", "reversed",
                    1_795_000_001_000_000),
]
CARD = encode_card_clearing("visa-sim", "c1", ENTRIES, NUMERIC).encode()
QR = encode_qr_csv([SettlementEntry(e.reference, "M0000007", e.amount, "CNY", e.status,
                                    e.settled_at_us) for e in ENTRIES]).encode()
CAMT = encode_camt053("S1", "NOSTRO", 1_795_000_000_000_000, [
    SettlementEntry("5f1c0a7e-6c3b-4a51-9d2e-0c9a7f3b1e22", "E2E-1", 100, "EUR", "settled",
                    1_795_000_000_000_000)])

Reader = Callable[[bytes, str], object]

CASES: list[tuple[str, Reader, bytes, int, str]] = [
    ("superscript amount", read_card_clearing_columns,
     CARD.replace(b",12345,", ",¹²³,".encode()), 2, "amount"),
    ("--5", read_card_clearing_columns, CARD.replace(b",12345,", b",--5,"), 2, "amount"),
    ("+5", read_card_clearing_columns, CARD.replace(b",12345,", b",+5,"), 2, "amount"),
    ("5,000 digits", read_card_clearing_columns,
     CARD.replace(b",12345,", b"," + b"9" * 5000 + b","), 2, "amount"),
    ("2**63", read_card_clearing_columns,
     CARD.replace(b",12345,", b"," + str(2**63).encode() + b","), 2, "amount"),
    ("non-UTF-8", read_card_clearing_columns,
     CARD.replace(b"TERM0001,500", b"TERM\xff001,500"), 3, "encoding"),
    ("5,000-digit currency", read_card_clearing_columns,
     CARD.replace(b",840,", b"," + b"8" * 5000 + b","), 2, "currency"),
    ("blank line", read_card_clearing_columns,
     CARD.replace(b"\nD,001000000002", b"\n\nD,001000000002"), 3, "record type"),
    ("QR superscript", read_qr_csv_columns, QR.replace(b",500,", ",⁵,".encode()), 3, "amount"),
    ("QR non-UTF-8", read_qr_csv_columns, QR.replace(b"M0000007,500", b"M\xfe,500"), 3,
     "encoding"),
    ("camt UTF-7", read_camt053_columns,
     CAMT.replace(b'encoding="UTF-8"', b'encoding="UTF-7"'), 1, "encoding"),
    ("camt unknown encoding", read_camt053_columns,
     CAMT.replace(b'encoding="UTF-8"', b'encoding="X-NOPE"'), 1, "encoding"),
    ("camt UTF-16", read_camt053_columns, CAMT.decode().replace("UTF-8", "UTF-16")
     .encode("utf-16"), 1, "encoding"),
    ("camt non-UTF-8", read_camt053_columns, CAMT.replace(b"E2E-1", b"E2E\xff1"), 1,
     "Document"),
    ("camt superscript", read_camt053_columns, CAMT.replace(b">1.00<", ">¹.00<".encode()), 1,
     "Stmt/Ntry[0]/Amt"),
    ("camt --5", read_camt053_columns, CAMT.replace(b">1.00<", b">--5<"), 1,
     "Stmt/Ntry[0]/Amt"),
    ("camt 5,000 digits", read_camt053_columns,
     CAMT.replace(b">1.00<", b">" + b"9" * 5000 + b"<"), 1, "Stmt/Ntry[0]/Amt"),
    ("camt entity bomb", read_camt053_columns,
     b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
     b"<a>&b;</a>", 1, "Document"),
    ("camt external entity", read_camt053_columns,
     b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "http://example.com/x">]>'
     b"<a>&x;</a>", 1, "Document"),
    ("camt depth", read_camt053_columns,
     CAMT.replace(b"<GrpHdr>", b"<a>" * 400 + b"</a>" * 400 + b"<GrpHdr>"), 1, "Document"),
    ("camt wrong root", read_camt053_columns, b'<?xml version="1.0"?><Document/>', 1,
     "Document"),
]


@pytest.mark.parametrize(("name", "reader", "data", "line", "field"), CASES,
                         ids=[c[0] for c in CASES])
def test_malformed_files_name_file_line_field(name: str, reader: Reader, data: bytes,
                                              line: int, field: str) -> None:
    with pytest.raises(SettlementFileError) as info:
        reader(data, "f")
    assert (info.value.file, info.value.line, info.value.field) == ("f", line, field), name


def test_valid_files_read_the_same_by_fast_path_and_strict_decoder() -> None:
    assert read_card_clearing_columns(CARD, "c").entries() == ENTRIES
    assert [e.amount for e in read_qr_csv_columns(QR, "q").entries()] == [12345, 500]
    assert read_camt053_columns(CAMT, "s").entries()[0].amount == 100


def test_reconcile_exits_2_naming_the_bad_file(tmp_path: Path) -> None:
    from bench.recon.synth import build

    journal, files, _ = build(tmp_path, 300, seed=3)
    bad = next(files.glob("card-*.clr"))
    lines = bad.read_bytes().split(b"\n")
    fields = lines[1].split(b",")
    fields[3] = "¹²".encode()
    lines[1] = b",".join(fields)
    bad.write_bytes(b"\n".join(lines))
    cli = subprocess.run([sys.executable, "-m", "switch.cli.main", "reconcile", "--journal",
                          str(journal), "--files", str(files)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert f"{bad}:2: amount: not an integer" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_camt053_parse_memory_is_bounded(tmp_path: Path) -> None:
    """Was 41x the file (a 60 MB file took 2.5 GB); streaming keeps it near 1x."""
    entries = [SettlementEntry(f"5f1c0a7e-6c3b-4a51-9d2e-{i:012d}", f"E2E-{i}", 100 + i,
                               "EUR", "settled", 1_795_000_000_000_000 + i)
               for i in range(60_000)]
    path = tmp_path / "big.xml"
    path.write_bytes(encode_camt053("S", "A", 1_795_000_000_000_000, entries))
    code = (
        "import resource, sys\n"
        "from switch.protocols.settlement_files import read_camt053_columns\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "cols = read_camt053_columns(data, 'big.xml')\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(len(cols), (after - before) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    size = path.stat().st_size
    assert int(out[0]) == 60_000
    assert int(out[1]) < 2 * size, f"parse grew RSS by {int(out[1]) / size:.1f}x the file"


@functools.cache
def _fuzz_target(kind: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz" / f"fuzz_settlement_{kind}.py"
    spec = importlib.util.spec_from_file_location(f"fuzz_settlement_{kind}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEEDS = {"card": CARD, "qr": QR, "camt053": CAMT}
SPLICES = [b"+", b"-", b"--", b" ", b"\n", b",", b'"', "¹".encode(), b"9" * 25, b"\r", b"\xff",
           b"<a>", b"&", b"<!DOCTYPE a>", b"D,1,2,3,840,settled,4\n", b"reversed", b"T,0,0\n"]


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 2))
        if op == 0:
            data[pos:pos] = draw(st.sampled_from(SPLICES))
        elif op == 1:
            del data[pos:pos + draw(st.integers(1, 12))]
        elif data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.parametrize("kind", ["card", "qr", "camt053"])
def test_fuzz_targets_hold_on_mutated_files(kind: str) -> None:
    """The fast versions of bench/fuzz: only SettlementFileError, and the columnar fast
    path never accepts what the strict decoder refuses, nor reads it differently."""
    target = _fuzz_target(kind)

    @settings(max_examples=150, deadline=None)
    @given(mutated(kind))
    def check(data: bytes) -> None:
        target.TestOneInput(data)

    check()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_targets_hold_on_random_bytes(data: bytes) -> None:
    for kind in ("card", "qr", "camt053"):
        _fuzz_target(kind).TestOneInput(data)


# --- the numba CSV kernel (what `payswitch reconcile` reads .clr and .csv files with) ---


def _read_as_reconcile(kind: str, data: bytes,
                       tmp: Path) -> tuple[SettlementColumns, NDArray[np.int64]] | None:
    """The kernel's answer for ``data`` as reconciliation reads it (None: not sure)."""
    from switch.backoffice.recon import sides
    from switch.journal.columns import CHANNEL_CODE

    suffix, channel = {"card": (".clr", "card"), "qr": (".csv", "qr")}[kind]
    return sides._csv_fast(tmp / f"f{suffix}", data, CHANNEL_CODE[channel])


def _strict(kind: str, data: bytes) -> list[SettlementEntry]:
    from switch.currency import NUMERIC_TO_ALPHA
    from switch.protocols.settlement_files import decode_card_clearing, decode_qr_csv, decode_text

    text = decode_text(data, "f")
    if kind == "card":
        return decode_card_clearing(text, "f", NUMERIC_TO_ALPHA)
    return decode_qr_csv(text, "f", CURRENCIES)


def _check_kernel(kind: str, data: bytes) -> None:
    """The kernel never accepts what the strict decoder refuses, nor reads it differently,
    and its keys are the journal's hash of the references."""
    import msgspec

    from switch.journal.columns import CHANNEL_CODE, reference_key

    fast = _read_as_reconcile(kind, data, Path("/nonexistent"))
    if fast is None:
        return
    cols, key = fast
    try:
        entries = _strict(kind, data)
    except SettlementFileError as exc:
        raise AssertionError(f"kernel accepted what the strict decoder refuses: {exc}") from None
    if kind == "card":  # reconciliation keeps no card secondary key
        entries = [msgspec.structs.replace(e, secondary="") for e in entries]
        cols = dataclasses.replace(cols, secondary=strings([""] * len(cols)))
    assert cols.entries() == entries
    code = CHANNEL_CODE["card" if kind == "card" else "qr"]
    assert key.tolist() == [reference_key(code, e.reference) for e in entries]


@pytest.mark.parametrize("kind", ["card", "qr"])
def test_csv_kernel_reads_valid_files_as_the_strict_decoder(kind: str) -> None:
    data = SEEDS[kind]
    assert _read_as_reconcile(kind, data, Path("/nonexistent")) is not None
    _check_kernel(kind, data)


@pytest.mark.parametrize("kind", ["card", "qr"])
def test_csv_kernel_holds_on_mutated_files(kind: str) -> None:
    @settings(max_examples=200, deadline=None)
    @given(mutated(kind))
    def check(data: bytes) -> None:
        _check_kernel(kind, data)

    check()


@pytest.mark.parametrize(("name", "reader", "data", "line", "field"),
                         [c for c in CASES if c[1] is not read_camt053_columns],
                         ids=[c[0] for c in CASES if c[1] is not read_camt053_columns])
def test_malformed_csv_files_name_file_line_field_through_reconcile(
        tmp_path: Path, name: str, reader: Reader, data: bytes, line: int, field: str) -> None:
    """The kernel hands every malformed file to the strict decoder, which names it."""
    from switch.backoffice.recon.sides import _read_file

    path = tmp_path / ("f.clr" if reader is read_card_clearing_columns else "f.csv")
    path.write_bytes(data)
    with pytest.raises(SettlementFileError) as info:
        _read_file(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line, field)
