"""Logs are JSON with payment ids and never show a card number; `payswitch top` renders."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys

import anyio
import pytest

from loadtests.harness.client import SwitchClient
from loadtests.harness.workload import Workload
from switch.observability.logs import JsonFormatter, mask_pans
from tests.conftest import DemoRun, RunningSwitch
from tests.payments import card_payment


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("card 4111111111111111 declined", "card 411111******1111 declined"),
        ("card 4111 1111 1111 1111", "card 411111******1111"),
        ("card 4111-1111-1111-1111!", "card 411111******1111!"),
        ("amount 1234567890123 is not a PAN", "amount 1234567890123 is not a PAN"),  # fails Luhn
        ("id P3-4111111111111111x", "id P3-411111******1111x"),
    ],
)
def test_pans_are_masked(text: str, masked: str) -> None:
    assert mask_pans(text) == masked


def test_json_lines_carry_payment_id_and_mask_arguments() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("issuer said no to %s", "5500000000000004", extra={"payment_id": "P1-9"})
    entry = json.loads(stream.getvalue())
    assert entry["payment_id"] == "P1-9" and entry["level"] == "warning"
    assert "5500000000000004" not in stream.getvalue() and "550000******0004" in entry["msg"]


def test_no_clear_pan_in_demo_logs_or_journal(short_demo: DemoRun) -> None:
    proc, tmp_path = short_demo.proc, short_demo.workdir
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pans = {p for p in Workload(42)._pans}  # the demo's seed
    journal = b"".join(
        bytes(row[0]) + str(row[1]).encode()
        for row in sqlite3.connect(tmp_path / "journal.db").execute(
            "SELECT record, payment_id FROM journal"
        )
    )
    assert len(journal) > 10_000
    logs = (tmp_path / "switch.log").read_text() + proc.stdout + proc.stderr
    assert logs, "the switch should have logged its start and stop"
    for line in (tmp_path / "switch.log").read_text().splitlines():
        json.loads(line)  # every line is a JSON object
    leaked = [pan for pan in pans if pan.encode() in journal or pan in logs]
    assert leaked == []


@pytest.mark.anyio
async def test_top_renders_a_frame(running_switch: RunningSwitch) -> None:
    async with SwitchClient.connect("127.0.0.1", running_switch.endpoints.port) as client:

        async def pay_for_a_while() -> None:
            for i in range(40):
                await client.pay(card_payment(f"top-{i}", payer=f"A{i}"))
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pay_for_a_while)
            url = f"http://127.0.0.1:{running_switch.endpoints.admin_port}/metrics"
            result = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "switch.cli.main",
                    "top",
                    "--once",
                    "--interval",
                    "0.5",
                    "--url",
                    url,
                ],
                check=False,
            )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "payswitch top" in out and "card" in out and "standin-card" in out
    assert "ready" in out and "yes" in out
    assert "breaker" in out and "closed" in out  # per-endpoint health
