"""HAProxy in front of a cluster's HTTP doors, routing by the cluster's shard map.

HAProxy computes the owner of a payment itself, with the same function as our msgpack
client and every worker (switch/protocols/shardmap.py):

    use_backend shard%[req.fhdr(Idempotency-Key,1),crc32,mod(N)]

One backend per shard, one server in it: the worker that owns the shard, health-checked
on its admin port's /readyz. While that worker is down (or replaying its journal after a
restart) its backend has no server, and HAProxy answers its own 503 with a problem+json
body, code ``unavailable``, naming the shard -- it never sends the shard's keys to another
worker, which would book a retried payment on a second journal. The other shards keep
serving. ``GET /v1/payments/P<boot>-<seq>`` goes to the shard the payment id names (a
worker numbers its boots ``boot * N + shard``); requests without the header (they get the
worker's 400) go round-robin to any ready worker.

Why not ``balance hdr(Idempotency-Key)`` with ``hash-type consistent``: consistent hashing
moves a down server's keys to the next server on the ring, which is exactly the
redistribution a payment switch must not do (docs/cluster.md).

``req.fhdr`` (not ``req.hdr``) takes the header's whole value, commas included, and
occurrence 1 is the first one, as the worker reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from switch.cluster.layout import ClusterLayout, WorkerSpec
from switch.protocols.payments_json import PROBLEM_BASE, PROBLEM_JSON
from switch.protocols.shardmap import join_address

#: Health check cadence: a killed worker is marked down after ``fall`` failed checks.
CHECK_INTER_MS: Final = 500
CHECK_FALL: Final = 2
CHECK_RISE: Final = 1


def unavailable_response(shard: int, shards: int) -> bytes:
    """The raw HTTP response HAProxy sends for a shard with no live worker."""
    body = json.dumps({
        "type": PROBLEM_BASE + "unavailable", "title": "Service Unavailable", "status": 503,
        "detail": f"shard {shard} of {shards} is unavailable (its worker is down or "
                  "restarting); retry with the same Idempotency-Key",
        "code": "unavailable", "shard": shard,
    }, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Retry-After: 1\r\nCache-Control: no-store\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + body


def render(layout: ClusterLayout, *, bind: str, errors_dir: str | Path,
           maxconn: int = 4096, stats_bind: str | None = None,
           iso8583_bind: str | None = None) -> str:
    """HAProxy's config for ``layout``; the per-shard 503 files live in ``errors_dir``."""
    http_workers = [w for w in layout.workers if w.http_port]
    if len(http_workers) != len(layout.workers):
        missing = [w.shard for w in layout.workers if not w.http_port]
        raise ValueError(f"layout: shard(s) {missing} have no http_port: enable [http] in "
                         "the workers' config to put HAProxy in front of them")
    n = len(layout.workers)
    check = f"check port {{admin}} inter {CHECK_INTER_MS} fall {CHECK_FALL} rise {CHECK_RISE}"
    lines = [
        f"# Written by `payswitch cluster haproxy-config` for cluster {layout.name!r} "
        f"({n} shards). Shard of a key: crc32(Idempotency-Key) mod {n}, as in",
        "# switch/protocols/shardmap.py. Regenerate it whenever the layout changes.",
        "global",
        f"    maxconn {maxconn}",
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    # No redispatch: a shard's keys never go to another shard's worker.",
        "    retries 2",
        "",
    ]
    if stats_bind:
        lines += ["frontend stats", f"    bind {stats_bind}", "    stats enable",
                  "    stats uri /stats", "    http-request use-service prometheus-exporter "
                  "if { path /metrics }", ""]
    lines += [
        "frontend payments",
        f"    bind {bind}",
        "    acl has_key req.fhdr_cnt(Idempotency-Key) gt 0",
        f"    use_backend shard%[req.fhdr(Idempotency-Key,1),crc32,mod({n})] if has_key",
        "    # GET /v1/payments/P<boot>-<seq>: a worker numbers its boots boot * N + shard,",
        "    # so the payment id names its shard (switch/serve/app.py _boot_identity).",
        "    acl payment_id path_reg ^/v1/payments/P[0-9]{1,18}-[0-9]+$",
        f"    use_backend shard%[path,field(4,/),field(1,-),field(2,P),mod({n})] "
        "if METH_GET payment_id",
        "    default_backend any",
        "",
    ]
    errors = Path(errors_dir)
    for w in layout.workers:
        lines += [
            f"backend shard{w.shard}",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            f"    errorfile 503 {errors / f'shard-{w.shard}-503.http'}",
            _server(w, w.http_port, check),
            "",
        ]
    lines += ["backend any", "    balance roundrobin", "    option httpchk GET /readyz",
              "    http-check expect status 200"]
    lines += [_server(w, w.http_port, check) for w in layout.workers]
    if iso8583_bind:
        lines += ["", *_iso8583(layout, iso8583_bind, check)]
    return "\n".join(lines) + "\n"


def _server(worker: WorkerSpec, port: int, check: str) -> str:
    """One ``server`` line. The address goes through join_address, as everywhere else an
    address is written: an IPv6 host in brackets (HAProxy also reads ``::1:80`` by its
    last colon, but the bracketed form is the one a reader cannot misread)."""
    return (f"    server w{worker.shard} {join_address(worker.host, port)} "
            + check.format(admin=worker.admin_port))


def _iso8583(layout: ClusterLayout, bind: str, check: str) -> list[str]:
    """ISO 8583 in TCP mode, sticky by acquirer address (docs/cluster.md: affinity by
    connection). The key derives from acquirer fields, not from the shard map, so an
    acquirer's connections must all reach one worker: ``balance source``."""
    missing = [w.shard for w in layout.workers if not w.iso8583_port]
    if missing:
        raise ValueError(f"layout: shard(s) {missing} have no iso8583_port: enable [iso8583] "
                         "in the workers' config to put HAProxy in front of them")
    return [
        "# ISO 8583 acquirers: sticky by source address, never by the shard map.",
        "frontend iso8583",
        "    mode tcp",
        f"    bind {bind}",
        "    timeout client 1h",
        "    default_backend iso8583",
        "",
        "backend iso8583",
        "    mode tcp",
        "    balance source",
        "    hash-type consistent",
        "    timeout server 1h",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        *(_server(w, w.iso8583_port, check) for w in layout.workers),
    ]


def write_config(layout: ClusterLayout, path: str | Path, *, bind: str,
                 maxconn: int = 4096, stats_bind: str | None = None,
                 iso8583_bind: str | None = None) -> Path:
    """Write the config and, beside it, the per-shard 503 files it names.

    The config is rendered first, so a layout it refuses (ValueError) leaves nothing on
    disk: no directory, no 503 file, no config."""
    target = Path(path).resolve()
    errors = target.parent / f"{target.stem}-errors"
    text = render(layout, bind=bind, errors_dir=errors, maxconn=maxconn,
                  stats_bind=stats_bind, iso8583_bind=iso8583_bind)
    errors.mkdir(parents=True, exist_ok=True)
    n = len(layout.workers)
    for w in layout.workers:
        (errors / f"shard-{w.shard}-503.http").write_bytes(unavailable_response(w.shard, n))
    target.write_text(text)
    return target
