"""Locust load test for payswitch: a gevent-friendly TCP client for the switch protocol.

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 50 -t 30s \\
        --host tcp://127.0.0.1:7100 --csv reports/locust/run

Each user holds one TCP connection and sends one payment at a time (4-byte big-endian
length + msgpack, see switch/protocols/wire.py), waiting for its reply: Locust's closed model. Plain
sockets are gevent-friendly because Locust monkey-patches the process with gevent before
this file is imported. Every request fires Locust's ``request`` event with
request_type ``pay`` (``raw`` for deliberately malformed frames), name = the channel,
response_time in ms, response_length in bytes, and an exception when the switch answered
something the workload did not expect (declines are answers, not failures).

Users are per channel (CardUser, SwiftUser, QrUser), weighted by the workload model's
channel mix. Environment variables:

* ``PAYSWITCH_WORKLOAD``: a workload TOML (default: the built-in mix);
* ``PAYSWITCH_SEED``: run seed (default: the workload's);
* ``PAYSWITCH_WAIT_S``: constant wait between a user's requests (default 0);
* ``PAYSWITCH_THROUGHPUT``: requests/s per user instead (constant_throughput);
* ``PAYSWITCH_SHAPE``: ``step``, ``spike`` or ``soak`` to drive users by a LoadTestShape
  (see locust_shapes.py; ``PAYSWITCH_SHAPE_USERS``, ``PAYSWITCH_SHAPE_SECONDS``);
* ``PAYSWITCH_TIMEOUT_S``: socket timeout per request (default 10);
* ``PAYSWITCH_CPU_REPORT``: write this process's CPU seconds and request count between
  spawning complete and test stop to this JSON file (bench/bench_loadgen.py uses it).

Remember Locust's limits (see loadtests/README.md): a closed model under-reports latency
under overload (coordinated omission), and it rounds response times in its percentiles.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from locust import User, constant, constant_throughput, events, task
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import msgspec  # noqa: E402

from loadtests.harness.workload import (  # noqa: E402
    SpecWorkload,
    derive_seed,
    workload_from_env,
)
from switch.model import Channel, PaymentRequest  # noqa: E402
from switch.protocols.wire import ErrorReply, Pay, Reply, decode_response  # noqa: E402

_HEADER = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
MAX_FRAME = 1 << 20

WORKLOAD, SEED = workload_from_env(os.environ)
TIMEOUT_S = float(os.environ.get("PAYSWITCH_TIMEOUT_S", "10"))
RUN_TAG = os.environ.get("PAYSWITCH_RUN_TAG") or "K" + format(
    (int(time.time() * 1000) + os.getpid()) % 36**5, "x"
)
_user_numbers = itertools.count()


class SwitchError(Exception):
    """The switch answered with an error the workload did not ask for."""


class ProtocolError(Exception):
    """A reply that does not belong to the request (wrong id) or a broken frame."""


class SwitchClient:
    """One blocking TCP connection speaking the switch protocol (gevent makes it async)."""

    def __init__(self, host: str, port: int, timeout_s: float = TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self._buffer = bytearray()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._buffer.clear()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _read_frame(self) -> bytes:
        assert self.sock is not None
        buf = self._buffer
        while True:
            if len(buf) >= 4:
                (size,) = _HEADER.unpack_from(buf)
                if size > MAX_FRAME:
                    raise ProtocolError(f"frame of {size} bytes")
                if len(buf) >= 4 + size:
                    payload = bytes(buf[4 : 4 + size])
                    del buf[: 4 + size]
                    return payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("switch closed the connection")
            buf += chunk

    def call(self, payload: bytes) -> tuple[Reply | ErrorReply | Any, int]:
        """Send one frame's payload; return the decoded reply and its size in bytes."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        reply = self._read_frame()
        return decode_response(reply), len(reply) + 4


def parse_host(host: str | None) -> tuple[str, int]:
    """``tcp://127.0.0.1:7100``, ``127.0.0.1:7100`` or ``127.0.0.1`` (port 7100)."""
    text = (host or "tcp://127.0.0.1:7100").removeprefix("tcp://").rstrip("/")
    name, _, port = text.rpartition(":")
    if not name:
        return text, 7100
    return name.strip("[]"), int(port)


def judge(kind: str, rid: int | None, reply: Any) -> Exception | None:
    """None when the reply is what this kind of submission should get."""
    if isinstance(reply, Reply):
        if reply.id != rid:
            return ProtocolError(f"reply id {reply.id}, expected {rid}")
        return None  # approved, declined, failed: all are answers
    if isinstance(reply, ErrorReply):
        expected = {"invalid": "invalid", "malformed": "malformed"}.get(kind)
        if reply.code == expected:
            return None
        return SwitchError(f"{reply.code}: {reply.message}")
    return ProtocolError(f"unexpected reply {type(reply).__name__}")


