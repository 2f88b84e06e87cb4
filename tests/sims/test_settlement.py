"""Settlement files from the simulators agree with what the switch journaled."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from channels.config import config_from_dict
from channels.server import serve_channels
from loadtests.harness.client import SwitchClient
from loadtests.harness.workload import Workload
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.journal import final_results
from switch.model import Payment
from switch.protocols.settlement_files import (
    decode_camt053,
    decode_card_clearing,
    decode_qr_csv,
)
from switch.serve.app import SwitchApp
from switch.serve.config import parse_config

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "channels.toml"


def channels_config(out_dir: Path, discrepancy_rate: float = 0.0, net_qr: bool = False,
                    cycle_s: float = 0.5) -> Any:
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["admin"]["port"] = 0
    for net in raw["networks"]:
        net["port"] = 0
        if net["kind"] == "swift":
            net["swift"]["settlement_delay_s"] = 0.05
    raw["settlement"] = {"out_dir": str(out_dir), "cycle_s": cycle_s,
                         "discrepancy_rate": discrepancy_rate, "seed": 5,
                         "net_qr_by_merchant": net_qr}
    return config_from_dict(raw)


def read_files(out_dir: Path) -> dict[str, dict[str, Any]]:
    """reference -> entry still standing, per kind, over every cycle's file."""
    found: dict[str, dict[str, Any]] = {"card": {}, "swift": {}, "qr": {}}
    for path in sorted(out_dir.iterdir()):
        if path.suffix == ".clr":
            entries = decode_card_clearing(path.read_text(), path.name, NUMERIC_TO_ALPHA)
            kind = "card"
        elif path.suffix == ".xml":
            entries = decode_camt053(path.read_bytes(), path.name)
            kind = "swift"
        elif path.suffix == ".csv":
            entries = decode_qr_csv(path.read_text(), path.name, CURRENCIES)
            kind = "qr"
        else:
            continue
        for e in entries:
            if e.status == "reversed" and e.reference in found[kind]:
                del found[kind][e.reference]  # cleared, then reversed in a later cycle
                continue
            assert e.reference not in found[kind], f"{e.reference} settled twice"
            found[kind][e.reference] = e
    return found


async def run_switch_over_simulators(tmp_path: Path, rate: float, net_qr: bool = False,
                                     cycle_s: float = 0.5) -> tuple[Path, Path]:
    out_dir = tmp_path / "settlement"
    journal = tmp_path / "journal.db"
    async with anyio.create_task_group() as tg:
        runtime = await tg.start(serve_channels, channels_config(out_dir, rate, net_qr, cycle_s))
        networks = "".join(
            f'[[channel_networks]]\nkind = "{runtime.networks[n].spec.kind}"\nname = "{n}"\n'
            f"port = {p}\n" for n, p in runtime.ports.items())
        routes = "".join(f'[[routes]]\nchannel = "{c}"\nnetwork = "{n}"\n'
                         for c, n in (("card", "card-primary"), ("swift", "swift"), ("qr", "qr")))
        config = parse_config(f'[server]\nport = 0\n[admin]\nenabled = false\n[journal]\n'
                              f'path = "{journal}"\n{networks}{routes}')
        app = SwitchApp(config)
        endpoints = await tg.start(app.run)
        workload = Workload(9)
        async with (SwitchClient.connect("127.0.0.1", endpoints.port) as client,
                    anyio.create_task_group() as senders):
            for _ in range(300):
                request, kind = workload.next()
                if kind == "new":
                    senders.start_soon(client.pay, request)
        await anyio.sleep(1.0)  # let SWIFT settle (ACSC) and a cut-off pass
        app.request_shutdown()
        runtime.request_shutdown()
    return journal, out_dir


async def test_settlement_files_match_the_journal(tmp_path: Path) -> None:
    journal, out_dir = await run_switch_over_simulators(tmp_path, 0.0)
    files = read_files(out_dir)
    db = sqlite3.connect(journal)
    payments = {p.payment_id: p for p in (
        msgspec.msgpack.decode(r[0], type=Payment)
        for r in db.execute("SELECT record FROM journal WHERE kind = 'intent'"))}
    approved = [r for r in final_results(db).values() if r.status == "approved"]
    assert len(approved) > 100
    for result in approved:
        payment = payments[result.payment_id]
        if payment.card is not None:
            entry = files["card"][payment.card.rrn]
        elif payment.swift is not None:
            entry = files["swift"][payment.swift.uetr]
        else:
            assert payment.qr is not None
            entry = files["qr"][payment.qr.qr_reference]
        assert (entry.amount, entry.currency) == (payment.amount, payment.currency)
    # Nothing settled that the switch did not approve.
    assert sum(len(v) for v in files.values()) == len(approved)


async def test_planted_discrepancies_are_logged(tmp_path: Path) -> None:
    _, out_dir = await run_switch_over_simulators(tmp_path, 0.2)
    planted = [d for p in out_dir.glob("*.discrepancies.json") for d in json.loads(p.read_text())]
    assert len(planted) > 20
    assert {d["kind"] for d in planted} == {"missing", "amount_off", "duplicated",
                                            "unknown_reference"}
