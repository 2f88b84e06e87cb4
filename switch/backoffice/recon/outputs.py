"""What a reconciliation writes: breaks.csv (by severity, then amount), summary.json and a
self-contained summary.html with totals per class and currency and the largest breaks."""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Final

from switch.backoffice.recon.classes import EXPLAINED, KIND_NAMES, NOT_BREAKS, ReconReport, _major
from switch.currency import CURRENCIES

#: Listed as breaks, with their action, but not "unexplained": the exit code ignores them.


def _fmt_major(minor: int, currency: str) -> str:
    exp = CURRENCIES.get(currency, (0, 2))[1]
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**exp)
    return f"{sign}{whole:,}" + (f".{frac:0{exp}d}" if exp else "")


_CSV_HEADER: Final = [
    "class", "explained", "channel", "reference", "amount_at_stake", "currency",
    "switch_payment_id", "switch_amount", "switch_currency", "switch_status",
    "network_file", "network_line", "network_amount", "network_currency", "network_status",
    "suggested_action",
]


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
        writer.writerow(_CSV_HEADER)
        for b in report.breaks:  # already sorted: severity, then amount at stake
            s, n = b.switch, b.network
            any_side = s or n
            assert any_side is not None
            writer.writerow([
                b.kind, "yes" if b.kind in EXPLAINED else "no", any_side.channel,
                any_side.reference, _fmt_major(b.at_stake(), any_side.currency).replace(",", ""),
                any_side.currency,
                s.source if s else "", s.amount if s else "", s.currency if s else "",
                s.status if s else "",
                n.source if n else "", n.line if n else "", n.amount if n else "",
                n.currency if n else "", n.status if n else "", b.action,
            ])
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
        "warnings": report.warnings,
        "phases": report.phases,
        "first_breaks": [asdict(b) for b in report.breaks[:50]],
    }
    paths["json"].write_text(json.dumps(summary, indent=2))
    paths["html"].write_text(_html(report, title))
    return paths


def _html(report: ReconReport, title: str) -> str:
    esc = html.escape
    verdict = ("reconciliation clean" if report.unexplained == 0
               else f"{report.unexplained} unexplained breaks")
    # Totals per class and currency (records and amounts, switch and network sides).
    rows = []
    for kind in KIND_NAMES:
        count = report.counts.get(kind, 0) + report.counts.get(f"network:{kind}", 0)
        if not count:
            continue
        per_ccy = report.amounts.get(kind, {})
        amounts = "<br>".join(f"{esc(_fmt_major(a, c))} {esc(c)}"
                              for c, a in sorted(per_ccy.items()))
        role = ("explained break" if kind in EXPLAINED else
                "not a break" if kind in NOT_BREAKS else "break")
        rows.append(f"<tr class='{role.replace(' ', '-')}'><td>{esc(kind)}</td><td>{role}</td>"
                    f"<td class=n>{count:,}</td><td class=n>{amounts}</td></tr>")
    # Amount-weighted view: breaks per class and currency by money at stake, with a bar.
    weights: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for b in report.breaks:
        side = b.switch or b.network
        assert side is not None
        w = weights[(b.kind, side.currency)]
        w[0] += 1
        w[1] += b.at_stake()
    by_ccy: dict[str, int] = defaultdict(int)
    for (_, ccy), (_, amt) in weights.items():
        by_ccy[ccy] += amt
    weighted = []
    for (kind, ccy), (n, amt) in sorted(weights.items(), key=lambda kv: (kv[0][1], -kv[1][1])):
        share = amt / by_ccy[ccy] if by_ccy[ccy] else 0.0
        weighted.append(
            f"<tr><td>{esc(ccy)}</td><td>{esc(kind)}</td><td class=n>{n:,}</td>"
            f"<td class=n>{esc(_fmt_major(amt, ccy))}</td><td><div class=bar "
            f"style='width:{share * 300:.0f}px'></div> {share:.1%}</td></tr>")
    largest = []
    for b in sorted(report.breaks, key=lambda b: -_major(b.at_stake(), b))[:25]:
        side = b.switch or b.network
        assert side is not None
        largest.append(
            f"<tr><td>{esc(b.kind)}</td><td>{esc(side.channel)}</td><td>{esc(side.reference)}"
            f"</td><td class=n>{esc(_fmt_major(b.at_stake(), side.currency))} "
            f"{esc(side.currency)}</td><td>{esc(b.switch.source if b.switch else '')}</td>"
            f"<td>{esc(b.network.source if b.network else '')}</td></tr>")
    warn = "".join(f"<p class=warn>warning: {esc(w)}</p>" for w in report.warnings)
    return (
        f"<!doctype html><meta charset=utf-8><title>{esc(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;"
        "border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}"
        ".bar{display:inline-block;height:10px;background:#c0392b}"
        ".warn{color:#b35900;font-weight:bold}tr.break td:first-child{color:#c0392b}</style>"
        f"<h1>{esc(title)}</h1><p><b>{esc(verdict)}</b> — {report.switch_records:,} switch "
        f"records, {report.network_records:,} network records</p>{warn}"
        "<h2>Totals per class and currency</h2><table><tr><th>class</th><th>role</th>"
        f"<th>records</th><th>amount</th></tr>{''.join(rows)}</table>"
        "<h2>Breaks by money at stake (per currency)</h2><table><tr><th>currency</th>"
        "<th>class</th><th>breaks</th><th>at stake</th><th>share of the currency's breaks"
        f"</th></tr>{''.join(weighted)}</table>"
        "<h2>Largest breaks</h2><table><tr><th>class</th><th>channel</th><th>reference</th>"
        "<th>at stake</th><th>switch payment</th><th>network file</th></tr>"
        f"{''.join(largest)}</table>"
        "<p>Every break is in breaks.csv with both sides and a suggested action, sorted by "
        "severity, then money at stake.</p>"
    )
