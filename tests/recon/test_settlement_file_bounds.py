"""Limits on what a settlement file may say, and on how much of one is read: values past
the bounds, an oversized file, a camt.053 entry that is not booked. Each is refused as a
SettlementFileError naming file:line:field (exit 2 from `payswitch reconcile`), never a
traceback, and every reader (strict decoder, polars fast path, numba kernel) draws the
bounds in the same place."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import xmlschema
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.protocols.settlement_files import (
    MAX_ABS_AMOUNT,
    MAX_FILE_BYTES,
    MAX_TIME_US,
    MIN_TIME_US,
    SettlementColumns,
    SettlementEntry,
    SettlementFileError,
    decode_card_clearing,
    decode_qr_csv,
    decode_text,
    encode_camt053,
    encode_card_clearing,
    encode_qr_csv,
    read_camt053_columns,
    read_card_clearing_columns,
    read_qr_csv_columns,
    strings,
)

NUMERIC = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
T = 1_795_000_000_000_000
XSD = Path(__file__).resolve().parents[1] / "conformance" / "xsd" / "camt.053.001.08.xsd"


def _csv(kind: str, amount: int, time_us: int) -> bytes:
    """A card or QR file whose second record (line 3) carries ``amount`` and ``time_us``."""
    if kind == "card":
        entries = [SettlementEntry("001000000001", "000001|TERM0001", 12345, "USD", "settled", T),
                   SettlementEntry("001000000002", "000002|TERM0001", amount, "USD", "settled",
                                   time_us)]
        return encode_card_clearing("visa-sim", "c1", entries, NUMERIC).encode()
    entries = [SettlementEntry("QR0001", "M0000007", 12345, "CNY", "settled", T),
               SettlementEntry("QR0002", "M0000007", amount, "CNY", "reversed", time_us)]
    return encode_qr_csv(entries).encode()


def _strict(kind: str, data: bytes) -> list[SettlementEntry]:
    text = decode_text(data, "f")
    if kind == "card":
        return decode_card_clearing(text, "f", NUMERIC_TO_ALPHA)
    return decode_qr_csv(text, "f", CURRENCIES)


_COLUMNS: dict[str, Callable[[bytes, str], SettlementColumns]] = {
    "card": read_card_clearing_columns, "qr": read_qr_csv_columns}
_SUFFIX = {"card": ".clr", "qr": ".csv"}


def _in_bounds(amount: int, time_us: int) -> bool:
    return 0 <= amount < MAX_ABS_AMOUNT and MIN_TIME_US <= time_us < MAX_TIME_US


# --- bounds on values: card clearing and QR CSV, every reader --------------------------

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
AMOUNTS = st.one_of(st.sampled_from([
    0, MAX_ABS_AMOUNT - 1, MAX_ABS_AMOUNT, 1 - MAX_ABS_AMOUNT, -MAX_ABS_AMOUNT, 1 << 62,
    (1 << 63) - 1, -(1 << 63)]), INT64)
TIMES = st.one_of(st.sampled_from([
    MIN_TIME_US - 1, MIN_TIME_US, MAX_TIME_US - 1, MAX_TIME_US, 9_000_000_000_000_000_000,
    -(1 << 63)]), INT64)


@pytest.mark.parametrize("kind", ["card", "qr"])
def test_every_reader_draws_the_bounds_in_the_same_place(kind: str) -> None:
    """The strict decoder refuses exactly the values out of bounds, naming line 3 and the
    field; the polars path and the numba kernel (what `reconcile` runs) accept exactly
    the rest, and read them as the strict decoder does."""
    from switch.backoffice.recon import sides
    from switch.journal.columns import CHANNEL_CODE

    @settings(max_examples=120, deadline=None)
    @given(amount=AMOUNTS, time_us=TIMES)
    @example(amount=MAX_ABS_AMOUNT - 1, time_us=MAX_TIME_US - 1)
    @example(amount=1 - MAX_ABS_AMOUNT, time_us=MIN_TIME_US)
    @example(amount=MAX_ABS_AMOUNT, time_us=T)
    @example(amount=5, time_us=MAX_TIME_US)
    def check(amount: int, time_us: int) -> None:
        data = _csv(kind, amount, time_us)
        fast = sides._csv_fast(Path("f" + _SUFFIX[kind]), data, CHANNEL_CODE[kind])
        if not _in_bounds(amount, time_us):
            field = "amount" if not 0 <= amount < MAX_ABS_AMOUNT else "settled_at_us"
            for read in (lambda: _strict(kind, data), lambda: _COLUMNS[kind](data, "f")):
                with pytest.raises(SettlementFileError) as info:
                    read()
                assert (info.value.file, info.value.line, info.value.field) == ("f", 3, field)
            assert fast is None, "the numba kernel accepted what the strict decoder refuses"
            return
        entries = _strict(kind, data)
        assert [(e.amount, e.settled_at_us) for e in entries][1] == (amount, time_us)
        assert _COLUMNS[kind](data, "f").entries() == entries
        assert fast is not None, "the numba kernel handed a plain in-bounds file over"
        cols = fast[0]
        if kind == "card":  # reconciliation keeps no card secondary key
            entries = [msgspec.structs.replace(e, secondary="") for e in entries]
            cols = dataclasses.replace(cols, secondary=strings([""] * len(cols)))
        assert cols.entries() == entries

    check()


@pytest.mark.parametrize("kind", ["card", "qr"])
@pytest.mark.parametrize(("field", "amount", "time_us"), [
    ("amount", 1 << 62, T), ("amount", -MAX_ABS_AMOUNT, T),
    ("settled_at_us", 100, 9_000_000_000_000_000_000), ("settled_at_us", 100, -1),
])
def test_reconcile_reads_an_out_of_bounds_value_as_a_named_error(
        tmp_path: Path, kind: str, field: str, amount: int, time_us: int) -> None:
    """Through the reader `reconcile` uses (memory map, numba kernel, strict decoder)."""
    from switch.backoffice.recon.sides import _read_file

    path = tmp_path / f"f{_SUFFIX[kind]}"
    path.write_bytes(_csv(kind, amount, time_us))
    with pytest.raises(SettlementFileError) as info:
        _read_file(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 3, field)
    assert str(time_us if field == "settled_at_us" else amount) in info.value.reason


def _camt(*entries: SettlementEntry) -> bytes:
    return encode_camt053("S1", "NOSTRO", T, list(entries))


UETR = "5f1c0a7e-6c3b-4a51-9d2e-0c9a7f3b1e2{}"
BOOKED = SettlementEntry(UETR.format(0), "E2E-0", 100, "EUR", "settled", T)


@pytest.mark.parametrize(("amount", "ccy", "ok"), [
    ("9999999999999999.99", "EUR", True),  # 18 digits: 10**18 - 1 minor units
    ("999999999999999999", "EUR", False),  # 18 digits, but 10**20 - 100 minor units
    ("99999999999999999.9", "KWD", False),
])
def test_camt053_amounts_stop_below_10_pow_18_minor_units(amount: str, ccy: str,
                                                          ok: bool) -> None:
    doc = _camt(BOOKED, SettlementEntry(UETR.format(1), "E2E-1", 777, ccy, "settled", T))
    written = f'<Amt Ccy="{ccy}">{"7.77" if ccy == "EUR" else "0.777"}</Amt>'.encode()
    at = doc.rindex(written)  # the entry's, after the balances'
    doc = doc[:at] + f'<Amt Ccy="{ccy}">{amount}</Amt>'.encode() + doc[at + len(written):]
    if ok:
        assert read_camt053_columns(doc, "s.xml").entries()[1].amount == MAX_ABS_AMOUNT - 1
        return
    with pytest.raises(SettlementFileError) as info:
        read_camt053_columns(doc, "s.xml")
    assert (info.value.line, info.value.field) == (1, "Stmt/Ntry[1]/Amt")


@pytest.mark.parametrize(("booked", "ok"), [
    ("1970-01-01T00:00:00+00:00", True), ("2099-12-31T23:59:59.999999+00:00", True),
    ("1969-12-31T23:59:59.999999+00:00", False), ("2100-01-01T00:00:00+00:00", False),
    ("9999-12-31T23:59:59+00:00", False), ("0001-01-02T00:00:00+00:00", False),
])
def test_camt053_booking_times_are_bounded_like_the_csv_files(booked: str, ok: bool) -> None:
    second = SettlementEntry(UETR.format(1), "E2E-1", 100, "EUR", "settled", T + 1)
    written = datetime.fromtimestamp((T + 1) / 1e6, UTC).isoformat(timespec="microseconds")
    doc = _camt(BOOKED, second)
    assert doc.count(f"<DtTm>{written}</DtTm>".encode()) == 1
    doc = doc.replace(written.encode(), booked.encode())
    if ok:
        assert MIN_TIME_US <= read_camt053_columns(doc, "s.xml").entries()[1].settled_at_us \
            < MAX_TIME_US
        return
    with pytest.raises(SettlementFileError) as info:
        read_camt053_columns(doc, "s.xml")
    assert (info.value.line, info.value.field) == (1, "Stmt/Ntry[1]/BookgDt/DtTm")


# --- the size bound, before any read ----------------------------------------------------


@pytest.mark.parametrize("suffix", [".clr", ".csv", ".xml"])
def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path, suffix: str) -> None:
    """Was read whole and then refused: peak memory grew with the file (1 GiB: 1.2 GB)."""
    path = tmp_path / f"big{suffix}"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk, a full read of zeros
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from switch.backoffice.recon.sides import _read_file\n"
        "from switch.protocols.settlement_files import SettlementFileError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    _read_file(Path(sys.argv[1]))\n"
        "except SettlementFileError as exc:\n"
        "    print(exc.line, exc.field, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
        " - before) * 1024)\n"
        "    print(exc.reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    line, field, grown = out[0].split()
    assert int(grown) < 32 << 20, f"RSS grew {int(grown) >> 20} MB refusing the file"
    assert (line, field) == ("0", "file")
    assert f"{MAX_FILE_BYTES:,}-byte limit" in out[1]


# --- camt.053: only booked entries are settlement ---------------------------------------

SECOND = SettlementEntry(UETR.format(1), "E2E-1", 250, "EUR", "settled", T + 1)
BOOK_STS = b"<Sts><Cd>BOOK</Cd></Sts>"


def _with_second_status(status: bytes) -> bytes:
    """A statement whose second entry's <Sts> is ``status`` (the first stays booked)."""
    doc = _camt(BOOKED, SECOND)
    first = doc.index(BOOK_STS) + len(BOOK_STS)
    at = doc.index(BOOK_STS, first)
    return doc[:at] + status + doc[at + len(BOOK_STS):]


