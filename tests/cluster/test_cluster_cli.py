"""The cluster's command line: its files, and one-line errors (exit 2) for its mistakes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from switch.cluster.layout import (
    LOW_PORTS_FROM,
    ClusterLayout,
    WorkerSpec,
    _ephemeral_start,
    free_port,
    load_layout,
    plan,
    save_layout,
)
from switch.cluster.supervisor import Supervisor
from switch.protocols.shardmap import shard_of
from switch.serve.config import ConfigError, SwitchConfig, parse_config
from tests.test_cli_errors import one_error_line, run
from tests.test_http_api import CONFIG as HTTP_CONFIG


def layout(tmp_path: Path, shards: int = 3, http: bool = True) -> Path:
    spec = ClusterLayout([WorkerSpec(shard=i, host="127.0.0.1", port=7100 + i,
                                     admin_port=7180 + i, journal=str(tmp_path / f"{i}.db"),
                                     http_port=7120 + i if http else 0)
                          for i in range(shards)], "test")
    path = tmp_path / "layout.json"
    save_layout(spec, path)
    return path


def test_plan_gives_each_worker_its_ports_and_journal(tmp_path: Path) -> None:
    config = parse_config(HTTP_CONFIG.format(journal=tmp_path / "j.db", server="uvicorn")
                          .replace("port = 0\n[admin]\nport = 0", "port = 7300\n[admin]\n"
                                   "port = 7400"))
    planned = plan(config, 3, tmp_path / "c")
    assert [w.port for w in planned.workers] == [7300, 7301, 7302]
    assert [w.admin_port for w in planned.workers] == [7400, 7401, 7402]
    assert all(w.http_port > 0 for w in planned.workers)  # 0 in the config: free ports
    assert len({w.http_port for w in planned.workers}) == 3
    assert [w.journal for w in planned.workers] == [
        str(tmp_path / "c" / f"shard-{i}" / "j.db") for i in range(3)]


def test_free_ports_come_from_below_the_ephemeral_range_and_skip_one_in_use() -> None:
    # A worker binds its port a second or two after the plan; an ephemeral port could go
    # to any outgoing connection meanwhile (a worker died of it in a CI run).
    low = range(LOW_PORTS_FROM, _ephemeral_start())
    first = low[os.getpid() * 7919 % len(low)]  # where this process starts looking
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", first))  # another listener holds it
            other.listen()
        except OSError:
            pass  # some process here already does
        taken: set[int] = set()
        ports = [free_port("127.0.0.1", taken) for _ in range(5)]
    assert first not in ports
    assert len(set(ports)) == 5 and set(ports) == taken  # closed again, never picked twice
    assert all(p in low for p in ports)


def test_haproxy_config_routes_by_the_shard_map_and_checks_readyz(tmp_path: Path) -> None:
    path = layout(tmp_path)
    out = tmp_path / "haproxy.cfg"
    done = run("cluster", "haproxy-config", "--layout", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "use_backend shard%[req.fhdr(Idempotency-Key,1),crc32,mod(3)] if has_key" in text
    assert text.count("option httpchk GET /readyz") == 4  # 3 shards + the keyless backend
    assert "server w1 127.0.0.1:7121 check port 7181" in text
    assert "redispatch" not in text.replace("No redispatch", "")
    body = (tmp_path / "haproxy-errors" / "shard-2-503.http").read_bytes()
    head, _, payload = body.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"application/problem+json" in head
    assert json.loads(payload)["code"] == "unavailable" and json.loads(payload)["shard"] == 2
    assert f"Content-Length: {len(payload)}".encode() in head
    check = subprocess.run(["haproxy", "-c", "-f", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_shard_command_and_prometheus_targets(tmp_path: Path) -> None:
    path = layout(tmp_path)
    done = run("cluster", "shard", "--layout", str(path), "order-1", "order-2")
    assert done.returncode == 0
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"order-1\tshard {shard_of('order-1', 3)}\t127.0.0.1:" \
                       f"{7100 + shard_of('order-1', 3)}"
    targets = tmp_path / "t.json"
    assert run("cluster", "prometheus-targets", "--layout", str(path), "--out",
               str(targets)).returncode == 0
    groups = json.loads(targets.read_text())
    assert groups[1] == {"targets": ["127.0.0.1:7181"], "labels": {"shard": "1",
                                                                  "cluster": "test"}}


def test_cluster_mistakes_are_one_line(tmp_path: Path) -> None:
    no_http = layout(tmp_path, http=False)
    line = one_error_line(run("cluster", "haproxy-config", "--layout", str(no_http),
                              "--out", str(tmp_path / "h.cfg")))
    assert "have no http_port" in line
    bad = tmp_path / "bad.json"
    bad.write_text('{"workers": [{"shard": 1, "host": "h", "port": 1, "admin_port": 2, '
                   '"journal": "j"}]}')
    line = one_error_line(run("cluster", "shard", "--layout", str(bad), "k"))
    assert line == f"Error: {bad}: workers[0].shard is 1; workers must be listed in shard order"
    line = one_error_line(run("cluster", "shard", "--layout", str(tmp_path / "none.json"), "k"))
    assert "cannot read the cluster layout" in line
    overlap = tmp_path / "overlap.toml"
    overlap.write_text("[server]\nport = 7500\n[admin]\nport = 7502\n")
    line = one_error_line(run("serve", "--config", str(overlap), "--workers", "3", "--demo",
                              "--cluster-dir", str(tmp_path / "c")))
    assert "server.port = 7500 and admin.port = 7502" in line and "overlap" in line
    out_of_range = one_error_line(run("serve", "--cluster", str(layout(tmp_path)), "--shard",
                                      "5", "--demo"))
    assert "--shard: 5 is not a shard of the layout (0..2)" in out_of_range
    usage = run("serve", "--cluster", str(layout(tmp_path)))
    assert usage.returncode == 2 and "--cluster and --shard go together" in usage.stderr


def test_a_config_naming_a_shard_outside_its_map_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cluster.shard: 2 is not a shard of "
                       r"cluster.shards \(0..1\)"):
        parse_config('[cluster]\nshard = 2\nshards = ["a:1", "b:2"]\n')
    assert SwitchConfig().cluster.shards == []


def test_the_supervisor_restarts_an_exited_worker_after_its_delay(tmp_path: Path) -> None:
    """Restart timing on an injected clock: no sleeping, no real processes."""
    spec = load_layout(layout(tmp_path, 2))
    now = [100.0]
    supervisor = Supervisor(spec, tmp_path / "run", restart_delay_s=1.0,
                            clock=lambda: now[0])
    spawned: list[int] = []

    class Exited:
        pid = 4242

        def poll(self) -> int:
            return -9

    supervisor.procs = {0: Exited(), 1: Exited()}  # type: ignore[dict-item]
    supervisor.spawn = spawned.append  # type: ignore[method-assign,assignment]
    supervisor.poll_once(supervisor.clock())  # both seen down now
    now[0] += 0.5
    supervisor.poll_once(supervisor.clock())
    assert spawned == []
    now[0] += 0.5
    supervisor.poll_once(supervisor.clock())
    assert spawned == [0, 1]


def test_a_lone_worker_of_a_layout_refuses_demo(tmp_path: Path) -> None:
    # Several --shard refused --demo, one --shard took it and made a throwaway key of its
    # own beside its journal: that worker's PAN tokens agreed with no other worker's.
    line = one_error_line(run("serve", "--cluster", str(layout(tmp_path)), "--shard", "1",
                              "--demo"))
    assert line.startswith("Error: --demo: the nodes of one cluster must share one token "
                           "key"), line


def test_a_layout_worker_on_port_0_is_refused_naming_it(tmp_path: Path) -> None:
    # Port 0 ("pick a free one") would publish an address nobody could reach; it was a
    # ValueError traceback from the shard map.
    path = tmp_path / "layout.json"
    path.write_text('{"workers": [{"shard": 0, "host": "127.0.0.1", "port": 0, '
                    f'"admin_port": 7180, "journal": "{tmp_path / "j.db"}"}}]}}')
    line = one_error_line(run("serve", "--cluster", str(path), "--shard", "0"))
    assert line == f"Error: {path}: workers[0].port: Expected `int` >= 1", line
