"""Disk full (issue 11): fail-stop with the real cause; refuse to start on a full disk.

The critical log line read "cannot rollback - no transaction is active": SQLite had
already rolled back the failed commit, and our ROLLBACK's error replaced the real one
("database or disk is full"). A full disk is simulated with SQLite's max_page_count (a
per-connection ceiling on the database size) and, for the start check, a fake statvfs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import anyio
import pytest

from loadtests.harness.client import SwitchClient
from switch.cli.main import _storage_failure
from switch.journal import (
    FINAL,
    Journal,
    JournalFailed,
    JournalRecord,
    OnFull,
    encode_result,
    open_database,
)
from switch.model import Result, Status
from switch.observability.metrics import SwitchMetrics
from switch.protocols.wire import ErrorReply
from switch.serve.config import ConfigError, check_free_space, parse_config
from tests.conftest import make_config, start_switch
from tests.payments import card_payment

FULL = "database or disk is full"


def fill_to_the_brim(db: sqlite3.Connection) -> None:
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def row(i: int) -> JournalRecord:
    # A valid result (reconciliation's columns decode it), 2 KB big to fill pages fast.
    result = Result(f"P1-{i}", Status.APPROVED, "00", channel_ref="r" * 2000)
    return JournalRecord(f"P1-{i}", f"k{i}", FINAL, Status.APPROVED, b"h" * 16,
                         encode_result(result), i)


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["loop", "thread"])
async def test_a_full_journal_fails_with_the_real_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writer: Literal["loop", "thread"]
) -> None:
    db = open_database(tmp_path / "journal.db", "group")
    fill_to_the_brim(db)
    journal = Journal(db, mode="group", max_batch=64, max_pending=1000, metrics=SwitchMetrics(),
                      writer=writer)
    caplog.set_level(logging.CRITICAL, logger="switch.journal")
    with pytest.raises(BaseException) as raised:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            with pytest.raises(JournalFailed, match=FULL):
                for i in range(100):
                    await journal.write(row(i), OnFull.WAIT)
    assert isinstance(journal.failure, sqlite3.OperationalError)
    assert str(journal.failure) == FULL
    assert _storage_failure(raised.value) is journal.failure
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical == [f"journal commit failed: {FULL}"]
    db.close()


@pytest.mark.anyio
async def test_the_switch_fail_stops_on_a_full_journal(tmp_path: Path) -> None:
    with pytest.raises(BaseException) as raised:
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, make_config(tmp_path))
            journal = switch.app.journal
            assert journal is not None
            fill_to_the_brim(journal._db)
            async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
                for i in range(500):  # until the journal's last free page is used up
                    reply = await client.pay(card_payment(f"full-{i}"))
                    if isinstance(reply, ErrorReply):
                        break
            assert isinstance(reply, ErrorReply) and reply.code == "unavailable", reply
            assert FULL in reply.message
            assert switch.app.readiness() == (False, f"journal failed: {FULL}")
            await anyio.sleep(5)  # the app's task group ends on its own (fail-stop)
            pytest.fail("the switch kept running on a failed journal")
    cause = _storage_failure(raised.value)
    assert cause is not None and str(cause) == FULL, repr(raised.value)


def fake_statvfs(free_bytes: int) -> Any:
    return lambda path: SimpleNamespace(f_bavail=free_bytes // 4096, f_frsize=4096)


def test_start_is_refused_on_a_full_disk_with_one_line(tmp_path: Path) -> None:
    cfg = parse_config(f'[journal]\npath = "{tmp_path / "var" / "journal.db"}"\n')
    check_free_space(cfg, fake_statvfs(65 * 2**20))  # 65 MiB: enough for the default 64
    with pytest.raises(ConfigError) as info:
        check_free_space(cfg, fake_statvfs(12 * 2**20))
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path / 'var'} has 12.0 MiB free, below journal.min_free_mb=64" in message


def test_serve_on_a_full_disk_exits_2_with_one_line(tmp_path: Path) -> None:
    # No fake statvfs across a process boundary: ask for more free space than exists.
    cfg = tmp_path / "switch.toml"
    cfg.write_text(f'[journal]\npath = "{tmp_path / "journal.db"}"\nmin_free_mb = 1048576\n'
                   "[server]\nport = 0\n[admin]\nport = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "switch.cli.main", "serve", "--demo", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "journal.min_free_mb=1048576" in lines[0], proc.stderr
