"""Reconciliation columns of the journal: what matching needs, stored as column chunks.

Reconciliation needs, per payment, six values: the channel reference (hashed), a secondary
key (hashed), amount, currency, last status and its time, plus the stand-in facts (approved
in stand-in; advice delivered or refused by the issuer). Decoding every msgpack record to
get them costs ~1-2 µs per record in Python: 30 s and gigabytes of objects for 10M payments.

So each commit batch also writes one row of ``journal_columns``: two packed numpy record
arrays (one for the batch's intents, one for its outcomes), in the same transaction as the
journal rows, so the two never disagree. Per-row SQL columns were the other option; reading
them back goes through one Python tuple per row (~1 µs/row through sqlite3), which alone
would blow the 10 s budget for 10M payments, while these chunks are read with
``np.frombuffer`` at memory speed.

* :func:`migrate` (called by ``open_database``) creates the table and backfills the
  columns of rows written before it existed (a one-time decode of the old records).
* :func:`append_batch` (called where a batch of records becomes rows) adds a batch.
* :func:`read_columns` returns every intent and outcome as numpy arrays; rows the
  columns do not cover yet (a journal opened read-only, never migrated) are decoded on
  the fly, so the answer never depends on whether the migration ran.

Reference strings are hashed here, where they are stored: :func:`reference_key` is xxh64
of the UTF-8 reference, seeded by the channel (card 1, swift 2, qr 3), as a signed int64.
The network side hashes the settlement files' references with the same function
(vectorised in ``switch.backoffice.recon.kernels``). 64 bits: ~3% chance of any
collision among 10**9 distinct references; a collision shows as a break, never hides one
unless the amount, currency and status also agree.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import numpy as np
import xxhash
from numpy.typing import NDArray

from switch.currency import CURRENCIES
from switch.journal.reader import ARCHIVE_SCHEMA, attach_existing_archive

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS journal_columns (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    intents BLOB NOT NULL,
    outcomes BLOB NOT NULL
);
"""

CHANNEL_CODE: Final = {"card": 1, "swift": 2, "qr": 3}
CHANNEL_NAME: Final = {v: k for k, v in CHANNEL_CODE.items()}
#: Status codes (the same numbers as ``switch.backoffice.recon.kernels.RecordStatus``).
STATUS_CODE: Final = {"approved": 0, "declined": 1, "failed": 2, "reversed": 3}
PENDING: Final = 4  # sent, unknown, or anything not final
#: Outcome kinds.
UNKNOWN, FINAL, ADVICE, ADVICE_REFUSED = 1, 2, 3, 4
#: Outcome flags.
STOOD_IN: Final = 1

INTENT_DTYPE: Final = np.dtype([
    ("seq", "<i8"), ("pid", "<i8"), ("ref", "<i8"), ("sec", "<i8"), ("amount", "<i8"),
    ("time_us", "<i8"), ("currency", "<i2"), ("channel", "i1"),
])
OUTCOME_DTYPE: Final = np.dtype([
    ("pid", "<i8"), ("time_us", "<i8"), ("status", "i1"), ("kind", "i1"), ("flags", "i1"),
])
_OUTCOME_KIND: Final = {"unknown": UNKNOWN, "final": FINAL, "advice": ADVICE}
_APPROVED_CODE: Final = "00"


class _Card(msgspec.Struct):
    rrn: str = ""
    stan: str = ""
    terminal_id: str = ""


class _Swift(msgspec.Struct):
    uetr: str = ""
    end_to_end_id: str = ""


class _Qr(msgspec.Struct):
    qr_reference: str = ""


class _Intent(msgspec.Struct):
    """The fields of a journaled ``Payment`` that reconciliation needs (others skipped)."""

    payment_id: str
    channel: str
    amount: int
    currency: str
    card: _Card | None = None
    swift: _Swift | None = None
    qr: _Qr | None = None


class _Outcome(msgspec.Struct):
    """The fields of a journaled ``Result`` that reconciliation needs."""

    reason: str = ""
    stood_in: bool = False


