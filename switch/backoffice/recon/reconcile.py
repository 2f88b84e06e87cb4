"""End-to-end reconciliation: the switch journal against the networks' settlement files.

Pipeline (each step a function, so tests and the CLI share it):

1. :func:`load_switch_side` -- every payment in the journal with its channel reference
   (RRN for cards, UETR for SWIFT, QR reference), amount, currency, time and final status.
2. :func:`load_network_side` -- every record of every settlement file in a directory.
   A malformed file is rejected whole (see :mod:`switch.protocols.settlement_files`).
3. :func:`match` -- the numba kernels (exact pass, then tolerance pass) on int64 arrays
   (call it in a worker thread from async code: the kernels release the GIL). Between
   the passes, switch records the network should never have (declined, failed) and
   network reversals are claimed, so the tolerance pass cannot pair them with a stray
   entry on the other side and hide a break.
4. Classes the kernels do not know are added here: ``matched_netted`` (many-to-one: a
   network entry netting several payments, see :func:`_match_netted`),
   ``expected_absent`` (declined/failed and not at the network: consistent),
   ``orphan_reversal`` (a network reversal with no
   approved switch payment), ``late_settlement`` (matched, but settled more than
   ``late_after_s`` after the switch approved it).
5. :func:`write_outputs` -- breaks.csv, summary.json and summary.html.

Breaks are every class except matched, matched within tolerance and expected absent.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np

from switch.backoffice.recon.kernels import (
    BreakClass,
    ReconResult,
    RecordArrays,
    RecordStatus,
    exact_match,
    hash_references,
    tolerance_match,
)
from switch.currency import CURRENCIES, NUMERIC_TO_ALPHA
from switch.journal import read as read_journal
from switch.model import Payment
from switch.protocols import emvqr
from switch.protocols.errors import CodecError
from switch.protocols.settlement_files import (
    decode_camt053,
    decode_card_clearing,
    decode_qr_csv,
)

#: Listed as breaks, with their action, but not "unexplained": the exit code ignores them.
EXPLAINED: Final = frozenset({"standin_exposure", "late_settlement"})
NOT_BREAKS: Final = frozenset(
    {"matched", "matched_tolerance", "matched_netted", "expected_absent"}
)
SUGGESTED_ACTION: Final = {
    "missing_at_network": "Ask the network for the record; if it never settled, reverse "
    "or refund the payment and correct the ledger.",
    "missing_in_switch": "Find the payment at the network; book it if legitimate, else "
    "dispute it with the network.",
    "amount_mismatch": "Compare amounts and fees with the network; post an adjustment for "
    "the difference.",
    "currency_mismatch": "Check the currency conversion at the network; correct the entry.",
    "status_mismatch": "The network settled a payment the switch did not approve: raise "
    "a chargeback or book it after investigation.",
    "duplicate": "The same reference appears twice: claim the duplicate back.",
    "orphan_reversal": "A reversal with no approved payment: ask the network which "
    "payment it reverses.",
    "late_settlement": "Settled in a later cycle than expected: accrue it, no money lost.",
    "standin_exposure": "Approved in stand-in; the issuer refused the advice (card unknown,"
    " blocked or expired): recover from the acquirer or write off, within stand-in limits.",
}
_STATUS: Final = {
    "approved": RecordStatus.SETTLED,
    "declined": RecordStatus.DECLINED,
    "failed": RecordStatus.FAILED,
    "reversed": RecordStatus.REVERSED,
    "unknown": RecordStatus.PENDING,
    "sent": RecordStatus.PENDING,
}


@dataclass(frozen=True, slots=True)
class Record:
    channel: str
    reference: str
    amount: int
    currency: str
    status: str
    time_us: int
    source: str  # payment id (switch) or file name (network)
    #: Who the money goes to, as the network names it (QR merchant id, card/SWIFT payee):
    #: what a netted network entry aggregates by.
    counterparty: str = ""
    #: The switch approved it in stand-in, on the issuer's behalf.
    stood_in: bool = False


@dataclass(frozen=True, slots=True)
class Break:
    kind: str
    switch: Record | None
    network: Record | None
    action: str


@dataclass
class ReconReport:
    switch_records: int
    network_records: int
    counts: dict[str, int]
    amounts: dict[str, dict[str, int]]  # class -> currency -> minor units
    breaks: list[Break]

    @property
    def unexplained(self) -> int:
        """Breaks nobody can account for yet; stand-in exposure and late settlement are
        listed but explained (by design, within limits; timing only)."""
        return sum(1 for b in self.breaks if b.kind not in EXPLAINED)


def load_switch_side(journal: Path) -> list[Record]:
    """The switch's side, live and archived, folded by the journal's one reader."""
    out = []
    for history in read_journal(journal).payments.values():
        payment = history.payment
        if payment is None:
            continue  # declined by risk before any intent: nothing reached a network
        channel, reference = _reference(payment)
        stood_in = history.result.stood_in if history.result is not None else False
        out.append(Record(channel, reference, payment.amount, payment.currency, history.status,
                          history.at_us, history.payment_id, _counterparty(payment), stood_in))
    return out


def _counterparty(payment: Payment) -> str:
    if payment.qr is not None:
        try:
            qr = emvqr.parse(payment.qr.payload)
        except CodecError:
            return ""
        for account in qr.merchant_accounts:
            for sub in account.template:
                if sub.tag == "01" and sub.value:
                    return sub.value
        return ""
    return payment.payee.account


def _reference(payment: Payment) -> tuple[str, str]:
    if payment.card is not None:
        return "card", payment.card.rrn
    if payment.swift is not None:
        return "swift", payment.swift.uetr
    assert payment.qr is not None
    return "qr", payment.qr.qr_reference or payment.payment_id


def load_network_side(directory: Path) -> list[Record]:
    out = []
    for path in sorted(directory.iterdir()):
        if path.suffix == ".clr":
            channel, entries = (
                "card",
                decode_card_clearing(path.read_text(), str(path), NUMERIC_TO_ALPHA),
            )
        elif path.suffix == ".xml":
            channel, entries = "swift", decode_camt053(path.read_bytes(), str(path))
        elif path.suffix == ".csv":
            channel, entries = "qr", decode_qr_csv(path.read_text(), str(path), CURRENCIES)
        else:
            continue
        out += [
            Record(
                channel,
                e.reference,
                e.amount,
                e.currency,
                "approved" if e.status == "settled" else "reversed",
                e.settled_at_us,
                path.name,
                e.secondary,
            )
            for e in entries
        ]
    return out


def _arrays(records: list[Record]) -> RecordArrays:
    return RecordArrays.from_columns(
        key=hash_references(f"{r.channel}:{r.reference}" for r in records),
        amount=[r.amount for r in records],
        currency=[CURRENCIES[r.currency][0] if r.currency in CURRENCIES else 0 for r in records],
        time_us=[r.time_us for r in records],
        status=[int(_STATUS[r.status]) for r in records],
    )


def match(
    switch: list[Record],
    network: list[Record],
    *,
    tol_amount: int = 0,
    tol_time_us: int = 5_000_000,
    late_after_s: float = 86400.0,
) -> ReconReport:
    sw, net = _arrays(switch), _arrays(network)
    result: ReconResult = exact_match(sw, net)
    # Claim switch leftovers the network should not have: declined/failed/pending
    # payments absent at the network are consistent, and must not be offered to the
    # tolerance pass as partners for stray network entries.
    expected_absent = (result.switch_class < 0) & (sw.status != int(RecordStatus.SETTLED))
    result.switch_class[expected_absent] = BreakClass.MISSING_AT_NETWORK
    # Likewise a network reversal only ever matches its payment by exact reference; left
    # over, it is an orphan, never a tolerance partner for some approved payment.
    stray_reversals = (result.network_class < 0) & (net.status == int(RecordStatus.REVERSED))
    result.network_class[stray_reversals] = BreakClass.MISSING_IN_SWITCH
    tolerance_match(sw, net, result, tol_amount=tol_amount, tol_time_us=tol_time_us)

    names = {c: c.name.lower() for c in BreakClass}
    sw_kind = [names[BreakClass(int(c))] for c in result.switch_class]
    net_kind = [names[BreakClass(int(c))] for c in result.network_class]
    for claimed in np.flatnonzero(expected_absent).tolist():
        sw_kind[claimed] = "expected_absent"
    _match_netted(switch, network, sw_kind, net_kind, result, tol_amount)
    late_us = late_after_s * 1e6
    for i, partner in enumerate(result.switch_match.tolist()):
        if (
            partner >= 0
            and sw_kind[i] in ("matched", "matched_tolerance")
            and (network[partner].time_us - switch[i].time_us > late_us)
        ):
            sw_kind[i] = net_kind[partner] = "late_settlement"
    for n, rec in enumerate(network):
        if rec.status == "reversed" and net_kind[n] in ("missing_in_switch", "status_mismatch"):
            net_kind[n] = "orphan_reversal"
    for i, rec in enumerate(switch):
        if rec.stood_in and sw_kind[i] == "missing_at_network":
            sw_kind[i] = "standin_exposure"

    breaks: list[Break] = []
    counts: Counter[str] = Counter()
    amounts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, kind in enumerate(sw_kind):
        counts[kind] += 1
        amounts[kind][switch[i].currency] += switch[i].amount
        if kind not in NOT_BREAKS:
            other = int(result.switch_match[i])
            breaks.append(
                Break(
                    kind, switch[i], network[other] if other >= 0 else None, SUGGESTED_ACTION[kind]
                )
            )
    for n, kind in enumerate(net_kind):
        if int(result.network_match[n]) >= 0:
            continue  # reported once, from the switch side
        counts[f"network:{kind}"] += 1
        amounts[kind][network[n].currency] += network[n].amount
        if kind not in NOT_BREAKS:
            breaks.append(Break(kind, None, network[n], SUGGESTED_ACTION[kind]))
    return ReconReport(
        len(switch), len(network), dict(counts), {k: dict(v) for k, v in amounts.items()}, breaks
    )


def _match_netted(switch: list[Record], network: list[Record], sw_kind: list[str],
                  net_kind: list[str], result: ReconResult, tol_amount: int) -> int:
    """Many-to-one: a network entry that nets several payments (one per merchant and
    cycle, say) against the approved switch payments it covers.

    Within one (channel, currency, counterparty), leftover network entries are taken in
    time order, and each claims the leftover approved switch payments made before it and
    after the previous entry; the sums must agree (within ``tol_amount``). Deterministic,
    and it never touches records the exact and tolerance passes already paired.
    """
    entries: dict[tuple[str, str, str], list[int]] = {}
    for n, rec in enumerate(network):
        if net_kind[n] == "missing_in_switch" and rec.status == "approved" and rec.counterparty:
            entries.setdefault((rec.channel, rec.currency, rec.counterparty), []).append(n)
    if not entries:
        return 0
    payments: dict[tuple[str, str, str], list[int]] = {}
    for i, rec in enumerate(switch):
        if sw_kind[i] == "missing_at_network" and rec.status == "approved":
            payments.setdefault((rec.channel, rec.currency, rec.counterparty), []).append(i)
    netted = 0
    for group, ns in entries.items():
        pool = sorted(payments.get(group, []), key=lambda i: switch[i].time_us)
        start = 0
        for n in sorted(ns, key=lambda n: network[n].time_us):
            cut = network[n].time_us
            covered = []
            while start < len(pool) and switch[pool[start]].time_us <= cut:
                covered.append(pool[start])
                start += 1
            if len(covered) < 2:
                continue
            if abs(sum(switch[i].amount for i in covered) - network[n].amount) <= tol_amount:
                net_kind[n] = "matched_netted"
                for i in covered:
                    sw_kind[i] = "matched_netted"
                    result.switch_match[i] = n
                netted += 1
    return netted


def write_outputs(
    report: ReconReport, out_dir: Path, title: str = "payswitch reconciliation"
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "breaks.csv",
        "json": out_dir / "summary.json",
        "html": out_dir / "summary.html",
    }
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "class",
                "channel",
                "reference",
                "switch_payment_id",
                "switch_amount",
                "switch_currency",
                "switch_status",
                "network_file",
                "network_amount",
                "network_currency",
                "network_status",
                "suggested_action",
            ]
        )
        for b in report.breaks:
            s, n = b.switch, b.network
            any_side = s or n
            assert any_side is not None
            writer.writerow(
                [
                    b.kind,
                    any_side.channel,
                    any_side.reference,
                    s.source if s else "",
                    s.amount if s else "",
                    s.currency if s else "",
                    s.status if s else "",
                    n.source if n else "",
                    n.amount if n else "",
                    n.currency if n else "",
                    n.status if n else "",
                    b.action,
                ]
            )
    by_class = Counter(b.kind for b in report.breaks)
    summary = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),  # wall timestamp
        "switch_records": report.switch_records,
        "network_records": report.network_records,
        "classes": report.counts,
        "amounts_minor": report.amounts,
        "breaks": dict(by_class),
        "unexplained_breaks": report.unexplained,
        "clean": report.unexplained == 0,
        "first_breaks": [asdict(b) for b in report.breaks[:50]],
    }
    paths["json"].write_text(json.dumps(summary, indent=2))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td><td>"
        + html.escape(
            ", ".join(
                f"{c} {a}" for c, a in report.amounts.get(k.removeprefix("network:"), {}).items()
            )
        )
        + "</td></tr>"
        for k, v in sorted(report.counts.items())
    )
    verdict = (
        "reconciliation clean"
        if report.unexplained == 0
        else f"{report.unexplained} unexplained breaks"
    )
    paths["html"].write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;"
        "border-bottom:1px solid #ddd}</style>"
        f"<h1>{html.escape(title)}</h1><p><b>{html.escape(verdict)}</b> — "
        f"{report.switch_records} switch records, {report.network_records} network records"
        "</p><table><tr><th>class</th><th>records</th><th>amount (minor units)</th></tr>"
        f"{rows}</table><p>Breaks are listed in breaks.csv with a suggested action.</p>"
    )
    return paths