class SwitchUser(User):
    """A client of one channel. Subclasses set ``channel``; weights follow the workload."""

    abstract = True
    channel: Channel = "card"
    host = "tcp://127.0.0.1:7100"
    if os.environ.get("PAYSWITCH_THROUGHPUT"):
        wait_time = constant_throughput(float(os.environ["PAYSWITCH_THROUGHPUT"]))
    else:
        wait_time = constant(float(os.environ.get("PAYSWITCH_WAIT_S", "0")))

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        runner = environment.runner
        worker = getattr(runner, "worker_index", 0) if runner is not None else 0
        number = next(_user_numbers)
        self.workload = SpecWorkload(
            WORKLOAD,
            derive_seed(SEED, "locust", worker, number),
            key_prefix=f"{RUN_TAG}w{worker}u{number}-",
            pool_seed=SEED,
        )
        host, port = parse_host(self.host)
        self.client = SwitchClient(host, port)
        self._ids = itertools.count(1)
        self._fire = environment.events.request.fire

    def on_start(self) -> None:
        try:
            self.client.connect()
        except OSError as exc:
            self._fire(
                request_type="connect",
                name=self.channel,
                response_time=0.0,
                response_length=0,
                exception=exc,
                context={},
            )

    def on_stop(self) -> None:
        self.client.close()

    @task
    def pay(self) -> None:
        item, kind = self.workload.next_item(self.channel)
        if isinstance(item, bytes):
            rid: int | None = None
            payload = item
            request_type, name = "raw", "malformed"
        else:
            assert isinstance(item, PaymentRequest)
            rid = next(self._ids)
            payload = _encode(Pay(rid, item))
            request_type, name = "pay", item.channel
        started = time.perf_counter()
        length = 0
        try:
            reply, length = self.client.call(payload)
            exception = judge(kind, rid, reply)
        except (OSError, ConnectionError, ProtocolError, msgspec.DecodeError) as exc:
            exception = exc
            self.client.close()  # reconnect on the next request
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self._fire(
            request_type=request_type,
            name=name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exception,
            context={"kind": kind},
        )


def _weight(channel: Channel) -> int:
    share = WORKLOAD.channel_shares()[channel]
    return max(1, round(share * 100)) if share > 0 else 0


class CardUser(SwitchUser):
    channel: Channel = "card"
    weight = _weight("card")
    abstract = weight == 0


class SwiftUser(SwitchUser):
    channel: Channel = "swift"
    weight = _weight("swift")
    abstract = weight == 0


class QrUser(SwitchUser):
    channel: Channel = "qr"
    weight = _weight("qr")
    abstract = weight == 0


# --- optional LoadTestShape, chosen by PAYSWITCH_SHAPE ----------------------------------------

if os.environ.get("PAYSWITCH_SHAPE"):
    import locust_shapes

    SelectedShape = locust_shapes.select(os.environ["PAYSWITCH_SHAPE"])


# --- CPU accounting for bench/bench_loadgen.py ------------------------------------------------

_cpu_marks: dict[str, float] = {}
_environment: Environment | None = None


@events.init.add_listener
def _keep_environment(environment: Environment, **_kwargs: Any) -> None:
    global _environment
    _environment = environment


@events.spawning_complete.add_listener
def _mark_start(user_count: int, **_kwargs: Any) -> None:
    env = _environment
    if env is not None and env.runner is not None and "cpu0" not in _cpu_marks:
        _cpu_marks["cpu0"] = time.process_time()
        _cpu_marks["t0"] = time.perf_counter()
        _cpu_marks["n0"] = env.runner.stats.total.num_requests


@events.test_stop.add_listener
def _write_cpu_report(environment: Environment, **_kwargs: Any) -> None:
    path = os.environ.get("PAYSWITCH_CPU_REPORT")
    if not path or "cpu0" not in _cpu_marks or environment.runner is None:
        return
    stats = environment.runner.stats.total
    report = {
        "cpu_s": time.process_time() - _cpu_marks["cpu0"],
        "wall_s": time.perf_counter() - _cpu_marks["t0"],
        "requests": stats.num_requests - int(_cpu_marks["n0"]),
        "failures": stats.num_failures,
        "users": environment.runner.user_count,
    }
    Path(path).write_text(json.dumps(report))
