"""A kill -9 campaign under load against the real simulators, audited from the journal.

    python -m loadtests.chaos.kill9 --kills 20 --rate 300 [--seed 1] [--write]
    python -m loadtests.chaos.kill9 --kills 20 --target simulators   # kill the networks

Starts the example simulators (``python -m channels serve``) and ``payswitch serve`` as
separate processes, drives card, SWIFT and QR payments at ``--rate`` over
``--connections`` client connections, and every 1-3 s (seeded) kills the switch with
SIGKILL and restarts it at once: well inside the issuer's 60 s duplicate window. With
``--target simulators`` the simulators are killed instead (``both``: either, drawn from
the seed each time), and restarted on the same ports: their books come back from disk
(channels/books.py), and the audit's settlement checks say whether they did. Clients
behave like real ones: a payment whose connection died is sent again with the same
idempotency key and body until it gets an answer. After the last kill the switch runs on,
unknown outcomes are queried until final (bounded by ``--settle-s``), then both processes
stop gracefully (the simulators write their last settlement files).

The audit reads the SQLite journal directly (its own SQL, not the switch's audit code):

* lost: an acknowledged payment whose id is not in the journal, or whose final record
  says other than the final result the client was given;
* duplicates: a payment id with more than one final record, or an idempotency key with
  finals under more than one payment id;
* unresolved: intents still without a final at the end;
* issuer double booking: a reference (RRN, UETR, QR reference) settled more than once in
  the simulators' settlement files;
* issuer vs journal: a settled reference whose journal final is not approved;
* approved, never settled: a payment whose last journal final is approved (not stood in)
  and whose reference no settlement file clears (net of reversals): a network that
  forgot what it approved;
* stand-in approvals (the simulators are never down here: every one is "with the issuer
  up"). The card endpoints run without their injected 91/96 answers (``--issuer-errors``,
  default 0): a 91 is the scheme saying the issuer is inoperative, and standing in on it
  is legitimate stand-in processing, which the deterministic simulator checks as such.
  Here the question is what a restart costs, so every stand-in is counted against it;
* the longest time from a kill to the final record of a payment in flight at that kill.

Exit status 0 when lost, duplicates and double bookings are all 0. ``--write`` records the
figures in bench/RESULTS.md (section ``chaos-kill9``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from loadtests.harness.client import SwitchClient
from loadtests.harness.clusterproc import free_port
from loadtests.harness.demo import DEMO_CONFIG
from loadtests.harness.processes import (
    EXAMPLE_CHANNELS,
    channel_networks_toml,
    restart_channels,
    start_channels,
    start_switch,
    stop_channels,
    stop_switch,
)
from loadtests.harness.workload import Workload
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.model import PaymentRequest
from switch.protocols.settlement_files import (
    SettlementEntry,
    SettlementFileError,
    decode_camt053,
    decode_card_clearing,
    decode_qr_csv,
    settlement_file_order,
)
from switch.protocols.wire import ErrorReply, Reply

ROOT = Path(__file__).resolve().parents[2]
RETRY_CODES = frozenset({"overloaded", "shutting_down", "unavailable"})
FINAL = frozenset({"approved", "declined", "failed", "reversed"})


@dataclass
class Ack:
    payment_id: str
    status: str
    at: float
    #: What the client sent, compared with the journal's intent of ``payment_id``.
    amount: int = -1
    currency: str = ""


@dataclass
class Campaign:
    port: int
    acks: dict[str, Ack] = field(default_factory=dict)
    sent: int = 0
    resent: int = 0
    invalid: int = 0
    kills: list[float] = field(default_factory=list)  # the switch's, wall-clock seconds
    simulator_kills: int = 0
    restart_s: list[float] = field(default_factory=list)
    stop: anyio.Event = field(default_factory=anyio.Event)


_BROKEN = (ConnectionError, OSError, TimeoutError, anyio.BrokenResourceError,
           anyio.ClosedResourceError, anyio.EndOfStream)


async def _connection(c: Campaign, rate: float, workload: Workload, stop: anyio.Event) -> None:
    """One client connection: payments at ``rate``/s, one in flight. A payment whose
    connection died is sent again, same key and body, once reconnected (as a real
    client would) until it gets an answer."""
    interval = 1.0 / rate
    next_at = anyio.current_time()
    request: PaymentRequest | None = None
    while not stop.is_set():
        try:
            async with SwitchClient.connect("127.0.0.1", c.port) as client:
                while not stop.is_set():
                    if request is None:
                        request, kind = workload.next()
                        if kind == "duplicate":
                            request = None
                            continue
                        c.sent += 1
                    else:
                        c.resent += 1
                    try:
                        with anyio.fail_after(10):
                            reply = await client.pay(request)
                    except _BROKEN:
                        break  # reconnect, then send the same request again
                    if isinstance(reply, ErrorReply) and reply.code in RETRY_CODES:
                        await anyio.sleep(0.05)
                        continue
                    if isinstance(reply, Reply):
                        c.acks[request.idempotency_key] = Ack(
                            reply.result.payment_id, str(reply.result.status), time.time(),
                            request.amount, request.currency)
                    else:
                        c.invalid += 1
                    request = None
                    next_at += interval
                    await anyio.sleep(max(0.0, next_at - anyio.current_time()))
        except _BROKEN:
            await anyio.sleep(0.05)
        next_at = max(next_at, anyio.current_time())


async def _drive(c: Campaign, rate: float, connections: int, seed: int, stop: anyio.Event
                 ) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(connections):
            workload = Workload(seed * 1000 + i, key_prefix=f"chaos{seed}-{i}-")
            tg.start_soon(_connection, c, rate / connections, workload, stop)


def _settle_unknowns(c: Campaign, deadline_s: float) -> int:
    """Query every acknowledged-unknown payment until final; the count still unknown."""

    async def run() -> int:
        pending = [k for k, a in c.acks.items() if a.status not in FINAL]
        end = anyio.current_time() + deadline_s
        async with SwitchClient.connect("127.0.0.1", c.port) as client:
            while pending and anyio.current_time() < end:
                still = []
                for key in pending:
                    reply = await client.query(key)
                    if isinstance(reply, Reply) and str(reply.result.status) in FINAL:
                        sent = c.acks[key]
                        c.acks[key] = Ack(reply.result.payment_id, str(reply.result.status),
                                          time.time(), sent.amount, sent.currency)
                    else:
                        still.append(key)
                pending = still
                if pending:
                    await anyio.sleep(1.0)
        return len(pending)

    return anyio.run(run)


# --------------------------------------------------------------------------- the audit

def audit(journal: Path, settlement: Path, c: Campaign) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    finals: dict[str, list[tuple[str, dict[str, Any], int]]] = defaultdict(list)
    intents: dict[str, tuple[dict[str, Any], int]] = {}
    keys_of: dict[str, set[str]] = defaultdict(set)
    present: set[str] = set()
    for pid, key, kind, status, record, at_us in db.execute(
            "SELECT payment_id, idempotency_key, kind, status, record, at_us FROM journal "
            "ORDER BY seq"):
        present.add(pid)
        if kind == "intent":
            intents[pid] = (msgspec.msgpack.decode(record), at_us)
        elif kind == "final":
            finals[pid].append((status, msgspec.msgpack.decode(record), at_us))
            keys_of[key].add(pid)
    db.close()
    lost = [k for k, a in c.acks.items()
            if a.payment_id not in present
            or (a.status in FINAL and [s for s, _, _ in finals.get(a.payment_id, [])][:1]
                != [a.status])]
    # Booked for what the client sent: the intent of the very payment it was told about.
    # (Declined or failed before any intent: nothing booked, nothing to compare.)
    amounts_wrong = [k for k, a in c.acks.items()
                     if a.payment_id in intents and (
                         intents[a.payment_id][0].get("amount"),
                         intents[a.payment_id][0].get("currency")) != (a.amount, a.currency)]
    dup_payments = [pid for pid, rows in finals.items() if len(rows) > 1]
    dup_keys = [key for key, pids in keys_of.items() if len(pids) > 1]
    unresolved = [pid for pid in intents if pid not in finals]
    stand_in = sum(1 for rows in finals.values() for _, rec, _ in rows if rec.get("stood_in"))
    kills_us = sorted(int(k * 1e6) for k in c.kills)
    longest_s = 0.0
    recovered = 0
    for pid, (_, intent_us) in intents.items():
        if pid not in finals:
            continue
        final_us = finals[pid][0][2]
        crossed = [k for k in kills_us if intent_us <= k < final_us]
        if crossed:
            recovered += 1
            longest_s = max(longest_s, (final_us - crossed[-1]) / 1e6)
    # Settlement files: references the simulators booked, and how often.
    reference_of: dict[str, str] = {}
    for pid, (payment, _) in intents.items():
        for ref in ((payment.get("card") or {}).get("rrn"), (payment.get("swift") or {}).get(
                "uetr"), (payment.get("qr") or {}).get("qr_reference")):
            if ref:
                reference_of[ref] = pid
    settled: Counter[str] = Counter()
    reversed_: Counter[str] = Counter()
    for entry in _settlement_entries(settlement):
        (settled if entry.status == "settled" else reversed_)[entry.reference] += 1
    files = sum(1 for p in settlement.iterdir() if not p.name.startswith(".")
                ) if settlement.exists() else 0  # not the simulators' .settlement.lock
    double_booked = [ref for ref, n in settled.items() if n > 1]
    unsettled = [ref for ref, pid in reference_of.items()
                 if pid in finals and finals[pid][-1][0] == "approved"
                 and not finals[pid][-1][1].get("stood_in")
                 and settled.get(ref, 0) - reversed_.get(ref, 0) != 1]
    mismatch = [ref for ref, n in settled.items()
                if n - reversed_.get(ref, 0) > 0 and ref in reference_of
                and _first_status(finals.get(reference_of[ref], [])) != "approved"]
    return {
        "kills": len(c.kills),
        "payments_sent": c.sent,
        "acknowledged": len(c.acks),
        "resent_after_a_kill": c.resent,
        "refused_invalid": c.invalid,
        "journal_payments": len(present),
        "lost": len(lost),
        "amounts_not_as_sent": len(amounts_wrong),
        "duplicates": len(dup_payments) + len(dup_keys),
        "unresolved_in_journal": len(unresolved),
        "issuer_double_bookings": len(double_booked),
        "issuer_vs_journal_mismatches": len(mismatch),
        "approved_never_settled": len(unsettled),
        "settlement_files": files,
        "standin_approvals_issuer_up": stand_in,
        "crash_recovered_payments": recovered,
        "longest_recovery_s": round(longest_s, 2),
        "restart_to_ready_s_max": round(max(c.restart_s, default=0.0), 2),
        "examples": {"lost": lost[:5], "amounts_not_as_sent": amounts_wrong[:5],
                     "duplicates": (dup_payments + dup_keys)[:5],
                     "double_booked": double_booked[:5], "mismatch": mismatch[:5],
                     "approved_never_settled": unsettled[:5]},
    }


def _first_status(rows: list[tuple[str, dict[str, Any], int]]) -> str:
    return rows[0][0] if rows else "none"


def _settlement_entries(directory: Path) -> list[SettlementEntry]:
    if not directory.exists():
        return []
    entries: list[SettlementEntry] = []
    alpha = dict(NUMERIC_TO_ALPHA)
    for path in sorted(directory.iterdir(), key=lambda p: settlement_file_order(p.name)):
        try:
            if path.suffix == ".clr":
                entries += decode_card_clearing(path.read_text(), path.name, alpha)
            elif path.suffix == ".xml":
                entries += decode_camt053(path.read_bytes(), path.name)
            elif path.suffix == ".csv":
                entries += decode_qr_csv(path.read_text(), path.name, CURRENCIES)
        except SettlementFileError as exc:
            print(f"settlement file unreadable: {exc}", file=sys.stderr)
    return entries


# --------------------------------------------------------------------------- the campaign

def _channels_example(base: Path, issuer_errors: float) -> Path:
    """The example simulators, with the card endpoints' injected 91/96 rate set."""
    text = EXAMPLE_CHANNELS.read_text()
    text, n = re.subn(r"^technical_error_rate = .*$", f"technical_error_rate = {issuer_errors}",
                      text, flags=re.M)
    assert n == 2, "the example's two card endpoints each inject technical errors"
    path = base / "channels-example.toml"
    path.write_text(text)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="payswitch-kill9-"))
    base.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    channels, ready = start_channels(base, _channels_example(base, args.issuer_errors))
    port = free_port()
    config = base / "switch.toml"
    text = DEMO_CONFIG.format(seed=args.seed, journal=base / "journal.db", admin_port=0)
    config.write_text(text.replace("[server]\nport = 0", f"[server]\nport = {port}", 1)
                      + channel_networks_toml(ready))
    c = Campaign(port)
    switch, _ = start_switch(config, base / "ready.json")
    print(f"work dir {base}; switch on {port}; {args.kills} kills at {args.rate:g}/s",
          flush=True)

    async def campaign() -> None:
        nonlocal switch, channels, ready
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drive, c, args.rate, args.connections, args.seed, stop)
            await anyio.sleep(2.0)
            for i in range(args.kills):
                await anyio.sleep(rng.uniform(1.0, 3.0))
                victim = (args.target if args.target != "both"
                          else rng.choice(("switch", "simulators")))
                if victim == "switch":
                    switch.send_signal(signal.SIGKILL)
                    switch.wait()
                    c.kills.append(time.time())
                    started = time.monotonic()
                    switch, _ = await anyio.to_thread.run_sync(
                        start_switch, config, base / "ready.json")
                else:
                    channels.send_signal(signal.SIGKILL)
                    channels.wait()
                    c.simulator_kills += 1
                    started = time.monotonic()
                    channels, ready = await anyio.to_thread.run_sync(
                        restart_channels, base, ready)
                c.restart_s.append(time.monotonic() - started)
                print(f"kill {i + 1}/{args.kills} ({victim}): acknowledged {len(c.acks)}, "
                      f"back in {c.restart_s[-1]:.2f} s", flush=True)
            await anyio.sleep(2.0)
            stop.set()

    try:
        anyio.run(campaign)
        still_unknown = _settle_unknowns(c, args.settle_s)
        stop_switch(switch)
        # SIGTERM once SWIFT's last acceptances settled: the simulators' last files.
        figures_pending = stop_channels(channels, ready)
        figures = audit(base / "journal.db", base / "settlement", c)
        figures["still_unknown_after_settle"] = still_unknown
        figures["settlements_pending_at_stop"] = figures_pending
        figures["simulator_kills"] = c.simulator_kills
        figures["target"] = args.target
        figures["rate"] = args.rate
        figures["issuer_errors"] = args.issuer_errors
        figures["work_dir"] = str(base)
        return figures
    finally:
        for proc in (switch, channels):
            if proc.poll() is None:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rate", type=float, default=300.0, help="payments per second")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle-s", type=float, default=120.0,
                        help="how long to wait for unknown outcomes to resolve at the end")
    parser.add_argument("--issuer-errors", type=float, default=0.0,
                        help="share of card requests the issuers answer 91/96 (example: 0.005)")
    parser.add_argument("--target", choices=("switch", "simulators", "both"),
                        default="switch", help="what each kill hits")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args(argv)
    for name, low, high in (("kills", 1, 10_000), ("rate", 1, 20_000), ("issuer_errors", 0, 1),
                            ("connections", 1, 1024), ("settle_s", 0, 3600)):
        value = getattr(args, name)
        if not low <= value <= high:
            parser.error(f"--{name.replace('_', '-')} must be in {low}..{high}, got {value:g}")
    figures = run(args)
    print(json.dumps(figures, indent=2))
    _write(figures, args.write)
    ok = figures["lost"] == 0 and figures["duplicates"] == 0 \
        and figures["issuer_double_bookings"] == 0 and figures["amounts_not_as_sent"] == 0 \
        and figures["approved_never_settled"] == 0
    return 0 if ok else 1


