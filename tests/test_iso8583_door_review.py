"""Review of the ISO 8583 door: repeats of reversed payments, and format errors the
acquirer can match.

1. A repeat of an 0100 whose 0400 was accepted replayed the stored approval (00 and the
   auth code) until the resolver had reversed it at the issuer: ~50 ms with a live
   issuer, for as long as the issuer was unreachable otherwise, and across a restart.
   No second booking (the card network's book and the journal below say so), but the
   acquirer heard "approved" for a payment being undone. docs/iso8583-acquirer.md: a
   repeat of a reversed payment is 68, never 00.
2. A bitmap naming a field the switch does not know (DE60) was answered 30 with no DE11
   or DE41: the acquirer matches answers on MTI class + DE11 + DE41 and could not.

The switch runs in-process (tests/conftest.py) with its stand-in networks, so the card
network's book can be read; the client is tests/test_iso8583_door.py's spec dict.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import iso8583
import msgspec
import pytest

from switch.adapters.fakenet import StandInNetwork
from switch.protocols import iso8583_acquirer
from switch.serve.config import SwitchConfig
from tests.conftest import RunningSwitch, make_config, start_switch
from tests.test_iso8583_door import _f, auth, make_spec, reversal
from tests.test_server_bounds import _until

pytestmark = pytest.mark.anyio

ASCII = make_spec(False)
BINARY = make_spec(True)
KEY = "iso:412345:TERM0042:{stan:06d}:1125101500"


def _with_extras(spec: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The acquirer's spec plus fields the switch's lacks: DE35 (track 2), DE60 (private
    use, LLLVAR) and DE100 (receiving institution, in the secondary bitmap)."""
    return {**spec, "60": _f(3, 999), "35": _f(2, 37), "100": _f(2, 11)}


def _config(tmp_path: Path, door: str = "") -> SwitchConfig:
    config = make_config(tmp_path, f"[iso8583]\nenabled = true\nport = 0\n{door}\n")
    # Every payment approved: the test is about what happens after an approval.
    return msgspec.structs.replace(config, networks=[
        msgspec.structs.replace(n, decline_rate=0.0, error_rate=0.0) for n in config.networks])


async def _exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return data


class _Client:
    def __init__(self, stream: anyio.abc.ByteStream, spec: dict[str, dict[str, Any]]) -> None:
        self.stream = stream
        self.spec = spec

    async def send(self, doc: dict[str, str], spec: dict[str, dict[str, Any]] | None = None
                   ) -> None:
        raw, _ = iso8583.encode(dict(doc), spec or self.spec)
        await self.stream.send(struct.pack(">H", len(raw)) + bytes(raw))

    async def receive(self, timeout_s: float = 5) -> dict[str, str]:
        with anyio.fail_after(timeout_s):
            (size,) = struct.unpack(">H", await _exactly(self.stream, 2))
            data = await _exactly(self.stream, size)
        doc, _ = iso8583.decode(bytearray(data), self.spec)
        return doc

    async def call(self, doc: dict[str, str], spec: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, str]:
        await self.send(doc, spec)
        return await self.receive()


async def _connect(switch: RunningSwitch, spec: dict[str, dict[str, Any]] = ASCII) -> _Client:
    return _Client(await anyio.connect_tcp("127.0.0.1", switch.endpoints.iso8583_port), spec)


def _journal(tmp_path: Path, key: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(f"file:{tmp_path / 'journal.db'}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT payment_id, kind, status FROM journal"
                               " WHERE idempotency_key = ? ORDER BY seq", (key,)))
    finally:
        db.close()


def _card(adapters: dict[str, Any]) -> StandInNetwork:
    card = adapters["standin-card"]
    assert isinstance(card, StandInNetwork)
    return card


def _not_approved(answer: dict[str, str], mti: str = "0110") -> None:
    assert answer["t"] == mti and answer["39"] == "68" and "38" not in answer, answer


# ------------------------------------------------------------------ 1. repeat after a reversal


