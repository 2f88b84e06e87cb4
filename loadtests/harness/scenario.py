"""``payswitch scenario run FILE``: a workload, a fault timeline and SLO assertions -> verdict.

A scenario file (TOML) names a load (rate or shape, workload), faults for the simulators
on a timeline (seconds from the start of the load), and assertions. Everything is
validated before anything starts: an unknown endpoint, a negative duration, a fault past
the end of the run or two contradictory overlapping faults stop it with the key path.

The run starts the simulators and a switch (route table with failover), drives the load
(``loadtests.harness.loadrun``), injects the faults on schedule, watches breakers and faults, then
stops everything, audits the journal (lost, duplicates), reconciles the settlement files,
and measures each assertion. It prints a verdict table, writes everything under
``reports/<timestamp>-<name>/`` (with a self-contained ``index.html``), and exits 0 only
if every assertion passed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
from rich.console import Console
from rich.table import Table

from channels.faults import Fault, FaultConfigError, convert_faults
from loadtests.harness.audit import audit_journal
from loadtests.harness.loadgen import Acknowledged, RateShape, ShapeError, shape_from_dict
from loadtests.harness.report import ReportData, Verdict, write_report
from switch.journal import read as read_journal
from switch.serve.http import admin_headers
from switch.tomlio import convert, parse_toml, read_text

ROOT = Path(__file__).resolve().parents[2]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Millis = Annotated[float, msgspec.Meta(gt=0)]


class ScenarioError(ValueError):
    """The scenario cannot run; the message names the key path."""


class LoadSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The open-loop load: exactly one of ``rate`` and ``shape``."""

    #: Payments per second, all run long.
    rate: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] | None = None
    #: A rate that changes over the run (a table with ``kind``).
    shape: dict[str, Any] | None = None
    #: A workload file (see the workload reference); without it, the built-in model.
    workload: str | None = None
    #: Generator processes sharing the rate.
    processes: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: TCP connections per generator process.
    connections: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 8


class Assertions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What must hold for the scenario to pass; each key set adds a row to the verdict."""

    #: Share of payments with a business outcome (approved or declined) over the run.
    availability_min: Ratio | None = None
    #: The same, counting only payments that arrived inside a fault window.
    availability_in_faults_min: Ratio | None = None
    #: The run's p99 latency (from each request's intended send time), at most.
    p99_ms_max: Millis | None = None
    #: The run's p99.9 latency, at most.
    p999_ms_max: Millis | None = None
    #: Per down/blackhole/flapping fault: from the first payment it affected to the first
    #: approval elsewhere, at most.
    failover_s_max: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: Retries at most 10% of payments plus 1 per second of run.
    retries_within_budget: bool = True
    #: Acknowledged payments missing from (or different in) the journal, at most.
    lost_max: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Payments booked twice, at most.
    duplicates_max: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: The settlement files reconcile with the journal, no unexplained break.
    reconciliation_clean: bool = True


class Scenario(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A scenario file: load, faults on a timeline, assertions."""

    #: Names the report directory (reports/<timestamp>-<name>/).
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[a-z0-9-]+\Z")]
    #: One line, printed first and in `payswitch scenario list`.
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    #: Seconds of load (`payswitch demo --scenario --duration` overrides it).
    duration_s: Seconds
    load: LoadSection
    #: Seeds the workload and the switch.
    seed: int = 1
    #: Faults on the timeline, ``start_s`` counted from the start of the load.
    faults: list[dict[str, Any]] = msgspec.field(default_factory=list)
    assertions: Assertions = msgspec.field(default_factory=Assertions)
    #: The simulators' config (resolved against the repository root).
    channels: str = "examples/channels.toml"
    #: The switch's route table (resolved against the repository root).
    routes: str = "examples/routes.toml"


