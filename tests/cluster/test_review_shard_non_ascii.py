"""Review: a non-ASCII Idempotency-Key through a real HAProxy reaches a worker that owns it.

HAProxy hashes the header's raw bytes (crc32 mod N); the worker hashed the latin-1
decoded header re-encoded as UTF-8, so HAProxy's choice was answered 421 ``moved``.
tests/test_review_doors_shard.py has the unit version; this is the whole path.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import httpx

from tests.cluster.test_cluster import BODY, behind_haproxy

SHARDS = 3  # behind_haproxy's cluster


def test_non_ascii_keys_through_haproxy_are_booked_not_moved(tmp_path: Path) -> None:
    # Keys whose UTF-8 bytes (what HAProxy hashes) and latin-1-read-as-UTF-8 bytes (what
    # the worker hashed) fall on different shards, and two that are not UTF-8 at all
    # (refused by the worker HAProxy routes them to).
    raws = [raw for raw in [f"café-{i}".encode() for i in range(30)]
            + [f"order-\xe9-{i}".encode("latin-1") for i in range(30)]
            if zlib.crc32(raw) % SHARDS
            != zlib.crc32(raw.decode("latin-1").encode()) % SHARDS]
    raws = raws[:4] + raws[-2:]
    assert len({zlib.crc32(raw) % SHARDS for raw in raws}) > 1
    with behind_haproxy(tmp_path, 4.0, clean_stop=True) as (_, front), \
            httpx.Client(timeout=30) as http:
        for raw in raws:
            headers = [(b"Idempotency-Key", raw), (b"Content-Type", b"application/json")]
            first = http.post(front + "/v1/payments", json=BODY, headers=headers)
            if not raw.isascii() and raw.startswith(b"order-"):
                # Not UTF-8: the owner HAProxy chose refuses it (400, not 421 moved).
                assert first.status_code == 400, (raw, first.text)
                assert "not UTF-8" in first.json()["detail"], first.text
                continue
            assert first.status_code == 201, (raw, first.text)
            assert first.json()["idempotency_key"] == raw.decode(), first.text
            again = http.post(front + "/v1/payments", json=BODY, headers=headers)
            assert again.status_code == 201, (raw, again.text)
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["payment_id"] == first.json()["payment_id"]