@pytest.mark.parametrize(("status", "field", "reason"), [
    (b"<Sts><Cd>PDNG</Cd></Sts>", "Stmt/Ntry[1]/Sts/Cd", "PDNG entry: not booked"),
    (b"<Sts><Cd>INFO</Cd></Sts>", "Stmt/Ntry[1]/Sts/Cd", "INFO entry: not booked"),
    (b"<Sts><Cd>FUTR</Cd></Sts>", "Stmt/Ntry[1]/Sts/Cd", "FUTR entry: not booked"),
    (b"<Sts><Cd>XBOK</Cd></Sts>", "Stmt/Ntry[1]/Sts/Cd", "not an entry status code"),
    (b"<Sts><Prtry>BOOKED</Prtry></Sts>", "Stmt/Ntry[1]/Sts", "missing Sts/Cd"),
    (b"", "Stmt/Ntry[1]/Sts", "missing Sts/Cd"),
])
def test_camt053_entries_not_booked_refuse_the_file(status: bytes, field: str,
                                                    reason: str) -> None:
    """Were read as settled credits: a pending entry matched its payment, reported clean."""
    with pytest.raises(SettlementFileError) as info:
        read_camt053_columns(_with_second_status(status), "s.xml")
    assert (info.value.file, info.value.line, info.value.field) == ("s.xml", 1, field)
    assert reason in info.value.reason


