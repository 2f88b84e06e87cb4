"""Columnar reconciliation: journal columns (migration, read-only journals), breaks you can
trust (stand-in evidence, partial files, empty folder), and every planted break found."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.recon.synth import build
from switch.backoffice.recon.classes import Record
from switch.backoffice.recon.kernels import hash_utf8_column
from switch.backoffice.recon.reconcile import load_switch_side, match, run
from switch.backoffice.recon.sides import NoSettlementFiles, load_network_side
from switch.journal import columns as jcols
from switch.journal.store import open_database


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    return build(tmp_path_factory.mktemp("synth"), 6_000, seed=11, records_per_file=2_000)


def found(report: object) -> set[tuple[str, str]]:
    return {(b.kind, (b.switch or b.network).reference)  # type: ignore[union-attr]
            for b in report.breaks}  # type: ignore[attr-defined]


def test_every_planted_break_is_found_and_none_explained_away(synthetic: tuple) -> None:
    journal, files, planted = synthetic
    report = match(load_switch_side(journal), load_network_side(files), tol_amount=10)
    assert found(report) == planted.breaks
    assert report.counts["matched_tolerance"] == len(planted.tolerance_refs)
    assert report.warnings == []
    # Explained breaks are exactly the planted explained ones.
    explained = {b for b in found(report) if b[0] in ("standin_exposure", "late_settlement")}
    assert explained == {b for b in planted.breaks
                         if b[0] in ("standin_exposure", "late_settlement")}


def test_breaks_on_stand_in_payments_are_all_found(synthetic: tuple) -> None:
    """Missing stand-in approvals whose advice the issuer took are real breaks; only the
    issuer's refusal on record makes one explained exposure."""
    journal, files, planted = synthetic
    report = match(load_switch_side(journal), load_network_side(files), tol_amount=10)
    by_ref = {(b.switch or b.network).reference: b for b in report.breaks}  # type: ignore[union-attr]
    assert planted.standin["delivered_missing"] and planted.standin["refused_missing"]
    for ref in planted.standin["delivered_missing"]:
        b = by_ref[ref]
        assert b.kind == "missing_at_network"
        assert b.switch is not None and b.switch.stood_in and b.switch.advice == "delivered"
    for ref in planted.standin["refused_missing"]:
        b = by_ref[ref]
        assert b.kind == "standin_exposure"
        assert b.switch is not None and b.switch.advice == "refused"
    assert not planted.standin["delivered_settled"] & set(by_ref)


def test_journal_columns_migrate_and_read_only_journals_decode_on_the_fly(
        synthetic: tuple, tmp_path: Path) -> None:
    journal, _, _ = synthetic
    expected = load_switch_side(journal)
    old = tmp_path / "old.db"
    src = sqlite3.connect(journal)
    src.backup(dst := sqlite3.connect(old))
    src.close()
    dst.execute("DROP TABLE journal_columns")  # a journal from before the columns
    dst.commit()
    dst.close()
    unmigrated = load_switch_side(old)  # read-only: decoded on the fly
    for name in ("key", "amount", "currency", "status", "time_us", "flags"):
        assert np.array_equal(getattr(unmigrated, name), getattr(expected, name)), name
    db = open_database(old, "group")  # the switch's open migrates once
    n_chunks = db.execute("SELECT COUNT(*) FROM journal_columns").fetchone()[0]
    assert n_chunks > 0 and jcols.migrate(db) == 0  # nothing left to backfill
    db.close()
    assert np.array_equal(load_switch_side(old).key, expected.key)


def test_migration_and_reads_cover_archived_payments_once(synthetic: tuple,
                                                         tmp_path: Path) -> None:
    """An old journal whose first payments were archived before the columns existed:
    the backfill and the on-the-fly read take the archive too, and a row in both (a move
    cut by a crash) once."""
    from switch.journal.archive import attach_archive

    journal, _, _ = synthetic
    expected = load_switch_side(journal)
    old = tmp_path / "old.db"
    src = sqlite3.connect(journal)
    src.backup(dst := sqlite3.connect(old))
    src.close()
    dst.execute("DROP TABLE journal_columns")
    dst.commit()
    attach_archive(dst, old)
    moved = [r[0] for r in dst.execute(
        "SELECT DISTINCT payment_id FROM journal ORDER BY seq LIMIT 400")]
    marks = ",".join("?" * len(moved))
    dst.execute(f"INSERT INTO archive.journal SELECT * FROM main.journal"
                f" WHERE payment_id IN ({marks})", moved)
    # All but the last payment leave the live journal; that one stays in both.
    dst.execute(f"DELETE FROM main.journal WHERE payment_id IN ({marks[:-2]})", moved[:-1])
    dst.commit()
    dst.close()
    assert len(moved) == 400

    def same(side: object) -> None:
        for name in ("key", "amount", "currency", "status", "time_us", "flags"):
            assert np.array_equal(getattr(side, name), getattr(expected, name)), name

    same(load_switch_side(old))  # read-only, decoded on the fly
    db = open_database(old, "group")  # the switch's open migrates
    assert jcols.migrate(db) == 0
    db.close()
    same(load_switch_side(old))  # from the backfilled chunks