_intent_decoder: Final = msgspec.msgpack.Decoder(_Intent)
_outcome_decoder: Final = msgspec.msgpack.Decoder(_Outcome)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def reference_key(channel: str | int, reference: str) -> int:
    """The stored key of a channel reference: xxh64(UTF-8, seed=channel code), signed."""
    seed = channel if isinstance(channel, int) else CHANNEL_CODE[channel]
    return _signed(xxhash.xxh64_intdigest(reference.encode("utf-8", "surrogatepass"), seed))


def payment_key(payment_id: str) -> int:
    return _signed(xxhash.xxh64_intdigest(payment_id.encode("utf-8", "surrogatepass"), 0))


#: One row of a chunk, packed by ``struct`` byte for byte as numpy lays out INTENT_DTYPE /
#: OUTCOME_DTYPE (unaligned, little-endian). Why not a tuple per row and
#: ``np.array(tuples, dtype)``: the tuples, numpy's conversion of each and a ``_signed``
#: call per key were a quarter of the columns' cost per row on the journal writer thread
#: (issue 12: 16k -> 12k instructions a row). The hashed keys are packed as unsigned
#: ``Q``: the same eight bytes as the signed int64 numpy stores.
_INTENT_ROW: Final = struct.Struct("<qQQQqqhb")
_OUTCOME_ROW: Final = struct.Struct("<Qqbbb")
#: The same rows read back as the signed values numpy shows (:func:`intent_values`).
_INTENT_VALUES: Final = struct.Struct("<qqqqqqhb")
_OUTCOME_VALUES: Final = struct.Struct("<qqbbb")
assert _INTENT_ROW.size == INTENT_DTYPE.itemsize and _OUTCOME_ROW.size == OUTCOME_DTYPE.itemsize
_NO_CURRENCY: Final = (0, 0)
_xxh64: Final = xxhash.xxh64_intdigest


def _intent_row(seq: int, p: _Intent, at_us: int) -> bytes:
    """One intent row (``INTENT_DTYPE`` bytes); the reference per channel is RRN (card),
    UETR (SWIFT), QR reference (QR, the payment id when it has none)."""
    channel = CHANNEL_CODE.get(p.channel, 0)
    card = p.card
    if card is not None:
        ref, sec = card.rrn, f"{card.stan}|{card.terminal_id}"
    elif p.swift is not None:
        ref, sec = p.swift.uetr, p.swift.end_to_end_id
    else:
        ref, sec = (p.qr.qr_reference if p.qr is not None else "") or p.payment_id, ""
    return _INTENT_ROW.pack(
        seq, _xxh64(p.payment_id.encode("utf-8", "surrogatepass"), 0),
        _xxh64(ref.encode("utf-8", "surrogatepass"), channel),
        _xxh64(sec.encode("utf-8", "surrogatepass"), channel) if sec else 0,
        p.amount, at_us, CURRENCIES.get(p.currency, _NO_CURRENCY)[0], channel)


def _outcome_row(payment_id: str, code: int, status: str, o: _Outcome,
                 at_us: int) -> bytes:
    """One outcome row (``OUTCOME_DTYPE`` bytes) of outcome kind ``code``.

    An ``advice`` record whose result carries a reason other than ``00`` is the issuer's
    refusal of a stand-in advice: the one evidence that explains stand-in exposure.
    """
    if code == ADVICE and o.reason not in ("", _APPROVED_CODE):
        code = ADVICE_REFUSED
    return _OUTCOME_ROW.pack(_xxh64(payment_id.encode("utf-8", "surrogatepass"), 0), at_us,
                             STATUS_CODE.get(status, PENDING), code,
                             STOOD_IN if o.stood_in else 0)


def intent_values(seq: int, record: bytes, at_us: int) -> tuple[int, ...]:
    """One intent row's columns (``INTENT_DTYPE`` order), decoded from its record."""
    return _INTENT_VALUES.unpack(_intent_row(seq, _intent_decoder.decode(record), at_us))