def test_camt053_status_refusal_is_what_reconcile_reads(tmp_path: Path) -> None:
    from switch.backoffice.recon.sides import _read_file

    path = tmp_path / "swift-0001.xml"
    path.write_bytes(_with_second_status(b"<Sts><Cd>PDNG</Cd></Sts>"))
    with pytest.raises(SettlementFileError) as info:
        _read_file(path)
    assert info.value.field == "Stmt/Ntry[1]/Sts/Cd"


def test_camt053_status_rule_against_the_official_schema() -> None:
    """The writer (the SWIFT simulator's statements) books every entry as the XSD spells
    it and reads back; a PDNG entry is schema-valid, so refusing it is the statement's
    meaning, not its syntax; an entry without Sts is invalid in the schema too."""
    schema = xmlschema.XMLSchema(XSD)
    doc = _camt(BOOKED, SECOND)
    schema.validate(doc)
    assert doc.count(BOOK_STS) == 2
    assert read_camt053_columns(doc, "s.xml").entries() == [BOOKED, SECOND]
    schema.validate(_with_second_status(b"<Sts><Cd>PDNG</Cd></Sts>"))
    assert not schema.is_valid(_with_second_status(b""))


# --- the command line -------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A journal and its settlement files (300 payments), for the command line."""
    from bench.recon.synth import build

    journal, files, _ = build(tmp_path_factory.mktemp("synth"), 300, seed=3)
    return journal, files