async def test_a_repeat_right_after_its_reversal_is_68_not_a_replayed_approval(
    tmp_path: Path,
) -> None:
    # The newcomer's sequence, issuer healthy: the repeat lands inside the resolver's
    # first delay (50 ms), while the stored answer is still the approval (the next test
    # holds that window open, whatever the machine's speed).
    config = _config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        card = _card(switch.app.adapters)
        client = await _connect(switch)
        request, key = auth(400), KEY.format(stan=400)
        first = await client.call(request)
        assert first["39"] == "00" and first["38"].strip()
        assert (await client.call(reversal(request, 401)))["39"] == "00"
        _not_approved(await client.call(request))
        _not_approved(await client.call({**request, "t": "0101"}))
        # Money: the repeat was a replay, not a second authorization; the one approval is
        # reversed at the issuer, and nothing is booked twice.
        await _until(lambda: card.reversals == 1)
        assert card.approvals_by_key == {key: 0} and card.booked_twice == 0
        _not_approved(await client.call(request))  # and after the reversal, as before
        # The journal: one payment under the key (intent, approval, the reversal's intent
        # again, reversed), no second authorization.
        await _until(lambda: _journal(tmp_path, key)[-1][2] == "reversed")
        rows = _journal(tmp_path, key)
        assert len({pid for pid, _, _ in rows}) == 1
        assert [(kind, status) for _, kind, status in rows] == [
            ("intent", "sent"), ("final", "approved"), ("intent", "sent"),
            ("final", "reversed")]
        await client.stream.aclose()
        switch.app.request_shutdown()


async def test_a_repeat_while_the_issuer_cannot_be_told_of_the_reversal_is_68(
    tmp_path: Path,
) -> None:
    # The issuer unreachable: the reversal stays under way (the resolver retries for up to
    # 10 minutes), and every repeat meanwhile was answered 00 with the auth code.
    config = _config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        card = _card(switch.app.adapters)
        client = await _connect(switch)
        request, key = auth(410), KEY.format(stan=410)
        assert (await client.call(request))["39"] == "00"
        card.down = True
        assert (await client.call(reversal(request, 411)))["39"] == "00"
        await anyio.sleep(0.3)  # past the resolver's first attempts
        _not_approved(await client.call(request))
        _not_approved(await client.call({**request, "t": "0101"}))
        # The reversal's repeat is still 00 and not reversed twice.
        assert (await client.call(reversal(request, 411, "0401")))["39"] == "00"
        assert card.approvals_by_key == {key: 1} and card.reversals == 0
        card.down = False
        await _until(lambda: card.reversals == 1)
        _not_approved(await client.call(request))
        assert card.approvals_by_key == {key: 0} and card.booked_twice == 0
        await client.stream.aclose()
        switch.app.request_shutdown()


async def test_a_repeat_after_a_restart_with_the_reversal_still_under_way_is_68(
    tmp_path: Path,
) -> None:
    # The door's memory is gone after a restart; the journal still holds the accepted
    # reversal (the payment's intent journaled again after its approval).
    config = _config(tmp_path)
    request, key, other = auth(420), KEY.format(stan=420), auth(422)
    for boot in (1, 2):
        adapters: dict[str, Any] = {n.name: StandInNetwork(n) for n in config.networks}
        card = _card(adapters)
        card.down = boot == 2  # the issuer is still unreachable after the restart
        async with anyio.create_task_group() as tg:
            switch = await start_switch(tg, config, adapters)
            client = await _connect(switch)
            if boot == 1:
                assert (await client.call(request))["39"] == "00"
                assert (await client.call(other))["39"] == "00"
                card.down = True
                assert (await client.call(reversal(request, 421)))["39"] == "00"
            else:
                assert [kind for _, kind, _ in _journal(tmp_path, key)] == [
                    "intent", "final", "intent"]
                _not_approved(await client.call(request))
                _not_approved(await client.call({**request, "t": "0101"}))
                # A repeat of an approval that was not reversed is still its approval.
                assert (await client.call(other))["39"] == "00"
            await client.stream.aclose()
            switch.app.request_shutdown()