def test_network_hash_equals_the_journals() -> None:
    import pyarrow as pa

    refs = ["", "a", "010000000001", "5f1c0a7e-6c3b-4a51-9d2e-0c9a7f3b1e22", "ü" * 40, "x" * 33]
    arr = pa.array(refs, pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[: len(refs) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    for channel in (1, 2, 3):
        assert hash_utf8_column(data, offsets, channel).tolist() == [
            jcols.reference_key(channel, r) for r in refs]


def test_files_ending_before_the_journal_warn_instead_of_breaking() -> None:
    switch = [Record("card", f"R{i}", 100, "USD", "approved", i * 1_000_000, f"P{i}")
              for i in range(100)]
    network = [Record("card", f"R{i}", 100, "USD", "approved", i * 1_000_000 + 10, "f.clr")
               for i in range(40)]
    report = match(switch, network)
    assert report.breaks == []
    assert report.counts["outside_files"] == 60 and report.counts["matched"] == 40
    assert len(report.warnings) == 1 and "60 payments" in report.warnings[0]


def test_empty_folder_is_an_error_not_thousands_of_breaks(synthetic: tuple,
                                                         tmp_path: Path) -> None:
    journal, _, _ = synthetic
    (tmp_path / "files").mkdir()
    with pytest.raises(NoSettlementFiles):
        run(journal, tmp_path / "files", tmp_path / "out")
    cli = subprocess.run([sys.executable, "-m", "switch.cli.main", "reconcile", "--journal",
                          str(journal), "--files", str(tmp_path / "files")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0 and "no settlement files" in cli.stderr


def test_cli_writes_sorted_breaks_and_summary(synthetic: tuple, tmp_path: Path) -> None:
    import csv
    import json

    journal, files, planted = synthetic
    out = tmp_path / "out"
    cli = subprocess.run([sys.executable, "-m", "switch.cli.main", "reconcile", "--journal",
                          str(journal), "--files", str(files), "--out", str(out),
                          "--tol-amount", "10"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr  # planted breaks are unexplained
    rows = list(csv.DictReader((out / "breaks.csv").open()))
    assert {(r["class"], r["reference"]) for r in rows} == planted.breaks
    severity = ["amount_mismatch", "currency_mismatch", "missing_in_switch",
                "missing_at_network", "status_mismatch", "duplicate", "orphan_reversal",
                "standin_exposure", "late_settlement"]
    ranks = [severity.index(r["class"]) for r in rows]
    assert ranks == sorted(ranks)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["phases"]) == {"read files", "read journal", "match", "write"}
    page = (out / "summary.html").read_text()
    assert "Totals per class and currency" in page and "Largest breaks" in page
    assert Counter(r["class"] for r in rows)["duplicate"] == sum(
        1 for k, _ in planted.breaks if k == "duplicate")


def test_partitioned_exact_pass_gives_the_same_breaks(synthetic: tuple,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PARTITION_RECORDS the exact pass runs per key partition (bounded memory):
    the same classes and pairs as one pass."""
    from switch.backoffice.recon import reconcile

    journal, files, planted = synthetic
    sw, net = load_switch_side(journal), load_network_side(files)
    whole = match(sw, net, tol_amount=10)
    monkeypatch.setattr(reconcile, "_partition_records", lambda: 700)
    parts = match(sw, net, tol_amount=10)
    assert found(parts) == found(whole) == planted.breaks
    assert parts.counts == whole.counts


def test_columnar_outputs_equal_one_row_per_break(synthetic: tuple, tmp_path: Path) -> None:
    """breaks.csv and summary.html from the break columns are byte for byte what one
    csv.writer row per Break object gives (the report without its columns)."""
    import dataclasses

    from switch.backoffice.recon.outputs import write_outputs

    journal, files, _ = synthetic
    report = match(load_switch_side(journal), load_network_side(files), tol_amount=10)
    assert report.table is not None and len(report.breaks) > 100
    by_rows = dataclasses.replace(report, breaks=list(report.breaks), table=None)
    a = write_outputs(report, tmp_path / "columns")
    b = write_outputs(by_rows, tmp_path / "rows")
    assert a["csv"].read_bytes() == b["csv"].read_bytes()
    assert a["html"].read_text() == b["html"].read_text()
    assert report.unexplained == by_rows.unexplained > 0
    assert report.breaks[-1] == list(report.breaks)[-1]
    assert report.breaks[3:7] == list(report.breaks)[3:7]


def test_many_small_column_chunks_read_like_few_large_ones(synthetic: tuple,
                                                           tmp_path: Path) -> None:
    """A live switch writes a column chunk per commit (a few records each): the reader
    joins small chunks into runs, and the arrays are the same as from large chunks."""
    journal, _, _ = synthetic
    src = sqlite3.connect(journal)
    expected = jcols.read_columns(src)
    small = tmp_path / "small.db"
    src.backup(dst := sqlite3.connect(small))
    src.close()
    chunks = dst.execute("SELECT first_seq, last_seq, intents, outcomes FROM journal_columns"
                         " ORDER BY first_seq").fetchall()
    dst.execute("DELETE FROM journal_columns")
    pieces = 0
    for first, last, a, b in chunks:
        ia, ob = jcols.INTENT_DTYPE.itemsize * 3, jcols.OUTCOME_DTYPE.itemsize * 5
        n = max(-(-len(a) // ia), -(-len(b) // ob))
        for k in range(n):  # 3 intents and 5 outcomes a piece; keys keep the order
            dst.execute("INSERT INTO journal_columns VALUES (?, ?, ?, ?)",
                        (first * 10_000 + k, last, a[k * ia:(k + 1) * ia],
                         b[k * ob:(k + 1) * ob]))
            pieces += 1
    dst.commit()
    got = jcols.read_columns(dst)
    assert pieces > 1_000
    for part in ("intents", "outcomes"):
        for name, arr in getattr(expected, part).items():
            assert np.array_equal(getattr(got, part)[name], arr), (part, name)


def test_a_live_switchs_tiny_chunks_are_packed_as_it_commits(synthetic: tuple,
                                                              tmp_path: Path) -> None:
    """Committed a record or three at a time (as a live switch does), the journal keeps
    about one chunk per MERGE_WINDOW records instead of one per commit (10M commits'
    worth took ~20 s to read back), and the columns read the same."""
    from switch.journal.store import INSERT

    journal, _, _ = synthetic
    src = sqlite3.connect(journal)
    expected = jcols.read_columns(src)
    rows = src.execute("SELECT payment_id, idempotency_key, kind, status, body_hash, record,"
                       " at_us FROM journal ORDER BY seq").fetchall()
    src.close()
    db = open_database(tmp_path / "live.db", "group")
    rng = np.random.default_rng(5)
    i = commits = 0
    while i < len(rows):
        batch = rows[i:i + int(rng.integers(1, 4))]
        db.execute("BEGIN")
        db.executemany(INSERT, batch)
        jcols.append_batch(db, batch)
        db.execute("COMMIT")
        i += len(batch)
        commits += 1
    chunks = db.execute("SELECT COUNT(*) FROM journal_columns").fetchone()[0]
    assert commits > 5_000
    # Packed: two chunks per window (the packed one and the batch that crossed into the
    # next window), plus the last, unfinished window's (~400 here).
    packed = db.execute("SELECT COUNT(*) FROM journal_columns WHERE last_seq <= ?",
                        (len(rows) - len(rows) % jcols.MERGE_WINDOW,)).fetchone()[0]
    assert packed <= 2 * (len(rows) // jcols.MERGE_WINDOW + 1) and chunks * 10 < commits
    got = jcols.read_columns(db)
    for part in ("intents", "outcomes"):
        for name, arr in getattr(expected, part).items():
            assert np.array_equal(getattr(got, part)[name], arr), (part, name)
    db.close()


@pytest.mark.parametrize("same_stan", [False, True])
def test_a_stranger_of_the_same_amount_does_not_hide_a_missing_card_payment(
        synthetic: tuple, tmp_path: Path, same_stan: bool) -> None:
    """The tolerance pass pairs leftovers on amount, currency and time; its second look
    asks the card secondary key (STAN|terminal) too. A record with an unknown reference
    and another STAN, the amount and time of a payment missing at the network, must
    leave both breaks standing (the demo's planted breaks were hidden so). With the
    payment's own STAN it is that payment with a garbled reference: a tolerance match."""
    import shutil

    from switch.currency import CURRENCIES
    from switch.protocols.settlement_files import SettlementEntry, encode_card_clearing

    journal, files, planted = synthetic
    sw = load_switch_side(journal)
    missing = {ref for kind, ref in planted.breaks if kind == "missing_at_network"}
    card = np.flatnonzero(sw.channel == jcols.CHANNEL_CODE["card"])
    victim = next(int(i) for i, r in zip(card, sw.texts(card).reference, strict=True)
                  if r in missing)
    payment = sw.records(np.array([victim]))[0]
    stan = sw.secondaries(np.array([victim]))[0]  # type: ignore[misc]
    assert stan, "a card payment has a STAN|terminal"
    ghost = SettlementEntry("UNKNOWN-0001", stan if same_stan else "999999|TERM9999",
                            payment.amount, payment.currency, "settled", payment.time_us + 1)
    shutil.copytree(files, tmp_path / "files")
    numeric = {alpha: code for alpha, (code, *_rest) in CURRENCIES.items()}
    (tmp_path / "files" / "zz-ghost.clr").write_text(
        encode_card_clearing("paynet", "9", [ghost], numeric))
    report = match(sw, load_network_side(tmp_path / "files"), tol_amount=10)
    breaks = found(report)
    if same_stan:
        assert ("missing_at_network", payment.reference) not in breaks
        assert report.counts["matched_tolerance"] == len(planted.tolerance_refs) + 1
    else:
        assert ("missing_at_network", payment.reference) in breaks
        assert ("missing_in_switch", "UNKNOWN-0001") in breaks
        assert report.counts["matched_tolerance"] == len(planted.tolerance_refs)