def _write(f: dict[str, Any], write: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.results import markdown_table, write_section

    rows = [(f["kills"], f["simulator_kills"], f"{f['rate']:g}/s", f["payments_sent"],
             f["acknowledged"], f["lost"], f["duplicates"], f["unresolved_in_journal"],
             f["issuer_double_bookings"], f["issuer_vs_journal_mismatches"],
             f["approved_never_settled"], f["standin_approvals_issuer_up"],
             f["crash_recovered_payments"], f["longest_recovery_s"])]
    killed = {"switch": "`payswitch serve`", "simulators": "`channels serve` (the simulators)",
              "both": "`payswitch serve` or `channels serve`, drawn from the seed each time"}
    body = (
        f"SIGKILL of {killed[f['target']]} every 1-3 s under load (the example simulators), "
        "restarted at once (inside the issuer's 60 s duplicate window; the simulators on "
        "their own ports, their books from disk); clients resend "
        "with the same idempotency key until answered. Audited from the SQLite journal and "
        "the simulators' settlement files by the campaign's own SQL, not the switch's audit "
        "code. "
        + (f"The card issuers answer {f['issuer_errors']:.1%} of requests 91/96 (stand-in on "
           "those is legitimate, yet counted below). " if f["issuer_errors"] else
           "The card issuers inject no 91/96 answers (a 91 says the issuer is inoperative, "
           "and standing in on it is legitimate), so every stand-in counts against the "
           "switch. ")
        + ("Before the fix of the harness client (this issue), a client whose connection "
           "died between two payments waited 10 s, so earlier campaigns ran at a fraction "
           "of their nominal rate.\n\n" if f["target"] == "switch" else
           "A killed simulator drops its connections: the switch's answers in flight there "
           "are unknown and resolved by reversal or inquiry, and stand-ins may follow while "
           "it is down (its endpoints were unreachable, so they count here but are not "
           "wrong).\n\n")
        + markdown_table(["switch kills", "simulator kills", "rate", "payments",
                          "acknowledged", "lost", "duplicates", "unresolved",
                          "issuer double bookings", "issuer vs journal",
                          "approved, never settled", "stand-in approvals (issuer up)",
                          "crash-recovered", "longest recovery (s)"], rows)
        + f"\n\nResent after a kill: {f['resent_after_a_kill']}; restart to ready at most "
        f"{f['restart_to_ready_s_max']} s; still unknown after the settle wait: "
        f"{f['still_unknown_after_settle']}; settlements pending when the simulators "
        f"stopped: {f['settlements_pending_at_stop']}.\n"
    )
    section = "chaos-kill9" if f["target"] == "switch" else f"chaos-kill9-{f['target']}"
    title = ("kill -9 campaign under load" if f["target"] == "switch" else
             f"kill -9 campaign under load: {f['target']}")
    write_section(section, title, body, "loadtests/chaos/kill9.py", write)

if __name__ == "__main__":
    sys.exit(main())
