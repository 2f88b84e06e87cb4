"""``payswitch scenario run FILE``: a workload, a fault timeline and SLO assertions -> verdict.

A scenario file (TOML) names a load (rate or shape, workload), faults for the simulators
on a timeline (seconds from the start of the load), and assertions. Everything is
validated before anything starts: an unknown endpoint, a negative duration, a fault past
the end of the run or two contradictory overlapping faults stop it with the key path.

The run starts the simulators and a switch (route table with failover), drives the load
(``loadtests.harness.loadrun``), injects the faults on schedule, watches breakers and faults, then
stops everything, audits the journal (lost, duplicates, amounts other than the clients
sent), reconciles the settlement files, and measures each assertion. It prints a verdict
table, writes everything under ``reports/<timestamp>-<name>/`` (with a self-contained
``index.html``), and exits 0 only if every assertion passed.
"""

from __future__ import annotations

import contextlib
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

from channels.config import ChannelsConfigError
from channels.config import load_config as load_channels
from channels.faults import Fault, FaultConfigError, convert_faults
from loadtests.harness.audit import audit_journal
from loadtests.harness.loadgen import Acknowledged, RateShape, ShapeError, shape_from_dict
from loadtests.harness.report import ReportData, Verdict, write_report
from switch.journal import FINAL, UNKNOWN, open_readonly
from switch.journal import read as read_journal
from switch.journal.reader import records as journal_records
from switch.model import TERMINAL_STATES
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

    #: Share of requests answered with a business outcome (approved or declined) over
    #: the run, as the availability SLI counts (docs/metrics.md): what the client was
    #: first answered (an unknown settled later counts as bad), and requests refused as
    #: overloaded or unavailable, or never answered, count as bad.
    availability_min: Ratio | None = None
    #: The same, counting only requests that arrived inside a fault window; a window with
    #: no request fails.
    availability_in_faults_min: Ratio | None = None
    #: The run's p99 latency (from each request's intended send time) of the requests
    #: answered with a result (refusals count against availability instead), at most; a
    #: run with no request fails.
    p99_ms_max: Millis | None = None
    #: The run's p99.9 latency, at most.
    p999_ms_max: Millis | None = None
    #: Per down/blackhole/flapping fault: from the first payment of the endpoint's channel
    #: it affected (not answered with a business outcome, stood in, or routed elsewhere)
    #: to the first approval by another endpoint, at most. No payment of that channel in
    #: the window fails.
    failover_s_max: Annotated[float, msgspec.Meta(ge=0)] | None = None
    #: Retries at most 10% of payments plus 1 per second of run (fails if the switch's
    #: /metrics never showed payswitch_retries_total).
    retries_within_budget: bool = True
    #: Acknowledged payments missing from (or different in) the journal, at most.
    lost_max: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Payments booked twice, at most.
    duplicates_max: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Payments the journal leaves without a final state at the end (unknown, an intent
    #: alone, a reversal under way), after the switch had 30 s to resolve them, at most:
    #: every accepted payment ends in exactly one terminal state.
    unresolved_max: Annotated[int, msgspec.Meta(ge=0)] = 0
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

    def scrape_final(self) -> None:
        """One last read of the switch's /metrics (kept only if it succeeds)."""
        with contextlib.suppress(httpx.HTTPError):
            self.last_metrics = httpx.get(self.switch_metrics, timeout=2).text

    def exported(self, family: str) -> bool:
        """Did the last scrape of the switch's /metrics describe ``family`` at all?"""
        return any(line.startswith((f"# TYPE {family} ", f"# TYPE {family}_total ",
                                    f"{family}_total"))
                   for line in self.last_metrics.splitlines())

    def metric(self, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in self.last_metrics.splitlines()
                   if line.startswith(prefix))


# --- measuring ----------------------------------------------------------------------------


@dataclass
class PaymentTrace:
    at: float  # wall seconds the switch received it
    status: str  # the latest state in the journal (after any resolution)
    route: str
    channel: str
    #: What the client was answered: the payment's first ``unknown`` or ``final`` record
    #: ("" when the journal holds no outcome at all: an intent alone). Availability is
    #: measured on this, as the availability SLI is (docs/metrics.md): a payment answered
    #: ``unknown`` and settled by a status inquiry afterwards was not available when asked.
    answered: str = ""
    #: Approved by the switch on the issuer's behalf (card stand-in): not a failover.
    stood_in: bool = False


def traces(journal: Path) -> list[PaymentTrace]:
    """Every payment the journal holds, with what it was answered and where it went.

    An intent with no outcome (accepted, never answered) is kept, answered "": it is a
    payment without a business outcome, not a payment that did not exist."""
    answered = _first_answers(journal)
    out = []
    for pid, history in read_journal(journal).payments.items():
        result, payment = history.result, history.payment
        # Declined by risk before any intent: no payment body, so when it was answered
        # (not 0: outside every fault window, as the old reading had it).
        at = (payment.received_at.timestamp() if payment is not None
              else history.at_us / 1_000_000)
        channel = payment.channel if payment is not None else ""
        if result is None:
            out.append(PaymentTrace(at, history.status, "", channel, ""))
            continue
        out.append(PaymentTrace(at, result.status.value, result.route, channel,
                                answered.get(pid, result.status.value), result.stood_in))
    return sorted(out, key=lambda t: t.at)


def _first_answers(journal: Path) -> dict[str, str]:
    """Each payment's first outcome (``unknown`` or ``final``): what its client was told."""
    first: dict[str, str] = {}
    db = open_readonly(journal)
    try:
        for _seq, record in journal_records(db):
            if record.kind in (UNKNOWN, FINAL) and record.payment_id not in first:
                first[record.payment_id] = record.status.value
    finally:
        db.close()
    return first


GOOD: tuple[str, ...] = ("approved", "declined")
#: Refusals that count against availability (docs/metrics.md, the availability SLI):
#: admission control shed it, or the journal failed (fail-stop). They are never journaled,
#: so they come from the load generator's counts.
REFUSALS: tuple[str, ...] = ("overloaded", "unavailable")


def _good(t: PaymentTrace) -> bool:
    return (t.answered or t.status) in GOOD


def _endpoint_channels(sc: Scenario | None, endpoint: str,
                       trs: list[PaymentTrace]) -> set[str]:
    """The payment channel(s) an endpoint serves: its network's ``kind`` in the scenario's
    channels config, else the channels of the payments routed to it."""
    if sc is not None:
        try:
            networks = load_channels(_resolve(sc.channels)).networks
        except ChannelsConfigError:
            networks = []
        for network in networks:
            if network.name == endpoint:
                return {network.kind}
    return {t.channel for t in trs if t.route == endpoint and t.channel}


def failover_s(trs: list[PaymentTrace], fault: Fault, start: float,
               channels: set[str] | None = None) -> float | None:
    """First payment the fault affected -> first approval elsewhere (None: nothing affected).

    Only payments of the faulted endpoint's own channel count (``channels``; default: the
    channels of the payments routed to it): a card payment approved by a card network says
    nothing about a SWIFT correspondent that is down. Affected: answered anything but a
    business outcome (or never answered), approved in stand-in (no issuer reached), or
    routed to another endpoint of its channel while the faulted one had been carrying that
    channel before the fault began (or nothing came before it). Recovered: answered
    ``approved`` by another endpoint, not in stand-in."""
    if channels is None:
        channels = {t.channel for t in trs if t.route == fault.endpoint and t.channel}
    begin = start + fault.start_s
    end = begin + (fault.duration_s or 1e9)
    window = [t for t in trs if begin <= t.at < end and t.channel in channels]
    # Routed to another endpoint counts as failed over only if the faulted endpoint was
    # carrying its channel before the fault (a fault on an idle standby moves nothing), or
    # if nothing of the channel came before the fault to tell.
    before = [t.route for t in trs if t.at < begin and t.channel in channels and t.route]
    serving = not before or fault.endpoint in before
    affected = [t.at for t in window if not _good(t) or t.stood_in or (
        serving and t.route not in (fault.endpoint, ""))]
    if not affected:
        return None
    first = min(affected)
    ok = [t.at for t in window if t.at >= first and t.route not in (fault.endpoint, "")
          and not t.stood_in and (t.answered or t.status) == "approved"]
    return (min(ok) - first) if ok else float("inf")


# --- running ------------------------------------------------------------------------------


def run_scenario(path: str | Path, console: Console, out_base: str | Path = "reports",
                 duration_s: float | None = None, rate: float | None = None) -> int:
    from loadtests.harness.demo import DEMO_CONFIG, _reconcile, wait_until_resolved
    from loadtests.harness.loadrun import (
        LoadPlan,
        OutputDirError,
        new_output_dir,
        run_load,
        run_tag_now,
    )
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
    try:
        out = new_output_dir(out_base, sc.name)
    except OutputDirError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
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
    not_injected: list[str] = []
    effective = list(prepared.faults)
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
            for i, fault in enumerate(prepared.faults):
                # Injected late (the first progress comes a second or so into the load),
                # a fault keeps its end on the timeline the verdict measures it on.
                late = max(0.0, elapsed - fault.start_s)
                duration = fault.duration_s
                if duration is not None and late >= duration:
                    not_injected.append(f"faults[{i}] was over before it could be injected")
                    continue
                left = None if duration is None else duration - late
                shifted = msgspec.structs.replace(
                    fault, start_s=max(0.0, fault.start_s - elapsed), duration_s=left)
                # The verdict measures the window the fault was active in, not the one the
                # file asked for: a fault due at 0 s starts with the first progress.
                effective[i] = msgspec.structs.replace(
                    fault, start_s=max(fault.start_s, elapsed), duration_s=left)
                try:
                    reply = httpx.post(f"{admin}/faults", content=msgspec.json.encode(shifted),
                                       timeout=5, headers=admin_headers())
                except httpx.HTTPError as exc:
                    not_injected.append(f"faults[{i}]: {exc}")
                    continue
                if reply.status_code >= 300:
                    not_injected.append(f"faults[{i}]: HTTP {reply.status_code} "
                                        f"{reply.text[:200]}")

        result = run_load(plan, out, console, config=msgspec.to_builtins(sc),
                          on_progress=on_progress)
        unresolved = wait_until_resolved(watch.switch_metrics, timeout_s=30.0)
        if unresolved:
            console.print(f"[yellow]{unresolved:.0f} payments still unresolved at the end[/]")
        # The counters as they stand at the end, not as the watcher last saw them (up to
        # half a second earlier, or never, if its scrapes failed).
        watch.stop.set()
        watcher.join(timeout=5)
        watch.scrape_final()
    finally:
        if watch is not None:
            watch.stop.set()
        code = stop_switch(switch_proc) if switch_proc is not None else 1
        if channels_proc is not None:
            stop_channels(channels_proc, ready)
    start = start_holder[0] if start_holder else time.time()  # wall: no load ran
    audit = audit_journal(journal, read_acks(out))
    recon_clean = _reconcile(journal, out / "settlement", out / "recon", console)
    trs = traces(journal)
    verdicts = _verdicts(sc, effective, trs, start, result.summary, audit, recon_clean,
                         watch, code, rows=result.rows)
    if prepared.faults:
        # An outage that never happened passes every assertion about it.
        injected = len(prepared.faults) - len(not_injected) if start_holder else 0
        verdicts.insert(0, Verdict(
            "faults injected", f"{len(prepared.faults)} of {len(prepared.faults)}",
            f"{injected} of {len(prepared.faults)}"
            + (f" ({'; '.join(not_injected)})" if not_injected else ""),
            injected == len(prepared.faults)))
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
               for f in effective]
    summary = {**result.summary, "verdict": "pass" if passed else "fail",
               "verdicts": [msgspec.to_builtins(v.__dict__) for v in verdicts],
               "lost": audit.lost, "duplicates": audit.duplicates,
               "amounts": {"compared": audit.amounts_compared,
                           "mismatched": audit.amount_mismatches,
                           "decided_before_sending": audit.amounts_not_booked,
                           "not_compared": audit.amounts_unknown},
               "figures": figures,
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


def _refused(summary: dict[str, Any]) -> int:
    """Requests refused as ``overloaded`` or ``unavailable`` over the run (never journaled)."""
    errors = summary.get("totals", {}).get("errors", {}) or {}
    return sum(int(errors.get(code, 0)) for code in REFUSALS)


def _refused_between(rows: Any, begin_s: float, end_s: float) -> float:
    """Refusals answered in [begin_s, end_s) seconds from the load's start, from the
    per-second rows (a second that straddles an edge counts in proportion)."""
    n = 0.0
    for row in rows or ():
        refused = sum(int(row.errors.get(code, 0)) for code in REFUSALS)
        span = row.end_s - row.start_s
        if not refused or span <= 0:
            continue
        overlap = min(row.end_s, end_s) - max(row.start_s, begin_s)
        if overlap > 0:
            n += refused * min(overlap / span, 1.0)
    return n


def _verdicts(sc: Scenario, faults: list[Fault], trs: list[PaymentTrace], start: float,
              summary: dict[str, Any], audit: Any, recon_clean: bool, watch: Watch | None,
              switch_exit: int, rows: Any = None) -> list[Verdict]:
    """The verdict rows. Nothing measured is a failure, never a pass: an assertion over
    no payments, a latency with no requests, a metric the switch never exported.

    Availability is over every payment the journal holds (an intent with no outcome
    counts, as bad) plus the requests refused as ``overloaded``/``unavailable`` (the
    generator's counts, per second from ``rows`` for the fault windows), each counted
    good only if it was *answered* approved or declined."""
    a = sc.assertions
    out: list[Verdict] = []
    total = len(trs)
    good = sum(1 for t in trs if _good(t))
    refused = _refused(summary)
    asked = total + refused
    # Requests the generator never had an answer to (no reply, connection lost) that the
    # switch never journaled either are in neither count: the client's own tally of what
    # it was answered or refused shows them.
    client = summary.get("totals", {})
    unanswered = int(client.get("unanswered", 0)) + int(client.get("connection_lost", 0))
    told = sum(int(n) for n in (client.get("statuses") or {}).values())
    never = max(0, told + refused + unanswered - asked)
    asked += never
    availability = good / asked if asked else 0.0
    if a.availability_min is not None:
        notes = [f"{refused} refused"] if refused else []
        if never:
            notes.append(f"{never} never answered nor journaled")
        measured = f"{availability:.4f} ({good}/{asked}"
        measured += f", {', '.join(notes)})" if notes else ")"
        out.append(Verdict("availability over the run", f">= {a.availability_min:.4f}",
                           measured if asked else "no payments",
                           asked > 0 and availability >= a.availability_min))
    for i, f in enumerate(faults):
        end_s = f.start_s + (f.duration_s or sc.duration_s)
        begin, end = start + f.start_s, start + end_s
        inside = [t for t in trs if begin <= t.at < end]
        refused_in = round(_refused_between(rows, f.start_s, end_s))
        asked_in = len(inside) + refused_in
        good_in = sum(1 for t in inside if _good(t))
        share = good_in / asked_in if asked_in else 0.0
        if a.availability_in_faults_min is not None:
            measured = f"{share:.4f} ({asked_in} payments"
            measured += f", {refused_in} refused)" if refused_in else ")"
            out.append(Verdict(f"availability during faults[{i}] ({f.endpoint} {f.kind})",
                               f">= {a.availability_in_faults_min:.4f}",
                               measured if asked_in else "no payments in the window",
                               asked_in > 0 and share >= a.availability_in_faults_min))
        if a.failover_s_max is not None and f.kind in ("down", "blackhole", "flapping"):
            channels = _endpoint_channels(sc, f.endpoint, trs)
            measured_s = failover_s(trs, f, start, channels)
            seen = sum(1 for t in inside if t.channel in channels)
            if measured_s is None:
                text = (f"no payment affected ({seen} {'/'.join(sorted(channels))} payments)"
                        if seen else "nothing measured: no payment of its channel in the window")
            else:
                text = f"{measured_s:.3f} s"
            out.append(Verdict(f"failover time for faults[{i}] ({f.endpoint})",
                               f"<= {a.failover_s_max:.2f} s", text,
                               (measured_s is None and seen > 0)
                               or (measured_s is not None and measured_s <= a.failover_s_max)))
    # The latency of what was answered with a result, where the run kept it: instant
    # refusals, which availability counts against the run, would pull a p99 down under
    # shedding. (A summary merged from files has only the overall figures.)
    latency = summary.get("latency_admitted_ms") or summary.get("latency_ms", {}) or {}
    for limit, name, keys in ((a.p99_ms_max, "p99 latency", ("p99",)),
                              (a.p999_ms_max, "p99.9 latency", ("p99.9", "p999"))):
        if limit is None:
            continue
        value = next((latency[k] for k in keys if latency.get(k) is not None), None)
        count = latency.get("count", total)
        if value is None or not count:
            out.append(Verdict(name, f"<= {limit:.0f} ms",
                               "nothing measured: no requests" if value is not None
                               else "nothing measured: not in the summary", False))
            continue
        out.append(Verdict(name, f"<= {limit:.0f} ms", f"{float(value):.1f} ms",
                           float(value) <= limit))
    if a.retries_within_budget and watch is not None:
        allowed = 0.1 * total + 1.0 * sc.duration_s
        if not watch.exported("payswitch_retries"):
            out.append(Verdict("retries within budget", f"<= {allowed:.0f} (10% + 1/s)",
                               "nothing measured: no payswitch_retries from the switch",
                               False))
        else:
            retries = watch.metric("payswitch_retries_total")
            out.append(Verdict("retries within budget", f"<= {allowed:.0f} (10% + 1/s)",
                               f"{retries:.0f}", retries <= allowed))
    out.append(_lost_verdict(a.lost_max, audit, summary, total))
    amounts = _amounts_verdict(audit)
    if amounts is not None:
        out.append(amounts)
    out.append(Verdict("duplicates", f"<= {a.duplicates_max}", str(audit.duplicates),
                       audit.duplicates <= a.duplicates_max))
    # The audit's count where there is one (the live run's, which also sees a reversal
    # under way); else the journal's latest states.
    unresolved = getattr(audit, "unresolved", None)
    if unresolved is None:
        unresolved = sum(1 for t in trs if t.status not in TERMINAL_STATES)
    out.append(Verdict("unresolved at the end", f"<= {a.unresolved_max}", str(unresolved),
                       unresolved <= a.unresolved_max))
    if a.reconciliation_clean:
        out.append(Verdict("reconciliation clean", "clean", "clean" if recon_clean else "breaks",
                           recon_clean))
    out.append(Verdict("switch stopped cleanly", "exit 0", f"exit {switch_exit}",
                       switch_exit == 0))
    return out


def _lost_verdict(lost_max: int, audit: Any, summary: dict[str, Any],
                  journaled: int) -> Verdict:
    """Lost, from the audit; failed, not passed, when the audit saw fewer of the client's
    acknowledgements than the generator counted replies (an ack file missing or cut short
    leaves payments unaudited, and an unaudited payment cannot be called not lost), or when
    the journal holds no payment at all (nothing was audited: a run that booked nothing
    conserved no money)."""
    if journaled == 0:
        return Verdict("lost", f"<= {lost_max}", "nothing audited: no payment in the journal",
                       False)
    statuses = summary.get("totals", {}).get("statuses")
    acknowledged = getattr(audit, "acknowledged", None)
    if isinstance(statuses, dict) and acknowledged is not None:
        replied = sum(int(n) for n in statuses.values())
        if acknowledged < replied:
            return Verdict("lost", f"<= {lost_max}",
                           f"{audit.lost} of {acknowledged} audited; {replied - acknowledged} "
                           f"of {replied} replies not audited (acknowledgements missing)",
                           False)
    return Verdict("lost", f"<= {lost_max}", str(audit.lost), audit.lost <= lost_max)


def read_acks(out: Path) -> dict[str, Acknowledged]:
    """What every load process's clients were told, and the amount they sent, from the
    ``acks-<i>.msgpack`` files under ``out`` (key -> [status, payment id, amount,
    currency]; an entry of two, from before amounts were kept, has no amount)."""
    acks: dict[str, Acknowledged] = {}
    for f in sorted(out.glob("acks-*.msgpack")):
        for key, entry in msgspec.msgpack.decode(f.read_bytes()).items():
            status, pid, *money = entry
            amount, currency = (money[0], money[1]) if len(money) >= 2 else (None, "")
            acks[key] = Acknowledged(status, pid, amount, currency)
    return acks


#: Mismatches named in the verdict row (the report keeps more, the count is whole).
SHOWN_MISMATCHES = 3


def _amounts_verdict(audit: Any) -> Verdict | None:
    """Every acknowledged payment booked for the amount and currency its client sent.

    Failed on any mismatch, each named (payment id, key, both amounts), and when some
    acknowledgements carry no amount (not compared cannot be called matching). None when
    the audit did not compare amounts at all (an audit object without the fields)."""
    mismatches = getattr(audit, "amount_mismatches", None)
    if mismatches is None:
        return None
    name, expected = "amounts as sent", "0 mismatched"
    compared = int(getattr(audit, "amounts_compared", 0))
    unknown = int(getattr(audit, "amounts_unknown", 0))
    if mismatches:
        named = [str(m) for m in getattr(audit, "mismatched", [])[:SHOWN_MISMATCHES]]
        more = mismatches - len(named)
        return Verdict(name, expected,
                       f"{mismatches} of {compared} mismatched: " + "; ".join(named)
                       + (f"; and {more} more" if more > 0 else ""), False)
    if unknown:
        return Verdict(name, expected,
                       f"0 of {compared} mismatched; {unknown} acknowledgements carry no "
                       "amount (not compared)", False)
    # Short: a wider column wraps the others' names in an 80-column table. Payments
    # decided before sending (nothing booked) are in summary.json's "amounts".
    return Verdict(name, expected, f"0 ({compared} compared)", True)


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
