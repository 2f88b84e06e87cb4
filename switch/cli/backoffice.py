"""``payswitch reconcile`` and ``payswitch settle``: the back office's command line.

Registered on the ``payswitch`` group by switch/cli/main.py. The work is in
switch/backoffice/; these are thin shells with one-line errors (exit 2) for unusable input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click
from rich.console import Console

from switch.cli.errors import UserError

if TYPE_CHECKING:
    from switch.backoffice.recon.classes import Break
    from switch.backoffice.recon.reconcile import Progress


@click.command()
@click.option(
    "--journal",
    "journals",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    multiple=True,
    help="The switch's journal (SQLite); repeat it for a cluster's shards (one switch "
    "side from all of them).",
)
@click.option(
    "--files",
    "files_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Directory of settlement files (.clr, .xml, .csv).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write breaks.csv, summary.json, summary.html (default: <files>/recon).",
)
@click.option(
    "--tol-amount",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Amount tolerance (minor units) for the second, tolerance pass.",
)
@click.option(
    "--tol-time",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Time window (seconds) for the tolerance pass.",
)
@click.option(
    "--late-after",
    type=click.FloatRange(0),
    default=86400.0,
    show_default=True,
    help="A match settled more than this many seconds after approval is late.",
)
def reconcile(
    journals: tuple[str, ...],
    files_dir: str,
    out_dir: str | None,
    tol_amount: int,
    tol_time: float,
    late_after: float,
) -> None:
    """Reconcile the journal against the networks' settlement files.

    Exact match on each channel's reference (RRN, UETR, QR reference), then a tolerance
    pass on amount and time; every break is classified with both sides and a suggested
    action. Exit 0 when clean, 1 with unexplained breaks, 2 when an input is unusable
    (the message names the file, line and field) or there is nothing to reconcile.
    """
    import math
    from pathlib import Path

    from switch.backoffice.recon.reconcile import run
    from switch.protocols.settlement_files import (
        MAX_ABS_AMOUNT,
        MAX_TIME_US,
        MIN_TIME_US,
        SettlementFileError,
    )

    # The matching kernels refuse (with a traceback) tolerances past ±2**61; nothing in
    # a settlement file is that far apart, so a larger one is a mistyped option.
    if tol_amount >= MAX_ABS_AMOUNT:
        raise UserError(f"--tol-amount {tol_amount}: must be below 10**18 minor units, the "
                        "largest amount a settlement file holds")
    span_s = (MAX_TIME_US - MIN_TIME_US) / 1e6
    if not tol_time <= span_s:  # also NaN and inf
        raise UserError(f"--tol-time {tol_time}: must be at most {span_s:.0f} s, the span of "
                        "settlement times (1970-01-01..2100-01-01)")
    if math.isnan(late_after):
        raise UserError("--late-after nan: must be a number of seconds")
    check_journals(journals)
    console = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        with _ReconProgress(err) as progress:
            report, paths = run(
                [Path(j) for j in journals], Path(files_dir),
                Path(out_dir) if out_dir else Path(files_dir) / "recon",
                tol_amount=tol_amount, tol_time_us=int(tol_time * 1e6),
                late_after_s=late_after, progress=cast("Progress", progress))
    except SettlementFileError as exc:
        raise UserError(str(exc)) from None
    console.print(
        f"switch records: {report.switch_records:,}, network records: "
        f"{report.network_records:,}", highlight=False)
    for kind, count in sorted(report.counts.items()):
        console.print(f"  {kind}: {count:,}", highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if report.unexplained == 0:
        explained = len(report.breaks)
        console.print("reconciliation clean" + (
            f" ({explained} explained breaks: stand-in exposure or late settlement, "
            "listed in breaks.csv)" if explained else ""))
    else:
        console.print(f"[red]{report.unexplained:,} unexplained breaks[/] (largest first):")
        for b in report.breaks[:20]:
            console.print(f"  {break_line(b)}", highlight=False)
    figures = ", ".join(f"{name} {f['wall_s']:.2f} s" for name, f in report.phases.items())
    console.print(f"phases: {figures}", highlight=False)
    console.print(f"outputs: {paths['csv']}, {paths['json']}, {paths['html']}")
    sys.exit(0 if report.unexplained == 0 else 1)


def break_line(b: Break) -> str:
    """One break of the "largest first" listing: the money at stake in major units (the
    currency's exponent), as breaks.csv's amount_at_stake, never minor units shown as
    major; an amount mismatch also shows both sides' amounts."""
    side = b.switch or b.network
    assert side is not None
    line = (f"{b.kind}: {side.channel} {side.reference} "
            f"{_major(b.at_stake(), side.currency)} {side.currency}")
    if b.kind == "amount_mismatch" and b.switch is not None and b.network is not None:
        line += (f" at stake (switch {_major(b.switch.amount, b.switch.currency)}, network "
                 f"{_major(b.network.amount, b.network.currency)})")
    return line


def _major(minor: int, currency: str) -> str:
    """Minor units as major ones, exactly, like breaks.csv (an unknown currency: 2 digits)."""
    from switch.backoffice.ledger import format_major
    from switch.currency import CURRENCIES

    return format_major(minor, CURRENCIES.get(currency, (0, 2))[1])


class _ReconProgress:
    """A rich progress bar per phase, drawn only when stderr is a terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: object | None = None
        self._task: object | None = None

    def __enter__(self) -> _ReconProgress:
        if self._console.is_terminal:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            bar = Progress(SpinnerColumn(), TextColumn("{task.description:<13}"), BarColumn(),
                           TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(),
                           console=self._console, transient=True)
            bar.start()
            self._bar = bar
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]

    def start(self, phase: str, total: float | None) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(phase, total=total)  # type: ignore[attr-defined]

    def advance(self, amount: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)  # type: ignore[attr-defined]

    def done(self) -> None:
        if self._bar is not None and self._task is not None:
            task = self._task
            self._bar.update(task, completed=self._bar.tasks[-1].total or 1,  # type: ignore[attr-defined]
                             total=self._bar.tasks[-1].total or 1)  # type: ignore[attr-defined]
            self._task = None


@click.command()
@click.option(
    "--journal",
    "journals",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    multiple=True,
    help="The switch's journal (SQLite); the ledger lives in the same database. Repeat it "
    "for a cluster's shards: each shard's cycle is closed and the positions added up.",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    metavar="[CHANNEL:]CCY=net|gross",
    help="Settlement per currency, or per channel and currency (qr:CNY=gross); "
    "default CNY=net, USD=gross, others net.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the settlement report here as JSON.",
)
@click.option("--json", "as_json", is_flag=True,
              help="Print the positions as JSON (amounts in major units and minor units).")
def settle(journals: tuple[str, ...], modes: tuple[str, ...], out_file: str | None,
           as_json: bool) -> None:
    """Close a clearing cycle: post the ledger from the journal, capture card holds,
    and print each participant's settlement position (net) or instructions (gross)."""
    import json
    import sqlite3
    import time
    from pathlib import Path

    import msgspec

    from switch.backoffice.ledger import (
        Mode,
        check_invariants,
        format_major,
        merge_reports,
        merge_summaries,
        positions_by_currency,
        post_from_journal,
    )
    from switch.backoffice.ledger import settle as close_cycle
    from switch.currency import CURRENCIES

    chosen: dict[str, Mode] = {}
    for item in modes:
        key, _, mode = item.partition("=")
        channel, _, currency = key.rpartition(":")
        if mode not in ("net", "gross") or len(currency) != 3 or channel not in (
            "", "card", "swift", "qr"
        ):
            raise click.BadParameter(
                f"{item!r}: expected [channel:]CCY=net or =gross", param_hint="--mode"
            )
        if currency.upper() not in CURRENCIES:
            # A typo (USS=gross) would otherwise leave USD on its default mode, silently.
            raise click.BadParameter(
                f"{item!r}: {currency!r} is not a currency the switch knows (ISO 4217: "
                f"{', '.join(sorted(CURRENCIES))})", param_hint="--mode")
        chosen[f"{channel}:{currency.upper()}" if channel else currency.upper()] = (
            "net" if mode == "net" else "gross"
        )
    check_journals(journals)
    if out_file is not None:
        # Checked before the cycle is closed: a report that cannot be written afterwards
        # is lost with the cycle already closed (a second run closes an empty one).
        _check_writable(out_file, "--out")
    closed_at = int(time.time() * 1_000_000)  # wall timestamp, one for every shard
    summaries, reports = [], []
    for journal in journals:
        db = sqlite3.connect(journal, isolation_level=None)
        try:
            summaries.append(post_from_journal(db))
            reports.append(close_cycle(db, closed_at, chosen))
            check_invariants(db)
        finally:
            db.close()
    posted, report = merge_summaries(summaries), merge_reports(reports)
    by_currency = positions_by_currency(report)
    if as_json:
        click.echo(json.dumps({
            "cycle": report.cycle, "transfers": report.transfers,
            "holds_captured": report.captured,
            "ledger": {"posted": posted.posted, "pending_holds": posted.pending,
                       "voided": posted.voided, "reversed": posted.reversed},
            "currencies": [{
                "currency": c.currency, "exponent": c.exponent, "mode": c.mode,
                "total": format_major(c.total, c.exponent),
                "positions": [{
                    "counterparty": p.counterparty, "role": p.role,
                    "pays": format_major(p.pays, c.exponent),
                    "receives": format_major(p.receives, c.exponent),
                    "net": format_major(p.net, c.exponent), "net_minor": p.net,
                    "instructions": p.instructions} for p in c.positions],
            } for c in by_currency],
        }, indent=2))
    else:
        from rich import box
        from rich.table import Table

        # Piped output keeps whole numbers: wide enough, never truncated.
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        console.print(
            f"ledger: {posted.posted} posted, {posted.pending} pending holds, "
            f"{posted.voided} voided, {posted.reversed} reversed after posting; "
            f"cycle {report.cycle}: {report.transfers} transfers "
            f"({report.captured} holds captured)"
        )
        for c in by_currency:
            table = Table(title=f"{c.currency} ({c.mode}; {len(c.positions)} counterparties; "
                          f"sum {format_major(c.total, c.exponent)})", title_justify="left",
                          box=box.SIMPLE_HEAD)
            for name, justify in (("counterparty", "left"), ("role", "left"),
                                  ("pays", "right"), ("receives", "right"),
                                  ("net", "right"), ("instructions", "right")):
                table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
            for p in c.positions:
                table.add_row(p.counterparty, p.role, _grouped_major(p.pays, c.exponent),
                              _grouped_major(p.receives, c.exponent),
                              _grouped_major(p.net, c.exponent, signed=True),
                              str(p.instructions) if p.instructions else "")
            console.print(table)
        console.print("ledger invariants hold: postings per currency sum to zero")
    if out_file:
        try:
            Path(out_file).write_text(json.dumps(msgspec.to_builtins(report), indent=2))
        except OSError as exc:
            raise UserError(f"--out {out_file}: cannot write the settlement report "
                            f"({exc.strerror}); cycle {report.cycle} is closed, its "
                            "positions are printed above") from None


def _check_writable(path: str, option: str) -> None:
    """Refuse, before any work, an output file whose directory is missing or read-only."""
    import os

    parent = Path(path).parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: no such directory: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: directory {parent} is not writable")


def check_journals(paths: tuple[str, ...]) -> None:
    """Each a journal, and none named twice: the same shard's journal twice made every
    one of its payments a duplicate (settle: posted twice over)."""
    seen: dict[Path, str] = {}
    for path in paths:
        check_journal(path)
        same = seen.setdefault(Path(path).resolve(), path)
        if same is not path:
            raise UserError(f"--journal {path}: the same file as --journal {same}; name "
                            "each shard's journal once")


def check_journal(path: str) -> None:
    """Refuse, in one line, a file that is not a switch journal (before any work)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.execute("SELECT payment_id, kind, record FROM journal LIMIT 1").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise UserError(
            f"{path}: not a payswitch journal ({exc}); pass the journal.db a switch wrote "
            "(journal.path in its config, or the path `payswitch demo` prints)"
        ) from None


def _grouped_major(minor: int, exponent: int, signed: bool = False) -> str:
    """Major units with thousands separators, exact: 123456789, 2 -> "1,234,567.89"."""
    from switch.backoffice.ledger import format_major

    text = format_major(abs(minor), exponent)
    whole, _, frac = text.partition(".")
    sign = ("+" if minor > 0 and signed else "") + ("-" if minor < 0 else "")
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")
