"""``payswitch report``: work with the outputs of load runs.

* ``compare A B``: two runs side by side (terminal table and an HTML page);
* ``merge DIR...``: runs from several generator machines as one run, HdrHistograms added
  exactly.

The work is in loadtests/harness/compare.py and loadtests/harness/merge.py; they are
imported only when a subcommand runs, so ``payswitch --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from switch.cli.errors import UserError


def _fail(message: str) -> NoReturn:
    """One ``Error:`` line, exit 2 (click's own form, as every other command)."""
    raise UserError(message)


def _stamped(kind: str) -> Path:
    from loadtests.harness.loadrun import OutputDirError, new_output_dir

    try:
        return new_output_dir("reports", kind)
    except OutputDirError as exc:
        _fail(str(exc))


def _out_dir(path: Path, given: str) -> Path:
    """``path`` made now (with its parents) and writable, or one line naming ``--out
    given`` and why."""
    from loadtests.harness.loadrun import OutputDirError, make_output_dir

    try:
        return make_output_dir(path)
    except OutputDirError as exc:
        _fail(f"--out {given}: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def report() -> None:
    """Compare load runs, or merge runs from several generator machines into one."""


@report.command("compare")
@click.argument("run_a", metavar="A")
@click.argument("run_b", metavar="B")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="HTML page to write (default: reports/<timestamp>-compare/index.html).")
def compare(run_a: str, run_b: str, out: str | None) -> None:
    """Two load runs side by side: percentiles, throughput and error shares, with B − A.

    A and B are directories written by `payswitch load` (summary.json, timeseries.csv,
    latency.hlog). Percentiles are recomputed from each run's HdrHistogram log.
    """
    from rich.console import Console

    from loadtests.harness.compare import compare_rows, print_comparison, write_comparison
    from loadtests.harness.runfiles import RunFilesError, load_run

    try:
        a, b = load_run(run_a), load_run(run_b)
    except RunFilesError as exc:
        _fail(str(exc))
    target = Path(out) if out else None
    if target is not None:
        _out_dir(target.parent, str(out))  # before the comparison is shown, not after it
    rows = compare_rows(a, b)
    console = Console(soft_wrap=True)
    print_comparison(a, b, rows, console)
    if target is None:
        target = _stamped("compare") / "index.html"
    try:
        page = write_comparison(a, b, rows, target)
    except OSError as exc:
        _fail(f"--out {target}: cannot write the comparison: {exc.strerror or exc}")
    console.print(f"comparison: {page}", highlight=False)


@report.command("merge")
@click.argument("dirs", nargs=-1, metavar="DIR...")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for the merged run (default: reports/<timestamp>-merged).")
@click.option("--threshold", "threshold_texts", multiple=True, metavar="EXPR",
              help="As for `payswitch load`, on the merged run: exit 1 if one fails.")
def merge(dirs: tuple[str, ...], out: str | None, threshold_texts: tuple[str, ...]) -> None:
    """Merge load runs from several machines into one run and one report.

    Latency HdrHistograms are added exactly (the merged percentiles are those of all
    samples together, never averaged); the time series are aligned on the wall clock
    and summed. Writes summary.json, timeseries.csv, latency.hlog and index.html.
    """
    from loadtests.harness.merge import merge_runs
    from loadtests.harness.runfiles import RunFilesError
    from loadtests.harness.thresholds import ThresholdError, parse_thresholds

    try:
        thresholds = parse_thresholds(threshold_texts)
    except ThresholdError as exc:
        _fail(f"--threshold: {exc}")
    from loadtests.harness.loadrun import OutputDirError, check_output_dir

    if out:
        try:
            check_output_dir(out)  # made by the merge, once its inputs have been read
        except OutputDirError as exc:
            _fail(f"--out {exc}")
    out_dir = Path(out) if out else _stamped("merged")
    try:
        result = merge_runs(dirs, out_dir, thresholds)
    except RunFilesError as exc:
        _fail(str(exc))
    except OSError as exc:  # the inputs' own problems are RunFilesErrors
        _fail(f"{'--out ' if out else ''}{out_dir}: cannot write the merged run: "
              f"{exc.strerror or exc}")
    summary = result.summary
    latency, totals = summary["latency_ms"], summary["totals"]
    click.echo(
        f"merged {len(result.runs)} runs: {totals['replies']:,} replies "
        f"({totals['achieved_rate']:,.0f}/s); latency p50 {latency['p50']:.2f} ms, p99 "
        f"{latency['p99']:.2f} ms, p99.9 {latency['p99.9']:.2f} ms, max {latency['max']:.2f} ms"
    )
    for warning in summary.get("warnings", []):
        click.echo(f"WARNING: {warning}")
    click.echo(f"outputs: {out_dir}/ (summary.json, timeseries.csv, latency.hlog, index.html)")
    for r in result.thresholds:
        click.echo(r.line())
    failed = [r for r in result.thresholds if not r.passed]
    if failed:
        raise click.ClickException("threshold(s) failed: " + "; ".join(
            f"{r.threshold.text} (measured {r.measured_text})" for r in failed))


if __name__ == "__main__":
    report()
