"""A non-ASCII key journaled by the HTTP door before it read keys as UTF-8 is still matched.

Before, the HTTP door keyed a payment by Starlette's latin-1 reading of the
``Idempotency-Key`` header: a client sending "café" (UTF-8) was journaled as "cafÃ©", and
start-up restores the idempotency index with that key. After the door read the header as
UTF-8, the same client retrying the same payment sent "café", missed the index and was
booked a second time. Now a non-ASCII key that misses is looked up in its legacy form too:
the retry is a replay of the stored payment (another body: a conflict), as before the
upgrade, for as long as the index remembers the old key.

The legacy payment is journaled through the msgpack door under the latin-1 form: the very
request the old HTTP door made of it (``to_request(body, header)``). The switch is then
restarted on that journal, as an upgrade is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from switch import reasons
from switch.protocols.wire import Pay, Reply
from switch.serve.config import SwitchConfig
from switch.serve.frontcore import FrontCore
from tests.conftest import RunningSwitch, make_config, start_switch
from tests.test_idempotency_key_one_key import BODY, OTHER_BODY, http_post, msgpack, payment

pytestmark = pytest.mark.anyio

#: UTF-8 keys a client sends, and what the old door journaled them as.
KEYS = ["café-注文-1", "ключ-🙂"]


def legacy(key: str) -> str:
    return key.encode("utf-8").decode("latin-1")


def _payments(config: SwitchConfig) -> dict[str, set[str]]:
    """The journal's payment ids by idempotency key (the live table, after shutdown)."""
    db = sqlite3.connect(config.journal.path)
    try:
        rows = db.execute("SELECT idempotency_key, payment_id FROM journal").fetchall()
    finally:
        db.close()
    found: dict[str, set[str]] = {}
    for key, payment_id in rows:
        found.setdefault(key, set()).add(payment_id)
    return found


async def _journal_legacy(config: SwitchConfig) -> dict[str, str]:
    """Boot 1, before the upgrade: each key booked under its latin-1 form; payment ids."""
    booked: dict[str, str] = {}
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        for n, key in enumerate(KEYS):
            reply = await msgpack(switch, Pay(n, payment(legacy(key), BODY)))
            assert isinstance(reply, Reply) and not reply.replay, reply
            booked[key] = reply.result.payment_id
        switch.app.request_shutdown()
    return booked


def _front(switch: RunningSwitch) -> FrontCore:
    assert switch.app.front is not None
    return switch.app.front


async def test_a_key_journaled_in_its_latin1_form_is_a_replay_after_the_upgrade(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    booked = await _journal_legacy(config)
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)  # boot 2: the index restored from the journal
        front = _front(switch)
        for key in KEYS:
            assert front.indexed(legacy(key)) and not front.indexed(key)
            replay = await http_post(switch, key.encode(), BODY)
            assert replay.status_code == 201, replay.text
            assert replay.headers.get("idempotent-replayed") == "true"
            resource = replay.json()
            assert resource["payment_id"] == booked[key]
            # The stored result, as first answered: under the key it was booked by.
            assert resource["idempotency_key"] == legacy(key)
            conflict = await http_post(switch, key.encode(), OTHER_BODY)
            assert conflict.status_code == 422, conflict.text
            assert conflict.json()["code"] == reasons.E_IDEMPOTENCY_CONFLICT
            # Nothing was booked under the UTF-8 key.
            assert not front.indexed(key)
        switch.app.request_shutdown()
    journaled = _payments(config)
    for key in KEYS:
        assert journaled[legacy(key)] == {booked[key]}
        assert key not in journaled


async def test_a_utf8_key_already_held_wins_and_a_new_one_is_booked_as_utf8(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    booked = await _journal_legacy(config)
    held, _ = KEYS
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        front = _front(switch)
        # A payment under the UTF-8 key itself (through the msgpack door, with another
        # body): the HTTP door's key is that one, not the legacy form.
        own = await msgpack(switch, Pay(7, payment(held, OTHER_BODY)))
        assert isinstance(own, Reply) and not own.replay, own
        replay = await http_post(switch, held.encode(), OTHER_BODY)
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["payment_id"] == own.result.payment_id != booked[held]
        assert replay.json()["idempotency_key"] == held
        # A non-ASCII key never journaled before: booked under its UTF-8 reading.
        fresh = "naïve-1"
        first = await http_post(switch, fresh.encode(), BODY)
        assert first.status_code == 201, first.text
        assert first.headers.get("idempotent-replayed") is None
        assert first.json()["idempotency_key"] == fresh
        assert front.indexed(fresh) and not front.indexed(legacy(fresh))
        switch.app.request_shutdown()


async def test_an_ascii_key_is_unchanged(tmp_path: Path) -> None:
    config = make_config(tmp_path, "[http]\nenabled = true\nport = 0\n")
    async with anyio.create_task_group() as tg:
        switch = await start_switch(tg, config)
        first = await http_post(switch, b"order-1001", BODY)
        assert first.status_code == 201, first.text
        assert first.headers.get("idempotent-replayed") is None
        assert first.json()["idempotency_key"] == "order-1001"
        replay = await http_post(switch, b"order-1001", BODY)
        assert replay.status_code == 201, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["payment_id"] == first.json()["payment_id"]
        conflict = await http_post(switch, b"order-1001", OTHER_BODY)
        assert conflict.status_code == 422, conflict.text
        assert conflict.json()["code"] == reasons.E_IDEMPOTENCY_CONFLICT
        switch.app.request_shutdown()
