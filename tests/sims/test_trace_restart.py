"""DE11 across restarts and message types, against the card simulator's duplicate check.

The simulated issuer answers 94 to a STAN + terminal it saw within 60 s. Two boots of the
real switch on one journal, within that window, must not reuse a trace number; and when
numbers *are* reused (the sidecar lost), the 94s must not open the issuer's breaker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from switch.adapters.iso8583 import CardAdapter
from switch.adapters.specs import CardAdapterConfig
from switch.adapters.trace import (
    MAX_RRN,
    FileTraceStore,
    MemoryTraceStore,
    TraceNumbers,
    TraceStoreError,
    sidecar_path,
)
from switch.model import Status
from switch.routing.breaker import BreakerState
from tests.sims.test_card import ADAPTER_DEFAULTS, card_payment, config, network, running, wait_for

pytestmark = pytest.mark.anyio

# The card route goes to the simulator; swift and qr to in-process stand-in networks.
ROUTES = "".join(f'[[networks]]\nname = "{ch}"\nchannel = "{ch}"\n'
                 f'[[routes]]\nchannel = "{ch}"\nnetwork = "{ch}"\ntimeout_s = 1.0\n'
                 for ch in ("card", "swift", "qr"))
PER_BOOT = 12


async def boot_and_pay(sims: Any, tmp_path: Path, boot: int) -> tuple[list[tuple[str, str]], str]:
    """One switch boot on ``tmp_path``'s journal: pay, shut down; (status, reason)s, breaker."""
    from loadtests.harness.client import SwitchClient
    from switch.protocols.wire import Reply
    from switch.serve.app import build_adapters
    from tests.conftest import make_config, start_switch
    from tests.payments import card_payment as card_request

    port = sims.runtime.ports["card"]
    adapter = CardAdapter(CardAdapterConfig(name="card", port=port, **ADAPTER_DEFAULTS["card"]))
    outcomes: list[tuple[str, str]] = []
    async with anyio.create_task_group() as outer:
        await outer.start(adapter.run)
        await wait_for(lambda: adapter.pool.ready_links == adapter.config.connections, 5.0)
        async with anyio.create_task_group() as tg:
            cfg = make_config(tmp_path, ROUTES)
            switch = await start_switch(tg, cfg, {**build_adapters(cfg), "card": adapter})
            async with SwitchClient.connect("127.0.0.1", switch.endpoints.port) as client:
                for i in range(PER_BOOT):
                    reply = await client.pay(card_request(f"b{boot}-{i}", amount=10 + i))
                    assert isinstance(reply, Reply), reply
                    outcomes.append((reply.result.status, reply.result.reason))
            router = switch.app.router
            assert router is not None
            breaker = router.health.breakers["card"].state
            switch.app.request_shutdown()
        # The switch closed the adapter on its way out; its run loop is ours to stop.
        outer.cancel_scope.cancel()
    return outcomes, breaker


async def test_two_boots_within_the_duplicate_window_get_no_94(tmp_path: Path) -> None:
    async with running(config(network("card", "card"))) as sims:
        first, _ = await boot_and_pay(sims, tmp_path, 1)
        second, breaker = await boot_and_pay(sims, tmp_path, 2)
    assert sims.scheme.duplicates_rejected == 0
    assert all(status == Status.APPROVED for status, _ in first + second), first + second
    assert breaker == BreakerState.CLOSED
    # The second boot resumed past the block the first one reserved.
    assert FileTraceStore(sidecar_path(tmp_path / "journal.db")).load() == 1 + 2 * 10_000


async def test_reused_stans_are_answered_94_and_never_open_the_breaker(tmp_path: Path) -> None:
    """The check above can fail: lose the reservation and the issuer sees duplicates.

    Those 94s come from a live issuer, so the breaker stays closed (no stand-in).
    """
    async with running(config(network("card", "card"))) as sims:
        await boot_and_pay(sims, tmp_path, 1)
        sidecar_path(tmp_path / "journal.db").unlink()
        second, breaker = await boot_and_pay(sims, tmp_path, 2)
    # Boot 1's STANs went to its 0100s and (timing-dependent) its sign-on and echoes.
    duplicates = [reason for _, reason in second if reason == "94"]
    assert sims.scheme.duplicates_rejected == len(duplicates) >= 1
    assert {reason for _, reason in second} <= {"94", "00"}
    assert breaker == BreakerState.CLOSED