@dataclass
class Prepared:
    scenario: Scenario
    shape: RateShape
    faults: list[Fault]
    source: Path


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def load_scenario(
    path: str | Path, duration_s: float | None = None, rate: float | None = None
) -> Prepared:
    """Read and check a scenario; ``duration_s``/``rate`` override the file's (a rate
    replaces a shape), then everything is checked as if the file had said so."""
    source = Path(path)
    raw = parse_toml(read_text(source, ScenarioError), str(source), ScenarioError)
    if duration_s is not None:
        raw["duration_s"] = duration_s
    if rate is not None and isinstance(raw.get("load"), dict):
        raw["load"] = {**{k: v for k, v in raw["load"].items() if k != "shape"}, "rate": rate}
    scenario = convert(raw, Scenario, str(source), ScenarioError)
    load = scenario.load
    if (load.rate is None) == (load.shape is None):
        raise ScenarioError(f"{source}: load: give exactly one of load.rate or load.shape")
    try:
        shape = shape_from_dict(load.shape if load.shape is not None
                                else {"kind": "fixed", "rate": load.rate}, f"{source}: load.shape")
    except ShapeError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        faults = convert_faults(scenario.faults, root="faults")
    except (FaultConfigError, ValueError) as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    channels_path = _resolve(scenario.channels)
    try:
        networks = {n["name"] for n in tomllib.loads(channels_path.read_text())["networks"]}
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{source}: channels: cannot read {channels_path}: {exc}") from None
    for i, fault in enumerate(faults):
        if fault.endpoint not in networks:
            raise ScenarioError(f"{source}: faults[{i}].endpoint: unknown endpoint "
                                f"{fault.endpoint!r} (known: {', '.join(sorted(networks))})")
        if fault.start_s >= scenario.duration_s:
            raise ScenarioError(f"{source}: faults[{i}].start_s: {fault.start_s} is not "
                                f"before the end of the run ({scenario.duration_s} s)")
    if not _resolve(scenario.routes).exists():
        raise ScenarioError(f"{source}: routes: no such file {scenario.routes!r}")
    if load.workload is not None and not _resolve(load.workload).exists():
        raise ScenarioError(f"{source}: load.workload: no such file {load.workload!r}")
    return Prepared(scenario, shape, faults, source)


# --- watching the run ---------------------------------------------------------------------


@dataclass
class Watch:
    """Breaker states and active faults, sampled from the switch and the simulators."""

    switch_metrics: str
    faults_url: str
    samples: list[tuple[float, dict[str, int], list[str]]] = field(default_factory=list)
    last_metrics: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                at = time.time()  # wall: aligned with the load's wall-clock start
                states: dict[str, int] = {}
                faults: list[str] = []
                try:
                    text = client.get(self.switch_metrics, timeout=2).text
                    self.last_metrics = text
                    for line in text.splitlines():
                        if line.startswith("payswitch_breaker_state{"):
                            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
                            states[endpoint] = int(float(line.rsplit(" ", 1)[1]))
                    faults = [f"{f['endpoint']} {f['kind']}" for f in
                              client.get(self.faults_url, timeout=2,
                                         headers=admin_headers("auditor")).json()["faults"]]
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    pass
                self.samples.append((at, states, faults))
                self.stop.wait(0.5)

    def breaker_spans(self, start: float) -> list[tuple[str, str, float, float]]:
        names = {0: "closed", 1: "half_open", 2: "open"}
        spans: list[tuple[str, str, float, float]] = []
        current: dict[str, tuple[int, float]] = {}
        for at, states, _ in self.samples:
            for endpoint, state in states.items():
                prev = current.get(endpoint)
                if prev is None or prev[0] != state:
                    if prev is not None:
                        spans.append((endpoint, names[prev[0]], prev[1] - start, at - start))
                    current[endpoint] = (state, at)
        end = self.samples[-1][0] if self.samples else start
        for endpoint, (state, since) in current.items():
            spans.append((endpoint, names[state], since - start, end - start))
        return [s for s in spans if s[3] > s[2]]

    def metric(self, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.last_metrics.splitlines()
                   if line.startswith(prefix))


# --- measuring ----------------------------------------------------------------------------


@dataclass
class PaymentTrace:
    at: float  # wall seconds the switch received it
    status: str
    route: str
    channel: str


def traces(journal: Path) -> list[PaymentTrace]:
    out = []
    for history in read_journal(journal).payments.values():
        result, payment = history.result, history.payment
        if result is None:
            continue  # an intent alone: no outcome journaled
        at = payment.received_at.timestamp() if payment is not None else 0.0
        out.append(PaymentTrace(at, result.status.value, result.route,
                                payment.channel if payment else ""))
    return sorted(out, key=lambda t: t.at)


def _good(t: PaymentTrace) -> bool:
    return t.status in ("approved", "declined")


def failover_s(trs: list[PaymentTrace], fault: Fault, start: float) -> float | None:
    """First payment the fault affected -> first success elsewhere (None: nothing affected)."""
    begin = start + fault.start_s
    end = begin + (fault.duration_s or 1e9)
    window = [t for t in trs if begin <= t.at < end]
    affected = [t.at for t in window if (t.route != fault.endpoint and t.channel == "card")
                or (t.route == fault.endpoint and not _good(t))]
    if not affected:
        return None
    first = min(affected)
    ok = [t.at for t in window if t.at >= first and t.route != fault.endpoint
          and t.status == "approved"]
    return (min(ok) - first) if ok else float("inf")


# --- running ------------------------------------------------------------------------------


