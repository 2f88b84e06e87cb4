"""The columns backfill (``switch.journal.columns.migrate``) streams: one chunk of journal
rows in memory at a time, all in one transaction, with the chunks it always wrote.

It did ``pending = list(_uncovered(db, _covered(db)))``: every uncovered row of an old
journal (millions of rows, each with its msgpack record) held at once before the first
chunk was packed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.recon.synth import build
from switch.journal import columns as jcols
from switch.journal.archive import attach_archive
from switch.journal.store import open_database

CHUNK = 16  # rows per read of the backfill, for the test (50,000 in the switch)
GAP = range(100, 110)  # seqs deleted: a chunk boundary the backfill must cut at


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    journal, _, _ = build(tmp_path_factory.mktemp("synth"), 200, seed=5,
                          records_per_file=2_000)
    return journal


def old_journal(synthetic: Path, path: Path, archived: int = 0) -> Path:
    """A copy of the journal from before the columns, with a seq gap, and its first
    ``archived`` payments moved to the archive (the last of them left in both)."""
    src = sqlite3.connect(synthetic)
    src.backup(dst := sqlite3.connect(path))
    src.close()
    dst.execute("DROP TABLE journal_columns")
    dst.execute("DELETE FROM journal WHERE seq >= ? AND seq < ?", (GAP.start, GAP.stop))
    dst.commit()
    if archived:
        attach_archive(dst, path)
        moved = [r[0] for r in dst.execute(
            f"SELECT DISTINCT payment_id FROM journal ORDER BY seq LIMIT {archived}")]
        marks = ",".join("?" * len(moved))
        dst.execute(f"INSERT INTO archive.journal SELECT * FROM main.journal"
                    f" WHERE payment_id IN ({marks})", moved)
        dst.execute(f"DELETE FROM main.journal WHERE payment_id IN ({marks[:-2]})",
                    moved[:-1])
        dst.commit()
    dst.close()
    return path


def the_old_backfill(path: Path) -> list[tuple[int, int, bytes, bytes]]:
    """The rows the backfill wrote before it streamed: every uncovered chunk read first,
    then each packed (on its own connection, so the journal is left alone)."""
    db = sqlite3.connect(path)
    pending = list(jcols._uncovered(db, 0))
    out = []
    for first, rows in pending:
        intents, outcomes = jcols._pack(rows, first)
        out.append((first, first + len(rows) - 1, intents, outcomes))
    db.close()
    return out


def chunks_of(path: Path) -> list[tuple[int, int, bytes, bytes]]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT * FROM journal_columns ORDER BY first_seq").fetchall()
    db.close()
    return rows


@pytest.mark.parametrize("archived", [0, 40], ids=["live", "archived"])
def test_the_backfill_holds_one_chunk_at_a_time_and_writes_what_it_wrote(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        archived: int) -> None:
    old = old_journal(synthetic, tmp_path / "old.db", archived)
    monkeypatch.setattr(jcols, "_BACKFILL_CHUNK", CHUNK)
    expected = the_old_backfill(old)
    assert len(expected) > 10  # several chunks' worth of rows
    assert any(first == GAP.stop for first, *_ in expected)  # cut at the gap

    read = packed = 0
    most_held = 0
    uncovered, pack = jcols._uncovered, jcols._pack

    def counting_uncovered(db: sqlite3.Connection,
                           after: int) -> Iterable[tuple[int, list[Any]]]:
        nonlocal read
        for chunk in uncovered(db, after):
            read += 1
            yield chunk

    def counting_pack(rows: Iterable[Sequence[Any]], first_seq: int) -> tuple[bytes, bytes]:
        nonlocal packed, most_held
        packed += 1
        most_held = max(most_held, read - packed + 1)
        return pack(rows, first_seq)

    monkeypatch.setattr(jcols, "_uncovered", counting_uncovered)
    monkeypatch.setattr(jcols, "_pack", counting_pack)
    db = open_database(old, "group")  # the switch's open backfills
    try:
        assert packed == read == len(expected)
        # The old backfill read every chunk before packing the first: most_held was
        # len(expected). Streaming, each chunk is packed before the next is read.
        assert most_held == 1
        assert jcols.migrate(db) == 0  # nothing left to backfill
        assert not db.in_transaction
    finally:
        db.close()
    assert chunks_of(old) == expected


def test_a_backfill_that_fails_midway_leaves_nothing_behind(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = old_journal(synthetic, tmp_path / "old.db")
    monkeypatch.setattr(jcols, "_BACKFILL_CHUNK", CHUNK)
    pack, calls = jcols._pack, []

    def failing_pack(rows: Iterable[Sequence[Any]], first_seq: int) -> tuple[bytes, bytes]:
        calls.append(first_seq)
        if len(calls) == 3:
            raise OSError("disk gone")
        return pack(rows, first_seq)

    monkeypatch.setattr(jcols, "_pack", failing_pack)
    with pytest.raises(OSError, match="disk gone"):
        open_database(old, "group")
    assert chunks_of(old) == []  # one transaction: the two chunks before it rolled back
    monkeypatch.setattr(jcols, "_pack", pack)
    open_database(old, "group").close()
    assert chunks_of(old) == the_old_backfill(old)
