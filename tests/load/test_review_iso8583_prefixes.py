"""Review: the load generator's ISO 8583 client reads LLVAR length prefixes as strictly as
the switch does.

pyiso8583 reads a length prefix with ``int()``, which takes " 9", "+9" or "9 ": lengths
no ISO 8583 peer writes (LL is n2). The switch's decoder refuses them
(``switch.protocols.iso8583.check_length_prefixes``); the load generator matched such a
reply and counted it as a good answer, so a host writing broken prefixes looked healthy."""

from __future__ import annotations

import json
from pathlib import Path

import iso8583 as pyiso
import pytest

from loadtests.harness.iso8583_client import Iso8583Wire, load_spec
from loadtests.harness.wires import Iso8583Options
from switch.model import CardData, Party, PaymentRequest, Result, Status
from switch.protocols.iso8583 import frame
from switch.protocols.iso8583_acquirer import AcquirerCodec, payment_response

ACQUIRER = "412345"  # DE32, LLVAR: written "06412345"


def _request_and_approval(wire: Iso8583Wire) -> bytes:
    codec = AcquirerCodec()
    card = CardData(pan="4111111111111111", expiry="2812", terminal_id="T1")
    request = PaymentRequest("k1", "card", 100, "USD", Party("A"), Party("B"), card=card)
    sent = codec.decode(wire.encode(1, request, 0)[2:])
    assert sent.fields[32] == ACQUIRER
    return codec.encode(payment_response(sent, Result("P1", Status.APPROVED, "00", "AUTH01")))


def test_a_well_formed_reply_is_still_matched() -> None:
    wire = Iso8583Wire(Iso8583Options(acquirer_id=ACQUIRER))
    reply = _request_and_approval(wire)
    answers = wire.feed(0, frame(reply))
    assert [(a.rid, a.status, a.error) for a in answers] == [(1, "approved", None)]


@pytest.mark.parametrize("prefix", [b" 6", b"+6", b"6 ", b"-6"])
def test_a_reply_with_a_non_digit_length_prefix_is_undecodable(prefix: bytes) -> None:
    wire = Iso8583Wire(Iso8583Options(acquirer_id=ACQUIRER))
    reply = _request_and_approval(wire)
    good = b"06" + ACQUIRER.encode()
    assert reply.count(good) == 1
    bad = reply.replace(good, prefix + ACQUIRER.encode())
    answers = wire.feed(0, frame(bad))
    assert [(a.rid, a.status, a.error) for a in answers] == [(None, None, "undecodable_reply")]
    # The request is still waiting: a well-formed answer to it is matched afterwards.
    answers = wire.feed(0, frame(reply))
    assert [(a.rid, a.status, a.error) for a in answers] == [(1, "approved", None)]


def test_the_client_uses_the_switchs_own_check() -> None:
    import loadtests.harness.iso8583_client as client
    from switch.protocols import iso8583

    assert client.check_length_prefixes is iso8583.check_length_prefixes


def test_a_custom_spec_with_binary_length_prefixes_is_still_read(tmp_path: Path) -> None:
    # An --iso-spec may write LLVAR prefixes in binary: the digits check is for ASCII ones.
    spec = json.loads(json.dumps(load_spec(Iso8583Options())))
    spec["32"]["len_enc"] = "b"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    wire = Iso8583Wire(Iso8583Options(acquirer_id=ACQUIRER, spec_file=str(path)))
    card = CardData(pan="4111111111111111", expiry="2812", terminal_id="T1")
    request = PaymentRequest("k1", "card", 100, "USD", Party("A"), Party("B"), card=card)
    doc, _ = pyiso.decode(wire.encode(1, request, 0)[2:], spec)
    reply = {k: v for k, v in doc.items() if k not in ("p", "h")}
    reply.update({"t": "0110", "39": "00", "38": "AUTH01"})
    raw, _ = pyiso.encode(reply, spec)
    assert b"\x00\x06" + ACQUIRER.encode() in bytes(raw)  # a binary prefix
    answers = wire.feed(0, frame(bytes(raw)))
    assert [(a.rid, a.status, a.error) for a in answers] == [(1, "approved", None)]