async def test_a_repeat_pipelined_behind_its_reversal_is_not_approved(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        client = await _connect(switch)
        request = auth(430)
        assert (await client.call(request))["39"] == "00"
        await client.send(reversal(request, 431))
        await client.send(request)
        answers = {a["t"]: a for a in [await client.receive(), await client.receive()]}
        assert answers["0410"]["39"] == "00"
        _not_approved(answers["0110"])
        # A reversal refused (wrong amount) reverses nothing: the repeat stays approved.
        other = auth(432)
        assert (await client.call(other))["39"] == "00"
        assert (await client.call({**reversal(other, 433), "4": "000000000001"}))["39"] == "13"
        assert (await client.call(other))["39"] == "00"
        await client.stream.aclose()
        switch.app.request_shutdown()


# ------------------------------------------------------------------ 2. format errors matchable


@pytest.mark.parametrize("spec", [ASCII, BINARY], ids=["ascii", "binary"])
async def test_an_unknown_field_is_answered_30_with_the_fields_the_acquirer_matches_on(
    tmp_path: Path, spec: dict[str, dict[str, Any]],
) -> None:
    bitmap = "binary" if spec is BINARY else "ascii"
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, _config(tmp_path, f'bitmap = "{bitmap}"'))
        client = await _connect(switch, spec)
        extended = _with_extras(spec)
        request = {**auth(500, mti="0200"), "60": "PRIVATE USE"}
        answer = await client.call(request, extended)
        assert answer["t"] == "0210" and answer["39"] == "30", answer
        # The matching key (MTI class + DE11 + DE41) and the rest the door echoes.
        for de in ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"):
            assert answer[de] == request[de], de
        # A reversal naming an unknown DE100 (secondary bitmap): DE90 is read too.
        original = auth(501)
        rev = {**reversal(original, 502), "100": "12345"}
        answer = await client.call(rev, extended)
        assert answer["t"] == "0410" and answer["39"] == "30"
        assert (answer["11"], answer["41"], answer["90"]) == (rev["11"], rev["41"], rev["90"])
        # An unknown field between DE11 and DE41 (DE35): DE41 comes after a field of
        # unknown length and cannot be located; what precedes it is echoed.
        answer = await client.call({**auth(503), "35": "4111111111111111=2812"}, extended)
        assert answer["39"] == "30" and answer["11"] == "000503" and "41" not in answer
        # A message cut short inside DE41: DE41 was answered as "", which cannot be
        # encoded, so no answer left at all; the fields read before it are echoed.
        raw, _ = iso8583.encode(auth(505), spec)
        cut = bytes(raw)[:bytes(raw).index(b"TERM0042") + 4]
        await client.stream.send(struct.pack(">H", len(cut)) + cut)
        answer = await client.receive(timeout_s=2)
        assert answer["t"] == "0110" and answer["39"] == "30"
        assert answer["11"] == "000505" and answer["37"] == "RRN000000505"
        assert "41" not in answer
        # Nothing was taken as a payment, and the connection is still up.
        assert switch.app.iso_door is not None
        assert switch.app.iso_door.counts["format_error"] == 4
        echo = await client.call({"t": "0800", "7": "1125101500", "11": "000504", "70": "301"})
        assert echo["39"] == "00"
        await client.stream.aclose()
        switch.app.request_shutdown()


def test_readable_fields_stop_at_the_first_field_that_cannot_be_located() -> None:
    spec = make_spec(False)
    raw, _ = iso8583.encode({**auth(600), "60": "X"}, _with_extras(ASCII))
    readable_fields = iso8583_acquirer.readable_fields
    fields = readable_fields(bytes(raw), spec)
    assert fields[11] == "000600" and fields[41] == "TERM0042" and 60 not in fields
    # A length prefix that is not digits ends the reading there, as the codec's does.
    bad = bytes(raw).replace(b"06412345", b" 6412345", 1)
    assert 32 not in readable_fields(bad, spec) and 11 in readable_fields(bad, spec)
    # Garbage reads as nothing rather than raising.
    assert readable_fields(b"0200", spec) == {}
    assert readable_fields(b"0200\xff\xff", spec) == {}
    assert iso8583_acquirer._StopAtUnknown(spec)["60"]["max_len"] > 0xFFFF