def run_scenario(path: str | Path, console: Console, out_base: str | Path = "reports",
                 duration_s: float | None = None, rate: float | None = None) -> int:
    from loadtests.harness.demo import DEMO_CONFIG, _reconcile, wait_until_resolved
    from loadtests.harness.loadrun import LoadPlan, run_load, run_tag_now
    from loadtests.harness.processes import (
        channel_networks_toml,
        start_channels,
        start_switch,
        stop_channels,
        stop_switch,
    )
    from loadtests.harness.workload import WorkloadSpec, load_workload

    try:
        prepared = load_scenario(path, duration_s, rate)
    except ScenarioError as exc:
        # One line on stderr, like every user's mistake on the command line.
        print(f"Error: invalid scenario: {exc}", file=sys.stderr)
        return 2
    sc = prepared.scenario
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")  # wall: the report's name
    out = Path(out_base) / f"{stamp}-{sc.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.toml").write_text(prepared.source.read_text())
    console.print(f"[bold]scenario {sc.name}[/]: {sc.description}")
    overrides = [f"{name} {value:g}" for name, value in (("--duration", duration_s),
                                                        ("--rate", rate)) if value is not None]
    if overrides:
        console.print(f"overridden from the command line: {', '.join(overrides)}",
                      highlight=False)
    console.print(f"outputs: {out}")
    journal = out / "journal.db"
    channels_proc = switch_proc = None
    watch: Watch | None = None
    start_holder: list[float] = []
    try:
        channels_proc, ready = start_channels(out, example=_resolve(sc.channels))
        admin = f"http://127.0.0.1:{ready['admin_port']}"
        networks = channel_networks_toml(ready, routes=False)
        config = out / "switch.toml"
        config.write_text(DEMO_CONFIG.format(seed=sc.seed, journal=journal, admin_port=0)
                          + f'\n[routing]\ntable = "{_resolve(sc.routes)}"\n' + networks)
        switch_proc, endpoints = start_switch(config, out / "ready.json")
        watch = Watch(f"http://127.0.0.1:{endpoints['admin_port']}/metrics", f"{admin}/faults")
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        workload = (load_workload(_resolve(sc.load.workload)) if sc.load.workload
                    else WorkloadSpec())
        plan = LoadPlan(host="127.0.0.1", port=endpoints["port"], shape=prepared.shape,
                        duration_s=sc.duration_s, workload=workload, seed=sc.seed,
                        processes=sc.load.processes, connections=sc.load.connections,
                        run_tag=run_tag_now(), acks_dir=str(out))

        def on_progress(agg: Any) -> None:
            if start_holder:
                return
            start = agg.start_ms / 1000.0
            start_holder.append(start)
            elapsed = time.time() - start  # wall: offsets from the load's start
            for fault in prepared.faults:
                shifted = msgspec.structs.replace(fault, start_s=max(0.0, fault.start_s - elapsed))
                httpx.post(f"{admin}/faults", content=msgspec.json.encode(shifted), timeout=5,
                           headers=admin_headers())

        result = run_load(plan, out, console, config=msgspec.to_builtins(sc),
                          on_progress=on_progress)
        unresolved = wait_until_resolved(watch.switch_metrics, timeout_s=30.0)
        if unresolved:
            console.print(f"[yellow]{unresolved:.0f} payments still unresolved at the end[/]")
    finally:
        if watch is not None:
            watch.stop.set()
        code = stop_switch(switch_proc) if switch_proc is not None else 1
        if channels_proc is not None:
            stop_channels(channels_proc, ready)
    start = start_holder[0] if start_holder else time.time()  # wall: no load ran
    acks: dict[str, Acknowledged] = {}
    for f in out.glob("acks-*.msgpack"):
        for key, (status, pid) in msgspec.msgpack.decode(f.read_bytes()).items():
            acks[key] = Acknowledged(status, pid)
    audit = audit_journal(journal, acks)
    recon_clean = _reconcile(journal, out / "settlement", out / "recon", console)
    trs = traces(journal)
    verdicts = _verdicts(sc, prepared.faults, trs, start, result.summary, audit, recon_clean,
                         watch, code)
    _print_verdicts(console, verdicts)
    figures = {
        "retries": watch.metric("payswitch_retries_total") if watch else 0.0,
        "failovers": watch.metric("payswitch_failovers_total") if watch else 0.0,
        "reversals": sum(1 for t in trs if t.status == "reversed"),
        "stand-in approvals": watch.metric("payswitch_standin_approvals_total") if watch else 0.0,
    }
    console.print(", ".join(f"{k}: {v:.0f}" for k, v in figures.items()), highlight=False)
    passed = all(v.passed for v in verdicts)
    windows = [(f"{f.endpoint} {f.kind}", f.start_s, f.start_s + (f.duration_s or sc.duration_s))
               for f in prepared.faults]
    summary = {**result.summary, "verdict": "pass" if passed else "fail",
               "verdicts": [msgspec.to_builtins(v.__dict__) for v in verdicts],
               "lost": audit.lost, "duplicates": audit.duplicates, "figures": figures,
               "reconciliation_clean": recon_clean}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_report(out, ReportData(
        title=f"scenario {sc.name}", rows=result.rows, summary=summary,
        config=msgspec.to_builtins(sc), verdicts=verdicts,
        breaker_states=watch.breaker_spans(start) if watch else None,
        fault_windows=windows, notes=[sc.description]))
    console.print(f"report: {out / 'index.html'}")
    console.print("[bold green]PASS[/]" if passed else "[bold red]FAIL[/]")
    return 0 if passed else 1


