"""``payswitch load``: the open-loop load generator's command line.

The run itself is loadtests/harness/loadrun.py.

Registered on the ``payswitch`` group by switch/cli/main.py; also runnable on its own:
``python -m switch.cli.load --rate 2000 --duration 20``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec
from rich.console import Console

from loadtests.harness.shapes import (
    SHAPE_KINDS,
    FixedRate,
    RateShape,
    ShapeError,
    parse_inline_shape,
    shape_from_dict,
)
from loadtests.harness.workload import WorkloadError, WorkloadSpec, load_workload
from switch.cli.errors import UserError, one_line, require_utf8
from switch.protocols.shardmap import join_address

if TYPE_CHECKING:
    from loadtests.harness.genmetrics import GeneratorMetrics

DEFAULT_RATE = 1000.0
DEFAULT_DURATION_S = 30.0


def read_shape(value: str) -> RateShape:
    """``--shape``: a TOML file (``kind = "spike"`` ...) or an inline ``kind=...,k=v`` spec.

    A file may hold the shape at top level or under a ``[shape]`` table.
    """
    path = Path(value)
    if "=" not in value or path.is_file():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ShapeError(f"{value}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            line = exc.object.count(b"\n", 0, exc.start) + 1
            raise ShapeError(f"{value}:{line}: not UTF-8 text (byte offset {exc.start}); "
                             "TOML files must be UTF-8") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ShapeError(f"{value}: not valid TOML: {exc}") from exc
        table = raw.get("shape", raw) if isinstance(raw.get("shape"), dict) else raw
        return shape_from_dict(table, value)
    return parse_inline_shape(value)


def check_iso_spec(path: str) -> None:
    """``--iso-spec``: a JSON object of field -> definition, checked before any process
    starts (each generator process would otherwise fail on it with no file name)."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot read: {exc.strerror}",
                                 param_hint="--iso-spec") from None
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{path}: not UTF-8 text (byte offset {exc.start})",
                                 param_hint="--iso-spec") from None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}",
                                 param_hint="--iso-spec") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise click.BadParameter(f"{path}: expected a JSON object of field -> definition "
                                 "(a pyiso8583 spec)", param_hint="--iso-spec")


def _default_processes() -> int:
    from loadtests.harness.loadrun import default_processes

    return default_processes()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="The switch's host.")
@click.option("--port", type=click.IntRange(1, 65535), default=7100, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 10_000_000),
    default=None,
    help=f"Fixed offered rate, payments/s (default {DEFAULT_RATE:g} unless --shape).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.1, 7 * 86400),
    default=None,
    help=f"Seconds of load (default: the shape's own length, else {DEFAULT_DURATION_S:g}).",
)
@click.option(
    "--shape",
    "shape_spec",
    default=None,
    metavar="FILE|SPEC",
    help="Rate shape: a TOML file, or inline 'kind=KIND,key=value,...' with KIND one of "
    f"{', '.join(SHAPE_KINDS)}; lists as a/b/c. Examples: "
    "'kind=steps,rates=500/1000/2000,step_s=10'; 'kind=ramp,from_rate=100,to_rate=3000,"
    "ramp_s=30'; 'kind=spike,base_rate=1000,spike_rate=3000,at_s=10,spike_s=5'; "
    "'kind=diurnal,average_rate=1000,period_s=120' (peak 2.5x the average).",
)
@click.option(
    "--workload",
    "workload_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Workload model (TOML, see loadtests/workloads/). Default: the built-in mix.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Generator processes, each with its own connections and share of the rate "
    "(default: half the cores).",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 4096),
    default=8,
    show_default=True,
    help="TCP connections in all, split across processes.",
)
@click.option("--run-id", default=None, metavar="TAG",
              help="The run's tag, prefix of every idempotency key [default: from the clock]. "
              "Give every machine of one run the same (with --share).")
@click.option("--share", default="0/1", show_default=True, metavar="I/M",
              help="This machine's share of a run split over M machines: machine I "
              "(0-based) sends every M-th request of the shape. Merge the machines' outputs "
              "with `payswitch report merge`.")
