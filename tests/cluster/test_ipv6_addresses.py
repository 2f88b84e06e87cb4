"""A cluster on an IPv6 host: its shard addresses are ``[host]:port``.

The layout wrote ``f"{host}:{port}"``, which for ``::1`` is ``::1:7100``: the shard map
refuses that (the last colon would be ambiguous), so no IPv6 cluster could start. The load
generator and the cluster client rebuilt addresses the same way: the generator keyed its
targets ``::1:7100`` and never found the ``[::1]:7100`` a ``moved`` names (so it did not
follow it), and the client's seed was not an address at all.
"""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import audit_cluster, start_cluster, stop_cluster
from switch.cluster.filesd import target_groups
from switch.cluster.layout import apply, load_layout, plan, save_layout
from switch.protocols.shardmap import ShardMap, address_problem, join_address, split_address
from switch.protocols.wire import Reply
from switch.serve.config import parse_config
from tests.payments import card_payment

JOINED = {
    ("::1", 7100): "[::1]:7100",
    ("2001:db8::7", 65535): "[2001:db8::7]:65535",
    ("::ffff:10.0.0.1", 80): "[::ffff:10.0.0.1]:80",
    ("127.0.0.1", 9000): "127.0.0.1:9000",
    ("switch-0.example.net", 1): "switch-0.example.net:1",
}


@pytest.mark.parametrize(("host", "port"), list(JOINED))
def test_join_address_brackets_an_ipv6_host_and_is_split_address_undone(
        host: str, port: int) -> None:
    address = join_address(host, port)
    assert address == JOINED[host, port]
    assert address_problem(address) is None
    assert split_address(address) == (host, port)


def test_join_address_keeps_a_host_already_in_brackets() -> None:
    assert join_address("[::1]", 7100) == "[::1]:7100"


def test_a_layout_planned_on_ipv6_names_its_shards_in_brackets(tmp_path: Path) -> None:
    config = parse_config('[server]\nhost = "::1"\nport = 7100\n'
                          '[admin]\nhost = "::1"\nport = 7180\n'
                          f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    layout = plan(config, 2, tmp_path)
    expected = ["[::1]:7100", "[::1]:7101"]
    assert [w.address for w in layout.workers] == expected
    assert layout.shard_map == ShardMap(expected)
    assert [w.admin_address for w in layout.workers] == ["[::1]:7180", "[::1]:7181"]
    # Prometheus takes a target as host:port: an IPv6 host in brackets.
    assert [g.targets for g in target_groups(layout)] == [["[::1]:7180"], ["[::1]:7181"]]
    # A worker runs with that map, and so does one that reads the layout from its file.
    save_layout(layout, tmp_path / "layout.json")
    for source in (layout, load_layout(tmp_path / "layout.json")):
        worker = apply(config, source, 1)
        assert worker.cluster.shards == expected and worker.server.host == "::1"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")

CONFIG = """
seed = 11
[server]
host = "::1"
port = 0
[admin]
host = "::1"
port = 0
[journal]
path = "{journal}"
"""


@needs_ipv6
def test_a_cluster_on_ipv6_serves_the_generator_and_the_client_following_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real two-worker cluster on ::1. The generator, given a stale map (shards
    swapped), follows each ``moved`` -- which names ``[::1]:port`` -- to the owner once;
    the cluster client connects to ``::1`` and pays through the map it fetched."""
    from loadtests.harness import loadgen
    from loadtests.harness.workload import Workload

    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db"))
    running = start_cluster(config, tmp_path / "cluster", 2)
    real = running.layout.shard_map.addresses

    async def stale(host: str, port: int, timeout_s: float = 10.0) -> ShardMap:
        return ShardMap(list(reversed(real)))

    async def through_the_client() -> list[object]:
        async with ClusterClient.connect(w0.host, w0.port) as client:
            assert client.map.addresses == real
            return [await client.pay(card_payment(key=f"v6-{i}")) for i in range(6)]

    monkeypatch.setattr(loadgen, "discover_shards", stale)
    w0 = running.layout.workers[0]
    try:
        assert w0.host == "::1" and all(a.startswith("[::1]:") for a in real), real
        generator = loadgen.OpenLoopGenerator(Workload(4).next, rate=100, duration_s=2,
                                              connections=1)
        stats = anyio.run(generator.run, w0.host, w0.port)
        replies = anyio.run(through_the_client)
    finally:
        assert stop_cluster(running) == 0
    assert stats.sent == 200 and stats.unanswered == 0
    # Every payment was redirected once and then answered by its owner.
    assert stats.redirects == stats.sent
    assert stats.replies == stats.sent and "moved" not in stats.errors, stats.errors
    assert all(isinstance(r, Reply) for r in replies), replies
    audit = audit_cluster(running.layout, {})
    assert audit.misplaced == 0 and audit.duplicates_across == 0
