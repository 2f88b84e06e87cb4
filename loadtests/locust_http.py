"""Locust user for the switch's HTTP payments API (FastHttpUser).

    .venv/bin/locust -f loadtests/locust_http.py --headless -u 20 -r 20 -t 30s \\
        --host http://127.0.0.1:7120

Each request is ``POST /v1/payments`` with the workload's payment as JSON and its
idempotency key in the ``Idempotency-Key`` header; the workload's duplicates are real
replays (same key, same body: the stored result, ``Idempotent-Replayed: true``).
Declines are answers; a 4xx the workload did not ask for (its invalid share gets 422) is
a failure. ``PAYSWITCH_WORKLOAD`` and ``PAYSWITCH_SEED`` as in locustfile.py.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from locust import FastHttpUser, constant, task
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from loadtests.harness.workload import (  # noqa: E402
    SpecWorkload,
    derive_seed,
    workload_from_env,
)
from switch.model import PaymentRequest  # noqa: E402
from switch.protocols.payments_json import PaymentBody  # noqa: E402

WORKLOAD, SEED = workload_from_env(os.environ)
RUN_TAG = "H" + format((int(time.time() * 1000) + os.getpid()) % 36**5, "x")
_numbers = itertools.count()
_encode = msgspec.json.Encoder().encode


class PaymentsApiUser(FastHttpUser):
    host = "http://127.0.0.1:7120"
    wait_time = constant(float(os.environ.get("PAYSWITCH_WAIT_S", "0")))

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        number = next(_numbers)
        self.workload = SpecWorkload(WORKLOAD, derive_seed(SEED, "locust-http", number),
                                     key_prefix=f"{RUN_TAG}u{number}-", pool_seed=SEED)

    @task
    def pay(self) -> None:
        item, kind = self.workload.next_item()
        if not isinstance(item, PaymentRequest):
            return  # malformed msgpack frames have no HTTP equivalent here
        body = _encode(PaymentBody(item.channel, item.amount, item.currency, item.payer,
                                   item.payee, item.card, item.swift, item.qr))
        headers = {"Idempotency-Key": item.idempotency_key,
                   "Content-Type": "application/json"}
        with self.client.post("/v1/payments", data=body, headers=headers, name=item.channel,
                              catch_response=True) as response:
            if response.status_code == 201 or (response.status_code == 422 and kind == "invalid"):
                response.success()
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
