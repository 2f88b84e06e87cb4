"""One layout, two "nodes": node A supervises shards 0 and 1 of the layout (`serve
--cluster layout.json --shard 0 --shard 1`), node B runs shard 2 as a single worker
(under its own init system in real life). Clients see one cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import audit_cluster
from switch.cluster.layout import plan, save_layout
from switch.protocols.wire import Reply
from switch.serve.config import parse_config
from tests.cluster.test_cluster import CONFIG
from tests.payments import card_payment


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # wall clock: other processes
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.05)


def test_a_layout_spread_over_two_nodes(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    layout = plan(parse_config(config.read_text()), 3, tmp_path / "cluster")
    layout_path = tmp_path / "cluster" / "layout.json"
    save_layout(layout, layout_path)
    env = dict(os.environ, PAYSWITCH_TOKEN_KEY="k" * 32)
    base = [sys.executable, "-m", "switch.cli", "serve", "--config", str(config),
            "--cluster", str(layout_path)]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with log_a.open("wb") as out:
        node_a = subprocess.Popen([*base, "--shard", "0", "--shard", "1", "--ready-file",
                                   str(tmp_path / "a.ready")], stdout=out, stderr=out, env=env)
    with log_b.open("wb") as out:
        node_b = subprocess.Popen([*base, "--shard", "2", "--ready-file",
                                   str(tmp_path / "b.ready")], stdout=out, stderr=out, env=env)
    try:
        wait_for(tmp_path / "a.ready", node_a, log_a)
        wait_for(tmp_path / "b.ready", node_b, log_b)
        state = json.loads((tmp_path / "a.ready").read_text())
        assert [w["shard"] for w in state["workers"]] == [0, 1]
        w0 = layout.workers[0]

        async def pay_all() -> dict[str, str]:
            answers = {}
            async with ClusterClient.connect(w0.host, w0.port) as client:
                for i in range(90):
                    reply = await client.pay(card_payment(key=f"n-{i}", payer=f"P{i}"))
                    assert isinstance(reply, Reply), reply
                    answers[f"n-{i}"] = reply.result.payment_id
            return answers

        answers = anyio.run(pay_all)
    finally:
        for proc in (node_a, node_b):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in (node_a, node_b)]
    assert codes == [0, 0], (log_a.read_text()[-2000:], log_b.read_text()[-2000:])
    audit = audit_cluster(layout, answers)
    assert audit.lost_keys == [] and audit.misplaced == 0 and audit.duplicates_across == 0
    assert audit.finals == 90
