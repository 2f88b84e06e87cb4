"""A real 2-worker cluster enforces a velocity limit as a whole, not per worker.

One card's payments with distinct idempotency keys land on both shards. Each worker used
to count them against the whole limit, so the cluster let through up to twice the
configured count; with the limits split (``[cluster] split_limits``, the default) each
worker enforces half and the cluster never passes the limit.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import start_cluster, stop_cluster
from switch import reasons
from switch.model import Status
from switch.protocols.shardmap import shard_of, split_address
from switch.protocols.wire import Reply
from tests.payments import card_payment

MAX_COUNT = 4

CONFIG = """
seed = 5
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
[risk.velocity]
max_count = {max_count}
"""


def test_a_cluster_holds_one_cards_velocity_limit_over_all_its_workers(tmp_path: Path) -> None:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db", max_count=MAX_COUNT))
    # Five keys per shard: each worker alone would let four through (eight in all).
    keys = [k for s in (0, 1)
            for k in [f"velo-{i}" for i in range(100) if shard_of(f"velo-{i}", 2) == s][:5]]
    running = start_cluster(config, tmp_path / "cluster", 2)
    try:
        host, port = split_address(running.layout.workers[0].address)

        async def send() -> list[Reply]:
            replies: list[Reply] = []
            async with ClusterClient.connect(host, port) as client:
                for key in keys:  # one at a time: the count, not a race, decides
                    reply = await client.pay(card_payment(key, amount=1000))
                    assert isinstance(reply, Reply), reply
                    replies.append(reply)
            return replies

        replies = anyio.run(send)
    finally:
        assert stop_cluster(running) == 0
    passed_risk = [r for r in replies if r.result.reason != reasons.OVER_FREQUENCY_LIMIT]
    approved = [r for r in replies if r.result.status == Status.APPROVED]
    # The stand-in networks decline a few at random; what risk let through is the count.
    assert len(passed_risk) == MAX_COUNT, [r.result for r in replies]
    assert len(approved) <= MAX_COUNT
    for shard in (0, 1):
        log = (running.run_dir / f"shard-{shard}.log").read_text()
        assert (f"cluster shard {shard} of 2 enforces 1/2 of each cumulative limit "
                "(cluster.split_limits): risk.velocity.max_count=2 ") in log
