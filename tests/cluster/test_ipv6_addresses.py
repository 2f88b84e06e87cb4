"""A cluster on an IPv6 host: its shard addresses are ``[host]:port``.

The layout wrote ``f"{host}:{port}"``, which for ``::1`` is ``::1:7100``: the shard map
refuses that (the last colon would be ambiguous), so no IPv6 cluster could start. The load
generator and the cluster client rebuilt addresses the same way: the generator keyed its
targets ``::1:7100`` and never found the ``[::1]:7100`` a ``moved`` names (so it did not
follow it), and the client's seed was not an address at all.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import anyio
import pytest

from loadtests.harness.cluster_client import ClusterClient
from loadtests.harness.clusterproc import Cluster, haproxy_binary
from switch.cluster.filesd import target_groups
from switch.cluster.haproxy import write_config
from switch.cluster.layout import apply, load_layout, plan, save_layout
from switch.protocols.shardmap import ShardMap, address_problem, join_address, split_address
from switch.protocols.wire import Reply
from switch.serve.config import parse_config
from tests.cluster.test_load_many_machines import follow_moved_from_a_stale_map
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


def test_haproxy_names_ipv6_workers_in_brackets_and_haproxy_takes_them(
        tmp_path: Path) -> None:
    config = parse_config('[server]\nhost = "::1"\nport = 7100\n'
                          '[admin]\nhost = "::1"\nport = 7180\n'
                          '[http]\nenabled = true\nhost = "::1"\nport = 7200\n'
                          '[iso8583]\nenabled = true\nhost = "::1"\nport = 7300\n'
                          f'[journal]\npath = "{tmp_path / "journal.db"}"\n')
    layout = plan(config, 2, tmp_path)
    path = write_config(layout, tmp_path / "haproxy.cfg", bind="[::1]:7000",
                        iso8583_bind="[::1]:7001")
    servers = [line.split()[2] for line in path.read_text().splitlines()
               if line.strip().startswith("server ")]
    assert servers and all(s.startswith("[::1]:") for s in servers), servers
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


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

    def through_the_client(running: Cluster) -> list[object]:
        w0, real = running.layout.workers[0], running.layout.shard_map.addresses
        assert w0.host == "::1" and all(a.startswith("[::1]:") for a in real), real

        async def pay() -> list[object]:
            async with ClusterClient.connect(w0.host, w0.port) as client:
                assert client.map.addresses == real
                return [await client.pay(card_payment(key=f"v6-{i}")) for i in range(6)]

        return anyio.run(pay)

    replies = follow_moved_from_a_stale_map(CONFIG, tmp_path, monkeypatch, rate=100,
                                            connections=1, also=through_the_client)
    assert isinstance(replies, list)
    assert all(isinstance(r, Reply) for r in replies), replies