@pytest.mark.parametrize("field", ["settled_at_us", "amount"])
def test_reconcile_exits_2_on_a_huge_value_in_a_well_formed_file(
        tmp_path: Path, synth: tuple[Path, Path], field: str) -> None:
    """Was a ValueError traceback from the tolerance kernel (±2**61), exit 1."""
    journal, shared = synth
    files = tmp_path / "files"
    shutil.copytree(shared, files)
    bad = next(files.glob("card-*.clr"))
    lines = bad.read_text().splitlines()
    fields = lines[1].split(",")
    if field == "amount":
        old, fields[3] = int(fields[3]), str(1 << 62)
        trailer = lines[-1].split(",")
        lines[-1] = f"T,{trailer[1]},{int(trailer[2]) - old + (1 << 62)}"
    else:
        fields[6] = "9000000000000000000"
    lines[1] = ",".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    cli = subprocess.run([sys.executable, "-m", "switch.cli.main", "reconcile", "--journal",
                          str(journal), "--files", str(files)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines() == [
        next(x for x in cli.stderr.splitlines() if x.startswith(f"Error: {bad}:2: {field}: "))]


@pytest.mark.parametrize(("option", "value"), [
    ("--tol-amount", str(10**19)), ("--tol-amount", str(MAX_ABS_AMOUNT)),
    ("--tol-time", "inf"), ("--tol-time", "1e300"), ("--tol-time", "nan"),
    ("--late-after", "nan"),
])
def test_reconcile_refuses_tolerances_past_the_bounds(
        tmp_path: Path, synth: tuple[Path, Path], option: str, value: str) -> None:
    """Were tracebacks from the matching kernels' own check (±2**61) or int(inf); a NaN
    late-after ran, marking nothing late."""
    from switch.cli.backoffice import reconcile

    journal, files = synth
    result = CliRunner().invoke(reconcile, ["--journal", str(journal), "--files", str(files),
                                            "--out", str(tmp_path), option, value])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {option} ")