def outcome_values(payment_id: str, kind: str, status: str, record: bytes,
                   at_us: int) -> tuple[int, ...] | None:
    """One outcome row's columns (``OUTCOME_DTYPE`` order); None for other kinds."""
    code = _OUTCOME_KIND.get(kind)
    if code is None:
        return None
    return _OUTCOME_VALUES.unpack(
        _outcome_row(payment_id, code, status, _outcome_decoder.decode(record), at_us))


def _pack(rows: Iterable[Sequence[Any]], first_seq: int) -> tuple[bytes, bytes]:
    """Rows ``(payment_id, key, kind, status, body_hash, record, at_us)`` -> two chunks,
    byte for byte what ``np.array(values, dtype).tobytes()`` of :func:`intent_values` /
    :func:`outcome_values` gave (tests/recon/test_columns_pack.py).

    Each record is decoded again here, although the payment core had the ``Payment`` or
    ``Result`` in hand. Handing it over with the row would save the decode (~4k of ~12k
    instructions a row, but only ~0.05-0.25 us of ~1 us in time, issue 12) at the price
    of a second argument through the core's journal port and every implementation of it.
    """
    intents: list[bytes] = []
    outcomes: list[bytes] = []
    for seq, (pid, _key, kind, status, _digest, record, at_us) in enumerate(rows, first_seq):
        if kind == "intent":
            intents.append(_intent_row(seq, _intent_decoder.decode(record), at_us))
        else:
            code = _OUTCOME_KIND.get(kind)
            if code is not None:
                outcomes.append(_outcome_row(pid, code, status,
                                             _outcome_decoder.decode(record), at_us))
    return b"".join(intents), b"".join(outcomes)


#: Seqs per window of small chunks that are packed into one (see :func:`append_batch`).
MERGE_WINDOW: Final = 1024


def append_batch(db: sqlite3.Connection, rows: Sequence[Sequence[Any]],
                 last_seq: int | None = None) -> None:
    """Add the columns of ``rows``, just inserted in this transaction (seqs contiguous).

    A live switch commits a few records at a time, so it writes a chunk per commit: a
    10M-payment journal would hold ~10M chunks, and reading them back costs ~2 us each in
    SQLite and Python (measured: 2.0 s for 1M one-payment chunks), 20 s for the lot. So
    when a batch's seqs cross a multiple of MERGE_WINDOW, the small chunks of the window
    before it are packed into one, in the same transaction: one merge of ~1024 records'
    worth of chunks (~36 kB) per ~1024 records, so a 10M journal keeps ~40k chunks (two
    a window: the packed one and the batch that crossed into the next window).
    """
    if not rows:
        return
    # The journal's writer passes the seq its insert returned: one SQLite call (and one
    # GIL hand-back, store.insert_rows) fewer per commit.
    last = (int(db.execute("SELECT last_insert_rowid()").fetchone()[0]) if last_seq is None
            else last_seq)
    first = last - len(rows) + 1
    intents, outcomes = _pack(rows, first)
    db.execute("INSERT INTO journal_columns VALUES (?, ?, ?, ?)",
               (first, last, intents, outcomes))
    boundary = last - last % MERGE_WINDOW
    if first <= boundary:
        pack_chunks(db, boundary - MERGE_WINDOW + 1, first)