@click.option("--seed", type=int, default=None, help="Run seed (default: the workload's).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default: reports/<timestamp>-load).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for outstanding replies after the last send.",
)
@click.option(
    "--max-outstanding",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Bound on requests awaiting a reply per connection; past it a due request is "
    "not sent and counted as not_sent_overrun.",
)
@click.option(
    "--threshold",
    "threshold_texts",
    multiple=True,
    metavar="EXPR",
    help="Pass/fail criterion, k6-style, repeatable: 'p99<50ms', 'p99.9<=200ms', "
    "'errors<0.1%', 'failed<1%', 'shed<1%', 'rps>=900', 'lag<50ms', 'card:p99<20ms'. "
    "Exit 1 when one fails (named), 2 when one is malformed.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the generator's own Prometheus metrics (payswitch_loadgen_*) on this port "
    "while the run lasts (0: any free port, printed).",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="Address for --metrics-port.")
@click.option(
    "--protocol",
    type=click.Choice(["msgpack", "iso8583", "http"]),
    default="msgpack",
    show_default=True,
    help="The target's protocol: the switch's own msgpack frames, ISO 8583 (any host: "
    "0100s, card payments of the workload) or the switch's HTTP API (POST /v1/payments).",
)
@click.option("--target", default=None, metavar="HOST:PORT",
              help="Where to send (overrides --host/--port).")
@click.option("--iso-bitmap", type=click.Choice(["ascii", "binary"]), default="ascii",
              show_default=True, help="ISO 8583 bitmap encoding.")
@click.option("--iso-match", default="mti,11,41", show_default=True,
              help="ISO 8583 reply matching key: 'mti' (MTI class) and field numbers. "
              "Replies matching no request are counted as unmatched_reply and shown.")
@click.option("--iso-spec", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A pyiso8583 spec as JSON (field -> definition) instead of the built-in "
              "1987 ASCII one.")
@click.option("--iso-acquirer", default="412345", show_default=True,
              help="DE32 acquiring institution id sent in every 0100.")
