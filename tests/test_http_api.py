"""The HTTP/JSON payments API against a running switch process, driven with curl.

Idempotency-Key semantics (IETF httpapi draft): a replay returns the stored result, a
different body with the same key gets 422 problem+json; errors name the field path.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.harness.processes import start_switch, stop_switch
from switch.protocols.payments_json import openapi_text
from switch.serve.http_api import MAX_HEAD_BYTES

CONFIG = """
seed = 7
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
[http]
enabled = true
port = 0
server = "{server}"
"""

BODY = {
    "channel": "card", "amount": 1250, "currency": "USD",
    "payer": {"account": "ACCT000001", "name": "Payer"},
    "payee": {"account": "MERCH00001", "name": "Payee"},
    "card": {"pan": "4111111111111111", "expiry": "2812"},
}


def curl(url: str, *args: str) -> tuple[int, dict[str, str], Any]:
    out = subprocess.run(["curl", "-s", "-i", *args, url], capture_output=True, check=True,
                         timeout=30).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, json.loads(body) if body else None


def post(url: str, key: str | None, body: object) -> tuple[int, dict[str, str], Any]:
    args = ["-X", "POST", "-H", "Content-Type: application/json", "--data", json.dumps(body)]
    if key is not None:
        args += ["-H", f"Idempotency-Key: {key}"]
    return curl(url, *args)


@pytest.fixture(params=["uvicorn", "hypercorn"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    config = tmp_path / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp_path / "journal.db", server=request.param))
    proc, endpoints = start_switch(config, tmp_path / "ready.json")
    yield f"http://127.0.0.1:{endpoints['http_port']}"
    assert stop_switch(proc) == 0


def test_idempotency_key_replay_and_conflict_with_curl(api: str) -> None:
    status, headers, first = post(api + "/v1/payments", "order-1", BODY)
    assert status == 201, first
    assert first["status"] == "approved" and first["reason"] == "00"
    assert first["idempotency_key"] == "order-1"
    assert headers["location"] == f"/v1/payments/{first['payment_id']}"
    assert "idempotent-replayed" not in headers

    status, headers, again = post(api + "/v1/payments", "order-1", BODY)
    assert status == 201 and again == first
    assert headers["idempotent-replayed"] == "true"

    status, headers, problem = post(api + "/v1/payments", "order-1", {**BODY, "amount": 999})
    assert status == 422
    assert headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and problem["code"] == "idempotency_conflict"
    assert problem["type"].endswith("/idempotency-conflict") and problem["title"]

    status, _, found = curl(f"{api}/v1/payments/{first['payment_id']}")
    assert status == 200 and found["payment_id"] == first["payment_id"]
    assert found["status"] == "approved" and found["idempotency_key"] == "order-1"
    status, headers, missing = curl(f"{api}/v1/payments/P9-999999")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert missing["status"] == 404


def test_errors_are_problem_json_naming_the_field(api: str) -> None:
    status, _, problem = post(api + "/v1/payments", None, BODY)
    assert status == 400 and problem["type"].endswith("/idempotency-key-missing")

    status, _, problem = post(api + "/v1/payments", "k2", {**BODY, "amount": 0})
    assert status == 422 and problem["errors"][0]["pointer"] == "/amount"

    card = {**BODY["card"], "pan": "4111111111111112"}  # type: ignore[dict-item]
    status, _, problem = post(api + "/v1/payments", "k3", {**BODY, "card": card})
    assert status == 422 and problem["errors"][0]["pointer"] == "/card/pan"
    assert "Luhn" in problem["errors"][0]["detail"]

    status, _, problem = post(api + "/v1/payments", "k4",
                              {**BODY, "payer": {"account": "A", "nickname": "x"}})
    assert status == 422 and problem["errors"][0]["pointer"] == "/payer/nickname"

    status, _, problem = curl(api + "/v1/payments", "-X", "POST", "-H", "Idempotency-Key: k5",
                              "--data", "{not json")
    assert status == 400 and problem["type"].endswith("/invalid-body")

    # Invalid UTF-8 inside a string was a bare 500 with a traceback in the log.
    # (Lone surrogates: subprocess passes them to curl as the bytes 0xff 0xfe.)
    status, headers, problem = curl(api + "/v1/payments", "-X", "POST", "-H",
                                    "Idempotency-Key: k7", "--data-binary",
                                    '{"channel":"\udcff\udcfe"}')
    assert status == 400 and problem["type"].endswith("/invalid-body")
    assert headers["content-type"] == "application/problem+json"

    # The ISO 8583 door's keys: an acquirer's 0400 would reverse such a payment.
    status, _, problem = post(api + "/v1/payments", "iso:412345:T1:000001:1", BODY)
    assert status == 400 and problem["type"].endswith("/idempotency-key-invalid")
    assert "iso:" in problem["detail"]

    huge = {**BODY, "payee": {"account": "x" * 20000}}
    status, _, problem = post(api + "/v1/payments", "k6", huge)
    assert status == 413


def test_served_openapi_equals_the_checked_in_document(api: str) -> None:
    served = httpx.get(api + "/openapi.json").json()
    checked_in = json.loads((Path(__file__).parent.parent / "docs/openapi.json").read_text())
    assert served == checked_in, (
        "docs/openapi.json is stale: python -m switch.protocols.payments_json > docs/openapi.json")
    assert json.loads(openapi_text()) == checked_in


def _raw(api: str, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection: what came back, and whether the server closed
    the connection within 5 s."""
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        # Closed on us mid-send: what it answered first is still readable.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
        except OSError:
            pass  # reset: closed
        return answer, True


def test_a_request_head_past_its_bound_is_refused_and_the_door_serves_on(api: str) -> None:
    # uvicorn's httptools gathered one header whole, however long (300 MB for one
    # client), and kept the connection waiting for its end.
    head = b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEAD_BYTES)
    answer, closed = _raw(api, head)
    assert closed, answer[:80]
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:80]
    # A body that arrives in the same read as its head is not counted as head: together
    # past the bound, the body itself within max_body_bytes (JSON allows the padding).
    body = json.dumps(BODY).ljust(16_300)
    request = (f"POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: big-body\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n\r\n{body}").encode()
    answer, _ = _raw(api, request)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    status, _, _ = post(api + "/v1/payments", "after-big-head", BODY)
    assert status == 201