async def test_reversals_and_echoes_draw_from_the_authorizations_sequence() -> None:
    """One sequence for 0100, 0400 and 0800: no STAN + terminal on two transactions."""
    trace = TraceNumbers(MemoryTraceStore())
    adapter_options = {"card": {"echo_interval_s": 0.02}}
    async with running(config(network("card", "card")), adapter_options) as sims:
        card = sims.card()
        card.use_trace(trace)
        payment = card_payment(trace.next())  # what the pipeline does for each payment
        assert (await card.authorize(payment)).outcome == "approved"
        echoes = card.echo_ok
        await wait_for(lambda: card.echo_ok > echoes + 2)
        before = trace.peek
        with anyio.fail_after(5):
            reply = await card.resolve(payment)
        assert reply.outcome == "reversed"
        assert trace.peek > before  # the 0400 took the next shared number
    record = sims.scheme.records[(payment.card.stan, "TERM0001", "0115100000")]  # type: ignore[union-attr]
    assert record.state == "reversed"


def test_blocks_are_reserved_before_use_and_resumed_after(tmp_path: Path) -> None:
    store = FileTraceStore(tmp_path / "j.db.stan")
    boot1 = TraceNumbers(store, block=5)
    assert [boot1.next() for _ in range(7)] == [1, 2, 3, 4, 5, 6, 7]
    assert store.load() == 11  # the block 6..10 was reserved before 6 went out
    boot2 = TraceNumbers(store, block=5)
    assert boot2.next() == 11
    assert store.load() == 16


def test_the_sequence_wraps_after_999999_and_skips_zero() -> None:
    trace = TraceNumbers(MemoryTraceStore(999_998), block=3)
    assert [trace.next() for _ in range(4)] == [999_998, 999_999, 1, 2]


def test_a_damaged_sidecar_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db.stan"
    path.write_text("12x\n")
    with pytest.raises(TraceStoreError, match=r"journal\.db\.stan"):
        TraceNumbers(FileTraceStore(path))


def test_the_rrn_sequence_is_twelve_digits_wide_and_its_sidecar_checked(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.db.rrn"
    store = FileTraceStore(path, max_value=MAX_RRN)
    rrns = TraceNumbers(store, block=1000, max_value=MAX_RRN)
    assert rrns.next() == 1 and store.load() == 1001
    path.write_text(f"{MAX_RRN}\n")  # 12 digits: a valid RRN store, not a valid STAN one
    assert TraceNumbers(FileTraceStore(path, max_value=MAX_RRN), max_value=MAX_RRN).next() \
        == MAX_RRN
    path.write_text(f"{MAX_RRN}\n")
    with pytest.raises(TraceStoreError, match=r"journal\.db\.rrn"):
        TraceNumbers(FileTraceStore(path))


class _FullDisk(MemoryTraceStore):
    def save(self, next_start: int) -> None:
        raise TraceStoreError("journal.db.stan: cannot write: [Errno 28] No space left")


async def test_a_sign_on_without_a_stan_is_not_made_and_does_not_stop_the_switch(
        caplog: pytest.LogCaptureFixture) -> None:
    """The STAN sidecar cannot be written (a full disk): a payment gets no STAN and fails
    on its own; a sign-on or echo raised TraceStoreError out of the link's supervisor,
    which ended the adapter's task group and the switch with it. It is a sign-on not
    made now (the link is tried again), logged with the file."""
    adapter = CardAdapter(CardAdapterConfig(name="card", port=1, **ADAPTER_DEFAULTS["card"]),
                          trace=TraceNumbers(_FullDisk()))

    class _Link:
        index = 3

    assert await adapter._network(_Link(), "001") is False  # type: ignore[arg-type]
    assert "card: 0800 on connection 3 not sent: journal.db.stan: cannot write" in caplog.text


async def test_a_reversal_without_a_stan_is_not_sent_and_retried_not_quarantined() -> None:
    """The same full disk on a reversal: TraceStoreError reached the resolver as an
    unexpected error, and it quarantined the payment to an operator until a restart (an
    accepted acquirer reversal included). It is a reversal not sent, retried on schedule."""
    from switch.adapters.base import NotSent

    adapter = CardAdapter(CardAdapterConfig(name="card", port=1, **ADAPTER_DEFAULTS["card"]),
                          trace=TraceNumbers(_FullDisk()))
    with pytest.raises(NotSent, match="no trace number for the reversal"):
        await adapter.resolve(card_payment(1))
