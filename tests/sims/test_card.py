"""Card network simulator through the switch's ISO 8583 adapter, over real TCP on port 0.

Also home of the helpers the other simulator tests share (config builders, payments,
`running()`), since this directory holds no conftest.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from channels.card import CardNetwork, CardScheme
from channels.config import CardSchemeSpec, ChannelsConfigError, config_from_dict, load_config
from channels.server import ChannelsRuntime, serve_channels
from channels.tcp import SimServer
from switch.adapters.base import NetworkReply, NotSent
from switch.adapters.factory import build_network_adapter
from switch.adapters.iso8583 import CardAdapter, network_pan, original_request
from switch.adapters.qr import QrAdapter
from switch.adapters.specs import CardAdapterConfig, QrAdapterConfig, SwiftAdapterConfig
from switch.adapters.swift import SwiftAdapter
from switch.model import CardRef, Party, Payment, QrRef, SwiftRef
from switch.protocols import emvqr, iso8583

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)
FAST: dict[str, Any] = {"latency": {"median_ms": 1.0, "sigma": 0.2, "max_ms": 20.0}}

# --------------------------------------------------------------------------- payments


def card_ref(n: int, *, token: str = "tok-a", bin: str = "411111", last4: str = "1111",
             expiry: str = "2812", terminal: str = "TERM0001") -> CardRef:
    return CardRef(token=token, last4=last4, bin=bin, expiry=expiry, terminal_id=terminal,
                   merchant_id="MERCHANT01", mcc="5999", stan=f"{n % 1_000_000:06d}",
                   rrn=f"01{n:010d}")


def card_payment(n: int, amount: int = 1000, **card: Any) -> Payment:
    return Payment(f"P1-{n}", f"k{n}", "card", amount, "USD", Party("ACCT000001"),
                   Party("MERCH00001"), AT, card=card_ref(n, **card))


def uetr(n: int) -> str:
    return str(uuid.UUID(int=n * 7919 + 1, version=4))


def swift_payment(n: int, amount: int = 100_000, *, creditor_agent: str = "BNPAFRPP",
                  debtor_agent: str = "DEUTDEFF", payee: str = "FR1420041010050500013M02606",
                  payer: str = "DE89370400440532013000", currency: str = "EUR") -> Payment:
    return Payment(f"P1-{n}", f"k{n}", "swift", amount, currency, Party(payer, "Payer"),
                   Party(payee, "Payee"), AT,
                   swift=SwiftRef(debtor_agent, creditor_agent, uetr(n), f"E2E-{n}"))


def qr_code(merchant: str = "M0000007", amount: str | None = None, currency: str = "156",
            gui: str = "com.payswitch.qr") -> str:
    return emvqr.build(emvqr.MerchantQr(
        merchant_accounts=(emvqr.MerchantAccount(
            tag="26", template=(emvqr.Tlv("00", gui), emvqr.Tlv("01", merchant))),),
        mcc="5812", currency=currency, country="CN", merchant_name="TEST SHOP",
        merchant_city="SHANGHAI", initiation="12" if amount else "11", amount=amount))


def qr_payment(n: int, amount: int = 2500, payload: str | None = None,
               currency: str = "CNY") -> Payment:
    return Payment(f"P1-{n}", f"k{n}", "qr", amount, currency, Party("ACCT000002"),
                   Party("MERCH00002"), AT, qr=QrRef(payload or qr_code(), f"P1-{n}"))


# --------------------------------------------------------------------------- simulators


def account(ref: CardRef, balance: int, **extra: Any) -> dict[str, Any]:
    return {"pan": network_pan(ref), "balance": balance, **extra}


def card_scheme(accounts: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    issuer = {"name": "alpha", "bins": ["41", "42"], "balance_min": 1_000_000,
              "balance_max": 2_000_000, "accounts": accounts or []}
    return {"name": "paynet", "seed": 3, "issuers": [issuer], **extra}


def network(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    net: dict[str, Any] = {"name": name, "kind": kind, "behaviour": FAST, "fault_poll_s": 0.01}
    if kind == "card":
        net["scheme"] = "paynet"
    net.update(extra)
    return net


def config(*networks: dict[str, Any], scheme: dict[str, Any] | None = None,
           admin: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = {"networks": list(networks), "admin": {"enabled": admin}}
    if any(net["kind"] == "card" for net in networks):
        cfg["card_schemes"] = [scheme or card_scheme()]
    return cfg


ADAPTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "card": {"echo_interval_s": 0.05, "echo_timeout_s": 0.25, "reversal_timeout_s": 0.25,
             "reversal_repeats": 2},
    "swift": {},
    "qr": {},
}
_ADAPTER_CLASSES = {"card": CardAdapterConfig, "swift": SwiftAdapterConfig, "qr": QrAdapterConfig}


class Sims:
    def __init__(self, runtime: ChannelsRuntime, adapters: dict[str, Any]) -> None:
        self.runtime = runtime
        self.adapters = adapters

    def card(self, name: str = "card") -> CardAdapter:
        adapter = self.adapters[name]
        assert isinstance(adapter, CardAdapter)
        return adapter

    def swift(self, name: str = "swift") -> SwiftAdapter:
        adapter = self.adapters[name]
        assert isinstance(adapter, SwiftAdapter)
        return adapter

    def qr(self, name: str = "qr") -> QrAdapter:
        adapter = self.adapters[name]
        assert isinstance(adapter, QrAdapter)
        return adapter

    def server(self, name: str) -> SimServer:
        return self.runtime.networks[name]

    @property
    def scheme(self) -> CardScheme:
        return self.runtime.card_schemes["paynet"]

    def inject(self, kind: str, endpoint: str, **params: Any) -> int:
        from channels.faults import Fault

        fault = msgspec.convert({"kind": kind, "endpoint": endpoint, **params}, Fault)
        return self.runtime.timeline.inject(fault, anyio.current_time())

    def clear(self, endpoint: str) -> None:
        self.runtime.timeline.clear_endpoint(endpoint)


def example_config_file(tmp_path: Path, out_dir: Path) -> Path:
    """examples/channels.toml for `channels serve` in a test: every port 0 and the
    settlement files in ``out_dir`` (var/settlement under the repository is locked by
    whichever simulator of the other pytest worker runs there)."""
    text = (ROOT / "examples" / "channels.toml").read_text()
    for port in ("7280", "7201", "7202", "7203", "7204"):
        text = text.replace(f"port = {port}", "port = 0")
    text = text.replace('out_dir = "var/settlement"', f'out_dir = "{out_dir}"')
    assert f'out_dir = "{out_dir}"' in text, "examples/channels.toml changed its out_dir"
    config = tmp_path / "channels.toml"
    config.write_text(text)
    return config


@asynccontextmanager
async def running(cfg: dict[str, Any],
                  adapter_options: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> AsyncIterator[Sims]:
    """The simulators of ``cfg`` on port 0, and one started adapter per network.

    Settlement files go to a directory of their own unless ``cfg`` names one: the default
    (var/settlement under the cwd) is shared by the tests of both pytest workers, and two
    simulators writing swift-0001.xml there at once renamed each other's temporary file
    away (FileNotFoundError at the shutdown cut)."""
    with tempfile.TemporaryDirectory(prefix="payswitch-sims-") as out_dir:
        settlement = {"out_dir": out_dir, **cfg.get("settlement", {})}
        channels = config_from_dict({**cfg, "settlement": settlement})
        async with anyio.create_task_group() as tg:
            runtime = await tg.start(serve_channels, channels)
            adapters: dict[str, Any] = {}
            for net in channels.networks:
                options = {**ADAPTER_DEFAULTS[net.kind], "reconnect_initial_s": 0.01,
                           "reconnect_max_s": 0.05, "connect_timeout_s": 0.5,
                           **(adapter_options or {}).get(net.name, {})}
                spec = _ADAPTER_CLASSES[net.kind](name=net.name, port=runtime.ports[net.name],
                                                  **options)
                adapter = build_network_adapter(spec)
                await tg.start(adapter.run)  # type: ignore[attr-defined]
                adapters[net.name] = adapter
            for adapter in adapters.values():  # every link signed on, even on a busy machine
                await wait_for(lambda a=adapter: a.pool.ready_links == a.config.connections,
                               timeout=5.0)
            try:
                yield Sims(runtime, adapters)
            finally:
                for adapter in adapters.values():
                    await adapter.aclose()
                runtime.request_shutdown()


async def wait_for(predicate: Any, timeout: float = 2.0, step: float = 0.005) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(step)


async def raw_exchange(port: int, data: bytes | list[bytes], header: int = 2,
                       answers: int = 1, timeout: float = 1.0,
                       pause_s: float = 0.0) -> list[bytes]:
    """Send raw bytes to a simulator (a list: each chunk in its own write, ``pause_s``
    apart) and read ``answers`` length-prefixed frames back."""
    frames: list[bytes] = []
    buf = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        for chunk in [data] if isinstance(data, bytes) else data:
            await stream.send(chunk)
            if pause_s:
                await anyio.sleep(pause_s)
        with anyio.fail_after(timeout):
            while len(frames) < answers:
                buf += await stream.receive()
                while len(buf) >= header:
                    size = int.from_bytes(buf[:header], "big")
                    if len(buf) < header + size:
                        break
                    frames.append(buf[header:header + size])
                    buf = buf[header + size:]
    return frames


# --------------------------------------------------------------------------- tests


async def test_rules_approve_and_decline_with_the_expected_codes() -> None:
    rich, poor = card_ref(0, token="rich"), card_ref(0, token="poor")
    old, blocked = card_ref(0, token="old"), card_ref(0, token="blocked")
    scheme = card_scheme([
        account(rich, 5000, limit=3000),
        account(poor, 500),
        account(old, 5000, expiry="2412"),
        account(blocked, 5000, status="blocked"),
    ])
    async with running(config(network("card", "card"), scheme=scheme)) as sims:
        card = sims.card()
        cases = [
            (card_payment(1, 1000, token="rich"), "approved", "00"),
            (card_payment(2, 4000, token="rich"), "declined", "61"),
            (card_payment(3, 1000, token="poor"), "declined", "51"),
            (card_payment(4, 1000, token="old"), "declined", "54"),
            (card_payment(5, 1000, token="blocked"), "declined", "05"),
            (card_payment(6, 1000, bin="999999"), "declined", "14"),
            (card_payment(7, 100, token="rich", expiry="2301"), "declined", "54"),
        ]
        results = [await card.authorize(payment) for payment, _, _ in cases]
        for (payment, outcome, reason), reply in zip(cases, results, strict=True):
            assert (reply.outcome, reply.reason) == (outcome, reason), payment.payment_id
        assert len(results[0].network_ref) == 6  # the auth code
        # The 1000 held for payment 1 counts against the next one: 4000 left, limit 3000.
        assert sims.scheme.available(network_pan(rich)) == 4000
        assert (await card.authorize(card_payment(9, 3000, token="rich"))).outcome == "approved"
        assert (await card.authorize(card_payment(10, 1500, token="rich"))).reason == "51"
        sims.scheme.check_ledger()


async def test_reversal_releases_the_hold_once_and_is_idempotent() -> None:
    ref = card_ref(0, token="t1")
    pan = network_pan(ref)
    async with running(config(network("card", "card"),
                              scheme=card_scheme([account(ref, 10_000)]))) as sims:
        card, scheme = sims.card(), sims.scheme
        payment = card_payment(11, 2500, token="t1")
        assert (await card.authorize(payment)).outcome == "approved"
        assert scheme.available(pan) == 7500
        for _ in range(2):
            reply = await card.resolve(payment)
            assert reply == NetworkReply("reversed", "00", "010000000011")
            assert scheme.available(pan) == 10_000
        assert scheme.reversals == 1
        scheme.check_ledger()


async def test_reversal_of_an_unseen_original_is_answered_and_blocks_a_late_original() -> None:
    async with running(config(network("card", "card"))) as sims:
        card, scheme = sims.card(), sims.scheme
        payment = card_payment(12, 700)
        assert (await card.resolve(payment)).outcome == "reversed"
        assert scheme.reversals_unknown == 1
        # The original turning up after its own reversal must not hold money.
        reply = await card.authorize(payment)
        assert reply.outcome == "declined"
        assert scheme.active_hold(("000012", "TERM0001", "0115100000")) == 0


async def test_duplicate_stan_and_terminal_within_the_window_is_94() -> None:
    async with running(config(network("card", "card"))) as sims:
        card = sims.card()
        first = await card.authorize(card_payment(13, 100))
        again = card_payment(13, 200, token="other")
        again = msgspec.structs.replace(again, payment_id="P1-13b")
        second = await card.authorize(again)
        assert first.outcome == "approved"
        assert (second.outcome, second.reason) == ("failed", "94")
        other_terminal = await card.authorize(card_payment(13, 100, terminal="TERM0002"))
        assert other_terminal.outcome == "approved"
        assert sims.scheme.duplicates_rejected == 1


async def test_sign_on_and_echo_are_answered() -> None:
    async with running(config(network("card", "card"))) as sims:
        card = sims.card()
        server = sims.server("card")
        assert isinstance(server, CardNetwork)
        assert server.network_messages >= 2  # one sign-on per connection
        await wait_for(lambda: card.echo_ok >= 4)
        assert card.echo_failed == 0
        assert card.pool.ready_links == 2


async def test_advice_is_answered_0130_and_network_management_0810() -> None:
    async with running(config(network("card", "card"))) as sims:
        port = sims.runtime.ports["card"]
        original = original_request(card_payment(14, 900), "123456")
        advice = iso8583.authorization_advice(original, response_code="00", auth_code="ABC123")
        sign_off = iso8583.network_request("002", stan=77, transmitted_at=AT)
        data = iso8583.frame(iso8583.encode(advice)) + iso8583.frame(iso8583.encode(sign_off))
        answers = sorted(iso8583.decode(f).mti for f in await raw_exchange(port, data, answers=2))
        assert answers == ["0130", "0810"]
        assert sims.scheme.advices == 1
        assert sims.scheme.active_hold(("000014", "TERM0001", "0115100000")) == 900


async def test_endpoints_of_one_scheme_share_the_ledger() -> None:
    ref = card_ref(0, token="shared")
    cfg = config(network("card-primary", "card"), network("card-secondary", "card"),
                 scheme=card_scheme([account(ref, 5000)]))
    async with running(cfg) as sims:
        payment = card_payment(15, 4000, token="shared")
        assert (await sims.card("card-primary").authorize(payment)).outcome == "approved"
        assert sims.scheme.available(network_pan(ref)) == 1000
        assert (await sims.card("card-secondary").resolve(payment)).outcome == "reversed"
        assert sims.scheme.available(network_pan(ref)) == 5000


async def test_unparseable_requests_are_dropped_and_the_connection_survives() -> None:
    async with running(config(network("card", "card"))) as sims:
        port = sims.runtime.ports["card"]
        echo = iso8583.network_request("301", stan=5, transmitted_at=AT)
        data = iso8583.frame(b"ZZZZ garbage") + iso8583.frame(iso8583.encode(echo))
        [answer] = await raw_exchange(port, data)
        assert iso8583.decode(answer).mti == "0810"


async def outcomes(seed: int, count: int = 40) -> list[tuple[str, str]]:
    behaviour = {**FAST, "errors": {"technical_error_rate": 0.25}}
    scheme = {"name": "paynet", "seed": 3, "issuers": [{
        "name": "alpha", "bins": ["41"], "balance_min": 0, "balance_max": 5000,
        "unissued_rate": 0.1, "expired_rate": 0.1, "blocked_rate": 0.1}]}
    cfg = config(network("card", "card", seed=seed, behaviour=behaviour), scheme=scheme)
    async with running(cfg) as sims:
        card = sims.card()
        replies = [await card.authorize(card_payment(n, 1000, token=f"c{n % 13}"))
                   for n in range(1, count + 1)]
    return [(reply.outcome, reply.reason) for reply in replies]


async def test_same_seed_same_outcome_sequence() -> None:
    first, second, other = await outcomes(5), await outcomes(5), await outcomes(6)
    assert first == second
    assert first != other
    kinds = {reason for _, reason in first}
    assert {"00", "91", "96"} <= kinds or {"00", "14", "54"} <= kinds


async def test_not_started_adapter_refuses_as_not_sent() -> None:
    adapter = CardAdapter(CardAdapterConfig(name="idle", port=9))
    with pytest.raises(NotSent):
        await adapter.authorize(card_payment(16))


def test_config_is_checked_and_the_example_loads() -> None:
    example = load_config(ROOT / "examples" / "channels.toml")
    assert [net.name for net in example.networks] == [
        "card-primary", "card-secondary", "swift", "qr"]
    assert {net.scheme for net in example.networks if net.kind == "card"} == {"paynet"}
    with pytest.raises(ChannelsConfigError, match="scheme"):
        config_from_dict({"networks": [{"name": "c", "kind": "card"}]})
    with pytest.raises(ChannelsConfigError, match="faults"):
        config_from_dict({"networks": [{"name": "q", "kind": "qr", "faults": [
            {"kind": "down", "endpoint": "nowhere"}]}]})
    with pytest.raises(ChannelsConfigError, match=r"networks\[0\]\.colour: unknown key"):
        config_from_dict({"networks": [{"name": "q", "kind": "qr", "colour": "red"}]})
    with pytest.raises(ChannelsConfigError, match="hops"):
        config_from_dict({"networks": [{"name": "s", "kind": "swift", "swift": {"banks": [
            {"bic": "AAAADEFF", "via": "BBBBDEFF"}, {"bic": "BBBBDEFF", "via": "AAAADEFF"}]}}]})


def test_a_pan_failing_the_luhn_check_is_an_invalid_card() -> None:
    """The issuer answers 14 to a mistyped number before looking for an account."""
    scheme = CardScheme(msgspec.convert(card_scheme(), CardSchemeSpec))
    valid = "4111111111111111"
    # The same digits with the check digit off by one: in alpha's range, still refused.
    for pan, code in ((valid, "00"), (valid[:-1] + "2", "14")):
        txn = iso8583.CardTransaction(
            pan=pan, amount_minor=100, currency="840", stan=int(code) + 1, transmitted_at=AT,
            terminal_id="TERM0001", merchant_id="M1", acquirer_id="123456")
        answer = scheme.authorize(iso8583.authorization_request(txn), 0.0)
        assert answer.response_code == code, pan
    assert valid[:-1] + "2" not in scheme.accounts
