"""The switch's ISO 8583 acquirer port, driven by an independent client.

The client below is written from the 1987 field table alone with pyiso8583 and its own
spec dict: it imports nothing from ``switch`` (the switch is started as a process via
the harness helper only). If the switch's codec and this spec disagree about any field,
these tests fail, which is the point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import iso8583
import pytest

# -------------------------------------------------------------- the independent client


def _f(len_type: int, max_len: int, data_enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": data_enc, "len_enc": "ascii", "len_type": len_type, "max_len": max_len,
            "desc": ""}


def make_spec(binary_bitmap: bool) -> dict[str, dict[str, Any]]:
    bitmap = _f(0, 8, "b") if binary_bitmap else _f(0, 16)
    return {
        "h": _f(0, 0), "t": _f(0, 4), "p": bitmap, "1": bitmap,
        "2": _f(2, 19), "3": _f(0, 6), "4": _f(0, 12), "7": _f(0, 10), "11": _f(0, 6),
        "12": _f(0, 6), "13": _f(0, 4), "14": _f(0, 4), "18": _f(0, 4), "22": _f(0, 3),
        "32": _f(2, 11), "37": _f(0, 12), "38": _f(0, 6), "39": _f(0, 2), "41": _f(0, 8),
        "42": _f(0, 15), "43": _f(0, 40), "49": _f(0, 3), "70": _f(0, 3), "90": _f(0, 42),
    }


class Acquirer:
    """A blocking ISO 8583 client: 2-byte big-endian length, one socket."""

    def __init__(self, port: int, binary_bitmap: bool = False) -> None:
        self.spec = make_spec(binary_bitmap)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)

    def send(self, doc: dict[str, str]) -> None:
        raw, _ = iso8583.encode(dict(doc), self.spec)
        self.sock.sendall(struct.pack(">H", len(raw)) + raw)

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">H", len(payload)) + payload)

    def receive(self) -> dict[str, str]:
        size = struct.unpack(">H", self._exactly(2))[0]
        doc, _ = iso8583.decode(self._exactly(size), self.spec)
        return doc

    def call(self, doc: dict[str, str]) -> dict[str, str]:
        self.send(doc)
        return self.receive()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def auth(stan: int, pan: str = "4111111111111111", amount: int = 1250,
         mti: str = "0100") -> dict[str, str]:
    return {
        "t": mti, "2": pan, "3": "000000", "4": f"{amount:012d}", "7": "1125101500",
        "11": f"{stan:06d}", "12": "101500", "13": "1125", "14": "2812", "18": "5411",
        "22": "051", "32": "412345", "37": f"RRN{stan:09d}", "41": "TERM0042",
        "42": "MERCHANT0000042", "49": "840",
    }


def reversal(original: dict[str, str], stan: int, mti: str = "0400") -> dict[str, str]:
    doc = {k: original[k] for k in ("2", "3", "4", "32", "37", "41", "42", "49")}
    doc.update({"t": mti, "7": "1125101600", "11": f"{stan:06d}",
                "90": original["t"] + original["11"] + original["7"]
                + original["32"].zfill(11) + "0" * 11})
    return doc


# -------------------------------------------------------------- the switch as a process

CONFIG = """
seed = 7
[server]
port = 0
[admin]
port = 0
[journal]
path = "{journal}"
[iso8583]
enabled = true
port = 0
bitmap = "{bitmap}"
"""


def start(tmp: Path, bitmap: str = "ascii") -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    config = tmp / "switch.toml"
    config.write_text(CONFIG.format(journal=tmp / "journal.db", bitmap=bitmap))
    ready = tmp / "ready.json"
    ready.unlink(missing_ok=True)
    with (tmp / "switch.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switch.cli.main", "serve", "--demo", "--config",
             str(config), "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, (tmp / "switch.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "switch did not become ready"
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _last_status(journal: Path, key: str) -> str:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status FROM journal WHERE idempotency_key = ? AND kind = 'final'"
                         " ORDER BY seq DESC LIMIT 1", (key,)).fetchone()
    finally:
        db.close()
    return str(row[0]) if row else ""


@pytest.fixture
def switch(tmp_path: Path) -> Any:
    proc, endpoints = start(tmp_path)
    yield endpoints
    stop(proc)


# -------------------------------------------------------------- tests


@pytest.mark.parametrize("bitmap", ["ascii", "binary"])
def test_0100_0400_0800_get_correct_answers(tmp_path: Path, bitmap: str) -> None:
    proc, endpoints = start(tmp_path, bitmap)
    client = Acquirer(endpoints["iso8583_port"], binary_bitmap=bitmap == "binary")
    try:
        echo = client.call({"t": "0800", "7": "1125101500", "11": "000001", "70": "301"})
        assert echo["t"] == "0810" and echo["39"] == "00" and echo["70"] == "301"
        assert echo["11"] == "000001"

        request = auth(2)
        answer = client.call(request)
        assert answer["t"] == "0110"
        assert answer["39"] == "00", answer
        # The key fields the acquirer matches on come back unchanged.
        for de in ("11", "41", "7", "32", "37", "4", "49"):
            assert answer[de] == request[de], de
        assert answer["38"].strip()

        # The same 0100 again (or its repeat 0101) replays the stored answer.
        assert client.call(request)["39"] == "00"
        repeat = client.call({**request, "t": "0101"})
        assert repeat["t"] == "0110" and repeat["38"] == answer["38"]
        # Same key fields, other amount: a duplicate transmission, refused.
        assert client.call({**request, "4": "000000009999"})["39"] == "94"

        financial = client.call(auth(3, mti="0200"))
        assert financial["t"] == "0210" and financial["39"] == "00"

        rev = client.call(reversal(request, 4))
        assert rev["t"] == "0410" and rev["39"] == "00" and rev["11"] == "000004"
        # Its repeat is answered the same, and does not reverse twice.
        assert client.call(reversal(request, 4, "0401"))["39"] == "00"
        advice = client.call(reversal(auth(3, mti="0200"), 5, "0420"))
        assert advice["t"] == "0430" and advice["39"] == "00"
        unknown = client.call(reversal(auth(999), 6))
        assert unknown["t"] == "0410" and unknown["39"] == "25"

        # The reversal reached the journal: the original's last result is "reversed".
        key = "iso:412345:TERM0042:000002:1125101500"
        deadline = time.monotonic() + 10
        while _last_status(tmp_path / "journal.db", key) != "reversed":
            assert time.monotonic() < deadline, _last_status(tmp_path / "journal.db", key)
            time.sleep(0.05)

        # Real codes: a PAN failing Luhn is an invalid card (14), an amount of 0 a
        # format error (30).
        bad = client.call(auth(7, pan="4111111111111112"))
        assert bad["t"] == "0110" and bad["39"] == "14"
        assert client.call(auth(8, amount=0))["39"] == "30"
    finally:
        client.close()
        stop(proc)


def test_whole_reversals_only_purchases_only_and_no_00_for_what_was_reversed(
    switch: dict[str, int], tmp_path: Path,
) -> None:
    client = Acquirer(switch["iso8583_port"])
    try:
        request = auth(31)
        assert client.call(request)["39"] == "00"
        key = "iso:412345:TERM0042:000031:1125101500"
        # A reversal of 0.01 of a 12.50 payment released the whole hold.
        partial = client.call({**reversal(request, 32), "4": "000000000001"})
        assert partial["t"] == "0410" and partial["39"] == "13"
        time.sleep(0.3)
        assert _last_status(tmp_path / "journal.db", key) == "approved"
        assert client.call(reversal(request, 33))["39"] == "00"
        deadline = time.monotonic() + 10
        while _last_status(tmp_path / "journal.db", key) != "reversed":
            assert time.monotonic() < deadline, _last_status(tmp_path / "journal.db", key)
            time.sleep(0.05)
        # Its repeat now: the stored result's reason is 00 (the reversal went through),
        # and the merchant would complete a sale with nothing held.
        repeat = client.call({**request, "t": "0101"})
        assert repeat["t"] == "0110" and repeat["39"] == "68" and "38" not in repeat
        # A refund (DE3 20xxxx) was approved and booked as a purchase.
        refund = client.call({**auth(34), "3": "200000"})
        assert refund["t"] == "0110" and refund["39"] == "12"
    finally:
        client.close()


def test_unparseable_messages_get_a_format_error_and_the_connection_survives(
    switch: dict[str, int],
) -> None:
    client = Acquirer(switch["iso8583_port"])
    try:
        # A numeric field holding letters: the switch still reads MTI, DE11 and DE41.
        doc = auth(11)
        doc["4"] = "00000000ABCD"
        answer = client.call(doc)
        assert answer["t"] == "0110" and answer["39"] == "30"
        assert answer["11"] == "000011" and answer["41"] == "TERM0042"
        # Missing a required field (DE49).
        doc = auth(12)
        del doc["49"]
        assert client.call(doc)["39"] == "30"
        # Truncated message: only the MTI is readable.
        client.send_raw(b"0100\xff\xff")
        assert client.receive()["39"] == "30"
        # Garbage without a readable MTI cannot be answered; the stream stays in sync.
        client.send_raw(b"zz")
        assert client.call({"t": "0800", "7": "1125101500", "11": "000013", "70": "301"})[
            "39"] == "00"
        # Counted on the switch's own series, like a bad msgpack frame.
        url = f"http://127.0.0.1:{switch['admin_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        assert 'payswitch_frame_errors_total{kind="malformed"} 4.0' in metrics
    finally:
        client.close()


def test_kill_9_acknowledged_payments_survive_and_repeats_return_the_original(
    tmp_path: Path,
) -> None:
    proc, endpoints = start(tmp_path)
    port = endpoints["iso8583_port"]
    client = Acquirer(port)
    acked: dict[int, dict[str, str]] = {}
    requests = {stan: auth(stan, amount=100 + stan) for stan in range(1, 3001)}
    try:
        # Pipelined: send in bursts, read answers as they come, kill mid-stream.
        sent = 0
        for stan, request in requests.items():
            client.send(request)
            sent += 1
            if stan % 100 == 0:
                for _ in range(50):
                    answer = client.receive()
                    acked[int(answer["11"])] = answer
            if len(acked) >= 400:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        client.close()
    assert proc.returncode == -signal.SIGKILL
    assert sent > len(acked) >= 400

    proc, endpoints = start(tmp_path)
    try:
        db = sqlite3.connect(tmp_path / "journal.db")
        finals = {key for (key,) in db.execute(
            "SELECT idempotency_key FROM journal WHERE kind = 'final'")}
        for stan in acked:
            assert f"iso:412345:TERM0042:{stan:06d}:1125101500" in finals, stan
        client = Acquirer(endpoints["iso8583_port"])
        try:
            for stan, first in list(acked.items())[:200]:
                again = client.call(requests[stan])
                assert again["39"] == first["39"]
                assert again.get("38") == first.get("38"), "processed again after restart"
        finally:
            client.close()
    finally:
        stop(proc)


def test_an_acknowledged_reversal_survives_kill_9(tmp_path: Path) -> None:
    proc, endpoints = start(tmp_path)
    client = Acquirer(endpoints["iso8583_port"])
    try:
        request = auth(21)
        assert client.call(request)["39"] == "00"
        assert client.call(reversal(request, 22))["39"] == "00"
        # Killed at once: the resolver waits 50 ms before telling the issuer, so the
        # reversal is (almost always) still only an intent in the journal.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        client.close()
    proc, endpoints = start(tmp_path)
    try:
        key = "iso:412345:TERM0042:000021:1125101500"
        deadline = time.monotonic() + 15
        while _last_status(tmp_path / "journal.db", key) != "reversed":
            assert time.monotonic() < deadline, "the acknowledged reversal was lost"
            time.sleep(0.05)
        client = Acquirer(endpoints["iso8583_port"])
        try:  # the reversal's repeat after the restart: nothing left to undo, still 00
            assert client.call(reversal(request, 22, "0401"))["39"] == "00"
        finally:
            client.close()
    finally:
        stop(proc)