def load(
    host: str,
    port: int,
    rate: float | None,
    duration: float | None,
    shape_spec: str | None,
    workload_path: str | None,
    processes: int | None,
    connections: int,
    run_id: str | None,
    share: str,
    seed: int | None,
    out: str | None,
    drain_timeout: float,
    max_outstanding: int,
    threshold_texts: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str,
    protocol: str,
    target: str | None,
    iso_bitmap: str,
    iso_match: str,
    iso_spec: str | None,
    iso_acquirer: str,
) -> None:
    """Open-loop load against a running switch, with honest latency and a report.

    Requests leave on schedule whether or not replies came back; latency is measured
    from each request's intended send time (no coordinated omission) into HdrHistograms.
    Shows live offered vs achieved rate, p50/p99/p99.9 and errors by code, and warns
    loudly if the generator falls behind its schedule. Writes summary.json,
    timeseries.csv (1 s buckets), latency.hlog (HdrHistogram log) and index.html.

    With --threshold, ends with a verdict: exit 0 when every threshold passes, 1 when
    one fails (named), 2 when one cannot be parsed.

    Against a cluster (`serve --workers N`), the generator asks the target for the shard
    map and sends each payment straight to the worker owning its key. From several
    machines: the same --run-id, --share 0/M ... M-1/M, then `payswitch report merge`.
    """
    import re

    from loadtests.harness.loadrun import (
        LoadPlan,
        OutputDirError,
        default_out_dir,
        make_output_dir,
        run_load,
        run_tag_now,
    )
    from loadtests.harness.thresholds import ThresholdError, parse_thresholds

    try:
        thresholds = parse_thresholds(threshold_texts)
    except ThresholdError as exc:
        raise UserError(f"--threshold: {exc}") from None

    if rate is not None and shape_spec is not None:
        raise click.UsageError("give either --rate (a fixed rate) or --shape, not both")
    try:
        shape: RateShape = (
            read_shape(shape_spec) if shape_spec else FixedRate(rate or DEFAULT_RATE)
        )
    except ShapeError as exc:
        raise click.BadParameter(str(exc), param_hint="--shape") from None
    if workload_path:
        require_utf8(workload_path, "--workload")
    try:
        spec = load_workload(workload_path) if workload_path else WorkloadSpec()
    except WorkloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--workload") from None
    duration_s = duration or shape.natural_duration() or DEFAULT_DURATION_S
    if shape.cumulative(duration_s) < 1:
        raise click.BadParameter("the shape offers no request in the run", param_hint="--shape")
    n_proc = processes or _default_processes()
    found = re.fullmatch(r"(\d{1,4})/(\d{1,4})", share)
    if found is None or not int(found[1]) < int(found[2]):
        raise click.BadParameter(f"{share!r}: expected I/M with 0 <= I < M <= 9999",
                                 param_hint="--share")
    if run_id is not None and re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", run_id) is None:
        raise click.BadParameter(f"{run_id!r}: 1-32 letters, digits, '_', '.', '-'",
                                 param_hint="--run-id")
    if int(found[2]) > 1 and run_id is None:
        raise click.UsageError("--share I/M with M > 1 needs --run-id: every machine of the "
                               "run must use the same one (it prefixes the keys)")
    if target is not None:
        host, _, port_text = target.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # an IPv6 literal, [::1]:7100
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise click.BadParameter("expected HOST:PORT", param_hint="--target")
        port = int(port_text)
    iso = None
    if protocol == "iso8583":
        from loadtests.harness.wires import Iso8583Options

        match = [m.strip() for m in iso_match.split(",") if m.strip()]
        if not match or any(m != "mti" and not m.isdigit() for m in match):
            raise click.BadParameter("'mti' and field numbers, e.g. mti,11,41",
                                     param_hint="--iso-match")
        if iso_spec is not None:
            check_iso_spec(iso_spec)
        iso = Iso8583Options(bitmap=iso_bitmap,  # type: ignore[arg-type]
                             match=match, spec_file=iso_spec, acquirer_id=iso_acquirer)
    plan = LoadPlan(
        host=host,
        port=port,
        shape=shape,
        duration_s=duration_s,
        workload=spec,
        seed=spec.seed if seed is None else seed,
        processes=n_proc,
        connections=max(connections, n_proc),
        run_tag=run_id or run_tag_now(),
        share_index=int(found[1]),
        share_count=int(found[2]),
        drain_timeout_s=drain_timeout,
        max_outstanding_per_connection=max_outstanding,
        protocol=protocol,  # type: ignore[arg-type]
        iso8583=iso,
    )
    try:
        # Made (and checked writable) now: not after the run, with its results lost.
        out_dir = make_output_dir(out) if out else default_out_dir()
    except OutputDirError as exc:
        raise UserError(f"--out {exc}" if out else str(exc)) from None
    console = Console(soft_wrap=True)
    console.print(
        f"[bold]payswitch load[/]: {shape.cumulative(duration_s) / duration_s:,.0f}/s average "
        f"({type(shape).__name__}) for {duration_s:g} s against {host}:{port} ({protocol}); "
        f"{n_proc} process(es), {plan.connections} connections, seed {plan.seed}; "
        f"outputs in {out_dir}",
        highlight=False,
    )
    config = {
        "plan": msgspec.to_builtins(msgspec.structs.replace(plan, workload=spec)),
        "workload_file": workload_path,
        "command": " ".join(sys.argv),
    }
    metrics = _start_metrics(metrics_port, metrics_host, plan.run_tag, f"{host}:{port}",
                             console)
    try:
        result = run_load(plan, out_dir, console, config, thresholds=thresholds,
                          metrics=metrics)
    except RuntimeError as exc:
        raise click.ClickException(one_line(str(exc))) from None
    finally:
        if metrics is not None:
            metrics.close()
    if result.interrupted:
        sys.exit(130)  # like a shell's Ctrl-C, after the outputs are written
    if result.failures:
        raise click.ClickException("generator failures: " + "; ".join(result.failures))
    if result.summary["totals"]["replies"] == 0:
        raise click.ClickException("no replies at all: is the switch running on the target?")
    failed = [r for r in result.thresholds or () if not r.passed]
    if failed:
        raise click.ClickException(
            "threshold(s) failed: " + "; ".join(
                f"{r.threshold.text} (measured {r.measured_text})" for r in failed)
        )


def _start_metrics(
    port: int | None, host: str, run_tag: str, target: str, console: Console
) -> GeneratorMetrics | None:
    """The generator's /metrics, or None; a port that cannot be bound is a usage error."""
    if port is None:
        return None
    from loadtests.harness.genmetrics import GeneratorMetrics

    metrics = GeneratorMetrics(run_tag=run_tag, target=target)
    try:
        bound = metrics.serve(port, host)
    except OSError as exc:
        raise UserError(f"--metrics-port {port}: cannot listen on {host}:{port}: "
                        f"{exc.strerror or exc}; pick another port (0 for any free one)"
                        ) from None
    console.print(f"generator metrics: http://{join_address(host, bound)}/metrics",
                  highlight=False)
    return metrics


if __name__ == "__main__":
    load()
