"""A seeded journal and settlement files of N payments, with planted breaks of every class.

Used by bench/recon/bench_reconcile_e2e.py and tests/recon. The journal is written the way
the switch writes it: msgpack ``Payment``/``Result`` records in the ``journal`` table and,
in the same transaction, the reconciliation column chunks via
``switch.journal.columns.append_batch`` (the hook ``Journal._commit`` calls). Settlement
files use the formats of switch/protocols/settlement_files.py: card clearing files
(``.clr``), QR CSVs (``.csv``) and camt.053 statements (``.xml``), each file in random
order (a settlement file is not in the switch's order).

Shares of payments: card 79%, QR 20%, SWIFT 1% (cross-border is a small share of a
switch's volume; camt.053 is also by far the slowest format to parse). Statuses: 95.5%
approved, 3% declined, 1.5% failed. Planted, on disjoint random sets of payments (the
fractions are of N):

==========================  =====  ===========================================
class expected              share  what is planted
==========================  =====  ===========================================
missing_at_network          1%     approved, left out of the files (1 in 10 of
                                   them approved in stand-in, advice delivered)
amount_mismatch             0.5%   network amount + 10%
currency_mismatch           0.1%   network currency differs
status_mismatch             0.1%   declined/failed in the journal, settled in files
duplicate                   0.25%  listed twice in the files
late_settlement             0.1%   settled two days after approval
standin_exposure            0.05%  stand-in, issuer refused the advice, not in files
missing_in_switch           0.5%   a file entry with an unknown reference
orphan_reversal             0.05%  a file reversal with an unknown reference
matched_tolerance (no break) 0.5%  reference garbled, amount + fee <= 10, time +1 s
==========================  =====  ===========================================

Amounts: the garbled pairs are whole thousands and the missing ones end in 500, so the
tolerance pass cannot pair a missing payment with a garbled entry by chance: "found"
equals "planted" by construction (at 10M over a day, 30 of 100,000 did before).

Stand-in payments that are settled normally (0.5%, advice delivered) must match.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from loadtests.harness.workload import _qr_payload
from switch.currency import CURRENCIES
from switch.journal import columns as jcols
from switch.journal.store import INSERT, open_database
from switch.model import CardRef, Party, Payment, QrRef, Result, Status, SwiftRef
from switch.protocols.settlement_files import SettlementEntry, encode_camt053

T0_US = 1_795_000_000_000_000  # 2026-11-18, fixed: same seed -> same files
TOL_AMOUNT = 10
FEE = 7
_SHARES = {
    "missing_at_network": 0.01, "amount_mismatch": 0.005, "currency_mismatch": 0.001,
    "status_mismatch": 0.001, "duplicate": 0.0025, "late_settlement": 0.001,
    "standin_exposure": 0.0005, "tolerance": 0.005, "standin_ok": 0.005,
}
_CARD_CCY = ("USD", "EUR", "GBP", "JPY")


@dataclass
class Planted:
    """Ground truth: (class, reference) of every planted break; tolerance pairs apart."""

    breaks: set[tuple[str, str]]
    tolerance_refs: set[str]
    payments: int
    network_records: int
    #: References of stand-in approvals: (refused and missing, delivered and missing,
    #: delivered and settled).
    standin: dict[str, set[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"breaks": sorted(self.breaks), "tolerance": sorted(self.tolerance_refs),
                           "payments": self.payments, "network_records": self.network_records})


def build(out: Path, n: int, seed: int = 7, records_per_file: int = 2_000_000,
          span_s: float = 86_400.0, batch: int = 50_000) -> tuple[Path, Path, Planted]:
    """Write ``out/journal.db`` and ``out/files/``; returns (journal, files, planted)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = out / "files"
    files.mkdir(exist_ok=True)
    journal = out / "journal.db"
    for p in [journal, *journal.parent.glob("journal.db-*"), *files.iterdir()]:
        p.unlink(missing_ok=True)

    channel = rng.choice(np.array([1, 3, 2], np.int8), size=n, p=[0.79, 0.20, 0.01])
    times = T0_US + np.sort(rng.integers(0, int(span_s * 1e6), n))
    amount = np.exp(rng.uniform(np.log(100), np.log(10_000_000), n)).astype(np.int64)
    u = rng.random(n)
    status = np.where(u < 0.955, 0, np.where(u < 0.985, 1, 2)).astype(np.int8)
    ccy_card = rng.integers(0, len(_CARD_CCY), n)
    ccy_swift = rng.integers(0, 2, n)
    currency = [
        _CARD_CCY[ccy_card[i]] if c == 1 else "CNY" if c == 3 else ("EUR", "USD")[ccy_swift[i]]
        for i, c in enumerate(channel.tolist())
    ]
    # Disjoint planted sets.
    approved = np.flatnonzero(status == 0)
    rng.shuffle(approved)
    sets: dict[str, np.ndarray[Any, Any]] = {}
    at = 0
    for name, share in _SHARES.items():
        if name == "status_mismatch":
            continue
        k = max(2, int(n * share))
        if name in ("standin_exposure", "standin_ok"):
            pool = approved[at:]
            pool = pool[channel[pool] == 1][:k]  # stand-in is a card thing
            at_set = set(pool.tolist())
            approved = np.array([i for i in approved.tolist() if i not in at_set]
                                if len(pool) else approved)
            sets[name] = pool
            continue
        sets[name] = approved[at:at + k]
        at += k
    not_ok = np.flatnonzero(status != 0)
    sets["status_mismatch"] = rng.permutation(not_ok)[:max(2, int(n * _SHARES["status_mismatch"]))]
    # 1 in 10 of the missing ones are stand-in with the advice delivered (card only).
    miss = sets["missing_at_network"]
    standin_missing = miss[channel[miss] == 1][: max(1, len(miss) // 10)]
    stood_in = np.zeros(n, bool)
    refused = np.zeros(n, bool)
    for name in ("standin_exposure", "standin_ok"):
        stood_in[sets[name]] = True
    stood_in[standin_missing] = True
    refused[sets["standin_exposure"]] = True

    # Keep the tolerance pass's ground truth unambiguous: the garbled (tolerance) pairs
    # have amounts that are whole thousands (+ a fee of 7 on the network side), the
    # payments left out of the files end in 500, so no leftover of one kind can be within
    # the 10-unit tolerance of the other (otherwise, at 10M over a day, a missing payment
    # sometimes sits within 5 s and 10 units of a garbled one and steals its partner).
    tol = sets["tolerance"]
    amount[tol] = np.maximum(1000, amount[tol] // 1000 * 1000)
    for name in ("missing_at_network", "standin_exposure"):
        amount[sets[name]] = amount[sets[name]] // 1000 * 1000 + 500
    refs = _references(channel, rng)
    _write_journal(journal, n, channel, times, amount, currency, status, refs, stood_in,
                   refused, batch)
    planted = _write_files(files, rng, n, channel, times, amount, currency, status, refs,
                           sets, records_per_file)
    planted.standin = {
        "refused_missing": {refs[i] for i in sets["standin_exposure"].tolist()},
        "delivered_missing": {refs[i] for i in standin_missing.tolist()},
        "delivered_settled": {refs[i] for i in sets["standin_ok"].tolist()},
    }
    return journal, files, planted


def _references(channel: np.ndarray[Any, Any], rng: np.random.Generator) -> list[str]:
    out = []
    bits = rng.integers(0, 1 << 62, size=(len(channel), 2), dtype=np.int64).tolist()
    for i, c in enumerate(channel.tolist()):
        if c == 1:
            out.append(f"01{i:010d}")
        elif c == 2:
            hi, lo = bits[i]
            out.append(str(uuid.UUID(int=(hi << 66 | lo) & ((1 << 128) - 1), version=4)))
        else:
            out.append(f"P1-{i}")
    return out


_STATUS = (Status.APPROVED, Status.DECLINED, Status.FAILED)
_REASON = ("00", "05", "91")


def _write_journal(path: Path, n: int, channel: Any, times: Any, amount: Any,
                   currency: list[str], status: Any, refs: list[str], stood_in: Any,
                   refused: Any, batch: int) -> None:
    db = open_database(path, "off")
    enc = msgspec.msgpack.Encoder()
    payer, payee = Party("ACCT000001", "Payer"), Party("MERCH00001", "Payee")
    qr_payload = _qr_payload(7, None)  # merchant M0000007
    rows: list[tuple[Any, ...]] = []
    ch, tm, am, st, si, rf = (channel.tolist(), times.tolist(), amount.tolist(),
                              status.tolist(), stood_in.tolist(), refused.tolist())

    def flush() -> None:
        if not rows:
            return
        db.execute("BEGIN")
        db.executemany(INSERT, rows)
        jcols.append_batch(db, rows)  # what Journal._commit does
        db.execute("COMMIT")
        rows.clear()

    for i in range(n):
        pid = f"P1-{i}"
        t = tm[i]
        card = swift = qr = None
        if ch[i] == 1:
            card = CardRef("tok", "1111", "411111", "2812", "TERM0001", "MERCH0001", "5999",
                           stan=f"{i % 1_000_000:06d}", rrn=refs[i])
        elif ch[i] == 2:
            swift = SwiftRef("DEUTDEFF", "BNPAFRPP", refs[i], f"E2E-{i}")
        else:
            qr = QrRef(qr_payload, qr_reference=refs[i])
        name = "card" if ch[i] == 1 else "swift" if ch[i] == 2 else "qr"
        payment = Payment(pid, f"k-{i}", name, am[i], currency[i], payer, payee,  # type: ignore[arg-type]
                          dt.datetime.fromtimestamp(t / 1e6, dt.UTC), card, swift, qr)
        s = _STATUS[st[i]]
        result = Result(pid, s, _REASON[st[i]], "", "net", stood_in=si[i])
        digest = b"\0" * 8
        rows.append((pid, f"k-{i}", "intent", "sent", digest, enc.encode(payment), t))
        rows.append((pid, f"k-{i}", "final", s.value, digest, enc.encode(result), t + 50_000))
        if si[i]:
            advice = msgspec.structs.replace(result, reason="51" if rf[i] else "00")
            rows.append((pid, f"k-{i}", "advice", s.value, digest, enc.encode(advice),
                         t + 1_000_000))
        if len(rows) >= batch:
            flush()
    flush()
    db.close()


def _write_files(files: Path, rng: np.random.Generator, n: int, channel: Any, times: Any,
                 amount: Any, currency: list[str], status: Any, refs: list[str],
                 sets: dict[str, Any], records_per_file: int) -> Planted:
    breaks: set[tuple[str, str]] = set()
    tolerance: set[str] = set()
    settle = times + rng.integers(1_000_000, 3_000_000, n)
    present = status == 0
    present[sets["missing_at_network"]] = False
    present[sets["standin_exposure"]] = False
    present[sets["status_mismatch"]] = True
    for name in ("missing_at_network", "standin_exposure", "amount_mismatch",
                 "currency_mismatch", "status_mismatch", "duplicate", "late_settlement"):
        breaks.update((name, refs[i]) for i in sets[name].tolist())
    amt = amount.copy()
    amt[sets["amount_mismatch"]] += np.maximum(1, amt[sets["amount_mismatch"]] // 10)
    ccy = list(currency)
    for i in sets["currency_mismatch"].tolist():
        ccy[i] = "CHF" if ccy[i] != "CHF" else "EUR"
    settle[sets["late_settlement"]] = times[sets["late_settlement"]] + 2 * 86_400_000_000
    ref = list(refs)
    for i in sets["tolerance"].tolist():
        ref[i] = "X" + refs[i][1:] if channel[i] != 2 else str(uuid.UUID(int=i, version=4))
        amt[i] += FEE
        settle[i] = times[i] + 1_000_000
        tolerance.add(refs[i])
    idx = np.flatnonzero(present)
    idx = np.concatenate([idx, sets["duplicate"]])
    per_channel: dict[int, list[tuple[str, str, int, str, str, int]]] = {1: [], 2: [], 3: []}
    ch, am, se = channel.tolist(), amt.tolist(), settle.tolist()
    for i in idx.tolist():
        sec = f"{i % 1_000_000:06d}|TERM0001" if ch[i] == 1 else (
            f"E2E-{i}" if ch[i] == 2 else "M0000007")
        per_channel[ch[i]].append((ref[i], sec, am[i], ccy[i], "settled", se[i]))
    # Entries the switch never saw: unknown references, and reversals of them. Their
    # times sit an hour after the journal ends, so no tolerance pass can pair them.
    ghosts = max(2, int(n * 0.005))
    orphans = max(2, int(n * 0.0005))
    late_t = int(times.max()) + 3_600_000_000
    for g in range(ghosts + orphans):
        c = int(rng.choice([1, 3]))
        gref = f"9{g:011d}" if c == 1 else f"GHOST-{g}"
        kind = "missing_in_switch" if g < ghosts else "orphan_reversal"
        per_channel[c].append((gref, "000000|TERM0009" if c == 1 else "M0000099",
                               int(rng.integers(100, 10_000_000)), "USD" if c == 1 else "CNY",
                               "settled" if g < ghosts else "reversed", late_t + g))
        breaks.add((kind, gref))
    numeric = {alpha: num for alpha, (num, _) in CURRENCIES.items()}
    written = 0
    for c, entries in per_channel.items():
        order = rng.permutation(len(entries))
        entries = [entries[k] for k in order.tolist()]
        step = records_per_file if c != 2 else max(1, records_per_file // 10)
        for f, start in enumerate(range(0, max(1, len(entries)), step)):
            chunk = entries[start:start + step]
            written += len(chunk)
            if c == 1:
                _write_clr(files / f"card-{f:04d}.clr", chunk, numeric)
            elif c == 3:
                _write_qr(files / f"qr-{f:04d}.csv", chunk)
            else:
                data = encode_camt053(f"STMT-{f}", "NOSTRO", T0_US, [
                    SettlementEntry(r, s, a, cu, "settled" if stt == "settled" else "reversed",
                                    t) for r, s, a, cu, stt, t in chunk])
                (files / f"swift-{f:04d}.xml").write_bytes(data)
    return Planted(breaks, tolerance, n, written)


def _frame(chunk: list[tuple[str, str, int, str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(chunk, schema=["ref", "sec", "amt", "cur", "st", "ts"], orient="row")


def _write_clr(path: Path, chunk: list[tuple[str, str, int, str, str, int]],
               numeric: dict[str, int]) -> None:
    df = _frame(chunk).with_columns(
        pl.lit("D").alias("t"),
        pl.col("cur").replace_strict(numeric, return_dtype=pl.Int64).cast(pl.String)
        .str.zfill(3))
    body = df.select("t", "ref", "sec", "amt", "cur", "st", "ts").write_csv(
        include_header=False)
    total = int(df["amt"].sum()) if len(df) else 0
    path.write_text(f"H,card-sim,{path.stem},{len(df)}\n{body}T,{len(df)},{total}\n")


def _write_qr(path: Path, chunk: list[tuple[str, str, int, str, str, int]]) -> None:
    body = _frame(chunk).write_csv(include_header=False)
    path.write_text("qr_reference,merchant_id,amount,currency,status,settled_at_us\n" + body)


def _main() -> None:  # pragma: no cover - manual use
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    _, _, planted = build(args.out, args.records)
    (args.out / "planted.json").write_text(planted.to_json())


if __name__ == "__main__":
    _main()
