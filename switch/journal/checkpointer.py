"""Copies the journal's WAL back into its database file from a thread of its own.

Why: SQLite checkpoints by itself in the connection that commits, inside the COMMIT that
takes the WAL past ``wal_autocheckpoint`` pages (1,000 by default): every ~4 MB of
journal, one commit also copies the WAL into the database file and fsyncs that. With
``journal.writer = "loop"`` that commit runs on the event loop, which reads, refuses and
answers nothing meanwhile. Measured side by side (bench/bench_checkpoint.py): commits of
118 real journal rows took ~2 ms at the median either way, but 14-18 ms at the p99 with
the commit checkpointing, against ~5 ms with this thread doing it.

Here a thread with a connection of its own runs PASSIVE checkpoints, which never wait
for the writer nor make it wait, each time enough has been committed since the last
(:meth:`Checkpointer.committed`, told by the journal after every commit). A PASSIVE
checkpoint cannot keep up with a writer that never pauses (the WAL only starts over once
everything in it is copied), so the writer's own automatic checkpoint stays as the
bound, at ``WRITER_CHECKPOINT_PAGES``: whatever happens to this thread, the WAL stays
bounded, and when the writer does checkpoint, this thread has already copied nearly all
of it. A checkpoint that fails here is logged and tried again at the next turn: the
journal's durability never depended on it (the WAL is durable), only the WAL's size does,
and the writer's bound holds that.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Final

log = logging.getLogger(__name__)

#: The writer's own automatic checkpoint, the bound on the WAL when this thread lags
#: (4,000 pages of 4 KiB: 16 MiB).
WRITER_CHECKPOINT_PAGES: Final = 4000
#: A checkpoint each time this many records, or this many commits, have been committed
#: since the last (~50-750 WAL pages: a row takes ~0.2 page in a large commit, a commit
#: at least ~3). Small and often: a short pass often ends between two commits, and only
#: then does the WAL start over. Measured with 118-row commits (bench/bench_checkpoint.py):
#: every 4,096 records, commit p99 9.1 ms and the WAL at the writer's bound (16.5 MB);
#: every 1,024, 5.5 ms; every 256, 4.7 ms and a 2.7 MB WAL (18 ms and 4.2 MB in the
#: commit). A pass never overlaps the next: requests made during one run it once more.
CHECKPOINT_EVERY_RECORDS: Final = 256
CHECKPOINT_EVERY_COMMITS: Final = 256


def start_beside(writer: sqlite3.Connection, path: str) -> Checkpointer:
    """Take the checkpoints of the journal file ``path`` off its ``writer`` connection:
    the writer's own automatic checkpoint moves out to ``WRITER_CHECKPOINT_PAGES`` (the
    bound), and a started :class:`Checkpointer` with the writer's durability does the
    rest."""
    writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
    synchronous = int(writer.execute("PRAGMA synchronous").fetchone()[0])
    checkpointer = Checkpointer(path, synchronous)
    checkpointer.start()
    return checkpointer


class Checkpointer:
    """The checkpoint thread of one journal file. :meth:`start`, then :meth:`committed`
    after each commit (on the committing side; cheap), :meth:`stop` before the writer's
    connection closes (so that the last connection to close removes the WAL)."""

    def __init__(self, path: str, synchronous: int, *,
                 every_records: int = CHECKPOINT_EVERY_RECORDS,
                 every_commits: int = CHECKPOINT_EVERY_COMMITS) -> None:
        """``synchronous``: SQLite's level, as ``PRAGMA synchronous`` reads it (0 OFF,
        2 FULL): the writer's own, so a checkpoint is exactly as durable as a commit."""
        assert path and path != ":memory:", "a checkpoint needs a database file"
        assert synchronous in (0, 1, 2, 3), synchronous
        assert every_records >= 1 and every_commits >= 1
        self._path = path
        self._synchronous = synchronous
        self._every_records = every_records
        self._every_commits = every_commits
        self._records = 0
        self._commits = 0
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Checkpoints run, and those that failed (read by tests and benchmarks).
        self.passes = 0
        self.failures = 0

    def start(self) -> None:
        assert self._thread is None, "Checkpointer.start() twice"
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def committed(self, records: int) -> None:
        """A commit of ``records`` records ended: wake the thread if enough has gathered."""
        assert records >= 1
        self._records += records
        self._commits += 1
        if self._records >= self._every_records or self._commits >= self._every_commits:
            self._records = self._commits = 0
            self._due.set()

    def stop(self) -> None:
        """End the thread after the checkpoint under way, if any. Blocks until then."""
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            # The writer's own checkpoint still bounds the WAL: a warning, not a failure.
            log.warning("journal checkpoints stay with the writer: cannot open %s: %s",
                        self._path, exc)
            return
        try:
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                self._checkpoint(db)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.passes += 1
        except sqlite3.Error as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("journal checkpoint failed (%d so far; the writer's own "
                            "checkpoint bounds the WAL meanwhile): %s: %s",
                            self.failures, self._path, exc)
