"""The simulated world's own bookkeeping, bounded over a long run.

* ``World._first_sent`` (when the QR network first saw each payment, for the early-inquiry
  check) grew with every QR payment of a run; it now keeps a payment only while an
  inquiry about it could still be early, and never forgets one an inquiry could still
  make look early by re-recording it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from channels.faults import Fault
from switch.model import CardRef, Party, Payment, QrRef
from switch.sim.networks import MIN_INQUIRY_AGE_S, World
from switch.sim.simulation import SimOptions, Simulation

AT = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)
FLOOR = MIN_INQUIRY_AGE_S["qr"]


def qr_payment(n: int, at: float = 0.0) -> Payment:
    """A QR payment the switch received ``at`` seconds into the run."""
    return Payment(f"P1-{n}", f"k{n}", "qr", 1000, "CNY", Party("ACCT000001"),
                   Party("MERCH00001"), AT + timedelta(seconds=at),
                   qr=QrRef("payload", qr_reference=f"P1-{n}"))


def card_payment(n: int, bin_: str) -> Payment:
    card = CardRef(token=f"tok-{n}", last4="1111", bin=bin_, expiry="2812",
                   terminal_id="TERM0001", merchant_id="MERCHANT01", mcc="5999",
                   stan=f"{n:06d}", rrn=f"01{n:010d}", pan_length=16)
    return Payment(f"P1-{n}", f"k{n}", "card", 1000, "USD", Party("ACCT000001"),
                   Party("MERCH00001"), AT, card=card)


def world(faults: list[Fault] | None = None) -> World:
    return World(SimOptions(seed=1).channels_toml, faults or [], seed=1)


def inquire(w: World, payment: Payment, now: float) -> None:
    """A status inquiry reaching the QR network at ``now``, the switch's wall clock as
    old as the true one (so only the network's clock decides "early")."""
    w.plan("qr", now, payment, inquiry=True)
    w.resolve("qr", payment, AT + timedelta(seconds=now), None, now=now)


def test_first_contacts_go_once_finished_and_past_the_floor() -> None:
    w = world()
    p1, p2, p3, p4 = (qr_payment(n, at) for n, at in ((1, 0.0), (2, 10.0), (3, FLOOR + 5.0),
                                                      (4, 200.0)))
    w.plan("qr", 0.0, p1)
    w.plan("qr", 10.0, p2)
    w.finished(p1.payment_id, 5.0)  # young: kept until it is FLOOR old
    assert set(w._first_sent) == {"P1-1", "P1-2"}
    w.plan("qr", FLOOR + 5.0, p3)  # p1 is FLOOR old now; p2 not yet
    assert set(w._first_sent) == {"P1-2", "P1-3"}
    w.plan("qr", 200.0, p4)  # p2 is old but unfinished: an inquiry may still come
    assert set(w._first_sent) == {"P1-2", "P1-3", "P1-4"}
    inquire(w, p2, 201.0)  # not early: its first contact was kept
    assert w.early_inquiries == []
    w.finished(p2.payment_id, 202.0)  # finished and old: gone at once
    w.finished(p2.payment_id, 203.0)  # a second report changes nothing
    assert set(w._first_sent) == {"P1-3", "P1-4"}
    inquire(w, p4, 210.0)  # 10 s after its first contact: early
    assert [pid for pid, _, _ in w.early_inquiries] == ["P1-4"]


def test_a_finished_payment_inquired_before_the_floor_is_still_early() -> None:
    """Finished young, its entry stays until the floor: an inquiry already on its way
    (from a boot that died, say) that arrives after the finish is still measured."""
    w = world()
    p = qr_payment(1)
    w.plan("qr", 0.0, p)
    w.finished(p.payment_id, 1.0)
    w.resolve("qr", p, AT + timedelta(seconds=30.0), None, now=30.0)
    assert [pid for pid, _, _ in w.early_inquiries] == ["P1-1"]


def test_a_long_qr_run_keeps_only_the_recent_first_contacts() -> None:
    sim = Simulation(SimOptions(seed=3, duration_s=400.0, rate=30.0, intensity=0.0,
                                crashes=False, disk=False))
    try:
        result = sim.run()
        assert result.violations == [], [str(v) for v in result.violations[:3]]
        kept = sim.world._first_sent
        assert kept, "the last QR payments are younger than the floor"
        # ~6 QR payments a second: the last FLOOR seconds' worth (and the unfinished,
        # none here), not the whole run's ~2,400.
        assert len(kept) < 6 * FLOOR * 1.5, len(kept)
        newest = max(kept.values())
        assert all(newest - sent < FLOOR + 1.0 for sent in kept.values())
    finally:
        sim.db.close()


def test_an_inquiry_about_a_payment_the_network_never_saw_is_not_early() -> None:
    """The switch crashed between a QR payment's intent and its send; recovery asked
    about it 93 s after its receipt. Counted as the network's first sight, that inquiry
    read 0 s after "the payment": a false inquiry-too-early (seed 3860, below). The
    network holds nothing about it, so nothing is early; an inquiry after a real send
    is still measured from that send."""
    w = world()
    never_sent, sent = qr_payment(1), qr_payment(2)
    inquire(w, never_sent, 93.0)
    assert w.early_inquiries == [] and "P1-1" not in w._first_sent
    w.plan("qr", 50.0, sent)
    inquire(w, sent, 93.0)  # 43 s after the network saw it
    assert [pid for pid, _, _ in w.early_inquiries] == ["P1-2"]


def test_seed_3860_recovers_a_payment_never_sent_without_a_false_alarm() -> None:
    """The campaign's seed (10 s at 200/s, intensity 40, four crashes): P1-780's intent
    was durable, its send cut off by a crash; the resolver's check-status 93 s later was
    the network's first sight of it."""
    from switch.sim.simulation import simulate

    result = simulate(SimOptions(seed=3860, duration_s=10.0, rate=200.0, intensity=40.0))
    assert result.violations == [], [str(v) for v in result.violations[:3]]