def _verdicts(sc: Scenario, faults: list[Fault], trs: list[PaymentTrace], start: float,
              summary: dict[str, Any], audit: Any, recon_clean: bool, watch: Watch | None,
              switch_exit: int) -> list[Verdict]:
    a = sc.assertions
    out: list[Verdict] = []
    total = len(trs)
    good = sum(1 for t in trs if _good(t))
    availability = good / total if total else 0.0
    if a.availability_min is not None:
        out.append(Verdict("availability over the run", f">= {a.availability_min:.4f}",
                           f"{availability:.4f} ({good}/{total})",
                           total > 0 and availability >= a.availability_min))
    for i, f in enumerate(faults):
        begin, end = start + f.start_s, start + f.start_s + (f.duration_s or sc.duration_s)
        inside = [t for t in trs if begin <= t.at < end]
        share = sum(1 for t in inside if _good(t)) / len(inside) if inside else 1.0
        if a.availability_in_faults_min is not None:
            out.append(Verdict(f"availability during faults[{i}] ({f.endpoint} {f.kind})",
                               f">= {a.availability_in_faults_min:.4f}",
                               f"{share:.4f} ({len(inside)} payments)",
                               share >= a.availability_in_faults_min))
        if a.failover_s_max is not None and f.kind in ("down", "blackhole", "flapping"):
            measured = failover_s(trs, f, start)
            out.append(Verdict(f"failover time for faults[{i}] ({f.endpoint})",
                               f"<= {a.failover_s_max:.2f} s",
                               "no payment affected" if measured is None else f"{measured:.3f} s",
                               measured is None or measured <= a.failover_s_max))
    latency = summary.get("latency_ms", {})
    if a.p99_ms_max is not None:
        p99 = float(latency.get("p99", 0.0))
        out.append(Verdict("p99 latency", f"<= {a.p99_ms_max:.0f} ms", f"{p99:.1f} ms",
                           p99 <= a.p99_ms_max))
    if a.p999_ms_max is not None:
        p999 = float(latency.get("p99.9", latency.get("p999", 0.0)))
        out.append(Verdict("p99.9 latency", f"<= {a.p999_ms_max:.0f} ms", f"{p999:.1f} ms",
                           p999 <= a.p999_ms_max))
    if a.retries_within_budget and watch is not None:
        retries = watch.metric("payswitch_retries_total")
        allowed = 0.1 * total + 1.0 * sc.duration_s
        out.append(Verdict("retries within budget", f"<= {allowed:.0f} (10% + 1/s)",
                           f"{retries:.0f}", retries <= allowed))
    out.append(Verdict("lost", f"<= {a.lost_max}", str(audit.lost), audit.lost <= a.lost_max))
    out.append(Verdict("duplicates", f"<= {a.duplicates_max}", str(audit.duplicates),
                       audit.duplicates <= a.duplicates_max))
    if a.reconciliation_clean:
        out.append(Verdict("reconciliation clean", "clean", "clean" if recon_clean else "breaks",
                           recon_clean))
    out.append(Verdict("switch stopped cleanly", "exit 0", f"exit {switch_exit}",
                       switch_exit == 0))
    return out


def _print_verdicts(console: Console, verdicts: list[Verdict]) -> None:
    table = Table(title="verdict")
    for column in ("assertion", "expected", "measured", "result"):
        table.add_column(column)
    for v in verdicts:
        table.add_row(v.assertion, v.expected, v.measured,
                      "[green]pass[/]" if v.passed else "[red]FAIL[/]")
    console.print(table)
    for v in verdicts:
        if not v.passed:
            console.print(f"failed: {v.assertion}: expected {v.expected}, measured {v.measured}",
                          highlight=False)