def pack_chunks(db: sqlite3.Connection, lo: int, before: int) -> int:
    """Replace the chunks starting in ``[lo, before)`` by one chunk holding their rows in
    the same order, if there are several and all are small (< _SMALL_CHUNK bytes); call
    within a transaction. Returns how many chunks were packed (0: left alone)."""
    chunks = db.execute(
        "SELECT first_seq, last_seq, length(intents) + length(outcomes) FROM journal_columns"
        " WHERE first_seq >= ? AND first_seq < ? ORDER BY first_seq", (lo, before)).fetchall()
    if len(chunks) < 2 or any(size >= _SMALL_CHUNK for _, _, size in chunks):
        return 0
    blobs = db.execute(
        "SELECT intents, outcomes FROM journal_columns WHERE first_seq >= ? AND first_seq < ?"
        " ORDER BY first_seq", (lo, before)).fetchall()
    db.execute("DELETE FROM journal_columns WHERE first_seq >= ? AND first_seq < ?",
               (lo, before))
    db.execute("INSERT INTO journal_columns VALUES (?, ?, ?, ?)",
               (chunks[0][0], max(last for _, last, _ in chunks),
                b"".join(a for a, _ in blobs), b"".join(b for _, b in blobs)))
    return len(chunks)


def _covered(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT MAX(last_seq) FROM journal_columns").fetchone()
    return int(row[0] or 0)


_BACKFILL_CHUNK: Final = 50_000


_ROW: Final = "seq, payment_id, idempotency_key, kind, status, body_hash, record, at_us"


def _uncovered(db: sqlite3.Connection, after: int) -> Iterable[tuple[int, list[Any]]]:
    """Journal rows past ``after``, live and archived, in chunks of contiguous seqs:
    (first_seq, rows).

    Archived rows count: a journal from before the columns may already have moved old
    payments to its archive, and backfilling the live table alone left them out of
    reconciliation (their settlement records then showed as missing_in_switch). A row in
    both (a move cut by a crash) is read once, from the archive, as the reader does.
    """
    if attach_existing_archive(db):
        cursor = db.execute(
            f"SELECT {_ROW} FROM {ARCHIVE_SCHEMA}.journal WHERE seq > ? UNION ALL"
            f" SELECT {_ROW} FROM main.journal AS live WHERE seq > ? AND NOT EXISTS"
            f" (SELECT 1 FROM {ARCHIVE_SCHEMA}.journal AS a WHERE a.seq = live.seq)"
            " ORDER BY seq", (after, after))
    else:
        cursor = db.execute(f"SELECT {_ROW} FROM journal WHERE seq > ? ORDER BY seq",
                            (after,))
    while True:
        chunk = cursor.fetchmany(_BACKFILL_CHUNK)
        if not chunk:
            return
        # Split at any gap in seq so each chunk is contiguous.
        start = 0
        for i in range(1, len(chunk) + 1):
            if i == len(chunk) or chunk[i][0] != chunk[i - 1][0] + 1:
                yield chunk[start][0], [r[1:] for r in chunk[start:i]]
                start = i


def _last_seq(db: sqlite3.Connection) -> int:
    """The journal's last seq, live or archived (the archive attached if there is one)."""
    last = int(db.execute("SELECT MAX(seq) FROM main.journal").fetchone()[0] or 0)
    if attach_existing_archive(db):
        row = db.execute(f"SELECT MAX(seq) FROM {ARCHIVE_SCHEMA}.journal").fetchone()
        last = max(last, int(row[0] or 0))
    return last


def migrate(db: sqlite3.Connection) -> int:
    """Create the columns table and backfill rows it does not cover; returns rows added.

    The backfill streams: one chunk of rows (``_BACKFILL_CHUNK`` at most) is read, packed
    and inserted before the next is read, all in one transaction, so an old journal of
    millions of rows costs one chunk of memory, not all of them at once. SQLite lets the
    SELECT on the journal go on while its rows' chunks are inserted into
    ``journal_columns`` on the same connection. ``BEGIN IMMEDIATE`` takes the write lock
    before that read, so the rows read and the coverage they extend are one snapshot;
    nothing to backfill takes no lock.
    """
    db.executescript(SCHEMA)
    if _last_seq(db) <= _covered(db):  # also attaches the archive: not in a transaction
        return 0
    added = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for first, rows in _uncovered(db, _covered(db)):
            intents, outcomes = _pack(rows, first)
            db.execute("INSERT INTO journal_columns VALUES (?, ?, ?, ?)",
                       (first, first + len(rows) - 1, intents, outcomes))
            added += len(rows)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return added


_RUN_BYTES: Final = 8 << 20
_SMALL_CHUNK: Final = 64 << 10


def _chain(*parts: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    for part in parts:
        yield from part


@dataclass(frozen=True, slots=True)
class JournalColumns:
    """Every intent and outcome of a journal, in journal order, one numpy array per field
    (``intents["ref"]``, ``outcomes["status"]``...): separate arrays, so a caller can drop
    the fields it is done with."""

    intents: dict[str, NDArray[Any]]  # INTENT_DTYPE's fields
    outcomes: dict[str, NDArray[Any]]  # OUTCOME_DTYPE's fields
    first_us: int  # time span of the journal's records (0, 0 when empty)
    last_us: int


def read_columns(db: sqlite3.Connection,
                 intent_fields: Sequence[str] | None = None) -> JournalColumns:
    """Read the columns: sizes first, then each chunk copied into place field by field,
    so memory is the arrays themselves plus one chunk. ``intent_fields``: only these of
    the intents' (reconciliation has no use for ``sec``: 80 MB at 10M payments)."""
    has_table = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='journal_columns'"
    ).fetchone()
    n_int = n_out = 0
    covered = 0
    if has_table:
        for _first, last, a, b in db.execute(
                "SELECT first_seq, last_seq, length(intents), length(outcomes)"
                " FROM journal_columns"):
            n_int += a // INTENT_DTYPE.itemsize
            n_out += b // OUTCOME_DTYPE.itemsize
            covered = max(covered, last)
    extra = [_pack(rows, first) for first, rows in _uncovered(db, covered)]
    n_int += sum(len(a) // INTENT_DTYPE.itemsize for a, _ in extra)
    n_out += sum(len(b) // OUTCOME_DTYPE.itemsize for _, b in extra)
    intents = {name: np.empty(n_int, INTENT_DTYPE.fields[name][0])  # type: ignore[index]
               for name in (INTENT_DTYPE.names or ())
               if intent_fields is None or name in intent_fields}
    outcomes = {name: np.empty(n_out, OUTCOME_DTYPE.fields[name][0])  # type: ignore[index]
                for name in OUTCOME_DTYPE.names or ()}
    i = o = 0

    def put(a: bytes, b: bytes) -> None:
        nonlocal i, o
        ia = np.frombuffer(a, INTENT_DTYPE)
        ob = np.frombuffer(b, OUTCOME_DTYPE)
        for name, arr in intents.items():
            arr[i:i + len(ia)] = ia[name]
        for name, arr in outcomes.items():
            arr[o:o + len(ob)] = ob[name]
        i += len(ia)
        o += len(ob)

    # A live switch commits a few records at a time, so a real journal has millions of
    # small chunks, and copying each into place costs ~5 us of numpy calls: small chunks
    # are joined into runs of up to _RUN_BYTES first (per chunk, a list append). Large
    # chunks (a bulk load, a backfill) go straight in, without the extra copy.
    run_a: list[bytes] = []
    run_b: list[bytes] = []
    held = 0

    def flush() -> None:
        nonlocal held
        if run_a:
            put(b"".join(run_a), b"".join(run_b))
            run_a.clear()
            run_b.clear()
            held = 0

    rows: Iterable[tuple[bytes, bytes]] = db.execute(
        "SELECT intents, outcomes FROM journal_columns ORDER BY first_seq") if has_table else ()
    for a, b in _chain(rows, extra):
        if len(a) + len(b) >= _SMALL_CHUNK:
            flush()
            put(a, b)
            continue
        run_a.append(a)
        run_b.append(b)
        held += len(a) + len(b)
        if held >= _RUN_BYTES:
            flush()
    flush()
    times = [t for t in (intents["time_us"], outcomes["time_us"]) if len(t)]
    first_us = int(min(t.min() for t in times)) if times else 0
    last_us = int(max(t.max() for t in times)) if times else 0
    return JournalColumns(intents, outcomes, first_us, last_us)
