"""Locust user for any ISO 8583 host: 0100 authorizations of the workload's card payments.

    .venv/bin/locust -f loadtests/locust_iso8583.py --headless -u 20 -r 20 -t 30s \\
        --host tcp://127.0.0.1:7110

Each user holds one TCP connection and sends one 0100 at a time (2-byte big-endian
length + the 1987 ASCII layout, or a binary bitmap), waiting for the 0110 whose key
fields match: Locust's closed model. The message is built with pyiso8583 and the same
spec as ``payswitch load --protocol iso8583`` (loadtests/harness/iso8583_client.py), so
what the two tools send is identical. A reply whose key does not match the request
(``PAYSWITCH_ISO_MATCH``, default ``mti,11,41``) is a failure named "unmatched reply",
never a silent timeout.

Environment variables: ``PAYSWITCH_WORKLOAD``, ``PAYSWITCH_SEED`` (as locustfile.py);
``PAYSWITCH_ISO_BITMAP`` (ascii|binary); ``PAYSWITCH_ISO_MATCH``; ``PAYSWITCH_ISO_SPEC``
(a pyiso8583 spec as JSON); ``PAYSWITCH_ISO_ACQUIRER`` (DE32); ``PAYSWITCH_TIMEOUT_S``.

Request events: request_type ``iso8583``, name = the response's DE39 class (``0110``),
exception when the host answered 30 (format error) or 94 (duplicate), or the reply did
not match. Declines are answers, not failures.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from pathlib import Path

from locust import User, constant, task
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import iso8583 as pyiso  # noqa: E402

from loadtests.harness.iso8583_client import Iso8583Wire, classify  # noqa: E402
from loadtests.harness.wires import Iso8583Options  # noqa: E402
from loadtests.harness.workload import (  # noqa: E402
    SpecWorkload,
    derive_seed,
    workload_from_env,
)
from switch.model import PaymentRequest  # noqa: E402

WORKLOAD, SEED = workload_from_env(os.environ)
TIMEOUT_S = float(os.environ.get("PAYSWITCH_TIMEOUT_S", "10"))
OPTIONS = Iso8583Options(
    bitmap="binary" if os.environ.get("PAYSWITCH_ISO_BITMAP") == "binary" else "ascii",
    match=os.environ.get("PAYSWITCH_ISO_MATCH", "mti,11,41").split(","),
    spec_file=os.environ.get("PAYSWITCH_ISO_SPEC") or None,
    acquirer_id=os.environ.get("PAYSWITCH_ISO_ACQUIRER", "412345"),
)
RUN_TAG = "I" + format((int(time.time() * 1000) + os.getpid()) % 36**5, "x")
_numbers = itertools.count()


class UnmatchedReply(Exception):
    """The host answered with key fields that match no request in flight."""


class HostError(Exception):
    """The host answered 30 (format error) or 94 (duplicate transmission)."""


class Iso8583User(User):
    host = "tcp://127.0.0.1:7110"
    wait_time = constant(float(os.environ.get("PAYSWITCH_WAIT_S", "0")))

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        number = next(_numbers)
        self.workload = SpecWorkload(WORKLOAD, derive_seed(SEED, "locust-iso", number),
                                     key_prefix=f"{RUN_TAG}u{number}-", pool_seed=SEED)
        # The wire builds the 0100s and keeps the match keys; this user does the socket.
        # Each user is one terminal with its own STAN sequence, as on a real network.
        self.wire = Iso8583Wire(OPTIONS, terminal_id=f"LC{os.getpid() % 100:02d}{number:04d}")
        text = (self.host or "").removeprefix("tcp://").rstrip("/")
        name, _, port = text.rpartition(":")
        self.address = (name or "127.0.0.1", int(port or 7110))
        self.sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._fire = environment.events.request.fire

    def on_stop(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _exchange(self, data: bytes, rid: int) -> tuple[str, int]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=TIMEOUT_S)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(data)
        received = 0
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("host closed the connection")
            received += len(chunk)
            for answer in self.wire.feed(0, chunk):
                if answer.rid != rid:
                    raise UnmatchedReply(f"reply key matches no request "
                                         f"(match {OPTIONS.match}): "
                                         f"{self.wire.unmatched_samples[-1:]}")
                if answer.error is not None:
                    raise HostError(answer.error)
                return answer.status or "", received

    @task
    def authorize(self) -> None:
        item, _kind = self.workload.next_item("card")
        if not isinstance(item, PaymentRequest):
            return  # malformed frames are the msgpack locustfile's business
        rid = next(self._ids)
        data = self.wire.encode(rid, item, 0)
        started = time.perf_counter()
        length = 0
        exception: Exception | None = None
        try:
            _status, length = self._exchange(data, rid)
        except HostError as exc:
            exception = exc if _kind != "invalid" else None
        except (OSError, ConnectionError, UnmatchedReply, pyiso.DecodeError) as exc:
            exception = exc
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            self.wire.forget(0)
        self._fire(request_type="iso8583", name="0100", response_time=(
            time.perf_counter() - started) * 1000.0, response_length=length,
            exception=exception, context={})


__all__ = ["Iso8583User", "classify"]
